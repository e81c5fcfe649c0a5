"""Organizations (agencies, providers' operators, the consortium) and their API clients."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.auth.secrets import hash_secret, new_client_id, new_client_secret
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import ApiClient, Organization, OrganizationKind, Role
from broker.models.organizations import ROLES_BY_KIND
from broker.services import audit
from broker.services.naming import unique_name_key
from broker.services.pagination import Page, paginate
from broker.services.preconditions import IfMatch

_CLIENT_AUDIT_EXCLUDE = frozenset({"secret_hash"})


def create_organization(
    session: Session, actor: Caller | None, *, name: str, kind: OrganizationKind
) -> Organization:
    """Register an organization (admin). Names are unique across the consortium, look-alikes
    included."""
    key = unique_name_key(session, Organization, name)
    organization = Organization(id=uuid.uuid4(), name=name, name_key=key, kind=kind)
    session.add(organization)
    session.flush()
    audit.record(
        session,
        actor,
        "organization.created",
        "organization",
        organization.id,
        organization_id=organization.id,
        after=audit.snapshot(organization),
    )
    return organization


def get_organization(session: Session, caller: Caller, organization_id: uuid.UUID) -> Organization:
    """Admins read any organization; everyone else only their own (others are 404)."""
    if not access.sees_organization(caller, organization_id):
        raise NotFound("No such organization.")
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("No such organization.")
    return organization


def list_organizations(
    session: Session,
    caller: Caller,
    *,
    kind: OrganizationKind | None = None,
    limit: int,
    cursor: str | None,
) -> Page[Organization]:
    statement = select(Organization)
    if not access.is_admin(caller):
        statement = statement.where(Organization.id == caller.organization_id)
    if kind is not None:
        statement = statement.where(Organization.kind == kind)
    return paginate(
        session, statement, [Organization.created_at, Organization.id], limit=limit, cursor=cursor
    )


def rename_organization(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    *,
    if_match: IfMatch,
    name: str,
) -> Organization:
    """Change an organization's name, if nobody changed it since the caller read it."""
    organization = get_organization(session, caller, organization_id)
    if_match.check(organization.version, "organization")
    if name == organization.name:
        return organization
    key = unique_name_key(session, Organization, name, exclude=organization.id)
    before = audit.snapshot(organization)
    organization.name, organization.name_key = name, key
    session.flush()  # bumps `version` with a compare-and-swap on the old one
    audit.record(
        session,
        caller,
        "organization.updated",
        "organization",
        organization.id,
        organization_id=organization.id,
        before=before,
        after=audit.snapshot(organization),
    )
    return organization


# An organization's kind in a sentence, with its article.
_KIND_IN_WORDS = {
    OrganizationKind.AGENCY: "an agency",
    OrganizationKind.PROVIDER: "a provider",
    OrganizationKind.CONSORTIUM: "the consortium",
}


@dataclass(frozen=True)
class IssuedClient:
    client: ApiClient
    secret: str


def create_client(
    session: Session,
    actor: Caller | None,
    organization_id: uuid.UUID,
    *,
    name: str,
    roles: list[Role],
) -> IssuedClient:
    """Issue API credentials to an organization; the secret exists only in the return value.

    Roles must fit the organization's kind: agencies buy and approve, providers publish,
    the consortium runs finance and administration.
    """
    organization = session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("No such organization.")
    allowed = ROLES_BY_KIND[organization.kind]
    refused = sorted(role.value for role in roles if role not in allowed)
    if refused:
        kind = _KIND_IN_WORDS[organization.kind]
        may_hold = ", ".join(sorted(role.value for role in allowed))
        raise ValidationFailed(
            f"The clients of {kind} may hold only these roles: {may_hold}.",
            errors={"roles": [f"Not allowed for {kind}: {', '.join(refused)}."]},
            code="role_not_allowed",
        )
    secret = new_client_secret()
    client = ApiClient(
        id=uuid.uuid4(),
        client_id=new_client_id(),
        name=name,
        organization_id=organization.id,
        roles=sorted({role.value for role in roles}),
        secret_hash=hash_secret(secret),
    )
    session.add(client)
    session.flush()
    audit.record(
        session,
        actor,
        "api_client.created",
        "api_client",
        client.id,
        organization_id=organization.id,
        after=audit.snapshot(client, exclude=_CLIENT_AUDIT_EXCLUDE),
    )
    return IssuedClient(client, secret)


def list_clients(
    session: Session, caller: Caller, organization_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[ApiClient]:
    """An organization's API clients, revoked ones included (with `revoked_at`)."""
    get_organization(session, caller, organization_id)
    statement = select(ApiClient).where(ApiClient.organization_id == organization_id)
    return paginate(
        session, statement, [ApiClient.created_at, ApiClient.id], limit=limit, cursor=cursor
    )


def _client_for_update(session: Session, organization_id: uuid.UUID, reference: str) -> ApiClient:
    """One organization's client by its `client_id` (or its `id`), locked until the end of
    the transaction so that concurrent revocations and rotations take turns.

    A client of another organization answers 404, like an unknown one.
    """
    if len(reference) > 64 or "\x00" in reference:  # no client has such an id
        raise NotFound("No such API client in this organization.")
    try:
        condition = ApiClient.id == uuid.UUID(reference)
    except ValueError:
        condition = ApiClient.client_id == reference
    client = session.scalar(
        select(ApiClient)
        .where(condition, ApiClient.organization_id == organization_id)
        .with_for_update()
    )
    if client is None:
        raise NotFound("No such API client in this organization.")
    return client


def _refuse_revoked(client: ApiClient, consequence: str) -> None:
    """409 `client_revoked`: a revoked client is revoked for good."""
    if client.revoked_at is not None:
        raise Conflict(
            f"The API client {client.client_id} was revoked at "
            f"{client.revoked_at.isoformat().replace('+00:00', 'Z')}; {consequence}",
            code="client_revoked",
        )


def revoke_client(
    session: Session, actor: Caller | None, organization_id: uuid.UUID, reference: str, at: datetime
) -> ApiClient:
    """Revoke an API client for good: it gets no new token, and the tokens it holds are
    refused from its next request on (`broker.auth.server`). Revoking twice is a 409."""
    client = _client_for_update(session, organization_id, reference)
    _refuse_revoked(client, "it stays revoked.")
    before = audit.snapshot(client, exclude=_CLIENT_AUDIT_EXCLUDE)
    client.revoked_at = at
    session.flush()
    audit.record(
        session,
        actor,
        "api_client.revoked",
        "api_client",
        client.id,
        organization_id=client.organization_id,
        before=before,
        after=audit.snapshot(client, exclude=_CLIENT_AUDIT_EXCLUDE),
    )
    return client


def rotate_client_secret(
    session: Session, actor: Caller | None, organization_id: uuid.UUID, reference: str, at: datetime
) -> IssuedClient:
    """Give an API client a new secret, shown once in the return value (what to do after a
    leak). The old secret stops working at once, and so do the tokens issued before: each
    token carries the credential version it was issued under. A revoked client is a 409."""
    client = _client_for_update(session, organization_id, reference)
    _refuse_revoked(client, "issue a new client instead.")
    before = audit.snapshot(client, exclude=_CLIENT_AUDIT_EXCLUDE)
    secret = new_client_secret()
    client.secret_hash = hash_secret(secret)
    client.credential_version += 1
    client.rotated_at = at
    session.flush()
    audit.record(
        session,
        actor,
        "api_client.secret_rotated",
        "api_client",
        client.id,
        organization_id=client.organization_id,
        before=before,
        after=audit.snapshot(client, exclude=_CLIENT_AUDIT_EXCLUDE),
    )
    return IssuedClient(client, secret)
