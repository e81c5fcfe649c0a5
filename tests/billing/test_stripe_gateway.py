"""The Stripe gateway against a fake Stripe (tests/billing/fake_stripe.py), through the real SDK.

What matters: Stripe's total equals ours to the cent, and a sync stopped at any point then run
again creates nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from stripe import StripeClient

from billing.document import Document
from billing.money import MoneyError
from billing.stripe_gateway import (
    BadSignature,
    GatewayPermanent,
    GatewayRetryable,
    StripeTotalMismatch,
    credit_invoice,
    ensure_customer,
    find_invoice,
    make_client,
    parse_event,
    sign_payload,
    sync_invoice,
    to_stripe_amount,
    void_invoice,
)
from tests.billing.fake_stripe import API_KEY, FakeStripe, serve

ITEMS = "POST /v1/invoiceitems"
CREATE = "POST /v1/invoices"
FINALIZE = "POST /v1/invoices/<id>/finalize"
SECRET = "whsec_test_0123456789"


def _line(
    position: int, amount: str, category: str = "S", rate: str = "20", **extra: str
) -> dict[str, Any]:
    return {
        "position": position,
        "kind": "usage",
        "period": "2030-03",
        "resource_id": f"5c1e000{position}",
        "provider_id": "a3f0",
        "metric": "instance_hour",
        "quantity": "10",
        "unit_price": "0.05",
        "amount": amount,
        "tax_category": category,
        "tax_rate": rate,
        "service_start": "2030-03-10T13:37:00Z",
        "service_end": "2030-03-20T08:15:00Z",
        **extra,
    }


def eur_snapshot(**changes: Any) -> dict[str, Any]:
    """4 lines, one tax row with an amount and one zero-rated row: 5 items in Stripe."""
    snapshot = {
        "document_type": "invoice",
        "id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        "number": "2030-000001",
        "issued_at": "2030-04-01T00:05:00Z",
        "currency": "EUR",
        "period": "2030-03",
        "period_start": "2030-03-01T00:00:00Z",
        "period_end": "2030-04-01T00:00:00Z",
        "seller": {"name": "Sovereign Cloud Consortium", "country": "FR"},
        "buyer": {
            "organization_id": "0d5b",
            "name": "ANDS",
            "legal_name": "Agence nationale",
            "country": "FR",
        },
        "lines": [
            _line(1, "11.73", quantity="234.633333"),
            _line(2, "3.20", metric="egress_gib"),
            _line(3, "0.87", kind="adjustment", period="2030-02"),
            _line(4, "5.00", "Z", "0", metric="storage_gib_month"),
        ],
        "taxes": [
            {"category": "S", "rate": "20", "base": "15.80", "amount": "3.16"},
            {"category": "Z", "rate": "0", "base": "5.00", "amount": "0.00"},
        ],
        "subtotal": "20.80",
        "tax": "3.16",
        "total": "23.96",
    }
    return {**snapshot, **changes}


def eur_invoice(**changes: Any) -> Document:
    return Document.from_snapshot(eur_snapshot(**changes))


BUYER = eur_invoice().buyer  # "Agence nationale", trading as "ANDS"


@pytest.fixture
def stripe_api() -> Iterator[tuple[FakeStripe, StripeClient, str]]:
    with serve() as (fake, base_url):
        yield fake, make_client(API_KEY, base_url, timeout=5), base_url


@pytest.fixture
def customer(stripe_api: tuple[FakeStripe, StripeClient, str]) -> str:
    _, client, _ = stripe_api
    return ensure_customer(client, "0d5b", BUYER)


def _only_invoice(fake: FakeStripe) -> dict[str, Any]:
    assert len(fake.invoices) == 1
    return next(iter(fake.invoices.values()))


# -- a sync ---------------------------------------------------------------------------------------


def test_a_sync_makes_an_item_per_line_and_per_taxed_row_and_totals_match(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api

    result = sync_invoice(client, eur_invoice(), customer)

    invoice = _only_invoice(fake)
    assert result.stripe_invoice_id == invoice["id"]
    assert (result.status, result.total_minor) == ("open", 2396)
    assert result.hosted_invoice_url and invoice["id"] in result.hosted_invoice_url
    assert invoice["customer"] == customer
    assert invoice["currency"] == "eur"
    assert invoice["collection_method"] == "send_invoice"
    assert invoice["days_until_due"] == 30
    assert invoice["auto_advance"] is False
    assert invoice["number"] == "2030-000001"
    assert invoice["metadata"] == {
        "broker_invoice_id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        "broker_invoice_number": "2030-000001",
    }
    items = fake.items_of(invoice["id"])
    assert [(i["metadata"]["broker_item"], i["amount"]) for i in items] == [
        ("line:1", 1173),
        ("line:2", 320),
        ("line:3", 87),
        ("line:4", 500),
        ("tax:S:20", 316),
    ]
    assert all(type(i["amount"]) is int for i in items)
    assert sum(i["amount"] for i in items) == 2396
    assert items[0]["description"] == (
        "Instance hours: 234.633333 × 0.05 EUR, resource 5c1e0001, "
        "2030-03-10 13:37 – 2030-03-20 08:15 UTC"
    )
    assert items[2]["description"].startswith("Adjustment for 2030-02: Instance hours")
    assert items[0]["period"] == {
        "start": int(datetime(2030, 3, 10, 13, 37, tzinfo=UTC).timestamp()),
        "end": int(datetime(2030, 3, 20, 8, 15, tzinfo=UTC).timestamp()),
    }
    assert items[4]["description"] == "VAT S 20 % on 15.80 EUR"
    assert fake.count(FINALIZE) == 1


def test_a_run_again_after_success_creates_nothing(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    first = sync_invoice(client, eur_invoice(), customer)

    again = sync_invoice(client, eur_invoice(), customer)

    assert again == first
    assert len(fake.invoices) == 1 and len(fake.items) == 5
    assert fake.count(ITEMS) == 5  # none asked for again
    assert fake.count(CREATE) == 1  # found, not asked for again
    assert fake.count(FINALIZE) == 1  # the invoice is open: no finalization asked
    # The first run read an empty list; this one read 5 items in pages of 2.
    assert fake.count("GET /v1/invoiceitems") == 1 + 3


@pytest.mark.parametrize("keys_forgotten", [False, True], ids=["keys_kept", "keys_forgotten"])
@pytest.mark.parametrize(
    ("endpoint", "call_number", "after_commit"),
    [
        ("GET /v1/invoices", 1, False),
        (CREATE, 1, False),
        (CREATE, 1, True),
        ("GET /v1/invoiceitems", 1, False),
        (ITEMS, 1, False),
        (ITEMS, 3, False),
        (ITEMS, 3, True),  # 2 of 5 items answered, the 3rd made but its answer lost
        (ITEMS, 5, True),
        ("GET /v1/invoices/<id>", 1, False),
        (FINALIZE, 1, False),  # between the items and the finalization
        (FINALIZE, 1, True),
    ],
)
def test_a_sync_stopped_anywhere_then_run_again_makes_everything_once(
    stripe_api: tuple[FakeStripe, StripeClient, str],
    customer: str,
    endpoint: str,
    call_number: int,
    after_commit: bool,
    keys_forgotten: bool,
) -> None:
    fake, client, _ = stripe_api
    if after_commit:
        fake.fail_after_commit(endpoint, call_number)
    else:
        fake.fail_before(endpoint, call_number)

    with pytest.raises(GatewayRetryable):
        sync_invoice(client, eur_invoice(), customer)
    if keys_forgotten:  # the job's next attempt came more than a day later
        fake.forget_idempotency_keys()
    result = sync_invoice(client, eur_invoice(), customer)

    invoice = _only_invoice(fake)
    assert sorted(i["metadata"]["broker_item"] for i in fake.items_of(invoice["id"])) == [
        "line:1",
        "line:2",
        "line:3",
        "line:4",
        "tax:S:20",
    ]
    assert invoice["status"] == result.status == "open"
    assert result.total_minor == 2396 == sum(i["amount"] for i in fake.items.values())
    assert len(fake.customers) == 1
    assert sum(1 for i in fake.invoices.values() if i["status"] == "open") == 1


def test_crash_after_two_of_five_items_leaves_three_and_the_run_again_adds_two(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    fake.fail_after_commit(ITEMS, call_number=3)

    with pytest.raises(GatewayRetryable):
        sync_invoice(client, eur_invoice(), customer)
    invoice = _only_invoice(fake)
    assert len(fake.items_of(invoice["id"])) == 3 and invoice["status"] == "draft"

    sync_invoice(client, eur_invoice(), customer)
    assert len(fake.items_of(invoice["id"])) == 5
    assert fake.count(ITEMS) == 3 + 2
    assert fake.count(FINALIZE) == 1


# -- totals ---------------------------------------------------------------------------------------


def test_a_stripe_total_that_differs_is_caught_before_finalizing(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    fake.total_skew = 1

    with pytest.raises(StripeTotalMismatch) as caught:
        sync_invoice(client, eur_invoice(), customer)

    assert (caught.value.ours, caught.value.theirs) == (2396, 2397)
    assert isinstance(caught.value, GatewayPermanent)
    assert _only_invoice(fake)["status"] == "draft"
    assert fake.count(FINALIZE) == 0


def test_an_item_added_behind_our_back_is_caught(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    fake.fail_before(FINALIZE)
    with pytest.raises(GatewayRetryable):
        sync_invoice(client, eur_invoice(), customer)
    fake.add_item(_only_invoice(fake)["id"], 100)

    with pytest.raises(StripeTotalMismatch) as caught:
        sync_invoice(client, eur_invoice(), customer)

    assert (caught.value.ours, caught.value.theirs) == (2396, 2496)
    assert _only_invoice(fake)["status"] == "draft"


def test_a_yen_invoice_has_no_minor_unit_and_its_own_payment_terms(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    yen = eur_invoice(
        id="jpy-1",
        number="2030-000002",
        currency="JPY",
        lines=[_line(1, "1234", unit_price="123.4"), _line(2, "567")],
        taxes=[{"category": "S", "rate": "10", "base": "1801", "amount": "180"}],
        total="1981",
        due_date="2030-04-16",  # 15 days after its issue
    )

    result = sync_invoice(client, yen, customer)

    invoice = _only_invoice(fake)
    assert invoice["currency"] == "jpy"
    assert invoice["days_until_due"] == 15
    assert [i["amount"] for i in fake.items_of(invoice["id"])] == [1234, 567, 180]
    assert result.total_minor == 1981


@pytest.mark.parametrize(
    "changes",
    [
        {"lines": [_line(1, "11.735")]},  # a line finer than the cent
        {"total": "23.955"},
        {"lines": [_line(1, "11.73"), _line(1, "3.20")]},  # two items under one key
    ],
    ids=["line", "total", "repeated_line"],
)
def test_a_document_stripe_cannot_hold_as_issued_is_refused_before_any_call(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str, changes: dict[str, Any]
) -> None:
    fake, client, _ = stripe_api
    requests_before = sum(fake.requests.values())

    with pytest.raises(GatewayPermanent) as caught:
        sync_invoice(client, eur_invoice(**changes), customer)

    assert caught.value.code == "invalid_document"
    assert sum(fake.requests.values()) == requests_before


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("11.73", "EUR", 1173),
        ("0.1", "EUR", 10),
        ("-2.50", "EUR", -250),
        ("1234", "JPY", 1234),
        ("1234.0", "JPY", 1234),
        ("100", "ISK", 10000),  # Stripe still takes ISK in hundredths
        ("99999999999.99", "EUR", 9999999999999),
    ],
)
def test_amounts_become_exact_integers(amount: str, currency: str, minor: int) -> None:
    converted = to_stripe_amount(Decimal(amount), currency)
    assert converted == minor and type(converted) is int


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("11.735", "EUR"), ("12.5", "JPY"), ("NaN", "EUR"), ("Infinity", "EUR"), ("1", "XXX")],
)
def test_amounts_that_are_not_whole_minor_units_are_refused(amount: str, currency: str) -> None:
    with pytest.raises(MoneyError):
        to_stripe_amount(Decimal(amount), currency)


# -- errors ---------------------------------------------------------------------------------------


def test_a_wrong_api_key_is_permanent(stripe_api: tuple[FakeStripe, StripeClient, str]) -> None:
    _, _, base_url = stripe_api
    client = make_client("sk_test_wrong", base_url)

    with pytest.raises(GatewayPermanent) as caught:
        ensure_customer(client, "0d5b", BUYER)

    assert caught.value.status == 401
    assert "Invalid API Key" in str(caught.value)


def test_a_bad_request_is_permanent(stripe_api: tuple[FakeStripe, StripeClient, str]) -> None:
    _, client, _ = stripe_api

    with pytest.raises(GatewayPermanent) as caught:
        sync_invoice(client, eur_invoice(), "cus_nobody")

    assert (caught.value.status, caught.value.code) == (400, "resource_missing")


def test_a_key_reused_with_other_parameters_is_permanent(
    stripe_api: tuple[FakeStripe, StripeClient, str],
) -> None:
    _, client, _ = stripe_api
    ensure_customer(client, "0d5b", BUYER)

    with pytest.raises(GatewayPermanent) as caught:
        ensure_customer(client, "0d5b", dataclasses.replace(BUYER, name="Agence renommée"))

    assert (caught.value.status, caught.value.code) == (400, "idempotency_error")


@pytest.mark.parametrize("status", [500, 503, 409])
def test_server_errors_and_conflicts_are_retryable(
    stripe_api: tuple[FakeStripe, StripeClient, str], status: int
) -> None:
    fake, client, _ = stripe_api
    fake.fail_before("POST /v1/customers", status=status)

    with pytest.raises(GatewayRetryable) as caught:
        ensure_customer(client, "0d5b", BUYER)

    assert caught.value.retry_after is None
    assert ensure_customer(client, "0d5b", BUYER)  # then it works


def test_a_rate_limit_is_retryable_after_what_stripe_said(
    stripe_api: tuple[FakeStripe, StripeClient, str],
) -> None:
    fake, client, _ = stripe_api
    fake.fail_before("POST /v1/customers", status=429, retry_after=7)

    with pytest.raises(GatewayRetryable) as caught:
        ensure_customer(client, "0d5b", BUYER)

    assert caught.value.retry_after == 7.0


def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(API_KEY, f"http://127.0.0.1:{port}", timeout=2)

    with pytest.raises(GatewayRetryable):
        ensure_customer(client, "0d5b", BUYER)


# -- customers and voids --------------------------------------------------------------------------


def test_ensure_customer_twice_makes_one_customer(
    stripe_api: tuple[FakeStripe, StripeClient, str],
) -> None:
    fake, client, _ = stripe_api
    buyer = dataclasses.replace(BUYER, name="Agence nationale des données souveraines")

    first = ensure_customer(client, "0d5b", buyer)
    second = ensure_customer(client, "0d5b", buyer)

    assert first == second and first.startswith("cus_")
    assert list(fake.customers) == [first]
    assert fake.customers[first]["name"] == "Agence nationale des données souveraines"
    assert fake.customers[first]["metadata"] == {"broker_organization_id": "0d5b"}


def test_void_voids_once_and_an_already_void_invoice_is_fine(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    synced = sync_invoice(client, eur_invoice(), customer)
    broker_id = eur_invoice().id

    void_invoice(client, synced.stripe_invoice_id, broker_id)
    void_invoice(client, synced.stripe_invoice_id, broker_id)

    assert _only_invoice(fake)["status"] == "void"
    assert fake.count("POST /v1/invoices/<id>/void") == 1
    assert sync_invoice(client, eur_invoice(), customer).status == "void"


def credit_note(**changes: Any) -> Document:
    """A credit note of 5.00 of line 1 (+ 1.00 VAT) of `eur_invoice()`."""
    return eur_invoice(
        **{
            "document_type": "credit_note",
            "id": "c4ed17a0-0000-4000-8000-000000000001",
            "number": "CN-2030-000001",
            "issued_at": "2030-04-12T09:30:00Z",
            "corrects": {
                "id": eur_snapshot()["id"],
                "number": "2030-000001",
                "issued_at": "2030-04-01T00:05:00Z",
            },
            "reason": "Outage",
            "lines": [{**_line(1, "5.00", quantity="1", unit_price="5.00"), "credits_position": 1}],
            "taxes": [{"category": "S", "rate": "20", "base": "5.00", "amount": "1.00"}],
            "subtotal": "5.00",
            "tax": "1.00",
            "total": "6.00",
            **changes,
        }
    )


def test_a_credit_note_lowers_what_is_due_once_even_when_its_answer_is_lost(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    synced = sync_invoice(client, eur_invoice(), customer)
    fake.fail_after_commit("POST /v1/credit_notes")
    with pytest.raises(GatewayRetryable):
        credit_invoice(client, credit_note(), synced.stripe_invoice_id)
    fake.forget_idempotency_keys()  # a retry a day later: found, not made again
    result = credit_invoice(client, credit_note(), synced.stripe_invoice_id)

    (note,) = fake.credit_notes.values()
    assert (result.stripe_credit_note_id, result.total_minor) == (note["id"], 600)
    assert note["metadata"]["broker_credit_note_number"] == "CN-2030-000001"
    assert note["out_of_band_amount"] is None  # unpaid: it lowers what is left to pay
    assert client.v1.invoices.retrieve(synced.stripe_invoice_id).amount_due == 2396 - 600

    # Once the invoice is paid, a credit note is settled outside Stripe (a transfer back).
    fake.mark_paid(synced.stripe_invoice_id)
    second = credit_note(id="c4ed17a0-0000-4000-8000-000000000002")
    credit_invoice(client, second, synced.stripe_invoice_id)
    assert [n["out_of_band_amount"] for n in fake.credit_notes.values()] == [None, 600]


def test_a_credit_note_waits_for_its_invoice_to_leave_draft(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    fake.fail_before(FINALIZE)
    with pytest.raises(GatewayRetryable):
        sync_invoice(client, eur_invoice(), customer)
    with pytest.raises(GatewayRetryable, match="draft"):
        credit_invoice(client, credit_note(), _only_invoice(fake)["id"])
    assert fake.credit_notes == {}


def test_void_refuses_the_copy_of_another_invoice_and_deletes_a_draft(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    fake.fail_before(FINALIZE)
    with pytest.raises(GatewayRetryable):
        sync_invoice(client, eur_invoice(), customer)
    draft = _only_invoice(fake)["id"]

    with pytest.raises(GatewayPermanent) as other:
        void_invoice(client, draft, "another-invoice")
    assert other.value.code == "broker_invoice_mismatch"
    assert find_invoice(client, customer, eur_invoice().id) == draft

    void_invoice(client, draft, eur_invoice().id)  # a draft cannot be voided: deleted
    assert fake.invoices == {} and fake.items_of(draft) == []
    assert find_invoice(client, customer, eur_invoice().id) is None
    assert fake.count("POST /v1/invoices/<id>/void") == 0


# -- webhooks -------------------------------------------------------------------------------------


def _event_body(**object_fields: Any) -> bytes:
    invoice = {
        "id": "in_123",
        "object": "invoice",
        "amount_paid": 2396,
        "metadata": {"broker_invoice_id": "7b0c2f3e"},
        **object_fields,
    }
    event = {
        "id": "evt_1",
        "object": "event",
        "type": "invoice.paid",
        "created": 1900000000,
        "data": {"object": invoice},
    }
    return json.dumps(event).encode()


def test_a_signed_event_is_read() -> None:
    body = _event_body()
    header = sign_payload(body, SECRET, int(time.time()))

    event = parse_event(body, header, SECRET)

    assert event.id == "evt_1" and event.type == "invoice.paid" and event.created == 1900000000
    assert (event.invoice_id, event.broker_invoice_id, event.amount_paid) == (
        "in_123",
        "7b0c2f3e",
        2396,
    )


def test_an_event_about_something_else_has_no_invoice() -> None:
    body = _event_body(object="customer", id="cus_1", amount_paid=None, metadata={})
    event = parse_event(body, sign_payload(body, SECRET, int(time.time())), SECRET)
    assert (event.invoice_id, event.broker_invoice_id, event.amount_paid) == (None, None, None)


def test_a_wrong_secret_is_refused() -> None:
    body = _event_body()
    with pytest.raises(BadSignature):
        parse_event(body, sign_payload(body, "whsec_other", int(time.time())), SECRET)


def test_a_body_changed_by_one_byte_is_refused() -> None:
    body = _event_body()
    header = sign_payload(body, SECRET, int(time.time()))
    changed = body.replace(b"2396", b"2397")
    assert len(changed) == len(body)
    with pytest.raises(BadSignature):
        parse_event(changed, header, SECRET)


def test_an_old_timestamp_is_refused() -> None:
    body = _event_body()
    header = sign_payload(body, SECRET, int(time.time()) - 301)
    with pytest.raises(BadSignature):
        parse_event(body, header, SECRET, tolerance=300)
    assert parse_event(body, header, SECRET, tolerance=600).id == "evt_1"


@pytest.mark.parametrize(
    "header", ["", "garbage", "t=abc,v1=00", "v1=00", "t=1900000000", "t=1900000000,v0=00"]
)
def test_a_malformed_header_is_refused(header: str) -> None:
    with pytest.raises(BadSignature):
        parse_event(_event_body(), header, SECRET)


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"object": "list"}', b'{"object": "event", "id": "evt_1"}', b"\xff"],
)
def test_a_signed_body_that_is_not_an_event_is_refused(body: bytes) -> None:
    header = (
        f"t={int(time.time())},v1=" + "0" * 64
        if body == b"\xff"  # cannot be signed as text; refused all the same
        else sign_payload(body, SECRET, int(time.time()))
    )
    with pytest.raises(BadSignature):
        parse_event(body, header, SECRET)


def test_the_fake_refuses_items_on_a_finalized_invoice(
    stripe_api: tuple[FakeStripe, StripeClient, str], customer: str
) -> None:
    fake, client, _ = stripe_api
    synced = sync_invoice(client, eur_invoice(), customer)
    extra = eur_invoice(lines=[*eur_snapshot()["lines"], _line(5, "1.00")], total="24.96")

    with pytest.raises(GatewayPermanent) as caught:
        sync_invoice(client, extra, customer)

    assert caught.value.status == 400
    assert len(fake.items_of(synced.stripe_invoice_id)) == 5
