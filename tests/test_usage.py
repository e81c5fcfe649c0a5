"""Pushed usage (`POST /v1/usage`): stored whole or not at all, each record counted once.

Done when (2): the same record posted 50 times concurrently is stored and billed once; a
conflicting payload gets 409; a batch with one bad record stores nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from broker.models import UsageRecord
from tests.billing_fixtures import Ledger
from tests.conftest import MakeUser
from tests.helpers import all_pages, problem, run_concurrently


@pytest.fixture
def machine(ledger: Ledger) -> str:
    return ledger.start_machine(datetime(2030, 3, 2, 9, 0, tzinfo=UTC))


def record(machine: str, record_id: str = "r-1", **overrides: Any) -> dict[str, Any]:
    body = {
        "record_id": record_id,
        "resource_id": machine,
        "metric": "vcpu_hour",
        "quantity": "1.250001",
        "start": "2030-03-02T10:00:00Z",
        "end": "2030-03-02T11:00:00Z",
    }
    return {**body, **overrides}


def stored(ledger: Ledger) -> int:
    with ledger.db.session(read_only=True) as session:
        return int(
            session.scalar(
                select(func.count()).select_from(UsageRecord).where(UsageRecord.source == "push")
            )
            or 0
        )


@pytest.fixture(autouse=True)
def _in_march(ledger: Ledger, machine: str) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=UTC))


def test_a_batch_is_stored_and_readable_by_the_agency_provider_and_finance(
    ledger: Ledger, machine: str, make_user: MakeUser
) -> None:
    # 2 vCPU: at most 2 vCPU-hours an hour, so one record an hour
    records = [
        record(
            machine,
            f"r-{n}",
            quantity=f"{n}.5" if n < 2 else "2",
            start=f"2030-03-02T1{n}:00:00Z",
            end=f"2030-03-02T1{n + 1}:00:00Z",
        )
        for n in range(3)
    ]
    response = ledger.push(records)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["created"] == 3 and response.json["duplicates"] == 0
    assert [item["status"] for item in response.json["records"]] == ["created"] * 3

    for user in (ledger.market.buyer, ledger.operator, ledger.finance):
        items = all_pages(ledger.client, user, f"/v1/usage?resource_id={machine}&metric=vcpu_hour")
        assert sorted(item["quantity"] for item in items) == ["0.5", "1.5", "2"]
        assert {item["source"] for item in items} == {"push"}
        assert {item["period"] for item in items} == {"2030-03"}
    stranger = make_user("agency", ["buyer"])
    assert all_pages(ledger.client, stranger, "/v1/usage") == []
    other_operator = make_user("provider", ["provider"])
    assert all_pages(ledger.client, other_operator, "/v1/usage") == []


def test_a_replay_is_a_duplicate_and_counts_once(ledger: Ledger, machine: str) -> None:
    first = ledger.push([record(machine)])
    again = ledger.push([record(machine)])  # another key: not an idempotent replay
    assert first.json["created"] == 1
    assert again.status_code == 200
    assert (again.json["created"], again.json["duplicates"]) == (0, 1)
    assert again.json["records"] == [{"record_id": "r-1", "status": "duplicate"}]
    assert stored(ledger) == 1


def test_the_same_record_posted_50_times_concurrently_is_stored_and_billed_once(
    ledger: Ledger, machine: str
) -> None:
    responses = run_concurrently(50, lambda _: ledger.push([record(machine)]))
    assert [response.status_code for response in responses] == [200] * 50
    statuses = sorted(response.json["records"][0]["status"] for response in responses)
    assert statuses == ["created"] + ["duplicate"] * 49
    assert stored(ledger) == 1

    ledger.act(machine, "terminate", datetime(2030, 3, 6, tzinfo=UTC))
    ledger.bill("2030-03", when=datetime(2030, 4, 1, 1, tzinfo=UTC))
    (vcpu,) = [
        line for line in ledger.invoice_of("2030-03")["lines"] if line["metric"] == "vcpu_hour"
    ]
    assert vcpu["quantity"] == "1.250001"
    assert vcpu["amount"] == "0.01"  # 1.250001 × 0.01


def test_a_conflicting_payload_is_409_and_stores_nothing_of_its_batch(
    ledger: Ledger, machine: str
) -> None:
    ledger.push([record(machine)])
    later = {"start": "2030-03-02T11:00:00Z", "end": "2030-03-02T12:00:00Z"}
    response = ledger.push([record(machine, "r-new", **later), record(machine, quantity="1.5")])
    body = problem(response, 409, "usage_record_conflict")
    assert "r-1" in body["detail"]
    assert stored(ledger) == 1  # r-new was not stored either
    items = all_pages(ledger.client, ledger.finance, "/v1/usage?metric=vcpu_hour")
    assert [(item["record_id"], item["quantity"]) for item in items] == [("r-1", "1.250001")]


# (what is wrong with the record, the field blamed, words of the message)
BAD_RECORDS: list[tuple[dict[str, Any], str, str]] = [
    ({"end": "2030-03-06T00:00:00Z"}, "end", "future"),
    (
        {"start": "2029-12-01T00:00:00Z", "end": "2029-12-01T01:00:00Z"},
        "start",
        "lookback",
    ),
    (
        {"start": "2030-02-28T23:00:00Z", "end": "2030-03-01T01:00:00Z"},
        "end",
        "two billing periods",
    ),
    ({"end": "2030-03-02T10:00:00Z"}, "end", "after `start`"),
    ({"resource_id": str(uuid.uuid4())}, "resource_id", "No such resource"),
    ({"metric": "instance_hour"}, "metric", "Must be one of"),
    ({"quantity": 1.5}, "quantity", "string"),
    ({"quantity": "-1"}, "quantity", "string"),
    ({"quantity": "0.0000001"}, "quantity", "6 decimals"),
    ({"record_id": "x" * 201}, "record_id", "length"),
    ({"unknown": 1}, "unknown", "Unknown field"),
]


def test_a_batch_with_one_bad_record_stores_nothing(ledger: Ledger, machine: str) -> None:
    good = [record(machine, f"ok-{n}") for n in range(5)]
    for bad, field, words in BAD_RECORDS:  # one machine for all the cases: they store nothing
        response = ledger.push([*good[:3], {**record(machine, "bad"), **bad}, *good[3:]])
        body = problem(response, 422, "validation_failed")
        messages = body["errors"][f"records.3.{field}"]
        assert any(words.lower() in message.lower() for message in messages), (bad, messages)
        assert stored(ledger) == 0, bad


def test_batch_limits_roles_and_the_idempotency_key(
    ledger: Ledger, machine: str, make_user: MakeUser
) -> None:
    too_many = [record(machine, f"r-{n}") for n in range(1001)]
    problem(ledger.push(too_many), 422, "validation_failed")
    problem(ledger.push([]), 422, "validation_failed")
    # only a provider's operators push, and only for machines on their providers
    response = ledger.client.post(
        "/v1/usage",
        json={"records": [record(machine)]},
        headers={**ledger.market.buyer.headers, "Idempotency-Key": "k"},
    )
    problem(response, 403)
    foreign = make_user("provider", ["provider"])
    response = ledger.client.post(
        "/v1/usage",
        json={"records": [record(machine)]},
        headers={**foreign.headers, "Idempotency-Key": "k"},
    )
    assert "No such resource" in problem(response, 422)["errors"]["records.0.resource_id"][0]
    response = ledger.client.post(
        "/v1/usage", json={"records": [record(machine)]}, headers=ledger.operator.headers
    )
    problem(response, 400, "idempotency_key_required")
    assert stored(ledger) == 0


def test_one_batch_may_repeat_a_record_but_not_contradict_itself(
    ledger: Ledger, machine: str
) -> None:
    response = ledger.push([record(machine), record(machine)])
    assert [item["status"] for item in response.json["records"]] == ["created", "duplicate"]
    response = ledger.push([record(machine, "x"), record(machine, "x", quantity="2")])
    assert "twice" in problem(response, 422)["errors"]["records.1.record_id"][0]
    assert stored(ledger) == 1


def test_an_idempotent_retry_replays_the_first_answer(ledger: Ledger, machine: str) -> None:
    first = ledger.push([record(machine)], key="batch-1")
    again = ledger.push([record(machine)], key="batch-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    assert again.json["created"] == 1  # the first answer, not "duplicate"
