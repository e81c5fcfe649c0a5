"""The simulated cloud's store: one SQLite database per provider.

It must answer as the JSON state file it replaced did (a long seeded run, recorded on that
file, replayed call by call), import such a file, serve several processes at once, and stay
whole when a process dies in the middle of a call.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from providers.base import AdapterContext, ProvisionRequest, Retryable, VolumeRequest
from providers.faults import Fault, Operation
from providers.simulated import SimulatedAdapter, SimulatedCloud, _State
from tests.adapters import simulated_scenario
from tests.adapters.harness import test_context

# Processes are forked: a child inherits the parent's open connection, and must not use it.
fork = multiprocessing.get_context("fork")


def _request(name: str = "vm") -> ProvisionRequest:
    return ProvisionRequest(uuid.uuid4(), "sim-small", "sim-1", name)


def test_a_long_run_answers_call_by_call_as_the_json_state_file_did(tmp_path: Path) -> None:
    recorded = json.loads(simulated_scenario.RECORDING.read_text())
    replayed = json.loads(json.dumps(simulated_scenario.run(tmp_path)))  # (tuples as lists)
    assert len(replayed) == len(recorded)
    for step, (now, then) in enumerate(zip(replayed, recorded, strict=True)):
        assert now == then, f"step {step}"


def test_a_json_state_file_is_imported_once(tmp_path: Path) -> None:
    # A file of the JSON store, from before the cloud sold storage (no volumes, buckets, keys),
    # holding one machine and a queued fault.
    source = SimulatedAdapter({}, {}, test_context(tmp_path / "source"))
    machine = source.ensure_provisioned(_request("old"))
    context = test_context(tmp_path / "state")
    legacy = context.state_dir / f"simulated-{context.provider_id}.json"
    legacy.parent.mkdir()
    legacy.write_text(
        json.dumps(
            {
                "counter": 1,
                "instances": source.cloud.instances(),
                "plan": {"queued": {"get": ["server_error"]}, "calls": {"provision": 1}},
            }
        )
    )

    adapter = SimulatedAdapter({}, {}, context)
    with pytest.raises(Retryable, match="503"):
        adapter.get(machine.ref)  # the queued fault came along
    assert adapter.get(machine.ref) == machine
    assert adapter.find_volume("anything") is None
    assert adapter.ensure_provisioned(_request()).ref == "sim-000002"  # the counter too
    adapter.ensure_volume(VolumeRequest(uuid.uuid4(), "sim-ssd", "sim-1", "disk", 10))
    assert len(adapter.cloud.volumes()) == 1
    assert adapter.cloud.path == legacy.with_suffix(".sqlite3")

    legacy.write_text(json.dumps({"counter": 0, "instances": {}}))  # read once, never again
    assert len(SimulatedAdapter({}, {}, context).cloud.instances()) == 2


def test_the_name_of_the_json_state_file_finds_the_database(tmp_path: Path) -> None:
    """Tests and tools that name the provider's `.json` file reach the same cloud."""
    adapter = SimulatedAdapter({}, {}, test_context(tmp_path))
    made = adapter.ensure_provisioned(_request())
    cloud = SimulatedCloud(adapter.cloud.path.with_suffix(".json"))
    assert list(cloud.instances()) == [made.ref]


def _create(context: AdapterContext, count: int) -> None:
    adapter = SimulatedAdapter({}, {}, context)
    for _ in range(count):
        adapter.ensure_provisioned(_request())


def test_processes_share_one_cloud(tmp_path: Path) -> None:
    context = test_context(tmp_path)
    adapter = SimulatedAdapter({"max_instances": 61}, {}, context)
    adapter.ensure_provisioned(_request())  # the parent's connection is open before the fork
    children = [fork.Process(target=_create, args=(context, 15)) for _ in range(4)]
    for child in children:
        child.start()
    adapter.cloud.inject(Operation.GET, Fault.SERVER_ERROR)  # meanwhile
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    instances = SimulatedCloud(adapter.cloud.path).instances()
    assert sorted(instances) == [f"sim-{n:06d}" for n in range(1, 62)]
    assert len({record["token"] for record in instances.values()}) == 61
    with pytest.raises(Retryable, match="503"):
        adapter.get("sim-000001")


def _die_in_a_call(path: str, inside: Any) -> None:
    cloud = SimulatedCloud(Path(path))

    def work(state: _State, fault: Fault | None) -> None:
        state.instances["sim-999999"] = {"ref": "sim-999999", "token": "t", "state": "running"}
        state.counter = 999
        state.save()  # written into the transaction, never committed
        inside.set()
        time.sleep(60)

    cloud.call(Operation.PROVISION, work)


def test_a_process_killed_in_the_middle_of_a_call_leaves_the_cloud_whole(
    tmp_path: Path,
) -> None:
    adapter = SimulatedAdapter({}, {}, test_context(tmp_path))
    cloud = adapter.cloud
    made = adapter.ensure_provisioned(_request())
    inside = fork.Event()
    child = fork.Process(target=_die_in_a_call, args=(str(cloud.path), inside))
    child.start()
    assert inside.wait(timeout=30)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)

    assert list(cloud.instances()) == [made.ref]  # nothing of the killed call
    assert adapter.ensure_provisioned(_request()).ref == "sim-000002"
    with sqlite3.connect(cloud.path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_failing_store_keeps_nothing_of_the_call(tmp_path: Path) -> None:
    cloud = SimulatedCloud(tmp_path / "cloud.sqlite3")
    cloud.inject(Operation.GET, Fault.THROTTLED)

    def work(state: _State, fault: Fault | None) -> None:
        state.instances["sim-000001"] = {"ref": "sim-000001", "token": "t", "state": "running"}
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        cloud.call(Operation.GET, work)
    assert cloud.instances() == {}
    assert cloud.call(Operation.GET, lambda state, fault: fault) is Fault.THROTTLED  # not drawn


def test_a_database_removed_under_its_path_starts_a_new_cloud(tmp_path: Path) -> None:
    adapter = SimulatedAdapter({}, {}, test_context(tmp_path))
    adapter.ensure_provisioned(_request())
    for file in tmp_path.glob("simulated-*"):
        file.unlink()
    assert adapter.cloud.instances() == {}
    assert adapter.ensure_provisioned(_request()).ref == "sim-000001"
