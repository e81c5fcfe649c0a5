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
    # Other organizations the caller belongs to (a person's further memberships; an API
    # client belongs to its own organization only).
    other_organization_ids: frozenset[uuid.UUID] = frozenset()

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def is_consortium(self) -> bool:
        """A consortium admin or assessor: whoever may vouch for evidence."""
        return bool(self.roles & {Role.ADMIN, Role.ASSESSOR})

    def belongs_to(self, organization_id: uuid.UUID) -> bool:
        return (
            organization_id == self.organization_id
            or organization_id in self.other_organization_ids
        )
