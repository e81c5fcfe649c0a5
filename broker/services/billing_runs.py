"""Billing runs: the drafts of a period.

A billing run (finance, for one period) queues a job that first closes the meter's finished
hours, then builds, per agency and currency, a draft invoice from the usage ledger: a line per
resource and metric at the prices its order pinned, grouped by the order's references, VAT per
tax category, totals that add up. A draft takes the ranges of the ledger it bills
(`broker.services.ledger`), so a rebuilt draft bills exactly what it shows and nothing is
billed twice. Usage of an earlier, already invoiced period that arrives late is billed on the
next draft as adjustment lines.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import invoicing
from billing.document import ADJUSTMENT, USAGE
from billing.metering import parse_period, period_bounds, period_of
from billing.rating import Price
from broker.auth.identity import Caller
from broker.errors import NotFound, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import (
    AgencyPolicy,
    BillingRun,
    BillingRunState,
    Invoice,
    InvoiceLine,
    InvoiceState,
    Order,
    Organization,
    OrganizationKind,
    Resource,
)
from broker.services import audit, ledger, offers, usage
from broker.services.billing_profiles import get_agency, profile_view
from broker.services.invoices import tax_row
from broker.services.pagination import Page, paginate

BILLING_JOB = "billing.run"
DEFAULT_CURRENCY = "EUR"


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
    organization = get_agency(session, organization_id)
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
    orders = _orders(session, {order_id for _, order_id in placed.values()})
    late = [(resource_id, metric, period) for resource_id, metric, period, *_ in groups]
    late = [key for key in late if key[2] < invoice.period]
    billed_before = ledger.billed_elsewhere(session, late, invoice.id)
    items = []
    for resource_id, metric, period, quantity, start, end in groups:
        provider_id, order_id = placed[resource_id]
        prices, buyer_reference, purchase_order_reference = orders[order_id]
        price = prices.get(metric)
        if price is None:
            continue  # a metric the order has no price for is recorded, not charged
        items.append(
            invoicing.Consumption(
                kind=USAGE if period == invoice.period else ADJUSTMENT,
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
                buyer_reference=buyer_reference,
                purchase_order_reference=purchase_order_reference,
            )
        )
    return items


def _orders(
    session: Session, order_ids: set[uuid.UUID]
) -> dict[uuid.UUID, tuple[dict[str, Price], str | None, str | None]]:
    """Each order's prices by metric and its references (BT-10, BT-13)."""
    return {
        order_id: (
            {price.metric: price for price in offers.parse_prices(raw)},
            buyer_reference,
            purchase_order_reference,
        )
        for order_id, raw, buyer_reference, purchase_order_reference in session.execute(
            select(
                Order.id, Order.prices, Order.buyer_reference, Order.purchase_order_reference
            ).where(Order.id.in_(order_ids))
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
                buyer_reference=line.buyer_reference,
                purchase_order_reference=line.purchase_order_reference,
            )
        )
    invoice.taxes = [tax_row(tax_line, invoice.currency) for tax_line in totals.taxes]
    invoice.subtotal, invoice.tax, invoice.total = totals.subtotal, totals.tax, totals.total
