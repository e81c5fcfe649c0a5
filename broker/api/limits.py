"""Rate limits: per API client, per address, stricter on the token endpoint and on expensive
operations (searches, exports, billing runs).

The `limits` library (flask-limiter's engine) keeps the counters — in memory for `make run`;
in Redis, shared by every process and host, in production (`BROKER_RATE_LIMIT_STORAGE_URI=
redis://…`) — with its sliding-window counters (constant work per request, whatever the limit).
The checks are made here, where their keys are known: the address before any view, the client
only once its token is verified (`Blueprint.auth`), so a forged token cannot spend someone
else's allowance. flask-limiter itself is not used: every limit is one of these explicit
charges, and its own hooks (before, after and teardown of every request, looking for limits
declared on routes, of which there are none) cost about 4 % of a profiled `GET /v1/me`.

A refused request is 429 problem+json with `Retry-After`; every answer carries the IETF
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds) headers of the
tightest limit it was counted against.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from broker.errors import BrokerError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

# Routes a load balancer or monitoring calls: never limited.
UNLIMITED_ENDPOINTS = frozenset({"operations.healthz", "operations.readyz", "operations.metrics"})
TOKEN_ENDPOINT = "oauth.issue_token"


class RateLimited(BrokerError):
    status, code, title = 429, "rate_limited", "Too many requests"


class MemoryCounters(MemoryStorage):
    """`limits`' memory storage (`memory://`) without its expiry thread.

    The library's storage restarts a 10 ms `threading.Timer` on a count whenever the last one
    has run out: about every fifth request started a thread, and `Thread.start` waits until
    the thread runs, a hand-off of the GIL (11 % of a profiled `GET /v1/me` on a busy machine,
    the more the busier). Its counters expire when read anyway (`get` drops a key past its
    expiry); the timer only frees the keys of windows nobody reads again. Here that sweep runs
    inline, on a count, at most once every `SWEEP_SECONDS`, by whichever thread comes first."""

    SWEEP_SECONDS = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one the library's constructor starts
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS
        self._sweeping = threading.Lock()

    def _MemoryStorage__schedule_expiry(self) -> None:
        """The library's private hook, called on every count: where it starts its timer."""
        now = time.monotonic()
        if now < self._next_sweep or not self._sweeping.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + self.SWEEP_SECONDS
            for key in list(self.expirations):
                if self.expirations.get(key, math.inf) <= time.time():
                    self.clear(key)
        finally:
            self._sweeping.release()


def counters(uri: str) -> Storage:
    """The storage of the counters named by `uri` (`memory://`, `redis://…`, …)."""
    if uri.partition("://")[0] == "memory":
        return MemoryCounters()
    storage = storage_from_string(uri)
    if not isinstance(storage, Storage):  # an `async+…` one
        raise ValueError(f"{uri}: an asyncio storage, but requests are counted synchronously")
    return storage


@dataclass(frozen=True)
class RateLimits:
    limiter: SlidingWindowCounterRateLimiter
    per_client: RateLimitItem
    per_address: RateLimitItem
    token: RateLimitItem
    expensive: RateLimitItem
    enabled: bool


def init_rate_limits(app: Flask) -> None:
    """Attach the limiter and its checks to `app` (settings `RATE_LIMIT_*`)."""
    config = app.config
    app.extensions["broker.rate_limits"] = RateLimits(
        limiter=SlidingWindowCounterRateLimiter(counters(config["RATE_LIMIT_STORAGE_URI"])),
        per_client=parse(config["RATE_LIMIT_PER_CLIENT"]),
        per_address=parse(config["RATE_LIMIT_PER_ADDRESS"]),
        token=parse(config["RATE_LIMIT_TOKEN"]),
        expensive=parse(config["RATE_LIMIT_EXPENSIVE"]),
        enabled=bool(config["RATE_LIMITS_ENABLED"]),
    )
    app.before_request(_count_the_address)
    app.after_request(_add_headers)


def _limits() -> RateLimits:
    return cast(RateLimits, current_app.extensions["broker.rate_limits"])


def charge(kind: str, key: str, item: RateLimitItem) -> None:
    """Count one request against `item` for (`kind`, `key`); 429 when it is spent."""
    strategy = _limits().limiter
    try:
        allowed = strategy.hit(item, kind, key)
        stats = strategy.get_window_stats(item, kind, key)
    except Exception as error:  # the storage (Redis) is down: serve rather than refuse all
        log.warning("rate limits not counted, their storage failed: %s", error)
        return
    reset = max(1, math.ceil(stats.reset_time - time.time()))
    headers = {
        "RateLimit-Limit": str(item.amount),
        "RateLimit-Remaining": str(max(0, stats.remaining)),
        "RateLimit-Reset": str(reset),
    }
    tightest: dict[str, str] | None = g.get("rate_limit_headers")
    if tightest is None or int(headers["RateLimit-Remaining"]) <= int(
        tightest["RateLimit-Remaining"]
    ):
        g.rate_limit_headers = headers
    if not allowed:
        who = "from this address" if kind.endswith("address") else "for this client"
        raise RateLimited(
            f"More than {item} requests {who} ({kind} limit); retry in {reset} s.",
            headers={**headers, "Retry-After": str(reset)},
        )


def _count_the_address() -> None:
    limits = _limits()
    if not limits.enabled or request.endpoint in UNLIMITED_ENDPOINTS:
        return
    address = request.remote_addr or "unknown"
    charge("address", address, limits.per_address)
    if request.endpoint == TOKEN_ENDPOINT:
        charge("token-address", address, limits.token)


def count_the_client(client_id: str) -> None:
    """Called by `Blueprint.auth` once the caller's token is verified."""
    limits = _limits()
    if limits.enabled:
        charge("client", client_id, limits.per_client)


def expensive(view: F) -> F:
    """Mark an operation as expensive (searches, exports, billing runs): its own, stricter
    allowance per client. Goes below `@blp.auth(...)`, which verifies the caller first."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limits = _limits()
        if limits.enabled:
            charge("expensive", g.caller.client_id, limits.expensive)
        return view(*args, **kwargs)

    return cast(F, wrapper)


def _add_headers(response: Response) -> Response:
    for name, value in (g.get("rate_limit_headers") or {}).items():
        response.headers.setdefault(name, value)
    return response
