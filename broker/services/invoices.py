"""Invoices: reading them, issuing them, exporting them.

Finalizing freezes a draft: in one transaction it takes the next number of the year's gapless
series, builds the invoice document (`billing.document`: parties, lines named in words,
references, legal mentions, in the agency's language), refuses it if it would break an
EN 16931 business rule (`billing.schematron`), stores its snapshot with its SHA-256, and
queues its payment (`broker.services.payments`); from then on nothing about the invoice or the
usage it bills changes. Every export is made from that document. Corrections (void, credit
notes) are `broker.services.corrections`; payments received by transfer
`broker.services.transfers`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from billing import cii, exports, invoicing, labels, schematron
from billing.document import (
    INVOICE,
    Address,
    Document,
    LegalId,
    Line,
    Party,
    TaxRow,
    describe,
)
from billing.metering import period_bounds, shown
from billing.money import round_amount, trim_decimals
from broker import access, db
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import (
    BillingRun,
    DocumentNumberSeries,
    Invoice,
    InvoiceState,
    Offer,
    Organization,
    OrganizationKind,
    Provider,
    Resource,
)
from broker.services import audit, payments
from broker.services.billing_profiles import get_agency, profile_view
from broker.services.pagination import Page, paginate

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
    organization = get_agency(session, invoice.organization_id)
    profile = profile_view(session, organization, config)
    issued = issue_document(session, invoice, organization, profile, config)
    refuse_broken_rules(issued)
    invoice.snapshot = issued.to_snapshot()
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


def issue_document(
    session: Session,
    invoice: Invoice,
    organization: Organization,
    profile: Mapping[str, Any],
    config: Mapping[str, Any],
) -> Document:
    """The invoice as issued, whole: what its exports and payments work from, and what its
    hash covers. Resources, offers and providers are named as they are at this moment."""
    start, end = period_bounds(invoice.period)
    assert invoice.finalized_at is not None and invoice.number is not None
    terms = int(config["PAYMENT_TERMS_DAYS"])
    language = profile["language"]
    names = line_names(session, {line.resource_id for line in invoice.lines})
    lines = tuple(
        Line(
            position=line.position,
            kind=line.kind,
            period=line.period,
            resource_id=str(line.resource_id),
            provider_id=str(line.provider_id),
            metric=line.metric,
            quantity=shown(line.quantity),
            unit_price=trim_decimals(line.unit_price),
            amount=round_amount(line.amount, invoice.currency),
            tax_category=line.tax_category,
            tax_rate=trim_decimals(line.tax_rate, keep=0),
            service_start=line.service_start,
            service_end=line.service_end,
            buyer_reference=line.buyer_reference,
            purchase_order_reference=line.purchase_order_reference,
            resource_name=names[line.resource_id].resource,
            offer_name=names[line.resource_id].offer,
            provider_name=names[line.resource_id].provider,
            region=names[line.resource_id].region,
        )
        for line in invoice.lines
    )
    return Document(
        document_type=INVOICE,
        id=str(invoice.id),
        number=invoice.number,
        issued_at=invoice.finalized_at,
        period=invoice.period,
        period_start=start,
        period_end=end,
        currency=invoice.currency,
        language=language,
        seller=seller_party(config),
        buyer=buyer_party(organization, profile),
        lines=lines,
        taxes=tax_rows(invoice.taxes),
        subtotal=round_amount(invoice.subtotal, invoice.currency),
        tax=round_amount(invoice.tax, invoice.currency),
        total=round_amount(invoice.total, invoice.currency),
        due_date=(invoice.finalized_at + timedelta(days=terms)).date(),
        payment_terms=labels.payment_terms(terms, language),
        buyer_reference=_shared(
            (line.buyer_reference for line in lines), profile["buyer_reference"]
        ),
        purchase_order_reference=_shared(
            (line.purchase_order_reference for line in lines), profile["purchase_order_reference"]
        ),
        legal_mentions=tuple(config["LEGAL_MENTIONS"].get(language, ())),
    )


def _shared(values: Iterable[str | None], default: str | None) -> str | None:
    """The reference every line shares, else (lines of several, or none) the profile's."""
    distinct = set(values)
    if len(distinct) == 1:
        (value,) = distinct
        return value or default
    return default


class _Names(NamedTuple):
    """What a resource is, in words."""

    resource: str
    offer: str
    provider: str
    region: str

    @property
    def label(self) -> str:
        return describe(*self)


def line_names(session: Session, resource_ids: set[uuid.UUID]) -> dict[uuid.UUID, _Names]:
    """Each resource's name, its offer's, its provider's and its region, as they are now."""
    rows = session.execute(
        select(Resource.id, Resource.name, Offer.name, Provider.name, Offer.region_code)
        .join(Offer, Offer.id == Resource.offer_id)
        .join(Provider, Provider.id == Resource.provider_id)
        .where(Resource.id.in_(resource_ids))
    )
    return {resource_id: _Names(*names) for resource_id, *names in rows}


def seller_party(config: Mapping[str, Any]) -> Party:
    """The consortium as its invoices name it (`SELLER`, required configuration)."""
    seller = config["SELLER"]
    return Party(
        name=seller["name"],
        address=Address(
            country=seller["country"],
            lines=_lines(seller["address"].replace("|", "\n")),
            post_code=seller["post_code"] or None,
            city=seller["city"] or None,
        ),
        vat_id=seller["vat_id"] or None,
        legal_id=LegalId(seller["legal_id"], seller["legal_id_scheme"] or None)
        if seller["legal_id"]
        else None,
    )


def buyer_party(organization: Organization, profile: Mapping[str, Any]) -> Party:
    """The agency as its billing profile names it; its name in the marketplace beside."""
    return Party(
        name=profile["legal_name"],
        trading_name=organization.name if organization.name != profile["legal_name"] else None,
        address=Address(
            country=profile["country"],
            lines=_lines(profile["address"]),
            post_code=profile["post_code"],
            city=profile["city"],
        ),
        vat_id=profile["vat_id"],
        legal_id=LegalId(profile["legal_id"], profile["legal_id_scheme"])
        if profile["legal_id"]
        else None,
        organization_id=str(organization.id),
    )


def _lines(text: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


def tax_rows(taxes: Iterable[Mapping[str, str]]) -> tuple[TaxRow, ...]:
    """The stored VAT breakdown as the document's rows, with the exemption reasons."""
    return tuple(
        TaxRow.of(
            tax["category"], Decimal(tax["rate"]), Decimal(tax["base"]), Decimal(tax["amount"])
        )
        for tax in taxes
    )


def refuse_broken_rules(issued: Document) -> None:
    """422 naming the EN 16931 business rules the document would break: it is not issued."""
    broken = schematron.errors(cii.to_cii(issued))
    if broken:
        rules = sorted({failure.rule for failure in broken})
        raise ValidationFailed(
            f"The document would break EN 16931 rule(s) {', '.join(rules)}: it is not issued.",
            code="en16931_rule_broken",
            errors={failure.rule: [failure.text] for failure in broken},
        )


def tax_row(tax_line: invoicing.TaxLine, currency: str) -> dict[str, str]:
    return {
        "category": tax_line.category,
        "rate": str(trim_decimals(tax_line.rate, keep=0)),
        "base": money_text(tax_line.base, currency),
        "amount": money_text(tax_line.amount, currency),
    }


def money_text(amount: Decimal, currency: str) -> str:
    return str(round_amount(amount, currency))


# Exports -------------------------------------------------------------------------------------


def export_invoice(
    session: Session, caller: Caller, invoice_id: uuid.UUID, fmt: str
) -> tuple[bytes, str, str]:
    """An issued invoice as a file, from its snapshot: (content, media type, file name)."""
    invoice = get_invoice(session, caller, invoice_id)
    if invoice.snapshot is None:
        raise Conflict("Only issued invoices are exported: finalize it first.", code="not_issued")
    content, media_type = exports.render(Document.from_snapshot(invoice.snapshot), fmt)
    return content, media_type, f"invoice-{invoice.number}.{exports.EXTENSIONS[fmt]}"


def export_period(session: Session, period: str) -> tuple[bytes, str, str]:
    """Every line of a period's issued invoices in one CSV (finance), by invoice number."""
    snapshots = session.scalars(
        select(Invoice.snapshot)
        .where(Invoice.period == period, Invoice.number.is_not(None))
        .order_by(Invoice.number)
    )
    return (
        exports.to_csv((Document.from_snapshot(s) for s in snapshots if s), "en"),
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
