"""What invoices bill of the usage ledger, kept as ranges of its numbering, pinned to the rules
it replaced: a mark on every record.

Random but reproducible histories of one agency — usage metered and pushed (late too), billing
runs of past and current periods (a later period drafted while an earlier one still is),
finalizations and voids — are played through the API and the real jobs. After every step, the
invoice that bills each record (`GET /v1/usage`'s `invoice_id`) and every invoice line's quantity
equal those of a plain model of the former rules: a draft takes each record nobody bills yet
of its period or an earlier one, except those of a period another draft covers; an issued
invoice takes nothing more; a void one gives its records back.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import select

from billing.metering import period_of
from broker.models import LedgerSweep, UsageRecord
from broker.services import ledger as ledger_service
from tests.billing_fixtures import Ledger


def _all(ledger: Ledger, path: str) -> list[dict[str, Any]]:
    items, url = [], f"{path}{'&' if '?' in path else '?'}limit=200"
    while url:
        page = ledger.client.get(url, headers=ledger.finance.headers).json
        items += page["items"]
        url = (
            f"{path}{'&' if '?' in path else '?'}limit=200&cursor={page['next_cursor']}"
            if page.get("next_cursor")
            else ""
        )
    return items


class FormerRules:
    """Who bills each record, by the rules of a mark on every record."""

    def __init__(self) -> None:
        self.billed_by: dict[str, str | None] = {}

    def billing_run(self, ledger: Ledger, period: str, before: list[dict[str, Any]]) -> None:
        records = _all(ledger, "/v1/usage")
        for record in records:
            self.billed_by.setdefault(record["id"], None)
        invoices = {i["id"]: i for i in _all(ledger, "/v1/invoices")}
        (invoice,) = [
            i for i in invoices.values() if i["period"] == period and i["state"] != "void"
        ]
        if any(i["id"] == invoice["id"] and i["state"] != "draft" for i in before):
            return  # issued before the run: it takes nothing more
        other_drafts = {
            i["period"]
            for i in invoices.values()
            if i["state"] == "draft" and i["id"] != invoice["id"]
        }
        for record in records:
            if (
                self.billed_by[record["id"]] is None
                and record["period"] <= period
                and record["period"] not in other_drafts
            ):
                self.billed_by[record["id"]] = invoice["id"]

    def void(self, invoice_id: str) -> None:
        for record, by in self.billed_by.items():
            if by == invoice_id:
                self.billed_by[record] = None

    def check(self, ledger: Ledger) -> None:
        records = _all(ledger, "/v1/usage")
        assert {r["id"]: r["invoice_id"] for r in records} == {
            r["id"]: self.billed_by.get(r["id"]) for r in records
        }
        sums: dict[tuple[str, str, str, str], Fraction] = defaultdict(Fraction)
        for record in records:
            if record["invoice_id"] is not None:
                key = (
                    record["invoice_id"],
                    record["resource_id"],
                    record["metric"],
                    record["period"],
                )
                sums[key] += Fraction(record["quantity"])
        for listed in _all(ledger, "/v1/invoices"):
            if listed["state"] == "void":
                continue
            invoice = ledger.client.get(
                f"/v1/invoices/{listed['id']}", headers=ledger.finance.headers
            ).json
            for line in invoice["lines"]:
                key = (invoice["id"], line["resource_id"], line["metric"], line["period"])
                assert Fraction(line["quantity"]) == sums[key], (invoice["period"], line)


@pytest.mark.parametrize("seed", [1, 2])
def test_what_invoices_bill_follows_the_former_rules_through_a_random_history(
    ledger: Ledger, seed: int
) -> None:
    rng = random.Random(seed)
    rules = FormerRules()
    machine = ledger.start_machine(datetime(2030, 3, 1, 6, tzinfo=UTC))
    pushed = 0
    for _ in range(16):
        ledger.at(ledger.clock.now + timedelta(hours=rng.choice([5, 30, 120])))
        now = ledger.clock.now
        step = rng.choice(["push", "push", "bill", "bill", "finalize", "void"])
        if step == "push":  # usage of this month or the one before (late), an hour of it
            start = max(
                now - timedelta(days=rng.randint(1, 40)), datetime(2030, 3, 1, 6, tzinfo=UTC)
            )
            start = start.replace(minute=0, second=0, microsecond=0)
            pushed += 1
            response = ledger.push(
                [
                    {
                        "record_id": f"r{pushed}",
                        "resource_id": machine,
                        "metric": "vcpu_hour",
                        "quantity": f"0.{rng.randint(1, 3)}",  # plausible: at most 2 an hour
                        "start": start.isoformat().replace("+00:00", "Z"),
                        "end": (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                    }
                ]
            )
            assert response.status_code == 200, response.get_data(as_text=True)
            continue
        invoices = _all(ledger, "/v1/invoices")
        if step == "bill":
            period = rng.choice(sorted({period_of(now), period_of(now - timedelta(days=31))}))
            ledger.bill(period)
            rules.billing_run(ledger, period, invoices)
        elif step == "finalize":
            for invoice in invoices:
                if invoice["state"] == "draft":
                    ledger.finalize(invoice["id"])  # refused (409) while its period runs
        else:
            issued = [i for i in invoices if i["state"] == "finalized"]
            if not issued:
                continue
            victim = rng.choice(issued)
            response = ledger.client.post(
                f"/v1/invoices/{victim['id']}/void",
                json={"reason": "wrong"},
                headers=ledger.finance.headers,
            )
            assert response.status_code == 200, response.get_data(as_text=True)
            rules.void(victim["id"])
        rules.check(ledger)
    assert any(by is not None for by in rules.billed_by.values())


def test_a_voided_invoice_is_replaced_by_what_it_billed_not_what_others_billed_since(
    ledger: Ledger,
) -> None:
    rules = FormerRules()
    machine = ledger.start_machine(datetime(2030, 3, 30, 12, tzinfo=UTC))
    ledger.act(machine, "terminate", datetime(2030, 3, 31, 12, tzinfo=UTC))

    def run(period: str, when: datetime) -> None:
        before = _all(ledger, "/v1/invoices")
        ledger.bill(period, when=when)
        rules.billing_run(ledger, period, before)
        rules.check(ledger)

    run("2030-03", datetime(2030, 4, 1, 1, tzinfo=UTC))
    march = ledger.invoice_of("2030-03")
    assert ledger.finalize(march["id"]).status_code == 200
    late = {
        "record_id": "late",
        "resource_id": machine,
        "metric": "vcpu_hour",
        "quantity": "1.5",
        "start": "2030-03-31T06:00:00Z",
        "end": "2030-03-31T07:00:00Z",
    }
    assert ledger.push([late]).json["created"] == 1
    run("2030-04", datetime(2030, 5, 1, 1, tzinfo=UTC))  # April bills March's late usage
    void = ledger.client.post(
        f"/v1/invoices/{march['id']}/void", json={"reason": "wrong"}, headers=ledger.finance.headers
    )
    assert void.status_code == 200, void.get_data(as_text=True)
    rules.void(march["id"])
    rules.check(ledger)
    run("2030-03", datetime(2030, 5, 1, 2, tzinfo=UTC))  # the replacement takes March again
    (replacement,) = [i for i in ledger.invoices("2030-03") if i["state"] != "void"]
    assert replacement["id"] != march["id"]
    assert [(line["metric"], line["quantity"]) for line in replacement["lines"]] == [
        (line["metric"], line["quantity"]) for line in march["lines"]
    ]


def test_a_run_leaves_the_sweep_just_below_the_oldest_record_it_did_not_bill(
    ledger: Ledger,
) -> None:
    """Billing March in April bills March and leaves April's records (its period is later): the
    next run starts reading the ledger at April's first record, not at its beginning."""
    ledger.start_machine(datetime(2030, 3, 31, 20, tzinfo=UTC))
    ledger.bill("2030-03", when=datetime(2030, 4, 1, 6, tzinfo=UTC))  # meters 4 h of April too
    (march,) = ledger.invoices("2030-03")
    with ledger.db.session(read_only=True) as session:
        april = session.scalars(
            select(UsageRecord.seq).where(UsageRecord.period == "2030-04")
        ).all()
        march_seqs = session.scalars(
            select(UsageRecord.seq).where(ledger_service.billed_by() == uuid.UUID(march["id"]))
        ).all()
        sweep = session.get(LedgerSweep, uuid.UUID(ledger.market.buyer.organization_id))
    assert april and march_seqs
    assert sweep is not None and sweep.covered_through == min(april) - 1
