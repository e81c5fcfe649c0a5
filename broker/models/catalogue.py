"""The catalogue: providers with their sovereignty evidence, and versioned offers.

A provider's sovereignty columns (`regions`, `operator_country`, `parent_country`,
`extraterritorial_exposure`, `exposed`) hold what *counts*: they are derived from its verified
evidence by `broker/services/evidence.py` on every change, never written from a claim."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.money import from_micros, to_micros
from broker.models.base import Base, IdMixin, TimestampMixin, enum_column


class Micros(TypeDecorator[Decimal]):
    """An exact decimal with up to 6 places, stored as an integer of millionths.

    SQLite has no decimal type (NUMERIC goes through floating point), and integers sort and
    compare exactly on every backend, so money never round-trips through REAL.
    """

    impl = BigInteger
    cache_ok = True

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        return None if value is None else to_micros(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_micros(int(value))


class ProviderState(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class OfferState(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    RETIRED = "retired"


class Provider(IdMixin, TimestampMixin, Base):
    """A sovereign cloud provider of the consortium, operated by one provider organization."""

    __tablename__ = "providers"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    # The name's confusable skeleton (broker/names.py): no provider may pass for another.
    name_key: Mapped[str] = mapped_column(String(800), unique=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), index=True
    )
    adapter: Mapped[str] = mapped_column(String(50))
    adapter_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # [{code, country, city, datacenter_tier}]
    regions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    operator_country: Mapped[str] = mapped_column(String(2))
    parent_country: Mapped[str | None] = mapped_column(String(2))
    extraterritorial_exposure: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Derived from `extraterritorial_exposure`; indexed for `sovereign_only`.
    exposed: Mapped[bool] = mapped_column(default=False, index=True)
    state: Mapped[ProviderState] = mapped_column(
        enum_column(ProviderState), default=ProviderState.ACTIVE
    )
    version: Mapped[int] = mapped_column(default=1)

    # Its live claims, pending or verified (see `broker/services/evidence.py`): what counts
    # and what waits. Rejected, withdrawn and superseded ones are history, read by query, so
    # a catalogue page never loads them. A claim decided in this session stays in the list
    # until it is reloaded: readers filter by state.
    evidence: Mapped[list[Evidence]] = relationship(
        back_populates="provider",
        primaryjoin="and_(Provider.id == Evidence.provider_id, "
        "Evidence.state.in_(['pending', 'verified']))",
        cascade="all, delete-orphan",
        order_by="Evidence.submitted_at",
        lazy="selectin",
    )

    # Bumped by the service on every change (evidence lives in child rows, so the provider
    # row must be touched too); the UPDATE still checks the version it read (412 if stale).
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}

    def region(self, code: str) -> dict[str, Any] | None:
        return next((r for r in self.regions if r["code"] == code), None)


class ProviderCredentials(Base):
    """A provider's adapter credentials, encrypted (see broker/services/credentials.py).

    Kept out of the provider row so no read of the catalogue ever loads them.
    """

    __tablename__ = "provider_credentials"

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="CASCADE"), primary_key=True
    )
    ciphertext: Mapped[str] = mapped_column(Text)
    # The names of the fields set (never their values), to show operators what is there.
    fields: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime]


class EvidenceKind(enum.StrEnum):
    CERTIFICATION = "certification"
    JURISDICTION = "jurisdiction"
    REGION = "region"


class EvidenceState(enum.StrEnum):
    PENDING = "pending"  # claimed, not vouched for: counts nowhere
    VERIFIED = "verified"  # vouched for by the consortium or a trusted issuer's signature
    REJECTED = "rejected"  # refused by an assessor, or its issuer's key was removed
    WITHDRAWN = "withdrawn"  # taken back by the provider's operators
    SUPERSEDED = "superseded"  # replaced by newer verified evidence of the same subject


class Evidence(IdMixin, Base):
    """One sovereignty claim of a provider and who vouched for it.

    A certification (scheme, level, validity, issuer, document and its SHA-256, or a signed
    statement), the jurisdiction (operator and parent countries, foreign-law exposure) or one
    region (country, city, datacenter tier). Only verified evidence counts, and a
    certification only between `valid_from` and `valid_until`.
    """

    __tablename__ = "provider_evidence"
    __table_args__ = (
        Index("ix_provider_evidence_standing", "provider_id", "kind", "state"),
        Index("ix_provider_evidence_scheme", "scheme", "state", "provider_id"),
        Index("ix_provider_evidence_queue", "state", "submitted_at", "id"),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="CASCADE"))
    kind: Mapped[EvidenceKind] = mapped_column(enum_column(EvidenceKind))
    state: Mapped[EvidenceState] = mapped_column(enum_column(EvidenceState))
    # certification
    scheme: Mapped[str | None] = mapped_column(String(40))
    level: Mapped[str | None] = mapped_column(String(60))
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    issuer: Mapped[str | None] = mapped_column(String(200))
    evidence_url: Mapped[str | None] = mapped_column(String(500))
    document_sha256: Mapped[str | None] = mapped_column(String(64))
    statement: Mapped[str | None] = mapped_column(Text)
    trusted_issuer_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("trusted_issuers.id", ondelete="SET NULL"), index=True
    )
    key_id: Mapped[str | None] = mapped_column(String(200))
    # jurisdiction
    operator_country: Mapped[str | None] = mapped_column(String(2))
    parent_country: Mapped[str | None] = mapped_column(String(2))
    extraterritorial_exposure: Mapped[list[str] | None] = mapped_column(JSON)
    # region
    region_code: Mapped[str | None] = mapped_column(String(50))
    country: Mapped[str | None] = mapped_column(String(2))
    city: Mapped[str | None] = mapped_column(String(100))
    datacenter_tier: Mapped[int | None]
    # who claimed it, and who decided
    submitted_by: Mapped[str] = mapped_column(String(200))
    submitted_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_by_organization_id: Mapped[uuid.UUID | None]
    decided_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(String(500))

    provider: Mapped[Provider] = relationship(back_populates="evidence")


class TrustedIssuer(IdMixin, TimestampMixin, Base):
    """A certification body whose signed statements verify themselves (admin-managed).

    `issuer` is the `iss` its statements carry; `jwks` its public keys. Removing a key (or the
    issuer) makes the statements it signed stop counting."""

    __tablename__ = "trusted_issuers"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    name_key: Mapped[str] = mapped_column(String(800), unique=True)
    issuer: Mapped[str] = mapped_column(String(500), unique=True)
    jwks: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}


class Offer(IdMixin, TimestampMixin, Base):
    """One version of a provider's offer. The versions of an offer share `(provider, sku)`.

    A draft can be edited; a published version never changes: editing it makes the next
    version as a draft, and publishing that one retires its predecessor. Orders pin a version.
    """

    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("provider_id", "sku", "version"),
        Index("ix_offers_search_price", "state", "monthly_price", "id"),
        Index("ix_offers_search_currency_price", "state", "currency", "monthly_price", "id"),
        Index("ix_offers_search_vcpu", "state", "vcpu", "id"),
        Index("ix_offers_search_ram", "state", "ram_gib", "id"),
        Index("ix_offers_search_name", "state", "name", "id"),
        Index("ix_offers_region_country", "region_country"),
        Index("ix_offers_search_kind", "state", "kind", "monthly_price", "id"),
        # A search's `q` is `search_text LIKE '%…%'`: on PostgreSQL a trigram index finds the
        # matching rows without reading the others. SQLite has no such index: there it is a
        # plain one (a `LIKE '%…%'` cannot seek in it), so one schema describes both databases.
        Index(
            "ix_offers_search_text",
            "search_text",
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        ),
    )

    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), index=True
    )
    sku: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20), default="vm")
    state: Mapped[OfferState] = mapped_column(enum_column(OfferState), default=OfferState.DRAFT)
    region_code: Mapped[str] = mapped_column(String(50))
    region_country: Mapped[str] = mapped_column(String(2))
    region_city: Mapped[str | None] = mapped_column(String(100))
    datacenter_tier: Mapped[int | None]
    # What it sells, per kind (see `broker/services/offers.py`, `KIND_SPECS`): a machine's size
    # (0 for storage), a volume's `size_gib`, `performance` class and `iops`, and the
    # `encrypted`, `versioning` and `immutability_days` of a bucket (a vault when set).
    vcpu: Mapped[int]
    ram_gib: Mapped[Decimal] = mapped_column(Numeric(10, 3))
    disk_gib: Mapped[int]
    gpu: Mapped[int] = mapped_column(default=0)
    size_gib: Mapped[int | None]
    performance: Mapped[str | None] = mapped_column(String(40))
    iops: Mapped[int | None]
    encrypted: Mapped[bool] = mapped_column(default=False, server_default="0")
    versioning: Mapped[bool] = mapped_column(default=False, server_default="0")
    immutability_days: Mapped[int | None]
    # [{metric, unit_price, currency, tiers?}] with decimals as strings.
    prices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    currency: Mapped[str] = mapped_column(String(3))
    monthly_price: Mapped[Decimal] = mapped_column(Micros())
    published_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    superseded_by_id: Mapped[uuid.UUID | None]
    # Optimistic-concurrency counter of edits (the ETag), not the offer's version number.
    # Bumped by the service (claims live in child rows); the UPDATE checks the one read.
    revision: Mapped[int] = mapped_column(default=1)
    # What a search's `q` looks in: the name, SKU and provider's name, lower-cased, one line
    # each. Derived, and kept by `broker/services/offers.py` (`search_text`) on every write
    # of an offer and every rename of its provider; never loaded with the offer.
    search_text: Mapped[str] = mapped_column(Text, deferred=True)

    provider: Mapped[Provider] = relationship(lazy="joined", innerjoin=True)
    # The compliance schemes this offer claims: a subset of its provider's evidence.
    compliance: Mapped[list[OfferCompliance]] = relationship(
        cascade="all, delete-orphan", order_by="OfferCompliance.scheme", lazy="selectin"
    )

    __mapper_args__ = {"version_id_col": revision, "version_id_generator": False}

    @property
    def compliance_schemes(self) -> list[str]:
        return [claim.scheme for claim in self.compliance]


class OfferCompliance(Base):
    """A compliance scheme an offer claims (its evidence lives on the provider)."""

    __tablename__ = "offer_compliance"

    offer_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offers.id", ondelete="CASCADE"), primary_key=True
    )
    scheme: Mapped[str] = mapped_column(String(40), primary_key=True, index=True)
