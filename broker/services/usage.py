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
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import Insert, func, or_, select
from sqlalchemy.orm import Session

from billing.metering import (
    floor_hour,
    hour_slices,
    period_bounds,
    period_of,
    running_intervals,
    to_quanta,
)
from billing.rating import METRICS, rate
from broker import db
from broker.auth.identity import Caller
from broker.errors import Conflict, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed
from broker.models import (
    MeterCursor,
    Order,
    Provider,
    ProviderState,
    Resource,
    ResourceEvent,
    Role,
    UsageRecord,
    UsageSource,
)
from broker.services import adapters, audit, offers
from broker.services.pagination import Page, paginate
from providers.base import Feature, ProviderError, UsageSample

log = logging.getLogger("broker.usage")

METER_JOB = "usage.meter"
POLL_JOB = "usage.poll"
INSTANCE_HOUR = "instance_hour"
# What providers report (pushed or polled); `instance_hour` is the broker's own.
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
    Returns the `(provider, record_id)` of the rows inserted."""
    if not rows:
        return set()
    statement: Insert = (
        db.insert(session, UsageRecord)
        .on_conflict_do_nothing(index_elements=["provider_id", "source", "record_id"])
        .returning(UsageRecord.provider_id, UsageRecord.record_id)
    )
    # One statement compiled once, sent as batched multi-row inserts ("insertmanyvalues").
    return {(row.provider_id, row.record_id) for row in session.execute(statement, rows)}


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
        "invoice_id": None,
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


@dataclass
class PushResult:
    created: int = 0
    duplicates: int = 0
    records: list[dict[str, str]] = field(default_factory=list)


def push(
    session: Session,
    caller: Caller,
    records: Sequence[Mapping[str, Any]],
    now: datetime,
    config: Mapping[str, Any],
) -> PushResult:
    """Store a provider's batch: all of it, or (any invalid or conflicting item) none of it."""
    resource_ids = {record["resource_id"] for record in records}
    placed = {
        resource.id: resource
        for resource in session.scalars(
            select(Resource)
            .join(Provider, Provider.id == Resource.provider_id)
            .where(
                Resource.id.in_(resource_ids),
                Provider.organization_id == caller.organization_id,
            )
        )
    }
    errors: dict[str, list[str]] = {}
    rows: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    for index, record in enumerate(records):
        resource = placed.get(record["resource_id"])
        if resource is None:
            errors[f"records.{index}.resource_id"] = ["No such resource on your providers."]
            continue
        refused = interval_problem(record["start"], record["end"], now, config)
        if refused:
            field_name, reason = refused
            errors[f"records.{index}.{field_name}"] = [reason]
            continue
        row = _row(
            provider_id=resource.provider_id,
            source=UsageSource.PUSH,
            record_id=record["record_id"],
            resource_id=resource.id,
            organization_id=resource.organization_id,
            metric=record["metric"],
            quantity=Fraction(record["quantity"]),
            start=record["start"],
            end=record["end"],
            now=now,
        )
        key = (resource.provider_id, record["record_id"])
        if key in rows and rows[key]["payload_hash"] != row["payload_hash"]:
            errors[f"records.{index}.record_id"] = [
                "The batch holds this record id twice, with different contents."
            ]
        rows.setdefault(key, row)
    if errors:
        raise ValidationFailed(errors=errors)

    stored = _stored_hashes(session, rows)
    _refuse_conflicts(rows, stored)
    fresh = [row for key, row in rows.items() if key not in stored]
    inserted = _insert_ignoring_duplicates(session, fresh)
    raced = {key: row for key, row in rows.items() if key not in stored and key not in inserted}
    if raced:  # another request stored some of them meanwhile: same contents, or a conflict
        _refuse_conflicts(raced, _stored_hashes(session, raced))

    result, reported = PushResult(), set()
    for record in records:
        key = (placed[record["resource_id"]].provider_id, record["record_id"])
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
                UsageRecord.record_id.in_(record_ids),
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
    """Record the instance hours every resource ran in `[since, until)` (whole hours);
    returns how many records were new. Idempotent: a record exists once per resource-hour."""
    candidates = session.execute(
        select(Resource.id, Resource.provider_id, Resource.organization_id).where(
            Resource.activated_at.is_not(None),
            Resource.activated_at < until,
            or_(Resource.terminated_at.is_(None), Resource.terminated_at > since),
        )
    ).all()
    rows = []
    for offset in range(0, len(candidates), 500):
        chunk = candidates[offset : offset + 500]
        history = events_of(session, [resource_id for resource_id, _, _ in chunk], until)
        for resource_id, provider_id, organization_id in chunk:
            spans = running_intervals(history.get(resource_id, []), until)
            for piece in hour_slices(spans, since, until):
                rows.append(
                    _row(
                        provider_id=provider_id,
                        source=UsageSource.BROKER,
                        record_id=f"{resource_id}/{piece.hour:%Y-%m-%dT%H}",
                        resource_id=resource_id,
                        organization_id=organization_id,
                        metric=INSTANCE_HOUR,
                        quantity=piece.hours,
                        start=piece.start,
                        end=piece.end,
                        now=now,
                    )
                )
    return len(_insert_ignoring_duplicates(session, rows))


def events_of(
    session: Session, resource_ids: Sequence[uuid.UUID], until: datetime
) -> dict[uuid.UUID, list[tuple[datetime, str]]]:
    """Each resource's state changes before `until`, in time order."""
    history: dict[uuid.UUID, list[tuple[datetime, str]]] = {}
    for resource_id, at, state in session.execute(
        select(ResourceEvent.resource_id, ResourceEvent.at, ResourceEvent.to_state)
        .where(ResourceEvent.resource_id.in_(resource_ids), ResourceEvent.at < until)
        .order_by(ResourceEvent.resource_id, ResourceEvent.seq)
    ):
        history.setdefault(resource_id, []).append((at, state))
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
    samples = list(samples)
    tokens = {sample.token for sample in samples if sample.token}
    refs = {sample.ref for sample in samples}
    resources = list(
        session.scalars(
            select(Resource).where(
                Resource.provider_id == provider_id,
                or_(Resource.token.in_(tokens), Resource.provider_ref.in_(refs)),
            )
        )
    )
    by_token = {resource.token: resource for resource in resources}
    by_ref = {resource.provider_ref: resource for resource in resources if resource.provider_ref}
    now, rows, skipped = context.now(), [], 0
    for sample in samples:
        resource = by_token.get(sample.token or "") or by_ref.get(sample.ref)
        try:
            quantity = Fraction(Decimal(sample.quantity))
            to_quanta(quantity)
        except (ValueError, ArithmeticError):
            quantity = Fraction(-1)
        if (
            resource is None
            or sample.metric not in PROVIDER_METRICS
            or quantity < 0
            or interval_problem(sample.start, sample.end, now, context.config)
        ):
            skipped += 1
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
    return len(_insert_ignoring_duplicates(session, rows)), skipped


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
    statement = select(UsageRecord)
    if not caller.roles & {Role.FINANCE, Role.ADMIN}:
        if Role.PROVIDER in caller.roles:
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


def cost_this_period(session: Session, resource: Resource, now: datetime) -> dict[str, Any]:
    """What `resource` has cost so far this period, at its order's prices: the ledger, plus the
    running time the meter has not closed yet."""
    period = period_of(now)
    quantities: dict[str, Fraction] = {
        metric: total
        for metric, total in session.execute(
            select(UsageRecord.metric, func.sum(UsageRecord.quantity))
            .where(UsageRecord.resource_id == resource.id, UsageRecord.period == period)
            .group_by(UsageRecord.metric)
        )
    }
    open_since = max(metered_until(session) or period_bounds(period)[0], period_bounds(period)[0])
    if open_since < now:
        spans = running_intervals(((e.at, e.to_state) for e in resource.events), now)
        unmetered = sum((piece.hours for piece in hour_slices(spans, open_since, now)), Fraction(0))
        if unmetered:
            quantities[INSTANCE_HOUR] = quantities.get(INSTANCE_HOUR, Fraction(0)) + unmetered
    order = session.get(Order, resource.order_id)
    prices = {price.metric: price for price in offers.parse_prices(order.prices)} if order else {}
    lines = [
        rate(prices[metric], quantity)
        for metric, quantity in sorted(quantities.items())
        if metric in prices
    ]
    return {
        "period": period,
        "currency": resource.currency,
        "amount": sum((line.amount for line in lines), Decimal(0)),
        "lines": lines,
    }
