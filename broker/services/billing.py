"""Billing: agencies' billing profiles, billing runs that build draft invoices, finalization.

A billing run (finance, for one period) queues a job that first closes the meter's finished
hours, then builds, per agency and currency, a draft invoice from the usage ledger: a line per
resource and metric at the prices its order pinned, VAT per tax category, totals that add up.
A draft takes the ranges of the ledger it bills (`broker.services.ledger`), so a rebuilt draft
bills exactly what it shows and nothing is billed twice. Usage of an earlier, already
invoiced period that arrives late is billed on the next draft as adjustment lines.

Finalizing freezes a draft: in one transaction it takes the next number of the year's gapless
series, stores a snapshot of the whole invoice with its SHA-256, and queues its payment
(`broker.services.payments`); from then on nothing about the invoice or the usage it bills
changes. Corrections (void, credit notes) are `broker.services.corrections`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from billing import exports, invoicing
from billing.metering import parse_period, period_bounds, period_of, shown
from billing.money import round_amount, trim_decimals
from billing.rating import Price
from broker import access, db
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import (
    AgencyPolicy,
    BillingProfile,
    BillingRun,
    BillingRunState,
    DocumentNumberSeries,
    Invoice,
    InvoiceLine,
    InvoiceState,
    Order,
    Organization,
    OrganizationKind,
    Resource,
)
from broker.services import audit, ledger, offers, payments, usage
from broker.services.pagination import Page, paginate
from broker.services.preconditions import IfMatch

BILLING_JOB = "billing.run"
DEFAULT_CURRENCY = "EUR"


# Billing profiles ----------------------------------------------------------------------------


def _agency(session: Session, organization_id: uuid.UUID) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None or organization.kind is not OrganizationKind.AGENCY:
        raise NotFound("No such agency.")
    return organization


def profile_view(
    session: Session, organization: Organization, config: Mapping[str, Any]
) -> dict[str, Any]:
    """The agency's billing profile; without one, the consortium's defaults (version 0)."""
    row = session.get(BillingProfile, organization.id)
    if row is not None:
        return {
            "organization_id": organization.id,
            "legal_name": row.legal_name,
            "address": row.address,
            "country": row.country,
            "vat_id": row.vat_id,
            "vat_rate": row.vat_rate,
            "version": row.version,
        }
    return {
        "organization_id": organization.id,
        "legal_name": organization.name,
        "address": None,
        "country": config["SELLER"]["country"],
        "vat_id": None,
        "vat_rate": Decimal(config["DEFAULT_VAT_RATE"]),
        "version": 0,
    }


def get_profile(
    session: Session, caller: Caller, organization_id: uuid.UUID, config: Mapping[str, Any]
) -> dict[str, Any]:
    if not access.may_read_agency(caller, organization_id):
        raise NotFound("No such agency.")
    return profile_view(session, _agency(session, organization_id), config)


def put_profile(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    data: Mapping[str, Any],
    *,
    if_match: IfMatch,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Replace an agency's billing profile (finance, admins). Invoices already finalized keep
    the profile they were issued with (in their snapshot); drafts use it when rebuilt."""
    organization = _agency(session, organization_id)
    row = session.get(BillingProfile, organization_id)
    if_match.check(row.version if row is not None else 0, "billing profile")
    before = audit.snapshot(row) if row is not None else None
    if row is None:
        row = BillingProfile(organization_id=organization_id)
        session.add(row)
    for name in ("legal_name", "address", "country", "vat_id", "vat_rate"):
        setattr(row, name, data.get(name))
    session.flush()
    audit.record(
        session,
        caller,
        "billing_profile.updated",
        "billing_profile",
        organization_id,
        organization_id=organization_id,
        before=before,
        after=audit.snapshot(row),
    )
    return profile_view(session, organization, config)


# Billing runs --------------------------------------------------------------------------------


def start_run(session: Session, caller: Caller, period: str, now: datetime) -> BillingRun:
    """Queue the building of `period`'s drafts (the current period may be previewed; a future
    one is refused)."""
    try:
        parse_period(period)
    except ValueError as error:
        raise ValidationFailed(errors={"period": [str(error)]}) from None
    if period > period_of(now):
        raise ValidationFailed(errors={"period": ["This period has not started yet."]})
    run = BillingRun(
        id=uuid.uuid4(), period=period, state=BillingRunState.QUEUED, requested_by=caller.client_id
    )
    session.add(run)
    session.flush()
    job = enqueue(session, BILLING_JOB, {"billing_run_id": str(run.id)}, max_attempts=5)
    run.job_id = job.id
    audit.record(
        session,
        caller,
        "billing_run.requested",
        "billing_run",
        run.id,
        organization_id=None,
        after={"period": period},
    )
    return run


def get_run(session: Session, run_id: uuid.UUID) -> BillingRun:
    run = session.get(BillingRun, run_id)
    if run is None:
        raise NotFound("No such billing run.")
    return run


def list_runs(session: Session, *, limit: int, cursor: str | None) -> Page[BillingRun]:
    return paginate(
        session,
        select(BillingRun),
        [BillingRun.created_at, BillingRun.id],
        limit=limit,
        cursor=cursor,
        descending=True,
    )


def run_billing_job(context: JobContext, job: Any) -> dict[str, Any]:
    """Build every agency's drafts for the run's period, one agency per transaction (a
    re-run after a crash rebuilds the same drafts)."""
    run_id = uuid.UUID(job.payload["billing_run_id"])
    with context.db.transaction() as session:
        run = session.get(BillingRun, run_id)
        if run is None:
            raise JobFailed("The billing run no longer exists.")
        run.state = BillingRunState.RUNNING
        period = run.period
    usage.meter_closed_hours(context)  # the period's last hours are in the ledger
    with context.db.transaction() as session:
        through_seq = ledger.watermark(session)
    _, period_end = period_bounds(period)
    with context.db.session(read_only=True) as session:
        agencies = list(
            session.scalars(
                select(Organization.id).where(
                    Organization.kind == OrganizationKind.AGENCY,
                    Organization.created_at < period_end,
                )
            )
        )
    drafts = finalized = 0
    for organization_id in agencies:
        with context.db.transaction() as session:
            built, kept = build_drafts(
                session, organization_id, period, run_id, context.now(), context.config, through_seq
            )
        drafts, finalized = drafts + built, finalized + kept
    with context.db.transaction() as session:
        run = session.get(BillingRun, run_id)
        assert run is not None
        run.state, run.drafts, run.finalized = BillingRunState.SUCCEEDED, drafts, finalized
        run.finished_at = context.now()
    return {"period": period, "drafts": drafts, "finalized": finalized}


def billing_job_dead(session: Session, job: Any, now: datetime) -> None:
    run = session.get(BillingRun, uuid.UUID(job.payload["billing_run_id"]))
    if run is not None:
        run.state, run.error, run.finished_at = BillingRunState.FAILED, job.last_error, now


# Building drafts -----------------------------------------------------------------------------


def build_drafts(
    session: Session,
    organization_id: uuid.UUID,
    period: str,
    run_id: uuid.UUID | None,
    now: datetime,
    config: Mapping[str, Any],
    through_seq: int,
) -> tuple[int, int]:
    """(Re)build the agency's draft for `period` in each currency it has usage in (a zero
    invoice when it has none), billing the ledger up to `through_seq` (a `ledger.watermark`);
    returns (drafts built, currencies already finalized)."""
    live = {
        invoice.currency: invoice
        for invoice in session.scalars(
            select(Invoice)
            .where(
                Invoice.organization_id == organization_id,
                Invoice.period == period,
                Invoice.state != InvoiceState.VOID,
            )
            .with_for_update()
        )
    }
    drafts = [invoice for invoice in live.values() if invoice.state is InvoiceState.DRAFT]
    unbilled = ledger.unbilled(session, organization_id, through_seq)
    currencies = {currency for billed, currency in unbilled.ranges if billed <= period} | {
        invoice.currency for invoice in drafts
    }
    if not live and not currencies:
        policy = session.get(AgencyPolicy, organization_id)
        currencies = {policy.currency if policy else DEFAULT_CURRENCY}
    organization = _agency(session, organization_id)
    profile = profile_view(session, organization, config)
    tax = invoicing.TaxProfile(profile["country"], profile["vat_rate"])
    built = 0
    taken: set[tuple[str, str]] = set()
    for currency in sorted(currencies):
        invoice = live.get(currency)
        if invoice is not None and invoice.state is not InvoiceState.DRAFT:
            continue  # issued: its usage stays put; late usage goes on the next period
        if invoice is None:
            invoice = Invoice(
                id=uuid.uuid4(),
                organization_id=organization_id,
                period=period,
                currency=currency,
                state=InvoiceState.DRAFT,
                subtotal=Decimal(0),
                tax=Decimal(0),
                total=Decimal(0),
                built_at=now,
            )
            session.add(invoice)
            session.flush()
        taken |= _take_usage(session, invoice, unbilled)
        _fill(session, invoice, _consumption(session, invoice), tax)
        invoice.billing_run_id, invoice.built_at = run_id, now
        built += 1
    ledger.sweep(session, organization_id, unbilled, taken)
    return built, len(live) - len(drafts)


def _take_usage(
    session: Session, invoice: Invoice, unbilled: ledger.Unbilled
) -> set[tuple[str, str]]:
    """Give the draft the agency's unbilled usage in its currency: its period's, and earlier
    periods' that arrived after they were invoiced (not those of a period still in draft).
    What a rebuilt draft took before stays its own: only new usage is added. Returns the
    (period, currency) pairs taken."""
    other_drafts = set(
        session.scalars(
            select(Invoice.period).where(
                Invoice.organization_id == invoice.organization_id,
                Invoice.currency == invoice.currency,
                Invoice.state == InvoiceState.DRAFT,
                Invoice.id != invoice.id,
            )
        )
    )
    pairs = {
        (period, currency)
        for period, currency in unbilled.ranges
        if currency == invoice.currency and period <= invoice.period and period not in other_drafts
    }
    ledger.take(session, invoice, [r for pair in sorted(pairs) for r in unbilled.ranges[pair]])
    return pairs


def _consumption(session: Session, invoice: Invoice) -> list[invoicing.Consumption]:
    """What the draft's usage amounts to, per resource, metric and period, with prices."""
    groups = ledger.consumption(session, invoice.id)
    resource_ids = {row[0] for row in groups}
    placed = {
        resource_id: (provider_id, order_id)
        for resource_id, provider_id, order_id in session.execute(
            select(Resource.id, Resource.provider_id, Resource.order_id).where(
                Resource.id.in_(resource_ids)
            )
        )
    }
    prices = _prices(session, {order_id for _, order_id in placed.values()})
    late = [(resource_id, metric, period) for resource_id, metric, period, *_ in groups]
    late = [key for key in late if key[2] < invoice.period]
    billed_before = ledger.billed_elsewhere(session, late, invoice.id)
    items = []
    for resource_id, metric, period, quantity, start, end in groups:
        provider_id, order_id = placed[resource_id]
        price = prices[order_id].get(metric)
        if price is None:
            continue  # a metric the order has no price for is recorded, not charged
        items.append(
            invoicing.Consumption(
                kind=invoicing.USAGE if period == invoice.period else invoicing.ADJUSTMENT,
                period=period,
                resource_id=str(resource_id),
                provider_id=str(provider_id),
                metric=metric,
                quantity=quantity,
                price=price,
                service_start=start,
                service_end=end,
                tax_category=price.tax_category,
                already_billed=billed_before.get((resource_id, metric, period), Fraction(0)),
            )
        )
    return items


def _prices(session: Session, order_ids: set[uuid.UUID]) -> dict[uuid.UUID, dict[str, Price]]:
    return {
        order_id: {price.metric: price for price in offers.parse_prices(raw)}
        for order_id, raw in session.execute(
            select(Order.id, Order.prices).where(Order.id.in_(order_ids))
        )
    }


def _fill(
    session: Session,
    invoice: Invoice,
    items: list[invoicing.Consumption],
    tax: invoicing.TaxProfile,
) -> None:
    totals = invoicing.build(invoice.currency, items, tax)
    invoice.lines.clear()
    session.flush()
    for position, line in enumerate(totals.lines, start=1):
        invoice.lines.append(
            InvoiceLine(
                id=uuid.uuid4(),
                position=position,
                kind=line.kind,
                period=line.period,
                resource_id=uuid.UUID(line.resource_id),
                provider_id=uuid.UUID(line.provider_id),
                metric=line.metric,
                quantity=line.quantity,
                unit_price=line.unit_price,
                amount=line.amount,
                tax_category=line.tax_category,
                tax_rate=line.tax_rate,
                service_start=line.service_start,
                service_end=line.service_end,
            )
        )
    invoice.taxes = [tax_row(tax_line, invoice.currency) for tax_line in totals.taxes]
    invoice.subtotal, invoice.tax, invoice.total = totals.subtotal, totals.tax, totals.total


# Invoices ------------------------------------------------------------------------------------


LINE_OUTLIER = "line_outlier"


@dataclass(frozen=True)
class LineFlag:
    """A line finance should look at before finalizing, and why (`outlier_flags`)."""

    invoice_id: uuid.UUID
    position: int
    resource_id: uuid.UUID
    metric: str
    amount: Decimal
    currency: str
    share: Decimal  # percent of the invoice's subtotal
    detail: str
    code: str = LINE_OUTLIER


def outlier_flags(invoice: Invoice, config: Mapping[str, Any]) -> list[LineFlag]:
    """The lines above `BILLING_OUTLIER_SHARE` percent of the invoice's subtotal, when the
    subtotal is over `BILLING_OUTLIER_MIN_SUBTOTAL`: one line that outweighs all the others
    is how billed usage that never happened shows. Computed from the lines whenever the
    invoice is read, never stored; finalizing stays finance's decision."""
    share = Decimal(config["BILLING_OUTLIER_SHARE"])
    floor = Decimal(config["BILLING_OUTLIER_MIN_SUBTOTAL"])
    subtotal = invoice.subtotal
    if subtotal <= 0 or subtotal <= floor:
        return []
    flags = []
    for line in invoice.lines:
        percent = line.amount * 100 / subtotal
        if percent > share:
            shown_share = percent.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
            flags.append(
                LineFlag(
                    invoice_id=invoice.id,
                    position=line.position,
                    resource_id=line.resource_id,
                    metric=line.metric,
                    amount=line.amount,
                    currency=invoice.currency,
                    share=shown_share,
                    detail=f"Line {line.position} ({line.metric}, "
                    f"{money_text(line.amount, invoice.currency)} {invoice.currency}) is "
                    f"{shown_share} % of the subtotal "
                    f"{money_text(subtotal, invoice.currency)} {invoice.currency}: over "
                    f"{trim_decimals(share, keep=0)} % of an invoice over "
                    f"{trim_decimals(floor, keep=0)}. Check its usage before finalizing.",
                )
            )
    return flags


def run_flags(session: Session, run: BillingRun, config: Mapping[str, Any]) -> list[LineFlag]:
    """The outlier flags of the invoices `run` built (void ones aside), oldest invoice first."""
    invoices = session.scalars(
        select(Invoice)
        .where(
            Invoice.billing_run_id == run.id,
            Invoice.state != InvoiceState.VOID,
            Invoice.subtotal > Decimal(config["BILLING_OUTLIER_MIN_SUBTOTAL"]),
        )
        .options(selectinload(Invoice.lines))
        .order_by(Invoice.created_at, Invoice.id)
    )
    return [flag for invoice in invoices for flag in outlier_flags(invoice, config)]


def get_invoice(
    session: Session, caller: Caller, invoice_id: uuid.UUID, *, lock: bool = False
) -> Invoice:
    invoice = session.get(Invoice, invoice_id, with_for_update=lock)
    if invoice is None or not access.may_read_agency(caller, invoice.organization_id):
        raise NotFound("No such invoice.")
    return invoice


def list_invoices(
    session: Session,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None,
    period: str | None = None,
    state: InvoiceState | None = None,
    agency_id: uuid.UUID | None = None,
) -> Page[Invoice]:
    statement = select(Invoice)
    if not access.sees_every_agency(caller):
        statement = statement.where(Invoice.organization_id == caller.organization_id)
    if agency_id is not None:
        statement = statement.where(Invoice.organization_id == agency_id)
    if period is not None:
        statement = statement.where(Invoice.period == period)
    if state is not None:
        statement = statement.where(Invoice.state == state)
    return paginate(
        session,
        statement,
        [Invoice.created_at, Invoice.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{period}:{state}:{agency_id}",
    )


SERIES_PREFIX = {"invoice": "", "credit_note": "CN-"}


def next_number(session: Session, year: int, series: str = "invoice") -> str:
    """The next number of the year's `invoice` or `credit_note` series. The series row stays
    locked until the transaction ends, so numbers are given one at a time, and a rollback
    gives its number back."""
    statement = (
        db.insert(session, DocumentNumberSeries)
        .values(series=series, year=year, last_number=1)
        .on_conflict_do_update(
            index_elements=["series", "year"],
            set_={"last_number": DocumentNumberSeries.last_number + 1},
        )
        .returning(DocumentNumberSeries.last_number)
    )
    number = session.scalar(statement)
    return f"{SERIES_PREFIX[series]}{year}-{number:06d}"


def finalize(
    session: Session,
    caller: Caller,
    invoice_id: uuid.UUID,
    now: datetime,
    config: Mapping[str, Any],
) -> Invoice:
    """Issue a draft: number, snapshot and hash, in this one transaction."""
    invoice = get_invoice(session, caller, invoice_id, lock=True)
    if invoice.state is not InvoiceState.DRAFT:
        raise Conflict(f"The invoice is {invoice.state}: it cannot change.", code="invoice_issued")
    _, period_end = period_bounds(invoice.period)
    if now < period_end:
        raise Conflict(f"The period {invoice.period} has not ended yet.", code="period_not_ended")
    if invoice.built_at < period_end:
        raise Conflict(
            "This draft was built before its period ended: run billing for the period again.",
            code="draft_outdated",
        )
    invoice.number = next_number(session, now.year)
    invoice.state, invoice.finalized_at, invoice.finalized_by = (
        InvoiceState.FINALIZED,
        now,
        caller.client_id,
    )
    organization = _agency(session, invoice.organization_id)
    profile = profile_view(session, organization, config)
    invoice.snapshot = snapshot(invoice, organization, profile, config)
    invoice.snapshot_sha256 = invoicing.fingerprint(invoice.snapshot)
    payments.queue_sync(session, invoice, config)
    session.flush()
    audit.record(
        session,
        caller,
        "invoice.finalized",
        "invoice",
        invoice.id,
        organization_id=invoice.organization_id,
        before={"state": InvoiceState.DRAFT.value},
        after={
            "state": invoice.state.value,
            "number": invoice.number,
            "total": str(invoice.total),
            "snapshot_sha256": invoice.snapshot_sha256,
        },
    )
    return invoice


def snapshot(
    invoice: Invoice,
    organization: Organization,
    profile: Mapping[str, Any],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """The invoice as issued, whole: what exports and payments work from, and what its hash
    covers. Amounts and quantities are decimal strings."""
    start, end = period_bounds(invoice.period)
    assert invoice.finalized_at is not None
    terms = int(config["PAYMENT_TERMS_DAYS"])
    return {
        "document_type": "invoice",
        "id": str(invoice.id),
        "number": invoice.number,
        "issued_at": iso(invoice.finalized_at),
        "due_date": (invoice.finalized_at + timedelta(days=terms)).date().isoformat(),
        "payment_terms": f"{terms} days net",
        "period": invoice.period,
        "period_start": iso(start),
        "period_end": iso(end),
        "currency": invoice.currency,
        "seller": dict(config["SELLER"]),
        "buyer": {
            "organization_id": str(organization.id),
            "name": organization.name,
            "legal_name": profile["legal_name"],
            "address": profile["address"],
            "country": profile["country"],
            "vat_id": profile["vat_id"],
        },
        "lines": [
            {
                "position": line.position,
                "kind": line.kind,
                "period": line.period,
                "resource_id": str(line.resource_id),
                "provider_id": str(line.provider_id),
                "metric": line.metric,
                "quantity": str(shown(line.quantity)),
                "unit_price": str(trim_decimals(line.unit_price)),
                "amount": money_text(line.amount, invoice.currency),
                "tax_category": line.tax_category,
                "tax_rate": str(trim_decimals(line.tax_rate, keep=0)),
                "service_start": iso(line.service_start),
                "service_end": iso(line.service_end),
            }
            for line in invoice.lines
        ],
        "taxes": invoice.taxes,
        "subtotal": money_text(invoice.subtotal, invoice.currency),
        "tax": money_text(invoice.tax, invoice.currency),
        "total": money_text(invoice.total, invoice.currency),
    }


def tax_row(tax_line: invoicing.TaxLine, currency: str) -> dict[str, str]:
    return {
        "category": tax_line.category,
        "rate": str(trim_decimals(tax_line.rate, keep=0)),
        "base": money_text(tax_line.base, currency),
        "amount": money_text(tax_line.amount, currency),
    }


def money_text(amount: Decimal, currency: str) -> str:
    return str(round_amount(amount, currency))


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# Exports -------------------------------------------------------------------------------------


def export_invoice(
    session: Session, caller: Caller, invoice_id: uuid.UUID, fmt: str
) -> tuple[bytes, str, str]:
    """An issued invoice as a file, from its snapshot: (content, media type, file name)."""
    invoice = get_invoice(session, caller, invoice_id)
    if invoice.snapshot is None:
        raise Conflict("Only issued invoices are exported: finalize it first.", code="not_issued")
    content, media_type = exports.render(invoice.snapshot, fmt)
    return content, media_type, f"invoice-{invoice.number}.{exports.EXTENSIONS[fmt]}"


def export_period(session: Session, period: str) -> tuple[bytes, str, str]:
    """Every line of a period's issued invoices in one CSV (finance), by invoice number."""
    snapshots = session.scalars(
        select(Invoice.snapshot)
        .where(Invoice.period == period, Invoice.number.is_not(None))
        .order_by(Invoice.number)
    )
    return (
        exports.to_csv(s for s in snapshots if s),
        "text/csv; charset=utf-8",
        f"invoices-{period}.csv",
    )


# For the console -----------------------------------------------------------------------------


def invoiced_periods(session: Session, caller: Caller) -> list[str]:
    """The periods that have invoices the caller reads, newest first (the console's choice
    of period)."""
    statement = select(Invoice.period).distinct().order_by(Invoice.period.desc())
    if not access.sees_every_agency(caller):
        statement = statement.where(Invoice.organization_id == caller.organization_id)
    return list(session.scalars(statement))


def agency_names(session: Session, caller: Caller) -> dict[uuid.UUID, str]:
    """The agencies whose invoices the caller reads (finance and admins: every agency; an
    agency's people: their own), id → name, by name."""
    statement = (
        select(Organization.id, Organization.name)
        .where(Organization.kind == OrganizationKind.AGENCY)
        .order_by(Organization.name)
    )
    if not access.sees_every_agency(caller):
        statement = statement.where(Organization.id == caller.organization_id)
    return {organization_id: name for organization_id, name in session.execute(statement)}
