"""The storage contract (block volumes, buckets and vaults), held against every registered adapter.

Parametrized like test_contract.py over the adapters installed through the
`cloud_broker.providers` entry points, each against its own cloud (the `cloud` fixture of
conftest.py). A test skips, saying why, for an adapter that does not declare the feature it is
about (`Feature.VOLUMES`, `Feature.OBJECT_STORAGE`, `Feature.OBJECT_LOCK`) or whose harness does
not give the cloud-side views it needs yet; the feature is checked on the adapter's class first,
so a skipped test starts no fake server.

What is checked is what a user of the broker would check: what exists at the cloud (counted
from the cloud's side, not the adapter's), sizes, attachments, and the codes of refusals. The
last section holds the simulated cloud's own rules beyond the contract.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from providers import registry
from providers.base import (
    Bucket,
    BucketRequest,
    Feature,
    InstanceState,
    ObjectStorageDriver,
    OutcomeUnknown,
    Permanent,
    ProvisionRequest,
    Retryable,
    SettingsInvalid,
    Throttled,
    VolumeDriver,
    VolumeRequest,
    order_token,
)
from providers.faults import Fault, Operation
from providers.simulated import SimulatedAdapter
from tests.adapters import simulated_harness
from tests.adapters.harness import Harness, test_context

EVERY_ADAPTER = pytest.mark.parametrize("adapter_name", registry.names())

VOLUME_FIELDS = ("volume_sku", "count_volumes_with_token", "delete_volume_out_of_band")
BUCKET_FIELDS = ("count_buckets_with_token",)
BUCKET_SKU = "standard"  # buckets have no types the contract relies on


def _storage_cloud(
    request: pytest.FixtureRequest,
    adapter_name: str,
    needs: tuple[Feature, ...],
    fields: tuple[str, ...],
    *,
    lacks: Feature | None = None,
) -> Harness:
    """The adapter's harness, or a skip saying which feature or harness field is missing."""
    declared = registry.load(adapter_name).features
    for feature in needs:
        if feature not in declared:
            pytest.skip(f"{adapter_name} does not declare Feature.{feature.name}")
    if lacks is not None and lacks in declared:
        pytest.skip(f"{adapter_name} declares Feature.{lacks.name}")
    cloud: Harness = request.getfixturevalue("cloud")
    assert set(needs) <= cloud.build().features
    missing = [name for name in fields if getattr(cloud, name) is None]
    if missing:
        pytest.skip(f"the {adapter_name} harness gives no {', '.join(missing)} yet")
    return cloud


@pytest.fixture
def volume_cloud(request: pytest.FixtureRequest, adapter_name: str) -> Harness:
    return _storage_cloud(request, adapter_name, (Feature.VOLUMES,), VOLUME_FIELDS)


@pytest.fixture
def bucket_cloud(request: pytest.FixtureRequest, adapter_name: str) -> Harness:
    return _storage_cloud(request, adapter_name, (Feature.OBJECT_STORAGE,), BUCKET_FIELDS)


@pytest.fixture
def object_cloud(request: pytest.FixtureRequest, adapter_name: str) -> Harness:
    """Buckets, and a way to write objects into them."""
    return _storage_cloud(
        request, adapter_name, (Feature.OBJECT_STORAGE,), (*BUCKET_FIELDS, "put_object")
    )


@pytest.fixture
def vault_cloud(request: pytest.FixtureRequest, adapter_name: str) -> Harness:
    """Buckets with object lock, and a way to write objects into them."""
    return _storage_cloud(
        request,
        adapter_name,
        (Feature.OBJECT_STORAGE, Feature.OBJECT_LOCK),
        (*BUCKET_FIELDS, "put_object"),
    )


@pytest.fixture
def lockless_cloud(request: pytest.FixtureRequest, adapter_name: str) -> Harness:
    """Buckets without object lock."""
    return _storage_cloud(
        request, adapter_name, (Feature.OBJECT_STORAGE,), BUCKET_FIELDS, lacks=Feature.OBJECT_LOCK
    )


def _volume_request(cloud: Harness, **overrides: Any) -> VolumeRequest:
    assert cloud.volume_sku is not None
    values: dict[str, Any] = {
        "order_id": uuid.uuid4(),
        "sku": cloud.volume_sku,
        "region": cloud.region,
        "name": "contract-volume",
        "size_gib": 10,
    }
    return VolumeRequest(**{**values, **overrides})


def _bucket_request(cloud: Harness, **overrides: Any) -> BucketRequest:
    order_id = overrides.pop("order_id", uuid.uuid4())
    values: dict[str, Any] = {
        "order_id": order_id,
        "sku": BUCKET_SKU,
        "region": cloud.region,
        "name": order_token(order_id),  # what the broker names a bucket
    }
    return BucketRequest(**{**values, **overrides})


def _volumes(cloud: Harness) -> VolumeDriver:
    return cloud.build().volumes()


def _buckets(cloud: Harness) -> ObjectStorageDriver:
    return cloud.build().object_storage()


def _count_volumes(cloud: Harness, token: str) -> int:
    assert cloud.count_volumes_with_token is not None
    return cloud.count_volumes_with_token(token)


def _count_buckets(cloud: Harness, token: str) -> int:
    assert cloud.count_buckets_with_token is not None
    return cloud.count_buckets_with_token(token)


def _put(cloud: Harness, bucket: Bucket, name: str) -> None:
    """Write an object as the bucket's user would, with a key the adapter issued."""
    assert cloud.put_object is not None
    key = _buckets(cloud).issue_key(bucket.ref, f"{bucket.token}-user")
    cloud.put_object(bucket, key, name)


# Block volumes ------------------------------------------------------------------------------


@EVERY_ADAPTER
def test_volume_create_get_find_resize_delete(volume_cloud: Harness) -> None:
    cloud = volume_cloud
    request = _volume_request(cloud)
    created = _volumes(cloud).ensure_volume(request)
    assert created.token == request.token
    assert created.size_gib == 10
    assert created.attached_to is None
    assert created.state in {InstanceState.PENDING, InstanceState.RUNNING}
    assert _count_volumes(cloud, request.token) == 1

    # A fresh adapter (as after a restart) sees the same volume.
    volumes = _volumes(cloud)
    fetched = volumes.get_volume(created.ref)
    assert fetched is not None and fetched.ref == created.ref
    assert fetched.state is InstanceState.RUNNING
    assert fetched.size_gib == 10
    found = volumes.find_volume(request.token)
    assert found is not None and found.ref == created.ref

    assert volumes.resize_volume(created.ref, 20).size_gib == 20
    assert volumes.resize_volume(created.ref, 20).size_gib == 20  # a retry is harmless
    with pytest.raises(Permanent) as refused:
        volumes.resize_volume(created.ref, 15)
    assert refused.value.code == "volume_shrink"
    assert (resized := _volumes(cloud).get_volume(created.ref)) is not None
    assert resized.size_gib == 20

    volumes.delete_volume(created.ref)
    gone = volumes.get_volume(created.ref)
    assert gone is None or gone.state in {InstanceState.DELETING, InstanceState.DELETED}
    assert volumes.find_volume(request.token) is None
    assert _count_volumes(cloud, request.token) == 0
    volumes.delete_volume(created.ref)  # deleting again is not an error


@EVERY_ADAPTER
def test_ensure_volume_twice_makes_one_volume(volume_cloud: Harness) -> None:
    request = _volume_request(volume_cloud)
    first = _volumes(volume_cloud).ensure_volume(request)
    second = _volumes(volume_cloud).ensure_volume(request)
    assert second.ref == first.ref
    assert _count_volumes(volume_cloud, request.token) == 1
    assert _volumes(volume_cloud).find_volume(f"broker-order-{uuid.uuid4()}-0") is None


@EVERY_ADAPTER
@pytest.mark.parametrize("fault", [Fault.TIMEOUT_AFTER_COMMIT, Fault.SERVER_ERROR])
def test_lost_volume_create_is_reconciled_by_token(volume_cloud: Harness, fault: Fault) -> None:
    cloud = volume_cloud
    request = _volume_request(cloud)
    cloud.faults.inject(Operation.PROVISION, fault)
    with pytest.raises(OutcomeUnknown):
        _volumes(cloud).ensure_volume(request)
    made = 1 if fault is Fault.TIMEOUT_AFTER_COMMIT else 0
    assert _count_volumes(cloud, request.token) == made

    retried = _volumes(cloud).ensure_volume(request)
    assert retried.token == request.token
    assert retried.size_gib == request.size_gib
    assert _count_volumes(cloud, request.token) == 1


@EVERY_ADAPTER
def test_throttled_volume_create_says_when_to_retry(volume_cloud: Harness) -> None:
    request = _volume_request(volume_cloud)
    volume_cloud.faults.inject(Operation.PROVISION, Fault.THROTTLED)
    with pytest.raises(Throttled) as throttled:
        _volumes(volume_cloud).ensure_volume(request)
    assert throttled.value.retry_after == pytest.approx(volume_cloud.faults.retry_after_seconds)
    assert _count_volumes(volume_cloud, request.token) == 0


@EVERY_ADAPTER
def test_volume_quota_exceeded_is_permanent(volume_cloud: Harness) -> None:
    request = _volume_request(volume_cloud)
    volume_cloud.faults.inject(Operation.PROVISION, Fault.QUOTA_EXCEEDED)
    with pytest.raises(Permanent) as refused:
        _volumes(volume_cloud).ensure_volume(request)
    assert refused.value.code == "quota_exceeded"
    assert _count_volumes(volume_cloud, request.token) == 0


@EVERY_ADAPTER
@pytest.mark.parametrize("operation", [Operation.GET, Operation.ACTION, Operation.DEPROVISION])
@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.THROTTLED])
def test_transient_faults_on_volumes_are_retryable(
    volume_cloud: Harness, operation: Operation, fault: Fault
) -> None:
    volumes = _volumes(volume_cloud)
    created = volumes.ensure_volume(_volume_request(volume_cloud))
    calls = {
        Operation.GET: lambda: volumes.get_volume(created.ref),
        Operation.ACTION: lambda: volumes.resize_volume(created.ref, 20),
        Operation.DEPROVISION: lambda: volumes.delete_volume(created.ref),
    }
    volume_cloud.faults.inject(operation, fault)
    with pytest.raises(Retryable) as failed:
        calls[operation]()
    assert not isinstance(failed.value, OutcomeUnknown)
    if fault is Fault.THROTTLED:
        assert isinstance(failed.value, Throttled)
    calls[operation]()  # the fault was transient: the same call now succeeds
    if operation is Operation.ACTION:
        assert (resized := volumes.get_volume(created.ref)) is not None
        assert resized.size_gib == 20


@EVERY_ADAPTER
def test_volume_deleted_out_of_band(volume_cloud: Harness) -> None:
    cloud = volume_cloud
    request = _volume_request(cloud)
    volumes = _volumes(cloud)
    created = volumes.ensure_volume(request)
    assert cloud.delete_volume_out_of_band is not None
    cloud.delete_volume_out_of_band(created.ref)
    assert volumes.get_volume(created.ref) is None
    assert volumes.find_volume(request.token) is None
    with pytest.raises(Permanent) as refused:
        volumes.resize_volume(created.ref, 20)
    assert refused.value.code == "not_found"
    volumes.delete_volume(created.ref)  # already gone counts as deleted


@EVERY_ADAPTER
def test_attach_to_a_machine_then_detach(volume_cloud: Harness) -> None:
    cloud = volume_cloud
    adapter = cloud.build()
    machine = adapter.ensure_provisioned(
        ProvisionRequest(order_id=uuid.uuid4(), sku=cloud.sku, region=cloud.region, name="vm")
    )
    volumes = adapter.volumes()
    volume = volumes.ensure_volume(_volume_request(cloud))

    assert volumes.attach_volume(volume.ref, machine.ref).attached_to == machine.ref
    assert (seen := _volumes(cloud).get_volume(volume.ref)) is not None
    assert seen.attached_to == machine.ref
    assert volumes.attach_volume(volume.ref, machine.ref).attached_to == machine.ref  # a retry

    # Attached, it is neither deleted nor attached elsewhere.
    with pytest.raises(Permanent) as refused:
        volumes.delete_volume(volume.ref)
    assert refused.value.code == "conflict"
    other = adapter.ensure_provisioned(
        ProvisionRequest(order_id=uuid.uuid4(), sku=cloud.sku, region=cloud.region, name="vm2")
    )
    with pytest.raises(Permanent) as refused:
        volumes.attach_volume(volume.ref, other.ref)
    assert refused.value.code == "conflict"
    assert _count_volumes(cloud, volume.token or "") == 1

    assert volumes.detach_volume(volume.ref).attached_to is None
    assert (seen := _volumes(cloud).get_volume(volume.ref)) is not None
    assert seen.attached_to is None
    assert volumes.detach_volume(volume.ref).attached_to is None  # not attached: done
    volumes.delete_volume(volume.ref)
    assert _count_volumes(cloud, volume.token or "") == 0


@EVERY_ADAPTER
def test_attach_to_a_machine_gone_is_not_found(volume_cloud: Harness) -> None:
    cloud = volume_cloud
    adapter = cloud.build()
    machine = adapter.ensure_provisioned(
        ProvisionRequest(order_id=uuid.uuid4(), sku=cloud.sku, region=cloud.region, name="vm")
    )
    volume = adapter.volumes().ensure_volume(_volume_request(cloud))
    cloud.delete_out_of_band(machine.ref)
    with pytest.raises(Permanent) as refused:
        adapter.volumes().attach_volume(volume.ref, machine.ref)
    assert refused.value.code == "not_found"
    assert (seen := adapter.volumes().get_volume(volume.ref)) is not None
    assert seen.attached_to is None


# Buckets ------------------------------------------------------------------------------------


@EVERY_ADAPTER
def test_bucket_create_get_find_delete(bucket_cloud: Harness) -> None:
    cloud = bucket_cloud
    request = _bucket_request(cloud)
    created = _buckets(cloud).ensure_bucket(request)
    assert created.ref == request.name
    assert created.token == request.token
    assert created.endpoint.startswith(("https://", "http://"))
    assert created.retention_days is None
    assert _count_buckets(cloud, request.token) == 1

    buckets = _buckets(cloud)
    fetched = buckets.get_bucket(created.ref)
    assert fetched is not None and fetched.ref == created.ref
    assert fetched.endpoint == created.endpoint
    found = buckets.find_bucket(request.token)
    assert found is not None and found.ref == created.ref
    assert buckets.retained(created.ref).objects == 0

    buckets.delete_bucket(created.ref)
    assert buckets.get_bucket(created.ref) is None
    assert buckets.find_bucket(request.token) is None
    assert _count_buckets(cloud, request.token) == 0
    buckets.delete_bucket(created.ref)  # deleting again is not an error


@EVERY_ADAPTER
def test_ensure_bucket_twice_makes_one_bucket(bucket_cloud: Harness) -> None:
    request = _bucket_request(bucket_cloud)
    first = _buckets(bucket_cloud).ensure_bucket(request)
    second = _buckets(bucket_cloud).ensure_bucket(request)
    assert second.ref == first.ref
    assert _count_buckets(bucket_cloud, request.token) == 1
    assert _buckets(bucket_cloud).find_bucket(f"broker-order-{uuid.uuid4()}-0") is None


@EVERY_ADAPTER
@pytest.mark.parametrize("fault", [Fault.TIMEOUT_AFTER_COMMIT, Fault.SERVER_ERROR])
def test_lost_bucket_create_is_reconciled_by_token(bucket_cloud: Harness, fault: Fault) -> None:
    cloud = bucket_cloud
    request = _bucket_request(cloud)
    cloud.faults.inject(Operation.PROVISION, fault)
    with pytest.raises(OutcomeUnknown):
        _buckets(cloud).ensure_bucket(request)
    made = 1 if fault is Fault.TIMEOUT_AFTER_COMMIT else 0
    assert _count_buckets(cloud, request.token) == made

    retried = _buckets(cloud).ensure_bucket(request)
    assert retried.ref == request.name and retried.token == request.token
    assert _count_buckets(cloud, request.token) == 1


@EVERY_ADAPTER
@pytest.mark.parametrize("operation", [Operation.GET, Operation.ACTION])
def test_transient_faults_on_buckets_are_retryable(
    bucket_cloud: Harness, operation: Operation
) -> None:
    buckets = _buckets(bucket_cloud)
    created = buckets.ensure_bucket(_bucket_request(bucket_cloud))
    calls = {
        Operation.GET: lambda: buckets.get_bucket(created.ref),
        Operation.ACTION: lambda: buckets.retained(created.ref),
    }
    bucket_cloud.faults.inject(operation, Fault.SERVER_ERROR)
    with pytest.raises(Retryable) as failed:
        calls[operation]()
    assert not isinstance(failed.value, OutcomeUnknown)
    calls[operation]()


@EVERY_ADAPTER
def test_issued_key_reaches_the_bucket_and_hides_its_secret(object_cloud: Harness) -> None:
    cloud = object_cloud
    bucket = _buckets(cloud).ensure_bucket(_bucket_request(cloud))
    buckets = _buckets(cloud)
    key = buckets.issue_key(bucket.ref, f"{bucket.token}-key")
    assert key.key_id and key.secret
    assert key.secret not in repr(key) and key.secret not in str(key)
    assert cloud.put_object is not None
    cloud.put_object(bucket, key, "hello.txt")  # the key works
    buckets.revoke_key(bucket.ref, key.key_id)
    buckets.revoke_key(bucket.ref, key.key_id)  # already revoked: done


@EVERY_ADAPTER
def test_bucket_without_retention_holding_objects_is_deleted(object_cloud: Harness) -> None:
    request = _bucket_request(object_cloud)
    bucket = _buckets(object_cloud).ensure_bucket(request)
    _put(object_cloud, bucket, "report.pdf")
    buckets = _buckets(object_cloud)
    assert buckets.retained(bucket.ref).objects == 0
    buckets.delete_bucket(bucket.ref)
    assert buckets.get_bucket(bucket.ref) is None
    assert _count_buckets(object_cloud, request.token) == 0


@EVERY_ADAPTER
def test_vault_retention_is_extended_never_shortened(vault_cloud: Harness) -> None:
    request = _bucket_request(vault_cloud, retention_days=30)
    vault = _buckets(vault_cloud).ensure_bucket(request)
    assert vault.retention_days == 30
    buckets = _buckets(vault_cloud)
    assert (fetched := buckets.get_bucket(vault.ref)) is not None
    assert fetched.retention_days == 30

    assert buckets.set_retention(vault.ref, 60).retention_days == 60
    assert buckets.set_retention(vault.ref, 60).retention_days == 60  # a retry is harmless
    with pytest.raises(Permanent) as refused:
        buckets.set_retention(vault.ref, 10)
    assert refused.value.code == "retention_shortened"
    assert (kept := _buckets(vault_cloud).get_bucket(vault.ref)) is not None
    assert kept.retention_days == 60


@EVERY_ADAPTER
def test_vault_holding_objects_under_retention_is_not_deleted(vault_cloud: Harness) -> None:
    request = _bucket_request(vault_cloud, retention_days=365)
    vault = _buckets(vault_cloud).ensure_bucket(request)
    _put(vault_cloud, vault, "minutes-2026.pdf")

    buckets = _buckets(vault_cloud)
    held = buckets.retained(vault.ref)
    assert held.objects == 1
    assert held.until is not None and held.until > datetime.now(UTC) + timedelta(days=364)
    with pytest.raises(Permanent) as refused:
        buckets.delete_bucket(vault.ref)
    assert refused.value.code == "under_retention"
    assert buckets.get_bucket(vault.ref) is not None
    assert _count_buckets(vault_cloud, request.token) == 1


@EVERY_ADAPTER
def test_retention_without_object_lock_is_unsupported(lockless_cloud: Harness) -> None:
    request = _bucket_request(lockless_cloud, retention_days=30)
    with pytest.raises(Permanent) as refused:
        _buckets(lockless_cloud).ensure_bucket(request)
    assert refused.value.code == "unsupported"
    assert _count_buckets(lockless_cloud, request.token) == 0


# The simulated cloud's own rules, beyond the contract ----------------------------------------


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Harness]:
    with simulated_harness.harness(tmp_path) as cloud:
        yield cloud


def _simulated_adapter(
    tmp_path: Path, clock: Callable[[], datetime] | None = None, **settings: Any
) -> SimulatedAdapter:
    context = test_context(tmp_path)
    if clock is not None:
        context = dataclasses.replace(context, clock=clock)
    return SimulatedAdapter(settings, {}, context)


def test_simulated_issue_key_is_deduplicated_by_token(simulated: Harness) -> None:
    bucket = _buckets(simulated).ensure_bucket(_bucket_request(simulated))
    simulated.faults.inject(Operation.ACTION, Fault.TIMEOUT_AFTER_COMMIT)
    with pytest.raises(Retryable):
        _buckets(simulated).issue_key(bucket.ref, "key-for-order")  # the answer is lost
    first = _buckets(simulated).issue_key(bucket.ref, "key-for-order")
    again = _buckets(simulated).issue_key(bucket.ref, "key-for-order")
    assert again == first
    other = _buckets(simulated).issue_key(bucket.ref, "rotated")
    assert other.key_id != first.key_id

    adapter = simulated.build()
    assert isinstance(adapter, SimulatedAdapter)
    assert [k["token"] for k in adapter.cloud.keys().values()] == ["key-for-order", "rotated"]
    adapter.revoke_key(bucket.ref, first.key_id)
    with pytest.raises(Permanent) as refused:
        adapter.cloud.put_object(bucket.ref, "x", access_key_id=first.key_id)
    assert refused.value.code == "unauthorized"
    # A revoked key's token gets a new key.
    assert adapter.issue_key(bucket.ref, "key-for-order").key_id not in {first.key_id, other.key_id}


def test_simulated_volume_rules(tmp_path: Path) -> None:
    adapter = _simulated_adapter(
        tmp_path,
        max_volumes=1,
        volume_types=[{"sku": "fast", "iops": 5000}, {"sku": "north", "region": "sim-2"}],
    )
    with pytest.raises(Permanent) as refused:
        adapter.create_volume(_volume_request_for("sim-ssd"), "t")
    assert refused.value.code == "invalid_request"  # not a type of these settings
    with pytest.raises(Permanent) as refused:
        adapter.create_volume(_volume_request_for("north", region="sim-1"), "t")
    assert refused.value.code == "invalid_request"  # a type of another region

    volume = adapter.ensure_volume(_volume_request_for("fast"))
    assert volume.extra["iops"] == 5000
    with pytest.raises(Permanent) as refused:
        adapter.ensure_volume(_volume_request_for("fast"))
    assert refused.value.code == "quota_exceeded"

    # Attaching to an unknown machine, or to one of another region, is refused.
    with pytest.raises(Permanent) as refused:
        adapter.attach_volume(volume.ref, "sim-999999")
    assert refused.value.code == "not_found"
    far = adapter.ensure_provisioned(
        ProvisionRequest(order_id=uuid.uuid4(), sku="sim-small", region="sim-2", name="far")
    )
    with pytest.raises(Permanent) as refused:
        adapter.attach_volume(volume.ref, far.ref)
    assert refused.value.code == "invalid_request"

    # A machine deleted takes its attachments with it; the volume stays.
    near = adapter.ensure_provisioned(
        ProvisionRequest(order_id=uuid.uuid4(), sku="sim-small", region="sim-1", name="near")
    )
    adapter.attach_volume(volume.ref, near.ref)
    adapter.deprovision(near.ref)
    assert (left := adapter.get_volume(volume.ref)) is not None and left.attached_to is None
    adapter.delete_volume(volume.ref)
    assert adapter.cloud.volumes()[volume.ref]["state"] == "deleted"


def _volume_request_for(sku: str, region: str = "sim-1") -> VolumeRequest:
    return VolumeRequest(
        order_id=uuid.uuid4(), sku=sku, region=region, name="v", size_gib=5, iops=None
    )


def test_simulated_volume_is_pending_until_ready(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    clock = {"now": now}
    adapter = _simulated_adapter(tmp_path, lambda: clock["now"], provision_delay_seconds=30)
    volume = adapter.ensure_volume(_volume_request_for("sim-ssd"))
    assert volume.state is InstanceState.PENDING
    with pytest.raises(Permanent) as refused:
        adapter.resize_volume(volume.ref, 10)
    assert refused.value.code == "conflict"
    clock["now"] = now + timedelta(seconds=30)
    assert adapter.resize_volume(volume.ref, 10).state is InstanceState.RUNNING


def test_simulated_retention_follows_the_clock(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    clock = {"now": now}
    adapter = _simulated_adapter(
        tmp_path, lambda: clock["now"], object_storage_endpoint="https://oos.example"
    )
    vault = adapter.ensure_bucket(
        BucketRequest(uuid.uuid4(), "standard", "sim-1", "vault-1", retention_days=10)
    )
    assert vault.endpoint == "https://oos.example" and vault.versioning
    adapter.cloud.put_object("vault-1", "a", at=now - timedelta(days=20))  # already free
    adapter.cloud.put_object("vault-1", "b")  # now, by the cloud's clock
    held = adapter.retained("vault-1")
    assert held.objects == 1 and held.until == now + timedelta(days=10)
    with pytest.raises(Permanent) as refused:
        adapter.delete_bucket("vault-1")
    assert refused.value.code == "under_retention"
    assert "until 2026-03-11" in str(refused.value)

    clock["now"] = now + timedelta(days=10, seconds=1)
    assert adapter.retained("vault-1").objects == 0
    adapter.delete_bucket("vault-1")
    assert adapter.cloud.buckets() == {}

    # A name is the bucket's at the cloud: another order cannot take it; bad names are refused.
    adapter.ensure_bucket(BucketRequest(uuid.uuid4(), "standard", "sim-1", "taken"))
    with pytest.raises(Permanent) as refused:
        adapter.ensure_bucket(BucketRequest(uuid.uuid4(), "standard", "sim-1", "taken"))
    assert refused.value.code == "conflict"
    with pytest.raises(Permanent) as refused:
        adapter.ensure_bucket(BucketRequest(uuid.uuid4(), "standard", "sim-1", "Not_A_Bucket"))
    assert refused.value.code == "invalid_request"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"volume_types": [{"name": "no sku"}]}, "volume_types"),
        ({"volume_types": {"sku": "x"}}, "volume_types"),
        ({"volume_types": [{"sku": "x", "iops": 0}]}, "volume_types"),
        ({"max_volumes": "3"}, "max_volumes"),
        ({"object_storage_endpoint": "ftp://x"}, "object_storage_endpoint"),
    ],
)
def test_simulated_storage_settings_are_checked(
    tmp_path: Path, settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(SettingsInvalid) as refused:
        _simulated_adapter(tmp_path, **settings)
    assert refused.value.field_name == field
