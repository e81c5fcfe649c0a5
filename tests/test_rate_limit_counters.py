"""The rate limits' memory counters (`broker.api.limits.MemoryCounters`): the `limits` library's
memory storage, without the thread it restarted every few requests to expire keys.

Its counting is the library's (`tests/test_rate_limits.py` checks allowances, headers and 429s
through it); here: no request starts a thread, and the keys of windows past their expiry are
still freed, by a sweep inline."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from broker.api.limits import MemoryCounters
from tests.conftest import ApiUser


def test_no_request_starts_a_thread(
    client: FlaskClient, buyer: ApiUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread, *args: Any, **kwargs: Any) -> None:
        started.append(thread)
        start(thread, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for _ in range(10):
        assert client.get("/v1/me", headers=buyer.headers).status_code == 200
        time.sleep(0.012)  # past the library's 10 ms timer, which a count would restart
    assert started == []


def test_the_keys_of_past_windows_are_swept() -> None:
    counters = MemoryCounters()
    counters.incr("past", 60)
    counters.incr("live", 60)
    counters.expirations["past"] = time.time() - 1
    counters.incr("live", 60)  # within the sweep's interval: nothing swept yet
    assert "past" in counters.storage
    counters._next_sweep = time.monotonic()  # the interval is over
    counters.incr("new", 60)
    assert "past" not in counters.storage and "past" not in counters.expirations
    assert counters.get("live") == 2 and counters.get("new") == 1
