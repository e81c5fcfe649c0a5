"""The payments side of billing: issued invoices mirrored in Stripe, and Stripe's webhooks read.

The issued document (`billing.document.Document`, as frozen at finalization) is the invoice;
Stripe gets a copy of it to collect the money. A sync is safe to run again after a crash at any
point: every POST carries a deterministic idempotency key, and what exists is looked up before
anything is added (Stripe forgets idempotency keys after about a day, and job retries can be
that far apart): the customer's invoice carrying `metadata[broker_invoice_id]`, then that
invoice's items, each carrying `metadata[broker_item]` (`line:<position>`,
`tax:<category>:<rate>`).

Tax rows are items of their own, not Stripe tax rates: Stripe computes and rounds tax per
item, EN 16931 once per category on the summed nets, and only our rows make Stripe's total
equal ours to the cent. That total is compared before the invoice is finalized (a wrong draft
can still be fixed) and after.

Errors: `GatewayRetryable` (network, 409, 429, 5xx: the job queue tries again, with the same
keys) and `GatewayPermanent` (any other refusal: bad request, bad key, idempotency key reused
with other parameters, a total that does not match, an amount Stripe's integer minor units
cannot hold). No Flask, no database: the caller reads the document from the database and stores
the ids this module returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, ParamSpec, TypeVar

import stripe
from stripe import StripeClient
from stripe.params import CreditNoteCreateParams, CustomerCreateParams, InvoiceItemCreateParams

from billing.document import ADJUSTMENT, Document, Line, Party, TaxRow
from billing.money import MINOR_UNITS, MoneyError, round_amount

P = ParamSpec("P")
T = TypeVar("T")

DAYS_UNTIL_DUE = 30

# Stripe's amount exponent where it differs from ISO 4217 (`MINOR_UNITS`): for backwards
# compatibility Stripe still takes ISK in hundredths (always ending in 00).
_STRIPE_EXPONENT = {"ISK": 2}

_METRICS = {
    "instance_hour": "Instance hours",
    "vcpu_hour": "vCPU hours",
    "ram_gib_hour": "RAM GiB-hours",
    "storage_gib_month": "Storage GiB-months",
    "egress_gib": "Egress GiB",
}


class GatewayError(Exception):
    """Base of the errors of this module."""


class GatewayRetryable(GatewayError):
    """Nothing is lost by trying again later with the same keys (`retry_after`: Stripe's wish)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GatewayPermanent(GatewayError):
    """Trying again cannot succeed: `code` is Stripe's error code (or type), or ours."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class StripeTotalMismatch(GatewayPermanent):
    """Stripe's total for the invoice is not ours (in minor units): a human must look."""

    def __init__(self, ours: int, theirs: int) -> None:
        super().__init__(
            f"Stripe's invoice total {theirs} differs from ours {ours} (minor units)",
            code="total_mismatch",
        )
        self.ours = ours
        self.theirs = theirs


class BadSignature(Exception):
    """A webhook that is not provably Stripe's, recent, and an event."""


@dataclass(frozen=True)
class SyncResult:
    stripe_invoice_id: str
    status: str
    total_minor: int
    hosted_invoice_url: str | None


@dataclass(frozen=True)
class CreditResult:
    stripe_credit_note_id: str
    total_minor: int


@dataclass(frozen=True)
class Event:
    """The part of a Stripe event the broker acts on."""

    id: str
    type: str
    created: int
    invoice_id: str | None  # the Stripe invoice, when the event's object is one
    broker_invoice_id: str | None  # from the object's metadata
    amount_paid: int | None


@dataclass(frozen=True)
class _PlannedItem:
    broker_item: str
    amount: int
    description: str
    period: tuple[int, int] | None


def make_client(api_key: str, api_base: str | None = None, timeout: float = 10) -> StripeClient:
    """A client that never retries by itself (the job queue does, with the same keys).

    `api_base` points it elsewhere (a fake Stripe): the client ignores `stripe.api_base`.
    """
    return StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def ensure_customer(client: StripeClient, organization_id: str, buyer: Party) -> str:
    """Create the organization's Stripe customer, under the buyer's legal name, and return its id.

    Call it only when no id is stored yet: the key makes a retry within Stripe's key lifetime
    answer the same customer, not find one made earlier.
    """
    params: CustomerCreateParams = {
        "name": buyer.name,
        "metadata": {"broker_organization_id": organization_id},
    }
    customer = _call(
        client.v1.customers.create,
        params,
        options={"idempotency_key": f"customer:{organization_id}"},
    )
    return customer.id


def sync_invoice(client: StripeClient, document: Document, customer_id: str) -> SyncResult:
    """Make Stripe hold the issued invoice `document`, finalized, with our total; idempotent.

    Raises `StripeTotalMismatch` (before finalizing a draft when it can), `GatewayRetryable`,
    `GatewayPermanent` (also, before any call, for an amount Stripe's units cannot express).
    """
    broker_id = document.id
    currency = document.currency.upper()
    planned = _planned_items(document, currency)
    ours = _minor_or_refuse(document.total, currency)
    key = f"invoice:{broker_id}"

    # Found first, then created with a key: the key covers two runs at once, the lookup a
    # run after Stripe forgot the key (job retries can be a day apart).
    stripe_id = _call(_find_invoice, client, customer_id, broker_id) or _create_invoice(
        client, document, customer_id, currency
    )

    present = _call(_broker_items, client, stripe_id)
    for item in planned:
        if item.broker_item in present:
            continue
        params: InvoiceItemCreateParams = {
            "customer": customer_id,
            "invoice": stripe_id,
            "currency": currency.lower(),
            "amount": item.amount,
            "description": item.description,
            "metadata": {"broker_item": item.broker_item},
        }
        if item.period is not None:
            params["period"] = {"start": item.period[0], "end": item.period[1]}
        _call(
            client.v1.invoice_items.create,
            params,
            options={"idempotency_key": f"{key}:item:{item.broker_item}"},
        )

    invoice = _call(client.v1.invoices.retrieve, stripe_id)
    _check_total(ours, invoice.total)
    if invoice.status == "draft":
        invoice = _call(
            client.v1.invoices.finalize_invoice,
            stripe_id,
            {"auto_advance": False},
            options={"idempotency_key": f"{key}:finalize"},
        )
        _check_total(ours, invoice.total)
    return SyncResult(
        stripe_invoice_id=stripe_id,
        status=str(invoice.status),
        total_minor=invoice.total,
        hosted_invoice_url=invoice.hosted_invoice_url,
    )


def credit_invoice(
    client: StripeClient, document: Document, stripe_invoice_id: str
) -> CreditResult:
    """Make Stripe hold the credit note `document` against the invoice it corrects; idempotent.

    On an open invoice the credit lowers what is left to pay; on a paid one it is recorded as
    settled outside Stripe (`out_of_band_amount`: the consortium refunds by transfer). A
    Stripe invoice still in draft (its sync has not finished) is retried later.
    """
    broker_id = document.id
    currency = document.currency.upper()
    planned = _planned_items(document, currency)
    ours = _minor_or_refuse(document.total, currency)
    found = _call(_find_credit_note, client, stripe_invoice_id, broker_id)
    if found is None:
        invoice = _call(client.v1.invoices.retrieve, stripe_invoice_id)
        if invoice.status == "draft":
            raise GatewayRetryable(f"Stripe invoice {stripe_invoice_id} is still a draft")
        params: CreditNoteCreateParams = {
            "invoice": stripe_invoice_id,
            "lines": [
                {
                    "type": "custom_line_item",
                    "description": item.description,
                    "quantity": 1,
                    "unit_amount": item.amount,
                }
                for item in planned
            ],
            "memo": (document.reason or "")[:500],
            "metadata": {
                "broker_credit_note_id": broker_id,
                "broker_credit_note_number": document.number,
            },
        }
        if invoice.status == "paid":
            params["out_of_band_amount"] = ours
        found = _call(
            client.v1.credit_notes.create,
            params,
            options={"idempotency_key": f"credit_note:{broker_id}:create"},
        )
    _check_total(ours, found.total)
    return CreditResult(found.id, found.total)


def _find_credit_note(client: StripeClient, stripe_invoice_id: str, broker_id: str) -> Any:
    """The credit note already made for `broker_id` on the Stripe invoice, if any."""
    listing = client.v1.credit_notes.list({"invoice": stripe_invoice_id, "limit": 100})
    for note in listing.auto_paging_iter():
        metadata = note.metadata.to_dict() if note.metadata else {}
        if metadata.get("broker_credit_note_id") == broker_id:
            return note
    return None


def void_invoice(client: StripeClient, stripe_invoice_id: str, broker_invoice_id: str) -> None:
    """Cancel the Stripe copy of a voided invoice: void it, or delete it while it is a draft
    (Stripe voids only finalized invoices); one already void is fine.

    Refuses (`GatewayPermanent`) an invoice made for another broker invoice, and what Stripe
    cannot cancel (a paid invoice).
    """
    invoice = _finalized_copy(client, stripe_invoice_id, broker_invoice_id)
    if invoice is None or invoice.status == "void":
        return
    _call(
        client.v1.invoices.void_invoice,
        stripe_invoice_id,
        options={"idempotency_key": f"invoice:{broker_invoice_id}:void"},
    )


def mark_paid_outside(client: StripeClient, stripe_invoice_id: str, broker_invoice_id: str) -> None:
    """Tell Stripe that an invoice was paid outside it (bank transfers), so the agency is not
    asked to pay it twice: an open (or uncollectible) one is marked paid out of band; a draft
    (a sync stopped half-way) is deleted; one paid or void is left as it is.

    Refuses (`GatewayPermanent`) an invoice made for another broker invoice."""
    invoice = _finalized_copy(client, stripe_invoice_id, broker_invoice_id)
    if invoice is None or invoice.status in ("paid", "void"):
        return
    _call(
        client.v1.invoices.pay,
        stripe_invoice_id,
        params={"paid_out_of_band": True},
        options={"idempotency_key": f"invoice:{broker_invoice_id}:paid_out_of_band"},
    )


def _finalized_copy(client: StripeClient, stripe_invoice_id: str, broker_invoice_id: str) -> Any:
    """The Stripe invoice, checked to be the copy of `broker_invoice_id` (`GatewayPermanent`
    otherwise), once finalized; a draft (a sync stopped half-way) is deleted, and None."""
    invoice = _call(client.v1.invoices.retrieve, stripe_invoice_id)
    metadata = invoice.metadata.to_dict() if invoice.metadata else {}
    if metadata.get("broker_invoice_id") != broker_invoice_id:
        raise GatewayPermanent(
            f"Stripe invoice {stripe_invoice_id} is not the copy of {broker_invoice_id}",
            code="broker_invoice_mismatch",
        )
    if invoice.status == "draft":
        _call(client.v1.invoices.delete, stripe_invoice_id)
        return None
    return invoice


def find_invoice(client: StripeClient, customer_id: str, broker_invoice_id: str) -> str | None:
    """The id of the customer's Stripe invoice made for `broker_invoice_id`, if any."""
    return _call(_find_invoice, client, customer_id, broker_invoice_id)


def sign_payload(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe would send for `payload` (tests, fake Stripe)."""
    return stripe.WebhookSignature.generate_signature_header(
        payload.decode("utf-8"), secret, timestamp
    )


def parse_event(payload: bytes, signature_header: str, secret: str, tolerance: int = 300) -> Event:
    """Verify a webhook on its raw bytes (signature, and a timestamp at most `tolerance`
    seconds old) and read it. Raises `BadSignature` for anything else."""
    if tolerance <= 0:  # the SDK would take 0 as "do not check the timestamp"
        raise ValueError("tolerance must be positive")
    try:
        stripe.WebhookSignature.verify_header(payload, signature_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(exc.user_message or "signature verification failed") from exc
    except UnicodeDecodeError as exc:
        raise BadSignature("the body is not UTF-8") from exc
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise BadSignature("the body is not JSON") from exc
    if not isinstance(body, dict) or body.get("object") != "event":
        raise BadSignature("the body is not a Stripe event")
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if (
        not isinstance(event_id, str)
        or not isinstance(event_type, str)
        or not isinstance(created, int)
        or isinstance(created, bool)
        or not isinstance(obj, dict)
    ):
        raise BadSignature("the body is not a Stripe event")
    metadata = obj.get("metadata")
    broker_id = metadata.get("broker_invoice_id") if isinstance(metadata, dict) else None
    invoice_id = obj.get("id") if obj.get("object") == "invoice" else None
    amount_paid = obj.get("amount_paid")
    return Event(
        id=event_id,
        type=event_type,
        created=created,
        invoice_id=invoice_id if isinstance(invoice_id, str) else None,
        broker_invoice_id=broker_id if isinstance(broker_id, str) else None,
        amount_paid=amount_paid if _is_int(amount_paid) else None,
    )


def to_stripe_amount(amount: Decimal, currency: str) -> int:
    """`amount` in Stripe's integer units (11.73 EUR → 1173), exactly, or `MoneyError` (finer
    than the currency's minor unit, not finite, or a currency we do not bill in)."""
    currency = currency.upper()
    if not amount.is_finite() or round_amount(amount, currency) != amount:
        raise MoneyError(f"{amount} is not a whole number of {currency} minor units")
    scaled = amount.scaleb(_STRIPE_EXPONENT.get(currency, MINOR_UNITS[currency]))
    return int(scaled)  # exact: `scaled` is integral (checked above), and never a float


# -- helpers ------------------------------------------------------------------------------------


def _planned_items(document: Document, currency: str) -> list[_PlannedItem]:
    """The items Stripe must hold: one per line, then one per non-zero tax row.

    Refuses (`GatewayPermanent`) what Stripe cannot hold as we issued it: an amount finer than
    its integer minor units, or two items under one `broker_item` (the lookup that makes a
    run again idempotent would take the second for the first)."""
    try:
        items = [
            _PlannedItem(
                broker_item=f"line:{line.position}",
                amount=to_stripe_amount(line.amount, currency),
                description=_line_description(line, currency),
                period=_service_period(line),
            )
            for line in document.lines
        ]
        for tax in document.taxes:
            amount = to_stripe_amount(tax.amount, currency)
            if amount == 0:
                continue
            items.append(
                _PlannedItem(
                    broker_item=f"tax:{tax.category}:{tax.rate}",
                    amount=amount,
                    description=_tax_description(tax, currency),
                    period=None,
                )
            )
    except MoneyError as exc:
        raise _unusable(str(exc)) from exc
    names = [item.broker_item for item in items]
    if len(set(names)) != len(names):
        raise _unusable("it repeats a line or a tax row")
    return items


def _line_description(line: Line, currency: str) -> str:
    """`Instance hours: 234.633333 × 0.05 EUR, resource 5c1e…, 2030-03-10 13:37 – … UTC`."""
    metric = _METRICS.get(line.metric, line.metric)
    text = (
        f"{metric}: {line.quantity} × {line.unit_price} {currency}, "
        f"resource {line.resource_id}, "
        f"{_minute(line.service_start)} – {_minute(line.service_end)} UTC"
    )
    if line.kind == ADJUSTMENT:
        text = f"Adjustment for {line.period}: {text}"
    return text


def _tax_description(tax: TaxRow, currency: str) -> str:
    """`VAT S 20 % on 11.73 EUR`."""
    return f"VAT {tax.category} {tax.rate} % on {tax.base} {currency}"


def _service_period(line: Line) -> tuple[int, int] | None:
    """The line's service period in Unix seconds; none when it would end before it starts
    (Stripe refuses such a period)."""
    start, end = int(line.service_start.timestamp()), int(line.service_end.timestamp())
    return (start, end) if end >= start else None


def _minute(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _minor_or_refuse(amount: Decimal, currency: str) -> int:
    try:
        return to_stripe_amount(amount, currency)
    except MoneyError as exc:
        raise _unusable(str(exc)) from exc


def _unusable(reason: str) -> GatewayPermanent:
    return GatewayPermanent(f"the document cannot go to Stripe: {reason}", "invalid_document")


def _check_total(ours: int, theirs: int) -> None:
    if theirs != ours:
        raise StripeTotalMismatch(ours, theirs)


def _days_until_due(document: Document) -> int:
    """The document's payment terms (its due date after its issue date), else the default."""
    if document.due_date is None:
        return DAYS_UNTIL_DUE
    return max(0, (document.due_date - document.issued_at.date()).days)


def _create_invoice(
    client: StripeClient, document: Document, customer_id: str, currency: str
) -> str:
    created = _call(
        client.v1.invoices.create,
        {
            "customer": customer_id,
            "currency": currency.lower(),
            "collection_method": "send_invoice",
            "days_until_due": _days_until_due(document),
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "number": document.number,
            "metadata": {
                "broker_invoice_id": document.id,
                "broker_invoice_number": document.number,
            },
        },
        options={"idempotency_key": f"invoice:{document.id}:create"},
    )
    # The answer may be a replay from an earlier run: its id is right, its state stale.
    return created.id


def _find_invoice(client: StripeClient, customer_id: str, broker_invoice_id: str) -> str | None:
    """The customer's Stripe invoice made for `broker_invoice_id`, if there is one (all pages)."""
    listing = client.v1.invoices.list({"customer": customer_id, "limit": 100})
    for invoice in listing.auto_paging_iter():
        metadata = invoice.metadata.to_dict() if invoice.metadata else {}
        if metadata.get("broker_invoice_id") == broker_invoice_id:
            return invoice.id
    return None


def _broker_items(client: StripeClient, stripe_invoice_id: str) -> set[str]:
    """`metadata[broker_item]` of the items the Stripe invoice already has (all pages)."""
    found = set()
    listing = client.v1.invoice_items.list({"invoice": stripe_invoice_id, "limit": 100})
    for item in listing.auto_paging_iter():
        metadata = item.metadata.to_dict() if item.metadata else {}
        if isinstance(metadata.get("broker_item"), str):
            found.add(metadata["broker_item"])
    return found


def _call(operation: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one Stripe call (or a listing, all its pages), its errors made ours."""
    try:
        return operation(*args, **kwargs)
    except stripe.APIConnectionError as exc:  # refused, reset, timed out: nothing answered
        raise GatewayRetryable(_message(exc)) from exc
    except stripe.StripeError as exc:
        status = exc.http_status
        # 409: a request with the same key is still running at Stripe; 429: rate limited
        # (the SDK also reports an old-style 400 `rate_limit` as RateLimitError).
        if isinstance(exc, stripe.RateLimitError) or status in (409, 429) or (status or 0) >= 500:
            raise GatewayRetryable(_message(exc), _retry_after(exc.headers)) from exc
        raise GatewayPermanent(_message(exc), _code(exc), status) from exc


def _message(exc: stripe.StripeError) -> str:
    status = f"HTTP {exc.http_status}: " if exc.http_status else ""
    return f"Stripe: {status}{exc.user_message or type(exc).__name__}"


def _code(exc: stripe.StripeError) -> str:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    if not isinstance(error, dict):
        error = {}
    for candidate in (exc.code, error.get("code"), error.get("type")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return type(exc).__name__


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """`Retry-After` in seconds (a number, or an HTTP date), if the answer had one."""
    value = next(
        (v for k, v in (headers or {}).items() if k.lower() == "retry-after"),
        None,
    )
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
