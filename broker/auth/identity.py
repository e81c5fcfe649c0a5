"""Who is calling: the identity a verified access token carries."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from broker.models import OrganizationKind, Role


@dataclass(frozen=True)
class Caller:
    """The authenticated API client behind a request, as services see it."""

    client_id: str
    organization_id: uuid.UUID
    organization_kind: OrganizationKind
    roles: frozenset[Role]

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles
