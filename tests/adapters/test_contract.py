"""The adapter contract, held against every registered adapter.

Parametrized over the adapters installed through the `cloud_broker.providers` entry points:
an adapter added to the broker without a harness (conftest.py's `HARNESSES`) fails the suite
rather than going untested. Each runs against its own cloud: the simulated one in process,
OpenStack and Outscale against local fake servers speaking their APIs.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from providers import registry
from providers.base import (
    Action,
    Feature,
    InstanceState,
    OutcomeUnknown,
    Permanent,
    ProvisionRequest,
    Retryable,
    Throttled,
)
from providers.faults import Fault, Operation
from tests.adapters.harness import Harness

# The `cloud` fixture (each adapter's harness) is in conftest.py, shared with the storage suite.
pytestmark = pytest.mark.parametrize("adapter_name", registry.names())


def _request(cloud: Harness, **overrides: Any) -> ProvisionRequest:
    values: dict[str, Any] = {
        "order_id": uuid.uuid4(),
        "sku": cloud.sku,
        "region": cloud.region,
        "name": "contract-vm",
    }
    return ProvisionRequest(**{**values, **overrides})


def test_lists_its_machine_types(cloud: Harness) -> None:
    offers = list(cloud.build().list_offers())
    skus = {offer.sku for offer in offers}
    assert cloud.sku in skus
    assert len(skus) == len(offers)
    for offer in offers:
        assert offer.vcpu > 0 and offer.ram_gib > 0 and offer.disk_gib >= 0


def test_provision_get_stop_start_deprovision(cloud: Harness) -> None:
    adapter = cloud.build()
    request = _request(cloud)
    created = adapter.ensure_provisioned(request)
    assert created.token == request.token
    assert created.state in {InstanceState.PENDING, InstanceState.RUNNING}

    # A fresh adapter (as after a restart) sees the same instance.
    adapter = cloud.build()
    fetched = adapter.get(created.ref)
    assert fetched is not None and fetched.ref == created.ref
    assert fetched.state is InstanceState.RUNNING
    found = adapter.find_by_token(request.token)
    assert found is not None and found.ref == created.ref

    assert Feature.STOP_START in adapter.features
    assert adapter.action(created.ref, Action.STOP).state in {
        InstanceState.STOPPING,
        InstanceState.STOPPED,
    }
    assert (stopped := adapter.get(created.ref)) is not None
    assert stopped.state is InstanceState.STOPPED
    adapter.action(created.ref, Action.START)
    assert (started := adapter.get(created.ref)) is not None
    assert started.state is InstanceState.RUNNING

    adapter.deprovision(created.ref)
    gone = adapter.get(created.ref)
    assert gone is None or gone.state in {InstanceState.DELETING, InstanceState.DELETED}
    assert adapter.find_by_token(request.token) is None
    assert cloud.count_with_token(request.token) == 0
    adapter.deprovision(created.ref)  # deleting again is not an error


def test_unknown_token_and_ref(cloud: Harness) -> None:
    adapter = cloud.build()
    assert adapter.find_by_token(f"broker-order-{uuid.uuid4()}") is None
    created = adapter.ensure_provisioned(_request(cloud))
    cloud.delete_out_of_band(created.ref)
    assert adapter.get(created.ref) is None
    with pytest.raises(Permanent) as refused:
        adapter.action(created.ref, Action.STOP)
    assert refused.value.code == "not_found"


def test_ensure_provisioned_twice_makes_one_instance(cloud: Harness) -> None:
    adapter = cloud.build()
    request = _request(cloud)
    first = adapter.ensure_provisioned(request)
    second = cloud.build().ensure_provisioned(request)
    assert second.ref == first.ref
    assert cloud.count_with_token(request.token) == 1


@pytest.mark.parametrize("fault", [Fault.TIMEOUT_AFTER_COMMIT, Fault.TIMEOUT_BEFORE])
def test_lost_create_is_reconciled_by_token(cloud: Harness, fault: Fault) -> None:
    request = _request(cloud)
    cloud.faults.inject(Operation.PROVISION, fault)
    with pytest.raises(OutcomeUnknown):
        cloud.build().ensure_provisioned(request)
    made = 1 if fault is Fault.TIMEOUT_AFTER_COMMIT else 0
    assert cloud.count_with_token(request.token) == made

    retried = cloud.build().ensure_provisioned(request)
    assert retried.token == request.token
    assert cloud.count_with_token(request.token) == 1


def test_create_failing_with_5xx_is_outcome_unknown(cloud: Harness) -> None:
    request = _request(cloud)
    cloud.faults.inject(Operation.PROVISION, Fault.SERVER_ERROR)
    with pytest.raises(OutcomeUnknown):
        cloud.build().ensure_provisioned(request)
    cloud.build().ensure_provisioned(request)
    assert cloud.count_with_token(request.token) == 1


def test_throttled_create_says_when_to_retry(cloud: Harness) -> None:
    request = _request(cloud)
    cloud.faults.inject(Operation.PROVISION, Fault.THROTTLED)
    with pytest.raises(Throttled) as throttled:
        cloud.build().ensure_provisioned(request)
    assert throttled.value.retry_after == pytest.approx(cloud.faults.retry_after_seconds)
    assert cloud.count_with_token(request.token) == 0


def test_quota_exceeded_is_permanent(cloud: Harness) -> None:
    request = _request(cloud)
    cloud.faults.inject(Operation.PROVISION, Fault.QUOTA_EXCEEDED)
    with pytest.raises(Permanent) as refused:
        cloud.build().ensure_provisioned(request)
    assert refused.value.code == "quota_exceeded"
    assert cloud.count_with_token(request.token) == 0


@pytest.mark.parametrize(
    "operation", [Operation.GET, Operation.ACTION, Operation.DEPROVISION, Operation.LIST_OFFERS]
)
@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.THROTTLED])
def test_transient_faults_are_retryable(cloud: Harness, operation: Operation, fault: Fault) -> None:
    adapter = cloud.build()
    created = adapter.ensure_provisioned(_request(cloud))
    calls = {
        Operation.GET: lambda: adapter.get(created.ref),
        Operation.ACTION: lambda: adapter.action(created.ref, Action.STOP),
        Operation.DEPROVISION: lambda: adapter.deprovision(created.ref),
        Operation.LIST_OFFERS: lambda: list(adapter.list_offers()),
    }
    cloud.faults.inject(operation, fault)
    with pytest.raises(Retryable) as failed:
        calls[operation]()
    assert not isinstance(failed.value, OutcomeUnknown)
    if fault is Fault.THROTTLED:
        assert isinstance(failed.value, Throttled)
    calls[operation]()  # the fault was transient: the same call now succeeds


def test_read_timeout_is_retryable(cloud: Harness) -> None:
    adapter = cloud.build()
    created = adapter.ensure_provisioned(_request(cloud))
    cloud.faults.inject(Operation.GET, Fault.TIMEOUT_BEFORE)
    with pytest.raises(Retryable):
        adapter.get(created.ref)
    assert (fetched := adapter.get(created.ref)) is not None and fetched.ref == created.ref


def test_instance_deleted_out_of_band(cloud: Harness) -> None:
    adapter = cloud.build()
    request = _request(cloud)
    created = adapter.ensure_provisioned(request)
    cloud.faults.inject(Operation.GET, Fault.DELETED_OUT_OF_BAND)
    assert adapter.get(created.ref) is None
    assert adapter.find_by_token(request.token) is None
    adapter.deprovision(created.ref)  # already gone counts as deleted


def test_deprovision_of_an_instance_deleted_meanwhile(cloud: Harness) -> None:
    adapter = cloud.build()
    created = adapter.ensure_provisioned(_request(cloud))
    cloud.faults.inject(Operation.DEPROVISION, Fault.DELETED_OUT_OF_BAND)
    adapter.deprovision(created.ref)
    assert adapter.get(created.ref) is None
