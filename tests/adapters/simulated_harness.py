"""Contract harness of the `simulated` adapter: its cloud is a SQLite database, held directly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from providers.base import AccessKey, Bucket
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

    def count_volumes_with_token(token: str) -> int:
        return sum(
            1
            for record in cloud.volumes().values()
            if record["token"] == token and record["state"] != "deleted"
        )

    def count_buckets_with_token(token: str) -> int:
        return sum(1 for record in cloud.buckets().values() if record["token"] == token)

    def put_object(bucket: Bucket, key: AccessKey, name: str) -> None:
        cloud.put_object(bucket.ref, name, access_key_id=key.key_id)

    yield Harness(
        build=lambda: SimulatedAdapter(settings, {}, context),
        faults=cloud,
        count_with_token=count_with_token,
        delete_out_of_band=cloud.delete,
        sku="sim-small",
        region="sim-1",
        features=frozenset(adapter.features),
        volume_sku="sim-ssd",
        count_volumes_with_token=count_volumes_with_token,
        delete_volume_out_of_band=cloud.delete_volume,
        count_buckets_with_token=count_buckets_with_token,
        put_object=put_object,
    )
