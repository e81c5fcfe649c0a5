"""The OpenStack adapter: against the fake Keystone, Nova, Cinder and Swift, and unit tests
with requests-mock.

The generic contracts (test_contract.py, test_storage_contract.py) hold the adapter to what
every adapter must do; these tests cover what is particular to OpenStack: the requests it
makes, credentials, the endpoint policy applied to the Keystone catalogue, how Nova's and
Cinder's answers map onto the typed errors, and the EC2 credentials that reach Swift.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import requests
import requests_mock
from flask import Response

from providers.base import (
    Action,
    AdapterContext,
    BucketRequest,
    Feature,
    InstanceState,
    OutcomeUnknown,
    Permanent,
    ProvisionRequest,
    Retained,
    Retryable,
    SettingsInvalid,
    Throttled,
    VolumeRequest,
)
from providers.faults import Fault, Operation
from providers.http import HttpPolicy, parse_retry_after
from providers.openstack import (
    NOVA_MICROVERSION,
    OpenStackAdapter,
    instance_state,
    s3_endpoint,
    v3_auth_url,
    volume_state,
)
from tests.adapters.fake_openstack import (
    APP_CREDENTIAL_ID,
    APP_CREDENTIAL_SECRET,
    FLAVORS,
    IMAGE_ID,
    PASSWORD,
    PROJECT_ID,
    REGION,
    SKU,
    USER_ID,
    USERNAME,
    VOLUME_SKU,
    FakeOpenStack,
    cinder_version,
    fake_openstack,
    harness,
    nova_version,
    s3_put_object,
    token_body,
)
from tests.adapters.harness import TEST_TIMEOUT

# Renamed: pytest would collect a function named `test_*` here as a test.
from tests.adapters.harness import test_context as adapter_context

PASSWORD_CREDENTIALS = {"username": USERNAME, "password": PASSWORD}


def _request(**overrides: Any) -> ProvisionRequest:
    values: dict[str, Any] = {"order_id": uuid.uuid4(), "sku": SKU, "region": REGION, "name": "vm"}
    return ProvisionRequest(**{**values, **overrides})


def _chain_text(error: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from."""
    texts = []
    current: BaseException | None = error
    while current is not None:
        texts.append(f"{current!r} {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


# -- against the fake cloud -------------------------------------------------------------------


@pytest.fixture
def cloud() -> Iterator[tuple[FakeOpenStack, str]]:
    with fake_openstack() as running:
        yield running


def _adapter(
    cloud: tuple[FakeOpenStack, str],
    tmp_path: Path,
    credentials: dict[str, str] | None = None,
    **settings: str,
) -> OpenStackAdapter:
    fake, base_url = cloud
    return OpenStackAdapter(
        settings={**fake.adapter_settings(base_url), **settings},
        credentials=PASSWORD_CREDENTIALS if credentials is None else credentials,
        context=adapter_context(tmp_path),
    )


def test_lifecycle_against_the_fake(cloud: tuple[FakeOpenStack, str], tmp_path: Path) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)

    offers = {offer.sku: offer for offer in adapter.list_offers()}
    assert set(offers) == set(FLAVORS)
    offer = offers[SKU]
    assert (offer.vcpu, offer.ram_gib, offer.disk_gib) == (2, Decimal(4), 20)
    assert offer.region == REGION and offer.extra["flavor_id"] == FLAVORS[SKU][0]
    assert offers["SCS-1V-2"].ram_gib == Decimal(2)

    request = _request()
    created = adapter.ensure_provisioned(request)
    assert created.state is InstanceState.PENDING and created.token == request.token
    # The create carried the token as a server tag, at a microversion that accepts it.
    [body] = fake.create_bodies
    assert body["server"]["tags"] == [request.token]
    assert body["server"]["flavorRef"] == FLAVORS[SKU][0]
    assert body["server"]["imageRef"] == IMAGE_ID
    assert body["server"]["networks"] == "auto"
    assert {mv for _, _, mv in fake.calls} == {(2, 52)}

    fetched = adapter.get(created.ref)
    assert fetched is not None
    assert (fetched.state, fetched.token, fetched.sku) == (
        InstanceState.RUNNING,
        request.token,
        SKU,
    )
    assert fetched.addresses and fetched.created_at is not None

    assert adapter.action(created.ref, Action.STOP).state is InstanceState.STOPPED
    # Stopping again: Nova answers 409, and the server is stopped, which was the point.
    assert adapter.action(created.ref, Action.STOP).state is InstanceState.STOPPED
    assert adapter.action(created.ref, Action.START).state is InstanceState.RUNNING
    assert adapter.action(created.ref, Action.REBOOT).state is InstanceState.RUNNING

    adapter.deprovision(created.ref)
    assert adapter.get(created.ref) is None
    assert adapter.find_by_token(request.token) is None
    adapter.deprovision(created.ref)  # a 404 counts as gone
    assert fake.errors == []


def test_application_credentials_and_no_ambient_config(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A clouds.yaml and OS_* variables naming another cloud must not be read.
    clouds_yaml = tmp_path / "clouds.yaml"
    clouds_yaml.write_text(
        "clouds:\n  other:\n    auth:\n      auth_url: http://127.0.0.1:9/v3\n"
        "    region_name: Elsewhere\n"
    )
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds_yaml))
    monkeypatch.setenv("OS_CLOUD", "other")
    monkeypatch.setenv("OS_AUTH_URL", "http://127.0.0.1:9/v3")
    monkeypatch.setenv("OS_REGION_NAME", "Elsewhere")
    monkeypatch.setenv("OS_COMPUTE_API_VERSION", "2.1")

    adapter = _adapter(
        cloud,
        tmp_path,
        credentials={
            "application_credential_id": APP_CREDENTIAL_ID,
            "application_credential_secret": APP_CREDENTIAL_SECRET,
        },
    )
    created = adapter.ensure_provisioned(_request())
    assert (fetched := adapter.get(created.ref)) is not None
    assert fetched.state is InstanceState.RUNNING


def test_network_setting_and_requested_image(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path, network="net-1234")
    adapter.ensure_provisioned(_request(image="custom-image"))
    [body] = fake.create_bodies
    assert body["server"]["networks"] == [{"uuid": "net-1234"}]
    assert body["server"]["imageRef"] == "custom-image"


def test_unknown_flavor_is_an_invalid_request(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    fake, _ = cloud
    with pytest.raises(Permanent) as refused:
        _adapter(cloud, tmp_path).ensure_provisioned(_request(sku="no-such-flavor"))
    assert refused.value.code == "invalid_request"
    assert fake.create_bodies == []


def test_request_for_another_region_is_refused(tmp_path: Path) -> None:
    adapter = OpenStackAdapter(
        {"auth_url": "https://keystone.example.net", "region": REGION, "image": IMAGE_ID},
        PASSWORD_CREDENTIALS,
        adapter_context(tmp_path),
    )
    with pytest.raises(Permanent) as refused:
        adapter.provision(_request(region="elsewhere"), "broker-order-x")
    assert refused.value.code == "invalid_request"


def test_lost_create_answer_is_found_by_token(tmp_path: Path) -> None:
    with harness(tmp_path) as cloud:
        request = _request()
        cloud.faults.inject(Operation.PROVISION, Fault.TIMEOUT_AFTER_COMMIT)
        with pytest.raises(OutcomeUnknown):
            cloud.build().ensure_provisioned(request)
        assert cloud.count_with_token(request.token) == 1  # it was made, the answer was lost

        again = cloud.build().ensure_provisioned(request)
        assert again.token == request.token
        assert cloud.count_with_token(request.token) == 1
        # The server found is the one the lost call made, not a second one.
        assert again.state is InstanceState.RUNNING
        assert cloud.build().find_by_token(request.token) == again


def test_wrong_password_is_refused_without_echoing_it(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    wrong = "not-the-password-Zq81"
    adapter = _adapter(cloud, tmp_path, credentials={"username": USERNAME, "password": wrong})
    with pytest.raises(Permanent) as refused:
        list(adapter.list_offers())
    assert refused.value.code in {"unauthorized", "adapter_settings_invalid"}
    assert wrong not in _chain_text(refused.value)
    # Nothing was created with credentials that do not work.
    with pytest.raises(Permanent) as refused_create:
        adapter.ensure_provisioned(_request())
    assert refused_create.value.code == "unauthorized"
    assert cloud[0].create_bodies == []


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"username": USERNAME},
        {"application_credential_id": APP_CREDENTIAL_ID},
        {**PASSWORD_CREDENTIALS, "application_credential_id": APP_CREDENTIAL_ID},
        {**PASSWORD_CREDENTIALS, "api_key": "x"},
    ],
)
def test_missing_or_mixed_credentials(credentials: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(SettingsInvalid):
        OpenStackAdapter.check_credentials(credentials)
    with pytest.raises(SettingsInvalid):  # an adapter is never built with such credentials
        OpenStackAdapter(
            {"auth_url": "https://keystone.example.net", "region": REGION, "project_name": "p"},
            credentials,
            adapter_context(tmp_path),
        )


def test_password_needs_a_project(tmp_path: Path) -> None:
    adapter = OpenStackAdapter(
        {"auth_url": "https://keystone.example.net", "region": REGION},
        PASSWORD_CREDENTIALS,
        adapter_context(tmp_path),
    )
    with pytest.raises(SettingsInvalid) as refused:
        adapter.ensure_provisioned(_request())
    assert refused.value.field_name == "project_id"


@pytest.mark.parametrize(
    "auth_url", ["http://127.0.0.1:5000/v3", "https://127.0.0.1:5000/v3", "https://10.0.0.1/v3"]
)
def test_private_auth_url_is_refused(auth_url: str, tmp_path: Path) -> None:
    context = AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy(timeout=1, allow_private=False))
    with pytest.raises(SettingsInvalid) as refused:
        OpenStackAdapter({"auth_url": auth_url, "region": REGION}, PASSWORD_CREDENTIALS, context)
    assert refused.value.field_name == "auth_url"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://keystone.example.net", "https://keystone.example.net/v3"),
        ("https://keystone.example.net:5000/v3/", "https://keystone.example.net:5000/v3"),
        ("https://cloud.example.net/identity", "https://cloud.example.net/identity/v3"),
    ],
)
def test_v3_auth_url(given: str, expected: str) -> None:
    assert v3_auth_url(given) == expected


def test_state_map() -> None:
    assert instance_state("BUILD") is InstanceState.PENDING
    assert instance_state("SHUTOFF") is InstanceState.STOPPED
    assert instance_state("HARD_REBOOT") is InstanceState.REBOOTING
    assert instance_state("SOFT_DELETED") is InstanceState.DELETED
    assert instance_state("ACTIVE", "deleting") is InstanceState.DELETING
    assert instance_state("ACTIVE", "powering-off") is InstanceState.STOPPING
    assert instance_state("RESCUE") is InstanceState.UNKNOWN


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0) == 20.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:30 GMT", now=100.0) == 0.0
    assert parse_retry_after("soon", 3.0) == parse_retry_after(None, 3.0) == 3.0


# -- requests-mock unit tests -----------------------------------------------------------------

KEYSTONE = "https://keystone.example.net/v3"
NOVA = "https://nova.example.net/compute/v2.1"
SERVER_ID = "7d3c9a52-64f6-4d6c-bd3e-2b1c1e0fbb0c"


def _server(**fields: Any) -> dict[str, Any]:
    return {
        "id": SERVER_ID,
        "name": "vm",
        "status": "ACTIVE",
        "OS-EXT-STS:task_state": None,
        "flavor": {"original_name": SKU, "vcpus": 2, "ram": 4096, "disk": 20},
        "addresses": {"net": [{"addr": "203.0.113.7", "version": 4}]},
        "created": "2026-01-02T03:04:05Z",
        "tags": [],
        **fields,
    }


@pytest.fixture
def mocked() -> Iterator[requests_mock.Mocker]:
    """Keystone and Nova discovery answering; each test adds the Nova calls it is about."""
    with requests_mock.Mocker() as mock:
        mock.post(
            f"{KEYSTONE}/auth/tokens",
            json=token_body(NOVA),
            status_code=201,
            headers={"X-Subject-Token": "token-1"},
        )
        mock.get(NOVA, json={"version": nova_version(NOVA)})
        mock.get("https://nova.example.net/compute/", json={"versions": [nova_version(NOVA)]})
        flavors = [
            {"id": flavor_id, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk}
            for name, (flavor_id, vcpus, ram, disk) in FLAVORS.items()
        ]
        mock.get(f"{NOVA}/flavors/detail", json={"flavors": flavors})
        yield mock


def _mocked_adapter(tmp_path: Path) -> OpenStackAdapter:
    return OpenStackAdapter(
        {"auth_url": KEYSTONE, "region": REGION, "project_id": "p1", "image": IMAGE_ID},
        PASSWORD_CREDENTIALS,
        adapter_context(tmp_path),
    )


def _nova_error(status: int, kind: str, message: str) -> dict[str, Any]:
    return {"status_code": status, "json": {kind: {"code": status, "message": message}}}


def test_throttled_create_and_read_give_retry_after(
    mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    mocked.post(
        f"{NOVA}/servers",
        headers={"Retry-After": "7"},
        **_nova_error(429, "overLimit", "Rate limit exceeded."),
    )
    mocked.get(
        f"{NOVA}/servers/{SERVER_ID}",
        headers={"Retry-After": "12"},
        **_nova_error(429, "overLimit", "Rate limit exceeded."),
    )
    adapter = _mocked_adapter(tmp_path)
    with pytest.raises(Throttled) as create:
        adapter.provision(_request(), "broker-order-x")
    assert create.value.retry_after == 7.0
    with pytest.raises(Throttled) as read:
        adapter.get(SERVER_ID)
    assert read.value.retry_after == 12.0
    # One call each: nothing in the SDK retried behind the broker's back.
    assert [r.method for r in mocked.request_history if "/servers" in r.path] == ["POST", "GET"]
    # And every request, Keystone's included, had the policy's timeout.
    assert {r.timeout for r in mocked.request_history} == {TEST_TIMEOUT}


@pytest.mark.parametrize(
    "answer",
    [
        _nova_error(403, "forbidden", "Quota exceeded for cores: Requested 2, but already used 20"),
        _nova_error(413, "overLimit", "Quota exceeded for instances: Requested 1, but already"),
    ],
)
def test_quota_refusal_is_permanent(
    answer: dict[str, Any], mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    mocked.post(f"{NOVA}/servers", **answer)
    with pytest.raises(Permanent) as refused:
        _mocked_adapter(tmp_path).provision(_request(), "broker-order-x")
    assert refused.value.code == "quota_exceeded"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (_nova_error(400, "badRequest", "Invalid imageRef provided."), "invalid_request"),
        (_nova_error(403, "forbidden", "Policy doesn't allow create."), "unauthorized"),
        (_nova_error(500, "computeFault", "Unexpected API Error."), None),
        (_nova_error(503, "computeFault", "Service unavailable."), None),
        ({"exc": requests.exceptions.ConnectTimeout}, None),
        ({"exc": requests.exceptions.ReadTimeout}, None),
        ({"exc": requests.exceptions.ConnectionError}, None),
        ({"status_code": 202, "text": "not json"}, None),
    ],
)
def test_create_failures(
    answer: dict[str, Any], expected: str | None, mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    """Refusals are Permanent; anything else may have created the server."""
    mocked.post(f"{NOVA}/servers", **answer)
    with pytest.raises((Permanent, OutcomeUnknown)) as failed:
        _mocked_adapter(tmp_path).provision(_request(), "broker-order-x")
    if expected is None:
        assert isinstance(failed.value, OutcomeUnknown)
    else:
        assert isinstance(failed.value, Permanent) and failed.value.code == expected


@pytest.mark.parametrize(
    "answer",
    [
        _nova_error(503, "computeFault", "Service unavailable."),
        _nova_error(500, "computeFault", "Unexpected API Error."),
        {"exc": requests.exceptions.ReadTimeout},
        {"exc": requests.exceptions.ConnectionError},
    ],
)
def test_read_failures_are_retryable(
    answer: dict[str, Any], mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    mocked.get(f"{NOVA}/servers/{SERVER_ID}", **answer)
    with pytest.raises(Retryable) as failed:
        _mocked_adapter(tmp_path).get(SERVER_ID)
    assert not isinstance(failed.value, OutcomeUnknown)
    assert len([r for r in mocked.request_history if r.path.endswith(SERVER_ID)]) == 1


def test_not_found(mocked: requests_mock.Mocker, tmp_path: Path) -> None:
    missing = _nova_error(404, "itemNotFound", f"Instance {SERVER_ID} could not be found.")
    mocked.get(f"{NOVA}/servers/{SERVER_ID}", **missing)
    mocked.post(f"{NOVA}/servers/{SERVER_ID}/action", **missing)
    mocked.delete(f"{NOVA}/servers/{SERVER_ID}", **missing)
    adapter = _mocked_adapter(tmp_path)
    assert adapter.get(SERVER_ID) is None
    with pytest.raises(Permanent) as refused:
        adapter.action(SERVER_ID, Action.START)
    assert refused.value.code == "not_found"
    adapter.deprovision(SERVER_ID)
    assert mocked.request_history[-1].method == "DELETE"


def test_forbidden_read_is_unauthorized(mocked: requests_mock.Mocker, tmp_path: Path) -> None:
    mocked.get(f"{NOVA}/servers/{SERVER_ID}", **_nova_error(403, "forbidden", "Not allowed."))
    with pytest.raises(Permanent) as refused:
        _mocked_adapter(tmp_path).get(SERVER_ID)
    assert refused.value.code == "unauthorized"


def test_keystone_refusal_is_unauthorized(mocked: requests_mock.Mocker, tmp_path: Path) -> None:
    mocked.post(f"{KEYSTONE}/auth/tokens", **_nova_error(401, "error", "Unauthorized."))
    with pytest.raises(Permanent) as refused:
        _mocked_adapter(tmp_path).find_by_token("broker-order-x")
    assert refused.value.code == "unauthorized"


def test_find_by_token_checks_the_tag_itself(mocked: requests_mock.Mocker, tmp_path: Path) -> None:
    """A Nova ignoring the `tags` filter would list every server: only the tagged one counts."""
    token = "broker-order-wanted"
    listing = mocked.get(
        f"{NOVA}/servers/detail",
        json={"servers": [_server(id="other", tags=["broker-order-other"]), _server()]},
    )
    adapter = _mocked_adapter(tmp_path)
    assert adapter.find_by_token(token) is None
    assert listing.last_request is not None and listing.last_request.qs["tags"] == [token]

    listing = mocked.get(
        f"{NOVA}/servers/detail",
        json={
            "servers": [
                _server(id="other", tags=["broker-order-other"]),
                _server(id="gone", tags=[token], **{"OS-EXT-STS:task_state": "deleting"}),
                _server(tags=["team-a", token]),
            ]
        },
    )
    found = adapter.find_by_token(token)
    assert found is not None
    assert (found.ref, found.token, found.sku) == (SERVER_ID, token, SKU)
    assert found.addresses == ("203.0.113.7",)


def test_pinned_microversion_is_sent(mocked: requests_mock.Mocker, tmp_path: Path) -> None:
    mocked.get(f"{NOVA}/servers/{SERVER_ID}", json={"server": _server(tags=["broker-order-1"])})
    fetched = _mocked_adapter(tmp_path).get(SERVER_ID)
    assert fetched is not None and fetched.token == "broker-order-1"
    sent = mocked.last_request
    assert sent is not None
    assert sent.headers["OpenStack-API-Version"] == f"compute {NOVA_MICROVERSION}"


def test_credentials_echoed_by_the_cloud_are_scrubbed(
    mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    mocked.get(
        f"{NOVA}/servers/{SERVER_ID}",
        **_nova_error(500, "computeFault", f"Boom for user {USERNAME} with {PASSWORD}"),
    )
    with pytest.raises(Retryable) as failed:
        _mocked_adapter(tmp_path).get(SERVER_ID)
    assert PASSWORD not in str(failed.value)
    assert "***" in str(failed.value)


def test_private_compute_endpoint_in_the_catalogue_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keystone is public, but its catalogue sends compute to a private address."""
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "keystone.example.net":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    private_nova = "https://10.20.30.40/compute/v2.1"
    context = AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy(timeout=1, allow_private=False))
    adapter = OpenStackAdapter(
        {"auth_url": KEYSTONE, "region": REGION, "project_id": "p1"},
        PASSWORD_CREDENTIALS,
        context,
    )
    with requests_mock.Mocker() as mock:
        mock.post(
            f"{KEYSTONE}/auth/tokens",
            json=token_body(private_nova),
            status_code=201,
            headers={"X-Subject-Token": "token-1"},
        )
        with pytest.raises(SettingsInvalid) as refused:
            list(adapter.list_offers())
        assert [r.hostname for r in mock.request_history] == ["keystone.example.net"]
    assert "10.20.30.40" in str(refused.value)


def test_address_refused_at_connect_time_is_settings_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: public when the settings are checked, loopback when connecting."""
    answers = iter(["93.184.216.34"])

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    context = AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy(timeout=1, allow_private=False))
    adapter = OpenStackAdapter(
        {"auth_url": KEYSTONE, "region": REGION, "project_id": "p1", "image": IMAGE_ID},
        PASSWORD_CREDENTIALS,
        context,
    )
    with pytest.raises(SettingsInvalid) as refused:
        adapter.ensure_provisioned(_request())
    assert "127.0.0.1" in str(refused.value)


# -- storage against the fake cloud -----------------------------------------------------------


def _volume_request(**overrides: Any) -> VolumeRequest:
    values: dict[str, Any] = {
        "order_id": uuid.uuid4(),
        "sku": VOLUME_SKU,
        "region": REGION,
        "name": "data",
        "size_gib": 100,
    }
    return VolumeRequest(**{**values, **overrides})


def _bucket_request(**overrides: Any) -> BucketRequest:
    order_id = overrides.pop("order_id", uuid.uuid4())
    values: dict[str, Any] = {
        "order_id": order_id,
        "sku": "swift",
        "region": REGION,
        "name": f"broker-order-{order_id}-0",
    }
    return BucketRequest(**{**values, **overrides})


def test_volume_carries_the_token_in_its_metadata(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    request = _volume_request()
    created = adapter.volumes().ensure_volume(request)
    assert (created.state, created.size_gib, created.token) == (
        InstanceState.PENDING,  # Cinder's create answer: `creating`
        100,
        request.token,
    )
    [body] = fake.volume_bodies
    assert body["volume"] == {
        "name": "data",
        "size": 100,
        "volume_type": VOLUME_SKU,
        "metadata": {"broker-token": request.token},
    }
    # Found again with Cinder's metadata filter, before the create and after.
    found = _adapter(cloud, tmp_path).find_volume(request.token)
    assert found is not None and found.ref == created.ref
    assert found.state is InstanceState.RUNNING and found.encrypted  # a LUKS volume type
    assert [json.loads(f or "{}") for f in fake.volume_filters] == [
        {"broker-token": request.token}
    ] * 2
    # Every Cinder call at the pinned microversion.
    assert {mv for _, _, mv in fake.volume_calls} == {(3, 42)}

    plain = adapter.create_volume(_volume_request(sku="ssd", size_gib=5), "broker-order-x-0")
    assert not plain.encrypted
    with pytest.raises(Permanent) as refused:
        adapter.create_volume(_volume_request(sku="no-such-type"), "broker-order-y-0")
    assert refused.value.code == "invalid_request"
    with pytest.raises(Permanent) as refused:
        adapter.create_volume(_volume_request(region="elsewhere"), "broker-order-z-0")
    assert refused.value.code == "invalid_request"
    assert fake.errors == []


def test_resize_is_os_extend_and_grows_an_attached_volume(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    machine = adapter.ensure_provisioned(_request())
    volume = adapter.ensure_volume(_volume_request())
    adapter.attach_volume(volume.ref, machine.ref)

    grown = adapter.resize_volume(volume.ref, 200)
    assert (grown.size_gib, grown.attached_to) == (200, machine.ref)
    assert fake.volumes[volume.ref].size == 200
    assert fake.volume_actions == [{"os-extend": {"new_size": 200}}]

    # The same size again is a retry, a smaller one a refusal: neither reaches Cinder.
    assert adapter.resize_volume(volume.ref, 200).size_gib == 200
    with pytest.raises(Permanent) as refused:
        adapter.resize_volume(volume.ref, 150)
    assert refused.value.code == "volume_shrink"
    assert len(fake.volume_actions) == 1
    assert fake.errors == []


def test_attachment_goes_through_nova(cloud: tuple[FakeOpenStack, str], tmp_path: Path) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    machine = adapter.ensure_provisioned(_request())
    volume = adapter.ensure_volume(_volume_request())

    attached = adapter.attach_volume(volume.ref, machine.ref)
    assert attached.attached_to == machine.ref and attached.extra["device"] == "/dev/vdb"
    assert fake.volumes[volume.ref].status == "in-use"
    path = f"/compute/v2.1/servers/{machine.ref}/os-volume_attachments"
    assert fake.attachment_calls == [("POST", path)]
    assert adapter.attach_volume(volume.ref, machine.ref).attached_to == machine.ref
    assert len(fake.attachment_calls) == 1  # attached there already: nothing asked of Nova

    assert adapter.detach_volume(volume.ref).attached_to is None
    assert fake.attachment_calls[-1] == ("DELETE", f"{path}/{volume.ref}")
    assert fake.volumes[volume.ref].status == "available"

    # Deleting the server detaches its volumes, as Nova does.
    adapter.attach_volume(volume.ref, machine.ref)
    adapter.deprovision(machine.ref)
    assert (left := adapter.get_volume(volume.ref)) is not None and left.attached_to is None
    adapter.delete_volume(volume.ref)
    assert fake.volumes == {} and fake.errors == []


def test_no_vault_on_swift(cloud: tuple[FakeOpenStack, str], tmp_path: Path) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    assert Feature.OBJECT_STORAGE in adapter.features
    assert Feature.OBJECT_LOCK not in adapter.features

    for request in (_bucket_request(retention_days=365), _bucket_request(versioning=True)):
        with pytest.raises(Permanent) as refused:
            adapter.object_storage().ensure_bucket(request)
        assert refused.value.code == "unsupported"
    assert fake.containers == {}

    bucket = adapter.ensure_bucket(_bucket_request())
    with pytest.raises(Permanent) as refused:
        adapter.set_retention(bucket.ref, 30)
    assert refused.value.code == "unsupported"
    assert adapter.retained(bucket.ref) == Retained(0)
    adapter.delete_bucket(bucket.ref)
    with pytest.raises(Permanent) as refused:
        adapter.retained(bucket.ref)
    assert refused.value.code == "not_found"


def test_bucket_is_a_swift_container(cloud: tuple[FakeOpenStack, str], tmp_path: Path) -> None:
    fake, base_url = cloud
    adapter = _adapter(cloud, tmp_path)
    request = _bucket_request()
    bucket = adapter.ensure_bucket(request)
    container = fake.containers[request.name]
    assert container.metadata["X-Container-Meta-Broker-Token"] == request.token
    # The object-store endpoint of the catalogue, and the S3 one of the same proxy.
    assert bucket.endpoint == f"{base_url}/object"  # S3 (s3api), where the EC2 keys work
    assert bucket.extra["swift_endpoint"] == f"{base_url}/object/v1/AUTH_{PROJECT_ID}"
    assert bucket.encrypted  # as the order asked

    # A container of the same name made for another order is not taken over.
    other = _bucket_request(name=request.name)
    with pytest.raises(Permanent) as refused:
        adapter.ensure_bucket(other)
    assert refused.value.code == "conflict"
    assert container.metadata["X-Container-Meta-Broker-Token"] == request.token
    assert fake.errors == []


def test_ec2_credential_issued_found_again_and_revoked(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path
) -> None:
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    bucket = adapter.ensure_bucket(_bucket_request())

    # The credential is made, but the answer is lost (the listing before it takes a fault
    # that does nothing here: nothing of its is deleted out of band).
    fake.faults.inject(Operation.ACTION, Fault.DELETED_OUT_OF_BAND, Fault.TIMEOUT_AFTER_COMMIT)
    with pytest.raises(Retryable):
        adapter.issue_key(bucket.ref, "key-for-order")
    [credential] = fake.credentials.values()
    key = _adapter(cloud, tmp_path).issue_key(bucket.ref, "key-for-order")
    assert len(fake.credentials) == 1  # found by its token, not made twice
    blob = json.loads(credential.blob)
    assert (credential.type, credential.user_id, credential.project_id) == (
        "ec2",
        USER_ID,
        PROJECT_ID,
    )
    assert blob == {
        "access": key.key_id,
        "secret": key.secret,
        "bucket": bucket.ref,
        "broker_token": "key-for-order",
    }
    assert key.secret not in repr(key)

    s3_put_object(bucket, key, "minutes.pdf")  # the key reaches the bucket through s3api
    assert set(fake.containers[bucket.ref].objects) == {"minutes.pdf"}

    # Another bucket's key is left alone; this one's is deleted, then refused by s3api.
    adapter.revoke_key("another-bucket", key.key_id)
    assert len(fake.credentials) == 1
    adapter.revoke_key(bucket.ref, key.key_id)
    assert fake.credentials == {}
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3_put_object(bucket, key, "late.pdf")
    assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    adapter.revoke_key(bucket.ref, key.key_id)  # revoked already: done
    assert fake.errors == []


def test_key_secret_never_in_errors_or_logs(
    cloud: tuple[FakeOpenStack, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keystone answers the create with an error echoing what it was sent."""
    fake, _ = cloud
    adapter = _adapter(cloud, tmp_path)
    bucket = adapter.ensure_bucket(_bucket_request())
    sent: list[str] = []

    def echo(body: dict[str, Any]) -> Response:
        sent.append(body["credential"]["blob"])
        error = {"error": {"code": 500, "message": f"Cannot store {json.dumps(body)}"}}
        return Response(json.dumps(error), status=500, mimetype="application/json")

    fake._create_credential = echo  # type: ignore[method-assign]
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Retryable) as failed:
        adapter.issue_key(bucket.ref, "key-for-order")
    [blob] = sent
    secret = json.loads(blob)["secret"]
    assert secret not in _chain_text(failed.value)
    assert "***" in str(failed.value)
    assert secret not in caplog.text  # keystoneauth's debug log of the request is off
    assert "HEAD" in caplog.text  # while the others are logged


# -- storage unit tests with requests-mock ----------------------------------------------------

CINDER_ROOT = "https://cinder.example.net/volume"
CINDER = f"{CINDER_ROOT}/v3/{PROJECT_ID}"
VOLUME_ID = "0c5a3f7e-9d2b-4e1a-8f6c-3b7d9e1a2c4f"


def _cinder_volume(**fields: Any) -> dict[str, Any]:
    return {
        "id": VOLUME_ID,
        "name": "data",
        "size": 100,
        "status": "available",
        "volume_type": VOLUME_SKU,
        "encrypted": True,
        "metadata": {"broker-token": "broker-order-1"},
        "attachments": [],
        **fields,
    }


@pytest.fixture
def mocked_cinder(mocked: requests_mock.Mocker) -> requests_mock.Mocker:
    """Keystone with a catalogue holding Cinder too, and Cinder's discovery."""
    mocked.post(
        f"{KEYSTONE}/auth/tokens",
        json=token_body(NOVA, volume_url=CINDER),
        status_code=201,
        headers={"X-Subject-Token": "token-1"},
    )
    mocked.get(f"{CINDER_ROOT}/v3/", json={"versions": [cinder_version(CINDER_ROOT)]})
    return mocked


def test_storage_missing_from_the_catalogue_is_unsupported(
    mocked: requests_mock.Mocker, tmp_path: Path
) -> None:
    adapter = _mocked_adapter(tmp_path)
    for call in (
        lambda: adapter.get_volume(VOLUME_ID),
        lambda: adapter.ensure_bucket(_bucket_request()),
    ):
        with pytest.raises(Permanent) as refused:
            call()
        assert refused.value.code == "unsupported"


def test_private_block_storage_endpoint_in_the_catalogue_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keystone and Nova are public, but the catalogue sends Cinder to a private address."""
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".example.net"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    context = AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy(timeout=1, allow_private=False))
    adapter = OpenStackAdapter(
        {"auth_url": KEYSTONE, "region": REGION, "project_id": "p1"},
        PASSWORD_CREDENTIALS,
        context,
    )
    with requests_mock.Mocker() as mock:
        mock.post(
            f"{KEYSTONE}/auth/tokens",
            json=token_body(NOVA, volume_url=f"https://10.20.30.40/volume/v3/{PROJECT_ID}"),
            status_code=201,
            headers={"X-Subject-Token": "token-1"},
        )
        mock.get(NOVA, json={"version": nova_version(NOVA)})
        with pytest.raises(SettingsInvalid) as refused:
            adapter.get_volume(VOLUME_ID)
        assert "10.20.30.40" not in {r.hostname for r in mock.request_history}
    assert "block-storage" in str(refused.value) and "10.20.30.40" in str(refused.value)


def test_delete_of_a_volume_being_deleted_or_attached(
    mocked_cinder: requests_mock.Mocker, tmp_path: Path
) -> None:
    refusal = _nova_error(400, "badRequest", "Invalid volume: Volume status must be available.")
    mocked_cinder.delete(f"{CINDER}/volumes/{VOLUME_ID}", **refusal)
    show = mocked_cinder.get(
        f"{CINDER}/volumes/{VOLUME_ID}", json={"volume": _cinder_volume(status="deleting")}
    )
    adapter = _mocked_adapter(tmp_path)
    adapter.delete_volume(VOLUME_ID)  # the first answer was lost: it is being deleted
    assert show.called

    attachment = {"server_id": SERVER_ID, "device": "/dev/vdb"}
    mocked_cinder.get(
        f"{CINDER}/volumes/{VOLUME_ID}",
        json={"volume": _cinder_volume(status="in-use", attachments=[attachment])},
    )
    with pytest.raises(Permanent) as refused:
        adapter.delete_volume(VOLUME_ID)
    assert refused.value.code == "conflict"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            _nova_error(413, "overLimit", "VolumeLimitExceeded: exceeded for quota 'volumes'."),
            "quota_exceeded",
        ),
        (
            _nova_error(413, "overLimit", "Requested volume exceeds allowed gigabytes quota."),
            "quota_exceeded",
        ),
        (
            _nova_error(404, "itemNotFound", "Volume type with name x could not be found."),
            "invalid_request",
        ),
        (_nova_error(503, "computeFault", "Service unavailable."), None),
    ],
)
def test_cinder_create_failures(
    answer: dict[str, Any],
    expected: str | None,
    mocked_cinder: requests_mock.Mocker,
    tmp_path: Path,
) -> None:
    mocked_cinder.post(f"{CINDER}/volumes", **answer)
    with pytest.raises((Permanent, OutcomeUnknown)) as failed:
        _mocked_adapter(tmp_path).create_volume(_volume_request(), "broker-order-1")
    if expected is None:
        assert isinstance(failed.value, OutcomeUnknown)
    else:
        assert isinstance(failed.value, Permanent) and failed.value.code == expected


def test_storage_maps() -> None:
    assert volume_state("creating") is InstanceState.PENDING
    assert volume_state("in-use") is InstanceState.RUNNING
    assert volume_state("available") is InstanceState.RUNNING
    assert volume_state("deleting") is InstanceState.DELETING
    assert volume_state("error_extending") is InstanceState.ERROR
    assert volume_state("awaiting-transfer") is InstanceState.UNKNOWN
    assert s3_endpoint("https://swift.example.net/v1/AUTH_p") == "https://swift.example.net"
    assert s3_endpoint("https://h.example.net/object/v1/AUTH_p/") == "https://h.example.net/object"
