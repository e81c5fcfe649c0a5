"""Who is calling: the identity a verified access token carries."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import joined
from broker.models import OrganizationKind, Role


@dataclass(frozen=True)
class Caller:
    """Who is behind a request, as services see it: an API client, or a person acting for one
    of their organizations. What the caller may do is decided in `broker.access`."""

    client_id: str
    organization_id: uuid.UUID
    organization_kind: OrganizationKind
    roles: frozenset[Role]
    # Other organizations the caller belongs to (a person's further memberships; an API
    # client belongs to its own organization only).
    other_organization_ids: frozenset[uuid.UUID] = frozenset()
    # A person signed in through an identity provider (their `client_id` is then
    # `person:<user_id>`); None for an API client.
    user_id: uuid.UUID | None = None

    def belongs_to(self, organization_id: uuid.UUID) -> bool:
        return (
            organization_id == self.organization_id
            or organization_id in self.other_organization_ids
        )


def missing_role_message(needed: Iterable[Role], held: Iterable[Role]) -> str:
    """Why a 403: the roles the operation needs and those the caller has ("This needs the role
    approver or admin; your access token has the role buyer."). Roles only: they are what the
    caller can ask an administrator for, and nothing else about the client is told."""
    needs = [role.value for role in needed]
    has = sorted(role.value for role in held)
    wanted = f"the role {needs[0]}" if len(needs) == 1 else f"the role {joined(needs, 'or')}"
    if not has:
        holding = "no role"
    elif len(has) == 1:
        holding = f"the role {has[0]}"
    else:
        holding = f"the roles {joined(has, 'and')}"
    return f"This needs {wanted}; your access token has {holding}."
