"""People: who a signed-in person is, the organization they act for, and their sessions.

`sign_in` is called with the claims an identity provider vouched for (broker/auth/oidc.py):
the person is found by their identity at that issuer (issuer + subject), or by their e-mail,
or created. Their organization is found from the provider's organization claim (such as
`siret`) or their e-mail's domain, matched against the identifiers registered on
organizations; invitations pending for their e-mail apply their roles. A first sign-in matched
to an organization joins it with no roles until an approver (agency) or an admin grants them.

A session is a server-side record: the cookie holds a random token, the database its hash.
It ends when the person signs out, when they are disabled (checked on every request), when it
has been idle too long or lived its absolute lifetime.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import Forbidden, Unauthorized
from broker.models import (
    ApiClient,
    BrowserSession,
    IdentityProvider,
    Membership,
    Organization,
    Role,
    User,
    UserIdentity,
)
from broker.services import audit, invitations, members
from broker.services.invitations import email_key, token_hash

# The session's cookie, and the header (or form field) that must echo the session's CSRF token
# on every unsafe request made with it.
SESSION_COOKIE = "broker_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

# How long a browser session may stay idle, and live at most (see `lifetimes`).
SESSION_IDLE = timedelta(minutes=30)
SESSION_ABSOLUTE = timedelta(hours=12)
# `last_seen_at` is written at most this often (not on every request).
TOUCH_EVERY = timedelta(minutes=1)


def lifetimes(config: Mapping[str, Any]) -> tuple[timedelta, timedelta]:
    """How long a session may stay idle, and live at most (`BROKER_SESSION_IDLE_MINUTES`,
    `BROKER_SESSION_ABSOLUTE_HOURS`)."""
    return (
        timedelta(minutes=int(config.get("SESSION_IDLE_MINUTES", 30))),
        timedelta(hours=int(config.get("SESSION_ABSOLUTE_HOURS", 12))),
    )


def person_client_id(user_id: uuid.UUID) -> str:
    """How a person appears where API clients appear (audit events, `created_by`)."""
    return f"person:{user_id}"


class NotAMember(Forbidden):
    code = "not_a_member"


@dataclass(frozen=True)
class SignedIn:
    user: User
    organization: Organization


def sign_in(
    session: Session,
    provider: IdentityProvider,
    claims: Mapping[str, Any],
    now: datetime,
    language: str = "fr",
) -> SignedIn:
    """The person the identity provider vouched for, and the organization they act for.

    A person new to the broker reads it in the language their provider's `locale` claim names
    when it is one of ours, else in `language` (their browser's); they change it later."""
    subject = str(claims["sub"])
    email = str(claims.get("email") or "").strip()
    identity = session.scalar(
        select(UserIdentity).where(
            UserIdentity.issuer == provider.issuer, UserIdentity.subject == subject
        )
    )
    user = identity.user if identity is not None else None
    if user is None and email:
        user = session.scalar(select(User).where(User.email_key == email_key(email)))
    if user is not None and not user.active:
        raise NotAMember("Your access to the broker has been withdrawn; ask your administrator.")
    found = _organization_of(session, provider, claims, email)
    pending = invitations.pending_for(session, email_key(email), now) if email else []
    if user is None:
        if found is None and not pending and not email:
            raise NotAMember("The identity provider did not tell us who you are (no e-mail).")
        if found is None and not pending:
            raise NotAMember(
                "Your organization is not registered with the broker: ask its administrator "
                "to invite you."
            )
        user = User(
            id=uuid.uuid4(),
            email=email,
            email_key=email_key(email),
            display_name=_display_name(claims, email),
            language=_language_of(claims, language),
        )
        session.add(user)
        session.flush()
        audit.record(session, None, "person.created", "person", user.id, organization_id=None)
    if identity is None:
        session.add(UserIdentity(user_id=user.id, issuer=provider.issuer, subject=subject))
    for invitation in pending:
        invitations.accept_into_membership(session, invitation, user.id, now)
    if found is not None and _membership(session, user.id, found.id) is None:
        session.add(Membership(user_id=user.id, organization_id=found.id, roles=[]))
        session.flush()
        audit.record(
            session,
            None,
            "membership.created",
            "person",
            user.id,
            organization_id=found.id,
            after={"organization_id": str(found.id), "roles": []},
        )
    session.flush()
    organization = found or _first_organization(session, user.id)
    if organization is None:
        raise NotAMember("You belong to no organization of the broker yet.")
    return SignedIn(user, organization)


def _organization_of(
    session: Session, provider: IdentityProvider, claims: Mapping[str, Any], email: str
) -> Organization | None:
    if provider.organization_claim:
        value = claims.get(provider.organization_claim)
        if isinstance(value, str) and value:
            found = members.organization_for(session, provider.organization_claim, value)
            if found is not None:
                return found
    if provider.match_email_domain and "@" in email:
        domain = email.rsplit("@", 1)[1].casefold()
        return members.organization_for(session, "email_domain", domain)
    return None


def _language_of(claims: Mapping[str, Any], fallback: str) -> str:
    locale = str(claims.get("locale") or "").lower()[:2]
    return locale if locale in ("fr", "en") else fallback


def _display_name(claims: Mapping[str, Any], email: str) -> str:
    given = str(claims.get("given_name") or "").strip()
    family = str(claims.get("usual_name") or claims.get("family_name") or "").strip()
    name = " ".join(part for part in (given, family) if part) or str(claims.get("name") or "")
    return (name or email)[:200]


def _membership(
    session: Session, user_id: uuid.UUID, organization_id: uuid.UUID
) -> Membership | None:
    return session.scalar(
        select(Membership).where(
            Membership.user_id == user_id, Membership.organization_id == organization_id
        )
    )


def _first_organization(session: Session, user_id: uuid.UUID) -> Organization | None:
    return session.scalar(
        select(Organization)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.created_at)
    )


# --- the caller ---------------------------------------------------------------------------------


def caller_for(session: Session, user: User, organization_id: uuid.UUID) -> Caller:
    """The person as services see every caller: the roles of their membership of the
    organization they act for, and their other organizations."""
    memberships = session.scalars(select(Membership).where(Membership.user_id == user.id)).all()
    current = next((m for m in memberships if m.organization_id == organization_id), None)
    if current is None:
        raise Unauthorized("You no longer belong to this organization; sign in again.")
    organization = session.get_one(Organization, organization_id)
    known = {role.value for role in Role}
    return Caller(
        client_id=person_client_id(user.id),
        organization_id=organization_id,
        organization_kind=organization.kind,
        roles=frozenset(Role(role) for role in current.roles if role in known),
        other_organization_ids=frozenset(
            m.organization_id for m in memberships if m.organization_id != organization_id
        ),
        user_id=user.id,
    )


# --- sessions -----------------------------------------------------------------------------------


def open_session(
    session: Session,
    signed_in: SignedIn,
    provider: IdentityProvider | None,
    id_token: str | None,
    now: datetime,
    absolute: timedelta = SESSION_ABSOLUTE,
) -> tuple[BrowserSession, str]:
    """A new session and the cookie's token (never stored)."""
    token = secrets.token_urlsafe(32)
    row = BrowserSession(
        id=uuid.uuid4(),
        token_hash=token_hash(token),
        user_id=signed_in.user.id,
        organization_id=signed_in.organization.id,
        identity_provider_id=provider.id if provider is not None else None,
        id_token=id_token,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + absolute,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        caller_for(session, signed_in.user, signed_in.organization.id),
        "session.opened",
        "person",
        signed_in.user.id,
        organization_id=signed_in.organization.id,
    )
    return row, token


def current_session(
    session: Session, token: str, now: datetime, idle: timedelta = SESSION_IDLE
) -> BrowserSession:
    """The live session of this cookie (read only); 401 when it has ended (signed out, the
    person disabled, idle or too old): an ended session is recognised, not written to."""
    row = session.scalar(
        select(BrowserSession).where(BrowserSession.token_hash == token_hash(token))
    )
    if row is None or row.ended_at is not None:
        raise Unauthorized("Your session has ended; sign in again.")
    user = session.get_one(User, row.user_id)
    if not user.active or now >= row.expires_at or now - row.last_seen_at >= idle:
        raise Unauthorized("Your session has ended; sign in again.")
    return row


@dataclass(frozen=True)
class SessionPerson:
    """A browser session resolved: who acts, the session's CSRF token, the person's language,
    and the session's id when its last use is due to be noted (`touch`)."""

    caller: Caller
    csrf_token: str
    language: str
    due_touch: uuid.UUID | None


def caller_of_session(
    session: Session, token: str, now: datetime, idle: timedelta, *, unsafe: bool, csrf: str | None
) -> SessionPerson:
    """The person behind a session cookie; 401 when the session has ended, 403 when an unsafe
    request does not echo the session's CSRF token (header or form field). The session's last
    use is due to be noted at most once a minute, so that a request reads only."""
    row = current_session(session, token, now, idle)
    if unsafe and (not csrf or not secrets.compare_digest(csrf, row.csrf_token)):
        raise Forbidden(
            f"Send the session's CSRF token in {CSRF_HEADER} with every change "
            "(`csrf_token` of GET /v1/me).",
            code="csrf_failed",
        )
    user = session.get_one(User, row.user_id)
    caller = caller_for(session, user, row.organization_id)
    due = row.id if now - row.last_seen_at >= TOUCH_EVERY else None
    return SessionPerson(caller, row.csrf_token, user.language, due)


def touch(session: Session, session_id: uuid.UUID, now: datetime) -> None:
    """Note a session's use (what its idle lifetime counts from)."""
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.id == session_id, BrowserSession.ended_at.is_(None))
        .values(last_seen_at=now)
    )


def end_session(session: Session, row: BrowserSession, now: datetime, reason: str) -> None:
    if row.ended_at is None:
        row.ended_at, row.end_reason = now, reason


def end_sessions_of(session: Session, user_id: uuid.UUID, now: datetime, reason: str) -> None:
    session.execute(
        update(BrowserSession)
        .where(BrowserSession.user_id == user_id, BrowserSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )


def describe(session: Session, caller: Caller, csrf_token: str | None = None) -> dict[str, Any]:
    """`GET /v1/me`: who the caller is — a person or an API client — with their
    organizations and roles."""
    if caller.user_id is not None:
        user = session.get_one(User, caller.user_id)
        rows = session.execute(
            select(Membership, Organization)
            .join(Organization, Organization.id == Membership.organization_id)
            .where(Membership.user_id == user.id)
            .order_by(Organization.name)
        ).all()
        memberships = [
            {
                "organization_id": organization.id,
                "organization_name": organization.name,
                "organization_kind": organization.kind.value,
                "roles": sorted(membership.roles),
            }
            for membership, organization in rows
        ]
        return {
            "kind": "person",
            "id": str(user.id),
            "name": user.display_name,
            "email": user.email,
            "language": user.language,
            "organization_id": caller.organization_id,
            "roles": access.role_names(caller),
            "memberships": memberships,
            "csrf_token": csrf_token,
        }
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == caller.client_id))
    organization = session.get_one(Organization, caller.organization_id)
    roles = access.role_names(caller)
    return {
        "kind": "client",
        "id": caller.client_id,
        "name": client.name if client is not None else caller.client_id,
        "email": None,
        "language": None,
        "organization_id": caller.organization_id,
        "roles": roles,
        "memberships": [
            {
                "organization_id": organization.id,
                "organization_name": organization.name,
                "organization_kind": organization.kind.value,
                "roles": roles,
            }
        ],
        "csrf_token": None,
    }


def set_language(session: Session, user_id: uuid.UUID, language: str) -> None:
    """The language a person reads the console in (`fr` or `en`)."""
    session.get_one(User, user_id).language = language
