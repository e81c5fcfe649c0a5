"""The background worker: runs queued jobs of its lanes, and periodic housekeeping (expired
Idempotency-Key records). It stops cleanly on SIGTERM/SIGINT, finishing the job at hand.

A worker serves every lane unless told otherwise (`broker worker --lanes provisioning,billing`):
it tries them in priority order at each claim, webhook deliveries last, and gives a lane kept
waiting `LANE_BUDGET` claims in a row one turn first (broker/jobs/lanes.py). It queues the
periodic jobs of its own lanes only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from broker.db import Database
from broker.jobs import queue, wakeup
from broker.jobs.handlers import HANDLERS, ON_DEAD, PERIODIC
from broker.jobs.lanes import LaneSchedule, lane_of
from broker.services import idempotency

log = logging.getLogger("broker.worker")


@dataclass
class PeriodicTask:
    name: str
    every_seconds: float
    run: Callable[[Database], int]
    next_run: float = field(default=0.0)


def _purge_idempotency(db: Database) -> int:
    with db.transaction() as session:
        return idempotency.purge_expired(session)


def default_tasks() -> list[PeriodicTask]:
    return [PeriodicTask("purge_idempotency_records", 600, _purge_idempotency)]


def run_worker(
    db: Database,
    stop: threading.Event,
    config: Mapping[str, Any],
    *,
    tasks: list[PeriodicTask] | None = None,
    periodic: list[queue.Periodic] | None = None,
    poll_seconds: float = 1.0,
    lanes: Sequence[str] | None = None,
) -> None:
    """Run until `stop` is set, claiming jobs of `lanes` (default: every lane). A failing task
    is logged and retried at its next period. Idle, it waits for a job to be announced
    (PostgreSQL) or looks again soon, then less and less often (SQLite), at most every
    `poll_seconds` (broker/jobs/wakeup.py)."""
    tasks = default_tasks() if tasks is None else tasks
    name = f"{socket.gethostname()}:{os.getpid()}"
    context = queue.JobContext(
        db, config, lease=timedelta(seconds=float(config.get("JOB_LEASE_SECONDS", 300)))
    )
    schedule = LaneSchedule(lanes)
    own_periodic = [
        item
        for item in (PERIODIC if periodic is None else periodic)
        if lane_of(item.kind) in schedule.lanes
    ]
    log.info(
        "worker started",
        extra={
            "worker": name,
            "lanes": list(schedule.lanes),
            "tasks": [task.name for task in tasks],
        },
    )
    waiter = wakeup.waiter_for(db, poll_seconds, frozenset(schedule.lanes))
    seen_slots: dict[str, str] = {}
    try:
        while not stop.is_set():
            try:
                queue.schedule_periodic(db, own_periodic, context.now(), seen_slots)
            except Exception:
                log.exception("periodic scheduling failed")
            found_work = False
            while not stop.is_set():
                try:
                    if queue.run_next(context, HANDLERS, name, schedule, on_dead=ON_DEAD) is None:
                        break
                except Exception:  # the database went away, say: retry at the next poll
                    log.exception("job queue unavailable")
                    break
                found_work = True
            now = time.monotonic()
            for task in tasks:
                if stop.is_set() or now < task.next_run:
                    continue
                task.next_run = now + task.every_seconds
                try:
                    done = task.run(db)
                    if done:
                        log.info("periodic task ran", extra={"task": task.name, "count": done})
                except Exception:
                    log.exception("periodic task failed", extra={"task": task.name})
            waiter.wait(stop, found_work=found_work)
    finally:
        waiter.close()
    log.info("worker stopped")


def install_signal_handlers(stop: threading.Event) -> None:
    def _handle(signum: int, _frame: FrameType | None) -> None:
        log.info("worker stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
