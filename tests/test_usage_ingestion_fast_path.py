"""The fast paths of `POST /v1/usage`, each held to the path it stands in for.

- `well_formed_batch` loads what `UsagePushSchema`'s marshmallow load gives, or gives up (and
  marshmallow then answers, with its own errors): never another value, never a batch
  marshmallow refuses.
- `push_result_body` is `PushResultSchema().dump`.
- `_Screen.passes` lets a record through only when the rules of one record find nothing.
- `_insert_ignoring_duplicates` stores what the ORM's INSERT stored, column for column, and
  when some rows exist already inserts the others and says which.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import marshmallow as ma
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from billing.metering import QUANTUM, Capacity, Span, hourly_ceiling
from broker import db as broker_db
from broker.api.usage import (
    MAX_QUANTITY,
    PushResultSchema,
    UsagePushSchema,
    push_result_body,
    well_formed_batch,
)
from broker.models import Resource, UsageRecord, UsageSource
from broker.services import usage as service
from tests.billing_fixtures import Ledger

RESOURCE = "6f1c2a4e-93b1-4c5e-8f0a-2d4b6c8e0a1f"
GOOD_RECORD: dict[str, Any] = {
    "record_id": "r-1",
    "resource_id": RESOURCE,
    "metric": "vcpu_hour",
    "quantity": "1.250001",
    "start": "2030-03-02T10:00:00Z",
    "end": "2030-03-02T11:00:00Z",
}

# Values of each field, good and bad: what clients send, and what marshmallow must refuse.
ODD_VALUES = [None, 1, 1.5, True, [], {}, "", "\x00", "x\x00", "\ud800"]
FIELD_VALUES: dict[str, list[Any]] = {
    "record_id": ["r-1", "a/b:c", "é" * 200, "x" * 201, "tab\there", "line\n", "\x7f", *ODD_VALUES],
    "resource_id": [
        RESOURCE,
        RESOURCE.upper(),
        RESOURCE.replace("-", ""),
        "{" + RESOURCE + "}",
        "urn:uuid:" + RESOURCE,
        RESOURCE[:-1],
        RESOURCE + "0",
        " " + RESOURCE[1:],
        RESOURCE[:8] + "_" + RESOURCE[9:],
        *ODD_VALUES,
    ],
    "metric": [*service.PROVIDER_METRICS, "instance_hour", "VCPU_HOUR", "vcpu_hour ", *ODD_VALUES],
    "quantity": [
        "0",
        "2",
        "007",
        "1.5",
        "1.50",
        "0.000001",
        "0.0000001",
        str(MAX_QUANTITY),
        "1000000000",
        "999999999999.5",
        "1e3",
        "-1",
        "+1",
        " 1",
        "1.",
        ".5",
        "NaN",
        "Infinity",
        "1\n",
        *ODD_VALUES,
    ],
    "start": [
        "2030-03-02T10:00:00Z",
        "2030-03-02T10:00:00+01:00",
        "2030-03-02T10:00:00.123456Z",
        "2030-03-02T10:00:00",
        "2030-03-02 10:00:00Z",
        "2030-03-02",
        "20300302T100000Z",
        "2030-03-02T25:00:00Z",
        "2030-02-30T10:00:00Z",
        "yesterday",
        *ODD_VALUES,
    ],
}
FIELD_VALUES["end"] = FIELD_VALUES["start"]


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A record: good, with fields replaced by odd values, missing or extra, or no object."""
    shape = draw(st.sampled_from(["good", "changed", "changed", "missing", "extra", "odd"]))
    record = dict(GOOD_RECORD)
    if shape == "changed":
        for name in draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=3)):
            record[name] = draw(st.sampled_from(FIELD_VALUES[name]))
    elif shape == "missing":
        del record[draw(st.sampled_from(sorted(record)))]
    elif shape == "extra":
        record[draw(st.sampled_from(["unknown", "id", "source"]))] = "x"
    elif shape == "odd":
        return draw(st.sampled_from(ODD_VALUES))
    return record


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["batch", "batch", "batch", "extra", "not a list", "odd"]))
    batch = draw(st.lists(records(), min_size=0, max_size=4))
    if shape == "extra":
        return {"records": batch, "more": 1}
    if shape == "not a list":
        return {"records": draw(st.sampled_from(ODD_VALUES))}
    if shape == "odd":
        return draw(st.sampled_from([[], "records", None, {}]))
    return {"records": batch}


def marshmallow_load(body: Any) -> Any:
    """The schema's own load, as every batch went through before the fast path."""
    return ma.Schema.load(UsagePushSchema(), body)


@settings(max_examples=400, deadline=None)
@given(bodies())
def test_the_fast_load_of_a_batch_is_marshmallows_or_nothing(body: Any) -> None:
    fast = well_formed_batch(body)
    try:
        loaded = marshmallow_load(body)
    except ma.ValidationError as error:
        assert fast is None
        with pytest.raises(ma.ValidationError) as answered:
            UsagePushSchema().load(body)
        assert answered.value.messages == error.messages  # the schema's own words
        return
    assert fast is None or fast == loaded
    if fast is not None:  # the same values, of the same types (a Decimal stays a Decimal)
        for fast_record, record in zip(fast["records"], loaded["records"], strict=True):
            assert [type(value) for value in fast_record.values()] == [
                type(record[name]) for name in fast_record
            ]
    assert UsagePushSchema().load(body) == loaded


def test_well_formed_batches_take_the_fast_path() -> None:
    variants = [
        {},
        {"start": "2030-03-02T10:00:00+01:00", "end": "2030-03-02T11:00:00.5+01:00"},
        {"start": "2030-03-02T10:00:00", "quantity": "0"},
        {"resource_id": RESOURCE.upper(), "metric": "egress_gib", "quantity": str(MAX_QUANTITY)},
        {"record_id": "x" * 200},
    ]
    body = {"records": [{**GOOD_RECORD, **changes} for changes in variants] * 200}
    fast = well_formed_batch(body)
    assert fast is not None and len(fast["records"]) == 1000
    assert fast == marshmallow_load(body)
    assert well_formed_batch({"records": body["records"] * 2}) is None  # over the limit


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.sampled_from(["created", "duplicate"])),
        max_size=20,
    ),
    st.integers(0, 1000),
    st.integers(0, 1000),
)
def test_the_answer_is_the_schemas_dump(
    reported: list[tuple[str, str]], created: int, duplicates: int
) -> None:
    result = service.PushResult(
        created, duplicates, [{"record_id": rid, "status": status} for rid, status in reported]
    )
    assert push_result_body(result) == PushResultSchema().dump(result)


# The screen, against the rules -------------------------------------------------------------

NOW = datetime(2030, 3, 5, 12, 0, tzinfo=UTC)
CONFIG = {
    "USAGE_CLOCK_SKEW_SECONDS": 300,
    "USAGE_LOOKBACK_DAYS": 62,
    "USAGE_LIFE_TOLERANCE_SECONDS": 300,
    "USAGE_MAX_EGRESS_GIB_PER_HOUR": 1000,
    "USAGE_MAX_REQUESTS_PER_HOUR": 10_000_000,
    "USAGE_MAX_BUCKET_GIB": 100_000,
}
LIMITS = service.ceilings(CONFIG)
CAPACITIES = [
    Capacity("vm", 2, Decimal("4"), 50),
    Capacity("vm", 1, Decimal("0.5"), 10),
    Capacity("volume", 0, Decimal(0), 100),
    Capacity("object_storage", 0, Decimal(0), 0),
]
# Instants around the edges the rules look at (now and its skew, the lookback, a month's
# start), and more often inside them, where the other rules decide.
USUAL = NOW - timedelta(hours=30)
EDGES = [
    NOW,
    NOW + timedelta(seconds=300),
    NOW - timedelta(days=62),
    datetime(2030, 3, 1, tzinfo=UTC),
    datetime(2030, 2, 1, tzinfo=UTC),
    *[USUAL] * 5,
]
instants = st.builds(
    lambda edge, seconds, micro: edge + timedelta(seconds=seconds, microseconds=micro),
    st.sampled_from(EDGES),
    st.integers(-7200, 7200),
    st.sampled_from([0, 0, 1, -1, 500_000]),
)
quantities = st.one_of(
    st.sampled_from([Fraction(0), Fraction(1), Fraction(2), Fraction(4), Fraction(1, 2)]),
    st.builds(lambda units: Fraction(units, 1_000_000), st.integers(0, 10**12)),
)


# How far a resource's activation lies before a record's start (its termination after its
# end): around the tolerance, where the rule turns.
LIFE_MARGINS = [
    timedelta(seconds=seconds, microseconds=micro)
    for seconds in (-3600, -301, -300, -299, 0, 299, 300, 301, 86400)
    for micro in (0, 1, -1)
]


@settings(max_examples=800, deadline=None)
@given(
    start=instants,
    length=st.sampled_from([timedelta(hours=1), timedelta(0), timedelta(minutes=-5)])
    | st.sampled_from([timedelta(hours=1), timedelta(minutes=10)])
    | st.builds(lambda s: timedelta(seconds=s), st.integers(-100, 40 * 86400)),
    metric=st.sampled_from(service.PROVIDER_METRICS),
    capacity=st.sampled_from(CAPACITIES),
    activated=st.none() | st.sampled_from(LIFE_MARGINS),
    terminated=st.none() | st.sampled_from(LIFE_MARGINS),
    offset=st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-5)]),
    data=st.data(),
)
def test_the_screen_passes_only_what_the_rules_pass(
    start: datetime,
    length: timedelta,
    metric: str,
    capacity: Capacity,
    activated: timedelta | None,
    terminated: timedelta | None,
    offset: timedelta,
    data: st.DataObject,
) -> None:
    local = start.astimezone(timezone(offset))  # a client's own offset, as it sent it
    end = local + length
    per_hour = hourly_ceiling(metric, capacity, LIMITS)
    # At the most the resource can consume in that time, a quantum either side, or anything.
    most = per_hour * max(
        Fraction(0), Fraction((end - local) // timedelta(microseconds=1), 3_600_000_000)
    )
    quantity = data.draw(
        st.sampled_from([most, most + QUANTUM, max(most - QUANTUM, Fraction(0))]) | quantities
    )
    resource: Any = SimpleNamespace(
        activated_at=None if activated is None else local - activated,
        terminated_at=None if terminated is None else end + terminated,
    )
    span = Span(local, end, quantity)
    screen = service._Screen(NOW, CONFIG, LIMITS)
    problem = service._one_record_problem(
        resource, capacity, metric, span, per_hour, NOW, CONFIG, LIMITS
    )
    if screen.passes(resource, capacity, metric, span, per_hour):
        assert problem is None


MICRO = timedelta(microseconds=1)
TOLERANCE = timedelta(seconds=300)
MONTH_START = datetime(2030, 3, 1, tzinfo=UTC)


def _usual(**changes: Any) -> dict[str, Any]:
    """A record of the usual kind, with some of its parts changed."""
    start = changes.get("start", USUAL)
    return {
        "start": start,
        "end": changes.get("end", start + timedelta(hours=1)),
        "quantity": changes.get("quantity", Fraction(1)),
        "activated_at": changes.get("activated_at", NOW - timedelta(days=10)),
        "terminated_at": changes.get("terminated_at"),
    }


# Each edge a rule turns at, a microsecond (or a quantum) either side.
EDGE_CASES = [
    case
    for step in (-1, 0, 1)
    for case in (
        _usual(activated_at=USUAL + TOLERANCE + step * MICRO),
        _usual(terminated_at=USUAL + timedelta(hours=1) - TOLERANCE + step * MICRO),
        _usual(start=NOW + TOLERANCE + step * MICRO - timedelta(hours=1)),
        _usual(start=NOW - timedelta(days=62) + step * MICRO),
        _usual(start=MONTH_START - timedelta(hours=1) + step * MICRO),
        _usual(start=USUAL, end=USUAL + step * MICRO),
        _usual(quantity=Fraction(2) + step * QUANTUM),
        _usual(end=USUAL + timedelta(minutes=10), quantity=Fraction(1, 3) + step * QUANTUM),
    )
]


@pytest.mark.parametrize("case", EDGE_CASES)
def test_the_screen_turns_where_the_rules_turn(case: dict[str, Any]) -> None:
    machine = CAPACITIES[0]  # 2 vCPUs
    resource: Any = SimpleNamespace(
        activated_at=case["activated_at"], terminated_at=case["terminated_at"]
    )
    span = Span(case["start"], case["end"], case["quantity"])
    per_hour = hourly_ceiling("vcpu_hour", machine, LIMITS)
    problem = service._one_record_problem(
        resource, machine, "vcpu_hour", span, per_hour, NOW, CONFIG, LIMITS
    )
    passes = service._Screen(NOW, CONFIG, LIMITS).passes(
        resource, machine, "vcpu_hour", span, per_hour
    )
    assert passes == (problem is None), problem


def test_the_screen_passes_the_usual_records() -> None:
    screen = service._Screen(NOW, CONFIG, LIMITS)
    machine = CAPACITIES[0]
    resource: Any = SimpleNamespace(
        activated_at=datetime(2030, 1, 1, tzinfo=UTC), terminated_at=None
    )
    for hours_ago in range(1, 24 * 30):
        start = NOW.replace(minute=0) - timedelta(hours=hours_ago)
        if start.month != (start + timedelta(hours=1)).month:
            continue  # ends at a month's start: fine, but not the usual record
        for metric, quantity in (("vcpu_hour", Fraction(2)), ("egress_gib", Fraction(7, 2))):
            span = Span(start, start + timedelta(hours=1), quantity)
            per_hour = hourly_ceiling(metric, machine, LIMITS)
            assert screen.passes(resource, machine, metric, span, per_hour), (start, metric)


# The insert ---------------------------------------------------------------------------------


def _rows(ledger: Ledger, resource_id: str, prefix: str, hours: int) -> list[dict[str, Any]]:
    with ledger.db.session(read_only=True) as session:
        resource = session.get(Resource, uuid.UUID(resource_id))
        assert resource is not None
        provider_id, organization_id = resource.provider_id, resource.organization_id
    first = datetime(2030, 3, 2, 10, tzinfo=UTC)
    return [
        service._row(
            provider_id=provider_id,
            source=UsageSource.PUSH,
            record_id=f"{prefix}-{hour}",
            resource_id=uuid.UUID(resource_id),
            organization_id=organization_id,
            metric="vcpu_hour" if hour % 2 else "egress_gib",
            quantity=Fraction(hour * 3, 3_600_000) + hour,
            start=first + timedelta(hours=hour, microseconds=hour),
            end=first + timedelta(hours=hour + 1),
            now=datetime(2030, 3, 5, 1, 2, 3, 456789, tzinfo=UTC),
        )
        for hour in range(hours)
    ]


def _stored(ledger: Ledger, prefix: str) -> list[dict[str, Any]]:
    columns = [c for c in UsageRecord.__table__.c if c.name not in ("id", "seq", "record_id")]
    with ledger.db.session(read_only=True) as session:
        found = session.execute(
            select(UsageRecord.record_id, *columns)
            .where(UsageRecord.record_id.like(f"{prefix}-%"))
            .order_by(UsageRecord.start)
        )
        return [{**row._asdict(), "record_id": row.record_id.split("-", 1)[1]} for row in found]


@pytest.fixture
def machine(ledger: Ledger) -> str:
    return ledger.start_machine(datetime(2030, 3, 2, 9, 0, tzinfo=UTC))


def test_the_bulk_insert_stores_what_the_orm_insert_stored(ledger: Ledger, machine: str) -> None:
    with ledger.db.transaction() as session:
        orm_rows = _rows(ledger, machine, "orm", 12)
        session.execute(broker_db.insert(session, UsageRecord), orm_rows)
        bulk_rows = _rows(ledger, machine, "bulk", 12)
        inserted = service._insert_ignoring_duplicates(session, bulk_rows)
    assert inserted == {(row["provider_id"], row["record_id"]) for row in bulk_rows}
    assert _stored(ledger, "bulk") == _stored(ledger, "orm")
    with ledger.db.session(read_only=True) as session:
        ids = set(
            session.scalars(select(UsageRecord.id).where(UsageRecord.record_id.like("bulk-%")))
        )
    assert ids == {row["id"] for row in bulk_rows}


def test_rows_that_exist_already_are_skipped_and_the_others_inserted(
    ledger: Ledger, machine: str
) -> None:
    rows = _rows(ledger, machine, "r", 6)
    with ledger.db.transaction() as session:
        assert len(service._insert_ignoring_duplicates(session, rows[:3])) == 3
    again = [{**row, "id": uuid.uuid4()} for row in rows]  # as another request makes them
    with ledger.db.transaction() as session:
        inserted = service._insert_ignoring_duplicates(session, again)
    assert inserted == {(row["provider_id"], row["record_id"]) for row in rows[3:]}
    with ledger.db.session(read_only=True) as session:
        ids = set(session.scalars(select(UsageRecord.id).where(UsageRecord.record_id.like("r-%"))))
    assert ids == {row["id"] for row in rows[:3]} | {row["id"] for row in again[3:]}
