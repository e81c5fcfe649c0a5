"""Payments received outside Stripe: bank transfers, which is how French public buyers pay.

Finance records each transfer that arrives for an issued invoice: its amount (in the invoice's
currency, whole minor units), the day the money arrived and the bank's reference. Transfers
add up. What an invoice is still owed is its total less its credit notes and the payments
recorded so far (`balance`); a payment above it is refused (422 naming `amount`, saying how
much is owed), and the payment that brings it to zero moves the invoice to `paid` as a paid
Stripe invoice does (`payment_state = paid`, audited `invoice.paid`).

The invoice row is locked while a payment is weighed, so two clerks recording transfers at once
never pay more than is owed between them.

A credit note that covers what a partly paid invoice still owed settles it too
(`settle_if_covered`); an invoice with transfers is corrected by credit notes, never voided.

An invoice that went to Stripe and is settled here is marked paid out of band there (a job,
`payments.queue_paid_outside`), so the agency is not asked to pay it twice; its payment state
here only moves forward, so a later Stripe event never moves it back. A partial transfer is not
told to Stripe (it has no partial payment out of band): its copy shows the whole amount until
the invoice is settled.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.money import round_amount
from broker.auth.identity import Caller
from broker.errors import Conflict, ValidationFailed
from broker.models import CreditNote, Invoice, InvoicePayment, InvoiceState, PaymentState
from broker.services import audit, invoices, payments
from broker.services.pagination import Page, paginate

# A date has begun somewhere on Earth up to 14 hours before it begins in UTC, and lasts
# somewhere until 12 hours after it ends there: a day either side of the UTC date lets a
# clerk anywhere write the date of their own bank statement.
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Balance:
    """Where an invoice's payment stands, in its currency: `amount_due` is what is still
    owed."""

    currency: str
    total: Decimal  # as issued
    credited: Decimal  # by its credit notes, tax included
    amount_paid: Decimal  # by the payments recorded here
    amount_due: Decimal


@dataclass(frozen=True)
class Receipt:
    """A payment just recorded, and what its invoice is still owed after it."""

    payment: InvoicePayment
    amount_due: Decimal

    @property
    def currency(self) -> str:
        """Its amounts' (the payment's, the invoice's)."""
        return self.payment.currency


def balance(session: Session, invoice: Invoice) -> Balance:
    """What an invoice is still owed: its total less its credit notes and the payments
    recorded, never below zero (a credit note issued after a payment can leave the agency
    owed money back: a refund, which is not recorded here). A void invoice is owed nothing,
    nor is one Stripe reported paid."""
    credited = session.scalar(
        select(func.sum(CreditNote.total)).where(CreditNote.invoice_id == invoice.id)
    ) or Decimal(0)
    paid = session.scalar(
        select(func.sum(InvoicePayment.amount)).where(InvoicePayment.invoice_id == invoice.id)
    ) or Decimal(0)
    owed = invoice.total - credited - paid
    if invoice.state in (InvoiceState.VOID, InvoiceState.PAID) or owed < 0:
        owed = Decimal(0)
    return Balance(invoice.currency, invoice.total, credited, paid, owed)


def amount_due(session: Session, invoice: Invoice) -> Decimal:
    """What an invoice is still owed (`balance`)."""
    return balance(session, invoice).amount_due


def record_payment(
    session: Session,
    caller: Caller,
    invoice_id: uuid.UUID,
    *,
    amount: Decimal,
    received_on: date,
    reference: str,
    now: datetime,
) -> Receipt:
    """Record a bank transfer received for a finalized invoice; settle the invoice when it
    pays all that is owed. 409 for an invoice that is a draft, void or already paid; 422
    naming the field for an amount that is not positive in whole minor units or above what is
    owed, or a date in the future or before the invoice was issued."""
    invoice = invoices.get_invoice(session, caller, invoice_id, lock=True)
    _check_payable(invoice)
    before = balance(session, invoice)
    errors = _refusals(invoice, before, amount, received_on, now)
    if errors:
        raise ValidationFailed(errors=errors)
    payment = InvoicePayment(
        id=uuid.uuid4(),
        invoice_id=invoice.id,
        organization_id=invoice.organization_id,
        amount=amount,
        currency=invoice.currency,
        received_on=received_on,
        reference=reference,
        recorded_by=caller.client_id,
        created_at=now,
    )
    session.add(payment)
    due = before.amount_due - amount
    audit.record(
        session,
        caller,
        "invoice.payment_recorded",
        "invoice",
        invoice.id,
        organization_id=invoice.organization_id,
        before={"amount_due": invoices.money_text(before.amount_due, invoice.currency)},
        after={
            "payment_id": str(payment.id),
            "amount": invoices.money_text(amount, invoice.currency),
            "currency": invoice.currency,
            "received_on": received_on.isoformat(),
            "reference": reference,
            "amount_due": invoices.money_text(due, invoice.currency),
        },
    )
    if due == 0:
        _settle(session, caller, invoice, payment)
    session.flush()
    return Receipt(payment, due)


def _check_payable(invoice: Invoice) -> None:
    """Only a finalized invoice takes payments (409 otherwise, with the corrections' codes)."""
    if invoice.state is InvoiceState.FINALIZED:
        return
    if invoice.state is InvoiceState.DRAFT:
        raise Conflict("A draft is not paid: finalize it first.", code="not_issued")
    if invoice.state is InvoiceState.VOID:
        raise Conflict("This invoice is void: nothing is owed on it.", code="invoice_void")
    raise Conflict("This invoice is already paid.", code="invoice_paid")


def _refusals(
    invoice: Invoice, owed: Balance, amount: Decimal, received_on: date, now: datetime
) -> dict[str, list[str]]:
    """Why this payment cannot be recorded, by field (empty when it can)."""
    assert invoice.finalized_at is not None
    currency = invoice.currency
    errors: dict[str, list[str]] = {}
    if amount <= 0 or round_amount(amount, currency) != amount:
        errors["amount"] = [f"A positive amount in whole {currency} minor units is required."]
    elif amount > owed.amount_due:
        due, total, credited, paid = (
            invoices.money_text(value, currency)
            for value in (owed.amount_due, owed.total, owed.credited, owed.amount_paid)
        )
        errors["amount"] = [
            f"Only {due} {currency} is owed on this invoice (total {total}, credited "
            f"{credited}, paid {paid})."
        ]
    if received_on > now.astimezone(UTC).date() + _ONE_DAY:
        errors["received_on"] = ["The date the money arrived cannot be in the future."]
    issued_on = invoice.finalized_at.astimezone(UTC).date()
    if received_on < issued_on - _ONE_DAY:
        errors["received_on"] = [
            f"The invoice was issued on {issued_on.isoformat()}: a payment for it arrives "
            "on that day or later."
        ]
    return errors


def _settle(session: Session, caller: Caller, invoice: Invoice, payment: InvoicePayment) -> None:
    """The invoice is paid, as of the day the last of its money arrived (never before it was
    issued)."""
    assert invoice.finalized_at is not None
    before = invoice.payment_state
    payments.queue_paid_outside(session, invoice)  # reads the state it had in Stripe
    arrived = datetime.combine(payment.received_on, time(), UTC)
    invoice.state, invoice.paid_at = InvoiceState.PAID, max(arrived, invoice.finalized_at)
    invoice.payment_state, invoice.payment_error = PaymentState.PAID, None
    audit.record(
        session,
        caller,
        "invoice.paid",
        "invoice",
        invoice.id,
        organization_id=invoice.organization_id,
        before={
            "state": InvoiceState.FINALIZED.value,
            "payment_state": before.value if before else None,
        },
        after={"state": invoice.state.value, "payment_id": str(payment.id)},
    )


def settle_if_covered(session: Session, caller: Caller, invoice: Invoice) -> None:
    """After a credit note: a partly paid invoice whose credits cover what was left is paid,
    as of the day its last transfer arrived."""
    if invoice.state is not InvoiceState.FINALIZED:
        return
    owed = balance(session, invoice)
    if owed.amount_paid > 0 and owed.amount_due == 0:
        last = session.scalars(
            select(InvoicePayment)
            .where(InvoicePayment.invoice_id == invoice.id)
            .order_by(InvoicePayment.created_at.desc(), InvoicePayment.id.desc())
            .limit(1)
        ).one()
        _settle(session, caller, invoice, last)


def list_payments(
    session: Session, caller: Caller, invoice_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[Page[InvoicePayment], Balance]:
    """An invoice's payments in the order they were recorded, and its balance. An agency
    reads its own invoices' only (404 for another's)."""
    invoice = invoices.get_invoice(session, caller, invoice_id)
    page = paginate(
        session,
        select(InvoicePayment).where(InvoicePayment.invoice_id == invoice.id),
        [InvoicePayment.created_at, InvoicePayment.id],
        limit=limit,
        cursor=cursor,
        scope=f"payments:{invoice.id}",
    )
    return page, balance(session, invoice)
