"""Corrections of issued invoices: voiding an unpaid one, and credit notes.

- **Void** cancels an issued invoice that nobody paid and nothing credited: it keeps its
  number and snapshot (the series stays gapless, the document stays downloadable) and lets go
  of the usage it billed, so the period's next billing run drafts a replacement.
- A **credit note** credits parts of an invoice's lines (net amounts; by default everything
  that remains). It takes the next number of its own gapless series (`CN-<year>-<000001>`),
  is frozen with a snapshot and its SHA-256 the moment it exists, and can never credit more
  of a line than remains uncredited. Its tax is rounded on the cumulative credited base per
  category (`billing.invoicing.credit_taxes`), so credits never give back more tax than the
  invoice charged. Each credited line keeps its provider: settlements take it off the right
  provider's share.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import exports, invoicing
from billing.document import CREDIT_NOTE, Corrected, Document
from billing.money import round_amount
from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceState,
)
from broker.services import audit, invoices, ledger, payments, transfers
from broker.services.pagination import Page, paginate

ISSUED = (InvoiceState.FINALIZED, InvoiceState.PAID)


def void(
    session: Session,
    caller: Caller,
    invoice_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> Invoice:
    invoice = invoices.get_invoice(session, caller, invoice_id, lock=True)
    if invoice.state is InvoiceState.DRAFT:
        raise Conflict("A draft is not voided: run billing again to rebuild it.", code="not_issued")
    if invoice.state is InvoiceState.PAID:
        raise Conflict("This invoice is paid: correct it with a credit note.", code="invoice_paid")
    if invoice.state is InvoiceState.VOID:
        raise Conflict("This invoice is already void.", code="invoice_void")
    if transfers.balance(session, invoice).amount_paid > 0:
        raise Conflict(
            "Bank transfers were recorded for this invoice: correct it with a credit note.",
            code="invoice_partly_paid",
        )
    if _credited(session, invoice.id):
        raise Conflict(
            "Credit notes correct this invoice: credit the rest instead of voiding it.",
            code="invoice_credited",
        )
    invoice.state = InvoiceState.VOID
    invoice.voided_at, invoice.voided_by, invoice.void_reason = now, caller.client_id, reason
    # Its usage is billable again: the period's next run drafts the replacement.
    ledger.release(session, invoice)
    payments.queue_void(session, invoice)
    session.flush()
    audit.record(
        session,
        caller,
        "invoice.voided",
        "invoice",
        invoice.id,
        organization_id=invoice.organization_id,
        before={"state": InvoiceState.FINALIZED.value},
        after={"state": invoice.state.value, "number": invoice.number, "reason": reason},
    )
    return invoice


def _credited(session: Session, invoice_id: uuid.UUID) -> dict[uuid.UUID, Decimal]:
    """How much of each of the invoice's lines credit notes have credited so far."""
    rows = session.execute(
        select(CreditNoteLine.invoice_line_id, func.sum(CreditNoteLine.amount))
        .join(CreditNote, CreditNote.id == CreditNoteLine.credit_note_id)
        .where(CreditNote.invoice_id == invoice_id)
        .group_by(CreditNoteLine.invoice_line_id)
    )
    return {line_id: amount for line_id, amount in rows}


def creditable(session: Session, invoice: Invoice) -> dict[int, Decimal]:
    """What remains creditable of each line, by position."""
    credited = _credited(session, invoice.id)
    return {
        line.position: line.amount - credited.get(line.id, Decimal(0)) for line in invoice.lines
    }


def issue_credit_note(
    session: Session,
    caller: Caller,
    invoice_id: uuid.UUID,
    reason: str,
    lines: Sequence[Mapping[str, Any]] | None,
    now: datetime,
) -> CreditNote:
    """Credit `lines` (`[{position, amount}]`, net) of an issued invoice, or all that remains
    of every line when `lines` is None."""
    invoice = invoices.get_invoice(session, caller, invoice_id, lock=True)
    if invoice.state not in ISSUED:
        code = "invoice_void" if invoice.state is InvoiceState.VOID else "not_issued"
        raise Conflict(
            f"Only issued invoices are credited; this one is {invoice.state}.", code=code
        )
    assert invoice.snapshot is not None and invoice.number is not None
    remaining = creditable(session, invoice)
    wanted = _wanted(lines, remaining, invoice.currency)
    if not wanted:
        raise Conflict("Nothing remains to credit on this invoice.", code="nothing_to_credit")
    over = {
        str(position): invoices.money_text(remaining[position], invoice.currency)
        for position, amount in sorted(wanted.items())
        if amount > remaining[position]
    }
    if over:
        raise Conflict(
            "A credit note cannot credit more than remains of a line: "
            + ", ".join(f"line {p} has {amount} left" for p, amount in over.items()),
            code="exceeds_creditable",
            remaining=over,
        )
    by_position = {line.position: line for line in invoice.lines}
    credited_before: dict[tuple[str, Decimal], Decimal] = defaultdict(Decimal)
    for line in invoice.lines:
        credited_before[(line.tax_category, line.tax_rate)] += (
            line.amount - remaining[line.position]
        )
    credit: dict[tuple[str, Decimal], Decimal] = defaultdict(Decimal)
    for position, amount in wanted.items():
        line = by_position[position]
        credit[(line.tax_category, line.tax_rate)] += amount
    taxes = invoicing.credit_taxes(invoice.currency, credit, credited_before)
    subtotal = sum(wanted.values(), Decimal(0))
    tax = sum((tax.amount for tax in taxes), Decimal(0))
    note = CreditNote(
        id=uuid.uuid4(),
        number=invoices.next_number(session, now.year, "credit_note"),
        invoice_id=invoice.id,
        organization_id=invoice.organization_id,
        currency=invoice.currency,
        reason=reason,
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        taxes=[invoices.tax_row(tax_line, invoice.currency) for tax_line in taxes],
        issued_at=now,
        issued_by=caller.client_id,
        lines=[
            CreditNoteLine(
                position=index,
                invoice_line_id=by_position[position].id,
                provider_id=by_position[position].provider_id,
                amount=amount,
                tax_category=by_position[position].tax_category,
                tax_rate=by_position[position].tax_rate,
            )
            for index, (position, amount) in enumerate(sorted(wanted.items()), start=1)
        ],
    )
    issued = _document(note, Document.from_snapshot(invoice.snapshot), wanted)
    invoices.refuse_broken_rules(issued)
    note.snapshot = issued.to_snapshot()
    note.snapshot_sha256 = invoicing.fingerprint(note.snapshot)
    session.add(note)
    session.flush()
    payments.queue_credit(session, note, invoice)
    transfers.settle_if_covered(session, caller, invoice)
    audit.record(
        session,
        caller,
        "credit_note.issued",
        "credit_note",
        note.id,
        organization_id=invoice.organization_id,
        after={
            "number": note.number,
            "invoice_number": invoice.number,
            "total": str(note.total),
            "snapshot_sha256": note.snapshot_sha256,
        },
    )
    return note


def _wanted(
    lines: Sequence[Mapping[str, Any]] | None, remaining: Mapping[int, Decimal], currency: str
) -> dict[int, Decimal]:
    """{position: amount} asked for; 422 naming `lines.<n>.<field>` for what cannot be."""
    if lines is None:
        return {position: amount for position, amount in remaining.items() if amount > 0}
    errors: dict[str, list[str]] = {}
    wanted: dict[int, Decimal] = {}
    for index, item in enumerate(lines):
        position, amount = item["position"], item["amount"]
        if position not in remaining:
            errors[f"lines.{index}.position"] = [f"The invoice has no line {position}."]
        elif position in wanted:
            errors[f"lines.{index}.position"] = [f"Line {position} is named twice."]
        if amount <= 0 or round_amount(amount, currency) != amount:
            errors[f"lines.{index}.amount"] = [
                f"A positive amount in whole {currency} minor units is required."
            ]
        wanted[position] = amount
    if errors:
        raise ValidationFailed(errors=errors)
    return wanted


def _document(note: CreditNote, issued: Document, wanted: Mapping[int, Decimal]) -> Document:
    """The credit note as issued, in the shape of the invoice it corrects (its parties,
    language and references): its lines are the credited parts of the invoice's lines (a part
    of a line is credited as a lump sum: quantity 1)."""
    by_position = {line.position: line for line in issued.lines}
    lines = []
    for index, (position, amount) in enumerate(sorted(wanted.items()), start=1):
        line = by_position[position]
        whole = round_amount(amount, note.currency)
        if whole != line.amount:
            line = dataclasses.replace(line, quantity=Decimal(1), unit_price=whole)
        lines.append(
            dataclasses.replace(line, position=index, credits_position=position, amount=whole)
        )
    return dataclasses.replace(
        issued,
        document_type=CREDIT_NOTE,
        id=str(note.id),
        number=note.number,
        issued_at=note.issued_at,
        corrects=Corrected(id=issued.id, number=issued.number, issued_at=issued.issued_at),
        reason=note.reason,
        lines=tuple(lines),
        taxes=invoices.tax_rows(note.taxes),
        subtotal=round_amount(note.subtotal, note.currency),
        tax=round_amount(note.tax, note.currency),
        total=round_amount(note.total, note.currency),
        due_date=None,
        payment_terms=None,
    )


def get_credit_note(session: Session, caller: Caller, note_id: uuid.UUID) -> CreditNote:
    note = session.get(CreditNote, note_id)
    if note is None or not access.may_read_agency(caller, note.organization_id):
        raise NotFound("No such credit note.")
    return note


def export_credit_note(
    session: Session, caller: Caller, note_id: uuid.UUID, fmt: str
) -> tuple[bytes, str, str]:
    """A credit note as a file, from its snapshot: (content, media type, file name)."""
    note = get_credit_note(session, caller, note_id)
    content, media_type = exports.render(Document.from_snapshot(note.snapshot), fmt)
    return content, media_type, f"credit-note-{note.number}.{exports.EXTENSIONS[fmt]}"


def list_credit_notes(
    session: Session,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None,
    invoice_id: uuid.UUID | None = None,
) -> Page[CreditNote]:
    statement = select(CreditNote)
    if not access.sees_every_agency(caller):
        statement = statement.where(CreditNote.organization_id == caller.organization_id)
    if invoice_id is not None:
        statement = statement.where(CreditNote.invoice_id == invoice_id)
    return paginate(
        session,
        statement,
        [CreditNote.created_at, CreditNote.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{invoice_id}",
    )
