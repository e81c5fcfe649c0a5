"""An organization's people: the identifiers that bring them in at sign-in, their
memberships and roles, and disabling a person.

At a first sign-in the person's organization is found by an identifier registered on it
(`organization_for`): the value of the identity provider's organization claim (a `siret`) or
the domain of the person's e-mail (scheme `email_domain`). The membership then starts with no
roles; an approver of that agency, or an admin, grants them here.

Who manages whom is `broker.access.may_manage_agency`: an approver's roles hold in the
organization they act for, so they manage that one's people only (admins: any).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed, joined
from broker.models import (
    BrowserSession,
    Membership,
    Organization,
    OrganizationIdentifier,
    Role,
    User,
)
from broker.models.organizations import ROLES_BY_KIND
from broker.services import audit, people
from broker.services.pagination import Page, paginate

SIRET = "siret"
EMAIL_DOMAIN = "email_domain"
# What an agency's approver may grant; an admin grants whatever the organization's kind allows.
APPROVER_GRANTS = frozenset({Role.BUYER, Role.APPROVER})
ENDED_BY_DISABLING = "disabled"

_SIRET_PATTERN = re.compile(r"^[0-9]{14}$")
# A lowercase DNS name of at least two labels (`interieur.gouv.fr`), at most 253 characters.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_PATTERN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_OTHER_VALUE_PATTERN = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$")


# Organization identifiers ----------------------------------------------------------------


def _value_problem(scheme: str, value: str) -> str | None:
    """Why `value` is no identifier of `scheme` (None: it is one)."""
    if scheme == SIRET and not _SIRET_PATTERN.match(value):
        compact = re.sub(r"[\s.]", "", value)
        hint = f" Did you mean {compact}?" if _SIRET_PATTERN.match(compact) else ""
        return f"A SIRET is 14 digits, without spaces, such as 13002526500013.{hint}"
    if scheme == EMAIL_DOMAIN and not _DOMAIN_PATTERN.match(value):
        lowered = value.strip().lower().removeprefix("@").rstrip(".")
        hint = f" Did you mean {lowered}?" if _DOMAIN_PATTERN.match(lowered) else ""
        return (
            "An e-mail domain is a lowercase DNS name of two labels or more, without `@`, "
            f"such as interieur.gouv.fr.{hint}"
        )
    if scheme not in (SIRET, EMAIL_DOMAIN) and not _OTHER_VALUE_PATTERN.match(value):
        return (
            "An identifier is 1–255 printable ASCII characters, not starting or ending with "
            "a space."
        )
    return None


def _organization(session: Session, organization_id: uuid.UUID) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("No such organization.")
    return organization


def add_identifier(
    session: Session, caller: Caller | None, organization_id: uuid.UUID, *, scheme: str, value: str
) -> OrganizationIdentifier:
    """Register an identifier people of the organization are recognised by at sign-in. An
    identifier names one organization only: one held already is a 409 naming its holder."""
    organization = _organization(session, organization_id)
    problem = _value_problem(scheme, value)
    if problem:
        raise ValidationFailed(errors={"value": [problem]})
    holder = session.scalar(
        select(Organization)
        .join(OrganizationIdentifier, OrganizationIdentifier.organization_id == Organization.id)
        .where(OrganizationIdentifier.scheme == scheme, OrganizationIdentifier.value == value)
    )
    if holder is not None:
        whose = "this organization" if holder.id == organization.id else f"{holder.name!r}"
        raise Conflict(
            f"The {scheme} {value!r} is registered for {whose} already.",
            code="identifier_taken",
            holder_organization_id=str(holder.id),
            holder_organization_name=holder.name,
        )
    row = OrganizationIdentifier(
        id=uuid.uuid4(), organization_id=organization.id, scheme=scheme, value=value
    )
    session.add(row)
    session.flush()
    _audit_identifier(session, caller, "created", row, after=audit.snapshot(row))
    return row


def list_identifiers(
    session: Session, organization_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[OrganizationIdentifier]:
    _organization(session, organization_id)
    statement = select(OrganizationIdentifier).where(
        OrganizationIdentifier.organization_id == organization_id
    )
    return paginate(
        session,
        statement,
        [OrganizationIdentifier.created_at, OrganizationIdentifier.id],
        limit=limit,
        cursor=cursor,
    )


def remove_identifier(
    session: Session, caller: Caller, organization_id: uuid.UUID, identifier_id: uuid.UUID
) -> None:
    """Stop recognising people by an identifier. Memberships made through it stay."""
    row = session.get(OrganizationIdentifier, identifier_id)
    if row is None or row.organization_id != organization_id:
        raise NotFound("No such identifier in this organization.")
    _audit_identifier(session, caller, "deleted", row, before=audit.snapshot(row))
    session.delete(row)
    session.flush()


def _audit_identifier(
    session: Session,
    caller: Caller | None,
    action: str,
    row: OrganizationIdentifier,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        caller,
        f"organization_identifier.{action}",
        "organization_identifier",
        row.id,
        organization_id=row.organization_id,
        before=before,
        after=after,
    )


def organization_for(session: Session, scheme: str, value: str) -> Organization | None:
    """The organization registered under the identifier, for the sign-in flow; None when no
    organization is. An `email_domain` matches exactly (case-insensitive, trailing dot
    ignored): a subdomain is another domain, which may belong to another organization."""
    if scheme == EMAIL_DOMAIN:
        value = value.strip().lower().rstrip(".")
    elif scheme == SIRET:
        value = re.sub(r"\s", "", value)
    return session.scalar(
        select(Organization)
        .join(OrganizationIdentifier, OrganizationIdentifier.organization_id == Organization.id)
        .where(OrganizationIdentifier.scheme == scheme, OrganizationIdentifier.value == value)
    )


# Members ---------------------------------------------------------------------------------


def _managed_organization(
    session: Session, caller: Caller, organization_id: uuid.UUID
) -> Organization:
    """The organization whose people the caller manages: any as admin, their own as approver.
    Others answer 404, like unknown ones."""
    if not access.may_manage_agency(caller, organization_id):
        raise NotFound("No such organization.")
    return _organization(session, organization_id)


def list_members(
    session: Session, caller: Caller, organization_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[Membership]:
    """The people of an organization, with their roles there (disabled people included)."""
    _managed_organization(session, caller, organization_id)
    statement = (
        select(Membership)
        .options(joinedload(Membership.user))
        .where(Membership.organization_id == organization_id)
    )
    return paginate(
        session, statement, [Membership.created_at, Membership.id], limit=limit, cursor=cursor
    )


def _grantable(caller: Caller, organization: Organization) -> frozenset[Role]:
    allowed = ROLES_BY_KIND[organization.kind]
    return allowed if access.is_admin(caller) else allowed & APPROVER_GRANTS


def _check_roles(caller: Caller, organization: Organization, roles: list[Role]) -> None:
    grantable = _grantable(caller, organization)
    refused = sorted(role.value for role in roles if role not in grantable)
    if refused:
        may = ", ".join(sorted(role.value for role in grantable))
        who = "an admin" if access.is_admin(caller) else "you"
        raise ValidationFailed(
            f"In this organization ({organization.kind.value}) {who} may grant only these "
            f"roles: {may}.",
            errors={"roles": [f"Not grantable here: {joined(refused)}."]},
            code="role_not_allowed",
        )


def set_roles(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    user_id: uuid.UUID,
    roles: list[Role],
) -> Membership:
    """Replace a member's roles in the organization (an empty list takes them all away)."""
    organization = _managed_organization(session, caller, organization_id)
    membership = session.scalar(
        select(Membership)
        .where(Membership.organization_id == organization_id, Membership.user_id == user_id)
        .with_for_update()
    )
    if membership is None:
        raise NotFound("This person is not a member of this organization.")
    _check_roles(caller, organization, roles)
    before = sorted(membership.roles)
    after = sorted({role.value for role in roles})
    if after != before:
        membership.roles = after
        session.flush()
        audit.record(
            session,
            caller,
            "membership.roles_changed",
            "membership",
            membership.id,
            organization_id=organization_id,
            before={"user_id": str(user_id), "roles": before},
            after={"user_id": str(user_id), "roles": after},
        )
    return membership


# People ----------------------------------------------------------------------------------


def _user_for_update(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        raise NotFound("No such person.")
    return user


def _audit_user(
    session: Session, caller: Caller, action: str, user: User, before: Any, after: Any
) -> None:
    audit.record(
        session,
        caller,
        f"user.{action}",
        "user",
        user.id,
        organization_id=caller.organization_id,
        before=before,
        after=after,
    )


def disable_user(session: Session, caller: Caller, user_id: uuid.UUID, now: datetime) -> User:
    """Disable a person: they can no longer sign in, and every browser session of theirs
    ends now. Disabling a disabled person is a 409."""
    user = _user_for_update(session, user_id)
    if user.disabled_at is not None:
        when = user.disabled_at.isoformat().replace("+00:00", "Z")
        raise Conflict(f"This person was disabled at {when} already.", code="user_disabled")
    user.disabled_at = now
    open_sessions = session.scalar(
        select(func.count())
        .select_from(BrowserSession)
        .where(BrowserSession.user_id == user.id, BrowserSession.ended_at.is_(None))
    )
    people.end_sessions_of(session, user.id, now, ENDED_BY_DISABLING)
    session.flush()
    _audit_user(
        session,
        caller,
        "disabled",
        user,
        before={"disabled_at": None},
        after={"disabled_at": now, "sessions_ended": open_sessions},
    )
    return user


def enable_user(session: Session, caller: Caller, user_id: uuid.UUID) -> User:
    """Let a disabled person sign in again (their ended sessions stay ended). Enabling a
    person who is not disabled is a 409."""
    user = _user_for_update(session, user_id)
    if user.disabled_at is None:
        raise Conflict("This person is not disabled.", code="user_not_disabled")
    before = {"disabled_at": user.disabled_at}
    user.disabled_at = None
    session.flush()
    _audit_user(session, caller, "enabled", user, before=before, after={"disabled_at": None})
    return user


def person_names(session: Session, client_ids: list[str]) -> dict[str, str]:
    """The display names of the people among `client_ids` (`person:<uuid>`, as orders and
    audit events name who acted), so pages say who asked or decided; other ids are left out."""
    wanted: dict[uuid.UUID, str] = {}
    for client_id in client_ids:
        kind, _, user_id = client_id.partition(":")
        try:
            if kind == "person":  # see people.person_client_id
                wanted[uuid.UUID(user_id)] = client_id
        except ValueError:
            continue
    if not wanted:
        return {}
    found = session.execute(select(User.id, User.display_name).where(User.id.in_(wanted)))
    return {wanted[user_id]: name for user_id, name in found}
