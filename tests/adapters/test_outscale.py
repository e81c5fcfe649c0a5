"""The Outscale adapter: against the fake Outscale API, and unit tests of its error mapping.

The contract suite (test_contract.py) holds every adapter to the shared behaviour; this file
covers what is Outscale's own: the ClientToken that makes a lost create harmless, the request
signature, the SDK's defaults the adapter must switch off, and the mapping of Outscale's
error answers.
"""

from __future__ import annotations

import email.utils
import time
import traceback
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.base import (
    Action,
    AdapterContext,
    InstanceState,
    OutcomeUnknown,
    Permanent,
    ProvisionRequest,
    Retryable,
    SettingsInvalid,
    Throttled,
)
from providers.faults import FaultPlan
from providers.http import HttpPolicy
from providers.outscale import DEFAULT_RETRY_AFTER, ORDER_TAG, OutscaleAdapter
from tests.adapters.fake_outscale import (
    ACCESS_KEY,
    IMAGE,
    REGION,
    SECRET_KEY,
    SKU,
    FakeOutscale,
    build_adapter,
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
