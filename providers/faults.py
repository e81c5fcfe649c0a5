"""A fault plan: which failures a simulated cloud (or a fake cloud server) injects, and when.

Faults are given per operation, either queued (`inject`: the next calls fail in that order,
which is what a test wants) or as rates (`rates`: each call fails with some probability drawn
from a seeded generator, which is what a soak test or a lively demo wants). The same plan
drives the in-process `simulated` adapter and the fake OpenStack and Outscale servers, so one
contract test suite can hold every adapter to the same behaviour.
"""

from __future__ import annotations

import enum
import random
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any


class Operation(enum.StrEnum):
    LIST_OFFERS = "list_offers"
    PROVISION = "provision"
    GET = "get"
    FIND_BY_TOKEN = "find_by_token"
    ACTION = "action"
    DEPROVISION = "deprovision"
    USAGE = "usage"


class Fault(enum.StrEnum):
    # The request never reaches the cloud; the caller times out.
    TIMEOUT_BEFORE = "timeout_before"
    # The cloud does the work, then the answer is lost; the caller times out.
    TIMEOUT_AFTER_COMMIT = "timeout_after_commit"
    # 503 from the cloud; nothing was done.
    SERVER_ERROR = "server_error"
    # 429 with a Retry-After header; nothing was done.
    THROTTLED = "throttled"
    # The cloud refuses a create because the tenant's quota is used up.
    QUOTA_EXCEEDED = "quota_exceeded"
    # The instance the call is about was deleted behind the broker's back just before.
    DELETED_OUT_OF_BAND = "deleted_out_of_band"


class FaultPlan:
    """Thread-safe: the fake servers consult it from their request threads."""

    def __init__(
        self,
        *,
        seed: int = 0,
        rates: Mapping[str, Mapping[str, float]] | None = None,
        retry_after_seconds: int = 2,
    ) -> None:
        self.seed = seed
        self.retry_after_seconds = retry_after_seconds
        self.rates = {
            Operation(op): {Fault(fault): float(p) for fault, p in faults.items()}
            for op, faults in (rates or {}).items()
        }
        self._queued: defaultdict[Operation, deque[Fault]] = defaultdict(deque)
        self._calls: defaultdict[Operation, int] = defaultdict(int)
        self._lock = threading.Lock()

    def inject(self, operation: str, *faults: str) -> None:
        """The next calls of `operation` fail with `faults`, in order."""
        with self._lock:
            self._queued[Operation(operation)].extend(Fault(fault) for fault in faults)

    def clear(self) -> None:
        with self._lock:
            self._queued.clear()

    def next(self, operation: str) -> Fault | None:
        """The fault to inject into this call of `operation`, if any (consumes it)."""
        op = Operation(operation)
        with self._lock:
            self._calls[op] += 1
            if self._queued[op]:
                return self._queued[op].popleft()
            rates = self.rates.get(op)
            if not rates:
                return None
            # One generator per call, seeded by (seed, operation, call number): the same plan
            # replays the same faults whatever else ran in between.
            draw = random.Random(f"{self.seed}:{op}:{self._calls[op]}").random()
            for fault, probability in rates.items():
                if draw < probability:
                    return fault
                draw -= probability
            return None

    def pending(self, operation: str) -> list[Fault]:
        with self._lock:
            return list(self._queued[Operation(operation)])

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seed": self.seed,
                "retry_after_seconds": self.retry_after_seconds,
                "rates": {
                    op.value: {f.value: p for f, p in r.items()} for op, r in self.rates.items()
                },
                "queued": {op.value: [f.value for f in q] for op, q in self._queued.items() if q},
                "calls": {op.value: n for op, n in self._calls.items()},
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """Rebuild a plan saved by `to_dict`, or read from settings (`seed`, `rates`,
        `retry_after_seconds`, `queued`). Raises ValueError on unknown names."""
        unknown = set(data) - {"seed", "rates", "retry_after_seconds", "queued", "calls"}
        if unknown:
            raise ValueError(f"Unknown fault plan key {sorted(unknown)[0]!r}.")
        plan = cls(
            seed=int(data.get("seed", 0)),
            rates=data.get("rates") or {},
            retry_after_seconds=int(data.get("retry_after_seconds", 2)),
        )
        for op, faults in (data.get("queued") or {}).items():
            plan.inject(op, *faults)
        for op, calls in (data.get("calls") or {}).items():
            plan._calls[Operation(op)] = int(calls)
        return plan
