"""Usage that cannot have happened is refused (issue 14), and what slips through is flagged.

Done when: each case is a 422 naming the record and the rule, and the batch stores nothing —
usage of a machine never made, an hour before it existed, after it was terminated,
999999999.999999 GiB of egress in 30 minutes (the 20 M EUR line cannot be made), a metric the
adapter polls pushed too (never billed twice); a plausible record is still accepted; a line
that outweighs its draft is flagged for finance, who may still finalize it.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import func, select

from billing.metering import (
    LEDGER_CAPACITY,
    MAX_HOURLY_CEILING,
    Capacity,
    hourly_ceiling,
    to_quanta,
)
from broker.jobs.queue import JobContext
from broker.models import UsageRecord, UsageSource
from broker.services import usage as usage_service
from providers.base import UsageSample
from providers.simulated import SimulatedAdapter
from tests.billing_fixtures import Ledger, money
from tests.catalogue_fixtures import default_prices, price
from tests.helpers import all_pages, problem
from tests.test_provisioning import place_order


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


def z(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


MARCH_2_10H = datetime(2030, 3, 2, 10, tzinfo=UTC)


def record(
    resource_id: str,
    record_id: str = "r-1",
    *,
    metric: str = "egress_gib",
    quantity: str = "1",
    start: datetime = MARCH_2_10H,
    end: datetime | None = None,
) -> dict[str, Any]:
    """A pushed record: 1 GiB of egress from 10:00 to 11:00 on 2 March, unless told."""
    return {
        "record_id": record_id,
        "resource_id": resource_id,
        "metric": metric,
        "quantity": quantity,
        "start": z(start),
        "end": z(end or start + timedelta(hours=1)),
    }


def stored(ledger: Ledger, source: UsageSource = UsageSource.PUSH) -> int:
    with ledger.db.session(read_only=True) as session:
        statement = select(func.count()).select_from(UsageRecord)
        return int(session.scalar(statement.where(UsageRecord.source == source)) or 0)


def refused(response: Any, index: int, record_id: str, code: str, field: str) -> dict[str, Any]:
    """The 422 of a batch with one refused record: the rule's code, and the record named."""
    body = problem(response, 422, code)
    assert body["refused"] == [
        {
            "index": index,
            "record_id": record_id,
            "code": code,
            "field": f"records.{index}.{field}",
            "detail": body["errors"][f"records.{index}.{field}"][0],
        }
    ]
    assert f"Record {index} (`{record_id}`)" in body["detail"]
    assert "Nothing of this batch was stored" in body["detail"]
    return body


def egress_market(ledger: Ledger) -> None:
    """The market's offer, in a new version that also prices egress (0.02 a GiB)."""
    offer = ledger.client.get(
        f"/v1/offers/{ledger.market.offer_id}", headers=ledger.operator.headers
    )
    edited = ledger.client.patch(
        f"/v1/offers/{ledger.market.offer_id}",
        json={"prices": [*default_prices(), price("egress_gib", "0.02")]},
        headers={**ledger.operator.headers, "If-Match": offer.headers["ETag"]},
    )
    assert edited.status_code == 201, edited.get_data(as_text=True)
    published = ledger.client.post(
        f"/v1/offers/{edited.json['id']}/publish", headers=ledger.operator.headers
    )
    assert published.status_code == 200, published.get_data(as_text=True)
    ledger.market = dataclasses.replace(ledger.market, offer_id=str(published.json["id"]))


def poll(ledger: Ledger) -> dict[str, Any]:
    """The usage-polling job, as a worker runs it now."""
    context = JobContext(ledger.db, ledger.app.config, ledger.clock)
    return usage_service.run_poll_job(context, None)


@pytest.fixture
def machine(ledger: Ledger) -> str:
    """2 vCPU, 4 GiB, 50 GiB of disk, active from 2 March 09:00; the clock is on 5 March."""
    resource_id = ledger.start_machine(t(2, 9))
    ledger.at(t(5))
    return resource_id


# The rules, one by one --------------------------------------------------------------------


def test_usage_of_a_machine_never_made_is_refused(ledger: Ledger, machine: str) -> None:
    ledger.market.cloud.inject("provision", "quota_exceeded")
    order_id = place_order(ledger.client, ledger.market, name="never")
    ledger.run_jobs()
    listing = ledger.client.get(
        f"/v1/resources?order_id={order_id}", headers=ledger.market.buyer.headers
    )
    (never,) = listing.json["items"]
    assert (never["state"], never["activated_at"]) == ("failed", None)

    response = ledger.push([record(machine, "fine"), record(never["id"], "ghost")])
    body = refused(response, 1, "ghost", "resource_never_made", "resource_id")
    assert "never made" in body["detail"]
    assert stored(ledger) == 0  # the plausible record of the batch was not stored either


def test_usage_before_the_machine_existed_is_refused(ledger: Ledger, machine: str) -> None:
    response = ledger.push([record(machine, "early", start=t(2, 8))])  # 08:00–09:00
    body = refused(response, 0, "early", "outside_resource_life", "start")
    assert "2030-03-02T09:00:00Z" in body["detail"]
    assert stored(ledger) == 0

    # the clocks may disagree by up to 5 minutes (BROKER_USAGE_LIFE_TOLERANCE_SECONDS)
    assert ledger.push([record(machine, "skewed", start=t(2, 8, 56))]).status_code == 200
    ledger.app.config["USAGE_LIFE_TOLERANCE_SECONDS"] = 60
    response = ledger.push([record(machine, "too-early", start=t(2, 8, 58))])
    refused(response, 0, "too-early", "outside_resource_life", "start")
    assert stored(ledger) == 1


def test_usage_after_the_machine_was_terminated_is_refused(ledger: Ledger, machine: str) -> None:
    ledger.act(machine, "terminate", t(5, 12))
    ledger.at(t(6))
    response = ledger.push(
        [record(machine, "last", start=t(5, 11)), record(machine, "after", start=t(5, 12))]
    )
    body = refused(response, 1, "after", "outside_resource_life", "end")
    assert "terminated" in body["detail"]
    assert stored(ledger) == 0

    ending = record(machine, "ending", start=t(5, 11, 30), end=t(5, 12, 4))  # within 5 min
    assert ledger.push([record(machine, "last", start=t(5, 11)), ending]).json["created"] == 2


def test_a_billion_gib_of_egress_in_half_an_hour_cannot_become_an_invoice_line(
    ledger: Ledger,
) -> None:
    egress_market(ledger)
    machine = ledger.start_machine(t(2, 9))
    ledger.at(t(5))
    huge = record(machine, "huge", quantity="999999999.999999", end=t(2, 10, 30))
    body = refused(ledger.push([huge]), 0, "huge", "quantity_implausible", "quantity")
    # 12,000 GiB an hour (BROKER_USAGE_MAX_EGRESS_GIB_PER_HOUR): 6,000 in 30 minutes
    assert "at most 6000 (12000 an hour)" in body["detail"]

    # as much as a saturated link moves is fine; splitting the impossible is not
    full = record(machine, "full", quantity="6000", end=t(2, 10, 30))
    assert ledger.push([full]).json["created"] == 1
    more = record(machine, "more", quantity="0.5", start=t(2, 10, 15), end=t(2, 10, 20))
    body = refused(ledger.push([more]), 0, "more", "quantity_implausible", "quantity")
    assert "With the 1 other record(s) of egress_gib it overlaps" in body["detail"]
    split = [
        record(machine, f"part-{n}", quantity="4000", start=t(2, 11), end=t(2, 11, 30))
        for n in range(2)
    ]
    problem(ledger.push(split), 422, "quantity_implausible")
    next_half = record(machine, "next", quantity="6000", start=t(2, 10, 30), end=t(2, 11))
    assert ledger.push([next_half]).json["created"] == 1  # adjacent, not overlapping
    assert stored(ledger) == 2

    ledger.act(machine, "terminate", t(5, 1))
    ledger.bill("2030-03", when=t(1, 1, month=4))
    (egress,) = [
        line for line in ledger.invoice_of("2030-03")["lines"] if line["metric"] == "egress_gib"
    ]
    assert (egress["quantity"], egress["amount"]) == ("12000", "240.00")


def test_a_polled_metric_is_not_pushed_and_never_billed_twice(ledger: Ledger, machine: str) -> None:
    other = ledger.start_machine(t(5), name="other")
    ledger.at(t(5, 2))
    # the operator pushes `other`'s vCPU hours before the adapter is polled: the push holds
    # them for March, and the adapter's vCPU samples of `other` in March are skipped
    pushed = record(other, "o-1", metric="vcpu_hour", quantity="2", start=t(5))
    assert ledger.push([pushed]).json["created"] == 1
    ledger.at(t(6, 0, 10))
    report = poll(ledger)
    assert report["unreachable"] == []
    assert report["skipped"] == 24  # `other`'s polled vCPU hours of 5 March

    # the simulated adapter reports vCPU and RAM hours: polled for `machine` in March
    vcpu = record(machine, "v-1", metric="vcpu_hour", quantity="2", start=t(2, 10))
    response = ledger.push([record(machine, "egress"), vcpu])
    body = refused(response, 1, "v-1", "metric_polled", "metric")
    assert "billed twice" in body["detail"]
    later = record(machine, "v-2", metric="vcpu_hour", quantity="1", start=t(5, 23))
    refused(ledger.push([later]), 0, "v-2", "metric_polled", "metric")  # any hour of March
    assert ledger.push([record(machine, "egress")]).json["created"] == 1  # not polled

    ledger.act(machine, "terminate", t(6, 1))
    ledger.act(other, "terminate", t(6, 1), by=ledger.market.buyer)
    ledger.at(t(6, 2, 10))
    poll(ledger)
    ledger.bill("2030-03", when=t(1, 1, month=4))
    lines = {
        (line["resource_id"], line["metric"]): line["quantity"]
        for line in ledger.invoice_of("2030-03")["lines"]
    }
    # `machine` ran 2 March 09:00 – 6 March 01:00 (88 h): 2 vCPU, all polled
    assert lines[(machine, "vcpu_hour")] == "176"
    # `other`: the pushed hour, and the polled RAM hours (5 March 00:00 – 6 March 01:00)
    assert lines[(other, "vcpu_hour")] == "2"
    assert lines[(other, "ram_gib_hour")] == "100"
    with ledger.db.session(read_only=True) as session:
        sources = session.execute(
            select(UsageRecord.resource_id, UsageRecord.metric, UsageRecord.source)
            .where(UsageRecord.metric == "vcpu_hour")
            .distinct()
        ).all()
    assert sorted((str(r), s.value) for r, _, s in sources) == sorted(
        [(machine, "poll"), (other, "push")]
    )


def test_plausible_records_of_every_metric_are_accepted(ledger: Ledger, machine: str) -> None:
    hour = {"start": t(3, 10), "end": t(3, 11)}
    at_most = [  # exactly what a 2 vCPU / 4 GiB / 50 GiB machine can use in an hour
        record(machine, "vcpu", metric="vcpu_hour", quantity="2", **hour),
        record(machine, "ram", metric="ram_gib_hour", quantity="4", **hour),
        record(machine, "disk", metric="storage_gib_month", quantity="0.068493", **hour),
        record(machine, "egress", metric="egress_gib", quantity="12000", **hour),
    ]
    response = ledger.push(at_most)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["created"] == 4
    over = [
        record(machine, "vcpu+", metric="vcpu_hour", quantity="2.000001", **hour),
        record(machine, "disk+", metric="storage_gib_month", quantity="0.068494", **hour),
    ]
    response = ledger.push(over)
    body = problem(response, 422, "quantity_implausible")
    assert [(item["index"], item["code"]) for item in body["refused"]] == [
        (0, "quantity_implausible"),
        (1, "quantity_implausible"),
    ]
    assert "Records of this batch" in body["detail"]
    assert stored(ledger) == 4


def test_a_batch_breaking_several_rules_names_each_record_and_its_rule(
    ledger: Ledger, machine: str
) -> None:
    batch = [
        record(machine, "ok"),
        record(machine, "early", start=t(1, 10)),
        record(machine, "much", metric="ram_gib_hour", quantity="5"),
        record(str(uuid.uuid4()), "nowhere"),
    ]
    body = problem(ledger.push(batch), 422, "validation_failed")
    assert [(item["index"], item["record_id"], item["code"]) for item in body["refused"]] == [
        (1, "early", "outside_resource_life"),
        (2, "much", "quantity_implausible"),
    ]
    assert set(body["errors"]) == {
        "records.1.start",
        "records.2.quantity",
        "records.3.resource_id",
    }
    assert stored(ledger) == 0


# Numbers storage cannot hold --------------------------------------------------------------


def test_a_huge_polled_sample_is_skipped_not_a_crash(
    ledger: Ledger, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resource = ledger.client.get(f"/v1/resources/{machine}", headers=ledger.market.buyer.headers)

    def usage(self: SimulatedAdapter, since: datetime, until: datetime) -> list[UsageSample]:
        if not since <= t(3, 10) < until:
            return []
        return [
            UsageSample(
                record_id=f"{metric}-{quantity}",
                ref=resource.json["provider_ref"],
                metric=metric,
                quantity=Decimal(quantity),
                start=t(3, 10),
                end=t(3, 11),
            )
            for metric, quantity in (
                ("egress_gib", "1e30"),  # beyond what the ledger's 64 bits hold
                ("egress_gib", "999999999.999999"),
                ("vcpu_hour", "3"),  # 2 vCPU
                ("vcpu_hour", "2"),  # plausible
            )
        ]

    monkeypatch.setattr(SimulatedAdapter, "usage", usage)
    assert poll(ledger) == {"records": 1, "skipped": 3, "unreachable": []}
    items = all_pages(ledger.client, ledger.finance, f"/v1/usage?resource_id={machine}")
    assert [(i["metric"], i["quantity"]) for i in items if i["source"] == "poll"] == [
        ("vcpu_hour", "2")
    ]
    assert stored(ledger, UsageSource.POLL) == 1


def test_every_reported_metric_has_a_ceiling_that_storage_can_sum_over_a_month() -> None:
    vm = Capacity("vm", vcpu=1024, ram_gib=Decimal(65536), disk_gib=1_000_000)
    limits = usage_service.ceilings(
        {
            "USAGE_MAX_EGRESS_GIB_PER_HOUR": Decimal("1e30"),  # set absurdly high
            "USAGE_MAX_REQUESTS_PER_HOUR": Decimal(3_000_000),
            "USAGE_MAX_BUCKET_GIB": Decimal(1_048_576),
            "USAGE_LIFE_TOLERANCE_SECONDS": 300,
        }
    )
    for metric in (*usage_service.PROVIDER_METRICS, "requests"):
        ceiling = hourly_ceiling(metric, vm, limits)
        assert 0 < ceiling <= MAX_HOURLY_CEILING, metric
        to_quanta(Fraction(int(ceiling * 31 * 24)))  # a month of it fits the ledger
    assert hourly_ceiling("egress_gib", vm, limits) == MAX_HOURLY_CEILING
    assert MAX_HOURLY_CEILING * 31 * 24 <= LEDGER_CAPACITY
    assert hourly_ceiling("no_such_metric", vm, limits) == 0


# What slips through is flagged --------------------------------------------------------------


def test_a_line_outweighing_its_draft_is_flagged_for_finance_who_may_still_finalize(
    ledger: Ledger,
) -> None:
    egress_market(ledger)
    machine = ledger.start_machine(t(2, 9))
    ledger.at(t(5))
    # 5 hours at full line rate: plausible, and 1,200 EUR of egress
    records = [
        record(machine, f"eg-{hour}", quantity="12000", start=t(3, hour)) for hour in range(5)
    ]
    assert ledger.push(records).json["created"] == 5
    ledger.act(machine, "terminate", t(5, 9))

    run = ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    (egress,) = [line for line in invoice["lines"] if line["metric"] == "egress_gib"]
    assert egress["amount"] == "1200.00"
    (flag,) = invoice["flags"]
    assert flag == {
        "code": "line_outlier",
        "invoice_id": invoice["id"],
        "position": egress["position"],
        "resource_id": machine,
        "metric": "egress_gib",
        "amount": "1200.00",
        "currency": "EUR",
        "share": flag["share"],
        "detail": flag["detail"],
    }
    assert money(flag["share"]) > 50
    assert "before finalizing" in flag["detail"]
    run_view = ledger.client.get(f"/v1/billing-runs/{run['id']}", headers=ledger.finance.headers)
    assert run_view.json["flags"] == [flag]

    finalized = ledger.finalize(invoice["id"])
    assert finalized.status_code == 200, finalized.get_data(as_text=True)
    assert finalized.json["flags"] == [flag]  # finance decided; the flag stays visible

    # below the floor (BROKER_BILLING_OUTLIER_MIN_SUBTOTAL, 1000), one line is just a bill
    ledger.app.config["BILLING_OUTLIER_MIN_SUBTOTAL"] = Decimal(2000)
    again = ledger.client.get(f"/v1/invoices/{invoice['id']}", headers=ledger.finance.headers)
    assert again.json["flags"] == []
