"""`simulated`: an in-process cloud for the demo consortium and the reliability tests.

It behaves like a remote cloud where it matters to the broker: creates take time
(`provision_delay_seconds`), instances carry the order token, quotas run out, and a fault plan
makes calls time out (before or after doing the work), fail with 5xx or 429, or find their
instance deleted out of band. Its state lives in a JSON file of its own under the adapter's
state directory (one per provider), locked across processes, so the API and the worker see
the same cloud and its VMs survive a restart. It is deterministic: ids come from a counter and
random faults from the plan's seeded generator.

Settings (all optional):
    seed                     int, seeds the random faults
    provision_delay_seconds  number, time an instance stays `pending`
    max_instances            int, quota of live instances (a create beyond it is refused)
    flavors                  [{sku, name, vcpu, ram_gib, disk_gib, gpu?, region?}]
    faults                   {rates: {operation: {fault: probability}}, retry_after_seconds,
                              queued: {operation: [fault, …]}}
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

from providers.base import (
    Action,
    Feature,
    Instance,
    InstanceState,
    OfferSpec,
    OutcomeUnknown,
    Permanent,
    ProviderAdapter,
    ProvisionRequest,
    Retryable,
    SettingsInvalid,
    Throttled,
    UsageSample,
)
from providers.faults import Fault, FaultPlan, Operation
from providers.http import HttpPolicy

DEFAULT_FLAVORS: tuple[dict[str, Any], ...] = (
    {"sku": "sim-small", "name": "Simulated small", "vcpu": 1, "ram_gib": "2", "disk_gib": 20},
    {"sku": "sim-medium", "name": "Simulated medium", "vcpu": 2, "ram_gib": "4", "disk_gib": 40},
    {"sku": "sim-large", "name": "Simulated large", "vcpu": 4, "ram_gib": "16", "disk_gib": 80},
)

# Metrics the simulated cloud reports, per running instance-hour.
USAGE_METRICS = ("vcpu_hour", "ram_gib_hour")

T = TypeVar("T")


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _flavor(raw: Any, index: int) -> OfferSpec:
    if not isinstance(raw, Mapping):
        raise SettingsInvalid(f"flavors[{index}] must be an object.", "flavors")
    try:
        return OfferSpec(
            sku=str(raw["sku"]),
            name=str(raw.get("name", raw["sku"])),
            vcpu=int(raw["vcpu"]),
            ram_gib=Decimal(str(raw["ram_gib"])),
            disk_gib=int(raw["disk_gib"]),
            gpu=int(raw.get("gpu", 0)),
            region=str(raw["region"]) if raw.get("region") is not None else None,
        )
    except (KeyError, TypeError, ValueError, InvalidOperation) as error:
        raise SettingsInvalid(
            f"flavors[{index}] is incomplete or malformed: {error}.", "flavors"
        ) from None


@dataclass
class _State:
    """What the simulated cloud knows; saved as JSON after every call."""

    counter: int = 0
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> _State:
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(data["counter"], data["instances"], data.get("plan", {}))

    def save(self, path: Path) -> None:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(
            json.dumps({"counter": self.counter, "instances": self.instances, "plan": self.plan})
        )
        os.replace(temporary, path)


class SimulatedCloud:
    """The cloud side: the state file, its lock, and the fault plan kept in it.

    Tests hold one to inject faults or delete instances behind the adapter's back; the
    adapter holds one to serve its calls.
    """

    def __init__(self, path: Path, *, seed: int = 0, faults: Mapping[str, Any] | None = None):
        self.path = path
        self._plan_settings = dict(faults or {})
        self._seed = seed
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[_State]:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = _State.load(self.path)
                try:
                    yield state
                finally:
                    # Saved even when the call fails: a fault is consumed, and a timeout
                    # after commit has done its work (the caller just never hears of it).
                    state.save(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _plan(self, state: _State) -> FaultPlan:
        """The configured rates, plus the queued faults and call counts kept as cloud state."""
        return FaultPlan.from_dict({"seed": self._seed, **self._plan_settings, **state.plan})

    def call(self, operation: Operation, work: Callable[[_State, Fault | None], T]) -> T:
        """Run `work` under the lock with the fault drawn for this call."""
        with self._locked() as state:
            plan = self._plan(state)
            fault = plan.next(operation)
            saved = plan.to_dict()
            state.plan = {"queued": saved["queued"], "calls": saved["calls"]}
            return work(state, fault)

    # What tests (and the demo) use from the outside ------------------------------------

    @property
    def retry_after_seconds(self) -> int:
        return int(self._plan_settings.get("retry_after_seconds", 2))

    def inject(self, operation: str, *faults: str) -> None:
        """The next calls of `operation` fail with `faults`, in order (even across restarts)."""
        names = [Fault(fault).value for fault in faults]
        with self._locked() as state:
            queued = state.plan.setdefault("queued", {})
            queued.setdefault(Operation(operation).value, []).extend(names)

    def delete(self, ref: str) -> None:
        with self._locked() as state:
            state.instances.pop(ref, None)

    def instances(self) -> dict[str, dict[str, Any]]:
        with self._locked() as state:
            return dict(state.instances)


class SimulatedAdapter(ProviderAdapter):
    name = "simulated"
    features = frozenset({Feature.STOP_START, Feature.REBOOT, Feature.USAGE})
    settings_fields = frozenset(
        {"seed", "provision_delay_seconds", "max_instances", "flavors", "faults"}
    )

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        cleaned = super().check_settings(settings, http)
        for index, raw in enumerate(cleaned.get("flavors", [])):
            _flavor(raw, index)
        if not isinstance(cleaned.get("flavors", []), list):
            raise SettingsInvalid("flavors must be a list.", "flavors")
        for name in ("seed", "max_instances"):
            if name in cleaned and not (
                isinstance(cleaned[name], int) and not isinstance(cleaned[name], bool)
            ):
                raise SettingsInvalid(f"{name} must be an integer.", name)
        delay = cleaned.get("provision_delay_seconds", 0)
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            raise SettingsInvalid(
                "provision_delay_seconds must be a number ≥ 0.", "provision_delay_seconds"
            )
        faults = cleaned.get("faults", {})
        try:
            if not isinstance(faults, dict) or set(faults) - {"rates", "retry_after_seconds"}:
                raise ValueError("only `rates` and `retry_after_seconds` may be configured")
            FaultPlan.from_dict(faults)
        except (ValueError, TypeError, AttributeError) as error:
            raise SettingsInvalid(f"faults: {error}", "faults") from None
        return cleaned

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cloud = SimulatedCloud(
            self.context.state_dir / f"simulated-{self.context.provider_id}.json",
            seed=int(self.settings.get("seed", 0)),
            faults=self.settings.get("faults"),
        )
        raw = self.settings.get("flavors") or DEFAULT_FLAVORS
        self.flavors = {spec.sku: spec for spec in (_flavor(f, i) for i, f in enumerate(raw))}
        self.delay = timedelta(seconds=float(self.settings.get("provision_delay_seconds", 0)))

    # Faults ------------------------------------------------------------------------------

    def _fail_before(self, fault: Fault | None, *, create: bool = False) -> None:
        """Raise what the broker would see for a fault that stops the call before any work."""
        if fault is Fault.THROTTLED:
            raise Throttled("429 Too Many Requests", retry_after=self.cloud.retry_after_seconds)
        if fault is Fault.SERVER_ERROR:
            raise (OutcomeUnknown if create else Retryable)("503 Service Unavailable")
        if fault is Fault.TIMEOUT_BEFORE:
            raise (OutcomeUnknown if create else Retryable)("timed out")

    def _fail_after(self, fault: Fault | None, *, create: bool = False) -> None:
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            raise (OutcomeUnknown if create else Retryable)("timed out (the work was done)")

    # Instances ---------------------------------------------------------------------------

    def _view(self, record: Mapping[str, Any]) -> Instance:
        state = InstanceState(record["state"])
        if state is InstanceState.PENDING and self.context.clock() >= datetime.fromisoformat(
            record["ready_at"]
        ):
            state = InstanceState.RUNNING
        return Instance(
            ref=record["ref"],
            state=state,
            token=record["token"],
            sku=record["sku"],
            region=record["region"],
            addresses=tuple(record["addresses"]),
            created_at=datetime.fromisoformat(record["created_at"]),
            extra={"simulated": True},
        )

    def _transition(self, record: dict[str, Any], state: InstanceState) -> None:
        now = self.context.clock()
        current = self._view(record).state
        if current is InstanceState.RUNNING and record["state"] == InstanceState.PENDING:
            # Materialise the end of provisioning so usage counts from `ready_at`.
            record["history"].append([record["ready_at"], InstanceState.RUNNING.value])
        record["state"] = state.value
        record["history"].append([_iso(now), state.value])

    def list_offers(self) -> list[OfferSpec]:
        def work(state: _State, fault: Fault | None) -> list[OfferSpec]:
            self._fail_before(fault)
            self._fail_after(fault)
            return list(self.flavors.values())

        return self.cloud.call(Operation.LIST_OFFERS, work)

    def provision(self, request: ProvisionRequest, idempotency_token: str) -> Instance:
        spec = self.flavors.get(request.sku)
        if spec is None:
            raise Permanent(f"No flavor {request.sku!r} here.", code="invalid_request")

        def work(state: _State, fault: Fault | None) -> Instance:
            self._fail_before(fault, create=True)
            live = [r for r in state.instances.values() if r["state"] != InstanceState.DELETED]
            limit = self.settings.get("max_instances")
            if fault is Fault.QUOTA_EXCEEDED or (limit is not None and len(live) >= limit):
                raise Permanent("Quota exceeded for instances.", code="quota_exceeded")
            now = self.context.clock()
            state.counter += 1
            ref = f"sim-{state.counter:06d}"
            record = {
                "ref": ref,
                "token": idempotency_token,
                "name": request.name,
                "sku": spec.sku,
                "region": request.region,
                "vcpu": spec.vcpu,
                "ram_gib": str(spec.ram_gib),
                "addresses": [f"10.99.{state.counter // 256 % 256}.{state.counter % 256}"],
                "created_at": _iso(now),
                "ready_at": _iso(now + self.delay),
                "state": InstanceState.PENDING.value,
                "history": [[_iso(now), InstanceState.PENDING.value]],
            }
            state.instances[ref] = record
            self._fail_after(fault, create=True)
            return self._view(record)

        return self.cloud.call(Operation.PROVISION, work)

    def _with_instance(
        self, operation: Operation, ref: str, act: Callable[[dict[str, Any] | None], T]
    ) -> T:
        def work(state: _State, fault: Fault | None) -> T:
            if fault is Fault.DELETED_OUT_OF_BAND:
                state.instances.pop(ref, None)
            self._fail_before(fault)
            result = act(state.instances.get(ref))
            self._fail_after(fault)
            return result

        return self.cloud.call(operation, work)

    def get(self, ref: str) -> Instance | None:
        return self._with_instance(Operation.GET, ref, self._live_view)

    def _live_view(self, record: Mapping[str, Any] | None) -> Instance | None:
        if record is None or record["state"] == InstanceState.DELETED:
            return None
        return self._view(record)

    def find_by_token(self, token: str) -> Instance | None:
        def work(state: _State, fault: Fault | None) -> Instance | None:
            matches = [
                r
                for r in state.instances.values()
                if r["token"] == token and r["state"] != InstanceState.DELETED
            ]
            if fault is Fault.DELETED_OUT_OF_BAND:
                for record in matches:
                    state.instances.pop(record["ref"], None)
                matches = []
            self._fail_before(fault)
            self._fail_after(fault)
            return self._view(matches[0]) if matches else None

        return self.cloud.call(Operation.FIND_BY_TOKEN, work)

    def action(self, ref: str, action: Action) -> Instance:
        target = {
            Action.START: InstanceState.RUNNING,
            Action.STOP: InstanceState.STOPPED,
            Action.REBOOT: InstanceState.RUNNING,
        }[action]

        def act(record: dict[str, Any] | None) -> Instance:
            if record is None or record["state"] == InstanceState.DELETED:
                raise Permanent(f"No instance {ref}.", code="not_found")
            if self._view(record).state is InstanceState.PENDING:
                raise Permanent("The instance is still being created.", code="conflict")
            self._transition(record, target)
            return self._view(record)

        return self._with_instance(Operation.ACTION, ref, act)

    def deprovision(self, ref: str) -> None:
        def act(record: dict[str, Any] | None) -> None:
            if record is not None and record["state"] != InstanceState.DELETED:
                # Deleted instances are kept (as `deleted`) so usage up to now stays reportable.
                self._transition(record, InstanceState.DELETED)

        self._with_instance(Operation.DEPROVISION, ref, act)

    # Usage -------------------------------------------------------------------------------

    def usage(self, since: datetime, until: datetime) -> list[UsageSample]:
        """One sample per instance, metric and clock hour of `[since, until)` it ran in."""

        def work(state: _State, fault: Fault | None) -> list[UsageSample]:
            self._fail_before(fault)
            samples = [
                sample
                for record in state.instances.values()
                for sample in self._samples(record, since, until)
            ]
            self._fail_after(fault)
            return samples

        return self.cloud.call(Operation.USAGE, work)

    def _running_intervals(self, record: Mapping[str, Any]) -> list[tuple[datetime, datetime]]:
        events = [(datetime.fromisoformat(at), state) for at, state in record["history"]]
        if record["state"] == InstanceState.PENDING:
            events.append((datetime.fromisoformat(record["ready_at"]), InstanceState.RUNNING))
        intervals = []
        start: datetime | None = None
        for at, state in sorted(events, key=lambda event: event[0]):
            if state == InstanceState.RUNNING and start is None:
                start = at
            elif state != InstanceState.RUNNING and start is not None:
                intervals.append((start, at))
                start = None
        if start is not None:
            intervals.append((start, self.context.clock()))
        return intervals

    def _samples(
        self, record: Mapping[str, Any], since: datetime, until: datetime
    ) -> Iterator[UsageSample]:
        hour = since.replace(minute=0, second=0, microsecond=0)
        intervals = self._running_intervals(record)
        while hour < until:
            start, end = max(since, hour), min(until, hour + timedelta(hours=1))
            seconds = sum(
                max(0.0, (min(end, b) - max(start, a)).total_seconds()) for a, b in intervals
            )
            if seconds > 0:
                hours = Decimal(int(seconds)) / Decimal(3600)
                for metric, per_hour in (
                    ("vcpu_hour", Decimal(record["vcpu"])),
                    ("ram_gib_hour", Decimal(record["ram_gib"])),
                ):
                    yield UsageSample(
                        record_id=f"{record['ref']}:{metric}:{_iso(start)}:{_iso(end)}",
                        ref=record["ref"],
                        metric=metric,
                        quantity=(hours * per_hour).quantize(Decimal("0.000001")),
                        start=start,
                        end=end,
                        token=record["token"],
                    )
            hour += timedelta(hours=1)
