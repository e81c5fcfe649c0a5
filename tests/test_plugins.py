"""Provider adapter plugins: an adapter declared only by a package's entry points is found,
listed, checked and used, without any change to the broker.

Each test writes, under its `tmp_path`, what installing a plugin package leaves on disk: a
module and a `*.dist-info` directory whose `entry_points.txt` registers adapters in the
`cloud_broker.providers` group. That directory goes on `sys.path` (and on `PYTHONPATH` for
the `broker` command run as a subprocess), and the registry's cache is dropped before and
after. Besides the working `testcloud` adapter, the same plugins declare broken ones: a class
that is not an adapter, one written for another contract version, one missing methods, and
one whose module fails to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from broker.db import Database
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, run_pending
from providers import registry
from providers.base import ProviderAdapter
from tests.catalogue_fixtures import create_provider_organization, make_provider, provider_body
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent

PLUGIN_MODULE = '''
"""A provider adapter shipped by a third party: an in-memory cloud."""

from decimal import Decimal

from providers.base import (
    Action,
    Feature,
    Instance,
    InstanceState,
    OfferSpec,
    Permanent,
    ProviderAdapter,
)

_INSTANCES = {}


class TestCloudAdapter(ProviderAdapter):
    name = "testcloud"
    features = frozenset({Feature.STOP_START, Feature.REBOOT})
    settings_fields = frozenset({"zone"})
    required_settings = frozenset({"zone"})
    credential_fields = frozenset({"token"})

    def _check_token(self):
        if self.credentials.get("token") != "s3cret":
            raise Permanent("TestCloud refused the token.", code="unauthorized")

    def list_offers(self):
        self._check_token()
        return [
            OfferSpec("tc-small", "TestCloud small", 1, Decimal("2"), 10),
            OfferSpec("tc-large", "TestCloud large", 8, Decimal("32"), 100, region="fr-lyo-1"),
        ]

    def provision(self, request, idempotency_token):
        ref = f"tc-{len(_INSTANCES) + 1}"
        _INSTANCES[ref] = Instance(
            ref, InstanceState.RUNNING, idempotency_token, request.sku, request.region
        )
        return _INSTANCES[ref]

    def get(self, ref):
        return _INSTANCES.get(ref)

    def find_by_token(self, token):
        return next((i for i in _INSTANCES.values() if i.token == token), None)

    def action(self, ref, action):
        instance = _INSTANCES.get(ref)
        if instance is None:
            raise Permanent(f"No instance {ref}.", code="not_found")
        state = InstanceState.STOPPED if action is Action.STOP else InstanceState.RUNNING
        _INSTANCES[ref] = Instance(ref, state, instance.token, instance.sku, instance.region)
        return _INSTANCES[ref]

    def deprovision(self, ref):
        _INSTANCES.pop(ref, None)


class NotAnAdapter:
    """Registered by mistake: not a ProviderAdapter."""


class OldContractAdapter(TestCloudAdapter):
    name = "oldcontract"
    contract_version = 0


class IncompleteAdapter(ProviderAdapter):
    name = "incomplete"

    def list_offers(self):
        return []
'''

BROKEN_MODULE = 'raise RuntimeError("testcloud_broken needs a library that is not installed")\n'

GOOD_ENTRY_POINTS = """\
[cloud_broker.providers]
testcloud = testcloud_plugin:TestCloudAdapter
"""

BROKEN_ENTRY_POINTS = """\
[cloud_broker.providers]
notadapter = testcloud_plugin:NotAnAdapter
oldcontract = testcloud_plugin:OldContractAdapter
incomplete = testcloud_plugin:IncompleteAdapter
brokenimport = testcloud_broken:BrokenAdapter
"""

# What the registry says of each broken entry point.
BROKEN = {
    "brokenimport": "Provider adapter 'brokenimport' failed to load: RuntimeError.",
    "incomplete": (
        "Provider adapter 'incomplete' does not implement "
        "action, deprovision, find_by_token, get, provision."
    ),
    "notadapter": "testcloud_plugin:NotAnAdapter is not a ProviderAdapter.",
    "oldcontract": (
        "Provider adapter 'oldcontract' implements contract version 0, the broker needs 1."
    ),
}

BUILT_IN = ["openstack", "outscale", "simulated"]
ALL_NAMES = sorted([*BUILT_IN, "testcloud", *BROKEN])


def _dist_info(site: Path, name: str, entry_points: str) -> None:
    folder = site / f"{name.replace('-', '_')}-1.0.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nSummary: A test plugin\n"
    )
    (folder / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """What installing the plugin packages writes to site-packages."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "testcloud_plugin.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (folder / "testcloud_broken.py").write_text(BROKEN_MODULE)
    _dist_info(folder, "testcloud-plugin", GOOD_ENTRY_POINTS)
    _dist_info(folder, "testcloud-broken-plugins", BROKEN_ENTRY_POINTS)
    return folder


@pytest.fixture
def plugin(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugins installed in this process for the test, and gone after it."""
    registry.forget()
    monkeypatch.syspath_prepend(str(site))
    yield site
    registry.forget()
    for module in ("testcloud_plugin", "testcloud_broken"):
        sys.modules.pop(module, None)


def _provider_ids(client: FlaskClient, admin: ApiUser) -> list[str]:
    return [provider["id"] for provider in all_pages(client, admin, "/v1/providers")]


# --- discovery --------------------------------------------------------------------------------


def test_the_plugin_is_discovered_from_its_entry_points(plugin: Path) -> None:
    assert registry.names() == ALL_NAMES
    info = {entry.name: entry for entry in registry.available()}
    assert info["testcloud"].target == "testcloud_plugin:TestCloudAdapter"
    assert info["testcloud"].distribution == "testcloud-plugin"
    assert info["brokenimport"].distribution == "testcloud-broken-plugins"
    assert info["simulated"].target == "providers.simulated:SimulatedAdapter"

    adapter = registry.load("testcloud")

    assert issubclass(adapter, ProviderAdapter)
    assert (adapter.__module__, adapter.__name__, adapter.name) == (
        "testcloud_plugin",
        "TestCloudAdapter",
        "testcloud",
    )
    assert sorted(adapter.features) == ["reboot", "stop_start"]
    assert registry.load("testcloud") is adapter  # loaded once, then cached


def test_without_the_plugin_on_the_path_it_is_not_installed(
    plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert registry.load("testcloud").name == "testcloud"

    monkeypatch.undo()  # "uninstall": the plugin leaves sys.path
    registry.forget()

    assert registry.names() == BUILT_IN
    with pytest.raises(registry.AdapterUnavailable) as raised:
        registry.load("testcloud")
    assert str(raised.value) == "No provider adapter named 'testcloud' is installed."


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_plugin_is_unavailable_with_a_clear_message(plugin: Path, name: str) -> None:
    with pytest.raises(registry.AdapterUnavailable) as raised:
        registry.load(name)

    assert str(raised.value) == BROKEN[name]
    # Only the providers using it are affected: the other adapters still load.
    assert registry.load("testcloud").name == "testcloud"
    assert registry.load("simulated").name == "simulated"
    with pytest.raises(registry.AdapterUnavailable):
        registry.load(name)  # failures are not cached as successes


def test_a_plugin_module_is_built_with_its_settings_and_credentials(
    plugin: Path, tmp_path: Path
) -> None:
    """The in-memory adapter honours the contract the broker relies on."""
    import uuid

    from providers.base import AdapterContext, ProvisionRequest, SettingsInvalid
    from providers.http import HttpPolicy

    context = AdapterContext(uuid.uuid4(), tmp_path, HttpPolicy())
    adapter = registry.build("testcloud", {"zone": "a"}, {"token": "s3cret"}, context)
    assert [spec.sku for spec in adapter.list_offers()] == ["tc-small", "tc-large"]
    request = ProvisionRequest(uuid.uuid4(), "tc-small", "fr-par-1", "vm")
    first = adapter.ensure_provisioned(request)
    assert adapter.ensure_provisioned(request) == first
    with pytest.raises(SettingsInvalid, match="Setting 'zone' is required."):
        registry.build("testcloud", {}, {}, context)


# --- the `broker providers list` command ------------------------------------------------------


def test_broker_providers_list_shows_the_plugin_and_the_broken_ones(site: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(PROJECT_ROOT)]),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "broker.cli", "providers", "list"],
        env=env,
        cwd=site.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    rows = {row["name"]: row for row in json.loads(completed.stdout)}
    assert sorted(rows) == ALL_NAMES
    assert rows["testcloud"] == {
        "name": "testcloud",
        "target": "testcloud_plugin:TestCloudAdapter",
        "distribution": "testcloud-plugin",
        "ok": True,
        "features": ["reboot", "stop_start"],
    }
    for name, message in BROKEN.items():
        assert rows[name]["ok"] is False, rows[name]
        assert rows[name]["error"] == message
        assert "features" not in rows[name]
        assert rows[name]["distribution"] == "testcloud-broken-plugins"
    assert rows["simulated"]["ok"] is True
    assert rows["simulated"]["features"] == [
        "object_lock",
        "object_storage",
        "reboot",
        "stop_start",
        "usage",
        "volumes",
    ]
    assert "Traceback" not in completed.stderr


# --- through the API --------------------------------------------------------------------------


def test_an_admin_creates_a_provider_on_the_plugin_and_syncs_through_it(
    plugin: Path,
    client: FlaskClient,
    db: Database,
    app: Flask,
    admin: ApiUser,
    make_user: MakeUser,
) -> None:
    setup = make_provider(
        client, admin, make_user, adapter="testcloud", adapter_config={"zone": "par-a"}
    )
    assert (setup.provider["adapter"], setup.provider["adapter_config"]) == (
        "testcloud",
        {"zone": "par-a"},
    )
    # Its settings and credentials are checked by the plugin's own rules.
    refused = client.put(
        f"/v1/providers/{setup.id}/credentials",
        json={"credentials": {"password": "x"}},
        headers=setup.operator.headers,
    )
    assert problem(refused, 422, "validation_failed")["errors"] == {
        "credentials.password": ["Unknown credential 'password'."]
    }
    stored = client.put(
        f"/v1/providers/{setup.id}/credentials",
        json={"credentials": {"token": "s3cret"}},
        headers=setup.operator.headers,
    )
    assert stored.status_code == 200, stored.get_data(as_text=True)

    response = client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert run_pending(JobContext(db, app.config), HANDLERS) == 1

    job = client.get(response.headers["Location"], headers=setup.operator.headers).json
    assert (job["state"], job["last_error"]) == ("succeeded", None)
    assert job["result"] == {
        "created": ["tc-small", "tc-large"],
        "updated": [],
        "versioned": [],
        "unchanged": [],
        "skipped": [],
    }
    offers = sorted(
        all_pages(client, setup.operator, f"/v1/offers?provider={setup.id}"),
        key=lambda offer: offer["sku"],
    )
    assert [
        (o["sku"], o["name"], o["specs"], o["region"]["code"], o["state"], o["prices"])
        for o in offers
    ] == [
        (
            "tc-large",
            "TestCloud large",
            {"vcpu": 8, "ram_gib": 32.0, "disk_gib": 100, "gpu": 0},
            "fr-lyo-1",
            "draft",
            [],
        ),
        (
            "tc-small",
            "TestCloud small",
            {"vcpu": 1, "ram_gib": 2.0, "disk_gib": 10, "gpu": 0},
            "fr-par-1",
            "draft",
            [],
        ),
    ]


def test_the_plugins_own_refusal_makes_the_sync_dead(
    plugin: Path,
    client: FlaskClient,
    db: Database,
    app: Flask,
    admin: ApiUser,
    make_user: MakeUser,
) -> None:
    setup = make_provider(
        client, admin, make_user, adapter="testcloud", adapter_config={"zone": "par-a"}
    )
    response = client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)
    run_pending(JobContext(db, app.config), HANDLERS)

    job = client.get(response.headers["Location"], headers=setup.operator.headers).json
    assert (job["state"], job["last_error"]) == ("dead", "Permanent: TestCloud refused the token.")
    assert all_pages(client, setup.operator, f"/v1/offers?provider={setup.id}") == []


def test_the_plugins_settings_rules_apply(
    plugin: Path, client: FlaskClient, admin: ApiUser
) -> None:
    organization_id = create_provider_organization(client, admin)
    for config, errors in (
        ({}, {"adapter_config.zone": ["Setting 'zone' is required."]}),
        (
            {"zone": "a", "colour": "blue"},
            {"adapter_config.colour": ["Unknown setting 'colour'."]},
        ),
    ):
        response = client.post(
            "/v1/providers",
            json=provider_body(organization_id, adapter="testcloud", adapter_config=config),
            headers=admin.headers,
        )
        assert problem(response, 422, "validation_failed")["errors"] == errors
    assert _provider_ids(client, admin) == []


@pytest.mark.parametrize("name", [*sorted(BROKEN), "nocloud"])
def test_a_provider_naming_an_unusable_adapter_is_refused(
    plugin: Path, client: FlaskClient, admin: ApiUser, name: str
) -> None:
    organization_id = create_provider_organization(client, admin)
    message = BROKEN.get(name, f"No provider adapter named {name!r} is installed.")

    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, adapter=name, adapter_config={}),
        headers=admin.headers,
    )

    body = problem(response, 422, "validation_failed")
    assert body["errors"] == {"adapter": [f"{message} Installed: {', '.join(ALL_NAMES)}."]}
    assert _provider_ids(client, admin) == []


def test_a_provider_cannot_be_switched_to_an_unusable_adapter(
    plugin: Path, client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(
        client, admin, make_user, adapter="testcloud", adapter_config={"zone": "par-a"}
    )
    for name in ("oldcontract", "nocloud"):
        response = client.patch(
            f"/v1/providers/{setup.id}",
            json={"adapter": name, "adapter_config": {}},
            headers={**admin.headers, "If-Match": setup.etag},
        )
        assert list(problem(response, 422, "validation_failed")["errors"]) == ["adapter"]
    current = client.get(f"/v1/providers/{setup.id}", headers=admin.headers)
    assert (current.json["adapter"], current.headers["ETag"]) == ("testcloud", setup.etag)


def test_without_plugins_an_unknown_adapter_is_refused(client: FlaskClient, admin: ApiUser) -> None:
    registry.forget()
    organization_id = create_provider_organization(client, admin)
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, adapter="testcloud", adapter_config={"zone": "a"}),
        headers=admin.headers,
    )
    body = problem(response, 422, "validation_failed")
    assert body["errors"] == {
        "adapter": [
            "No provider adapter named 'testcloud' is installed. "
            "Installed: openstack, outscale, simulated."
        ]
    }
