"""Contract harness of the `simulated` adapter: its cloud is a state file, held directly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from providers.simulated import SimulatedAdapter, SimulatedCloud
from tests.adapters.harness import Harness, test_context


@contextmanager
def harness(tmp_path: Path) -> Iterator[Harness]:
    context = test_context(tmp_path)
    settings = {"seed": 7, "faults": {"retry_after_seconds": 3}}
    adapter = SimulatedAdapter(settings, {}, context)
    cloud: SimulatedCloud = adapter.cloud

    def count_with_token(token: str) -> int:
        return sum(
            1
            for record in cloud.instances().values()
            if record["token"] == token and record["state"] != "deleted"
        )

    yield Harness(
        build=lambda: SimulatedAdapter(settings, {}, context),
        faults=cloud,
        count_with_token=count_with_token,
        delete_out_of_band=cloud.delete,
        sku="sim-small",
        region="sim-1",
        features=frozenset(adapter.features),
    )
