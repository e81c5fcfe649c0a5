"""Payments: Stripe collects, our database stays the record of what is owed.

- Finalizing an invoice queues a sync job (in the same transaction): the agency's Stripe
  customer (made once, kept in `stripe_customers`), a Stripe invoice with our number, an item
  per line and per tax category, finalized; every call carries a deterministic idempotency
  key, so a re-run after a crash at any point creates nothing twice (`billing.stripe_gateway`).
  Stripe's total must equal ours, or the sync stops (`sync_failed`) for finance to look at.
  Without `BROKER_STRIPE_API_KEY` nothing is sent: the invoice says `not_configured`.
- Voiding an invoice that went to Stripe queues a job that voids it there too; a credit note
  on one queues a job that issues it there (lowering what is left to pay, or, once paid,
  recorded as refunded outside Stripe).
- `POST /v1/webhooks/stripe`: the signature is checked on the raw body (and its timestamp
  within `STRIPE_WEBHOOK_TOLERANCE_SECONDS`); each event id is applied once (a replay is
  answered `duplicate` and changes nothing); the payment state only moves forward
  (`PAYMENT_ORDER`), so events arriving out of order never move a paid invoice back. The event
  is applied in the request (one row update, no remote call) rather than through a job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from stripe import StripeClient

from billing import stripe_gateway as gateway
from billing.document import Document
from broker import db
from broker.errors import BrokerError, NotFound
from broker.jobs.queue import JobContext, JobFailed, Reschedule, enqueue
from broker.models import (
    CreditNote,
    Invoice,
    InvoiceState,
    PaymentState,
    StripeCustomer,
    StripeEvent,
)
from broker.models.billing import PAYMENT_ORDER
from broker.services import audit

SYNC_JOB = "payments.stripe_sync"
VOID_JOB = "payments.stripe_void"
PAID_OUTSIDE_JOB = "payments.stripe_paid_outside"
CREDIT_JOB = "payments.stripe_credit"

log = logging.getLogger("broker.payments")


class BadSignature(BrokerError):
    status, code, title = 400, "bad_signature", "The webhook signature is not valid"


def configured(config: Mapping[str, Any]) -> bool:
    return bool(config.get("STRIPE_API_KEY"))


def _client(config: Mapping[str, Any]) -> StripeClient:
    return gateway.make_client(
        config["STRIPE_API_KEY"],
        config.get("STRIPE_API_BASE"),
        timeout=float(config.get("STRIPE_TIMEOUT_SECONDS", 10)),
    )


# Sync ----------------------------------------------------------------------------------------


def queue_sync(session: Session, invoice: Invoice, config: Mapping[str, Any]) -> None:
    """Called in the finalizing transaction."""
    if not configured(config):
        invoice.payment_state = PaymentState.NOT_CONFIGURED
        invoice.payment_error = "Stripe is not configured: the invoice was not sent for payment."
        log.info("stripe not configured: invoice %s not sent for payment", invoice.number)
        return
    invoice.payment_state = PaymentState.PENDING
    _enqueue(session, SYNC_JOB, "invoice_id", invoice.id, invoice.organization_id)


def run_sync_job(context: JobContext, job: Any) -> dict[str, Any]:
    invoice_id = uuid.UUID(job.payload["invoice_id"])
    with context.db.session(read_only=True) as session:
        invoice = session.get(Invoice, invoice_id)
        if invoice is None:
            raise JobFailed("The invoice no longer exists.")
        if invoice.state is not InvoiceState.FINALIZED or invoice.snapshot is None:
            return {"skipped": f"the invoice is {invoice.state}"}  # void, or paid by transfer
        document = Document.from_snapshot(invoice.snapshot)
        organization_id = invoice.organization_id
        customer_id = session.scalar(
            select(StripeCustomer.customer_id).where(
                StripeCustomer.organization_id == organization_id
            )
        )
    if not configured(context.config):
        raise JobFailed("Stripe is not configured.")
    client = _client(context.config)
    with _gateway_errors():
        if customer_id is None:
            customer_id = gateway.ensure_customer(client, str(organization_id), document.buyer)
            with context.db.transaction() as session:
                _keep_customer(session, organization_id, customer_id)
        result = gateway.sync_invoice(client, document, customer_id)
    with context.db.transaction() as session:
        invoice = session.get(Invoice, invoice_id, with_for_update=True)
        assert invoice is not None
        invoice.stripe_invoice_id, invoice.payment_url = (
            result.stripe_invoice_id,
            result.hosted_invoice_url,
        )
        invoice.payment_error = None
        _advance(invoice, PaymentState.OPEN)
        if invoice.state is InvoiceState.VOID:  # voided while this sync ran: void it there too
            _enqueue_void(session, invoice)
        elif invoice.state is InvoiceState.PAID:  # paid by transfer while this sync ran
            queue_paid_outside(session, invoice)
    return {"stripe_invoice_id": result.stripe_invoice_id, "total_minor": result.total_minor}


def sync_job_dead(session: Session, job: Any, now: datetime) -> None:
    invoice = session.get(Invoice, uuid.UUID(job.payload["invoice_id"]))
    if invoice is not None and invoice.payment_state is PaymentState.PENDING:
        invoice.payment_state = PaymentState.SYNC_FAILED
        invoice.payment_error = job.last_error


def _keep_customer(session: Session, organization_id: uuid.UUID, customer_id: str) -> None:
    session.execute(
        db.insert(session, StripeCustomer)
        .values(organization_id=organization_id, customer_id=customer_id)
        .on_conflict_do_nothing(index_elements=["organization_id"])
    )


@contextmanager
def _gateway_errors() -> Iterator[None]:
    """Stripe's answers as job outcomes: retry later, wait as asked, or give up (dead)."""
    try:
        yield
    except gateway.GatewayRetryable as error:
        if error.retry_after:
            raise Reschedule(error.retry_after, str(error)) from error
        raise
    except (gateway.GatewayPermanent, gateway.StripeTotalMismatch) as error:
        raise JobFailed(str(error)) from error


# Void ----------------------------------------------------------------------------------------


def queue_void(session: Session, invoice: Invoice) -> None:
    """Called in the voiding transaction: void the Stripe invoice too, if one was (or is
    being) made."""
    if invoice.payment_state in (
        PaymentState.PENDING,
        PaymentState.OPEN,
        PaymentState.PAYMENT_FAILED,
    ):
        _enqueue_void(session, invoice)


def _enqueue_void(session: Session, invoice: Invoice) -> None:
    _enqueue(session, VOID_JOB, "invoice_id", invoice.id, invoice.organization_id)


def _enqueue(
    session: Session, kind: str, field: str, object_id: uuid.UUID, organization_id: uuid.UUID
) -> None:
    """One job of `kind` per object at a time (`{field: object_id}`)."""
    payload = {field: str(object_id)}
    enqueue(
        session, kind, payload, organization_id=organization_id, dedupe_key=f"{kind}:{object_id}"
    )


def run_void_job(context: JobContext, job: Any) -> dict[str, Any]:
    return _on_stripes_copy(context, job, gateway.void_invoice, "voided")


def queue_paid_outside(session: Session, invoice: Invoice) -> None:
    """Called in the transaction that settles an invoice by bank transfers: when it went (or
    is going) to Stripe, Stripe is told it is paid, so the agency is not asked twice."""
    if invoice.payment_state not in (None, PaymentState.NOT_CONFIGURED):
        _enqueue(session, PAID_OUTSIDE_JOB, "invoice_id", invoice.id, invoice.organization_id)


def run_paid_outside_job(context: JobContext, job: Any) -> dict[str, Any]:
    return _on_stripes_copy(context, job, gateway.mark_paid_outside, "marked paid")


def _on_stripes_copy(
    context: JobContext, job: Any, act: Callable[[StripeClient, str, str], None], done: str
) -> dict[str, Any]:
    """`act` on the Stripe copy of the job's invoice, found by its customer when a sync that
    stopped half-way made it without recording it; nothing when there is none."""
    with context.db.session(read_only=True) as session:
        invoice = session.get(Invoice, uuid.UUID(job.payload["invoice_id"]))
        if invoice is None:
            raise JobFailed("The invoice no longer exists.")
        stripe_invoice_id, broker_id = invoice.stripe_invoice_id, str(invoice.id)
        customer_id = session.scalar(
            select(StripeCustomer.customer_id).where(
                StripeCustomer.organization_id == invoice.organization_id
            )
        )
    client = _client(context.config)
    with _gateway_errors():
        if stripe_invoice_id is None and customer_id is not None:
            stripe_invoice_id = gateway.find_invoice(client, customer_id, broker_id)
        if stripe_invoice_id is None:
            return {"skipped": "not in Stripe"}
        act(client, stripe_invoice_id, broker_id)
    return {done: stripe_invoice_id}


# Credit notes --------------------------------------------------------------------------------


def queue_credit(session: Session, note: CreditNote, invoice: Invoice) -> None:
    """Called in the crediting transaction: mirror the credit note in Stripe when the invoice
    it corrects went (or is going) there."""
    if invoice.payment_state not in (None, PaymentState.NOT_CONFIGURED, PaymentState.SYNC_FAILED):
        _enqueue(session, CREDIT_JOB, "credit_note_id", note.id, note.organization_id)


def run_credit_job(context: JobContext, job: Any) -> dict[str, Any]:
    note_id = uuid.UUID(job.payload["credit_note_id"])
    with context.db.session(read_only=True) as session:
        note = session.get(CreditNote, note_id)
        if note is None:
            raise JobFailed("The credit note no longer exists.")
        invoice = session.get(Invoice, note.invoice_id)
        assert invoice is not None
        if invoice.stripe_invoice_id is None:
            if invoice.payment_state is PaymentState.PENDING:
                raise Reschedule(60, "the invoice is not in Stripe yet")
            return {"skipped": f"the invoice is not in Stripe ({invoice.payment_state})"}
        document = Document.from_snapshot(note.snapshot)
        stripe_invoice_id = invoice.stripe_invoice_id
    with _gateway_errors():
        result = gateway.credit_invoice(_client(context.config), document, stripe_invoice_id)
    with context.db.transaction() as session:
        note = session.get(CreditNote, note_id)
        assert note is not None
        note.stripe_credit_note_id = result.stripe_credit_note_id
    return {"stripe_credit_note_id": note.stripe_credit_note_id, "total_minor": result.total_minor}


# Webhooks ------------------------------------------------------------------------------------

# What each Stripe event says about the payment of one of our invoices.
EVENT_STATES = {
    "invoice.finalized": PaymentState.OPEN,
    "invoice.payment_failed": PaymentState.PAYMENT_FAILED,
    "invoice.payment_succeeded": PaymentState.PAID,
    "invoice.paid": PaymentState.PAID,
}


def receive_event(
    session: Session,
    payload: bytes,
    signature: str | None,
    config: Mapping[str, Any],
    now: datetime,
) -> dict[str, str]:
    if not signature:
        raise BadSignature("The Stripe-Signature header is missing.")
    secret = config.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        raise NotFound("Stripe webhooks are not configured here.", code="stripe_not_configured")
    try:
        event = gateway.parse_event(
            payload,
            signature,
            secret,
            tolerance=max(1, int(config.get("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300))),
        )
    except gateway.BadSignature as error:
        raise BadSignature(str(error)) from None
    try:
        created = datetime.fromtimestamp(event.created, UTC)
    except (OverflowError, OSError, ValueError):
        raise BadSignature("The event's time is not a valid timestamp.") from None
    if len(event.id) > 255 or len(event.type) > 100:
        raise BadSignature("The event's id or type is too long.")
    first = session.scalar(
        db.insert(session, StripeEvent)
        .values(
            id=event.id,
            type=event.type,
            created=created,
            received_at=now,
            outcome="received",
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(StripeEvent.id)
    )
    if first is None:
        return {"status": "duplicate", "event_id": event.id}
    invoice = _invoice_of(session, event)
    outcome = _apply(session, invoice, event, created)
    row = session.get(StripeEvent, event.id)
    assert row is not None
    row.outcome, row.invoice_id = outcome, invoice.id if invoice else None
    return {"status": "processed", "event_id": event.id, "outcome": outcome}


def _invoice_of(session: Session, event: gateway.Event) -> Invoice | None:
    invoice = None
    if event.broker_invoice_id:
        try:
            invoice = session.get(Invoice, uuid.UUID(event.broker_invoice_id), with_for_update=True)
        except ValueError:
            invoice = None
    if invoice is None and event.invoice_id:
        invoice = session.scalar(
            select(Invoice).where(Invoice.stripe_invoice_id == event.invoice_id).with_for_update()
        )
    # An event naming one of our invoices must be about the Stripe invoice we made for it.
    if invoice is not None and invoice.stripe_invoice_id not in (None, event.invoice_id):
        return None
    return invoice


def _apply(
    session: Session, invoice: Invoice | None, event: gateway.Event, created: datetime
) -> str:
    target = EVENT_STATES.get(event.type)
    if target is None:
        return "ignored: not a payment event"
    if invoice is None:
        return "ignored: not one of our invoices"
    if invoice.state is InvoiceState.VOID:
        if target is PaymentState.PAID:
            log.warning("payment received for void invoice %s", invoice.number)
        return f"ignored: the invoice is void ({target.value} reported)"
    before = invoice.payment_state
    if not _advance(invoice, target):
        return f"ignored: already {before}"
    if invoice.stripe_invoice_id is None:
        invoice.stripe_invoice_id = event.invoice_id
    if target is PaymentState.PAID:
        invoice.state, invoice.paid_at = InvoiceState.PAID, created
        audit.record(
            session,
            None,
            "invoice.paid",
            "invoice",
            invoice.id,
            organization_id=invoice.organization_id,
            before={"state": InvoiceState.FINALIZED.value, "payment_state": str(before)},
            after={"state": invoice.state.value, "stripe_event": event.id},
        )
    return f"{before} -> {target.value}"


def _advance(invoice: Invoice, target: PaymentState) -> bool:
    """Move the payment state forward only."""
    if (
        invoice.payment_state is not None
        and PAYMENT_ORDER[target] <= PAYMENT_ORDER[invoice.payment_state]
    ):
        return False
    invoice.payment_state = target
    return True
