"""The durable job queue: enqueue in the caller's transaction, claim with a lease, run, retry.

- `enqueue` adds a job to the caller's session, so it commits (or not) with the change that
  needs it, and announces it to idle workers when it commits (broker/jobs/wakeup.py).
- `claim` takes the next ready job of the worker's lanes (broker/jobs/lanes.py), trying the
  lanes in the order given (priority order by default: provisioning first, webhook
  deliveries last). Inside a lane the organizations take turns: the job claimed is the oldest
  ready one of the organization served longest ago in that lane (`LaneTurn`), so one
  organization's thousand ready jobs cannot push back another's one. It runs in a transaction
  of its own: the candidate is read `FOR UPDATE OF jobs SKIP LOCKED` on PostgreSQL (under
  SQLite's `BEGIN IMMEDIATE` there is one writer at a time), then leased with a
  compare-and-swap `UPDATE … WHERE id = :id AND <still ready> RETURNING …` (in `run_one`,
  the burial of abandoned jobs shares that transaction). A job whose lease ran out
  (its worker died) is ready again; one whose worker died on its last attempt is buried
  (`bury_abandoned`).
- `run_one` calls the job's handler outside any transaction of the queue, renewing the lease
  from a heartbeat thread, then records the outcome, unless the lease was lost meanwhile
  (another worker took the job over; its result wins). Failures retry with exponential
  backoff and full jitter (`Throttled`: when the provider said); `Reschedule` looks again
  later without spending an attempt; `Permanent` errors and the last attempt make the job
  `dead`, and the kind's dead handler runs in that same transaction. Handlers must be
  idempotent: a crash after their effect but before the outcome is recorded runs them again.
- `schedule_periodic` queues periodic kinds once per time slot, whatever the workers.
- The handler maps (`broker/jobs/handlers.py`) are the seam where a distributed queue could
  drive the same handlers later.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, update
from sqlalchemy.orm import Session

from broker.db import Database, insert
from broker.jobs import crashpoints
from broker.jobs.lanes import LANES, LaneSchedule, lane_of, parse_lanes
from broker.jobs.wakeup import announce
from broker.models import Job, JobState
from broker.models.base import use_clock, utcnow
from broker.models.jobs import BROKER_TENANT, LaneTurn
from providers.base import Permanent, Throttled

log = logging.getLogger("broker.jobs")

LEASE = timedelta(minutes=5)
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0
# However long a cloud asks us to wait, a job is looked at again within a day.
MAX_DELAY_SECONDS = 86400.0


class JobFailed(Exception):
    """Raised by a handler: retrying the job cannot help (it becomes `dead`)."""


class Reschedule(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a handler that must look again later (a VM still booting): the job is queued
    again after `seconds` without spending an attempt."""

    def __init__(self, seconds: float, reason: str = "not ready yet") -> None:
        super().__init__(reason)
        self.seconds = seconds


@dataclass(frozen=True)
class JobContext:
    db: Database
    config: Mapping[str, Any]
    now: Callable[[], datetime] = utcnow
    lease: timedelta = LEASE


Handler = Callable[[JobContext, Job], dict[str, Any] | None]
# Called in the very transaction that makes a job of its kind `dead` (so a crash cannot
# separate the two), with that job and the time.
DeadHandler = Callable[[Session, Job, datetime], None]


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    organization_id: uuid.UUID | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
) -> Job:
    """Add a job to `session` (and wake the workers of its lane when it commits). With
    `dedupe_key`, an unfinished job of that key is returned instead of a second one.

    One `INSERT … ON CONFLICT (dedupe_key) DO NOTHING RETURNING` does it, whether the key is
    taken or not: it costs one statement where a look-up, a savepoint and an insert cost four
    (this runs in every order's `POST`). When another transaction queued the same key
    meanwhile, PostgreSQL makes this insert wait for it, then do nothing: its job is read
    and answered."""
    inserted = _insert_job(
        session,
        Job.dedupe_key,
        kind=kind,
        payload=payload,
        organization_id=organization_id,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
        run_after=utcnow(),
    )
    if inserted is not None:
        return inserted
    existing = session.scalar(select(Job).where(Job.dedupe_key == dedupe_key))
    assert existing is not None, "only a taken dedupe key makes the insert do nothing"
    return existing


def _insert_job(session: Session, unique_key: Any, *, kind: str, **values: Any) -> Job | None:
    """A new queued job of `kind`, announced to its lane's workers when `session` commits; or
    None, inserting nothing, when another job holds the same value of `unique_key` (its
    dedupe or schedule key): `INSERT … ON CONFLICT DO NOTHING RETURNING`, one statement."""
    lane = lane_of(kind)
    job = session.scalars(
        insert(session, Job)
        .values(id=uuid.uuid4(), kind=kind, lane=lane, state=JobState.QUEUED, attempts=0, **values)
        .on_conflict_do_nothing(index_elements=[unique_key])
        .returning(Job)
    ).one_or_none()
    if job is not None:
        announce(session, lane)
    return job


def _ready(now: datetime) -> ColumnElement[bool]:
    """Jobs due at `now`, and those whose lease ran out with attempts left (their worker
    died: they run again)."""
    return or_(
        (Job.state.in_([JobState.QUEUED, JobState.FAILED])) & (Job.run_after <= now),
        (Job.state == JobState.RUNNING)
        & (Job.lease_until < now)
        & (Job.attempts < Job.max_attempts),
    )


def _claim_in_lane(
    session: Session, lane: str, worker: str, now: datetime, lease: timedelta
) -> Job | None:
    """Lease the next job of `lane`: the oldest ready job of the organization whose turn it is
    (served longest ago in this lane, never served first)."""
    ready = _ready(now)
    broker = literal(BROKER_TENANT, LaneTurn.organization_id.type)
    tenant = func.coalesce(Job.organization_id, broker)
    candidate = session.execute(
        select(Job.id, tenant)
        .outerjoin(LaneTurn, and_(LaneTurn.lane == Job.lane, LaneTurn.organization_id == tenant))
        .where(Job.lane == lane, ready)
        .order_by(func.coalesce(LaneTurn.served_seq, 0), Job.run_after, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Job)
    ).first()
    if candidate is None:
        return None
    job_id, organization = candidate
    # Compare and swap: leased only if still ready (always so under SQLite's write lock or the
    # row lock above; kept so that neither guard alone is trusted). RETURNING hands back the
    # leased job, fresh, without reading it again.
    job = session.scalars(
        update(Job)
        .where(Job.id == job_id, ready)
        .values(
            state=JobState.RUNNING,
            worker=worker,
            attempts=Job.attempts + 1,
            lease_until=now + lease,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()
    if job is None:
        return None
    # The organization's turn is now: the lane's next number, computed in the statement.
    served = (
        select(func.coalesce(func.max(LaneTurn.served_seq), 0) + 1)
        .where(LaneTurn.lane == lane)
        .scalar_subquery()
    )
    upsert = insert(session, LaneTurn).values(
        lane=lane, organization_id=organization, served_seq=served, served_at=now
    )
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[LaneTurn.lane, LaneTurn.organization_id],
            set_={"served_seq": upsert.excluded.served_seq, "served_at": now},
        )
    )
    return job


def _lease_next(
    session: Session, worker: str, now: datetime, lease: timedelta, lanes: Sequence[str] | None
) -> Job | None:
    """`claim`, in `session`."""
    for lane in LANES if lanes is None else lanes:
        job = _claim_in_lane(session, lane, worker, now, lease)
        if job is not None:
            session.flush()
            session.expunge(job)
            return job
    return None


def claim(
    db: Database,
    worker: str,
    now: datetime,
    lease: timedelta = LEASE,
    lanes: Sequence[str] | None = None,
) -> Job | None:
    """Lease the next ready job to `worker`, from the first of `lanes` (default: every lane,
    in priority order) that has one; None when there is none.

    A job whose lease ran out had its worker die under it: it runs again, unless that was its
    last attempt (see `bury_abandoned`).
    """
    with db.transaction() as session:
        return _lease_next(session, worker, now, lease, lanes)


def _make_dead(
    session: Session,
    job: Job,
    now: datetime,
    on_dead: Mapping[str, DeadHandler] | None,
) -> None:
    """Mark `job` dead and run its kind's dead handler in the same transaction. A failing
    handler is logged and rolled back on its own: the job is dead all the same."""
    job.state, job.lease_until = JobState.DEAD, None
    job.finished_at, job.dedupe_key = now, None
    handler = (on_dead or {}).get(job.kind)
    if handler is None:
        return
    try:
        with session.begin_nested():
            handler(session, job, now)
    except Exception:
        log.exception("dead-job handler failed", extra={"job_id": str(job.id), "kind": job.kind})


def bury_abandoned(
    db: Database,
    now: datetime,
    on_dead: Mapping[str, DeadHandler] | None = None,
    lanes: Sequence[str] | None = None,
) -> int:
    """Jobs (of `lanes`, default all) whose worker died during their last attempt (a job that
    kills its worker must not loop forever) become `dead`, their dead handlers run."""
    with db.transaction() as session:
        return _bury(session, now, on_dead, lanes)


def _bury(
    session: Session,
    now: datetime,
    on_dead: Mapping[str, DeadHandler] | None,
    lanes: Sequence[str] | None,
) -> int:
    """`bury_abandoned`, in `session`."""
    statement = select(Job).where(
        Job.state == JobState.RUNNING,
        Job.lease_until < now,
        Job.attempts >= Job.max_attempts,
    )
    if lanes is not None:
        statement = statement.where(Job.lane.in_(lanes))
    abandoned = session.scalars(statement.with_for_update(skip_locked=True)).all()
    for job in abandoned:
        job.last_error = "The worker running the last attempt stopped without finishing."
        _make_dead(session, job, now, on_dead)
    return len(abandoned)


@dataclass(frozen=True)
class Periodic:
    """A job kind run every `every` (by time slot: one job per slot, whatever the workers)."""

    kind: str
    every: timedelta


def schedule_periodic(
    db: Database,
    periodic: Iterable[Periodic],
    now: datetime,
    seen: dict[str, str] | None = None,
) -> int:
    """Queue the current slot's job of each periodic kind, unless some worker did already.

    `seen` (kind → slot key) remembers, across calls, the slots known to be queued already, so
    a worker that calls this at every wake-up looks each slot up once, not a few times a
    second."""
    queued = 0
    for item in periodic:
        slot = int(now.timestamp() // item.every.total_seconds())
        key = f"{item.kind}:{slot}"
        if seen is not None and seen.get(item.kind) == key:
            continue
        with db.transaction() as session:
            made = _insert_job(
                session,
                Job.schedule_key,  # another worker may queue this slot at the same moment
                kind=item.kind,
                payload={"slot": slot},
                schedule_key=key,
                max_attempts=3,
                run_after=now,
            )
            if made is not None:
                queued += 1
        if seen is not None:
            seen[item.kind] = key
    return queued


def retry(db: Database, job_id: uuid.UUID, now: datetime) -> Job:
    """Queue a dead (or waiting) job again now, with its attempts reset (operators)."""
    with db.transaction() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"No job {job_id}.")
        if job.state not in (JobState.DEAD, JobState.FAILED):
            raise ValueError(f"Only a dead or failed job can be retried; this one is {job.state}.")
        job.state, job.attempts, job.run_after = JobState.QUEUED, 0, now
        job.finished_at = None
        session.flush()
        announce(session, job.lane)
        session.expunge(job)
        return job


def backoff(attempts: int, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(cap, base · 2^attempts)], but at least a second."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempts)
    return max(1.0, (rng or random).uniform(0, ceiling))


def _finish(
    db: Database,
    job: Job,
    now: datetime,
    *,
    result: dict[str, Any] | None = None,
    error: BaseException | None = None,
    on_dead: Mapping[str, DeadHandler] | None = None,
) -> JobState | None:
    """Record the outcome of `job`'s run, unless its lease was lost meanwhile (None then)."""
    with db.transaction() as session:
        if error is None:
            return _succeed(session, job, now, result or {})
        current = session.get(Job, job.id, with_for_update=True)
        if current is None or current.state != JobState.RUNNING or current.worker != job.worker:
            _lease_lost(job)
            return None
        current.lease_until = None
        if isinstance(error, Reschedule):  # not a failure: the attempt is given back
            current.state, current.attempts = JobState.QUEUED, current.attempts - 1
            current.run_after = now + timedelta(seconds=min(error.seconds, MAX_DELAY_SECONDS))
        else:
            current.last_error = f"{type(error).__name__}: {error}"[:1000]
            if isinstance(error, JobFailed | Permanent) or current.attempts >= current.max_attempts:
                _make_dead(session, current, now, on_dead)
            else:
                current.state = JobState.FAILED
                delay = (
                    error.retry_after if isinstance(error, Throttled) else backoff(current.attempts)
                )
                current.run_after = now + timedelta(seconds=min(max(delay, 0), MAX_DELAY_SECONDS))
        return current.state


def _succeed(session: Session, job: Job, now: datetime, result: dict[str, Any]) -> JobState | None:
    """The outcome of most runs, in one compare-and-swap `UPDATE` (no read, no ORM object):
    succeeded, if `job` is still leased to its worker."""
    done = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.RUNNING, Job.worker == job.worker)
        .values(
            state=JobState.SUCCEEDED,
            result=result,
            last_error=None,
            lease_until=None,
            finished_at=now,
            dedupe_key=None,
        )
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        _lease_lost(job)
        return None
    return JobState.SUCCEEDED


def _lease_lost(job: Job) -> None:
    log.warning("job lease lost", extra={"job_id": str(job.id), "kind": job.kind})


def _heartbeat(context: JobContext, job: Job, stop: threading.Event) -> None:
    """Extend the lease of `job` while its handler runs, so a long job is not taken over."""
    while not stop.wait(context.lease.total_seconds() / 3):
        with context.db.transaction() as session:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.worker == job.worker, Job.state == JobState.RUNNING)
                .values(lease_until=context.now() + context.lease)
            )


def run_one(
    context: JobContext,
    handlers: Mapping[str, Handler],
    worker: str,
    ready_at: datetime | None = None,
    on_dead: Mapping[str, DeadHandler] | None = None,
    lanes: Sequence[str] | None = None,
) -> Job | None:
    """Claim and run one job of `lanes` (tried in that order; default: every lane in priority
    order) ready at `ready_at` (default: now); the job as claimed, or None when nothing was
    ready. Everything it writes is stamped by the context's clock."""
    with use_clock(context.now):
        return _run_one(context, handlers, worker, ready_at, on_dead, lanes)


def _run_one(
    context: JobContext,
    handlers: Mapping[str, Handler],
    worker: str,
    ready_at: datetime | None,
    on_dead: Mapping[str, DeadHandler] | None,
    lanes: Sequence[str] | None,
) -> Job | None:
    # Burial and claim share one transaction: every transaction costs round trips (a pool
    # check-out, BEGIN, COMMIT) and this runs before every job.
    with context.db.transaction() as session:
        _bury(session, context.now(), on_dead, lanes)
        job = _lease_next(session, worker, ready_at or context.now(), context.lease, lanes)
    if job is None:
        return None
    crashpoints.reach("after_claim")
    handler = handlers.get(job.kind)
    fields = {"job_id": str(job.id), "kind": job.kind, "lane": job.lane, "attempt": job.attempts}
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(context, job, stop), daemon=True)
    beating.start()
    try:
        if handler is None:
            raise JobFailed(f"No handler for jobs of kind {job.kind!r}.")
        result = handler(context, job)
    except Exception as error:
        stop.set()
        beating.join()
        state = _finish(context.db, job, context.now(), error=error, on_dead=on_dead)
        if not isinstance(error, Reschedule):
            log.warning(
                "job failed", extra={**fields, "state": state, "error": type(error).__name__}
            )
    else:
        stop.set()
        beating.join()
        state = _finish(context.db, job, context.now(), result=result)
        log.info("job done", extra={**fields, "state": state})
    return job


def run_next(
    context: JobContext,
    handlers: Mapping[str, Handler],
    worker: str,
    schedule: LaneSchedule,
    ready_at: datetime | None = None,
    on_dead: Mapping[str, DeadHandler] | None = None,
) -> Job | None:
    """`run_one` over the lanes of `schedule`, in the order it gives for this claim (the
    worker's loop: priority order, with a turn for lanes kept waiting too long)."""
    order = schedule.order()
    job = run_one(context, handlers, worker, ready_at, on_dead, order)
    schedule.record(order, job.lane if job is not None else None)
    return job


def run_pending(
    context: JobContext,
    handlers: Mapping[str, Handler],
    worker: str = "inline",
    on_dead: Mapping[str, DeadHandler] | None = None,
    lanes: Sequence[str] | None = None,
) -> int:
    """Run the jobs of `lanes` (default: every lane) ready now until none is left (tests, and
    scripts). A job that fails is retried later, not in this call."""
    count, start = 0, context.now()
    schedule = LaneSchedule(parse_lanes(lanes))
    while run_next(context, handlers, worker, schedule, start, on_dead) is not None:
        count += 1
    return count
