"""A long, seeded run of the `simulated` cloud, recorded call by call.

`run(state_dir)` drives one simulated provider through a few hundred calls drawn from a seeded
generator: machines, volumes, buckets, access keys and objects, out-of-band deletions, queued
faults and faults drawn at the configured rates, a clock that moves, adapters rebuilt as after a
restart, and usage polls. It returns what every call answered (or raised) and, at the end, what
the cloud holds (`SimulatedCloud.instances()`, `volumes()`, `buckets()`, `keys()`).

`simulated_scenario.json` is that record as the JSON state file (the store before the SQLite
one) answered it: `test_simulated_store.py` replays the run and compares, call by call, so the
store can change but what the cloud does cannot. Regenerate it only for an intended change of
behaviour: `.venv/bin/python -m tests.adapters.simulated_scenario`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from providers.base import (
    Action,
    BucketRequest,
    ProviderError,
    ProvisionRequest,
    Throttled,
    VolumeRequest,
)
from providers.simulated import SimulatedAdapter
from tests.adapters.harness import test_context

RECORDING = Path(__file__).with_name("simulated_scenario.json")
STEPS = 700

SETTINGS: dict[str, Any] = {
    "seed": 11,
    "provision_delay_seconds": 90,
    "max_instances": 12,
    "max_volumes": 5,
    "faults": {
        "retry_after_seconds": 4,
        "rates": {
            "provision": {"timeout_after_commit": 0.08, "throttled": 0.04, "quota_exceeded": 0.03},
            "get": {"server_error": 0.05, "deleted_out_of_band": 0.03},
            "find_by_token": {"timeout_before": 0.04, "deleted_out_of_band": 0.03},
            "action": {"timeout_after_commit": 0.05, "deleted_out_of_band": 0.02},
            "deprovision": {"timeout_before": 0.05},
            "usage": {"server_error": 0.1},
        },
    },
}
FAULTS = ("timeout_before", "timeout_after_commit", "server_error", "throttled", "quota_exceeded")
OPERATIONS = ("provision", "get", "find_by_token", "action", "deprovision", "usage")


def plain(value: Any) -> Any:
    """`value` as JSON would carry it (access key secrets, random by design, left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        fields.pop("secret", None)
        return {"type": type(value).__name__, **plain(fields)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if k != "secret"}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    return value


def run(state_dir: Path) -> list[Any]:
    """Every call's answer, in order, then the cloud's side as it ends."""
    rng = random.Random(19)
    now = {"at": datetime(2026, 3, 1, 8, 0, tzinfo=UTC)}
    context = dataclasses.replace(test_context(state_dir), clock=lambda: now["at"])
    adapter = SimulatedAdapter(SETTINGS, {}, context)
    cloud = adapter.cloud
    orders = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(12)]
    bucket_names = ["logs-a", "logs-b", "vault-c", "vault-d", "logs-e", "Bad_Name"]
    refs: dict[str, list[str]] = {"instances": ["sim-999999"], "volumes": ["vol-999999"]}
    key_ids = ["SIMK9999999999999999"]
    record: list[Any] = []

    def ref(kind: str) -> str:
        return rng.choice(refs[kind])

    def instance_request() -> ProvisionRequest:
        sku = rng.choice(["sim-small", "sim-large", "sim-medium", "sim-small", "nope"])
        return ProvisionRequest(rng.choice(orders), sku, "sim-1", "vm", index=rng.randrange(2))

    def volume_request() -> VolumeRequest:
        size = rng.choice([10, 20, 0])
        return VolumeRequest(rng.choice(orders), "sim-ssd", "sim-1", "disk", size)

    def bucket_request() -> BucketRequest:
        retention = rng.choice([None, None, 3, 3, 0])
        return BucketRequest(
            rng.choice(orders),
            "standard",
            "sim-1",
            rng.choice(bucket_names),
            retention_days=retention,
        )

    def issue_key() -> Any:
        key = adapter.issue_key(rng.choice(bucket_names), f"key-{rng.randrange(3)}")
        key_ids.append(key.key_id)
        return key

    def put_object() -> None:
        at = now["at"] - timedelta(minutes=rng.randrange(0, 600))
        access = rng.choice([None, rng.choice(key_ids)])
        cloud.put_object(
            rng.choice(bucket_names),
            f"object-{rng.randrange(4)}",
            at if rng.random() < 0.5 else None,
            access_key_id=access,
            size_bytes=rng.choice([0, 2**20, 3 * 2**30]),
        )

    def usage() -> Any:
        since = now["at"] - timedelta(hours=rng.randrange(0, 3), minutes=rng.randrange(60))
        # A sample's record id names its resource, metric and window: the rest is its quantity.
        return [(s.record_id, s.quantity, s.token) for s in adapter.usage(since, now["at"])]

    def restart() -> None:
        nonlocal adapter
        adapter = SimulatedAdapter(SETTINGS, {}, context)

    calls: list[tuple[int, str, Callable[[], Any]]] = [
        (8, "ensure_provisioned", lambda: adapter.ensure_provisioned(instance_request())),
        (3, "provision", lambda: adapter.provision(instance_request(), f"t-{rng.randrange(4)}")),
        (6, "get", lambda: adapter.get(ref("instances"))),
        (4, "find_by_token", lambda: adapter.find_by_token(instance_request().token)),
        (5, "action", lambda: adapter.action(ref("instances"), rng.choice(list(Action)))),
        (3, "deprovision", lambda: adapter.deprovision(ref("instances"))),
        (5, "ensure_volume", lambda: adapter.ensure_volume(volume_request())),
        (3, "get_volume", lambda: adapter.get_volume(ref("volumes"))),
        (2, "find_volume", lambda: adapter.find_volume(volume_request().token)),
        (2, "resize", lambda: adapter.resize_volume(ref("volumes"), rng.choice([5, 20, 40]))),
        (4, "attach", lambda: adapter.attach_volume(ref("volumes"), ref("instances"))),
        (2, "detach", lambda: adapter.detach_volume(ref("volumes"))),
        (2, "delete_volume", lambda: adapter.delete_volume(ref("volumes"))),
        (8, "ensure_bucket", lambda: adapter.ensure_bucket(bucket_request())),
        (2, "get_bucket", lambda: adapter.get_bucket(rng.choice(bucket_names))),
        (2, "find_bucket", lambda: adapter.find_bucket(bucket_request().token)),
        (2, "set_retention", lambda: adapter.set_retention(rng.choice(bucket_names), 5)),
        (2, "retained", lambda: adapter.retained(rng.choice(bucket_names))),
        (1, "delete_bucket", lambda: adapter.delete_bucket(rng.choice(bucket_names))),
        (5, "issue_key", issue_key),
        (
            2,
            "revoke_key",
            lambda: adapter.revoke_key(rng.choice(bucket_names), rng.choice(key_ids)),
        ),
        (8, "put_object", put_object),
        (3, "usage", usage),
        (1, "list_offers", lambda: adapter.list_offers()),
        (
            3,
            "inject",
            lambda: cloud.inject(rng.choice(OPERATIONS), *rng.sample(FAULTS, rng.randrange(1, 3))),
        ),
        (1, "delete_out_of_band", lambda: cloud.delete(ref("instances"))),
        (1, "delete_volume_out_of_band", lambda: cloud.delete_volume(ref("volumes"))),
        (1, "restart", restart),
    ]
    weights = [weight for weight, _, _ in calls]
    for _ in range(STEPS):
        now["at"] += timedelta(seconds=rng.randrange(0, 900))
        _, name, call = rng.choices(calls, weights)[0]
        try:
            answer = plain(call())
        except ProviderError as error:
            answer = {
                "raised": type(error).__name__,
                "message": str(error),
                "code": getattr(error, "code", None),
                "retry_after": error.retry_after if isinstance(error, Throttled) else None,
            }
        made = {"Instance": "instances", "Volume": "volumes"}
        if isinstance(answer, dict) and answer.get("type") in made:
            refs[made[answer["type"]]].append(answer["ref"])
        record.append([name, answer])
    record.append(
        {
            "instances": plain(cloud.instances()),
            "volumes": plain(cloud.volumes()),
            "buckets": plain(cloud.buckets()),
            "keys": plain(cloud.keys()),
        }
    )
    return record


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        steps = (json.dumps(step, sort_keys=True) for step in run(Path(tmp)))
        RECORDING.write_text("[\n" + ",\n".join(steps) + "\n]\n")  # one line per call
    print(f"wrote {RECORDING}")
