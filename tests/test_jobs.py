"""The durable job queue (broker/jobs/queue.py) on the test's real database.

Jobs are enqueued in a transaction of their own, then claimed and run through `claim` and
`run_one` with a fixed clock (`JobContext(now=...)`), so every timestamp the queue writes is
checked exactly: the lease, `run_after` after a failure or a 429, `finished_at`. Handlers
here are small functions that record their calls. The concurrency tests run real threads
against the same database (SQLite's `BEGIN IMMEDIATE`, PostgreSQL's `SKIP LOCKED`).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from broker.db import Database
from broker.jobs import queue
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import (
    BACKOFF_CAP_SECONDS,
    LEASE,
    Handler,
    JobContext,
    JobFailed,
    backoff,
    bury_abandoned,
    claim,
    enqueue,
    run_one,
    run_pending,
)
from broker.jobs.worker import PeriodicTask, run_worker
from broker.models import Job, JobState
from broker.models.base import use_clock
from providers.base import Permanent, SettingsInvalid, Throttled
from tests.helpers import run_concurrently

KIND = "test.echo"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> datetime:
        """A second later (jobs queued in the same instant have no order among them)."""
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    """The broker's clock for the test: what the test enqueues is stamped by it, too."""
    clock = Clock(datetime(2031, 5, 4, 9, 0, tzinfo=UTC))
    with use_clock(clock):
        yield clock


@pytest.fixture
def t0(clock: Clock) -> datetime:
    """The moment the test starts at."""
    return clock.now


@pytest.fixture
def context(db: Database, app: Flask, clock: Clock) -> JobContext:
    return JobContext(db, app.config, now=clock)


def _enqueue(
    db: Database, kind: str = KIND, payload: dict[str, Any] | None = None, **kw: Any
) -> uuid.UUID:
    with db.transaction() as session:
        return enqueue(session, kind, payload or {}, **kw).id


def _job(db: Database, job_id: uuid.UUID) -> Job:
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _count_jobs(db: Database) -> int:
    with db.transaction() as session:
        return len(session.query(Job).all())


def _raising(error: BaseException, calls: list[uuid.UUID] | None = None) -> Handler:
    def handler(_context: JobContext, job: Job) -> dict[str, Any]:
        if calls is not None:
            calls.append(job.id)
        raise error

    return handler


# --- enqueue and claim ------------------------------------------------------------------------


def test_enqueue_adds_a_queued_job(db: Database) -> None:
    before = datetime.now(UTC)
    job_id = _enqueue(db, payload={"provider_id": "p-1"})
    after = datetime.now(UTC)

    job = _job(db, job_id)
    assert (job.kind, job.state, job.payload) == (KIND, JobState.QUEUED, {"provider_id": "p-1"})
    assert job.lane == "other"  # a kind no lane names (tests/test_fair_jobs.py: the lanes)
    assert (job.attempts, job.max_attempts) == (0, 8)
    assert before <= job.run_after <= after
    assert (job.lease_until, job.worker, job.finished_at) == (None, None, None)
    assert (job.result, job.last_error, job.organization_id, job.dedupe_key) == (
        None,
        None,
        None,
        None,
    )


def test_enqueue_is_part_of_the_callers_transaction(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        enqueue(session, KIND, {})
        raise RuntimeError("the change that needed the job failed")

    assert _count_jobs(db) == 0


def test_claim_leases_the_job_to_one_worker(db: Database, t0: datetime) -> None:
    job_id = _enqueue(db)

    claimed = claim(db, "worker-1", t0)

    assert claimed is not None and claimed.id == job_id
    assert (claimed.state, claimed.attempts, claimed.worker) == (JobState.RUNNING, 1, "worker-1")
    assert claimed.lease_until == t0 + LEASE
    stored = _job(db, job_id)
    assert (stored.state, stored.attempts, stored.worker) == (JobState.RUNNING, 1, "worker-1")
    assert stored.lease_until == t0 + LEASE

    # Nobody else gets it while the lease holds, up to its last instant.
    assert claim(db, "worker-2", t0) is None
    assert claim(db, "worker-2", t0 + LEASE) is None
    assert _job(db, job_id).worker == "worker-1"


def test_an_expired_lease_is_taken_over_by_another_worker(db: Database, t0: datetime) -> None:
    job_id = _enqueue(db)
    assert claim(db, "worker-1", t0) is not None
    later = t0 + LEASE + timedelta(seconds=1)

    taken = claim(db, "worker-2", later)

    assert taken is not None and taken.id == job_id
    assert (taken.state, taken.attempts, taken.worker) == (JobState.RUNNING, 2, "worker-2")
    assert taken.lease_until == later + LEASE
    assert claim(db, "worker-3", later) is None


def test_claim_takes_the_oldest_ready_job_and_skips_future_ones(db: Database, clock: Clock) -> None:
    first = _enqueue(db)
    clock.tick()
    second = _enqueue(db)
    now = clock.tick()
    future = _enqueue(db)
    with db.transaction() as session:
        job = session.get(Job, future)
        assert job is not None
        job.run_after = now + timedelta(minutes=1)  # due before the others' leases end

    claimed = [claim(db, f"worker-{i}", now) for i in range(3)]

    assert [job.id if job else None for job in claimed] == [first, second, None]
    later = claim(db, "worker-9", now + timedelta(minutes=1))
    assert later is not None and later.id == future


def test_nothing_to_claim_in_an_empty_queue(db: Database, context: JobContext) -> None:
    assert claim(db, "worker-1", context.now()) is None
    assert run_one(context, {}, "worker-1") is None
    assert run_pending(context, {}) == 0


# --- outcomes ---------------------------------------------------------------------------------


def test_success_stores_the_result(db: Database, context: JobContext, t0: datetime) -> None:
    job_id = _enqueue(db, payload={"n": 2})
    seen: list[tuple[uuid.UUID, dict[str, Any], int, str | None]] = []

    def handler(ctx: JobContext, job: Job) -> dict[str, Any]:
        assert ctx is context
        seen.append((job.id, job.payload, job.attempts, job.worker))
        return {"created": ["a", "b"], "n": job.payload["n"]}

    ran = run_one(context, {KIND: handler}, "worker-1")

    assert ran is not None and ran.id == job_id
    assert seen == [(job_id, {"n": 2}, 1, "worker-1")]
    job = _job(db, job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"created": ["a", "b"], "n": 2}
    assert (job.attempts, job.finished_at, job.lease_until, job.last_error) == (1, t0, None, None)
    # A finished job is never claimed again.
    assert claim(db, "worker-2", t0 + timedelta(days=1)) is None


def test_a_handler_returning_nothing_succeeds_with_an_empty_result(
    db: Database, context: JobContext
) -> None:
    job_id = _enqueue(db)
    run_one(context, {KIND: lambda _ctx, _job: None}, "worker-1")
    job = _job(db, job_id)
    assert (job.state, job.result) == (JobState.SUCCEEDED, {})


def test_a_generic_error_is_retried_later_with_backoff(
    db: Database, context: JobContext, t0: datetime
) -> None:
    job_id = _enqueue(db, dedupe_key="retry-me")
    calls: list[uuid.UUID] = []

    run_one(context, {KIND: _raising(RuntimeError("boom"), calls)}, "worker-1")

    job = _job(db, job_id)
    assert calls == [job_id]
    assert (job.state, job.attempts, job.last_error) == (JobState.FAILED, 1, "RuntimeError: boom")
    # Full jitter over [0, 2·2¹] seconds, at least one second: within (now, now + cap].
    assert t0 + timedelta(seconds=1) <= job.run_after <= t0 + timedelta(seconds=4)
    assert job.run_after <= t0 + timedelta(seconds=BACKOFF_CAP_SECONDS)
    assert (job.finished_at, job.lease_until, job.result) == (None, None, None)
    assert job.dedupe_key == "retry-me"  # still waiting: a new request joins it
    # Not ready before its time.
    assert claim(db, "worker-2", t0) is None
    again = claim(db, "worker-2", job.run_after)
    assert again is not None and again.id == job_id and again.attempts == 2


def test_a_retry_that_succeeds_clears_the_last_error(
    db: Database, context: JobContext, clock: Clock, t0: datetime
) -> None:
    job_id = _enqueue(db)
    outcomes: list[Exception | None] = [RuntimeError("flaky"), None]

    def handler(_ctx: JobContext, job: Job) -> dict[str, Any]:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        return {"attempt": job.attempts}

    run_one(context, {KIND: handler}, "worker-1")
    assert _job(db, job_id).last_error == "RuntimeError: flaky"
    clock.now = t0 + timedelta(hours=2)
    run_one(context, {KIND: handler}, "worker-1")

    job = _job(db, job_id)
    assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 2, {"attempt": 2})
    assert (job.last_error, job.finished_at) == (None, t0 + timedelta(hours=2))


def test_out_of_attempts_the_job_is_dead(
    db: Database, context: JobContext, clock: Clock, t0: datetime
) -> None:
    job_id = _enqueue(db, max_attempts=3, dedupe_key="three-strikes")
    calls: list[uuid.UUID] = []
    handlers = {KIND: _raising(RuntimeError("still broken"), calls)}

    for attempt in (1, 2):
        clock.now = t0 + timedelta(hours=2 * attempt)  # past any backoff
        assert run_one(context, handlers, "worker-1") is not None
        job = _job(db, job_id)
        assert (job.state, job.attempts, job.finished_at) == (JobState.FAILED, attempt, None)
        ceiling = min(BACKOFF_CAP_SECONDS, 2.0 * 2**attempt)
        assert clock.now + timedelta(seconds=1) <= job.run_after
        assert job.run_after <= clock.now + timedelta(seconds=ceiling)

    clock.now = t0 + timedelta(hours=6)
    assert run_one(context, handlers, "worker-1") is not None

    job = _job(db, job_id)
    assert (job.state, job.attempts) == (JobState.DEAD, 3)
    assert job.finished_at == t0 + timedelta(hours=6)
    assert job.last_error == "RuntimeError: still broken"
    assert (job.dedupe_key, job.lease_until) == (None, None)
    assert len(calls) == 3
    # A dead job stays dead.
    clock.now = t0 + timedelta(days=30)
    assert run_one(context, handlers, "worker-1") is None
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("error", "last_error"),
    [
        (JobFailed("The provider no longer exists."), "JobFailed: The provider no longer exists."),
        (Permanent("Quota exceeded.", code="quota_exceeded"), "Permanent: Quota exceeded."),
        (SettingsInvalid("Unknown setting 'x'.", "x"), "SettingsInvalid: Unknown setting 'x'."),
    ],
    ids=["job-failed", "permanent", "settings-invalid"],
)
def test_permanent_errors_make_the_job_dead_at_once(
    db: Database,
    context: JobContext,
    clock: Clock,
    t0: datetime,
    error: Exception,
    last_error: str,
) -> None:
    job_id = _enqueue(db, dedupe_key="permanent")
    calls: list[uuid.UUID] = []
    handlers = {KIND: _raising(error, calls)}

    run_one(context, handlers, "worker-1")

    job = _job(db, job_id)
    assert (job.state, job.attempts, job.max_attempts) == (JobState.DEAD, 1, 8)
    assert (job.last_error, job.finished_at, job.dedupe_key) == (last_error, t0, None)
    clock.now = t0 + timedelta(days=1)
    assert run_one(context, handlers, "worker-1") is None
    assert calls == [job_id]


def test_throttled_waits_exactly_retry_after(
    db: Database, context: JobContext, t0: datetime
) -> None:
    job_id = _enqueue(db)

    run_one(context, {KIND: _raising(Throttled("429 Too Many Requests", 30))}, "worker-1")

    job = _job(db, job_id)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.run_after == t0 + timedelta(seconds=30)
    assert job.last_error == "Throttled: 429 Too Many Requests"
    assert claim(db, "worker-2", t0 + timedelta(seconds=29)) is None
    again = claim(db, "worker-2", t0 + timedelta(seconds=30))
    assert again is not None and again.id == job_id


def test_throttled_on_the_last_attempt_is_dead(
    db: Database, context: JobContext, t0: datetime
) -> None:
    job_id = _enqueue(db, max_attempts=1)
    run_one(context, {KIND: _raising(Throttled("slow down", 30))}, "worker-1")
    job = _job(db, job_id)
    assert (job.state, job.finished_at, job.last_error) == (
        JobState.DEAD,
        t0,
        "Throttled: slow down",
    )


def test_a_job_of_an_unknown_kind_is_dead(db: Database, context: JobContext, t0: datetime) -> None:
    job_id = _enqueue(db, kind="nobody.handles")

    ran = run_one(context, {KIND: lambda _ctx, _job: {}}, "worker-1")

    assert ran is not None and ran.id == job_id
    job = _job(db, job_id)
    assert (job.state, job.attempts, job.finished_at) == (JobState.DEAD, 1, t0)
    assert job.last_error == "JobFailed: No handler for jobs of kind 'nobody.handles'."


def test_the_last_error_is_capped_at_1000_characters(db: Database, context: JobContext) -> None:
    job_id = _enqueue(db)
    run_one(context, {KIND: _raising(JobFailed("x" * 5000))}, "worker-1")
    last_error = _job(db, job_id).last_error
    assert last_error == ("JobFailed: " + "x" * 5000)[:1000]


# --- lease lost -------------------------------------------------------------------------------


def test_a_late_success_after_the_lease_was_taken_over_is_ignored(
    db: Database, app: Flask, context: JobContext, t0: datetime
) -> None:
    job_id = _enqueue(db)
    late = JobContext(db, app.config, now=lambda: t0 + LEASE + timedelta(seconds=1))
    calls: list[str | None] = []

    def handler(_ctx: JobContext, job: Job) -> dict[str, Any]:
        calls.append(job.worker)
        if job.worker == "worker-1":
            # Worker 1 hangs past its lease: worker 2 takes the job over and finishes it.
            assert run_one(late, {KIND: handler}, "worker-2") is not None
        return {"by": job.worker}

    run_one(context, {KIND: handler}, "worker-1")

    assert calls == ["worker-1", "worker-2"]
    job = _job(db, job_id)
    assert (job.state, job.result, job.worker, job.attempts) == (
        JobState.SUCCEEDED,
        {"by": "worker-2"},
        "worker-2",
        2,
    )
    assert job.finished_at == t0 + LEASE + timedelta(seconds=1)


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_late_outcome_while_the_new_worker_runs_is_ignored(
    db: Database, context: JobContext, t0: datetime, outcome: str
) -> None:
    job_id = _enqueue(db)
    later = t0 + LEASE + timedelta(seconds=1)

    def handler(_ctx: JobContext, job: Job) -> dict[str, Any]:
        taken = claim(db, "worker-2", later)  # worker 2 takes over, still running
        assert taken is not None and taken.id == job.id
        if outcome == "failure":
            raise Permanent("would make it dead")
        return {"by": "worker-1"}

    run_one(context, {KIND: handler}, "worker-1")

    job = _job(db, job_id)
    assert (job.state, job.worker, job.attempts) == (JobState.RUNNING, "worker-2", 2)
    assert (job.result, job.last_error, job.finished_at) == (None, None, None)
    assert job.lease_until == later + LEASE


def test_a_job_whose_worker_keeps_dying_is_dead_after_max_attempts(
    db: Database, t0: datetime
) -> None:
    job_id = _enqueue(db, max_attempts=2)
    step = LEASE + timedelta(seconds=1)
    assert claim(db, "worker-1", t0) is not None  # attempt 1: the worker dies
    retaken = claim(db, "worker-2", t0 + step)  # attempt 2, the last: it dies too
    assert retaken is not None and retaken.attempts == 2

    assert claim(db, "worker-3", t0 + 2 * step) is None  # never a third attempt
    buried: list[uuid.UUID] = []
    assert bury_abandoned(db, t0 + 2 * step, {KIND: lambda _s, job, _t: buried.append(job.id)}) == 1

    job = _job(db, job_id)
    assert (job.attempts, job.state) == (2, JobState.DEAD)
    assert job.last_error == "The worker running the last attempt stopped without finishing."
    assert buried == [job_id]  # its dead handler ran


def test_an_absurd_retry_after_does_not_wedge_the_job(
    db: Database, context: JobContext, t0: datetime
) -> None:
    job_id = _enqueue(db)

    run_one(context, {KIND: _raising(Throttled("slow down", 1e12))}, "worker-1")

    job = _job(db, job_id)
    assert job.state in (JobState.FAILED, JobState.DEAD)
    assert (job.lease_until, job.last_error) == (None, "Throttled: slow down")


# --- dedupe -----------------------------------------------------------------------------------


def test_dedupe_key_returns_the_waiting_job(
    db: Database, context: JobContext, clock: Clock, t0: datetime
) -> None:
    first = _enqueue(db, dedupe_key="sync:p1")
    clock.tick()  # the first job is the oldest, run first below
    assert _enqueue(db, dedupe_key="sync:p1") == first  # queued
    assert _enqueue(db, dedupe_key="sync:p2") != first  # another key
    assert _enqueue(db) != _enqueue(db)  # no key: always a new job

    # Failed and waiting for its retry: still the same job.
    run_one(context, {KIND: _raising(RuntimeError("transient"))}, "worker-1")
    assert _job(db, first).state is JobState.FAILED
    assert _enqueue(db, dedupe_key="sync:p1") == first
    assert _count_jobs(db) == 4


def test_dedupe_key_is_held_while_running(db: Database, t0: datetime) -> None:
    first = _enqueue(db, dedupe_key="sync:p1")
    assert claim(db, "worker-1", t0) is not None
    assert _enqueue(db, dedupe_key="sync:p1") == first


@pytest.mark.parametrize("outcome", ["succeeded", "dead"])
def test_dedupe_key_is_freed_when_the_job_finishes(
    db: Database, context: JobContext, outcome: str
) -> None:
    first = _enqueue(db, dedupe_key="sync:p1")
    handler = (lambda _c, _j: {}) if outcome == "succeeded" else _raising(JobFailed("no"))

    run_pending(context, {KIND: handler})

    finished = _job(db, first)
    assert (finished.state.value, finished.dedupe_key) == (outcome, None)
    second = _enqueue(db, dedupe_key="sync:p1")
    assert second != first
    job = _job(db, second)
    assert (job.state, job.dedupe_key, job.attempts) == (JobState.QUEUED, "sync:p1", 0)
    assert _enqueue(db, dedupe_key="sync:p1") == second


def test_two_transactions_enqueueing_one_key_at_once_share_the_job(db: Database) -> None:
    """The second enqueue starts while the first one's transaction is still open."""
    outcome: list[Any] = []

    def second() -> None:
        try:
            outcome.append(_enqueue(db, dedupe_key="race"))
        except Exception as error:  # reported below
            outcome.append(error)

    with db.transaction() as session:
        first = enqueue(session, KIND, {}, dedupe_key="race").id
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)  # it now waits on this transaction
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert outcome == [first]
    assert _count_jobs(db) == 1


# --- run_pending ------------------------------------------------------------------------------


def test_run_pending_runs_every_ready_job_once(
    db: Database, context: JobContext, t0: datetime
) -> None:
    ids = [_enqueue(db, payload={"i": i}) for i in range(3)]
    failing = _enqueue(db, kind="test.fails")
    calls: list[uuid.UUID] = []

    def ok(_ctx: JobContext, job: Job) -> dict[str, Any]:
        calls.append(job.id)
        return {"i": job.payload["i"]}

    assert run_pending(context, {KIND: ok, "test.fails": _raising(RuntimeError("x"))}) == 4

    assert sorted(calls) == sorted(ids)  # the failed one is retried later, not in this call
    assert [_job(db, i).result for i in ids] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert _job(db, failing).state is JobState.FAILED


# --- backoff ----------------------------------------------------------------------------------


class _Edge(random.Random):
    """A generator that always draws the top (or the bottom) of the range."""

    def __init__(self, top: bool) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


@pytest.mark.parametrize(
    ("attempts", "ceiling"),
    [(1, 4.0), (2, 8.0), (5, 64.0), (10, 2048.0), (11, 3600.0), (30, 3600.0)],
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempts: int, ceiling: float) -> None:
    assert backoff(attempts, _Edge(top=True)) == ceiling
    assert backoff(attempts, _Edge(top=False)) == 1.0


def test_backoff_is_bounded_and_grows_with_attempts() -> None:
    rng = random.Random(20240501)
    means = []
    for attempts in range(1, 16):
        draws = [backoff(attempts, rng) for _ in range(300)]
        ceiling = min(BACKOFF_CAP_SECONDS, 2.0 * 2**attempts)
        assert all(1.0 <= draw <= ceiling for draw in draws), attempts
        means.append(sum(draws) / len(draws))
    # Uniform over [0, ceiling]: the mean is about half the ceiling, so it doubles each time
    # until the cap, then stays put.
    assert all(later > earlier for earlier, later in zip(means[:10], means[1:11], strict=True))
    assert 1500 < means[-1] < 2100
    assert max(backoff(50, rng) for _ in range(1000)) <= BACKOFF_CAP_SECONDS


def test_backoff_is_reproducible_with_a_seed() -> None:
    draws = [backoff(a, random.Random(7)) for a in range(1, 10)]
    assert draws == [backoff(a, random.Random(7)) for a in range(1, 10)]


# --- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [2, 4])
def test_concurrent_workers_run_each_job_exactly_once(
    db: Database, app: Flask, threads: int
) -> None:
    count = 24
    ids = [_enqueue(db, payload={"i": i}) for i in range(count)]
    runs: Counter[uuid.UUID] = Counter()
    workers: dict[uuid.UUID, str | None] = {}
    lock = threading.Lock()
    context = JobContext(db, app.config)

    def handler(_ctx: JobContext, job: Job) -> dict[str, Any]:
        with lock:
            runs[job.id] += 1
            workers[job.id] = job.worker
        time.sleep(0.005)  # let the other workers claim meanwhile
        return {"i": job.payload["i"]}

    def work(index: int) -> int:
        done = 0
        while run_one(context, {KIND: handler}, f"worker-{index}") is not None:
            done += 1
        return done

    done = run_concurrently(threads, work)

    assert sum(done) == count
    assert runs == Counter(dict.fromkeys(ids, 1))
    for i, job_id in enumerate(ids):
        job = _job(db, job_id)
        assert (job.state, job.attempts, job.result) == (JobState.SUCCEEDED, 1, {"i": i})
        assert job.worker == workers[job_id]
    assert set(workers.values()) <= {f"worker-{i}" for i in range(threads)}


def test_concurrent_claims_of_one_job_lease_it_once(db: Database, t0: datetime) -> None:
    job_id = _enqueue(db)

    claimed = run_concurrently(4, lambda i: claim(db, f"worker-{i}", t0))

    winners = [job for job in claimed if job is not None]
    assert len(winners) == 1 and winners[0].id == job_id
    stored = _job(db, job_id)
    assert (stored.attempts, stored.worker) == (1, winners[0].worker)


# --- the worker loop --------------------------------------------------------------------------


@pytest.fixture
def worker_thread(db: Database, app: Flask) -> Iterator[Callable[..., threading.Thread]]:
    stop = threading.Event()
    started: list[threading.Thread] = []

    def start(**kwargs: Any) -> threading.Thread:
        kwargs.setdefault("tasks", [])
        thread = threading.Thread(
            target=run_worker, args=(db, stop, app.config), kwargs={"poll_seconds": 0.05, **kwargs}
        )
        thread.start()
        started.append(thread)
        return thread

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    stop.set()
    for thread in started:
        thread.join(timeout=10)


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_the_worker_runs_queued_jobs_until_stopped(
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    worker_thread: Callable[..., threading.Thread],
) -> None:
    calls: list[uuid.UUID] = []

    def handler(_ctx: JobContext, job: Job) -> dict[str, Any]:
        calls.append(job.id)
        if job.payload.get("fail"):
            raise RuntimeError("a broken job does not stop the worker")
        return {"ran": True}

    monkeypatch.setitem(HANDLERS, KIND, handler)
    failing = _enqueue(db, payload={"fail": True})
    thread = worker_thread()

    _wait_for(lambda: _job(db, failing).state is JobState.FAILED)
    # A job queued while the worker runs is picked up at its next poll.
    job_id = _enqueue(db)
    _wait_for(lambda: _job(db, job_id).state is JobState.SUCCEEDED)

    job = _job(db, job_id)
    assert (job.result, job.attempts) == ({"ran": True}, 1)
    assert job.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert thread.is_alive()
    worker_thread.stop.set()  # type: ignore[attr-defined]
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert calls == [failing, job_id]


def test_the_worker_runs_periodic_tasks_and_survives_their_errors(
    db: Database, worker_thread: Callable[..., threading.Thread]
) -> None:
    counted: list[Database] = []

    def broken(_db: Database) -> int:
        counted.append(_db)
        raise RuntimeError("task failed")

    def counting(database: Database) -> int:
        counted.append(database)
        return 0

    tasks = [PeriodicTask("broken", 3600, broken), PeriodicTask("counting", 3600, counting)]
    thread = worker_thread(tasks=tasks)

    _wait_for(lambda: len(counted) == 2)
    time.sleep(0.2)  # several polls: a task due every hour does not run again
    assert counted == [db, db]
    assert thread.is_alive()
    worker_thread.stop.set()  # type: ignore[attr-defined]
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_the_queue_module_uses_the_fixed_clock_of_its_context(
    db: Database, app: Flask, t0: datetime
) -> None:
    """`run_one` without `ready_at` claims at `context.now()`: a job due later is not ready."""
    job_id = _enqueue(db)
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.run_after = t0 + timedelta(seconds=10)
    early = JobContext(db, app.config, now=lambda: t0 + timedelta(seconds=9))
    on_time = JobContext(db, app.config, now=lambda: t0 + timedelta(seconds=10))

    assert queue.run_one(early, {KIND: lambda _c, _j: {}}, "worker-1") is None
    assert queue.run_one(on_time, {KIND: lambda _c, _j: {}}, "worker-1") is not None
    assert _job(db, job_id).finished_at == t0 + timedelta(seconds=10)
