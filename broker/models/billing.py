"""The billing side: the usage ledger, billing profiles and runs, invoices and their numbers."""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, query_expression, relationship

from billing.metering import from_quanta, to_quanta
from broker.models.base import Base, IdMixin, TimestampMixin, enum_column, utcnow
from broker.models.catalogue import Micros


class Quantity(TypeDecorator[Fraction]):
    """An exact quantity (a `Fraction`), stored as a whole number of `metering.QUANTUM`s."""

    impl = BigInteger
    cache_ok = True

    @property
    def python_type(self) -> type[Fraction]:
        return Fraction

    def process_bind_param(self, value: Fraction | None, dialect: Dialect) -> int | None:
        return None if value is None else to_quanta(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Fraction | None:
        return None if value is None else from_quanta(int(value))


class UsageSource(enum.StrEnum):
    BROKER = "broker"  # instance hours the broker metered from the resource's lifecycle
    PUSH = "push"  # posted by the provider's operator (`POST /v1/usage`)
    POLL = "poll"  # read from the provider's adapter by the polling job


class UsageRecord(Base):
    """One append-only entry of the usage ledger: a quantity of one metric used by one
    resource over `[start, end)`, which never spans two periods.

    `seq` numbers the ledger in the order records were written (never reused), so what an
    invoice billed is a few ranges of it (`UsageTake`) instead of a mark on every record.
    `invoice_id` is not stored: `with_expression(UsageRecord.invoice_id, billed_by())` loads
    the invoice whose take covers the record.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("provider_id", "source", "record_id"),
        # What a billing run looks at (an agency's records past what it has already covered)
        # and the ranges an invoice took.
        Index("ix_usage_records_ledger", "organization_id", "seq"),
        Index("ix_usage_records_listing", "organization_id", "start", "id"),
        Index("ix_usage_records_provider_listing", "provider_id", "start", "id"),
        Index("ix_usage_records_resource", "resource_id", "period", "metric"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="RESTRICT"))
    source: Mapped[UsageSource] = mapped_column(enum_column(UsageSource, length=10))
    record_id: Mapped[str] = mapped_column(String(200))
    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="RESTRICT"))
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    metric: Mapped[str] = mapped_column(String(30))
    quantity: Mapped[Fraction] = mapped_column(Quantity())
    start: Mapped[datetime]
    end: Mapped[datetime]
    period: Mapped[str] = mapped_column(String(7))
    # SHA-256 of what the record says (resource, metric, quantity, interval): a replay with
    # the same id must say the same.
    payload_hash: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    invoice_id: Mapped[uuid.UUID | None] = query_expression()


class UsageTake(Base):
    """What an invoice billed of one agency's ledger: its records of `period` in `currency`
    (their resource's) numbered `(from_seq, through_seq]`.

    The takes of one agency, period and currency by invoices that are not void never overlap,
    and together cover every such record up to the highest `through_seq` but for the ranges of
    voided invoices that no other invoice took again: a draft takes what lies above, and those
    gaps, exactly once (`broker.services.billing`).
    """

    __tablename__ = "usage_takes"
    __table_args__ = (Index("ix_usage_takes_ledger", "organization_id", "period", "currency"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete="RESTRICT"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    period: Mapped[str] = mapped_column(String(7))
    currency: Mapped[str] = mapped_column(String(3))
    from_seq: Mapped[int] = mapped_column(BigInteger)
    through_seq: Mapped[int] = mapped_column(BigInteger)


class LedgerSweep(Base):
    """How far an agency's ledger is wholly billed: every record with `seq <=
    covered_through` is in a take of an invoice that is not void. A billing run starts
    looking above it."""

    __tablename__ = "ledger_sweeps"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    covered_through: Mapped[int] = mapped_column(BigInteger)


class MeterCursor(Base):
    """How far a periodic meter has closed its windows (`until`), by meter name."""

    __tablename__ = "meter_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    until: Mapped[datetime]


class BillingProfile(TimestampMixin, Base):
    """How an agency is invoiced: its legal identity and where and how it is taxed."""

    __tablename__ = "billing_profiles"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    legal_name: Mapped[str] = mapped_column(String(200))
    # Street lines, one per line of text (up to three: EN 16931 has three address lines).
    address: Mapped[str | None] = mapped_column(String(500))
    post_code: Mapped[str | None] = mapped_column(String(20))
    city: Mapped[str | None] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2))
    vat_id: Mapped[str | None] = mapped_column(String(30))
    vat_rate: Mapped[Decimal] = mapped_column(Micros())  # standard rate, a percentage
    # The legal registration identifier (SIRET, BT-47) and its ISO/IEC 6523 scheme.
    legal_id: Mapped[str | None] = mapped_column(String(50))
    legal_id_scheme: Mapped[str | None] = mapped_column(String(4))
    # The language of its invoices (`en` or `fr`).
    language: Mapped[str] = mapped_column(String(2), default="en", server_default="en")
    # The references its orders carry unless they name their own (BT-10: the buyer's service
    # code, BT-13: the commitment number), and whether an order must carry them.
    buyer_reference: Mapped[str | None] = mapped_column(String(100))
    purchase_order_reference: Mapped[str | None] = mapped_column(String(100))
    requires_buyer_reference: Mapped[bool] = mapped_column(default=False, server_default=false())
    requires_purchase_order_reference: Mapped[bool] = mapped_column(
        default=False, server_default=false()
    )
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}


class BillingRunState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class BillingRun(IdMixin, TimestampMixin, Base):
    """A request to (re)build the draft invoices of a period; its job does the work."""

    __tablename__ = "billing_runs"
    __table_args__ = (Index("ix_billing_runs_listing", "created_at", "id"),)

    period: Mapped[str] = mapped_column(String(7), index=True)
    state: Mapped[BillingRunState] = mapped_column(enum_column(BillingRunState))
    requested_by: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    drafts: Mapped[int] = mapped_column(default=0)  # draft invoices built
    finalized: Mapped[int] = mapped_column(default=0)  # agencies already invoiced (left alone)
    error: Mapped[str | None] = mapped_column(String(1000))
    finished_at: Mapped[datetime | None]


class InvoiceState(enum.StrEnum):
    DRAFT = "draft"
    FINALIZED = "finalized"
    PAID = "paid"
    VOID = "void"


class PaymentState(enum.StrEnum):
    """Where an issued invoice's payment stands, as Stripe reported it. It only moves forward
    (`PAYMENT_ORDER`): a late or replayed event never moves it back."""

    PENDING = "pending"  # issued, the sync to the payment processor is queued
    NOT_CONFIGURED = "not_configured"  # no payment processor configured: not sent
    SYNC_FAILED = "sync_failed"  # the sync gave up (see `payment_error`)
    OPEN = "open"  # in Stripe, awaiting payment
    PAYMENT_FAILED = "payment_failed"  # a payment attempt failed; it may still be paid
    PAID = "paid"


PAYMENT_ORDER = {
    PaymentState.PENDING: 0,
    PaymentState.NOT_CONFIGURED: 0,
    PaymentState.SYNC_FAILED: 0,
    PaymentState.OPEN: 1,
    PaymentState.PAYMENT_FAILED: 2,
    PaymentState.PAID: 3,
}


class Invoice(IdMixin, TimestampMixin, Base):
    """One agency's invoice for one period and currency (one live invoice each: a void one
    does not count)."""

    __tablename__ = "invoices"
    __table_args__ = (
        Index(
            "uq_invoices_live",
            "organization_id",
            "period",
            "currency",
            unique=True,
            sqlite_where=text("state != 'void'"),
            postgresql_where=text("state != 'void'"),
        ),
        Index("ix_invoices_listing", "created_at", "id"),
        Index("ix_invoices_agency_listing", "organization_id", "created_at", "id"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    period: Mapped[str] = mapped_column(String(7), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    state: Mapped[InvoiceState] = mapped_column(enum_column(InvoiceState))
    # `<year>-<000001>`, from a gapless per-year series, given at finalization.
    number: Mapped[str | None] = mapped_column(String(20), unique=True)
    subtotal: Mapped[Decimal] = mapped_column(Micros())
    tax: Mapped[Decimal] = mapped_column(Micros())
    total: Mapped[Decimal] = mapped_column(Micros())
    # [{category, rate, base, amount}] as decimal strings.
    taxes: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    billing_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("billing_runs.id", ondelete="SET NULL")
    )
    built_at: Mapped[datetime]
    finalized_at: Mapped[datetime | None]
    finalized_by: Mapped[str | None] = mapped_column(String(100))
    # The whole invoice as issued (seller, buyer, lines, taxes, totals) and its SHA-256.
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64))
    voided_at: Mapped[datetime | None]
    voided_by: Mapped[str | None] = mapped_column(String(100))
    void_reason: Mapped[str | None] = mapped_column(String(500))
    # Payment, collected by Stripe; our database stays the record of what is owed.
    payment_state: Mapped[PaymentState | None] = mapped_column(
        enum_column(PaymentState, length=20), nullable=True
    )
    payment_error: Mapped[str | None] = mapped_column(String(1000))
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    payment_url: Mapped[str | None] = mapped_column(String(1000))
    paid_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(default=1)

    lines: Mapped[list[InvoiceLine]] = relationship(
        back_populates="invoice",
        order_by="InvoiceLine.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __mapper_args__ = {"version_id_col": version}


class InvoiceLine(IdMixin, Base):
    """A resource's quantity of one metric in one period, priced at its order's prices.

    `kind` is `usage` for the invoice's own period, `adjustment` for usage of an earlier,
    already invoiced period (`period` says which).
    """

    __tablename__ = "invoice_lines"
    __table_args__ = (UniqueConstraint("invoice_id", "position"),)

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"))
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20))
    period: Mapped[str] = mapped_column(String(7))
    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="RESTRICT"))
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="RESTRICT"))
    metric: Mapped[str] = mapped_column(String(30))
    quantity: Mapped[Fraction] = mapped_column(Quantity())
    unit_price: Mapped[Decimal] = mapped_column(Micros())
    amount: Mapped[Decimal] = mapped_column(Micros())
    tax_category: Mapped[str] = mapped_column(String(3))
    tax_rate: Mapped[Decimal] = mapped_column(Micros())
    service_start: Mapped[datetime]
    service_end: Mapped[datetime]
    # The references of the order the resource was placed with (BT-10, BT-13).
    buyer_reference: Mapped[str | None] = mapped_column(String(100))
    purchase_order_reference: Mapped[str | None] = mapped_column(String(100))

    invoice: Mapped[Invoice] = relationship(back_populates="lines")


class DocumentNumberSeries(Base):
    """The last number given in a year of one series (`invoice`, `credit_note`). Incremented
    in the issuing transaction, so a rolled-back issue gives its number back: no gaps."""

    __tablename__ = "document_number_series"

    series: Mapped[str] = mapped_column(String(20), primary_key=True)
    year: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    last_number: Mapped[int]


class CreditNote(IdMixin, TimestampMixin, Base):
    """A correction of an issued invoice: it credits parts of the invoice's lines (never
    more than remains uncredited), has its own gapless series (`CN-<year>-<000001>`) and is
    frozen like an invoice from the moment it exists."""

    __tablename__ = "credit_notes"
    __table_args__ = (Index("ix_credit_notes_listing", "created_at", "id"),)

    number: Mapped[str] = mapped_column(String(20), unique=True)
    invoice_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoices.id", ondelete="RESTRICT"), index=True
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), index=True
    )
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(500))
    subtotal: Mapped[Decimal] = mapped_column(Micros())
    tax: Mapped[Decimal] = mapped_column(Micros())
    total: Mapped[Decimal] = mapped_column(Micros())
    taxes: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    issued_at: Mapped[datetime]
    issued_by: Mapped[str] = mapped_column(String(100))
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    snapshot_sha256: Mapped[str] = mapped_column(String(64))
    # Its copy in Stripe, when the invoice it corrects went there.
    stripe_credit_note_id: Mapped[str | None] = mapped_column(String(255))

    lines: Mapped[list[CreditNoteLine]] = relationship(
        back_populates="credit_note",
        order_by="CreditNoteLine.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class CreditNoteLine(IdMixin, Base):
    """The part of one invoice line a credit note credits (net, before tax)."""

    __tablename__ = "credit_note_lines"
    __table_args__ = (UniqueConstraint("credit_note_id", "position"),)

    credit_note_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("credit_notes.id", ondelete="CASCADE")
    )
    position: Mapped[int]
    invoice_line_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("invoice_lines.id", ondelete="RESTRICT"), index=True
    )
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="RESTRICT"))
    amount: Mapped[Decimal] = mapped_column(Micros())
    tax_category: Mapped[str] = mapped_column(String(3))
    tax_rate: Mapped[Decimal] = mapped_column(Micros())

    credit_note: Mapped[CreditNote] = relationship(back_populates="lines")


class StripeCustomer(Base):
    """The Stripe customer of an agency, made once and reused for all its invoices."""

    __tablename__ = "stripe_customers"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StripeEvent(Base):
    """A webhook event already received: a replay (same id) changes nothing."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created: Mapped[datetime]  # when Stripe says the event happened
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("invoices.id", ondelete="SET NULL")
    )
    outcome: Mapped[str] = mapped_column(String(200))


class InvoicePayment(IdMixin, TimestampMixin, Base):
    """A payment received outside Stripe — a bank transfer, as French public buyers pay —
    recorded by finance against an issued invoice. Payments add up: the invoice is paid when
    they reach what it is owed, its total less its credit notes (`broker.services.transfers`).
    """

    __tablename__ = "invoice_payments"
    # An invoice's payments in the order they were recorded (its listing, and the sum).
    __table_args__ = (Index("ix_invoice_payments_listing", "invoice_id", "created_at", "id"),)

    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    amount: Mapped[Decimal] = mapped_column(Micros())
    currency: Mapped[str] = mapped_column(String(3))
    received_on: Mapped[date]  # the day the money arrived, as the bank statement says
    reference: Mapped[str] = mapped_column(String(140))  # the transfer's reference
    recorded_by: Mapped[str] = mapped_column(String(100))
