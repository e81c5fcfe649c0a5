"""Waking idle workers (broker/jobs/wakeup.py), and the queue's one-statement paths pinned to
the ORM code they replaced (broker/jobs/queue.py: `enqueue`, the lease in `claim`, a success
recorded by `_finish`).

The PostgreSQL tests listen on a real connection: a job queued in a committed transaction is
announced to the workers of its lane, one rolled back is not. No test measures time: a woken
worker is told apart from a polling one by a poll interval of an hour.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import inspect

from broker.db import Database
from broker.jobs import queue, wakeup
from broker.jobs.handlers import HANDLERS
from broker.jobs.lanes import lane_of
from broker.jobs.queue import JobContext, claim, enqueue
from broker.jobs.worker import run_worker
from broker.models import Job, JobState, OrganizationKind
from broker.models.base import use_clock
from broker.services import organizations

KIND = "test.echo"  # lane `other`
DELIVERY = "webhook.deliver"  # lane `webhooks`
T0 = datetime(2031, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def on_postgresql(db: Database) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("notifications are PostgreSQL's; SQLite workers poll with a backoff")


@pytest.fixture
def listener(db: Database, on_postgresql: None) -> Iterator[wakeup.Listener]:
    listening = wakeup.Listener(db, poll_seconds=3600, lanes=frozenset({lane_of(KIND)}))
    listening.connection = listening._connect()
    yield listening
    listening.close()


def _columns(job: Job) -> dict[str, Any]:
    return {column.key: getattr(job, column.key) for column in inspect(Job).column_attrs}


def _enqueue(db: Database, kind: str = KIND, **kw: Any) -> uuid.UUID:
    with db.transaction() as session:
        return enqueue(session, kind, {"n": 1}, **kw).id


# --- SQLite: the backoff ----------------------------------------------------------------------


def test_an_idle_sqlite_worker_waits_longer_and_longer_up_to_its_poll_interval() -> None:
    backoff = wakeup.Backoff(poll_seconds=1.0)
    idle = [backoff.next_delay(found_work=False) for _ in range(6)]
    assert idle == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.next_delay(found_work=True) == wakeup.SHORTEST_WAIT_SECONDS
    assert backoff.next_delay(found_work=False) == 0.1


def test_the_backoff_never_waits_longer_than_a_short_poll_interval() -> None:
    backoff = wakeup.Backoff(poll_seconds=0.01)
    assert {backoff.next_delay(found_work=work) for work in (True, False, False)} == {0.01}


def test_the_waiter_fits_the_database(db: Database) -> None:
    waiter = wakeup.waiter_for(db, 1.0, frozenset({"other"}))
    expected = wakeup.Backoff if db.engine.dialect.name == "sqlite" else wakeup.Listener
    assert isinstance(waiter, expected)
    waiter.close()


# --- PostgreSQL: LISTEN / NOTIFY --------------------------------------------------------------


def test_a_committed_job_is_announced_to_its_lane(db: Database, listener: wakeup.Listener) -> None:
    _enqueue(db)
    assert listener._notified(5)


def test_a_rolled_back_job_is_never_announced(db: Database, listener: wakeup.Listener) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        enqueue(session, KIND, {})
        raise RuntimeError("the business change failed")
    assert not listener._notified(0.2)


def test_a_job_of_another_lane_does_not_wake_the_worker(
    db: Database, listener: wakeup.Listener
) -> None:
    _enqueue(db, DELIVERY)
    assert not listener._notified(0.2)


def test_a_wait_after_a_burst_drops_the_burst_and_can_wait_again(
    db: Database, listener: wakeup.Listener
) -> None:
    """A burst of announcements wakes the worker once (it then takes every ready job): the
    rest are dropped, and the connection is free for the next wait (its notification
    generator holds the connection's lock: a second one opened inside it waited forever)."""
    for _ in range(3):
        _enqueue(db)
    stop = threading.Event()
    for _round in range(2):
        waiting = threading.Thread(target=listener.wait, args=(stop,), kwargs={"found_work": True})
        waiting.start()
        waiting.join(timeout=30)
        assert not waiting.is_alive(), "the announced job did not wake the worker"
        assert not listener._notified(0)
        _enqueue(db)


def test_a_worker_stops_while_waiting_for_notifications(
    db: Database, listener: wakeup.Listener
) -> None:
    stop = threading.Event()
    waiting = threading.Thread(target=listener.wait, args=(stop,), kwargs={"found_work": False})
    waiting.start()
    stop.set()
    waiting.join(timeout=30)
    assert not waiting.is_alive()


def test_a_listener_without_its_database_falls_back_to_polling(
    db: Database, on_postgresql: None
) -> None:
    broken = wakeup.Listener(db, poll_seconds=0.01, lanes=frozenset({"other"}))
    broken._connect = lambda: (_ for _ in ()).throw(OSError("connection refused"))  # type: ignore[method-assign]
    broken.wait(threading.Event(), found_work=False)  # logs, sleeps a poll interval, no raise
    assert broken.connection is None


def test_the_worker_runs_an_announced_job_without_waiting_its_poll_interval(
    db: Database, app: Flask, on_postgresql: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = threading.Event()

    def handler(_context: JobContext, _job: Job) -> dict[str, Any]:
        done.set()
        return {}

    monkeypatch.setitem(HANDLERS, KIND, handler)
    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker,
        args=(db, stop, app.config),
        kwargs={"poll_seconds": 3600, "tasks": [], "periodic": []},
    )
    worker.start()
    try:
        time.sleep(0.3)  # let it find the queue empty and start waiting (an hour, unless woken)
        _enqueue(db)
        assert done.wait(timeout=30), "the worker slept through the announcement"
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not worker.is_alive()


# --- the one-statement paths, pinned to the ORM code they replaced ----------------------------


def _enqueue_as_before(session: Any, kind: str, payload: dict[str, Any], **kw: Any) -> Job:
    """The ORM insert `enqueue` made before (for a key not taken)."""
    job = Job(
        id=uuid.uuid4(),
        kind=kind,
        lane=lane_of(kind),
        payload=payload,
        organization_id=kw.get("organization_id"),
        dedupe_key=kw.get("dedupe_key"),
        max_attempts=kw.get("max_attempts", 8),
        state=JobState.QUEUED,
        attempts=0,
        run_after=T0,
    )
    session.add(job)
    session.flush()
    return job


@pytest.mark.parametrize(
    "kind, payload, options",
    [
        (KIND, {}, {}),
        (
            "order.provision",
            {"order_id": "x"},
            {"dedupe_key": "order.provision:x", "max_attempts": 20},
        ),
        (DELIVERY, {"nested": {"a": [1, "b"]}}, {"organization": True, "max_attempts": 3}),
        ("billing.run", {"billing_run_id": "y"}, {"organization": True, "dedupe_key": "b:y"}),
    ],
)
def test_enqueue_stores_the_row_the_orm_insert_stored(
    db: Database, kind: str, payload: dict[str, Any], options: dict[str, Any]
) -> None:
    organization_id = None
    if options.pop("organization", False):
        with db.transaction() as session:
            organization_id = organizations.create_organization(
                session, None, name=f"Agence {uuid.uuid4().hex[:6]}", kind=OrganizationKind.AGENCY
            ).id
    with use_clock(lambda: T0):
        with db.transaction() as session:
            new = enqueue(session, kind, payload, organization_id=organization_id, **options)
            new_id = new.id
            assert new in session  # persistent, like the ORM insert's
        if "dedupe_key" in options:
            options["dedupe_key"] += ":before"
        with db.transaction() as session:
            old_id = _enqueue_as_before(
                session, kind, payload, organization_id=organization_id, **options
            ).id
    with db.session(read_only=True) as session:
        new_row = _columns(session.get_one(Job, new_id))
        old_row = _columns(session.get_one(Job, old_id))
    for differs in ("id", "dedupe_key"):
        new_row.pop(differs), old_row.pop(differs)
    assert new_row == old_row


def test_enqueue_answers_the_job_holding_the_key(db: Database) -> None:
    with db.transaction() as session:
        first = enqueue(session, KIND, {"n": 1}, dedupe_key="same")
        again = enqueue(session, KIND, {"n": 2}, dedupe_key="same")
        assert again is first and again.payload == {"n": 1}


@pytest.fixture
def context(db: Database, app: Flask) -> Iterator[JobContext]:
    with use_clock(lambda: T0):
        yield JobContext(db, app.config, now=lambda: T0)


def test_the_claimed_job_is_the_row_as_leased(db: Database, context: JobContext) -> None:
    with use_clock(lambda: T0):
        job_id = _enqueue(db, dedupe_key="k")
    claimed = claim(db, "worker-1", T0)
    assert claimed is not None and claimed.id == job_id
    with db.session(read_only=True) as session:
        stored = _columns(session.get_one(Job, job_id))
    assert _columns(claimed) == stored
    assert (claimed.state, claimed.attempts, claimed.worker) == (JobState.RUNNING, 1, "worker-1")
    assert claimed.lease_until == T0 + queue.LEASE


def _succeed_as_before(db: Database, job: Job, now: datetime, result: dict[str, Any]) -> None:
    """The ORM path `_finish` took on success before."""
    with db.transaction() as session:
        current = session.get_one(Job, job.id, with_for_update=True)
        assert current.state == JobState.RUNNING and current.worker == job.worker
        current.lease_until = None
        current.state, current.result = JobState.SUCCEEDED, result
        current.last_error = None
        current.finished_at, current.dedupe_key = now, None


@pytest.mark.parametrize("result", [{}, {"order": "completed", "machines": 2}])
def test_a_success_is_recorded_as_the_orm_path_recorded_it(
    db: Database, context: JobContext, result: dict[str, Any]
) -> None:
    later = T0 + timedelta(minutes=3)
    with use_clock(lambda: T0):
        ids = [_enqueue(db, dedupe_key="new"), _enqueue(db, dedupe_key="old")]
        # One attempt failed before: the success must clear its error.
        with db.transaction() as session:
            for job_id in ids:
                session.get_one(Job, job_id).last_error = "RuntimeError: the first attempt failed"
    claimed = {job.id: job for job in (claim(db, "w-1", T0), claim(db, "w-2", T0)) if job}
    new, old = claimed[ids[0]], claimed[ids[1]]
    with use_clock(lambda: later):
        assert queue._finish(db, new, later, result=result) is JobState.SUCCEEDED
        _succeed_as_before(db, old, later, result)
    with db.session(read_only=True) as session:
        new_row = _columns(session.get_one(Job, new.id))
        old_row = _columns(session.get_one(Job, old.id))
    for differs in ("id", "worker", "created_at"):
        new_row.pop(differs), old_row.pop(differs)
    assert new_row == old_row
    assert new_row["state"] is JobState.SUCCEEDED and new_row["result"] == result


def test_a_success_after_the_lease_was_taken_over_changes_nothing(
    db: Database, context: JobContext
) -> None:
    with use_clock(lambda: T0):
        job_id = _enqueue(db)
    first = claim(db, "worker-1", T0)
    assert first is not None
    second = claim(db, "worker-2", T0 + queue.LEASE + timedelta(seconds=1))
    assert second is not None
    assert queue._finish(db, first, T0, result={"late": True}) is None
    with db.session(read_only=True) as session:
        stored = session.get_one(Job, job_id)
        assert (stored.state, stored.worker, stored.result) == (JobState.RUNNING, "worker-2", None)
