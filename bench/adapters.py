"""What a call to a provider adapter costs, against the in-process simulated cloud and the
local fake OpenStack and Outscale servers (loopback HTTP, so SDK and transport overhead show).

For each adapter: calls per second and p50/p99 of `get` and `find_by_token` with 50 instances
in the cloud, and of a create (`ensure_provisioned`). The simulated cloud's figures are also
printed with 1,000 instances: its store (one SQLite database per provider) must cost the same
per call whatever the fleet (issue 19: a get at 1,000 instances ≤ 1 ms, as at 50; the JSON
file it replaced, rewritten on every call, gave 159 gets/s at 1,000 against 1,818 at 50).

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/adapters.py`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.base import ProviderAdapter, ProvisionRequest  # noqa: E402
from tests.adapters import fake_openstack, fake_outscale, simulated_harness  # noqa: E402
from tests.adapters.harness import Harness  # noqa: E402

SECONDS = 2.0


def timed(name: str, call: Callable[[], object]) -> None:
    for _ in range(3):
        call()
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    rate = len(latencies) / sum(latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
    print(f"{name:<44} {rate:8.0f} calls/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


def request(cloud: Harness) -> ProvisionRequest:
    return ProvisionRequest(uuid.uuid4(), cloud.sku, cloud.region, "bench-vm")


def bench(name: str, cloud: Harness, instances: int) -> None:
    adapter: ProviderAdapter = cloud.build()
    refs = [adapter.ensure_provisioned(request(cloud)).ref for _ in range(instances)]
    token = request(cloud).token
    timed(f"{name} get ({instances} instances)", lambda: adapter.get(refs[-1]))
    timed(f"{name} find_by_token ({instances} instances)", lambda: adapter.find_by_token(token))
    timed(f"{name} ensure_provisioned", lambda: adapter.ensure_provisioned(request(cloud)))


def main() -> None:
    for name, module, sizes in (
        ("simulated", simulated_harness, (50, 1000)),
        ("openstack", fake_openstack, (50,)),
        ("outscale", fake_outscale, (50,)),
    ):
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp, module.harness(Path(tmp)) as cloud:
                bench(name, cloud, size)


if __name__ == "__main__":
    main()
