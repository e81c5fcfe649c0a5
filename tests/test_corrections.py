"""Corrections and settlements: credit notes never credit more than remains and have their own
gapless series; void only while unpaid and uncredited, and a void invoice is replaced by the
period's next run; settlements per provider plus the consortium's fee add up to the issued
invoices' net to the cent, credit notes come off the right provider, providers see their own.

Done when (4) and (5), credit-note side (the paid side of (5) is in test_payments.py).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import Flask

from tests.billing_fixtures import Ledger, _operator_org, money
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem, run_concurrently
from tests.test_invoices import start_for
from tests.test_provisioning import make_market, place_order


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


def credit(ledger: Ledger, invoice_id: str, body: dict[str, Any]) -> Any:
    return ledger.client.post(
        f"/v1/invoices/{invoice_id}/credit-notes",
        json=body,
        headers={**ledger.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
    )


def settlements(ledger: Ledger, user: ApiUser, period: str = "2030-03") -> dict[str, Any]:
    response = ledger.client.get(f"/v1/settlements?period={period}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json)


def check_settlement(report: dict[str, Any], invoices: list[dict[str, Any]], credits: Decimal):
    """Nets plus fees are the invoices' net minus credits; each provider's gross is the sum
    of its lines; the fee is the rate of the whole, rounded once."""
    invoiced = sum((money(invoice["subtotal"]) for invoice in invoices), Decimal(0))
    items = report["items"]
    assert sum(money(i["net"]) + money(i["fee"]) for i in items) == invoiced - credits
    assert sum(money(i["credits"]) for i in items) == credits
    for item in items:
        lines = [
            money(line["amount"])
            for invoice in invoices
            for line in invoice["lines"]
            if line["provider_id"] == item["provider_id"]
        ]
        assert money(item["gross"]) == sum(lines, Decimal(0))
        assert money(item["net"]) == money(item["gross"]) - money(item["credits"]) - money(
            item["fee"]
        )
    fee = sum(money(i["fee"]) for i in items)
    rate = money(report["fee_rate"])
    assert fee == ((invoiced - credits) * rate / 100).quantize(Decimal("0.01"), "ROUND_HALF_UP")
    (total,) = report["totals"]
    assert money(total["net"]) + money(total["fee"]) == invoiced - credits


def test_settlements_add_up_to_the_invoiced_net_and_credits_come_off_the_right_provider(
    ledger: Ledger, app: Flask, admin: ApiUser, make_user: MakeUser
) -> None:
    app.config["CONSORTIUM_FEE_RATE"] = "7.5"
    first = ledger.market
    second = make_market(app, ledger.client, admin, make_user, buyer=first.buyer)
    other_agency = make_user("agency", ["buyer"])
    machines = [
        ledger.start_machine(t(2, 9, 13), "a-1"),
        start_for(ledger, first.buyer, t(3, 10, 1), "b-1"),  # on the first provider too
        start_for(ledger, other_agency, t(4, 11, 7), "a-2"),
    ]
    ledger.at(t(5, 8, 3))
    machines.append(start_for_market(ledger, second, "b-2"))
    for index, machine in enumerate(machines):
        by = other_agency if index == 2 else None
        ledger.act(machine, "terminate", t(20 + index, 7, 41), by=by)
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoices = [ledger.invoice_of("2030-03"), ledger.invoice_of("2030-03", other_agency)]
    drafts_only = settlements(ledger, ledger.finance)
    assert drafts_only["items"] == [] and drafts_only["totals"] == []  # drafts never count
    invoices = [ledger.finalize(invoice["id"]).json for invoice in invoices]
    assert {line["provider_id"] for line in invoices[0]["lines"]} == {
        first.provider_id,
        second.provider_id,
    }

    report = settlements(ledger, ledger.finance)
    assert report["fee_rate"] == "7.5"
    assert {item["provider_id"] for item in report["items"]} == {
        first.provider_id,
        second.provider_id,
    }
    check_settlement(report, invoices, Decimal(0))

    # A credit note on the second provider's line: only its settlement goes down.
    (line,) = [x for x in invoices[0]["lines"] if x["provider_id"] == second.provider_id]
    note = credit(
        ledger,
        invoices[0]["id"],
        {"reason": "Outage on b-2", "lines": [{"position": line["position"], "amount": "0.37"}]},
    )
    assert note.status_code == 201, note.get_data(as_text=True)
    after = settlements(ledger, ledger.finance)
    check_settlement(after, invoices, Decimal("0.37"))
    by_provider = {item["provider_id"]: item for item in after["items"]}
    before = {item["provider_id"]: item for item in report["items"]}
    assert money(by_provider[second.provider_id]["credits"]) == Decimal("0.37")
    assert by_provider[first.provider_id]["gross"] == before[first.provider_id]["gross"]
    assert by_provider[first.provider_id]["credits"] == "0.00"

    # A provider's operators see their own settlement and nothing of the others'.
    for market in (first, second):
        operator = make_user(
            "provider", ["provider"], organization_id=_operator_org(ledger.client, admin, market)
        )
        own = settlements(ledger, operator)
        assert [item["provider_id"] for item in own["items"]] == [market.provider_id]
        assert own["items"][0] == by_provider[market.provider_id]
    problem(ledger.client.get("/v1/settlements?period=2030-03", headers=first.buyer.headers), 403)
    for query in ("", "?period=2030-13", "?period=2030-03&extra=1"):
        problem(ledger.client.get(f"/v1/settlements{query}", headers=admin.headers), 422)
    assert settlements(ledger, admin, "2030-02")["items"] == []


def start_for_market(ledger: Ledger, market: Any, name: str) -> str:
    """A machine on `market` (another provider), for the ledger's buyer."""
    order_id = place_order(ledger.client, market, name=name)
    ledger.run_jobs()
    listing = ledger.client.get(f"/v1/resources?order_id={order_id}", headers=market.buyer.headers)
    return str(listing.json["items"][0]["id"])


def test_credit_notes_never_exceed_what_remains_and_void_needs_an_unpaid_uncredited_invoice(
    ledger: Ledger, make_user: MakeUser
) -> None:
    machines = [ledger.start_machine(t(2, 9), "one"), ledger.start_machine(t(2, 10), "two")]
    for machine in machines:
        ledger.act(machine, "terminate", t(12, 9))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    draft = ledger.invoice_of("2030-03")
    problem(credit(ledger, draft["id"], {"reason": "early"}), 409, "not_issued")
    invoice = ledger.finalize(draft["id"]).json
    position = {line["amount"]: line["position"] for line in invoice["lines"]}
    assert set(position) == {"12.00", "11.95"}  # 240 h and 239 h at 0.05
    big, small = position["12.00"], position["11.95"]

    def count_notes() -> int:
        listing = ledger.client.get(
            f"/v1/credit-notes?invoice_id={invoice['id']}", headers=ledger.finance.headers
        )
        return len(listing.json["items"])

    bad_bodies: list[tuple[dict[str, Any], str]] = [
        ({}, "reason"),
        ({"reason": ""}, "reason"),
        ({"reason": "x", "lines": []}, "lines"),
        ({"reason": "x", "lines": [{"position": 9, "amount": "1.00"}]}, "lines.0.position"),
        ({"reason": "x", "lines": [{"position": big, "amount": "0.001"}]}, "lines.0.amount"),
        ({"reason": "x", "lines": [{"position": big, "amount": "-1.00"}]}, "lines.0.amount"),
        ({"reason": "x", "lines": [{"position": big, "amount": "12"}] * 2}, "lines.1.position"),
        ({"reason": "x", "lines": [{"position": big}]}, "lines.0.amount"),
    ]
    for body, field in bad_bodies:
        errors = problem(credit(ledger, invoice["id"], body), 422)["errors"]
        assert field in errors, (body, errors)
    too_much = problem(
        credit(
            ledger, invoice["id"], {"reason": "x", "lines": [{"position": big, "amount": "12.01"}]}
        ),
        409,
        "exceeds_creditable",
    )
    assert too_much["remaining"] == {str(big): "12.00"}
    assert count_notes() == 0

    # 5.01 of the 12.00 line, then the rest of everything: 6.99 + 11.95. The tax credited in all is
    # exactly the invoice's, and the series has no gap after the refusals.
    partial = credit(
        ledger, invoice["id"], {"reason": "SLA", "lines": [{"position": big, "amount": "5.01"}]}
    ).json
    assert (partial["number"], partial["subtotal"], partial["tax"]) == (
        "CN-2030-000001",
        "5.01",
        "1.00",
    )
    remaining = ledger.client.get(
        f"/v1/invoices/{invoice['id']}/creditable", headers=ledger.finance.headers
    ).json
    assert remaining == {"lines": {str(big): "6.99", str(small): "11.95"}}
    over = credit(
        ledger, invoice["id"], {"reason": "x", "lines": [{"position": big, "amount": "7.00"}]}
    )
    problem(over, 409, "exceeds_creditable")
    # Eight finance clerks credit "all that remains" at once: one credit note is issued.
    racing = run_concurrently(
        8, lambda _: credit(ledger, invoice["id"], {"reason": "Contract ended"})
    )
    assert sorted(response.status_code for response in racing) == [201] + [409] * 7
    for response in racing:
        if response.status_code == 409:
            problem(response, 409, "nothing_to_credit")
    (rest,) = [response.json for response in racing if response.status_code == 201]
    assert rest["number"] == "CN-2030-000002"
    credited = {line["invoice_line_id"]: line["amount"] for line in rest["lines"]}
    assert sorted(credited.values()) == ["11.95", "6.99"]
    assert money(partial["subtotal"]) + money(rest["subtotal"]) == money(invoice["subtotal"])
    assert money(partial["tax"]) + money(rest["tax"]) == money(invoice["tax"])
    assert money(partial["total"]) + money(rest["total"]) == money(invoice["total"])
    problem(credit(ledger, invoice["id"], {"reason": "again"}), 409, "nothing_to_credit")
    assert count_notes() == 2

    # The credit note as a document: frozen, exported like an invoice, its agency's only.
    url = f"/v1/credit-notes/{rest['id']}"
    as_json = ledger.client.get(f"{url}/export?format=json", headers=ledger.finance.headers)
    assert hashlib.sha256(as_json.get_data()).hexdigest() == rest["snapshot_sha256"]
    snapshot = as_json.json
    assert snapshot["document_type"] == "credit_note"
    assert snapshot["corrects"] == {
        "id": invoice["id"],
        "number": invoice["number"],
        "issued_at": invoice["finalized_at"],
    }
    assert sorted(line["credits_position"] for line in snapshot["lines"]) == [1, 2]
    assert {line["credits_position"]: line["amount"] for line in snapshot["lines"]} == {
        big: "6.99",
        small: "11.95",
    }
    for fmt in ("csv", "pdf", "cii"):
        response = ledger.client.get(
            f"{url}/export?format={fmt}", headers=ledger.market.buyer.headers
        )
        assert response.status_code == 200, (fmt, response.get_data(as_text=True))
        again = ledger.client.get(f"{url}/export?format={fmt}", headers=ledger.finance.headers)
        assert again.get_data() == response.get_data()
    stranger = make_user("agency", ["buyer"])
    problem(ledger.client.get(url, headers=stranger.headers), 404)
    assert ledger.client.get("/v1/credit-notes", headers=stranger.headers).json["items"] == []
    assert ledger.client.get(url, headers=ledger.market.buyer.headers).status_code == 200

    # A credited invoice is not voided; an uncredited, unpaid one is, keeping its number,
    # and the period's next run drafts its replacement with the same usage.
    void = ledger.client.post(
        f"/v1/invoices/{invoice['id']}/void", json={"reason": "x"}, headers=ledger.finance.headers
    )
    problem(void, 409, "invoice_credited")
    other = make_user("agency", ["buyer"])
    machine = start_for(ledger, other, t(1, 2, month=4), "other")
    ledger.act(machine, "terminate", t(1, 5, 30, month=4), by=other)
    ledger.bill("2030-04", when=t(1, 1, month=5))
    april = ledger.finalize(ledger.invoice_of("2030-04", other)["id"]).json
    # No Stripe key here: nothing is sent for payment, and the invoice says so.
    assert april["payment_state"] == "not_configured"
    assert "not configured" in april["payment_error"]
    for body in ({}, {"reason": ""}, {"reason": "x", "more": 1}):
        problem(
            ledger.client.post(
                f"/v1/invoices/{april['id']}/void", json=body, headers=ledger.finance.headers
            ),
            422,
        )
    problem(
        ledger.client.post(
            f"/v1/invoices/{april['id']}/void", json={"reason": "x"}, headers=other.headers
        ),
        403,
    )
    voided = ledger.client.post(
        f"/v1/invoices/{april['id']}/void",
        json={"reason": "Wrong billing profile"},
        headers=ledger.finance.headers,
    )
    assert voided.status_code == 200, voided.get_data(as_text=True)
    assert (voided.json["state"], voided.json["number"]) == ("void", april["number"])
    assert voided.json["snapshot_sha256"] == april["snapshot_sha256"]
    problem(
        ledger.client.post(
            f"/v1/invoices/{april['id']}/void", json={"reason": "x"}, headers=ledger.finance.headers
        ),
        409,
        "invoice_void",
    )
    problem(credit(ledger, april["id"], {"reason": "x"}), 409, "invoice_void")
    ledger.bill("2030-04")
    replacement = [i for i in ledger.invoices("2030-04", other) if i["state"] == "draft"]
    (replacement,) = replacement
    assert [(x["metric"], x["quantity"], x["amount"]) for x in replacement["lines"]] == [
        (x["metric"], x["quantity"], x["amount"]) for x in april["lines"]
    ]
    reissued = ledger.finalize(replacement["id"]).json
    assert reissued["number"] != april["number"] and reissued["total"] == april["total"]
