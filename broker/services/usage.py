"""The usage ledger: what agencies' machines consumed, from three sources, each counted once.

- The broker meters `instance_hour` itself from each resource's lifecycle events: the exact
  time it ran, cut at every clock hour (so at every period boundary), one record per resource
  and hour. A periodic job closes each hour once, a few minutes after it ends.
- Providers' operators push records (`POST /v1/usage`), for resources placed on their own
  providers only, in batches that are stored whole or not at all.
- Adapters that report usage are polled by a periodic job.

Records are unique per `(provider, source, record_id)`: a replay with the same payload is
answered as a duplicate and counts once, the same id with another payload is a 409. Records
reaching into the future, or older than the lookback window, are refused.

Usage that cannot have happened is refused too (422 naming the record and the rule's `code`):

- `resource_never_made`: the resource never became active (its provisioning failed, or is
  not done): nothing ran, nothing is billed.
- `outside_resource_life`: a pushed record must lie within the resource's life, from when it
  first became active (`activated_at`, when the broker starts metering it too) to when it was
  terminated, give or take `USAGE_LIFE_TOLERANCE_SECONDS` of clock skew at each end.
- `quantity_implausible`: a record, and with it every pushed record of the same resource and
  metric it overlaps, stays within what the resource can consume in the time covered: its
  offer's vCPUs and GiB of RAM per hour, its disk for a share of a month, and configured
  ceilings for egress, requests and a bucket's storage (`billing.metering.hourly_ceiling`).
- `metric_polled`: a metric has one source per resource and period. The adapter contract
  declares *that* an adapter reports usage (`Feature.USAGE`), not which metrics, so the ledger
  decides: a metric the adapter's polling already recorded for a resource in a period cannot
  be pushed for it in that period, and a polled sample of a metric already pushed for the
  resource in that period is skipped. The resource's row is locked while either source
  stores, so the two never both get in, and nothing is billed twice.

Polled samples are held to the same rules (skipped, and counted, when they break one), except
that a sample need only overlap the resource's life: adapters report per clock hour, so the
hour a machine came up in is reported whole; its quantity is bounded by the time within the
life.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, cast

import psycopg
from sqlalchemy import Insert, Select, Table, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, with_expression

from billing.metering import (
    HOUR,
    METRIC_POLLED,
    MICROSECOND,
    QUANTA_PER_UNIT,
    Capacity,
    Ceilings,
    Refusal,
    Span,
    floor_hour,
    gib_months,
    hour_slices,
    hourly_ceiling,
    life_refusal,
    metered_refusal,
    period_bounds,
    period_of,
    quantity_refusal,
    running_intervals,
    sized_intervals,
    to_quanta,
    within_life,
)
from billing.rating import METRICS
from broker import access, db
from broker.auth.identity import Caller
from broker.errors import Conflict, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed
from broker.models import (
    MeterCursor,
    Offer,
    Provider,
    ProviderState,
    Resource,
    ResourceEvent,
    UsageRecord,
    UsageSource,
)
from broker.services import adapters, audit, ledger
from broker.services.pagination import Page, paginate
from providers.base import Feature, Kind, ProviderError, UsageSample

log = logging.getLogger("broker.usage")

METER_JOB = "usage.meter"
POLL_JOB = "usage.poll"
INSTANCE_HOUR = "instance_hour"
STORAGE_GIB_MONTH = "storage_gib_month"
# What providers report (pushed or polled); `instance_hour` is the broker's own, as is a
# volume's `storage_gib_month` (`BROKER_METERED`).
PROVIDER_METRICS = tuple(metric for metric in METRICS if metric != INSTANCE_HOUR)
MAX_BATCH = 1000
# An hour is closed this long after it ends: a state change stamped just before the hour's end
# has committed by then.
METER_GRACE = timedelta(minutes=5)
# How much one meter or poll transaction covers when catching up.
_CHUNK = timedelta(days=1)
_METER_CURSOR = "meter:instance_hour"


def payload_hash(
    resource_id: uuid.UUID, metric: str, quantity: Fraction, start: datetime, end: datetime
) -> str:
    """What a record says, fingerprinted: a replay of its id must say exactly the same."""
    text = "|".join(
        (
            str(resource_id),
            metric,
            str(to_quanta(quantity)),
            start.astimezone(UTC).isoformat(),
            end.astimezone(UTC).isoformat(),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _insert_ignoring_duplicates(
    session: Session, rows: Sequence[dict[str, Any]]
) -> set[tuple[uuid.UUID, str]]:
    """Insert ledger rows; a row whose `(provider, source, record_id)` exists is skipped.
    Returns the `(provider, record_id)` of the rows inserted.

    The rows are written all at once (`db.bulk_insert`) in a savepoint; only when one of them
    exists already (a concurrent push of the same record id, a meter's re-run) are they
    inserted again one statement for all with `ON CONFLICT DO NOTHING RETURNING`, which says
    which got in. That statement costs as much as the rest of a push on PostgreSQL (psycopg
    parses its 13,000 placeholders each time), and the conflict is the rare case."""
    if not rows:
        return set()
    try:
        with session.begin_nested():
            db.bulk_insert(session.connection(), _LEDGER, rows)
    except (IntegrityError, psycopg.IntegrityError):
        pass  # some exist already: find out which below
    else:
        return {(row["provider_id"], row["record_id"]) for row in rows}
    statement: Insert = (
        db.insert(session, _LEDGER)
        .on_conflict_do_nothing(index_elements=["provider_id", "source", "record_id"])
        .returning(_LEDGER.c.provider_id, _LEDGER.c.record_id)
    )
    # One statement compiled once, sent as batched multi-row inserts ("insertmanyvalues").
    return {(provider_id, record_id) for provider_id, record_id in session.execute(statement, rows)}


# The ledger's table, written with Core: the rows are plain dicts, no ORM object is made.
_LEDGER = cast(Table, UsageRecord.__table__)


def _row(
    *,
    provider_id: uuid.UUID,
    source: UsageSource,
    record_id: str,
    resource_id: uuid.UUID,
    organization_id: uuid.UUID,
    metric: str,
    quantity: Fraction,
    start: datetime,
    end: datetime,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "provider_id": provider_id,
        "source": source,
        "record_id": record_id,
        "resource_id": resource_id,
        "organization_id": organization_id,
        "metric": metric,
        "quantity": quantity,
        "start": start,
        "end": end,
        "period": period_of(start),
        "payload_hash": payload_hash(resource_id, metric, quantity, start, end),
        "received_at": now,
    }


def interval_problem(
    start: datetime, end: datetime, now: datetime, config: Mapping[str, Any]
) -> tuple[str, str] | None:
    """Why a record's `[start, end)` is refused (the field to blame, and why), or None."""
    if end <= start:
        return "end", "`end` must be after `start`."
    if end > now + timedelta(seconds=config["USAGE_CLOCK_SKEW_SECONDS"]):
        return "end", "The record ends in the future."
    if start < now - timedelta(days=config["USAGE_LOOKBACK_DAYS"]):
        days = config["USAGE_LOOKBACK_DAYS"]
        return "start", f"The record starts more than {days} days ago, outside the lookback window."
    if end > period_bounds(period_of(start))[1]:
        return "end", "A record must not span two billing periods (months, UTC): split it."
    return None


# Pushed usage --------------------------------------------------------------------------------


# A resource usage is reported of, with what its offer can consume.
Placed = tuple[Resource, Capacity]


@dataclass
class PushResult:
    created: int = 0
    duplicates: int = 0
    records: list[dict[str, str]] = field(default_factory=list)


def ceilings(config: Mapping[str, Any]) -> Ceilings:
    """The plausibility settings, as `billing.metering` takes them."""
    return Ceilings(
        egress_gib_per_hour=Fraction(Decimal(str(config["USAGE_MAX_EGRESS_GIB_PER_HOUR"]))),
        requests_per_hour=Fraction(Decimal(str(config["USAGE_MAX_REQUESTS_PER_HOUR"]))),
        bucket_gib=Fraction(Decimal(str(config["USAGE_MAX_BUCKET_GIB"]))),
        life_tolerance=timedelta(seconds=int(config["USAGE_LIFE_TOLERANCE_SECONDS"])),
    )


def push(
    session: Session,
    caller: Caller,
    records: Sequence[Mapping[str, Any]],
    now: datetime,
    config: Mapping[str, Any],
) -> PushResult:
    """Store a provider's batch: all of it, or (any invalid, implausible or conflicting item)
    none of it."""
    resource_ids = {record["resource_id"] for record in records}
    placed = _with_capacity(
        session,
        select(Resource)
        .join(Provider, Provider.id == Resource.provider_id)
        .where(
            Resource.id.in_(resource_ids),
            Provider.organization_id == caller.organization_id,
        ),
    )
    limits = ceilings(config)
    screen = _Screen(now, config, limits)
    # The same few resources and metrics, a thousand times: each ceiling is worked out once.
    ceilings_of: dict[tuple[uuid.UUID, str], Fraction] = {}
    errors: dict[str, list[str]] = {}
    refused: dict[int, Refusal] = {}
    rows: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    plausible: list[_Checked] = []  # what passed the checks of one record
    for index, record in enumerate(records):
        found = placed.get(record["resource_id"])
        if found is None:
            errors[f"records.{index}.resource_id"] = ["No such resource on your providers."]
            continue
        resource, capacity = found
        start, end, metric = record["start"], record["end"], record["metric"]
        span = Span(start, end, Fraction(record["quantity"]))
        per_hour = ceilings_of.get((resource.id, metric))
        if per_hour is None:
            per_hour = ceilings_of[(resource.id, metric)] = hourly_ceiling(metric, capacity, limits)
        if not screen.passes(resource, capacity, metric, span, per_hour):
            problem = _one_record_problem(
                resource, capacity, metric, span, per_hour, now, config, limits
            )
            if isinstance(problem, Refusal):
                refused[index] = problem
                continue
            if problem is not None:
                field_name, reason = problem
                errors[f"records.{index}.{field_name}"] = [reason]
                continue
        row = _row(
            provider_id=resource.provider_id,
            source=UsageSource.PUSH,
            record_id=record["record_id"],
            resource_id=resource.id,
            organization_id=resource.organization_id,
            metric=metric,
            quantity=span.quantity,
            start=start,
            end=end,
            now=now,
        )
        key = (resource.provider_id, record["record_id"])
        if key in rows and rows[key]["payload_hash"] != row["payload_hash"]:
            errors[f"records.{index}.record_id"] = [
                "The batch holds this record id twice, with different contents."
            ]
            continue
        rows.setdefault(key, row)
        plausible.append(_Checked(index, key, row, span, per_hour))
    refused.update(_ledger_refusals(session, plausible))
    if errors or refused:
        raise _refusal_problem(records, errors, refused)

    stored = _stored_hashes(session, rows)
    _refuse_conflicts(rows, stored)
    fresh = [row for key, row in rows.items() if key not in stored]
    inserted = _insert_ignoring_duplicates(session, fresh)
    raced = {key: row for key, row in rows.items() if key not in stored and key not in inserted}
    if raced:  # another request stored some of them meanwhile: same contents, or a conflict
        _refuse_conflicts(raced, _stored_hashes(session, raced))

    result, reported = PushResult(), set()
    for record in records:
        key = (placed[record["resource_id"]][0].provider_id, record["record_id"])
        is_new = key in inserted and key not in reported
        reported.add(key)
        result.records.append(
            {"record_id": record["record_id"], "status": "created" if is_new else "duplicate"}
        )
        if is_new:
            result.created += 1
        else:
            result.duplicates += 1
    audit.record(
        session,
        caller,
        "usage.push",
        "usage_batch",
        uuid.uuid4(),
        organization_id=caller.organization_id,
        after={"created": result.created, "duplicates": result.duplicates},
    )
    return result


def _one_record_problem(
    resource: Resource,
    capacity: Capacity,
    metric: str,
    span: Span,
    per_hour: Fraction,
    now: datetime,
    config: Mapping[str, Any],
    limits: Ceilings,
) -> tuple[str, str] | Refusal | None:
    """What is wrong with a pushed record on its own: its interval (the field to blame and
    why), a rule refusing it, or nothing."""
    return interval_problem(span.start, span.end, now, config) or (
        metered_refusal(metric, capacity.kind)
        or life_refusal(
            span.start,
            span.end,
            resource.activated_at,
            resource.terminated_at,
            limits.life_tolerance,
        )
        or quantity_refusal(metric, span, per_hour)
    )


class _Screen:
    """A quick look at a pushed record that says "nothing wrong with it alone" only when
    `_one_record_problem` would say so too; otherwise the record is put to the rules, which
    say why (or find nothing after all).

    The rules cost a third of a push's time in the usual case that they pass (period texts
    by `strftime`, quantities as fractions). This looks with the bounds of the batch worked
    out once and whole numbers: the same comparisons, so it lets nothing through that the
    rules refuse (`tests/test_usage_ingestion_fast_path.py` holds it to them)."""

    def __init__(self, now: datetime, config: Mapping[str, Any], limits: Ceilings) -> None:
        # `interval_problem`'s bounds, and `life_refusal`'s tolerance.
        self.latest_end = now + timedelta(seconds=config["USAGE_CLOCK_SKEW_SECONDS"])
        self.earliest_start = now - timedelta(days=config["USAGE_LOOKBACK_DAYS"])
        self.tolerance = limits.life_tolerance
        self._period_ends: dict[tuple[int, int], datetime] = {}

    def passes(
        self, resource: Resource, capacity: Capacity, metric: str, span: Span, per_hour: Fraction
    ) -> bool:
        start, end = span.start, span.end
        if not (self.earliest_start <= start < end <= self.latest_end):
            return False
        if end > self._period_end(start):
            return False
        activated_at, terminated_at = resource.activated_at, resource.terminated_at
        if activated_at is None or start < activated_at - self.tolerance:
            return False
        if terminated_at is not None and end > terminated_at + self.tolerance:
            return False
        if metered_refusal(metric, capacity.kind) is not None:
            return False
        # `quantity <= per_hour * hours_between(start, end)`, cross-multiplied.
        quantity, microseconds = span.quantity, (end - start) // MICROSECOND
        return (
            quantity.numerator * per_hour.denominator * QUANTA_PER_UNIT
            <= per_hour.numerator * microseconds * quantity.denominator
        )

    def _period_end(self, start: datetime) -> datetime:
        """`period_bounds(period_of(start))[1]`, once per month."""
        at = start.astimezone(UTC)
        month = (at.year, at.month)
        end = self._period_ends.get(month)
        if end is None:
            end = self._period_ends[month] = period_bounds(period_of(at))[1]
        return end


@dataclass(frozen=True, slots=True)
class _Checked:
    """A pushed record that passed the checks of one record alone, ready for those that read
    the ledger: its place in the batch, its key, its row, its span and its metric's ceiling."""

    index: int
    key: tuple[uuid.UUID, str]
    row: dict[str, Any]
    span: Span
    per_hour: Fraction


def _with_capacity(session: Session, statement: Select[Any]) -> dict[uuid.UUID, Placed]:
    """The resources `statement` selects, each with what its offer can consume; their rows
    stay locked until the transaction ends, so that the pushes and polls of one resource
    check the ledger and write to it one at a time."""
    return {
        resource.id: (resource, Capacity(kind, vcpu, ram_gib, disk_gib))
        for resource, kind, vcpu, ram_gib, disk_gib in session.execute(
            statement.add_columns(Offer.kind, Offer.vcpu, Offer.ram_gib, Offer.disk_gib)
            .join(Offer, Offer.id == Resource.offer_id)
            .order_by(Resource.id)
            .with_for_update(of=Resource)
        )
    }


def _ledger_refusals(session: Session, plausible: Sequence[_Checked]) -> dict[int, Refusal]:
    """The rules that read the ledger: one source per metric, and quantities that stay
    plausible with the records they overlap."""
    refused: dict[int, Refusal] = {}
    polled = recorded_by(
        session,
        UsageSource.POLL,
        {(item.row["resource_id"], item.row["period"], item.row["metric"]) for item in plausible},
    )
    for item in plausible:
        row = item.row
        if (row["resource_id"], row["period"], row["metric"]) in polled:
            refused[item.index] = Refusal(
                METRIC_POLLED,
                "metric",
                f"The provider's adapter reports {row['metric']} of this resource for "
                f"{row['period']} itself (polled): a metric has one source per resource, "
                "so it is not pushed too (it would be billed twice).",
            )
    unpolled = [item for item in plausible if item.index not in refused]
    batch: dict[tuple[uuid.UUID, str], _Checked] = {}
    for item in unpolled:
        batch.setdefault(item.key, item)
    groups: dict[tuple[uuid.UUID, str], list[tuple[tuple[uuid.UUID, str], Span]]] = {}
    for key, item in batch.items():
        groups.setdefault((item.row["resource_id"], item.row["metric"]), []).append(
            (key, item.span)
        )
    for key, resource_id, metric, span in _pushed_overlapping(
        session, [item.row for item in batch.values()]
    ):
        if key not in batch and (resource_id, metric) in groups:
            groups[(resource_id, metric)].append((key, span))
    timelines = {group_key: _Timeline(group) for group_key, group in groups.items()}
    for item in unpolled:
        metric = item.row["metric"]
        timeline = timelines[(item.row["resource_id"], metric)]
        others = [other for key, other in timeline.overlapping(item.span) if key != item.key]
        if not others:  # alone, it passed `quantity_refusal` already
            continue
        refusal = quantity_refusal(metric, item.span, item.per_hour, others)
        if refusal:
            refused[item.index] = refusal
    return refused


class _Timeline:
    """The records of one resource and metric, by start, to find those overlapping a span."""

    def __init__(self, items: Iterable[tuple[tuple[uuid.UUID, str], Span]]) -> None:
        self.items = sorted(items, key=lambda item: item[1].start)
        self.starts = [span.start for _, span in self.items]
        self.longest = max((span.end - span.start for _, span in self.items), default=HOUR)

    def overlapping(self, span: Span) -> list[tuple[tuple[uuid.UUID, str], Span]]:
        # Only records starting less than the longest one's length before `span` reach it.
        low = bisect.bisect_left(self.starts, span.start - self.longest)
        high = bisect.bisect_left(self.starts, span.end)
        return [(key, item) for key, item in self.items[low:high] if item.end > span.start]


def _pushed_overlapping(
    session: Session, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[tuple[uuid.UUID, str], uuid.UUID, str, Span]]:
    """Pushed records already stored for the resources and metrics of `rows`, overlapping
    their time: `((provider, record_id), resource, metric, span)`."""
    if not rows:
        return []
    first, last = min(row["start"] for row in rows), max(row["end"] for row in rows)
    metrics = {row["metric"] for row in rows}
    periods = {row["period"] for row in rows}
    resource_ids = sorted({row["resource_id"] for row in rows})
    found = []
    for offset in range(0, len(resource_ids), 500):
        for provider_id, record_id, resource_id, metric, quantity, start, end in session.execute(
            select(
                UsageRecord.provider_id,
                UsageRecord.record_id,
                UsageRecord.resource_id,
                UsageRecord.metric,
                UsageRecord.quantity,
                UsageRecord.start,
                UsageRecord.end,
            ).where(
                UsageRecord.source == UsageSource.PUSH,
                UsageRecord.resource_id.in_(resource_ids[offset : offset + 500]),
                UsageRecord.period.in_(periods),
                UsageRecord.metric.in_(metrics),
                UsageRecord.start < last,
                UsageRecord.end > first,
            )
        ):
            span = Span(start, end, quantity)
            found.append(((provider_id, record_id), resource_id, metric, span))
    return found


def recorded_by(
    session: Session, source: UsageSource, keys: set[tuple[uuid.UUID, str, str]]
) -> set[tuple[uuid.UUID, str, str]]:
    """Which of `keys` — `(resource, period, metric)` — the ledger holds records of from
    `source`."""
    if not keys:
        return set()
    resource_ids = sorted({resource_id for resource_id, _, _ in keys})
    periods = {period for _, period, _ in keys}
    metrics = {metric for _, _, metric in keys}
    found: set[tuple[uuid.UUID, str, str]] = set()
    for offset in range(0, len(resource_ids), 500):
        for resource_id, period, metric in session.execute(
            select(UsageRecord.resource_id, UsageRecord.period, UsageRecord.metric)
            .where(
                UsageRecord.source == source,
                UsageRecord.resource_id.in_(resource_ids[offset : offset + 500]),
                UsageRecord.period.in_(periods),
                UsageRecord.metric.in_(metrics),
            )
            .distinct()
        ):
            found.add((resource_id, period, metric))
    return found & keys


def _refusal_problem(
    records: Sequence[Mapping[str, Any]],
    errors: dict[str, list[str]],
    refused: Mapping[int, Refusal],
) -> ValidationFailed:
    """The 422 for a batch with invalid or implausible records. Each record refused by a
    plausibility rule is named in `refused` with the rule's `code`; the problem's own `code`
    is that rule's when it is the only thing wrong with the batch."""
    named = []
    for index in sorted(refused):
        refusal = refused[index]
        field_name = f"records.{index}.{refusal.field}"
        errors[field_name] = [refusal.message]
        named.append(
            {
                "index": index,
                "record_id": records[index]["record_id"],
                "code": refusal.code,
                "field": field_name,
                "detail": refusal.message,
            }
        )
    codes = {refusal.code for refusal in refused.values()}
    only_rules = len(errors) == len(refused)
    code = codes.pop() if only_rules and len(codes) == 1 else None
    if only_rules and len(named) == 1:
        (first,) = named
        detail = (
            f"Record {first['index']} (`{first['record_id']}`) is refused ({first['code']}): "
            f"{first['detail']} Nothing of this batch was stored."
        )
    else:
        detail = (
            "Records of this batch are invalid or cannot have happened: see `errors`"
            + (" and `refused`" if named else "")
            + ". Nothing of this batch was stored."
        )
    if named:
        return ValidationFailed(detail, errors=errors, code=code, refused=named)
    return ValidationFailed(detail, errors=errors, code=code)


def _stored_hashes(
    session: Session, rows: Mapping[tuple[uuid.UUID, str], Any]
) -> dict[tuple[uuid.UUID, str], str]:
    providers = {provider_id for provider_id, _ in rows}
    stored: dict[tuple[uuid.UUID, str], str] = {}
    keys = list(rows)
    for offset in range(0, len(keys), 500):
        record_ids = [record_id for _, record_id in keys[offset : offset + 500]]
        for provider_id, record_id, digest in session.execute(
            select(UsageRecord.provider_id, UsageRecord.record_id, UsageRecord.payload_hash).where(
                UsageRecord.source == UsageSource.PUSH,
                UsageRecord.provider_id.in_(providers),
                db.any_of(session, UsageRecord.record_id, record_ids),
            )
        ):
            if (provider_id, record_id) in rows:
                stored[(provider_id, record_id)] = digest
    return stored


def _refuse_conflicts(
    rows: Mapping[tuple[uuid.UUID, str], dict[str, Any]],
    stored: Mapping[tuple[uuid.UUID, str], str],
) -> None:
    conflicting = sorted(
        record_id
        for key, digest in stored.items()
        if rows[key]["payload_hash"] != digest
        for record_id in [key[1]]
    )
    if conflicting:
        raise Conflict(
            "Usage records with these ids were already received with different contents: "
            + ", ".join(conflicting[:20])
            + (" …" if len(conflicting) > 20 else "")
            + ". Nothing of this batch was stored.",
            code="usage_record_conflict",
        )


# Broker-metered instance hours ---------------------------------------------------------------


def _cursor(session: Session, name: str, start: datetime) -> MeterCursor:
    """The meter's cursor row, locked; created at `start` the first time."""
    session.execute(
        db.insert(session, MeterCursor)
        .values(name=name, until=start)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    cursor = session.scalar(
        select(MeterCursor)
        .where(MeterCursor.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert cursor is not None
    return cursor


def meter(session: Session, since: datetime, until: datetime, now: datetime) -> int:
    """Record what the broker meters itself in `[since, until)` (whole hours): the instance
    hours every machine ran and the GiB-months every volume held (its size at each moment);
    returns how many records were new. Idempotent: a record exists once per resource-hour."""
    candidates = session.execute(
        select(Resource.id, Resource.provider_id, Resource.organization_id, Resource.kind).where(
            Resource.activated_at.is_not(None),
            Resource.activated_at < until,
            or_(Resource.terminated_at.is_(None), Resource.terminated_at > since),
            Resource.kind.in_([Kind.VM.value, Kind.VOLUME.value]),
        )
    ).all()
    rows = []
    for offset in range(0, len(candidates), 500):
        chunk = candidates[offset : offset + 500]
        history = events_of(session, [resource_id for resource_id, *_ in chunk], until)
        for resource_id, provider_id, organization_id, kind in chunk:
            events = history.get(resource_id, [])
            pieces = (
                volume_hours(events, since, until)
                if kind == Kind.VOLUME
                else _machine_hours(events, since, until)
            )
            for hour, start, end, metric, quantity in pieces:
                rows.append(
                    _row(
                        provider_id=provider_id,
                        source=UsageSource.BROKER,
                        record_id=f"{resource_id}/{hour:%Y-%m-%dT%H}",
                        resource_id=resource_id,
                        organization_id=organization_id,
                        metric=metric,
                        quantity=quantity,
                        start=start,
                        end=end,
                        now=now,
                    )
                )
    return len(_insert_ignoring_duplicates(session, rows))


# (hour, start, end, metric, quantity) of one broker-metered record.
_Metered = tuple[datetime, datetime, datetime, str, Fraction]


def _machine_hours(
    events: Sequence[tuple[datetime, str, int | None]], since: datetime, until: datetime
) -> Iterator[_Metered]:
    spans = running_intervals(((at, state) for at, state, _ in events), until)
    for piece in hour_slices(spans, since, until):
        yield piece.hour, piece.start, piece.end, INSTANCE_HOUR, piece.hours


def volume_hours(
    events: Sequence[tuple[datetime, str, int | None]], since: datetime, until: datetime
) -> Iterator[_Metered]:
    """Per clock hour of `[since, until)`, the GiB-months a volume held: each size for the
    time it had it (what the meter records, and what a resource's cost estimates after it)."""
    by_hour: dict[datetime, list[tuple[datetime, datetime, Fraction]]] = {}
    spans = sized_intervals(events, until)
    for size in sorted({size for _, _, size in spans}):
        same = [(start, end) for start, end, held in spans if held == size]
        for piece in hour_slices(same, since, until):
            by_hour.setdefault(piece.hour, []).append((piece.start, piece.end, piece.hours * size))
    for hour in sorted(by_hour):
        pieces = by_hour[hour]
        gib_hours = sum((gib_hours for _, _, gib_hours in pieces), Fraction(0))
        yield (
            hour,
            min(start for start, _, _ in pieces),
            max(end for _, end, _ in pieces),
            STORAGE_GIB_MONTH,
            gib_months(gib_hours),
        )


def events_of(
    session: Session, resource_ids: Sequence[uuid.UUID], until: datetime
) -> dict[uuid.UUID, list[tuple[datetime, str, int | None]]]:
    """Each resource's state changes before `until`, in time order, with the size a volume
    had from each on."""
    history: dict[uuid.UUID, list[tuple[datetime, str, int | None]]] = {}
    for resource_id, at, state, size in session.execute(
        select(
            ResourceEvent.resource_id,
            ResourceEvent.at,
            ResourceEvent.to_state,
            ResourceEvent.size_gib,
        )
        .where(ResourceEvent.resource_id.in_(resource_ids), ResourceEvent.at < until)
        .order_by(ResourceEvent.resource_id, ResourceEvent.seq)
    ):
        history.setdefault(resource_id, []).append((at, state, size))
    return history


def meter_closed_hours(context: JobContext) -> dict[str, Any]:
    """Close every hour that ended more than `METER_GRACE` ago and is not closed yet, a day
    per transaction (the cursor moves with the records it covers)."""
    until = floor_hour(context.now() - METER_GRACE)
    created = 0
    while True:
        with context.db.transaction() as session:
            first_start = session.scalar(select(func.min(Resource.activated_at)))
            start = floor_hour(first_start) if first_start is not None else until
            cursor = _cursor(session, _METER_CURSOR, start)
            if cursor.until >= until:
                break
            chunk_end = min(until, cursor.until + _CHUNK)
            created += meter(session, cursor.until, chunk_end, context.now())
            cursor.until = chunk_end
    return {"records": created, "metered_until": until.isoformat()}


def run_meter_job(context: JobContext, job: Any) -> dict[str, Any]:
    return meter_closed_hours(context)


def metered_until(session: Session) -> datetime | None:
    cursor = session.get(MeterCursor, _METER_CURSOR)
    return cursor.until if cursor is not None else None


# Polled usage --------------------------------------------------------------------------------


def run_poll_job(context: JobContext, job: Any) -> dict[str, Any]:
    """Ask every active provider whose adapter reports usage for the hours since its last
    poll; one provider failing does not stop the others (its cursor stays put)."""
    with context.db.session(read_only=True) as session:
        provider_ids = list(
            session.scalars(select(Provider.id).where(Provider.state == ProviderState.ACTIVE))
        )
    report: dict[str, Any] = {"records": 0, "skipped": 0, "unreachable": []}
    for provider_id in provider_ids:
        try:
            created, skipped = _poll_provider(context, provider_id)
        except (ProviderError, JobFailed) as error:
            report["unreachable"].append(str(provider_id))
            log.warning(
                "usage polling skipped a provider",
                extra={"provider_id": str(provider_id), "error": type(error).__name__},
            )
            continue
        report["records"] += created
        report["skipped"] += skipped
    return report


def _poll_provider(context: JobContext, provider_id: uuid.UUID) -> tuple[int, int]:
    until = floor_hour(context.now() - METER_GRACE)
    created = skipped = 0
    name = f"poll:{provider_id}"
    with context.db.session(read_only=True) as session:
        adapter = adapters.adapter_for_job(session, provider_id, context.config)
        if Feature.USAGE not in adapter.features:
            return 0, 0
        first_start = session.scalar(
            select(func.min(Resource.activated_at)).where(Resource.provider_id == provider_id)
        )
        cursor_row = session.get(MeterCursor, name)
        since = cursor_row.until if cursor_row else floor_hour(first_start or until)
    while since < until:
        chunk_end = min(until, since + _CHUNK)
        samples = list(adapter.usage(since, chunk_end))
        with context.db.transaction() as session:
            cursor = _cursor(session, name, since)
            if cursor.until != since:  # another poll moved it: start again from there
                since = cursor.until
                continue
            new, refused = _store_samples(session, provider_id, samples, context)
            created, skipped = created + new, skipped + refused
            cursor.until = chunk_end
        since = chunk_end
    return created, skipped


def _store_samples(
    session: Session, provider_id: uuid.UUID, samples: Iterable[UsageSample], context: JobContext
) -> tuple[int, int]:
    """Store what the adapter reported; a sample the ledger cannot take (unknown machine,
    unknown metric, bad interval, outside the machine's life, implausible, or of a metric
    pushed for the machine in that period) is skipped and counted."""
    samples = list(samples)
    tokens = {sample.token for sample in samples if sample.token}
    refs = {sample.ref for sample in samples}
    placed = _with_capacity(
        session,
        select(Resource).where(
            Resource.provider_id == provider_id,
            or_(Resource.token.in_(tokens), Resource.provider_ref.in_(refs)),
        ),
    )
    by_token = {resource.token: (resource, capacity) for resource, capacity in placed.values()}
    by_ref = {
        resource.provider_ref: (resource, capacity)
        for resource, capacity in placed.values()
        if resource.provider_ref
    }
    limits = ceilings(context.config)
    now, rows, skipped, implausible = context.now(), [], 0, 0
    for sample in samples:
        found = by_token.get(sample.token or "") or by_ref.get(sample.ref)
        try:
            quantity = Fraction(Decimal(sample.quantity))
            to_quanta(quantity)
        except (ValueError, ArithmeticError):
            quantity = Fraction(-1)
        if (
            found is None
            or sample.metric not in PROVIDER_METRICS
            or quantity < 0
            or interval_problem(sample.start, sample.end, now, context.config)
        ):
            skipped += 1
            continue
        resource, capacity = found
        if metered_refusal(sample.metric, capacity.kind):
            skipped += 1
            continue
        life = within_life(
            sample.start,
            sample.end,
            resource.activated_at,
            resource.terminated_at,
            limits.life_tolerance,
        )
        if life is None or quantity_refusal(
            sample.metric,
            Span(*life, quantity),
            hourly_ceiling(sample.metric, capacity, limits),
        ):
            skipped, implausible = skipped + 1, implausible + 1
            continue
        rows.append(
            _row(
                provider_id=provider_id,
                source=UsageSource.POLL,
                record_id=sample.record_id[:200],
                resource_id=resource.id,
                organization_id=resource.organization_id,
                metric=sample.metric,
                quantity=quantity,
                start=sample.start,
                end=sample.end,
                now=now,
            )
        )
    pushed = recorded_by(
        session,
        UsageSource.PUSH,
        {(row["resource_id"], row["period"], row["metric"]) for row in rows},
    )
    kept = [row for row in rows if (row["resource_id"], row["period"], row["metric"]) not in pushed]
    skipped += len(rows) - len(kept)
    if implausible or len(kept) < len(rows):
        log.warning(
            "polled usage skipped",
            extra={
                "provider_id": str(provider_id),
                "implausible": implausible,
                "pushed_already": len(rows) - len(kept),
            },
        )
    return len(_insert_ignoring_duplicates(session, kept)), skipped


# Reading -------------------------------------------------------------------------------------


def list_usage(
    session: Session,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None,
    resource_id: uuid.UUID | None = None,
    metric: str | None = None,
    start_from: datetime | None = None,
    end_to: datetime | None = None,
) -> Page[UsageRecord]:
    """Records the caller may see, newest first: an agency its own machines', a provider's
    operators those of machines on their providers, finance and admins all."""
    statement = select(UsageRecord).options(
        with_expression(UsageRecord.invoice_id, ledger.billed_by())
    )
    if not access.sees_every_agency(caller):
        if access.is_operator(caller):
            statement = statement.where(
                UsageRecord.provider_id.in_(
                    select(Provider.id).where(Provider.organization_id == caller.organization_id)
                )
            )
        else:
            statement = statement.where(UsageRecord.organization_id == caller.organization_id)
    if resource_id is not None:
        statement = statement.where(UsageRecord.resource_id == resource_id)
    if metric is not None:
        statement = statement.where(UsageRecord.metric == metric)
    if start_from is not None:
        statement = statement.where(UsageRecord.end > start_from)
    if end_to is not None:
        statement = statement.where(UsageRecord.start < end_to)
    return paginate(
        session,
        statement,
        [UsageRecord.start, UsageRecord.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{resource_id}:{metric}:{start_from}:{end_to}",
    )
