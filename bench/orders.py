"""How fast orders go from `POST /v1/orders` to `completed`, with 1 and with 2 workers.

Sets up a temporary SQLite database (or `BENCH_DATABASE_URL` when set: an empty database,
migrated here; the rows are left there), an app, a consortium admin, an agency buyer and a
provider on the `simulated` adapter at zero latency (no boot delay, no faults) selling one
published offer. For each worker count, real `broker worker` processes are started on that
database and left idle, then `BENCH_ORDERS` orders (default 200, one machine each) are
placed as fast as they go by `BENCH_CLIENTS` processes at once (default 2, as the API's two
gunicorn workers on these 2 cores would take them), each through its own app's WSGI test
client, and the database is polled until every one is `completed`.

Prints, for each worker count: orders per second from the first POST to the last completion,
the rate of the POSTs alone, and the p50/p99 of an order's latency (`completed_at` minus
`created_at`, both written by the database's clients from the same clock). An idle worker is
woken by the job's announcement on PostgreSQL (`LISTEN/NOTIFY`) and polls with a backoff from
50 ms to a second on SQLite (broker/jobs/wakeup.py), which shows in the latencies. The order
rate cannot exceed the POSTs': both are printed. Then, for each worker count, the workers'
side alone: the orders are queued before the workers start, and the rate at which they
complete them is printed.

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/orders.py`.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from multiprocessing import get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from flask.testing import FlaskClient
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import COUNTED_NOT_LIMITED  # noqa: E402

from broker import create_app  # noqa: E402
from broker.db import Database  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import Order, OrderState, OrganizationKind, Role  # noqa: E402
from broker.services import organizations  # noqa: E402
from tests.catalogue_fixtures import offer_body, provider_body  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ORDERS = int(os.environ.get("BENCH_ORDERS", "200"))
# Processes POSTing the orders at once, as the API's gunicorn workers would serve them.
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "2"))
WORKER_COUNTS = (1, 2)
SKU = "bench-vm"
REGION = "fr-par-1"
TIMEOUT = 120.0


def _client_credentials(
    database: Database, kind: OrganizationKind, role: Role, name: str
) -> tuple[str, str, str]:
    """An organization and an API client of it: (organization id, client id, secret)."""
    with database.transaction() as session:
        organization = organizations.create_organization(session, None, name=name, kind=kind)
        issued = organizations.create_client(
            session, None, organization.id, name=f"bench {role.value}", roles=[role]
        )
        return str(organization.id), issued.client.client_id, issued.secret


def _headers(client: FlaskClient, client_id: str, secret: str) -> dict[str, str]:
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"Authorization": f"Bearer {response.json['access_token']}"}


def _check(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    return dict(response.json)


def _simulated_offer(
    client: FlaskClient, database: Database, admin: dict[str, str], run: int
) -> str:
    """A provider on the simulated adapter (its own cloud) and its published offer's id."""
    org_id, operator_id, operator_secret = _client_credentials(
        database, OrganizationKind.PROVIDER, Role.PROVIDER, f"Bench provider {run}"
    )
    operator = _headers(client, operator_id, operator_secret)
    flavors = [{"sku": SKU, "vcpu": 2, "ram_gib": "4", "disk_gib": 50, "region": REGION}]
    body = provider_body(
        org_id,
        name=f"Bench cloud {run}",
        adapter="simulated",
        adapter_config={"provision_delay_seconds": 0, "flavors": flavors},
    )
    provider = _check(client.post("/v1/providers", json=body, headers=admin), 201)
    offer = _check(
        client.post("/v1/offers", json=offer_body(provider["id"], sku=SKU), headers=operator),
        201,
    )
    _check(client.post(f"/v1/offers/{offer['id']}/publish", headers=operator), 200)
    return str(offer["id"])


def _start_workers(
    count: int, env: dict[str, str], workdir: Path
) -> tuple[list[subprocess.Popen], list[Path]]:
    """`count` workers logging (at INFO, as by default) into files of the work directory."""
    workers, logs = [], []
    for number in range(count):
        log = workdir / f"worker-{count}-{number}.log"
        with log.open("wb") as out:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "broker.cli", "worker"],
                    env=env,
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        logs.append(log)
    return workers, logs


def _wait_until_started(workers: list[subprocess.Popen], logs: list[Path]) -> None:
    """Until every worker has logged its start (then it polls the queue, idle)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert all(worker.poll() is None for worker in workers), "a worker exited"
        if all("worker started" in log.read_text(errors="replace") for log in logs):
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise SystemExit("the workers never started")


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=30)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * fraction) - 1, 0)]


_client: FlaskClient | None = None  # a POSTing process's own app


def _start_client(config: dict[str, Any]) -> None:
    global _client
    _client = create_app(config).test_client()


def _post_orders(buyer: dict[str, str], offer_id: str, numbers: list[int]) -> list[str]:
    assert _client is not None
    placed = []
    for number in numbers:
        body = {"offer_id": offer_id, "name": f"vm-{number:04d}", "quantity": 1}
        headers = {**buyer, "Idempotency-Key": str(uuid.uuid4())}
        placed.append(_check(_client.post("/v1/orders", json=body, headers=headers), 201)["id"])
    return placed


def _place(clients: Pool, buyer: dict[str, str], offer_id: str) -> list[uuid.UUID]:
    """`ORDERS` orders, POSTed by the `CLIENTS` processes at once, each one after the other;
    their ids."""
    shares = [(buyer, offer_id, list(range(first, ORDERS, CLIENTS))) for first in range(CLIENTS)]
    return [
        uuid.UUID(order) for orders in clients.starmap(_post_orders, shares) for order in orders
    ]


def _wait_completed(database: Database, placed: list[uuid.UUID]) -> None:
    deadline = time.perf_counter() + TIMEOUT
    while True:
        with database.session(read_only=True) as session:
            states = dict(
                session.execute(
                    select(Order.state, func.count())
                    .where(Order.id.in_(placed))
                    .group_by(Order.state)
                ).all()
            )
        if states.get(OrderState.COMPLETED, 0) == len(placed):
            return
        if states.get(OrderState.FAILED) or time.perf_counter() > deadline:
            raise SystemExit(f"orders did not complete: {states}")
        time.sleep(0.05)


def _timestamps(database: Database, placed: list[uuid.UUID]) -> list[tuple[datetime, datetime]]:
    """(created_at, completed_at) of each order."""
    with database.session(read_only=True) as session:
        return [
            (created, completed)
            for created, completed in session.execute(
                select(Order.created_at, Order.completed_at).where(Order.id.in_(placed))
            )
        ]


def _label(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def run(
    clients: Pool,
    database: Database,
    buyer: dict[str, str],
    offer_id: str,
    workers: int,
) -> None:
    started = time.perf_counter()
    placed = _place(clients, buyer, offer_id)
    posted = time.perf_counter()
    _wait_completed(database, placed)
    finished = time.perf_counter()
    timestamps = _timestamps(database, placed)
    latencies = [(done - created).total_seconds() for created, done in timestamps]
    rate = ORDERS / (finished - started)
    post_rate = ORDERS / (posted - started)
    p50 = statistics.median(latencies) * 1000
    p99 = _percentile(latencies, 0.99) * 1000
    print(
        f"{_label(workers):<10} {rate:7.1f} orders/s   (POSTs alone {post_rate:6.1f}/s)   "
        f"latency p50 {p50:7.0f} ms   p99 {p99:7.0f} ms"
    )


def drain(
    clients: Pool,
    database: Database,
    buyer: dict[str, str],
    offer_id: str,
    workers: int,
    env: dict[str, str],
    workdir: Path,
) -> None:
    """The workers' side alone: the orders are queued before any worker runs, then drained;
    the rate is between the first and the last completion (the database's timestamps), so
    neither the POSTs nor the workers' start-up count."""
    placed = _place(clients, buyer, offer_id)
    processes, logs = _start_workers(workers, env, workdir)
    try:
        _wait_completed(database, placed)
    finally:
        _stop(processes)
    completions = sorted(done for _, done in _timestamps(database, placed))
    rate = (len(completions) - 1) / (completions[-1] - completions[0]).total_seconds()
    print(f"{_label(workers):<10} {rate:7.1f} orders/s   (queued first, then drained)")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-orders-"))
    url = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{workdir / 'broker.db'}"
    upgrade(url)
    database = Database(url)
    credential_key = Fernet.generate_key().decode()
    config = {
        "DATABASE_URL": url,
        "INSTANCE_PATH": str(workdir),
        "SIGNING_KEY_FILE": str(workdir / "signing-key.pem"),
        "CREDENTIAL_KEYS": credential_key,
        "PROVIDER_STATE_DIR": str(workdir / "providers"),
        "LOG_LEVEL": "WARNING",
        **COUNTED_NOT_LIMITED,
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_HANG")},
        "DATABASE_URL": url,
        "BROKER_INSTANCE_PATH": str(workdir),
        "BROKER_PROVIDER_STATE_DIR": config["PROVIDER_STATE_DIR"],
        "BROKER_CREDENTIAL_KEYS": credential_key,
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    app = create_app(config)
    client = app.test_client()
    _, admin_id, admin_secret = _client_credentials(
        database, OrganizationKind.CONSORTIUM, Role.ADMIN, "Bench consortium"
    )
    admin = _headers(client, admin_id, admin_secret)
    _, buyer_id, buyer_secret = _client_credentials(
        database, OrganizationKind.AGENCY, Role.BUYER, "Bench agency"
    )
    buyer = _headers(client, buyer_id, buyer_secret)

    kind = "PostgreSQL" if database.engine.dialect.name == "postgresql" else "SQLite"
    print(
        f"python {sys.version.split()[0]}, {kind}, {ORDERS} orders of one machine each, "
        "simulated cloud at zero latency, real `broker worker` processes"
    )
    # The POSTing processes, started (and their apps built) before anything is timed.
    with get_context("spawn").Pool(CLIENTS, _start_client, (config,)) as clients:
        for run_number, count in enumerate(WORKER_COUNTS, start=1):
            offer_id = _simulated_offer(client, database, admin, run_number)
            workers, logs = _start_workers(count, env, workdir)
            try:
                _wait_until_started(workers, logs)
                run(clients, database, buyer, offer_id, count)
            finally:
                _stop(workers)
        for run_number, count in enumerate(WORKER_COUNTS, start=len(WORKER_COUNTS) + 1):
            offer_id = _simulated_offer(client, database, admin, run_number)
            drain(clients, database, buyer, offer_id, count, env, workdir)
    database.dispose()
    print("goal (issue 19): >= 100 orders/s with 2 workers on PostgreSQL, p50 latency <= 250 ms")


if __name__ == "__main__":
    main()
