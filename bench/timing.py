"""Timing shared by the bench scripts: requests per second and p50/p99 of one call. The
benches' brokers (and the workers they start) invoice as the demo consortium: the seller's
identity is required configuration."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from flask import Flask, jsonify
from flask.testing import FlaskClient

from broker.demo import DEMO_SELLER_ENV

for _variable, _value in DEMO_SELLER_ENV.items():
    os.environ.setdefault(_variable, _value)

SECONDS = 3.0

# Requests are counted against rate limits (that cost is part of what is measured) but the
# limits are out of reach: a bench sends thousands a minute.
COUNTED_NOT_LIMITED = {
    name: "1000000000 per minute"
    for name in (
        "RATE_LIMIT_PER_CLIENT",
        "RATE_LIMIT_PER_ADDRESS",
        "RATE_LIMIT_TOKEN",
        "RATE_LIMIT_EXPENSIVE",
    )
}


def measure(name: str, call: Callable[[], int], *, seconds: float = SECONDS) -> float:
    """Call `call` (which returns an HTTP status, 200 expected) for `seconds`; print and
    return the rate in calls per second."""
    for _ in range(10):  # warm-up
        call()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        status = call()
        latencies.append(time.perf_counter() - started)
        assert status == 200, status
    latencies.sort()
    rate = len(latencies) / sum(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
    print(f"{name:<44} {rate:9.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return rate


def bare_flask_client() -> FlaskClient:
    """A Flask app with one small JSON endpoint, `GET /ping`: the floor on this machine."""
    bare = Flask("bare")

    @bare.get("/ping")
    def ping():  # type: ignore[no-untyped-def]
        return jsonify({"status": "ok"})

    return bare.test_client()
