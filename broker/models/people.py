"""People: who signs in through an identity provider, the organizations they belong to (with
roles, like API clients), invitations, and their browser sessions.

A person (`User`) has one identity per identity provider (issuer + subject), an e-mail, a
display name and a preferred language. `Membership` gives them roles in an organization (the
roles its kind allows). An identity provider (`IdentityProvider`) is an OpenID Connect issuer
the consortium trusts, with how a person's organization is found: a claim (such as `siret`)
matched against an identifier registered on the organization (`OrganizationIdentifier`), or an
e-mail domain registered the same way. Sessions are server-side records, so that disabling a
person or signing out ends them at once; the cookie holds a random token whose hash is stored.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.models.base import Base, IdMixin, TimestampMixin, utcnow

LANGUAGES = ("fr", "en")


class User(IdMixin, TimestampMixin, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(String(320))
    # The e-mail case-folded: one person per address.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(2), default="fr")
    disabled_at: Mapped[datetime | None]

    identities: Mapped[list[UserIdentity]] = relationship(back_populates="user")
    memberships: Mapped[list[Membership]] = relationship(back_populates="user")

    @property
    def active(self) -> bool:
        return self.disabled_at is None


class UserIdentity(IdMixin, TimestampMixin, Base):
    """Who the person is at one identity provider: its issuer and their subject there."""

    __tablename__ = "user_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))

    user: Mapped[User] = relationship(back_populates="identities")


class Membership(IdMixin, TimestampMixin, Base):
    """A person's roles in one organization (none until granted)."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "organization_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)

    user: Mapped[User] = relationship(back_populates="memberships")


class OrganizationIdentifier(IdMixin, TimestampMixin, Base):
    """An identifier an organization is known by at identity providers: a `siret`, or an
    `email_domain` its people's addresses end with."""

    __tablename__ = "organization_identifiers"
    __table_args__ = (UniqueConstraint("scheme", "value"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    scheme: Mapped[str] = mapped_column(String(50))
    value: Mapped[str] = mapped_column(String(255))


class IdentityProvider(IdMixin, TimestampMixin, Base):
    """An OpenID Connect provider people sign in with."""

    __tablename__ = "identity_providers"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    issuer: Mapped[str] = mapped_column(String(500), unique=True)
    client_id: Mapped[str] = mapped_column(String(255))
    # Encrypted with the credential keyring, bound to the row's id.
    client_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[str] = mapped_column(String(500), default="openid email profile")
    # The claim naming the person's organization, matched against its identifiers of the
    # same scheme (e.g. `siret`); None: by e-mail domain only.
    organization_claim: Mapped[str | None] = mapped_column(String(100))
    match_email_domain: Mapped[bool] = mapped_column(default=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    version: Mapped[int] = mapped_column(default=1)


class Invitation(IdMixin, TimestampMixin, Base):
    """An invitation to join an organization with roles: the link's token is shown once (its
    hash is kept); it expires, and it is used once."""

    __tablename__ = "invitations"

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    email_key: Mapped[str] = mapped_column(String(320), index=True)
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    invited_by: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime | None]
    accepted_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None]


class BrowserSession(IdMixin, Base):
    """A person's signed-in browser. Ends when they sign out, when they are disabled, when it
    has been idle too long or lived its absolute lifetime."""

    __tablename__ = "browser_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    # The organization the person acts for (one of their memberships).
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    identity_provider_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("identity_providers.id")
    )
    # For the identity provider's end_session_endpoint (`id_token_hint`).
    id_token: Mapped[str | None] = mapped_column(Text)
    # Sent back in `X-CSRF-Token` (or a form field) with every unsafe request of the session.
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(50))
