"""Rate limits: per API client, per address, stricter on the token endpoint and on expensive
operations (searches, exports, billing runs).

flask-limiter owns the storage (memory for `make run`; Redis, shared by every process and host,
in production: `BROKER_RATE_LIMIT_STORAGE_URI=redis://…`) and the strategy of the `limits`
library (sliding-window counters: constant work per request, whatever the limit). The checks
are made here, where their keys are known: the address before any view, the client only once
its token is verified (`Blueprint.auth`), so a forged token cannot spend someone else's
allowance.

A refused request is 429 problem+json with `Retry-After`; every answer carries the IETF
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds) headers of the
tightest limit it was counted against.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse

from broker.errors import BrokerError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)

# Routes a load balancer or monitoring calls: never limited.
UNLIMITED_ENDPOINTS = frozenset({"operations.healthz", "operations.readyz", "operations.metrics"})
TOKEN_ENDPOINT = "oauth.issue_token"


class RateLimited(BrokerError):
    status, code, title = 429, "rate_limited", "Too many requests"


@dataclass(frozen=True)
class RateLimits:
    limiter: Limiter
    per_client: RateLimitItem
    per_address: RateLimitItem
    token: RateLimitItem
    expensive: RateLimitItem
    enabled: bool


def init_rate_limits(app: Flask) -> None:
    """Attach the limiter and its checks to `app` (settings `RATE_LIMIT_*`)."""
    config = app.config
    limiter = Limiter(
        key_func=lambda: request.remote_addr or "unknown",
        app=app,
        storage_uri=config["RATE_LIMIT_STORAGE_URI"],
        strategy="sliding-window-counter",
        headers_enabled=False,  # ours, below: one set for the tightest limit of the request
        default_limits=[],
        swallow_errors=False,
    )
    app.extensions["broker.rate_limits"] = RateLimits(
        limiter=limiter,
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
    strategy = _limits().limiter.limiter
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
