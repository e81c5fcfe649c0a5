"""The Outscale adapter: against the fake Outscale API (and the local S3 standing in for OOS),
and unit tests of its error mapping.

The contract suites (test_contract.py, test_storage_contract.py) hold every adapter to the
shared behaviour; this file covers what is Outscale's own: the ClientToken that makes a lost
create harmless (VMs and volumes), the request signature, the SDK's defaults the adapter must
switch off, the mapping of Outscale's and S3's error answers, the device a volume attaches on,
and the vault: a bucket with object lock in compliance mode, the EIM user and keys that reach
it, and what boto3 must not read from the environment.
"""

from __future__ import annotations

import email.utils
import json
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from providers.base import (
    AccessKey,
    Action,
    AdapterContext,
    BucketRequest,
    InstanceState,
    OutcomeUnknown,
    Permanent,
    ProvisionRequest,
    Retryable,
    SettingsInvalid,
    Throttled,
    VolumeRequest,
    order_token,
)
from providers.faults import FaultPlan
from providers.http import HttpPolicy
from providers.outscale import DEFAULT_RETRY_AFTER, ORDER_TAG, OutscaleAdapter
from providers.s3 import KEY_ACTIONS, S3ObjectStorage
from tests.adapters import moto_s3
from tests.adapters.fake_outscale import (
    ACCESS_KEY,
    ACCOUNT_ID,
    IMAGE,
    REGION,
    SECRET_KEY,
    SKU,
    FakeOutscale,
    build_adapter,
    fake_outscale_cloud,
    harness,
    serve,
)
from tests.adapters.harness import TEST_TIMEOUT
from tests.adapters.harness import test_context as adapter_context

API = f"https://api.{REGION}.outscale.com/api/v1"  # the default endpoint for REGION

# One fake cloud for the module (starting and stopping a server costs up to half a second);
# every test uses fresh tokens and starts with an empty fault plan.
_faults = FaultPlan(retry_after_seconds=3)


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeOutscale, str]]:
    with serve(_faults) as served:
        yield served


@pytest.fixture
def cloud(fake: tuple[FakeOutscale, str]) -> Iterator[FakeOutscale]:
    _faults.clear()
    yield fake[0]
    _faults.clear()


@pytest.fixture
def endpoint(fake: tuple[FakeOutscale, str]) -> str:
    return fake[1]


@pytest.fixture
def s3() -> Iterator[str]:
    """The local S3 standing in for OOS, emptied, with the module's fault plan."""
    with moto_s3.moto_s3(_faults) as (url, _plan):
        yield url


def _request(**overrides: Any) -> ProvisionRequest:
    values: dict[str, Any] = {"order_id": uuid.uuid4(), "sku": SKU, "region": REGION, "name": "vm"}
    return ProvisionRequest(**{**values, **overrides})


# -- against the fake Outscale ----------------------------------------------------------------


def test_lifecycle(cloud: FakeOutscale, endpoint: str, tmp_path: Path) -> None:
    adapter = build_adapter(endpoint, tmp_path)

    offers = {offer.sku: offer for offer in adapter.list_offers()}
    # Three VM types over two pages (the fake pages by two).
    assert set(offers) == {"tinav5.c1r1p2", SKU, "tinav5.c4r16p1"}
    big = offers["tinav5.c4r16p1"]
    assert (big.vcpu, big.ram_gib, big.disk_gib, big.region) == (4, Decimal("16.5"), 100, REGION)
    assert offers[SKU].disk_gib == 0

    request = _request(name="web-1")
    created = adapter.provision(request, request.token)
    assert created.state is InstanceState.RUNNING
    assert (created.token, created.sku, created.region) == (request.token, SKU, REGION)
    [vm] = cloud.with_token(request.token)
    assert vm["VmId"] == created.ref and vm["ClientToken"] == request.token
    assert vm["ImageId"] == IMAGE
    tags = {tag["Key"]: tag["Value"] for tag in vm["Tags"]}
    assert tags == {ORDER_TAG: request.token, "Name": "web-1"}

    assert (fetched := adapter.get(created.ref)) is not None
    assert fetched.state is InstanceState.RUNNING and fetched.addresses == (vm["PrivateIp"],)
    assert adapter.action(created.ref, Action.STOP).state is InstanceState.STOPPED
    assert cloud.vms[created.ref]["State"] == "stopped"
    assert adapter.action(created.ref, Action.START).state is InstanceState.RUNNING
    assert adapter.action(created.ref, Action.REBOOT).state is InstanceState.RUNNING
    assert (found := adapter.find_by_token(request.token)) is not None
    assert found.ref == created.ref

    adapter.deprovision(created.ref)
    assert cloud.vms[created.ref]["State"] == "terminated"
    assert adapter.get(created.ref) is None
    assert adapter.find_by_token(request.token) is None
    adapter.deprovision(created.ref)  # again: gone counts as deleted
    adapter.deprovision("i-0badf00d")  # never existed: same
    with pytest.raises(Permanent) as refused:
        adapter.action(created.ref, Action.START)
    assert refused.value.code == "not_found"


def test_lost_create_answer_is_made_harmless_by_the_client_token(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    request = _request()
    _faults.inject("provision", "timeout_after_commit")
    with pytest.raises(OutcomeUnknown):
        build_adapter(endpoint, tmp_path).ensure_provisioned(request)
    [made] = cloud.with_token(request.token)  # the VM was made; its answer was lost

    creates = cloud.calls.count("CreateVms")
    # Straight to CreateVms again, without looking the VM up first: Outscale itself answers
    # with the VM of the lost call.
    again = build_adapter(endpoint, tmp_path).provision(request, request.token)
    assert cloud.calls.count("CreateVms") == creates + 1
    assert again.ref == made["VmId"]
    assert cloud.count_with_token(request.token) == 1
    # The replay also tagged the VM, which the lost call never got to.
    assert {tag["Key"]: tag["Value"] for tag in made["Tags"]}[ORDER_TAG] == request.token


def test_a_token_whose_vm_was_deleted_cannot_create_another(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    adapter = build_adapter(endpoint, tmp_path)
    request = _request()
    created = adapter.provision(request, request.token)
    cloud.terminate(created.ref)
    with pytest.raises(Permanent) as refused:
        adapter.ensure_provisioned(request)
    assert refused.value.code == "token_consumed"
    assert cloud.count_with_token(request.token) == 0


@pytest.mark.parametrize(
    "access_key, secret_key",
    [("AKWRONGWRONGWRONG00001", SECRET_KEY), (ACCESS_KEY, "not-the-secret-key-at-all-0000")],
    ids=["wrong-access-key", "wrong-secret-key"],
)
def test_bad_credentials_are_unauthorized_and_never_echoed(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path, access_key: str, secret_key: str
) -> None:
    adapter = build_adapter(endpoint, tmp_path, access_key=access_key, secret_key=secret_key)
    request = _request()
    for call in (lambda: list(adapter.list_offers()), lambda: adapter.provision(request, "t")):
        with pytest.raises(Permanent) as refused:
            call()
        assert refused.value.code == "unauthorized"
        printed = "".join(traceback.format_exception(refused.value))
        assert access_key not in printed and secret_key not in printed
    assert cloud.count_with_token("t") == 0


def test_echoed_access_key_is_masked(cloud: FakeOutscale, endpoint: str, tmp_path: Path) -> None:
    # The fake names an unknown access key in its refusal, as real APIs do.
    adapter = build_adapter(endpoint, tmp_path, access_key="AKECHOEDECHOED000001")
    with pytest.raises(Permanent) as refused:
        adapter.get("i-00000001")
    assert "Unknown access key ***" in str(refused.value)


def test_fault_mapping_against_the_fake(cloud: FakeOutscale, endpoint: str, tmp_path: Path) -> None:
    adapter = build_adapter(endpoint, tmp_path)
    request = _request()

    _faults.inject("provision", "quota_exceeded")
    with pytest.raises(Permanent) as refused:
        adapter.ensure_provisioned(request)
    assert refused.value.code == "quota_exceeded"

    _faults.inject("provision", "throttled")
    with pytest.raises(Throttled) as throttled:
        adapter.ensure_provisioned(request)
    assert throttled.value.retry_after == 3.0

    _faults.inject("provision", "server_error")
    with pytest.raises(OutcomeUnknown):
        adapter.ensure_provisioned(request)
    assert cloud.count_with_token(request.token) == 0

    created = adapter.ensure_provisioned(request)
    _faults.inject("get", "server_error")
    with pytest.raises(Retryable) as failed:
        adapter.get(created.ref)
    assert not isinstance(failed.value, OutcomeUnknown)

    _faults.inject("action", "deleted_out_of_band")
    with pytest.raises(Permanent) as gone:
        adapter.action(created.ref, Action.STOP)
    assert gone.value.code == "not_found"


def test_read_timeout_is_retryable_not_outcome_unknown(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    _faults.inject("list_offers", "timeout_before")
    with pytest.raises(Retryable) as failed:
        list(build_adapter(endpoint, tmp_path).list_offers())
    assert not isinstance(failed.value, OutcomeUnknown)
    assert "timed out" in str(failed.value)


def test_unknown_vm_type_is_an_invalid_request(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    request = _request(sku="tinav99.c1r1")
    with pytest.raises(Permanent) as refused:
        build_adapter(endpoint, tmp_path).provision(request, request.token)
    assert refused.value.code == "invalid_request"
    assert "5024" in str(refused.value)


def test_osc_environment_and_config_file_are_ignored(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left to itself the SDK reads these: basic auth would replace the signature, the
    # endpoint would move, and a missing config file would make every call fail.
    monkeypatch.setenv("OSC_LOGIN", "someone@example.com")
    monkeypatch.setenv("OSC_PASSWORD", "hunter2")
    monkeypatch.setenv("OSC_ENDPOINT_API", "https://elsewhere.example.com/api/v1")
    monkeypatch.setenv("OSC_CONFIG_FILE", str(tmp_path / "missing.json"))
    monkeypatch.setenv("OSC_PROFILE", "other")
    adapter = build_adapter(endpoint, tmp_path)
    assert SKU in {offer.sku for offer in adapter.list_offers()}


def test_harness_shape(tmp_path: Path) -> None:
    with harness(tmp_path) as h:
        adapter = h.build()
        assert isinstance(adapter, OutscaleAdapter)
        assert h.features == OutscaleAdapter.features
        request = _request(sku=h.sku, region=h.region)
        created = adapter.ensure_provisioned(request)
        assert h.count_with_token(request.token) == 1
        h.delete_out_of_band(created.ref)
        assert h.count_with_token(request.token) == 0
        assert adapter.get(created.ref) is None


# -- settings and the endpoint policy ----------------------------------------------------------


def _strict(tmp_path: Path) -> AdapterContext:
    return AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy(timeout=1, allow_private=False))


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/api/v1",
        "http://127.0.0.1:8080/api/v1",
        "https://169.254.169.254/api/v1",
        "http://api.eu-west-2.outscale.com/api/v1",
    ],
)
def test_private_or_plain_http_endpoint_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(SettingsInvalid) as refused:
        OutscaleAdapter(
            {"region": REGION, "endpoint": url},
            {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            _strict(tmp_path),
        )
    assert refused.value.field_name == "endpoint"


def test_endpoint_refused_at_connect_time_is_settings_invalid(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    # Accepted when configured (say the name resolved to a public address then), refused by
    # the session when it connects: the adapter reports a settings problem, not a glitch.
    adapter = build_adapter(endpoint, tmp_path)
    adapter.context = _strict(tmp_path)
    calls = len(cloud.calls)
    request = _request()
    with pytest.raises(SettingsInvalid):
        adapter.provision(request, request.token)
    assert len(cloud.calls) == calls


@pytest.mark.parametrize(
    "settings, credentials, field",
    [
        ({"region": "eu-west-2.evil.example#"}, None, "region"),
        ({"region": REGION, "flavour": "x"}, None, "flavour"),
        ({"region": REGION, "endpoint": f"{API}?x=1"}, None, "endpoint"),
        ({"region": REGION}, {"access_key": ACCESS_KEY}, "secret_key"),
        ({"region": REGION}, {"access_key": "", "secret_key": SECRET_KEY}, "access_key"),
    ],
)
def test_bad_settings(
    tmp_path: Path,
    settings: dict[str, Any],
    credentials: dict[str, str] | None,
    field: str,
) -> None:
    with pytest.raises(SettingsInvalid) as refused:
        OutscaleAdapter(
            settings,
            credentials or {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            adapter_context(tmp_path),
        )
    assert refused.value.field_name == field


def test_order_for_another_region_is_refused(tmp_path: Path) -> None:
    adapter = _mocked(tmp_path)
    request = _request(region="us-east-2")
    with pytest.raises(Permanent) as refused:
        adapter.provision(request, request.token)
    assert refused.value.code == "invalid_request"


# -- error mapping, with the HTTP exchange mocked ------------------------------------------------


def _mocked(tmp_path: Path) -> OutscaleAdapter:
    """An adapter on the default endpoint (requests-mock answers in place of Outscale)."""
    return OutscaleAdapter(
        {"region": REGION, "image": IMAGE},
        {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
        adapter_context(tmp_path),
    )


def _errors(type_: str, code: str = "", details: str = "") -> dict[str, Any]:
    return {
        "Errors": [{"Type": type_, "Code": code, "Details": details}],
        "ResponseContext": {"RequestId": "r-1"},
    }


@pytest.mark.parametrize(
    "header, expected",
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({}, DEFAULT_RETRY_AFTER),
        ({"Retry-After": "soon"}, DEFAULT_RETRY_AFTER),
    ],
)
def test_429_retry_after(
    requests_mock: Any, tmp_path: Path, header: dict[str, str], expected: float
) -> None:
    requests_mock.post(
        f"{API}/CreateVms", status_code=429, headers=header, json=_errors("TooManyRequests")
    )
    request = _request()
    with pytest.raises(Throttled) as throttled:
        _mocked(tmp_path).provision(request, request.token)
    assert throttled.value.retry_after == pytest.approx(expected)
    # One attempt only (the SDK would retry a 429 three times, sleeping in between), sent
    # with the policy's timeout and the AK/SK signature.
    assert requests_mock.call_count == 1
    sent = requests_mock.last_request
    assert sent.timeout == TEST_TIMEOUT
    assert sent.headers["Authorization"].startswith(f"OSC4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert sent.json()["ClientToken"] == request.token


def test_429_retry_after_as_a_date(requests_mock: Any, tmp_path: Path) -> None:
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    requests_mock.post(f"{API}/ReadVms", status_code=429, headers={"Retry-After": later})
    with pytest.raises(Throttled) as throttled:
        _mocked(tmp_path).get("i-1")
    assert 55 <= throttled.value.retry_after <= 60


@pytest.mark.parametrize(
    "status, body, code",
    [
        (
            400,
            _errors("TooManyResources (QuotaExceded)", "10029", "too-many-cores"),
            "quota_exceeded",
        ),
        (400, _errors("InvalidParameterValue", "4091", "token-mismatch"), "invalid_request"),
        (401, _errors("AccessDenied", "1"), "unauthorized"),
    ],
)
def test_create_refusals(
    requests_mock: Any, tmp_path: Path, status: int, body: dict[str, Any], code: str
) -> None:
    requests_mock.post(f"{API}/CreateVms", status_code=status, json=body)
    request = _request()
    with pytest.raises(Permanent) as refused:
        _mocked(tmp_path).provision(request, request.token)
    assert refused.value.code == code


@pytest.mark.parametrize(
    "answer",
    [
        {"status_code": 503, "json": _errors("InternalError")},
        {"status_code": 502, "text": "<html>bad gateway</html>"},
        {"status_code": 400, "json": _errors("InsufficientCapacity", "10001")},
        {"status_code": 200, "text": "not json"},
        {"status_code": 200, "json": {"ResponseContext": {}}},
        {"exc": requests.ConnectTimeout},
        {"exc": requests.ConnectionError},
    ],
    ids=["503", "502-html", "no-capacity", "not-json", "no-vm", "connect-timeout", "reset"],
)
def test_create_failures_are_outcome_unknown(
    requests_mock: Any, tmp_path: Path, answer: dict[str, Any]
) -> None:
    requests_mock.post(f"{API}/CreateVms", **answer)
    request = _request()
    with pytest.raises(OutcomeUnknown):
        _mocked(tmp_path).provision(request, request.token)
    assert requests_mock.call_count == 1


@pytest.mark.parametrize(
    "answer",
    [{"status_code": 503, "json": _errors("InternalError")}, {"exc": requests.ReadTimeout}],
)
def test_read_failures_are_retryable(
    requests_mock: Any, tmp_path: Path, answer: dict[str, Any]
) -> None:
    requests_mock.post(f"{API}/ReadVms", **answer)
    with pytest.raises(Retryable) as failed:
        _mocked(tmp_path).get("i-1")
    assert not isinstance(failed.value, OutcomeUnknown)


@pytest.mark.parametrize(
    "answer",
    [
        {"json": {"Vms": [], "ResponseContext": {}}},
        {"status_code": 400, "json": _errors("InvalidResource", "5063", "no-such-vm")},
        {"json": {"Vms": [{"VmId": "i-1", "State": "terminated"}], "ResponseContext": {}}},
    ],
    ids=["not-listed", "no-such-vm", "terminated"],
)
def test_absent_vm_is_none(requests_mock: Any, tmp_path: Path, answer: dict[str, Any]) -> None:
    requests_mock.post(f"{API}/ReadVms", **answer)
    assert _mocked(tmp_path).get("i-1") is None
    assert requests_mock.last_request.json()["Filters"] == {"VmIds": ["i-1"]}


@pytest.mark.parametrize(
    "state, expected",
    [
        ("pending", InstanceState.PENDING),
        ("shutting-down", InstanceState.DELETING),
        ("quarantine", InstanceState.ERROR),
        ("hibernating", InstanceState.UNKNOWN),
    ],
)
def test_state_map(requests_mock: Any, tmp_path: Path, state: str, expected: InstanceState) -> None:
    requests_mock.post(
        f"{API}/ReadVms", json={"Vms": [{"VmId": "i-1", "State": state}], "ResponseContext": {}}
    )
    assert (instance := _mocked(tmp_path).get("i-1")) is not None
    assert instance.state is expected


def test_find_by_token_filters_on_client_token(requests_mock: Any, tmp_path: Path) -> None:
    vms = [
        {"VmId": "i-old", "State": "terminated", "ClientToken": "tok"},
        {"VmId": "i-live", "State": "running", "ClientToken": "tok"},
    ]
    requests_mock.post(f"{API}/ReadVms", json={"Vms": vms, "ResponseContext": {}})
    assert (found := _mocked(tmp_path).find_by_token("tok")) is not None
    assert found.ref == "i-live" and found.token == "tok"
    assert requests_mock.last_request.json()["Filters"] == {"ClientTokens": ["tok"]}


# -- volumes ----------------------------------------------------------------------------------


def _volume_request(**overrides: Any) -> VolumeRequest:
    values: dict[str, Any] = {
        "order_id": uuid.uuid4(),
        "sku": "gp2",
        "region": REGION,
        "name": "data",
        "size_gib": 100,
    }
    return VolumeRequest(**{**values, **overrides})


def _sent(cloud: FakeOutscale, action: str) -> list[dict[str, Any]]:
    return [body for name, body in cloud.bodies if name == action]


def test_volume_create_sends_the_client_token_and_tags_the_volume(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    request = _volume_request(name="ledger")
    volume = build_adapter(endpoint, tmp_path).volumes().create_volume(request, request.token)
    # Outscale answers while the volume is being made.
    assert volume.state is InstanceState.PENDING and volume.size_gib == 100
    assert _sent(cloud, "CreateVolume")[-1] == {
        "ClientToken": request.token,
        "VolumeType": "gp2",
        "Size": 100,
        "SubregionName": f"{REGION}a",  # where Outscale puts VMs without a placement too
    }
    [made] = cloud.volumes_with_token(request.token)
    tags = {tag["Key"]: tag["Value"] for tag in made["Tags"]}
    assert tags == {ORDER_TAG: request.token, "Name": "ledger"}
    fetched = build_adapter(endpoint, tmp_path).volumes().get_volume(volume.ref)
    assert fetched is not None and fetched.state is InstanceState.RUNNING
    assert fetched.extra["volume_type"] == "gp2" and fetched.encrypted


def test_lost_volume_create_answer_is_made_harmless_by_the_client_token(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    request = _volume_request()
    _faults.inject("provision", "timeout_after_commit")
    with pytest.raises(OutcomeUnknown):
        build_adapter(endpoint, tmp_path).volumes().create_volume(request, request.token)
    [made] = cloud.volumes_with_token(request.token)
    # Straight to CreateVolume again: Outscale answers with the volume of the lost call.
    again = build_adapter(endpoint, tmp_path).volumes().create_volume(request, request.token)
    assert again.ref == made["VolumeId"]
    assert cloud.count_volumes_with_token(request.token) == 1


def test_volumes_attach_on_the_next_free_device(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    adapter = build_adapter(endpoint, tmp_path)
    vm = adapter.ensure_provisioned(_request())
    volumes = adapter.volumes()
    first, second, third = (volumes.ensure_volume(_volume_request()) for _ in range(3))

    assert volumes.attach_volume(first.ref, vm.ref).extra["device_name"] == "/dev/xvdb"
    assert volumes.attach_volume(second.ref, vm.ref).extra["device_name"] == "/dev/xvdc"
    volumes.detach_volume(first.ref)
    assert volumes.attach_volume(third.ref, vm.ref).extra["device_name"] == "/dev/xvdb"
    devices = {
        ref: [(link["VmId"], link["DeviceName"]) for link in cloud.volumes[ref]["LinkedVolumes"]]
        for ref in (first.ref, second.ref, third.ref)
    }
    assert devices == {
        first.ref: [],
        second.ref: [(vm.ref, "/dev/xvdc")],
        third.ref: [(vm.ref, "/dev/xvdb")],
    }

    # A terminated VM lets its volumes go; they stay, detached.
    adapter.deprovision(vm.ref)
    assert (left := volumes.get_volume(second.ref)) is not None and left.attached_to is None


def test_subregion_setting_places_volumes_and_vms_together(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    adapter = build_adapter(endpoint, tmp_path, subregion=f"{REGION}b")
    vm = adapter.ensure_provisioned(_request())
    assert cloud.vms[vm.ref]["Placement"]["SubregionName"] == f"{REGION}b"
    volume = adapter.volumes().ensure_volume(_volume_request())
    assert volume.extra["subregion"] == f"{REGION}b"
    assert adapter.volumes().attach_volume(volume.ref, vm.ref).attached_to == vm.ref


def test_resize_sends_update_volume_and_a_shrink_sends_nothing(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    volumes = build_adapter(endpoint, tmp_path).volumes()
    volume = volumes.ensure_volume(_volume_request())
    assert volumes.resize_volume(volume.ref, 200).size_gib == 200
    assert _sent(cloud, "UpdateVolume")[-1] == {"VolumeId": volume.ref, "Size": 200}
    updates = len(_sent(cloud, "UpdateVolume"))
    with pytest.raises(Permanent) as refused:
        volumes.resize_volume(volume.ref, 150)
    assert refused.value.code == "volume_shrink"
    volumes.resize_volume(volume.ref, 200)  # a retry: nothing to do
    assert len(_sent(cloud, "UpdateVolume")) == updates
    assert cloud.volumes[volume.ref]["Size"] == 200


def test_encrypted_volume_where_the_storage_is_not(
    cloud: FakeOutscale, endpoint: str, tmp_path: Path
) -> None:
    volumes = build_adapter(endpoint, tmp_path, volumes_encrypted=False).volumes()
    creates = len(_sent(cloud, "CreateVolume"))
    with pytest.raises(Permanent) as refused:
        volumes.ensure_volume(_volume_request())
    assert refused.value.code == "unsupported"
    assert len(_sent(cloud, "CreateVolume")) == creates  # refused before asking Outscale
    plain = volumes.ensure_volume(_volume_request(encrypted=False))
    assert plain.encrypted is False


def test_resize_answered_before_it_is_done_reports_the_size_asked(
    requests_mock: Any, tmp_path: Path
) -> None:
    volume = {"VolumeId": "vol-1", "State": "available", "Size": 10, "VolumeType": "gp2"}
    requests_mock.post(f"{API}/ReadVolumes", json={"Volumes": [volume], "ResponseContext": {}})
    requests_mock.post(
        f"{API}/UpdateVolume",
        json={"Volume": {**volume, "TaskId": "task-1"}, "ResponseContext": {}},
    )
    resized = _mocked(tmp_path).volumes().resize_volume("vol-1", 20)
    assert resized.size_gib == 20 and resized.extra["resizing"] is True


@pytest.mark.parametrize(
    "state, expected",
    [
        ("creating", InstanceState.PENDING),
        ("in-use", InstanceState.RUNNING),
        ("deleting", InstanceState.DELETING),
        ("error", InstanceState.ERROR),
    ],
)
def test_volume_state_map(
    requests_mock: Any, tmp_path: Path, state: str, expected: InstanceState
) -> None:
    volume = {"VolumeId": "vol-1", "State": state, "Size": 10}
    requests_mock.post(f"{API}/ReadVolumes", json={"Volumes": [volume], "ResponseContext": {}})
    assert (found := _mocked(tmp_path).volumes().get_volume("vol-1")) is not None
    assert found.state is expected


# -- buckets on OOS (the local S3), and their keys ----------------------------------------------


def _bucket_request(**overrides: Any) -> BucketRequest:
    order_id = uuid.uuid4()
    values: dict[str, Any] = {
        "order_id": order_id,
        "sku": "standard",
        "region": REGION,
        "name": order_token(order_id),
    }
    return BucketRequest(**{**values, **overrides})


def _admin(s3_endpoint: str) -> Any:
    """The account's own view of the S3 (the adapter's key pair), for cloud-side checks."""
    return moto_s3.s3_client(s3_endpoint, REGION, AccessKey(ACCESS_KEY, SECRET_KEY))


def test_vault_keeps_what_its_key_writes_and_is_never_shortened(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    request = _bucket_request(retention_days=7)
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    vault = buckets.ensure_bucket(request)
    assert (vault.ref, vault.endpoint, vault.retention_days) == (request.name, s3, 7)
    assert vault.versioning and vault.encrypted

    # At the cloud: object lock in compliance mode, versioning, encryption, the order's tag.
    admin = _admin(s3)
    lock = admin.get_object_lock_configuration(Bucket=vault.ref)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert lock["Rule"]["DefaultRetention"]["Days"] == 7
    assert admin.get_bucket_versioning(Bucket=vault.ref)["Status"] == "Enabled"
    [rule] = admin.get_bucket_encryption(Bucket=vault.ref)["ServerSideEncryptionConfiguration"][
        "Rules"
    ]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert moto_s3.bucket_tags(vault.ref) == {ORDER_TAG: request.token}

    # The key belongs to the bucket's own EIM user, which the bucket's policy lets in.
    key = buckets.issue_key(vault.ref, f"{request.token}-key")
    assert set(cloud.users) >= {vault.ref}
    [issued] = cloud.keys_of(vault.ref)
    assert (issued["AccessKeyId"], issued["Tag"]) == (key.key_id, f"{request.token}-key")
    [statement] = json.loads(admin.get_bucket_policy(Bucket=vault.ref)["Policy"])["Statement"]
    assert statement["Principal"] == {"AWS": [f"arn:aws:iam::{ACCOUNT_ID}:user/{vault.ref}"]}
    assert set(statement["Action"]) == set(KEY_ACTIONS)
    assert not {"s3:DeleteBucket", "s3:PutBucketPolicy", "s3:PutObjectLockConfiguration"} & set(
        statement["Action"]
    )

    # What the key writes is held for the bucket's retention, by the cloud.
    moto_s3.put_object(vault, key, "minutes.pdf")
    [version] = moto_s3.object_versions(vault.ref)
    assert version["lock_mode"] == "COMPLIANCE"
    held = buckets.retained(vault.ref)
    assert held.objects == 1 and held.until is not None
    assert abs(held.until - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)

    with pytest.raises(Permanent) as refused:
        buckets.delete_bucket(vault.ref)
    assert refused.value.code == "under_retention"
    assert f"until {held.until:%Y-%m-%d}" in str(refused.value)
    assert moto_s3.count_buckets_with_token(request.token) == 1
    assert len(moto_s3.object_versions(vault.ref)) == 1

    assert buckets.set_retention(vault.ref, 30).retention_days == 30
    with pytest.raises(Permanent) as refused:
        buckets.set_retention(vault.ref, 10)
    assert refused.value.code == "retention_shortened"
    lock = admin.get_object_lock_configuration(Bucket=vault.ref)["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 30, "Years": 0}


def test_retention_on_a_bucket_made_without_object_lock_is_unsupported(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    bucket = buckets.ensure_bucket(_bucket_request(versioning=True, encrypted=False))
    assert bucket.versioning and not bucket.encrypted and bucket.retention_days is None
    with pytest.raises(Permanent) as refused:
        buckets.set_retention(bucket.ref, 30)
    assert refused.value.code == "unsupported"


def test_a_bucket_create_cut_short_is_finished_by_the_next(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    request = _bucket_request(retention_days=3)
    _faults.inject("provision", "timeout_after_commit")
    with pytest.raises(OutcomeUnknown):
        build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage().ensure_bucket(request)
    # Made, but not configured: the tag that `find_bucket` looks for is the last step.
    assert moto_s3.bucket_tags(request.name) == {}
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    assert buckets.find_bucket(request.token) is None

    vault = buckets.ensure_bucket(request)
    assert vault.retention_days == 3 and vault.token == request.token
    assert moto_s3.bucket_tags(request.name) == {ORDER_TAG: request.token}
    assert moto_s3.count_buckets_with_token(request.token) == 1

    # A create replayed after the vault was extended does not shorten it.
    buckets.set_retention(vault.ref, 9)
    assert buckets.create_bucket(request, request.token).retention_days == 9


def test_a_key_whose_answer_was_lost_is_replaced_never_doubled(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    bucket = buckets.ensure_bucket(_bucket_request())
    users = set(cloud.users)
    _faults.inject("action", "timeout_after_commit")  # CreateAccessKey: made, answer lost
    with pytest.raises(Retryable) as lost:
        buckets.issue_key(bucket.ref, "key-1")
    assert not isinstance(lost.value, OutcomeUnknown)
    [orphan] = cloud.keys_of(bucket.ref)  # its secret went with the answer

    key = buckets.issue_key(bucket.ref, "key-1")
    [kept] = cloud.keys_of(bucket.ref)
    assert kept["AccessKeyId"] == key.key_id != orphan["AccessKeyId"]
    assert kept["SecretKey"] == key.secret
    rotated = buckets.issue_key(bucket.ref, "key-2")
    assert {k["AccessKeyId"] for k in cloud.keys_of(bucket.ref)} == {key.key_id, rotated.key_id}
    assert set(cloud.users) - users == {bucket.ref}  # one EIM user, whatever happened

    buckets.revoke_key(bucket.ref, key.key_id)
    assert [k["AccessKeyId"] for k in cloud.keys_of(bucket.ref)] == [rotated.key_id]
    buckets.revoke_key(bucket.ref, key.key_id)  # gone: done
    assert _sent(cloud, "UpdateAccessKey")[-2]["State"] == "INACTIVE"  # deactivated first


def test_deleting_a_bucket_removes_its_objects_user_and_keys(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    request = _bucket_request(versioning=True)
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    bucket = buckets.ensure_bucket(request)
    key = buckets.issue_key(bucket.ref, "key")
    moto_s3.put_object(bucket, key, "a.txt")
    moto_s3.put_object(bucket, key, "a.txt")  # a second version
    moto_s3.s3_client(s3, REGION, key).delete_object(Bucket=bucket.ref, Key="a.txt")  # a marker
    buckets.delete_bucket(bucket.ref)
    assert moto_s3.count_buckets_with_token(request.token) == 0
    assert bucket.ref not in cloud.users and cloud.keys_of(bucket.ref) == []
    buckets.delete_bucket(bucket.ref)  # gone: done


def test_bucket_deleted_out_of_band(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    vault = buckets.ensure_bucket(_bucket_request(retention_days=1))
    moto_s3.delete_bucket_out_of_band(vault.ref)
    assert buckets.get_bucket(vault.ref) is None
    assert buckets.find_bucket(vault.ref) is None
    for call in (lambda: buckets.retained(vault.ref), lambda: buckets.set_retention(vault.ref, 9)):
        with pytest.raises(Permanent) as refused:
            call()
        assert refused.value.code == "not_found"
    with pytest.raises(Permanent) as refused:
        buckets.issue_key(vault.ref, "key")
    assert refused.value.code == "not_found"
    buckets.delete_bucket(vault.ref)


def test_bucket_for_another_region_is_refused(tmp_path: Path) -> None:
    buckets = build_adapter("https://api.example.com/api/v1", tmp_path).object_storage()
    with pytest.raises(Permanent) as refused:
        buckets.create_bucket(_bucket_request(region="us-east-2"), "t")  # no call made
    assert refused.value.code == "invalid_request"


def test_throttled_s3_says_when_to_retry(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    request = _bucket_request()
    _faults.inject("provision", "throttled")
    with pytest.raises(Throttled) as throttled:
        buckets.ensure_bucket(request)
    assert throttled.value.retry_after == 3.0
    bucket = buckets.ensure_bucket(request)
    _faults.inject("get", "throttled")  # a HEAD: no body, the Retry-After tells
    with pytest.raises(Throttled):
        buckets.get_bucket(bucket.ref)
    _faults.inject("provision", "quota_exceeded")
    with pytest.raises(Permanent) as refused:
        buckets.ensure_bucket(_bucket_request())
    assert refused.value.code == "quota_exceeded"


def test_s3_client_reads_nothing_from_the_environment(
    cloud: FakeOutscale,
    endpoint: str,
    s3: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Left to itself botocore reads these: a missing profile fails every call, the endpoint
    # moves, a proxy or CA bundle intercepts, models are loaded from elsewhere, calls retry.
    for name, value in {
        "AWS_PROFILE": "missing",
        "AWS_CONFIG_FILE": str(tmp_path / "missing-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "missing-credentials"),
        "AWS_ENDPOINT_URL": "https://elsewhere.example.com",
        "AWS_ENDPOINT_URL_S3": "https://elsewhere.example.com",
        "AWS_CA_BUNDLE": str(tmp_path / "missing.pem"),
        "AWS_DATA_PATH": str(tmp_path),
        "AWS_MAX_ATTEMPTS": "5",
        "AWS_SESSION_TOKEN": "someone-elses-token",
        "HTTP_PROXY": "http://10.255.255.1:3128",
        "HTTPS_PROXY": "http://10.255.255.1:3128",
    }.items():
        monkeypatch.setenv(name, value)
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    assert isinstance(buckets, S3ObjectStorage)
    bucket = buckets.ensure_bucket(_bucket_request())
    assert buckets.get_bucket(bucket.ref) is not None
    client = buckets._s3()
    assert client.meta.endpoint_url == s3
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (TEST_TIMEOUT, TEST_TIMEOUT)
    assert config.retries["total_max_attempts"] == 1


def test_oos_endpoint_is_checked_by_the_policy(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    strict = _strict(tmp_path)
    default = OutscaleAdapter(
        {"region": REGION}, {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}, strict
    )
    assert default.object_storage().endpoint == f"https://oos.{REGION}.outscale.com"
    with pytest.raises(SettingsInvalid) as refused:
        OutscaleAdapter(
            {"region": REGION, "oos_endpoint": "https://169.254.169.254"},
            {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            strict,
        )
    assert refused.value.field_name == "oos_endpoint"

    # Accepted when configured, refused by the guarded connection when it connects.
    adapter = build_adapter(endpoint, tmp_path, oos_endpoint=s3)
    adapter.context = strict
    request = _bucket_request()
    with pytest.raises(SettingsInvalid) as refused:
        adapter.object_storage().ensure_bucket(request)
    assert refused.value.field_name == "oos_endpoint"
    assert moto_s3.bucket_tags(request.name) is None  # nothing reached the S3


def _stubbed(tmp_path: Path) -> tuple[S3ObjectStorage, Stubber]:
    buckets = build_adapter("https://api.example.com/api/v1", tmp_path).object_storage()
    stubber = Stubber(buckets._s3())
    stubber.activate()
    return buckets, stubber


@pytest.mark.parametrize(
    "status, code, headers, expected",
    [
        (429, "TooManyRequests", {"retry-after": "7"}, (Throttled, 7.0)),
        (503, "SlowDown", {}, (Throttled, 5.0)),
        (503, "ServiceUnavailable", {}, (OutcomeUnknown, None)),
        (500, "InternalError", {}, (OutcomeUnknown, None)),
        (403, "AccessDenied", {}, (Permanent, "unauthorized")),
        (403, "InvalidAccessKeyId", {}, (Permanent, "unauthorized")),
        (409, "BucketAlreadyExists", {}, (Permanent, "conflict")),
        (400, "TooManyBuckets", {}, (Permanent, "quota_exceeded")),
        (400, "InvalidBucketName", {}, (Permanent, "invalid_request")),
        (501, "NotImplemented", {}, (Permanent, "unsupported")),
    ],
)
def test_s3_create_error_mapping(
    tmp_path: Path, status: int, code: str, headers: dict[str, str], expected: tuple[type, Any]
) -> None:
    buckets, stubber = _stubbed(tmp_path)
    stubber.add_client_error(
        "create_bucket",
        service_error_code=code,
        service_message=f"Refused for {ACCESS_KEY} signed with {SECRET_KEY}.",
        http_status_code=status,
        response_meta={"HTTPHeaders": headers},
    )
    kind, detail = expected
    with pytest.raises(kind) as failed:
        buckets.create_bucket(_bucket_request(), "t")
    if kind is Throttled:
        assert isinstance(failed.value, Throttled) and failed.value.retry_after == detail
    elif kind is Permanent:
        assert isinstance(failed.value, Permanent) and failed.value.code == detail
    printed = "".join(traceback.format_exception(failed.value))
    assert ACCESS_KEY not in printed and SECRET_KEY not in printed
    assert "***" in str(failed.value)


@pytest.mark.parametrize(
    "error",
    [
        EndpointConnectionError(endpoint_url="https://oos.example"),
        ReadTimeoutError(endpoint_url="https://oos.example"),
    ],
    ids=["connection", "read-timeout"],
)
def test_s3_transport_failures(tmp_path: Path, error: Exception) -> None:
    buckets = build_adapter("https://api.example.com/api/v1", tmp_path).object_storage()
    client = buckets._s3()

    def fail(**kwargs: Any) -> None:
        raise error

    client.create_bucket = fail
    client.head_bucket = fail
    with pytest.raises(OutcomeUnknown):
        buckets.create_bucket(_bucket_request(), "t")
    with pytest.raises(Retryable) as failed:
        buckets.get_bucket("some-bucket")
    assert not isinstance(failed.value, OutcomeUnknown)


def test_eim_errors_never_show_secrets(
    cloud: FakeOutscale, endpoint: str, s3: str, tmp_path: Path
) -> None:
    buckets = build_adapter(endpoint, tmp_path, oos_endpoint=s3).object_storage()
    bucket = buckets.ensure_bucket(_bucket_request())
    key = buckets.issue_key(bucket.ref, "key")
    assert key.secret not in repr(key) and key.secret not in repr(buckets)
    # The OAPI refuses a wrong account key, naming it: the message masks it.
    wrong = build_adapter(endpoint, tmp_path, oos_endpoint=s3, access_key="AKECHOEDECHOED000009")
    with pytest.raises(Permanent) as refused:
        wrong.object_storage().issue_key(bucket.ref, "key")
    assert refused.value.code == "unauthorized"
    printed = "".join(traceback.format_exception(refused.value))
    assert "AKECHOEDECHOED000009" not in printed and SECRET_KEY not in printed


def test_fake_outscale_cloud_for_end_to_end_tests(tmp_path: Path) -> None:
    with fake_outscale_cloud(tmp_path) as account:
        adapter = OutscaleAdapter(
            account["settings"], account["credentials"], adapter_context(tmp_path)
        )
        vault = adapter.object_storage().ensure_bucket(_bucket_request(retention_days=365))
        key = adapter.object_storage().issue_key(vault.ref, "key")
        boto3.session.Session(
            aws_access_key_id=key.key_id, aws_secret_access_key=key.secret, region_name=REGION
        ).client("s3", endpoint_url=vault.endpoint).put_object(Bucket=vault.ref, Key="a", Body=b"x")
        assert adapter.object_storage().retained(vault.ref).objects == 1
        assert account["cloud"].keys_of(vault.ref)[0]["AccessKeyId"] == key.key_id
