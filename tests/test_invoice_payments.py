"""Payments received outside Stripe (bank transfers): finance records them against a finalized
invoice; partial payments add up, a credit note lowers what is owed, an overpayment is refused
and changes nothing, and the payment that settles the invoice moves it to `paid`; drafts and
void invoices take none; the agency reads its own invoice's payments; every payment is audited.

Done when (5).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from tests.billing_fixtures import Ledger, money
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem, run_concurrently
from tests.test_invoices import start_for


def t(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, tzinfo=UTC)


def pay(ledger: Ledger, invoice_id: str, body: dict[str, Any], key: str | None = None) -> Any:
    return ledger.client.post(
        f"/v1/invoices/{invoice_id}/payments",
        json=body,
        headers={**ledger.finance.headers, "Idempotency-Key": key or str(uuid.uuid4())},
    )


def transfer(amount: str, received_on: str = "2030-04-10", reference: str = "VIR 2030-04") -> Any:
    return {"amount": amount, "received_on": received_on, "reference": reference}


def payments(ledger: Ledger, invoice_id: str, user: ApiUser | None = None) -> Any:
    user = user or ledger.finance
    return ledger.client.get(f"/v1/invoices/{invoice_id}/payments", headers=user.headers)


def read(ledger: Ledger, invoice_id: str) -> dict[str, Any]:
    response = ledger.client.get(f"/v1/invoices/{invoice_id}", headers=ledger.finance.headers)
    return dict(response.json)


def test_bank_transfers_pay_invoices_in_parts_and_never_more_than_is_owed(
    ledger: Ledger, admin: ApiUser, make_user: MakeUser
) -> None:
    # Three agencies' March invoices: A is paid in parts after a credit note, B by one
    # transfer, C is voided.
    other, third = make_user("agency", ["buyer"]), make_user("agency", ["buyer"])
    machines = [
        (ledger.start_machine(t(2, 9), "a"), ledger.market.buyer),
        (start_for(ledger, other, t(2, 10), "b"), other),
        (start_for(ledger, third, t(2, 11), "c"), third),
    ]
    for machine, buyer in machines:
        ledger.act(machine, "terminate", t(12, 9), by=buyer)
    ledger.bill("2030-03", when=t(1, 1, month=4))
    drafts = [
        ledger.invoice_of("2030-03", agency) for agency in (ledger.market.buyer, other, third)
    ]
    problem(pay(ledger, drafts[2]["id"], transfer("1.00")), 409, "not_issued")
    a, b, c = (ledger.finalize(draft["id"], t(1, 2, month=4)).json for draft in drafts)
    voided = ledger.client.post(
        f"/v1/invoices/{c['id']}/void",
        json={"reason": "Wrong agency"},
        headers=ledger.finance.headers,
    )
    assert voided.status_code == 200, voided.get_data(as_text=True)
    problem(pay(ledger, c["id"], transfer("1.00")), 409, "invoice_void")
    ledger.at(t(15, 12, month=4))

    # B: one transfer of the whole total pays it, as of the day the money arrived.
    paid = pay(ledger, b["id"], transfer(b["total"], "2030-04-14", "RF18 5390 0754 7034"))
    assert paid.status_code == 201, paid.get_data(as_text=True)
    receipt = paid.json
    assert receipt["invoice_id"] == b["id"] and receipt["agency_id"] == other.organization_id
    assert (receipt["amount"], receipt["currency"], receipt["amount_due"]) == (
        b["total"],
        "EUR",
        "0.00",
    )
    assert (receipt["received_on"], receipt["reference"]) == ("2030-04-14", "RF18 5390 0754 7034")
    assert receipt["recorded_by"] == ledger.finance.client_id
    assert receipt["created_at"] == "2030-04-15T12:00:00Z"
    settled = read(ledger, b["id"])
    assert (settled["state"], settled["payment_state"]) == ("paid", "paid")
    assert settled["paid_at"] == "2030-04-14T00:00:00Z"
    problem(pay(ledger, b["id"], transfer("0.01")), 409, "invoice_paid")
    problem(
        ledger.client.post(
            f"/v1/invoices/{b['id']}/void", json={"reason": "x"}, headers=ledger.finance.headers
        ),
        409,
        "invoice_paid",
    )

    # A: refusals first — by role, by id, without a key, and each bad field by its name.
    url = f"/v1/invoices/{a['id']}/payments"
    problem(
        ledger.client.post(
            url,
            json=transfer("1.00"),
            headers={**ledger.market.buyer.headers, "Idempotency-Key": "k"},
        ),
        403,
    )
    problem(pay(ledger, str(uuid.uuid4()), transfer("1.00")), 404)
    problem(ledger.client.post(url, json=transfer("1.00"), headers=ledger.finance.headers), 400)
    bad_bodies: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"amount", "received_on", "reference"}),
        (transfer("0"), {"amount"}),
        (transfer("0.001"), {"amount"}),
        (transfer("-1.00"), {"amount"}),
        (transfer("1.00", "2030-04-17"), {"received_on"}),  # the day after tomorrow
        (transfer("1.00", "2030-03-30"), {"received_on"}),  # before it was issued
        (transfer("1.00", "15/04/2030"), {"received_on"}),
        (transfer("1.00", reference=""), {"reference"}),
        (transfer("1.00", reference="x" * 141), {"reference"}),
        (transfer("1.00", reference="line\nbreak"), {"reference"}),
        ({**transfer("1.00"), "currency": "EUR"}, {"currency"}),
    ]
    for body, fields in bad_bodies:
        errors = problem(pay(ledger, a["id"], body), 422)["errors"]
        assert set(errors) == fields, (body, errors)

    # A credit note of 1.00 net (1.20 with VAT) lowers what is owed; a cent more is refused,
    # saying how much is owed, and changes nothing.
    note = ledger.client.post(
        f"/v1/invoices/{a['id']}/credit-notes",
        json={"reason": "Outage", "lines": [{"position": 1, "amount": "1.00"}]},
        headers={**ledger.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert note.status_code == 201 and note.json["total"] == "1.20", note.get_data(as_text=True)
    owed = money(a["total"]) - money("1.20")
    over = problem(pay(ledger, a["id"], transfer(str(owed + money("0.01")))), 422)
    assert list(over["errors"]) == ["amount"]
    assert f"Only {owed} EUR is owed" in over["errors"]["amount"][0]
    assert payments(ledger, a["id"]).json["items"] == []

    # Two partial transfers add up; a retry with the same key records nothing more.
    first_part = money("5.00")
    key = str(uuid.uuid4())
    first = pay(ledger, a["id"], transfer(str(first_part), "2030-04-16"), key)
    assert first.status_code == 201, first.get_data(as_text=True)
    assert money(first.json["amount_due"]) == owed - first_part
    again = pay(ledger, a["id"], transfer(str(first_part), "2030-04-16"), key)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    assert read(ledger, a["id"])["state"] == "finalized"
    assert money(read(ledger, a["id"])["amount_due"]) == owed - first_part
    # Partly paid, it is corrected by credit notes, never voided.
    problem(
        ledger.client.post(
            f"/v1/invoices/{a['id']}/void", json={"reason": "x"}, headers=ledger.finance.headers
        ),
        409,
        "invoice_partly_paid",
    )
    # Four clerks record the rest the next day at once: one is recorded, the others find it
    # paid.
    ledger.at(t(16, 9, month=4))
    rest = str(owed - first_part)
    racing = run_concurrently(4, lambda _: pay(ledger, a["id"], transfer(rest, "2030-04-16")))
    assert sorted(response.status_code for response in racing) == [201, 409, 409, 409]
    for response in racing:
        if response.status_code == 409:
            problem(response, 409, "invoice_paid")
    settled = read(ledger, a["id"])
    assert (settled["state"], settled["payment_state"]) == ("paid", "paid")
    assert settled["paid_at"] == "2030-04-16T00:00:00Z"

    # The agency reads its own invoice's payments, and where it stands; not another's.
    for user in (ledger.finance, admin, ledger.market.buyer):
        listing = payments(ledger, a["id"], user)
        assert listing.status_code == 200, listing.get_data(as_text=True)
        body = listing.json
        assert [item["amount"] for item in body["items"]] == [str(first_part), rest]
        assert body["next_cursor"] is None
        assert (body["currency"], body["total"], body["credited"]) == ("EUR", a["total"], "1.20")
        assert (money(body["amount_paid"]), body["amount_due"]) == (owed, "0.00")
    problem(payments(ledger, a["id"], other), 404, "not_found")
    first_page = ledger.client.get(f"{url}?limit=1", headers=ledger.finance.headers).json
    cursor = first_page["next_cursor"]
    second_page = ledger.client.get(
        f"{url}?limit=1&cursor={cursor}", headers=ledger.finance.headers
    )
    assert [item["amount"] for item in second_page.json["items"]] == [rest]

    # Each payment is in the audit log, and the settling one paid the invoice.
    events = ledger.client.get(
        f"/v1/audit-events?object_type=invoice&object_id={a['id']}&limit=200",
        headers=admin.headers,
    ).json["items"]
    recorded = [e for e in events if e["action"] == "invoice.payment_recorded"]
    assert [(e["after"]["amount"], e["after"]["amount_due"]) for e in recorded] == [
        (str(first_part), str(owed - first_part)),
        (rest, "0.00"),
    ]
    assert recorded[0]["actor_client_id"] == ledger.finance.client_id
    (paid_event,) = [e for e in events if e["action"] == "invoice.paid"]
    assert paid_event["after"] == {"state": "paid", "payment_id": racing_id(racing)}


def test_a_credit_note_that_covers_what_a_partly_paid_invoice_owes_settles_it(
    ledger: Ledger,
) -> None:
    machine = ledger.start_machine(t(2, 9))
    ledger.act(machine, "terminate", t(12, 9))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.finalize(ledger.invoice_of("2030-03")["id"]).json
    assert pay(ledger, invoice["id"], transfer("1.20", "2030-04-01")).status_code == 201
    rest = money(invoice["subtotal"]) - money("1.00")  # net: 1.20 paid is 1.00 + 20 % VAT
    note = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/credit-notes",
        json={"reason": "Outage", "lines": [{"position": 1, "amount": str(rest)}]},
        headers={**ledger.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert note.status_code == 201, note.get_data(as_text=True)
    settled = read(ledger, invoice["id"])
    assert (settled["state"], settled["amount_due"]) == ("paid", "0.00")


def racing_id(responses: list[Any]) -> str:
    (recorded,) = [response for response in responses if response.status_code == 201]
    return str(recorded.json["id"])
