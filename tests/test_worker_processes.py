"""Real worker processes: killed at the worst moments, and several draining one queue.

Workers are separate processes (`python -m broker.cli worker`, as operators run them, or a
small script of the test's own) whose environment names the test's database and the test
app's instance directory, simulated-cloud state directory and credential keys, with a lease
of 2 seconds so that a dead worker's job is taken over quickly.

Done when (4): for each crash point (`after_claim`, `after_provider_call`, `before_commit`, see
broker/jobs/crashpoints.py), worker A freezes there (`BROKER_HANG_AT`), is killed with SIGKILL,
and worker B completes the order: the simulated cloud then holds exactly one machine for it.

Done when (5): 1,000 jobs drained by 4 processes at once on PostgreSQL (`SKIP LOCKED`): each
ran exactly once and all succeeded. On SQLite (one writer at a time) a smaller queue is
drained the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import Database
from broker.jobs.queue import enqueue
from broker.models import Job, JobState, OrderState
from broker.services.orders import PROVISION_JOB
from tests.conftest import ApiUser, MakeUser
from tests.test_provisioning import make_market, order_resources, order_row, place_order

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LEASE_SECONDS = 2
TIMEOUT = 60.0


def _wait(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def name(self) -> str:
        """How the worker signs the jobs it claims (see broker/jobs/worker.py)."""
        return f"{socket.gethostname()}:{self.process.pid}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def workers(app_config: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """`workers(name, **env)` starts a `broker worker` on the test's database; every worker
    still running at the end is killed."""
    started: list[Worker] = []
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in ("BROKER_HANG_AT", "BROKER_HANG_MARKER")
    }
    base.update(
        {
            "DATABASE_URL": app_config["DATABASE_URL"],
            "BROKER_INSTANCE_PATH": app_config["INSTANCE_PATH"],
            "BROKER_PROVIDER_STATE_DIR": app_config["PROVIDER_STATE_DIR"],
            "BROKER_CREDENTIAL_KEYS": app_config["CREDENTIAL_KEYS"],
            "BROKER_JOB_LEASE_SECONDS": str(LEASE_SECONDS),
            "BROKER_PROVIDER_TIMEOUT": str(app_config["PROVIDER_TIMEOUT"]),
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(PROJECT_ROOT),
        }
    )

    def start(name: str, **env: str) -> Worker:
        log = tmp_path / f"worker-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "worker"],
                env={**base, **env},
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        worker = Worker(process, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=30)


def _job_of(db: Database, order_id: str) -> Job | None:
    with db.session(read_only=True) as session:
        jobs = [
            job
            for job in session.scalars(select(Job).where(Job.kind == PROVISION_JOB))
            if job.payload["order_id"] == order_id
        ]
    assert len(jobs) <= 1
    return jobs[0] if jobs else None


# --- done when (4): a worker killed at each crash point --------------------------------------

CRASH_POINTS = ("after_claim", "after_provider_call", "before_commit")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_worker_killed_at_a_crash_point_leaves_exactly_one_machine(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    workers: Callable[..., Worker],
    tmp_path: Path,
    point: str,
) -> None:
    market = make_market(app, client, admin, make_user)
    order_id = place_order(client, market)
    token = f"broker-order-{order_id}-0"
    marker = tmp_path / f"hung-at-{point}"

    a = workers("a", BROKER_HANG_AT=point, BROKER_HANG_MARKER=str(marker))
    _wait(lambda: marker.exists() or a.process.poll() is not None, f"worker A at {point}")
    assert a.process.poll() is None, f"worker A exited:\n{a.output()}"
    assert marker.read_text().strip() == str(a.process.pid)

    # A froze holding the provisioning job, where we wanted it.
    job = _job_of(db, order_id)
    assert job is not None
    assert (job.state, job.worker, job.attempts) == (JobState.RUNNING, a.name, 1)
    made = [r for r in market.live().values() if r["token"] == token]
    assert len(made) == (0 if point == "after_claim" else 1)

    a.process.send_signal(signal.SIGKILL)
    assert a.process.wait(timeout=30) == -signal.SIGKILL
    # Nothing A learnt from the cloud was committed.
    (resource,) = order_resources(db, order_id)
    assert (resource.state.value, resource.provider_ref) == ("provisioning", None)

    b = workers("b")
    # The order is settled a moment before the job records its outcome: wait for both.
    _wait(
        lambda: (
            (
                order_row(db, order_id).state in (OrderState.COMPLETED, OrderState.FAILED)
                and getattr(_job_of(db, order_id), "state", None) is not JobState.RUNNING
            )
            or b.process.poll() is not None
        ),
        "worker B to finish the order and its job",
    )
    assert b.process.poll() is None, f"worker B exited:\n{b.output()}"

    order = order_row(db, order_id)
    assert (order.state, order.state_reason) == (OrderState.COMPLETED, None), b.output()
    machines = [r for r in market.cloud.instances().values() if r["token"] == token]
    assert len(machines) == 1, machines
    (resource,) = order_resources(db, order_id)
    assert (resource.state.value, resource.provider_ref) == ("active", machines[0]["ref"])
    job = _job_of(db, order_id)
    assert job is not None
    # B took the job over when A's lease ran out: A's attempt counts, B's succeeded.
    assert (job.state, job.worker, job.attempts) == (JobState.SUCCEEDED, b.name, 2)

    b.process.send_signal(signal.SIGTERM)
    assert b.process.wait(timeout=30) == 0, b.output()


# --- done when (5): several processes draining one queue -------------------------------------

DRAIN_KIND = "test.record"

# A worker of the test's own: `run_one` with a handler that writes the id of each job it runs
# into a file of its process. It waits for the go file, so that all the processes start
# claiming at once, and stops when nothing is ready.
DRAIN_SCRIPT = """
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from broker.db import Database
from broker.jobs.queue import JobContext, run_one

url, kind, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
pid = os.getpid()
context = JobContext(Database(url), {}, lease=timedelta(seconds=60))
runs = (out_dir / f"runs-{pid}.txt").open("a")


def record(_context, job):
    runs.write(f"{job.id}\\n")
    runs.flush()
    return {"pid": pid}


(out_dir / f"ready-{pid}").touch()
while not (out_dir / "go").exists():
    time.sleep(0.01)
while run_one(context, {kind: record}, f"drain:{pid}") is not None:
    pass
runs.close()
"""


@pytest.mark.parametrize("processes", [4])
def test_processes_draining_one_queue_run_every_job_exactly_once(
    db: Database,
    database_url: str,
    db_kind: str,
    tmp_path: Path,
    processes: int,
) -> None:
    # SQLite serializes writers: the same check, on a queue small enough to stay quick.
    count = 1000 if db_kind == "postgresql" else 200
    with db.transaction() as session:
        job_ids = {enqueue(session, DRAIN_KIND, {"n": n}).id for n in range(count)}
    script = tmp_path / "drain.py"
    script.write_text(DRAIN_SCRIPT)
    out = tmp_path / "runs"
    out.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_HANG")},
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    started = [
        subprocess.Popen(
            [sys.executable, str(script), database_url, DRAIN_KIND, str(out)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(processes)
    ]
    try:
        _wait(
            lambda: (
                len(list(out.glob("ready-*"))) == processes
                or any(p.poll() is not None for p in started)
            ),
            "the drain processes to start",
        )
        (out / "go").touch()
        outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in started]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert [p.returncode for p in started] == [0] * processes, outputs

    runs = {
        int(path.stem.removeprefix("runs-")): path.read_text().split()
        for path in out.glob("runs-*.txt")
    }
    every_run = Counter(line for lines in runs.values() for line in lines)
    assert len(every_run) == count
    assert set(every_run.values()) == {1}, every_run.most_common(3)  # nothing ran twice
    assert {uuid.UUID(line) for line in every_run} == job_ids
    # They really ran side by side (each took a share), not one after the other.
    assert len([pid for pid, lines in runs.items() if lines]) >= 2, {
        pid: len(lines) for pid, lines in runs.items()
    }
    ran_by = {line: pid for pid, lines in runs.items() for line in lines}
    with db.session(read_only=True) as session:
        jobs = list(session.scalars(select(Job).where(Job.kind == DRAIN_KIND)))
    assert len(jobs) == count
    assert {(job.state, job.attempts) for job in jobs} == {(JobState.SUCCEEDED, 1)}
    for job in jobs:
        assert job.result == {"pid": ran_by[str(job.id)]}
        assert job.worker == f"drain:{ran_by[str(job.id)]}"
