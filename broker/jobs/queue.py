"""The durable job queue: enqueue in the caller's transaction, claim with a lease, run, retry.

- `enqueue` adds a job to the caller's session, so it commits (or not) with the change that
  needs it.
- `claim` takes the oldest ready job in a transaction of its own: `FOR UPDATE SKIP LOCKED` on
  PostgreSQL, and under SQLite's `BEGIN IMMEDIATE` (one writer at a time) a plain read is
  enough. A job whose lease ran out (its worker died) is ready again.
- `run_one` calls the job's handler outside any transaction of the queue, then records the
  outcome, unless the lease was lost meanwhile (another worker took the job over; its result
  wins). Failures retry with exponential backoff and full jitter; `Permanent` errors, and the
  last attempt, make the job `dead`. Handlers must be idempotent: a crash after their effect
  but before the outcome is recorded runs them again.
- `dispatch` (kind → handler) is the seam where a distributed queue could drive the same
  handlers later.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.db import Database
from broker.models import Job, JobState
from broker.models.base import utcnow
from providers.base import Permanent, Throttled

log = logging.getLogger("broker.jobs")

LEASE = timedelta(minutes=5)
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0
# However long a cloud asks us to wait, a job is looked at again within a day.
MAX_DELAY_SECONDS = 86400.0


class JobFailed(Exception):
    """Raised by a handler: retrying the job cannot help (it becomes `dead`)."""


@dataclass(frozen=True)
class JobContext:
    db: Database
    config: Mapping[str, Any]
    now: Callable[[], datetime] = utcnow


Handler = Callable[[JobContext, Job], dict[str, Any] | None]


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    organization_id: uuid.UUID | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = 8,
) -> Job:
    """Add a job to `session`. With `dedupe_key`, an unfinished job of that key is returned
    instead of a second one."""
    if dedupe_key is not None:
        existing = session.scalar(select(Job).where(Job.dedupe_key == dedupe_key))
        if existing is not None:
            return existing
    job = Job(
        id=uuid.uuid4(),
        kind=kind,
        payload=payload,
        organization_id=organization_id,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
        state=JobState.QUEUED,
        attempts=0,
        run_after=utcnow(),
    )
    try:
        # A savepoint: when another transaction queued the same key meanwhile (PostgreSQL lets
        # both look, then the unique key stops the second insert), answer its job instead.
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        existing = None
        if dedupe_key is not None:
            existing = session.scalar(select(Job).where(Job.dedupe_key == dedupe_key))
        if existing is None:
            raise
        return existing
    return job


def claim(db: Database, worker: str, now: datetime) -> Job | None:
    """Lease the next ready job to `worker`; None when there is none.

    A job whose lease ran out had its worker die under it: it runs again, unless that was its
    last attempt (a job that kills its worker must not loop forever), then it is `dead`.
    """
    ready = or_(
        (Job.state.in_([JobState.QUEUED, JobState.FAILED])) & (Job.run_after <= now),
        (Job.state == JobState.RUNNING) & (Job.lease_until < now),
    )
    with db.transaction() as session:
        while True:
            job = session.scalar(
                select(Job)
                .where(ready)
                .order_by(Job.run_after, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if job is None:
                return None
            if job.state is JobState.RUNNING and job.attempts >= job.max_attempts:
                job.state, job.lease_until = JobState.DEAD, None
                job.finished_at, job.dedupe_key = now, None
                job.last_error = "The worker running the last attempt stopped without finishing."
                session.flush()
                continue
            job.state, job.worker = JobState.RUNNING, worker
            job.attempts += 1
            job.lease_until = now + LEASE
            session.flush()
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
) -> JobState | None:
    with db.transaction() as session:
        current = session.get(Job, job.id, with_for_update=True)
        if current is None or current.state != JobState.RUNNING or current.worker != job.worker:
            log.warning("job lease lost", extra={"job_id": str(job.id), "kind": job.kind})
            return None
        current.lease_until = None
        if error is None:
            current.state, current.result = JobState.SUCCEEDED, result or {}
            current.last_error = None
        else:
            current.last_error = f"{type(error).__name__}: {error}"[:1000]
            permanent = isinstance(error, JobFailed | Permanent)
            if permanent or current.attempts >= current.max_attempts:
                current.state = JobState.DEAD
            else:
                current.state = JobState.FAILED
                delay = (
                    error.retry_after if isinstance(error, Throttled) else backoff(current.attempts)
                )
                current.run_after = now + timedelta(seconds=min(max(delay, 0), MAX_DELAY_SECONDS))
        if current.state in (JobState.SUCCEEDED, JobState.DEAD):
            current.finished_at, current.dedupe_key = now, None
        return current.state


def run_one(
    context: JobContext,
    handlers: Mapping[str, Handler],
    worker: str,
    ready_at: datetime | None = None,
) -> Job | None:
    """Claim and run one job ready at `ready_at` (default: now); the job as claimed, or None
    when nothing was ready."""
    job = claim(context.db, worker, ready_at or context.now())
    if job is None:
        return None
    handler = handlers.get(job.kind)
    fields = {"job_id": str(job.id), "kind": job.kind, "attempt": job.attempts}
    try:
        if handler is None:
            raise JobFailed(f"No handler for jobs of kind {job.kind!r}.")
        result = handler(context, job)
    except Exception as error:
        state = _finish(context.db, job, context.now(), error=error)
        log.warning("job failed", extra={**fields, "state": state, "error": type(error).__name__})
    else:
        state = _finish(context.db, job, context.now(), result=result)
        log.info("job done", extra={**fields, "state": state})
    return job


def run_pending(
    context: JobContext, handlers: Mapping[str, Handler], worker: str = "inline"
) -> int:
    """Run the jobs ready now until none is left (tests, and the worker's inner loop). A job
    that fails is retried later, not in this call."""
    count, start = 0, context.now()
    while run_one(context, handlers, worker, ready_at=start) is not None:
        count += 1
    return count
