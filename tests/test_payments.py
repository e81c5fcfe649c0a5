"""Payments through Stripe, against the fake Stripe server (tests/billing/fake_stripe.py)
reached through the client's own base address: the sync after finalization survives a crash
without creating anything twice, and Stripe's total is ours; webhooks are verified on the raw
body, applied once, and never move a paid invoice back; a paid invoice is not voided; an
invoice settled by bank transfers is marked paid out of band there, or never sent.

Done when (3), and the paid side of (5).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from billing.stripe_gateway import make_client, sign_payload
from tests.billing import fake_stripe
from tests.billing_fixtures import Ledger
from tests.helpers import problem

SECRET = "whsec_test_0123456789"


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


@pytest.fixture
def stripe(app: Flask) -> Iterator[fake_stripe.FakeStripe]:
    with fake_stripe.serve() as (fake, base_url):
        app.config.update(
            STRIPE_API_KEY=fake_stripe.API_KEY,
            STRIPE_API_BASE=base_url,
            STRIPE_WEBHOOK_SECRET=SECRET,
        )
        yield fake


def issued_invoice(ledger: Ledger, machines: int) -> dict[str, Any]:
    """March's invoice of `machines` machines (a line each), finalized (not synced yet)."""
    started = [ledger.start_machine(t(2, 9, index), f"vm-{index}") for index in range(machines)]
    for index, machine in enumerate(started):
        ledger.act(machine, "terminate", t(9, 17, 3 * index))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.finalize(ledger.invoice_of("2030-03")["id"])
    assert invoice.status_code == 200, invoice.get_data(as_text=True)
    return dict(invoice.json)


def read(ledger: Ledger, invoice_id: str) -> dict[str, Any]:
    return dict(
        ledger.client.get(f"/v1/invoices/{invoice_id}", headers=ledger.finance.headers).json
    )


def credit(ledger: Ledger, invoice_id: str, lines: list[dict[str, Any]] | None) -> dict[str, Any]:
    response = ledger.client.post(
        f"/v1/invoices/{invoice_id}/credit-notes",
        json={"reason": "Goodwill", **({"lines": lines} if lines else {})},
        headers={**ledger.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


def cents(amount: str) -> int:
    whole, _, fraction = amount.partition(".")
    return int(whole) * 100 + int(fraction or 0)


def test_the_stripe_sync_survives_a_crash_and_creates_each_item_once(
    ledger: Ledger, stripe: fake_stripe.FakeStripe
) -> None:
    # The third item is created in Stripe but its answer is lost: the job fails there.
    stripe.fail_after_commit("POST /v1/invoiceitems", call_number=3)
    invoice = issued_invoice(ledger, machines=4)  # 4 lines + VAT = 5 Stripe items
    assert invoice["payment_state"] == "pending"
    ledger.run_jobs()
    (stripe_invoice,) = stripe.invoices.values()
    assert len(stripe.items_of(stripe_invoice["id"])) == 3
    assert stripe_invoice["status"] == "draft"
    assert read(ledger, invoice["id"])["payment_state"] == "pending"

    ledger.at(t(1, 3, month=4))  # the retry's backoff has passed
    ledger.run_jobs()
    assert len(stripe.invoices) == 1
    (customer,) = stripe.customers.values()  # the agency, by the legal name it was invoiced
    assert customer["name"] == invoice["snapshot"]["buyer"]["legal_name"]
    assert customer["metadata"] == {"broker_organization_id": invoice["agency_id"]}
    (stripe_invoice,) = stripe.invoices.values()
    items = stripe.items_of(stripe_invoice["id"])
    assert sorted(item["metadata"]["broker_item"] for item in items) == sorted(
        [f"line:{line['position']}" for line in invoice["lines"]] + ["tax:S:20"]
    )
    expected = {f"line:{line['position']}": cents(line["amount"]) for line in invoice["lines"]}
    expected["tax:S:20"] = cents(invoice["tax"])
    assert {item["metadata"]["broker_item"]: item["amount"] for item in items} == expected
    assert stripe_invoice["number"] == invoice["number"]
    assert stripe_invoice["status"] == "open"
    assert stripe.count("POST /v1/invoices/<id>/finalize") == 1
    synced = read(ledger, invoice["id"])
    assert synced["payment_state"] == "open" and synced["payment_url"]
    client = make_client(fake_stripe.API_KEY, ledger.app.config["STRIPE_API_BASE"])
    fetched = client.v1.invoices.retrieve(stripe_invoice["id"])
    assert fetched.total == cents(invoice["total"]) == sum(expected.values())

    # The agency's next invoice goes to the same customer; a Stripe that disagrees on the
    # total stops the sync for finance to look at.
    stripe.total_skew = 1
    ledger.bill("2030-04", when=t(1, 1, month=5))
    april = ledger.finalize(ledger.invoice_of("2030-04")["id"]).json
    ledger.run_jobs()
    assert len(stripe.customers) == 1 and len(stripe.invoices) == 2
    failed = read(ledger, april["id"])
    assert failed["payment_state"] == "sync_failed"
    assert "total" in failed["payment_error"].lower()

    # Voiding an unpaid invoice voids it in Stripe too.
    stripe.total_skew = 0
    voided = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/void",
        json={"reason": "Billed to the wrong agency"},
        headers=ledger.finance.headers,
    )
    assert voided.status_code == 200, voided.get_data(as_text=True)
    ledger.run_jobs()
    assert stripe.invoices[stripe_invoice["id"]]["status"] == "void"


def test_an_invoice_voided_while_its_sync_was_stopped_leaves_nothing_to_pay_in_stripe(
    ledger: Ledger, stripe: fake_stripe.FakeStripe
) -> None:
    stripe.fail_before("POST /v1/invoiceitems", call_number=2)  # the sync stops half-way
    invoice = issued_invoice(ledger, machines=2)
    ledger.run_jobs()
    (draft,) = stripe.invoices.values()
    assert draft["status"] == "draft" and len(stripe.items_of(draft["id"])) == 1
    assert read(ledger, invoice["id"])["stripe_invoice_id"] is None  # never recorded
    voided = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/void",
        json={"reason": "Duplicate"},
        headers=ledger.finance.headers,
    )
    assert voided.status_code == 200, voided.get_data(as_text=True)
    ledger.at(t(1, 3, month=4))  # the sync's retry is due too: it finds the invoice void
    ledger.run_jobs()
    assert stripe.invoices == {}  # the half-made draft was found and deleted
    assert read(ledger, invoice["id"])["state"] == "void"


def event(kind: str, invoice: dict[str, Any], created: int, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": kind,
            "created": created,
            "data": {
                "object": {
                    "id": invoice["stripe_invoice_id"],
                    "object": "invoice",
                    "metadata": {"broker_invoice_id": invoice["id"]},
                    "amount_paid": cents(invoice["total"]) if kind == "invoice.paid" else 0,
                }
            },
        }
    ).encode()


def test_webhooks_are_verified_applied_once_and_never_move_a_paid_invoice_back(
    ledger: Ledger, stripe: fake_stripe.FakeStripe
) -> None:
    invoice = issued_invoice(ledger, machines=1)
    ledger.run_jobs()
    (stripe_id,) = stripe.invoices
    invoice = {**invoice, "stripe_invoice_id": stripe_id}
    now = int(time.time())

    # A credit note on the open invoice lowers what is left to pay in Stripe too.
    (line,) = invoice["lines"]
    partial = credit(ledger, invoice["id"], [{"position": line["position"], "amount": "0.10"}])
    ledger.run_jobs()
    (stripe_note,) = stripe.credit_notes.values()
    assert stripe_note["total"] == cents(partial["total"]) == 12  # 0.10 + 0.02 VAT
    client = make_client(fake_stripe.API_KEY, ledger.app.config["STRIPE_API_BASE"])
    due = client.v1.invoices.retrieve(stripe_id).amount_due
    assert due == cents(invoice["total"]) - cents(partial["total"])
    shown = ledger.client.get(f"/v1/credit-notes/{partial['id']}", headers=ledger.finance.headers)
    assert shown.json["stripe_credit_note_id"] == stripe_note["id"]

    def deliver(payload: bytes, signature: str | None = None, **headers: str) -> Any:
        sent = {"Content-Type": "application/json", **headers}
        sent["Stripe-Signature"] = signature or sign_payload(payload, SECRET, now)
        return ledger.client.post("/v1/webhooks/stripe", data=payload, headers=sent)

    paid = event("invoice.paid", invoice, now - 60)
    refusals = [
        deliver(paid, sign_payload(paid, "whsec_other", now)),  # another secret
        deliver(paid, sign_payload(paid, SECRET, now - 301)),  # too old
        deliver(paid, "t=1,v1=deadbeef"),
        deliver(paid, "garbage"),
        deliver(
            paid.replace(b'"invoice.paid"', b'"invoice.paiD"'), sign_payload(paid, SECRET, now)
        ),
        ledger.client.post(
            "/v1/webhooks/stripe", data=paid, headers={"Content-Type": "application/json"}
        ),
        deliver(b"[]"),  # signed, but not an event
    ]
    for response in refusals:
        problem(response, 400, "bad_signature")
    assert read(ledger, invoice["id"])["state"] == "finalized"

    failed = deliver(event("invoice.payment_failed", invoice, now - 120))
    assert failed.status_code == 200, failed.get_data(as_text=True)
    assert read(ledger, invoice["id"])["payment_state"] == "payment_failed"
    stripe.mark_paid(stripe_id)  # the agency pays; Stripe tells us
    first = deliver(paid)
    assert first.json["status"] == "processed"
    settled = read(ledger, invoice["id"])
    assert (settled["state"], settled["payment_state"]) == ("paid", "paid")
    assert settled["paid_at"] == datetime.fromtimestamp(now - 60, UTC).isoformat().replace(
        "+00:00", "Z"
    )

    # A replay changes nothing; late events from before the payment are ignored.
    assert deliver(paid).json["status"] == "duplicate"
    for kind in ("invoice.payment_failed", "invoice.finalized"):
        late = deliver(event(kind, invoice, now - 600))
        assert late.status_code == 200 and late.json["outcome"].startswith("ignored")
    stranger = {"id": str(uuid.uuid4()), "stripe_invoice_id": "in_unknown", "total": "1.00"}
    assert deliver(event("invoice.paid", stranger, now)).json["outcome"].startswith("ignored")
    assert read(ledger, invoice["id"]) == settled

    # A paid invoice is not voided; it may still be credited.
    void = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/void", json={"reason": "x"}, headers=ledger.finance.headers
    )
    problem(void, 409, "invoice_paid")
    assert read(ledger, invoice["id"])["state"] == "paid"
    rest = credit(ledger, invoice["id"], None)
    assert cents(rest["total"]) + cents(partial["total"]) == cents(invoice["total"])
    ledger.run_jobs()  # recorded in Stripe as refunded outside it
    assert [note["out_of_band_amount"] for note in stripe.credit_notes.values()] == [
        None,
        cents(rest["total"]),
    ]

    ledger.app.config["STRIPE_WEBHOOK_SECRET"] = None
    problem(deliver(event("invoice.paid", invoice, now)), 404, "stripe_not_configured")


def transfer(ledger: Ledger, invoice: dict[str, Any], amount: str) -> None:
    response = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/payments",
        json={"amount": amount, "received_on": "2030-04-01", "reference": "VIR SEPA 42"},
        headers={**ledger.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.get_data(as_text=True)


def test_an_invoice_paid_by_bank_transfer_is_never_asked_for_again_in_stripe(
    ledger: Ledger, stripe: fake_stripe.FakeStripe
) -> None:
    invoice = issued_invoice(ledger, machines=1)
    ledger.run_jobs()  # in Stripe, open
    (copy,) = stripe.invoices.values()
    assert copy["status"] == "open"
    half = f"{cents(invoice['total']) // 2 // 100}.{cents(invoice['total']) // 2 % 100:02d}"
    transfer(ledger, invoice, half)
    ledger.run_jobs()
    assert copy["status"] == "open"  # a part paid: Stripe still shows what was issued
    rest = cents(invoice["total"]) - cents(half)
    transfer(ledger, invoice, f"{rest // 100}.{rest % 100:02d}")
    ledger.run_jobs()
    assert copy["status"] == "paid"  # marked paid out of band: the agency pays once
    assert read(ledger, invoice["id"])["state"] == "paid"


def test_an_invoice_paid_by_transfer_before_its_sync_never_reaches_stripe(
    ledger: Ledger, stripe: fake_stripe.FakeStripe
) -> None:
    invoice = issued_invoice(ledger, machines=1)  # its sync is queued, not run
    transfer(ledger, invoice, invoice["total"])
    ledger.run_jobs()
    assert stripe.invoices == {}
    assert read(ledger, invoice["id"])["payment_state"] == "paid"
