"""Who may do what to which object: the broker's access rules, in one place.

Services ask these named questions instead of spelling role and tenant checks inline, so a
reader (or an auditor) finds every rule here, and an API client and a person signed in for
an organization (`Caller.user_id` set) go through exactly the same rules. A rule that fails
on an object of another organization is answered by the service as 404, like an unknown id.

`tests/test_access_rules.py` fails when a service compares roles itself.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from broker.auth.identity import Caller, missing_role_message
from broker.models import Role

if TYPE_CHECKING:
    from broker.models import Provider

# The consortium's roles that see every agency's money (invoices, credit notes, settlements,
# usage): finance runs billing, admins administer everything.
EVERY_AGENCY = frozenset({Role.FINANCE, Role.ADMIN})
# The consortium's roles that vouch for sovereignty evidence.
CONSORTIUM = frozenset({Role.ASSESSOR, Role.ADMIN})
# The roles of an agency's own people that read its billing profile and invoices.
AGENCY_READERS = frozenset({Role.BUYER, Role.APPROVER})


# --- roles alone ----------------------------------------------------------------------------


def has_any_role(caller: Caller, *roles: Role) -> bool:
    """Whether the caller holds at least one of `roles` (in the organization it acts for)."""
    return bool(caller.roles & set(roles))


def is_admin(caller: Caller) -> bool:
    """A consortium admin: may read and administer any organization's objects."""
    return Role.ADMIN in caller.roles


def is_assessor_or_admin(caller: Caller) -> bool:
    """The consortium as far as evidence goes: whoever may vouch for (or reject) a claim."""
    return has_any_role(caller, *CONSORTIUM)


def is_assessor_only(caller: Caller) -> bool:
    """An assessor who is not also an admin: changes providers' sovereignty claims only."""
    return Role.ASSESSOR in caller.roles and not is_admin(caller)


def sees_every_agency(caller: Caller) -> bool:
    """Finance and admins: every agency's invoices, credit notes, usage and settlements."""
    return has_any_role(caller, *EVERY_AGENCY)


def is_operator(caller: Caller) -> bool:
    """Holds the provider role: an operator of the provider organization it acts for."""
    return Role.PROVIDER in caller.roles


def is_approver(caller: Caller) -> bool:
    """Holds the approver role in the organization it acts for."""
    return Role.APPROVER in caller.roles


def role_names(caller: Caller) -> list[str]:
    """The caller's roles, sorted, as shown to it (e.g. on `GET /v1/me`)."""
    return sorted(role.value for role in caller.roles)


def missing_roles(caller: Caller, *needed: Role) -> str:
    """Why a 403: the roles needed and those the caller holds."""
    return missing_role_message(needed, caller.roles)


# --- roles and organizations ----------------------------------------------------------------


def acts_for(caller: Caller, organization_id: uuid.UUID | None) -> bool:
    """Whether `organization_id` is the organization the caller acts for right now (an API
    client's own; a person's current one, not their other memberships). `None` (an object of
    the system, such as a scheduled job) is nobody's."""
    return caller.organization_id == organization_id


def sees_organization(caller: Caller, organization_id: uuid.UUID | None) -> bool:
    """An object owned by `organization_id` is visible: to admins, and to its own
    organization (orders, resources, audit events...)."""
    return is_admin(caller) or acts_for(caller, organization_id)


def holds_role_in(caller: Caller, organization_id: uuid.UUID, *roles: Role) -> bool:
    """The caller acts for `organization_id` with one of `roles` there."""
    return acts_for(caller, organization_id) and has_any_role(caller, *roles)


def may_manage_agency(caller: Caller, organization_id: uuid.UUID) -> bool:
    """Who manages an organization's people, invitations and webhooks: its approvers, and
    admins."""
    return is_admin(caller) or holds_role_in(caller, organization_id, Role.APPROVER)


def may_read_agency(caller: Caller, organization_id: uuid.UUID) -> bool:
    """Who reads an agency's billing profile, invoices and credit notes: finance and admins,
    and the agency's own buyers and approvers."""
    return sees_every_agency(caller) or holds_role_in(caller, organization_id, *AGENCY_READERS)


def operates(caller: Caller, provider: Provider) -> bool:
    """The provider's operators: the provider role, held in the provider's organization — the
    one the caller acts for (a person's roles hold only where they act: a buyer of an agency
    who is also in a provider's organization operates it only when signed in for it)."""
    return is_operator(caller) and acts_for(caller, provider.organization_id)


def may_administer_provider(caller: Caller, provider: Provider) -> bool:
    """Who changes a provider's record: admins any, its operators their own."""
    return is_admin(caller) or operates(caller, provider)


def sees_all_evidence(caller: Caller, provider: Provider) -> bool:
    """The provider's operators and the consortium see every claim; others only what counts."""
    return is_assessor_or_admin(caller) or operates(caller, provider)


def vouches(caller: Caller | None, provider: Provider) -> bool:
    """The consortium vouches for what it enters, except for a provider it belongs to. The
    system itself (`None`: the demo seed, migrations) is the consortium."""
    if caller is None:
        return True
    return is_assessor_or_admin(caller) and not caller.belongs_to(provider.organization_id)
