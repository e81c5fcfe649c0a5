"""Billing runs, draft invoices and finalization: money to the cent, numbers without gaps,
invoices that never change once issued.

Done when (3): totals equal the sum of rounded lines plus tax per category, to the cent, with
many lines of fractional amounts and more than one tax rate. (4): twenty concurrent
finalizations get distinct consecutive numbers; a rolled-back finalization consumes no number;
a finalized invoice is unchanged (same snapshot hash) after late usage arrives, and that usage
shows up on the next invoice.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import facturx
import pytest
from lxml import etree
from pypdf import PdfReader

from broker.services import invoices as invoice_service
from tests.billing_fixtures import Ledger, money
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem, run_concurrently
from tests.test_provisioning import place_order

CENT = Decimal("0.01")
PRICES = {
    "instance_hour": Decimal("0.05"),
    "vcpu_hour": Decimal("0.01"),
    "ram_gib_hour": Decimal("0.002"),
}


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def set_profile(ledger: Ledger, agency: ApiUser, country: str, vat_rate: str) -> None:
    path = f"/v1/organizations/{agency.organization_id}/billing-profile"
    etag = ledger.client.get(path, headers=ledger.finance.headers).headers["ETag"]
    response = ledger.client.put(
        path,
        json={"legal_name": f"Agency of {country}", "country": country, "vat_rate": vat_rate},
        headers={**ledger.finance.headers, "If-Match": etag},
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def start_for(ledger: Ledger, buyer: ApiUser, when: datetime, name: str) -> str:
    """A machine ordered by another agency's buyer on the same market."""
    ledger.at(when)
    order_id = place_order(
        ledger.client, dataclasses.replace(ledger.market, buyer=buyer), name=name
    )
    ledger.run_jobs()
    listing = ledger.client.get(f"/v1/resources?order_id={order_id}", headers=buyer.headers)
    return str(listing.json["items"][0]["id"])


def check_adds_up(invoice: dict[str, Any]) -> None:
    """Every figure of an invoice follows from its lines, to the cent."""
    lines = [money(line["amount"]) for line in invoice["lines"]]
    assert money(invoice["subtotal"]) == sum(lines, Decimal(0))
    bases: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for line in invoice["lines"]:
        bases[(line["tax_category"], line["tax_rate"])] += money(line["amount"])
    expected_taxes = [
        {
            "category": category,
            "rate": rate,
            "base": str(base),
            "amount": str(cents(base * Decimal(rate) / 100)),
        }
        for (category, rate), base in sorted(bases.items())
    ]
    assert invoice["taxes"] == expected_taxes
    tax = sum((money(tax["amount"]) for tax in invoice["taxes"]), Decimal(0))
    assert money(invoice["tax"]) == tax
    assert money(invoice["total"]) == money(invoice["subtotal"]) + tax


def test_totals_are_the_rounded_lines_plus_tax_per_category_to_the_cent(
    ledger: Ledger, make_user: MakeUser
) -> None:
    agencies = [ledger.market.buyer, make_user("agency", ["buyer"])]
    set_profile(ledger, agencies[0], "FR", "20")
    set_profile(ledger, agencies[1], "CA", "14.975")
    machines: dict[str, list[str]] = {}
    for number, agency in enumerate(agencies):
        machines[agency.organization_id] = [
            start_for(ledger, agency, t(2, 9 + number, 7 * index), f"vm-{number}-{index}")
            for index in range(4)
        ]
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)  # (resource, metric) → qty
    records = []
    for resources in machines.values():
        for index, resource_id in enumerate(resources):
            for hour in range(24):
                for metric, base in (("vcpu_hour", "1.333333"), ("ram_gib_hour", "2.718281")):
                    quantity = Decimal(base) + Decimal(index * 24 + hour) / Decimal(1_000_000)
                    records.append(
                        {
                            "record_id": f"{resource_id}-{metric}-{hour}",
                            "resource_id": resource_id,
                            "metric": metric,
                            "quantity": str(quantity),
                            "start": f"2030-03-03T{hour:02d}:00:00Z",
                            "end": f"2030-03-03T{hour:02d}:59:59Z",
                        }
                    )
                    expected[(resource_id, metric)] += quantity
    ledger.at(t(4))
    for offset in range(0, len(records), 100):
        assert ledger.push(records[offset : offset + 100]).status_code == 200
    for number, agency in enumerate(agencies):
        for index, resource_id in enumerate(machines[agency.organization_id]):
            ledger.act(resource_id, "terminate", t(10, 17 + number, 11 * index), by=agency)

    run = ledger.bill("2030-03", when=t(1, 2, month=4))
    assert run["drafts"] >= 2
    rates = {
        agencies[0].organization_id: Decimal(20),
        agencies[1].organization_id: Decimal("14.975"),
    }
    for agency in agencies:
        invoice = ledger.invoice_of("2030-03", agency)
        check_adds_up(invoice)
        assert len(invoice["lines"]) == 4 * 3  # instance, vCPU and RAM hours per machine
        subtotal = Decimal(0)
        for line in invoice["lines"]:
            if line["metric"] == "instance_hour":
                continue  # metered by the broker: checked by the metering suite
            quantity = expected[(line["resource_id"], line["metric"])]
            assert money(line["quantity"]) == quantity
            assert money(line["amount"]) == cents(quantity * PRICES[line["metric"]])
        for line in invoice["lines"]:
            subtotal += money(line["amount"])
        tax = cents(subtotal * rates[agency.organization_id] / 100)
        assert (money(invoice["subtotal"]), money(invoice["tax"]), money(invoice["total"])) == (
            subtotal,
            tax,
            subtotal + tax,
        )
        assert [tax["rate"] for tax in invoice["taxes"]] == [str(rates[agency.organization_id])]


def finalized_drafts(ledger: Ledger, count: int, make_user: MakeUser) -> list[str]:
    """`count` agencies without usage: a zero draft each for March, built in April."""
    agencies = [make_user("agency", ["buyer"]) for _ in range(count)]
    ledger.bill("2030-03", when=t(1, 1, month=4))
    drafts = [ledger.invoice_of("2030-03", agency) for agency in agencies]
    assert all(draft["state"] == "draft" and draft["total"] == "0.00" for draft in drafts)
    return [str(draft["id"]) for draft in drafts]


def test_twenty_concurrent_finalizations_get_consecutive_numbers(
    ledger: Ledger, make_user: MakeUser
) -> None:
    drafts = finalized_drafts(ledger, 20, make_user)
    ledger.at(t(2, 9, month=4))
    responses = run_concurrently(20, lambda index: ledger.finalize(drafts[index]))
    assert [response.status_code for response in responses] == [200] * 20
    numbers = sorted(response.json["number"] for response in responses)
    assert numbers == [f"2030-{number:06d}" for number in range(1, 21)]
    for response in responses:
        body = response.json
        assert body["state"] == "finalized"
        assert body["snapshot"]["number"] == body["number"]
        canonical = json.dumps(
            body["snapshot"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert hashlib.sha256(canonical.encode()).hexdigest() == body["snapshot_sha256"]


def test_a_rolled_back_finalization_consumes_no_number(
    ledger: Ledger, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = finalized_drafts(ledger, 2, make_user)
    ledger.at(t(2, month=4))

    def broken(_document: Any) -> str:
        raise RuntimeError("the disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(invoice_service.invoicing, "fingerprint", broken)
        with pytest.raises(RuntimeError):
            ledger.finalize(first)
    after = ledger.client.get(f"/v1/invoices/{first}", headers=ledger.finance.headers).json
    assert (after["state"], after["number"]) == ("draft", None)

    assert ledger.finalize(second).json["number"] == "2030-000001"
    assert ledger.finalize(first).json["number"] == "2030-000002"


def test_a_finalized_invoice_never_changes_and_late_usage_lands_on_the_next_one(
    ledger: Ledger,
) -> None:
    machine = ledger.start_machine(t(30, 12))
    ledger.act(machine, "terminate", t(31, 12))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    march = ledger.invoice_of("2030-03")
    finalized = ledger.finalize(march["id"]).json
    assert finalized["total"] == "1.44"  # 24 h × 0.05 = 1.20 + 20 % VAT
    problem(ledger.finalize(march["id"]), 409, "invoice_issued")

    ledger.at(t(3, month=4))
    late = {
        "record_id": "late-1",
        "resource_id": machine,
        "metric": "vcpu_hour",
        "quantity": "48",
        "start": "2030-03-30T12:00:00Z",
        "end": "2030-03-31T12:00:00Z",
    }
    assert ledger.push([late]).json["created"] == 1
    ledger.bill("2030-03")  # running March again leaves the issued invoice alone
    assert ledger.invoices("2030-03", ledger.market.buyer) == [finalized]

    ledger.bill("2030-04", when=t(1, 1, month=5))
    april = ledger.invoice_of("2030-04")
    assert [
        (line["kind"], line["period"], line["metric"], line["quantity"], line["amount"])
        for line in april["lines"]
    ] == [("adjustment", "2030-03", "vcpu_hour", "48", "0.48")]
    check_adds_up(april)
    assert ledger.invoices("2030-03", ledger.market.buyer) == [finalized]


def test_drafts_are_rebuilt_never_duplicated_and_finalized_only_after_the_period(
    ledger: Ledger, make_user: MakeUser
) -> None:
    machine = ledger.start_machine(t(10, 8))
    first_run = ledger.bill("2030-03", when=t(10, 10, 6))  # a preview within the period
    draft = ledger.invoice_of("2030-03")
    assert [line["quantity"] for line in draft["lines"]] == ["2"]
    problem(ledger.finalize(draft["id"]), 409, "period_not_ended")

    ledger.act(machine, "terminate", t(10, 20))
    ledger.at(t(1, month=4))
    problem(ledger.finalize(draft["id"]), 409, "draft_outdated")
    second_run = ledger.bill("2030-03", when=t(1, 1, month=4))
    assert first_run["id"] != second_run["id"]
    (rebuilt,) = ledger.invoices("2030-03", ledger.market.buyer)
    assert rebuilt["id"] == draft["id"]
    assert [line["quantity"] for line in rebuilt["lines"]] == ["12"]
    assert rebuilt["total"] == "0.72"  # 12 h × 0.05 = 0.60 + 20 % VAT
    assert ledger.finalize(draft["id"]).status_code == 200

    stranger = make_user("agency", ["buyer"])
    for user, status in ((stranger, 404), (ledger.market.buyer, 200)):
        assert (
            ledger.client.get(f"/v1/invoices/{draft['id']}", headers=user.headers).status_code
            == status
        )


def test_an_agency_without_usage_gets_a_zero_invoice_in_its_currency(
    ledger: Ledger, make_user: MakeUser
) -> None:
    quebec = make_user("agency", ["approver"])
    response = ledger.client.put(
        f"/v1/organizations/{quebec.organization_id}/policy",
        json={"currency": "CAD", "monthly_budget": "100", "approval_threshold": "10"},
        headers={**quebec.headers, "If-Match": '"v0"'},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03", quebec)
    assert (invoice["currency"], invoice["lines"], invoice["total"]) == ("CAD", [], "0.00")
    # the agency reads its own invoices only
    own = ledger.client.get("/v1/invoices", headers=quebec.headers).json["items"]
    assert [item["id"] for item in own] == [invoice["id"]]


def test_billing_runs_are_for_finance_and_for_periods_that_have_started(
    ledger: Ledger,
) -> None:
    def start(user: ApiUser, body: Any) -> Any:
        return ledger.client.post(
            "/v1/billing-runs",
            json=body,
            headers={**user.headers, "Idempotency-Key": str(uuid.uuid4())},
        )

    problem(start(ledger.market.buyer, {"period": "2030-03"}), 403)
    problem(start(ledger.operator, {"period": "2030-03"}), 403)
    for bad in ("2030-13", "2030-3", "march", "1999-12", "2030-04"):
        assert "period" in problem(start(ledger.finance, {"period": bad}), 422)["errors"]
    problem(start(ledger.finance, {}), 422)
    response = ledger.client.post(
        "/v1/billing-runs", json={"period": "2030-03"}, headers=ledger.finance.headers
    )
    problem(response, 400, "idempotency_key_required")
    assert ledger.client.get("/v1/billing-runs", headers=ledger.finance.headers).json["items"] == []


def test_a_billing_profile_is_replaced_with_if_match_and_used_by_the_next_draft(
    ledger: Ledger,
) -> None:
    agency = ledger.market.buyer
    path = f"/v1/organizations/{agency.organization_id}/billing-profile"
    default = ledger.client.get(path, headers=agency.headers)
    assert default.headers["ETag"] == '"v0"'
    assert (default.json["country"], default.json["vat_rate"]) == ("FR", "20.00")
    body = {"legal_name": "Agence X", "country": "DE", "vat_rate": "19", "vat_id": "DE123456789"}
    problem(ledger.client.put(path, json=body, headers=ledger.finance.headers), 428)
    stale = {**ledger.finance.headers, "If-Match": '"v7"'}
    problem(ledger.client.put(path, json=body, headers=stale), 412)
    for bad in ({"vat_rate": "101"}, {"country": "Germany"}, {"vat_id": "de 123"}):
        response = ledger.client.put(
            path, json={**body, **bad}, headers={**ledger.finance.headers, "If-Match": '"v0"'}
        )
        assert set(problem(response, 422)["errors"]) == set(bad)
    saved = ledger.client.put(
        path, json=body, headers={**ledger.finance.headers, "If-Match": '"v0"'}
    )
    assert saved.status_code == 200 and saved.headers["ETag"] == '"v1"'
    assert ledger.client.get(path, headers=agency.headers).json == saved.json

    machine = ledger.start_machine(t(10, 8))
    ledger.act(machine, "terminate", t(10, 18))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    assert invoice["taxes"] == [{"category": "S", "rate": "19", "base": "0.50", "amount": "0.10"}]
    issued = ledger.finalize(invoice["id"]).json
    assert issued["snapshot"]["buyer"]["vat_id"] == "DE123456789"
    assert issued["snapshot"]["buyer"]["country"] == "DE"


def test_usage_can_be_listed_by_time(ledger: Ledger) -> None:
    machine = ledger.start_machine(t(10, 8))
    ledger.act(machine, "terminate", t(10, 12, 30))
    ledger.meter(t(11))
    path = f"/v1/usage?resource_id={machine}&metric=instance_hour"
    window = "&from=2030-03-10T09:30:00Z&to=2030-03-10T11:00:00Z"
    items = ledger.client.get(path + window, headers=ledger.market.buyer.headers).json["items"]
    # usage overlapping the window, newest first
    assert [item["start"] for item in items] == ["2030-03-10T10:00:00Z", "2030-03-10T09:00:00Z"]


def test_exports_are_byte_identical_and_made_from_the_snapshot_only(
    ledger: Ledger, make_user: MakeUser
) -> None:
    machine = ledger.start_machine(t(30, 11, 20))
    ledger.act(machine, "terminate", t(31, 12))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    url = f"/v1/invoices/{invoice['id']}/export"
    problem(ledger.client.get(f"{url}?format=csv", headers=ledger.finance.headers), 409)
    issued = ledger.finalize(invoice["id"]).json

    def download(fmt: str, user: ApiUser | None = None) -> Any:
        response = ledger.client.get(
            f"{url}?format={fmt}", headers=(user or ledger.finance).headers
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    as_json, as_csv, as_pdf, as_cii = (download(fmt) for fmt in ("json", "csv", "pdf", "cii"))
    assert hashlib.sha256(as_json.get_data()).hexdigest() == issued["snapshot_sha256"]
    assert as_csv.headers["Content-Disposition"] == (
        f'attachment; filename="invoice-{issued["number"]}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(as_csv.get_data(as_text=True))))
    assert [row["kind"] for row in rows] == ["usage", "tax"]
    assert (
        sum(money(row["amount"]) for row in rows) == money(issued["total"]) == money("1.48")
    )  # 24 h 40 min: 1.23 + 0.25 VAT

    # The PDF opens and shows the number, both parties, the line, the tax and the total.
    assert as_pdf.mimetype == "application/pdf"
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(as_pdf.get_data())).pages)
    snapshot = as_json.json
    for shown in (
        issued["number"],
        snapshot["seller"]["name"],
        snapshot["buyer"]["legal_name"],
        "1.23",
        "0.25",
        "1.48",
    ):
        assert shown in text, shown
    # The CII passes the EN 16931 XSD with its VAT per category and the invoice's totals.
    xml = as_cii.get_data()
    assert facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931")
    tree = etree.fromstring(xml)
    ram = {"ram": tree.nsmap["ram"]}
    (breakdown,) = tree.findall(
        ".//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax", ram
    )
    assert (
        breakdown.findtext("ram:CategoryCode", namespaces=ram),
        breakdown.findtext("ram:BasisAmount", namespaces=ram),
        breakdown.findtext("ram:CalculatedAmount", namespaces=ram),
    ) == ("S", "1.23", "0.25")
    assert tree.findtext(".//ram:GrandTotalAmount", namespaces=ram) == "1.48"

    ledger.at(t(2, month=4))  # late usage for March, and a rebuild of March
    late = {
        "record_id": "late",
        "resource_id": machine,
        "metric": "vcpu_hour",
        "quantity": "2",  # 2 vCPU for an hour: at most 2
        "start": "2030-03-31T10:00:00Z",
        "end": "2030-03-31T11:00:00Z",
    }
    assert ledger.push([late]).json["created"] == 1
    ledger.bill("2030-03")
    for fmt, before in (("json", as_json), ("csv", as_csv), ("pdf", as_pdf), ("cii", as_cii)):
        assert download(fmt).get_data() == before.get_data()
        assert download(fmt, ledger.market.buyer).get_data() == before.get_data()
    stranger = make_user("agency", ["buyer"])
    problem(ledger.client.get(f"{url}?format=csv", headers=stranger.headers), 404)
    problem(ledger.client.get(f"{url}?format=xls", headers=ledger.finance.headers), 422)

    period = ledger.client.get(
        "/v1/invoices/export?period=2030-03&format=csv", headers=ledger.finance.headers
    )
    assert period.status_code == 200
    assert period.get_data() == as_csv.get_data()  # the period's one issued invoice
