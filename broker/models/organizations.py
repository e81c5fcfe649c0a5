"""Organizations (agencies, provider operators, the consortium) and their API clients."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.models.base import Base, IdMixin, TimestampMixin, enum_column


class OrganizationKind(enum.StrEnum):
    AGENCY = "agency"
    PROVIDER = "provider"
    CONSORTIUM = "consortium"


class Role(enum.StrEnum):
    BUYER = "buyer"
    APPROVER = "approver"
    PROVIDER = "provider"
    FINANCE = "finance"
    ASSESSOR = "assessor"  # vouches for (or rejects) providers' sovereignty evidence
    ADMIN = "admin"


# Which roles an organization of each kind may hand to its clients.
ROLES_BY_KIND: dict[OrganizationKind, frozenset[Role]] = {
    OrganizationKind.AGENCY: frozenset({Role.BUYER, Role.APPROVER}),
    OrganizationKind.PROVIDER: frozenset({Role.PROVIDER}),
    OrganizationKind.CONSORTIUM: frozenset({Role.FINANCE, Role.ASSESSOR, Role.ADMIN}),
}


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The name's confusable skeleton (broker/names.py): no organization may pass for another.
    name_key: Mapped[str] = mapped_column(String(800), unique=True)
    kind: Mapped[OrganizationKind] = mapped_column(enum_column(OrganizationKind))
    version: Mapped[int] = mapped_column(default=1)

    clients: Mapped[list[ApiClient]] = relationship(back_populates="organization")

    # UPDATE … WHERE version = :read_version; a concurrent writer gets StaleDataError (412).
    __mapper_args__ = {"version_id_col": version}


class ApiClient(IdMixin, TimestampMixin, Base):
    """An OAuth 2.0 client (machine identity) of one organization, holding one or more roles.

    Only a hash of the secret is stored; the secret itself is shown once, at creation or
    rotation. Every access token carries the `credential_version` it was issued under, and the
    resource server refuses a token whose version is no longer the client's (rotation) or
    whose client is revoked (`broker.auth.server.BrokerTokenValidator`).
    """

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), index=True
    )
    roles: Mapped[list[str]] = mapped_column(JSON)
    secret_hash: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Bumped by each rotation of the secret; tokens issued under an older version are refused.
    credential_version: Mapped[int] = mapped_column(default=1, server_default="1")
    rotated_at: Mapped[datetime | None] = mapped_column(default=None)

    organization: Mapped[Organization] = relationship(back_populates="clients")
