"""How an idle worker learns that a job is ready, instead of sleeping a whole poll interval.

- PostgreSQL: `announce` sends `NOTIFY broker_jobs, '<lane>'` in the transaction that queues a
  job, so the notification is delivered when (and only if) that transaction commits; each
  worker `LISTEN`s on a connection of its own (`Listener`) and wakes as soon as one arrives.
  Notifications are hints: a worker still looks at the queue every `poll_seconds` (jobs whose
  retry time comes, leases that run out, a notification lost while its connection was down).
- SQLite has no notifications: an idle worker looks again after 50 ms, then waits twice as
  long each time it finds nothing, up to `poll_seconds` (`Backoff`); a job found resets it.

`waiter_for` picks the one that fits the database.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.db import Database, is_sqlite

log = logging.getLogger("broker.worker")

CHANNEL = "broker_jobs"
# The first wait of an idle SQLite worker; it doubles up to the poll interval.
SHORTEST_WAIT_SECONDS = 0.05
# How often a worker waiting for a notification checks whether it was asked to stop.
STOP_CHECK_SECONDS = 0.25


def announce(session: Session, lane: str) -> None:
    """Wake the listening workers when `session` commits: a job of `lane` is ready. Nothing on
    SQLite. PostgreSQL folds identical notifications of one transaction into one."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, lane)))


class Waiter(Protocol):
    def wait(self, stop: threading.Event, *, found_work: bool) -> None:
        """Wait until a job may be ready, at most the poll interval, or `stop` is set.
        `found_work`: the queue had a job since the last wait."""

    def close(self) -> None: ...


class Backoff:
    """Short waits right after work, longer ones while idle (no notifications: SQLite)."""

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self.delay = min(SHORTEST_WAIT_SECONDS, poll_seconds)

    def next_delay(self, *, found_work: bool) -> float:
        """How long to wait now: the shortest wait after work, else twice the last one (at
        most the poll interval)."""
        shortest = min(SHORTEST_WAIT_SECONDS, self.poll_seconds)
        self.delay = shortest if found_work else min(self.delay * 2, self.poll_seconds)
        return self.delay

    def wait(self, stop: threading.Event, *, found_work: bool) -> None:
        stop.wait(self.next_delay(found_work=found_work))

    def close(self) -> None:
        pass


class Listener:
    """A connection of the worker's own that `LISTEN`s on `CHANNEL` (autocommit, outside the
    pool, so no pooled connection keeps a subscription). When it cannot connect or loses its
    connection, the worker falls back to polling and connects again at its next wait."""

    def __init__(self, db: Database, poll_seconds: float, lanes: frozenset[str]) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.lanes = lanes
        self.connection: Any = None

    def _connect(self) -> Any:
        dialect = self.db.engine.dialect
        args, params = dialect.create_connect_args(self.db.engine.url)
        connection = dialect.loaded_dbapi.connect(*args, **params, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        return connection

    def wait(self, stop: threading.Event, *, found_work: bool) -> None:
        """Until a notification for one of the worker's lanes, the poll interval, or `stop`."""
        try:
            if self.connection is None:
                self.connection = self._connect()
            remaining = self.poll_seconds
            while remaining > 0 and not stop.is_set():
                slice_ = min(remaining, STOP_CHECK_SECONDS)
                if self._notified(slice_):
                    self._discard_pending()
                    return
                remaining -= slice_
        except Exception:
            log.warning("job notifications unavailable; polling", exc_info=True)
            self.close()
            stop.wait(self.poll_seconds)

    def _notified(self, seconds: float) -> bool:
        """Whether a job of the worker's lanes was announced within `seconds`. (The
        generator is closed before anything else uses the connection: it holds its lock.)"""
        notices = self.connection.notifies(timeout=seconds)
        try:
            return any(notice.payload in self.lanes for notice in notices)
        finally:
            notices.close()

    def _discard_pending(self) -> None:
        """Drop the notifications already received: the worker is about to take every ready
        job, theirs too. (Kept, each would wake it again for nothing: a burst of N orders
        would cost N empty looks at the queue.)"""
        for _ in self.connection.notifies(timeout=0):
            pass

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


def waiter_for(db: Database, poll_seconds: float, lanes: frozenset[str]) -> Waiter:
    """`Listener` on PostgreSQL, `Backoff` on SQLite."""
    if is_sqlite(db.engine):
        return Backoff(poll_seconds)
    return Listener(db, poll_seconds, lanes)
