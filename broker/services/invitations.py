"""Invitations: people asked by e-mail to join an organization with roles.

- `invite` (admins: any organization; an agency's approvers: their own agency) records an
  invitation for an e-mail address with roles the organization's kind allows
  (`ROLES_BY_KIND`), and returns its token: 32 random bytes, url-safe, in the link
  `<issuer>/invitations/<token>`. The token is shown once, in that answer (and the e-mail):
  only its SHA-256 is stored, so a copy of the database opens no invitation. A new invitation
  for the same address and organization revokes the pending one: the latest roles win and
  only one link works. It expires after `BROKER_INVITATION_TTL_HOURS` (default a week).
- When SMTP is configured (`BROKER_SMTP_URL`), `issue` queues a job, in the same transaction,
  that e-mails the link (in French, then English): an SMTP outage delays the e-mail (retried
  with backoff), it never fails the request. The job's payload holds the link encrypted with
  the credential keyring (bound to the invitation's id), and the job drops it once the e-mail
  is sent. Without SMTP no job is queued: the inviter passes the link on.
- At sign-in, the lead's flow looks up `pending_for(email_key(...))` and applies each with
  `accept_into_membership`; the landing page of the link resolves the token with `by_token`,
  which refuses an unknown token (404) and a used, revoked or expired one (410, with the codes
  `invitation_used`, `invitation_revoked`, `invitation_expired`).

Every change (created, revoked, accepted, membership granted) is audited, never the token nor
its hash.
"""

from __future__ import annotations

import hashlib
import secrets
import smtplib
import ssl
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import BrokerError, Conflict, NotFound, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import Invitation, Job, Membership, Organization, Role
from broker.models.organizations import ROLES_BY_KIND
from broker.services import audit
from broker.services.credentials import CredentialsUnreadable, Keyring
from broker.services.pagination import Page, paginate

JOB_KIND = "invitation.email"
DEFAULT_TTL_HOURS = 168
DEFAULT_SENDER = "broker@localhost"
DEFAULT_SMTP_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 8

PENDING, ACCEPTED, REVOKED, EXPIRED = "pending", "accepted", "revoked", "expired"
STATES: tuple[str, ...] = (PENDING, ACCEPTED, REVOKED, EXPIRED)

_AUDIT_EXCLUDE = frozenset({"token_hash"})
# No token of ours is longer (43 characters); longer text is not looked up at all.
_MAX_TOKEN_LENGTH = 100


class InvitationGone(BrokerError):
    """410: the link was real but can no longer be used (`code` says why)."""

    status, code, title = 410, "invitation_expired", "This invitation can no longer be used"


# Settings and small pure helpers ---------------------------------------------------------


def email_key(email: str) -> str:
    """An address as compared: stripped and case-folded (one person per address; the sign-in
    flow must key `User.email_key` the same way for invitations to find their person)."""
    return email.strip().casefold()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invitation_link(base_url: str, token: str) -> str:
    """`<issuer>/invitations/<token>`: the sign-in flow's landing page for the invitation."""
    return f"{base_url.rstrip('/')}/invitations/{token}"


def ttl_of(config: Mapping[str, Any]) -> timedelta:
    return timedelta(hours=float(config.get("INVITATION_TTL_HOURS") or DEFAULT_TTL_HOURS))


def state_of(invitation: Invitation, now: datetime) -> str:
    """`accepted`, `revoked`, `expired` or `pending`, in that precedence."""
    if invitation.accepted_at is not None:
        return ACCEPTED
    if invitation.revoked_at is not None:
        return REVOKED
    if invitation.expires_at <= now:
        return EXPIRED
    return PENDING


@dataclass(frozen=True)
class SmtpSettings:
    """Where e-mail goes, from `BROKER_SMTP_URL` (`smtp://host:port`,
    `smtp+starttls://user:password@host:port`, `smtps://…` for TLS from the first byte)."""

    host: str
    port: int
    security: str  # "none", "starttls" or "tls"
    sender: str
    timeout: float
    username: str | None = None
    password: str | None = field(default=None, repr=False)


_SCHEMES = {"smtp": ("none", 25), "smtp+starttls": ("starttls", 587), "smtps": ("tls", 465)}


def smtp_settings(config: Mapping[str, Any]) -> SmtpSettings | None:
    """The SMTP settings of `config`, or None when `SMTP_URL` is unset (no e-mail is sent).

    A malformed URL is a ValueError naming what is wrong. A password is refused on plain
    `smtp://`, which would send it in clear."""
    url = config.get("SMTP_URL")
    if not url:
        return None
    parts = urlsplit(str(url))
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"BROKER_SMTP_URL must start with {', '.join(f'{s}://' for s in _SCHEMES)}; "
            f"it starts with {parts.scheme or '(nothing)'}:."
        )
    security, default_port = _SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("BROKER_SMTP_URL has a port that is not a number in 1–65535.") from None
    if not parts.hostname:
        raise ValueError("BROKER_SMTP_URL names no host, as in smtp://mail.example.org:25.")
    if parts.password is not None and security == "none":
        raise ValueError(
            "BROKER_SMTP_URL carries a password over plain smtp://, which would send it in "
            "clear: use smtp+starttls:// or smtps://."
        )
    return SmtpSettings(
        host=parts.hostname,
        port=port,
        security=security,
        sender=str(config.get("SMTP_FROM") or DEFAULT_SENDER),
        timeout=float(config.get("SMTP_TIMEOUT_SECONDS") or DEFAULT_SMTP_TIMEOUT_SECONDS),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


# Invitations -----------------------------------------------------------------------------


def _organization(
    session: Session, caller: Caller, organization_id: uuid.UUID, *, lock: bool = False
) -> Organization:
    """The organization whose invitations `caller` manages: any for admins, their own agency
    for approvers; any other answers 404, like one that does not exist."""
    organization = (
        session.get(Organization, organization_id, with_for_update=lock)
        if access.may_manage_agency(caller, organization_id)
        else None
    )
    if organization is None:
        raise NotFound("No such organization.")
    return organization


def _checked_roles(organization: Organization, roles: list[Role] | list[str]) -> list[str]:
    """The roles, deduplicated and sorted, if the organization's kind allows them all (an
    approver thereby grants only buyer and approver: their agency's roles)."""
    wanted = {Role(role) for role in roles}
    if not wanted:
        raise ValidationFailed(errors={"roles": ["Give at least one role."]})
    allowed = ROLES_BY_KIND[organization.kind]
    refused = sorted(role.value for role in wanted - allowed)
    if refused:
        may_hold = ", ".join(sorted(role.value for role in allowed))
        raise ValidationFailed(
            f"People of {organization.kind.value} organizations may hold only these roles: "
            f"{may_hold}.",
            errors={"roles": [f"Not allowed for this organization: {', '.join(refused)}."]},
            code="role_not_allowed",
        )
    return sorted(role.value for role in wanted)


def _pending_of(
    session: Session, organization_id: uuid.UUID, key: str, now: datetime
) -> list[Invitation]:
    return list(
        session.scalars(
            select(Invitation)
            .where(
                Invitation.organization_id == organization_id,
                Invitation.email_key == key,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > now,
            )
            .order_by(Invitation.created_at, Invitation.id)
        )
    )


def _revoke(session: Session, actor: Caller | None, invitation: Invitation, now: datetime) -> None:
    before = audit.snapshot(invitation, exclude=_AUDIT_EXCLUDE)
    invitation.revoked_at = now
    session.flush()
    audit.record(
        session,
        actor,
        "invitation.revoked",
        "invitation",
        invitation.id,
        organization_id=invitation.organization_id,
        before=before,
        after=audit.snapshot(invitation, exclude=_AUDIT_EXCLUDE),
    )


def invite(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    email: str,
    roles: list[Role] | list[str],
    now: datetime,
    ttl: timedelta,
) -> tuple[Invitation, str]:
    """Invite `email` into the organization with `roles`; the invitation and its token, which
    exists only in this return value. A pending invitation of the same address to the same
    organization is revoked: only the newest link works."""
    # The organization's row is held to the end of the transaction, so two invitations of
    # the same address at once cannot both stay pending.
    organization = _organization(session, caller, organization_id, lock=True)
    granted = _checked_roles(organization, roles)
    address = email.strip()
    key = email_key(address)
    for previous in _pending_of(session, organization.id, key, now):
        _revoke(session, caller, previous, now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        id=uuid.uuid4(),
        organization_id=organization.id,
        email=address,
        email_key=key,
        roles=granted,
        token_hash=token_hash(token),
        expires_at=now + ttl,
        invited_by=caller.client_id[:64],
    )
    session.add(invitation)
    session.flush()
    audit.record(
        session,
        caller,
        "invitation.created",
        "invitation",
        invitation.id,
        organization_id=organization.id,
        after=audit.snapshot(invitation, exclude=_AUDIT_EXCLUDE),
    )
    return invitation, token


@dataclass(frozen=True)
class IssuedInvitation:
    """A new invitation with its link (shown once), and whether an e-mail was queued."""

    invitation: Invitation
    link: str = field(repr=False)
    emailed: bool


def issue(
    session: Session,
    caller: Caller,
    config: Mapping[str, Any],
    keyring: Keyring,
    organization_id: uuid.UUID,
    email: str,
    roles: list[Role] | list[str],
    now: datetime,
) -> IssuedInvitation:
    """`invite`, then queue its e-mail when SMTP is configured (in the same transaction:
    a rolled-back invitation sends nothing). The link is built on `OAUTH_ISSUER`."""
    invitation, token = invite(session, caller, organization_id, email, roles, now, ttl_of(config))
    link = invitation_link(str(config["OAUTH_ISSUER"]), token)
    emailed = bool(config.get("SMTP_URL"))
    if emailed:
        enqueue(
            session,
            JOB_KIND,
            {
                "invitation_id": str(invitation.id),
                "link_ciphertext": keyring.encrypt(invitation.id, {"link": link}),
            },
            organization_id=invitation.organization_id,
            max_attempts=MAX_ATTEMPTS,
        )
    return IssuedInvitation(invitation, link, emailed)


def list_invitations(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    *,
    limit: int,
    cursor: str | None,
) -> Page[Invitation]:
    """An organization's invitations, oldest first, in every state (never a token)."""
    _organization(session, caller, organization_id)
    statement = select(Invitation).where(Invitation.organization_id == organization_id)
    return paginate(
        session,
        statement,
        [Invitation.created_at, Invitation.id],
        limit=limit,
        cursor=cursor,
        scope=f"invitations:{organization_id}",
    )


def revoke(
    session: Session,
    caller: Caller,
    invitation_id: uuid.UUID,
    now: datetime,
    *,
    organization_id: uuid.UUID | None = None,
) -> Invitation:
    """Revoke an invitation so its link stops working (and its e-mail, if still queued, is
    not sent). One used or already revoked is a 409; an expired one may still be revoked.
    With `organization_id`, an invitation of another organization is a 404."""
    invitation = session.get(Invitation, invitation_id, with_for_update=True)
    if invitation is None or (
        organization_id is not None and invitation.organization_id != organization_id
    ):
        raise NotFound("No such invitation in this organization.")
    _organization(session, caller, invitation.organization_id)
    state = state_of(invitation, now)
    if state == ACCEPTED:
        raise Conflict(
            "This invitation was already used; it cannot be revoked.", code="invitation_used"
        )
    if state == REVOKED:
        raise Conflict("This invitation is already revoked.", code="invitation_revoked")
    _revoke(session, caller, invitation, now)
    return invitation


def _gone(invitation: Invitation, now: datetime) -> InvitationGone:
    state = state_of(invitation, now)
    if state == ACCEPTED:
        return InvitationGone(
            "This invitation was already used. Sign in, or ask for a new invitation.",
            code="invitation_used",
        )
    if state == REVOKED:
        return InvitationGone(
            "This invitation was withdrawn. Ask the person who invited you for a new one.",
            code="invitation_revoked",
        )
    return InvitationGone(
        "This invitation has expired. Ask the person who invited you for a new one.",
        code="invitation_expired",
    )


def by_token(session: Session, token: str, now: datetime) -> Invitation:
    """The pending invitation of a link's token. Unknown: 404; used, revoked or expired: 410
    (`invitation_used`, `invitation_revoked`, `invitation_expired`)."""
    if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        raise NotFound("No such invitation: check that the link was copied whole.")
    invitation = session.scalar(
        select(Invitation).where(Invitation.token_hash == token_hash(token))
    )
    if invitation is None:
        raise NotFound("No such invitation: check that the link was copied whole.")
    if state_of(invitation, now) != PENDING:
        raise _gone(invitation, now)
    return invitation


def pending_for(session: Session, email_key: str, now: datetime) -> list[Invitation]:
    """The invitations of an address (its `email_key`) still usable at `now`, oldest first,
    in every organization (what a sign-in applies)."""
    return list(
        session.scalars(
            select(Invitation)
            .where(
                Invitation.email_key == email_key,
                Invitation.accepted_at.is_(None),
                Invitation.revoked_at.is_(None),
                Invitation.expires_at > now,
            )
            .order_by(Invitation.created_at, Invitation.id)
        )
    )


def accept(
    session: Session,
    invitation: Invitation,
    user_id: uuid.UUID,
    now: datetime,
    *,
    actor: Caller | None = None,
) -> None:
    """Mark the invitation used by `user_id`, once: a compare-and-swap on its still being
    pending, so two sign-ins at once cannot both use it (the loser gets the 410)."""
    before = audit.snapshot(invitation, exclude=_AUDIT_EXCLUDE)
    used = session.execute(
        update(Invitation)
        .where(
            Invitation.id == invitation.id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > now,
        )
        .values(accepted_at=now, accepted_by=user_id)
        .execution_options(synchronize_session=False)
    )
    session.refresh(invitation)
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise _gone(invitation, now)
    audit.record(
        session,
        actor,
        "invitation.accepted",
        "invitation",
        invitation.id,
        organization_id=invitation.organization_id,
        before=before,
        after=audit.snapshot(invitation, exclude=_AUDIT_EXCLUDE),
    )


def accept_into_membership(
    session: Session,
    invitation: Invitation,
    user_id: uuid.UUID,
    now: datetime,
    *,
    actor: Caller | None = None,
) -> Membership:
    """Use the invitation (`accept`) and give `user_id` its roles in its organization: a new
    membership, or the roles added to the one they have (roles are never taken away here)."""
    accept(session, invitation, user_id, now, actor=actor)
    membership = _membership_for_update(session, user_id, invitation.organization_id)
    before = audit.snapshot(membership) if membership is not None else None
    if membership is None:
        membership = _new_membership(session, user_id, invitation.organization_id)
    membership.roles = sorted(set(membership.roles or []) | set(invitation.roles))
    session.flush()
    audit.record(
        session,
        actor,
        "membership.created" if before is None else "membership.updated",
        "membership",
        membership.id,
        organization_id=membership.organization_id,
        before=before,
        after=audit.snapshot(membership),
    )
    return membership


def _membership_for_update(
    session: Session, user_id: uuid.UUID, organization_id: uuid.UUID
) -> Membership | None:
    return session.scalar(
        select(Membership)
        .where(Membership.user_id == user_id, Membership.organization_id == organization_id)
        .with_for_update()
    )


def _new_membership(session: Session, user_id: uuid.UUID, organization_id: uuid.UUID) -> Membership:
    """A new, empty membership; if another transaction made it meanwhile (the unique key
    stops this insert), that one, locked."""
    membership = Membership(
        id=uuid.uuid4(), user_id=user_id, organization_id=organization_id, roles=[]
    )
    try:
        with session.begin_nested():
            session.add(membership)
            session.flush()
    except IntegrityError:
        existing = _membership_for_update(session, user_id, organization_id)
        if existing is None:
            raise
        return existing
    return membership


# E-mail ---------------------------------------------------------------------------------

# Role names in the e-mail, per language.
_ROLE_WORDS = {
    "fr": {
        "buyer": "acheteur",
        "approver": "approbateur",
        "provider": "opérateur fournisseur",
        "finance": "finances",
        "assessor": "évaluateur",
        "admin": "administrateur",
    },
    "en": {
        "buyer": "buyer",
        "approver": "approver",
        "provider": "provider operator",
        "finance": "finance",
        "assessor": "assessor",
        "admin": "administrator",
    },
}


def _roles_in(language: str, roles: list[str]) -> str:
    words = _ROLE_WORDS[language]
    return ", ".join(words.get(role, role) for role in roles)


def invitation_message(
    sender: str, invitation: Invitation, link: str, organization_name: str
) -> EmailMessage:
    """The invitation e-mail: plain text, French first, then English (the broker does not
    know the person's language before they sign in). Dates are numeric, in UTC, so that no
    month name needs translating."""
    expires = invitation.expires_at.astimezone(UTC)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = invitation.email
    message["Subject"] = (
        f"Invitation à rejoindre {organization_name} / Invitation to join {organization_name}"
    )
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Content-Language"] = "fr, en"
    message.set_content(
        "(English below)\n\n"
        "Bonjour,\n\n"
        f"Vous êtes invité à rejoindre {organization_name} sur le courtier de cloud "
        f"souverain, avec les rôles : {_roles_in('fr', invitation.roles)}.\n\n"
        "Pour accepter, ouvrez ce lien puis connectez-vous avec l'adresse "
        f"{invitation.email} :\n{link}\n\n"
        f"Ce lien est personnel et ne sert qu'une fois. Il expire le "
        f"{expires:%d/%m/%Y à %H:%M} UTC.\n"
        "Si vous n'attendiez pas cette invitation, ignorez ce message.\n\n"
        "----------------------------------------\n\n"
        "Hello,\n\n"
        f"You are invited to join {organization_name} on the sovereign cloud broker, with "
        f"the roles: {_roles_in('en', invitation.roles)}.\n\n"
        "To accept, open this link and sign in with the address "
        f"{invitation.email}:\n{link}\n\n"
        f"This link is personal and works once. It expires on {expires:%Y-%m-%d at %H:%M} "
        "UTC.\n"
        "If you did not expect this invitation, ignore this message.\n"
    )
    return message


def send_invitation_email(
    config: Mapping[str, Any], invitation: Invitation, link: str, *, organization_name: str
) -> None:
    """Send the invitation e-mail through `BROKER_SMTP_URL` (STARTTLS and TLS verify the
    server's certificate). Raises ValueError when SMTP is unset or malformed, and smtplib's
    errors (or OSError) when the server refuses or cannot be reached."""
    settings = smtp_settings(config)
    if settings is None:
        raise ValueError("BROKER_SMTP_URL is not set: invitation e-mails cannot be sent.")
    message = invitation_message(settings.sender, invitation, link, organization_name)
    with _connect(settings) as smtp:
        if settings.username is not None:
            smtp.login(settings.username, settings.password or "")
        smtp.send_message(message)


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    if settings.security == "tls":
        return smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            context=ssl.create_default_context(),
        )
    smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    if settings.security == "starttls":
        try:
            smtp.starttls(context=ssl.create_default_context())
        except BaseException:
            smtp.close()
            raise
    return smtp


def _permanent(error: smtplib.SMTPException) -> bool:
    """Whether the server refused for good (a 5xx reply, every recipient refused): retrying
    cannot help. 4xx replies and connection trouble are worth retrying."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    return isinstance(error, smtplib.SMTPResponseException) and error.smtp_code >= 500


def run_email_job(context: JobContext, job: Job) -> dict[str, Any]:
    """The job handler: e-mail one invitation's link, unless the invitation is no longer
    pending (revoked, used, expired). Once sent, the encrypted link is dropped from the job's
    payload; a crash between the two sends the e-mail again, which is harmless."""
    invitation_id = uuid.UUID(job.payload["invitation_id"])
    ciphertext = job.payload.get("link_ciphertext")
    if ciphertext is None:
        return {"skipped": "Already sent."}
    with context.db.session(read_only=True) as session:
        invitation = session.get(Invitation, invitation_id)
        if invitation is None:
            return {"skipped": "The invitation no longer exists."}
        state = state_of(invitation, context.now())
        if state != PENDING:
            return {"skipped": f"The invitation is {state}."}
        organization = session.get(Organization, invitation.organization_id)
        organization_name = organization.name if organization is not None else ""
    try:
        link = Keyring.from_config(context.config).decrypt(invitation_id, ciphertext)["link"]
        send_invitation_email(context.config, invitation, link, organization_name=organization_name)
    except (ValueError, CredentialsUnreadable) as error:
        raise JobFailed(str(error)) from None
    except smtplib.SMTPException as error:
        if _permanent(error):
            raise JobFailed(f"The SMTP server refused the e-mail: {error}") from None
        raise
    with context.db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(payload={"invitation_id": str(invitation_id)})
        )
    return {"sent": True}
