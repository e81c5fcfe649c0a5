"""Broker-metered instance hours: the exact time a machine ran, cut at every clock hour and
every period boundary, each hour closed once.

Machines are ordered, run and terminated through the API at times the test sets (see
`tests/billing_fixtures.py`); the metering job is the one workers run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import delete, func, select

from broker.jobs.queue import JobContext
from broker.models import MeterCursor, UsageRecord, UsageSource
from broker.services import usage as usage_service
from tests.billing_fixtures import Ledger, money
from tests.helpers import all_pages


def t(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, minute, tzinfo=UTC)


def metered(ledger: Ledger, resource_id: str, period: str | None = None) -> Fraction:
    """The exact instance hours in the ledger for a resource (and period)."""
    with ledger.db.session(read_only=True) as session:
        statement = select(func.sum(UsageRecord.quantity)).where(
            UsageRecord.resource_id == uuid.UUID(resource_id),
            UsageRecord.source == UsageSource.BROKER,
        )
        if period:
            statement = statement.where(UsageRecord.period == period)
        return session.scalar(statement) or Fraction(0)


def test_a_machine_is_billed_the_exact_time_it_was_active(ledger: Ledger) -> None:
    resource_id = ledger.start_machine(t(10, 13, 37))
    ledger.act(resource_id, "terminate", t(20, 8, 15))
    ledger.meter(t(21))

    exact = Fraction(9 * 24 + 18, 1) + Fraction(38, 60)  # 10th 13:37 → 20th 08:15
    assert metered(ledger, resource_id) == exact
    records = all_pages(
        ledger.client,
        ledger.market.buyer,
        f"/v1/usage?resource_id={resource_id}&metric=instance_hour",
    )
    # one record per clock hour it ran in: 13:00 on the 10th to 08:00 on the 20th
    assert len(records) == (t(20, 9) - t(10, 13)) / timedelta(hours=1) == 236
    by_start = sorted(records, key=lambda record: record["start"])
    assert (by_start[0]["start"], by_start[0]["end"]) == (
        "2030-03-10T13:37:00Z",
        "2030-03-10T14:00:00Z",
    )
    assert by_start[0]["quantity"] == "0.383333"  # 23 minutes, shown to 6 decimals
    assert (by_start[-1]["start"], by_start[-1]["end"], by_start[-1]["quantity"]) == (
        "2030-03-20T08:00:00Z",
        "2030-03-20T08:15:00Z",
        "0.25",
    )
    assert {record["source"] for record in records} == {"broker"}

    ledger.bill("2030-03", when=t(1, 1, month=4))
    invoice = ledger.invoice_of("2030-03")
    (line,) = [line for line in invoice["lines"] if line["metric"] == "instance_hour"]
    assert line["quantity"] == "234.633333"
    # 234 h 38 min at 0.05 = 11.731666… → 11.73, rounded once from the exact hours
    assert line["amount"] == "11.73"
    assert line["unit_price"] == "0.05"
    assert (line["service_start"], line["service_end"]) == (
        "2030-03-10T13:37:00Z",
        "2030-03-20T08:15:00Z",
    )


def test_a_machine_running_across_the_month_boundary_is_split_between_periods(
    ledger: Ledger,
) -> None:
    resource_id = ledger.start_machine(t(31, 22, 30))
    ledger.act(resource_id, "terminate", t(1, 2, 0, month=4))
    ledger.meter(t(2, month=4))

    assert metered(ledger, resource_id, "2030-03") == Fraction(3, 2)
    assert metered(ledger, resource_id, "2030-04") == Fraction(2)

    ledger.bill("2030-03")
    ledger.bill("2030-04", when=t(1, 1, month=5))
    march = ledger.invoice_of("2030-03")["lines"]
    april = ledger.invoice_of("2030-04")["lines"]
    assert [(line["metric"], line["quantity"], line["amount"]) for line in march] == [
        ("instance_hour", "1.5", "0.08")  # 0.075 → 0.08 (half-up)
    ]
    assert [(line["metric"], line["quantity"], line["amount"]) for line in april] == [
        ("instance_hour", "2", "0.10")
    ]
    assert march[0]["service_end"] == "2030-04-01T00:00:00Z"
    assert april[0]["service_start"] == "2030-04-01T00:00:00Z"


def test_stopped_time_is_not_metered_and_each_hour_is_closed_once(ledger: Ledger) -> None:
    resource_id = ledger.start_machine(t(5, 10, 0))
    ledger.act(resource_id, "stop", t(5, 10, 20))
    ledger.act(resource_id, "start", t(5, 10, 50))
    ledger.act(resource_id, "reboot", t(5, 11, 30))  # a reboot keeps the meter running
    ledger.act(resource_id, "terminate", t(5, 12, 6))

    first = ledger.meter(t(5, 13, 6))
    assert metered(ledger, resource_id) == Fraction(20 + 10 + 60 + 6, 60)
    again = ledger.meter(t(5, 14, 6))  # hours already closed are not metered twice
    assert metered(ledger, resource_id) == Fraction(96, 60)
    assert first["records"] == 3 and again["records"] == 0


def test_an_hour_is_closed_only_once_it_has_ended(ledger: Ledger) -> None:
    resource_id = ledger.start_machine(t(5, 10, 0))
    ledger.meter(t(5, 11, 3))  # 10:00–11:00 ended 3 minutes ago: within the grace period
    assert metered(ledger, resource_id) == 0
    ledger.meter(t(5, 11, 6))
    assert metered(ledger, resource_id) == 1

    ledger.at(t(5, 11, 42))
    cost = cost_so_far(ledger, resource_id)
    # the metered hour plus the 42 minutes not metered yet: 1.7 h at 0.05 = 0.085 → 0.09;
    # no vCPU or RAM hours reported yet: 1.7 h of 2 vCPU (3.4 at 0.01 = 0.034 → 0.03) and of
    # 4 GiB (6.8 at 0.002 = 0.0136 → 0.01)
    assert (cost["period"], cost["currency"], cost["amount"]) == ("2030-03", "EUR", "0.13")
    assert quantities(cost) == {
        "instance_hour": money("1.7"),
        "ram_gib_hour": money("6.8"),
        "vcpu_hour": money("3.4"),
    }
    assert [line["amount"] for line in cost["lines"]] == ["0.09", "0.01", "0.03"]


def cost_so_far(ledger: Ledger, resource_id: str) -> dict[str, Any]:
    """`cost_this_period` of a machine, as its agency's buyer reads it now."""
    response = ledger.client.get(
        f"/v1/resources/{resource_id}", headers=ledger.market.buyer.headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json["cost_this_period"])


def quantities(cost: dict[str, Any]) -> dict[str, Any]:
    return {line["metric"]: money(line["quantity"]) for line in cost["lines"]}


def test_a_machine_active_for_one_minute_costs_its_vcpu_and_ram_share_too(
    ledger: Ledger,
) -> None:
    """Nothing is metered or reported a minute in, yet the machine runs 2 vCPU and 4 GiB:
    counting only its instance hour would show a third of the quantities it is billed for
    (and with pricier vCPUs, a few percent of the money)."""
    resource_id = ledger.start_machine(t(5, 10, 0))
    ledger.at(t(5, 10, 1))
    cost = cost_so_far(ledger, resource_id)
    # one minute: 1/60 h, 2/60 vCPU-hours, 4/60 GiB-hours, shown to 6 decimals
    assert quantities(cost) == {
        "instance_hour": money("0.016667"),
        "ram_gib_hour": money("0.066667"),
        "vcpu_hour": money("0.033333"),
    }
    assert cost["amount"] == "0.00"  # 0.00083 + 0.00033 + 0.00013: under a cent

    ledger.at(t(5, 13, 0))  # three hours on, still nothing reported nor metered
    cost = cost_so_far(ledger, resource_id)
    assert quantities(cost) == {
        "instance_hour": money(3),
        "ram_gib_hour": money(12),
        "vcpu_hour": money(6),
    }
    # 3 × 0.05 = 0.15; 6 × 0.01 = 0.06; 12 × 0.002 = 0.024 → 0.02
    assert cost["amount"] == "0.23"


def test_reported_usage_replaces_the_estimate_and_nothing_counts_twice(ledger: Ledger) -> None:
    """Each metric counts what was reported up to where it ends, and estimates only the
    running time after: the cost is the same the moment before and after usage arrives."""
    resource_id = ledger.start_machine(t(5, 10, 30))
    ledger.act(resource_id, "stop", t(5, 12, 15))
    ledger.act(resource_id, "start", t(5, 12, 45))
    ledger.meter(t(5, 13, 6))  # closes the hours up to 13:00: 1.75 h + 0.25 h

    # Ran 10:30–12:15 and 12:45–13:06: 2.1 h. Nothing of vCPU or RAM reported: all estimated.
    estimated = {
        "instance_hour": money("2.1"),
        "ram_gib_hour": money("8.4"),
        "vcpu_hour": money("4.2"),
    }
    before = cost_so_far(ledger, resource_id)
    assert quantities(before) == estimated

    # The adapter reports hours 10, 11 and 12: 0.5 + 1 + 0.5 h of 2 vCPU and 4 GiB.
    assert poll(ledger, t(5, 13, 6))["records"] == 6
    after = cost_so_far(ledger, resource_id)
    assert quantities(after) == estimated  # 4 reported + 0.2 estimated (13:00–13:06), etc.
    assert after == before

    # The reported quantities win over the machine's size: say the provider reported hour 12
    # at half (a throttled machine), the cost follows the report, not the estimate.
    with ledger.db.transaction() as session:
        for record in session.scalars(
            select(UsageRecord).where(
                UsageRecord.resource_id == uuid.UUID(resource_id),
                UsageRecord.source == UsageSource.POLL,
                UsageRecord.start == t(5, 12),
            )
        ):
            record.quantity = record.quantity / 2
    halved = quantities(cost_so_far(ledger, resource_id))
    assert halved["vcpu_hour"] == money("3.7") and halved["ram_gib_hour"] == money("7.4")

    # Later, stopped since 13:20: the estimate covers only 13:00–13:20 of each metric.
    ledger.act(resource_id, "stop", t(5, 13, 20))
    ledger.at(t(5, 13, 50))
    # instance: 2 metered + 1/3 h; vCPU: 3.5 reported + 2/3; RAM: 7 reported + 4/3
    assert quantities(cost_so_far(ledger, resource_id)) == {
        "instance_hour": money("2.333333"),
        "ram_gib_hour": money("8.333333"),
        "vcpu_hour": money("4.166667"),
    }


def poll(ledger: Ledger, when: datetime) -> dict[str, Any]:
    """The usage-polling job as a worker runs it at `when`."""
    ledger.at(when)
    context = JobContext(ledger.db, ledger.app.config, ledger.clock)
    return usage_service.run_poll_job(context, None)


def test_usage_the_adapter_reports_is_polled_once_per_hour(ledger: Ledger) -> None:
    resource_id = ledger.start_machine(t(5, 10, 30))  # 2 vCPU, 4 GiB (the simulated flavor)
    ledger.act(resource_id, "stop", t(5, 12, 0))

    assert poll(ledger, t(5, 13, 6)) == {"records": 4, "skipped": 0, "unreachable": []}
    records = all_pages(ledger.client, ledger.market.buyer, f"/v1/usage?resource_id={resource_id}")
    polled = sorted(
        (r["metric"], r["start"], r["quantity"]) for r in records if r["source"] == "poll"
    )
    assert polled == [
        ("ram_gib_hour", "2030-03-05T10:00:00Z", "2"),
        ("ram_gib_hour", "2030-03-05T11:00:00Z", "4"),
        ("vcpu_hour", "2030-03-05T10:00:00Z", "1"),
        ("vcpu_hour", "2030-03-05T11:00:00Z", "2"),
    ]
    assert poll(ledger, t(5, 14, 6))["records"] == 0  # the hours polled are not asked again
    with ledger.db.transaction() as session:  # even asked again, a sample counts once
        session.execute(delete(MeterCursor).where(MeterCursor.name.startswith("poll:")))
    assert poll(ledger, t(5, 15, 6))["records"] == 0
    assert len(all_pages(ledger.client, ledger.finance, "/v1/usage?metric=vcpu_hour")) == 2
