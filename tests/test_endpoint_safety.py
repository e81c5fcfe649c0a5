"""Adapter endpoints cannot point the broker at its own network (SSRF).

Done when: adapter endpoints pointing at 127.0.0.1, 10.0.0.5, 169.254.169.254, [::1] or a name
resolving to them are refused outside test configuration. Operators type the endpoints in
(`adapter_config.auth_url` of openstack, `adapter_config.endpoint` of outscale), so creating
or changing a provider with such an endpoint is 422 naming the setting and stores nothing.
Only `PROVIDER_ALLOW_PRIVATE_ENDPOINTS` (set by the tests for the local fake clouds, no
environment variable) lets http and loopback through.

Names are resolved through a fake `socket.getaddrinfo` (names under `.example.test`), so no
test depends on DNS. An IPv6 address carrying an IPv4 one (IPv4-compatible, NAT64, 6to4,
Teredo) is judged by what it carries too, and ranges that `ipaddress.is_global` admits in some
Python versions (192.0.0.0/24, documentation, 6to4…) are refused explicitly (issue 14). The
last part checks `HttpPolicy` itself against local HTTP servers: a guarded session re-checks
the address when it connects (DNS rebinding) and never follows a redirect.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from broker import create_app
from providers.http import HttpPolicy, Unresolvable, UnsafeEndpoint, resolve_public
from tests.catalogue_fixtures import (
    ProviderSetup,
    create_provider_organization,
    make_provider,
    provider_body,
)
from tests.conftest import ApiUser, MakeUser
from tests.helpers import PROBLEM, all_pages, fake_getaddrinfo, problem

PUBLIC_IP = "145.239.0.10"

# Addresses refused through what they embed or because `is_global` admits them in some Python
# versions, each refused as a literal and through a name answering it (issue 14):
# name → (the address, then the IPv4 addresses it carries, all named in the refusal).
NOT_PUBLIC: dict[str, tuple[str, ...]] = {
    # IPv4-compatible (::/96), deprecated: refused even when what it carries is public.
    "compat.example.test": ("::7f00:1", "127.0.0.1"),
    "compat-public.example.test": ("::808:808", "8.8.8.8"),
    # NAT64, well-known prefix 64:ff9b::/96: the translator calls the IPv4 it carries.
    "nat64.example.test": ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    "nat64-private.example.test": ("64:ff9b::a00:5", "10.0.0.5"),
    # NAT64, local-use 64:ff9b:1::/48 (RFC 8215), read in the /96 and the RFC 6052 /48 layouts;
    # refused even when public: it leads to some operator's own translator.
    "nat64-local.example.test": ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
    "nat64-local48.example.test": ("64:ff9b:1:a9fe:a9:fe00::", "169.254.169.254"),
    "nat64-local-public.example.test": ("64:ff9b:1::808:808", "8.8.8.8"),
    # 6to4, 2002::/16 (the IPv4 in bits 16-48), deprecated: refused even when public.
    "sixtofour.example.test": ("2002:7f00:1::", "127.0.0.1"),
    "sixtofour-metadata.example.test": ("2002:a9fe:a9fe::1", "169.254.169.254"),
    "sixtofour-public.example.test": ("2002:808:808::1", "8.8.8.8"),
    # Teredo, 2001::/32: server IPv4 in bits 32-64, client IPv4 = last 32 bits XOR 0xffffffff;
    # refused even when both are public (not globally reachable, the relay decides).
    "teredo-client.example.test": (
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "65.54.227.120",
        "127.0.0.1",
    ),
    "teredo-server.example.test": (
        "2001:0:a9fe:a9fe:8000:63bf:f7f7:f7f7",
        "169.254.169.254",
        "8.8.8.8",
    ),
    "teredo-public.example.test": (
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        "65.54.227.120",
        "8.8.8.8",
    ),
    # Ranges refused whatever `is_global` says.
    "ietf.example.test": ("192.0.0.9",),  # 192.0.0.0/24; `is_global` admits .9 and .10
    "benchmark.example.test": ("198.18.0.1",),
    "documentation.example.test": ("203.0.113.7",),
    "documentation-v6.example.test": ("3fff::1",),  # RFC 9637
    "this-network.example.test": ("0.1.2.3",),
    "multicast.example.test": ("224.0.0.251",),
    "multicast-v6.example.test": ("ff0e::1",),
    "reserved.example.test": ("240.0.0.1",),
    # IPv6 outside global unicast 2000::/3, which `is_global` admits.
    "site-local.example.test": ("fec0::1",),
    "reserved-v6.example.test": ("4000::1",),
}


def _in_url(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# Fake DNS: name → the addresses it resolves to.
FAKE_DNS: dict[str, list[str]] = {
    "loopback.example.test": ["127.0.0.1"],
    "private.example.test": ["10.0.0.5"],
    "metadata.example.test": ["169.254.169.254"],
    "v6-loopback.example.test": ["::1"],
    "mapped.example.test": ["::ffff:127.0.0.1"],
    "shared.example.test": ["100.64.0.1"],
    "ula.example.test": ["fc00::1"],
    "half-public.example.test": [PUBLIC_IP, "10.0.0.5"],
    "public.example.test": [PUBLIC_IP],
    "public-v6.example.test": ["2001:41d0:1:2::10"],
    # NAT64 (well-known prefix) carrying a public IPv4 is accepted: it is how an IPv6-only
    # broker behind DNS64 reaches an IPv4-only provider, the translator calls exactly the IPv4
    # it carries, and RFC 6052 forbids that prefix for non-global IPv4.
    "public-nat64.example.test": ["64:ff9b::808:808"],
    "public-mapped.example.test": [f"::ffff:{PUBLIC_IP}"],
    "keystone.example.fr": [PUBLIC_IP],
    **{name: [named[0]] for name, named in NOT_PUBLIC.items()},
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(FAKE_DNS))
    return FAKE_DNS


# --- the API refuses unsafe endpoints ----------------------------------------------------------

UNSAFE_URLS = [
    "https://127.0.0.1/v3",
    "https://10.0.0.5/v3",
    "https://169.254.169.254/",
    "https://[::1]/v3",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/latest/meta-data/",
    "https://localhost/v3",
    "https://2130706433/v3",  # 127.0.0.1 as one number
    "https://127.1/v3",
    "https://0.0.0.0/v3",
    "http://keystone.example.fr/v3",  # public, but not https
    "ftp://keystone.example.fr/v3",
    "https://user:pw@keystone.example.fr/v3",
    "https://loopback.example.test/v3",
    "https://private.example.test/v3",
    "https://metadata.example.test/",
    "https://v6-loopback.example.test/v3",
    "https://mapped.example.test/v3",
    "https://half-public.example.test/v3",
    *(f"https://{_in_url(named[0])}/v3" for named in NOT_PUBLIC.values()),
    *(f"https://{name}/v3" for name in NOT_PUBLIC),
]

# Adapter, the setting holding its endpoint, and valid settings around a given URL.
ADAPTERS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "openstack": ("auth_url", lambda url: {"auth_url": url, "region": "fr-par"}),
    "outscale": ("endpoint", lambda url: {"region": "eu-west-2", "endpoint": url}),
}


def _providers(client: FlaskClient, user: ApiUser) -> list[dict[str, Any]]:
    return all_pages(client, user, "/v1/providers")


def _patch(client: FlaskClient, user: ApiUser, setup: ProviderSetup, body: dict[str, Any]) -> Any:
    headers = {**user.headers, "If-Match": setup.etag}
    return client.patch(f"/v1/providers/{setup.id}", json=body, headers=headers)


@pytest.fixture
def organization_id(client: FlaskClient, admin: ApiUser) -> str:
    return create_provider_organization(client, admin)


def _refusal_mismatch(response: Any, setting: str) -> str | None:
    """None when `response` is the expected 422 naming `adapter_config.<setting>` alone."""
    body = response.get_json(silent=True) or {}
    if (
        response.status_code == 422
        and response.mimetype == PROBLEM
        and body.get("code") == "validation_failed"
        and list(body.get("errors", {})) == [f"adapter_config.{setting}"]
    ):
        return None
    return f"{response.status_code} {body}"


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_creating_a_provider_with_an_unsafe_endpoint_is_422_and_stores_nothing(
    client: FlaskClient, admin: ApiUser, organization_id: str, adapter: str
) -> None:
    setting, settings = ADAPTERS[adapter]
    wrong: dict[str, str] = {}
    for url in UNSAFE_URLS:
        body = provider_body(organization_id, adapter=adapter, adapter_config=settings(url))
        response = client.post("/v1/providers", json=body, headers=admin.headers)
        mismatch = _refusal_mismatch(response, setting)
        if mismatch:
            wrong[url] = mismatch

    assert wrong == {}, "accepted or refused for the wrong reason"
    assert _providers(client, admin) == []
    events = all_pages(client, admin, "/v1/audit-events?object_type=provider")
    assert events == []


@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_an_operator_patching_in_an_unsafe_endpoint_gets_422_and_changes_nothing(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, adapter: str
) -> None:
    setting, settings = ADAPTERS[adapter]
    setup = make_provider(
        client,
        admin,
        make_user,
        adapter=adapter,
        adapter_config=settings("https://public.example.test/v3"),
    )
    stored = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
    audit_before = all_pages(client, admin, f"/v1/audit-events?object_id={setup.id}")

    wrong: dict[str, str] = {}
    for url in UNSAFE_URLS:
        # The current ETag each time, so that one wrong acceptance does not hide the others.
        current = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
        setup.etag = current.headers["ETag"]
        response = _patch(client, setup.operator, setup, {"adapter_config": settings(url)})
        mismatch = _refusal_mismatch(response, setting)
        if mismatch:
            wrong[url] = mismatch

    assert wrong == {}, "accepted or refused for the wrong reason"
    after = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
    assert after.json == stored.json
    assert after.headers["ETag"] == stored.headers["ETag"]
    assert all_pages(client, admin, f"/v1/audit-events?object_id={setup.id}") == audit_before


def test_switching_adapter_is_checked_against_the_new_adapters_endpoint(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user)
    response = _patch(
        client,
        setup.operator,
        setup,
        {
            "adapter": "outscale",
            "adapter_config": {"region": "eu-west-2", "endpoint": "https://10.0.0.5/"},
        },
    )
    assert list(problem(response, 422)["errors"]) == ["adapter_config.endpoint"]
    read = client.get(f"/v1/providers/{setup.id}", headers=admin.headers)
    assert read.json["adapter"] == "openstack"


def test_an_outscale_region_whose_default_endpoint_resolves_privately_is_refused(
    client: FlaskClient, admin: ApiUser, organization_id: str, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns_entry = "api.eu-west-2.outscale.com"
    fake_dns[fake_dns_entry] = ["10.0.0.5"]
    try:
        body = provider_body(
            organization_id, adapter="outscale", adapter_config={"region": "eu-west-2"}
        )
        response = client.post("/v1/providers", json=body, headers=admin.headers)
        assert list(problem(response, 422)["errors"]) == ["adapter_config.region"]
        assert _providers(client, admin) == []

        fake_dns[fake_dns_entry] = [PUBLIC_IP]
        accepted = client.post("/v1/providers", json=body, headers=admin.headers)
        assert accepted.status_code == 201, accepted.get_data(as_text=True)
    finally:
        del fake_dns[fake_dns_entry]


@pytest.mark.parametrize(
    ("adapter", "url", "stored"),
    [
        ("openstack", "https://public.example.test/v3", "https://public.example.test/v3"),
        ("openstack", f"https://{PUBLIC_IP}:5000/v3", f"https://{PUBLIC_IP}:5000/v3"),
        ("openstack", "https://public-v6.example.test/v3", "https://public-v6.example.test/v3"),
        ("openstack", "https://[2a01:4f8::1]/v3", "https://[2a01:4f8::1]/v3"),
        # NAT64 carrying a public IPv4: accepted (see `public-nat64.example.test`).
        ("openstack", "https://[64:ff9b::808:808]/v3", "https://[64:ff9b::808:808]/v3"),
        (
            "outscale",
            "https://public-nat64.example.test/api/v1",
            "https://public-nat64.example.test/api/v1",
        ),
        ("outscale", "https://public.example.test/api/v1/", "https://public.example.test/api/v1"),
    ],
)
def test_a_public_https_endpoint_is_accepted(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    organization_id: str,
    adapter: str,
    url: str,
    stored: str,
) -> None:
    setting, settings = ADAPTERS[adapter]
    body = provider_body(organization_id, adapter=adapter, adapter_config=settings(url))
    created = client.post("/v1/providers", json=body, headers=admin.headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.json["adapter_config"][setting] == stored
    read = client.get(f"/v1/providers/{created.json['id']}", headers=admin.headers)
    assert read.json["adapter_config"] == created.json["adapter_config"]

    # An operator may move it to another public endpoint.
    operator = make_user("provider", ["provider"], organization_id=organization_id)
    setup = ProviderSetup(dict(created.json), created.headers["ETag"], operator, organization_id)
    moved = _patch(client, operator, setup, {"adapter_config": settings(f"https://{PUBLIC_IP}/v3")})
    assert moved.status_code == 200, moved.get_data(as_text=True)
    assert moved.json["adapter_config"][setting] == f"https://{PUBLIC_IP}/v3"


# --- the test configuration lets the local fakes through ---------------------------------------


@pytest.fixture
def private_app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app with `PROVIDER_ALLOW_PRIVATE_ENDPOINTS` (what the fake clouds' tests use)."""
    application = create_app({**app_config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True})
    yield application
    application.extensions["broker.db"].dispose()


def test_private_endpoints_pass_only_in_the_test_configuration(
    app: Flask,
    private_app: Flask,
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    organization_id: str,
) -> None:
    assert app.config["PROVIDER_ALLOW_PRIVATE_ENDPOINTS"] is False
    local = {"auth_url": "http://127.0.0.1:5000/v3", "region": "fr-par"}
    strict = client.post(
        "/v1/providers",
        json=provider_body(organization_id, adapter_config=local),
        headers=admin.headers,
    )
    assert list(problem(strict, 422)["errors"]) == ["adapter_config.auth_url"]

    lenient = private_app.test_client()
    created = lenient.post(
        "/v1/providers",
        json=provider_body(organization_id, adapter_config=local),
        headers=admin.headers,
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.json["adapter_config"] == local

    operator = make_user("provider", ["provider"], organization_id=organization_id)
    setup = ProviderSetup(dict(created.json), created.headers["ETag"], operator, organization_id)
    outscale = {"region": "eu-west-2", "endpoint": "http://[::1]:8443/api/v1"}
    # The strict app refuses the same change the lenient one accepts.
    refused = _patch(client, operator, setup, {"adapter": "outscale", "adapter_config": outscale})
    assert list(problem(refused, 422)["errors"]) == ["adapter_config.endpoint"]
    patched = _patch(lenient, operator, setup, {"adapter": "outscale", "adapter_config": outscale})
    assert patched.status_code == 200, patched.get_data(as_text=True)
    assert patched.json["adapter_config"] == outscale


# --- HttpPolicy -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.0.0.5",
        "169.254.169.254",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.5",
        "100.64.0.1",
        "fc00::1",
        "fe80::1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "192.0.2.1",
        "loopback.example.test",
        "mapped.example.test",
        "shared.example.test",
        "ula.example.test",
        "half-public.example.test",
        *NOT_PUBLIC,
        *(named[0] for named in NOT_PUBLIC.values()),
    ],
)
def test_resolve_public_refuses_non_public_addresses(host: str) -> None:
    with pytest.raises(UnsafeEndpoint, match="public") as raised:
        resolve_public(host, 443)
    assert not isinstance(raised.value, Unresolvable)
    # The refusal names the address, and the IPv4 addresses it carries.
    named = NOT_PUBLIC.get(host) or next((n for n in NOT_PUBLIC.values() if n[0] == host), ())
    for part in named:
        assert part in str(raised.value)


def test_resolve_public_answers_every_address_of_a_public_name() -> None:
    assert resolve_public(PUBLIC_IP, 443) == [PUBLIC_IP]
    assert resolve_public("public.example.test", 443) == [PUBLIC_IP]
    assert resolve_public("public-v6.example.test", 443) == ["2001:41d0:1:2::10"]
    assert resolve_public("[2a01:4f8::1]", 443) == ["2a01:4f8::1"]
    assert resolve_public("64:ff9b::808:808", 443) == ["64:ff9b::808:808"]
    assert resolve_public("public-nat64.example.test", 443) == ["64:ff9b::808:808"]
    # Python 3.13 writes this address `::ffff:145.239.0.10`, 3.11 `::ffff:91ef:a`.
    mapped = str(ipaddress.ip_address(f"::ffff:{PUBLIC_IP}"))
    assert resolve_public("public-mapped.example.test", 443) == [mapped]
    with pytest.raises(Unresolvable):
        resolve_public("nowhere.invalid", 443)


def test_check_url_lets_an_unresolvable_name_through_for_the_connection_to_check() -> None:
    HttpPolicy().check_url("https://nowhere.invalid/v3")
    with pytest.raises(UnsafeEndpoint, match="https"):
        HttpPolicy().check_url("http://nowhere.invalid/v3")
    HttpPolicy(allow_private=True).check_url("http://127.0.0.1:5000/v3")


class _Recorder:
    """A local HTTP server recording the connections it accepts and the paths it serves."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        recorder = self
        self.connections = 0
        self.paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                recorder.paths.append(self.path)
                respond(self)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                recorder.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _ok(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "2")
    handler.end_headers()
    handler.wfile.write(b"ok")


@pytest.fixture
def server() -> Iterator[_Recorder]:
    recorder = _Recorder(_ok)
    yield recorder
    recorder.close()


def test_a_guarded_session_refuses_to_connect_to_a_name_that_rebinds_to_loopback(
    server: _Recorder, fake_dns: dict[str, list[str]]
) -> None:
    name = f"rebind-{uuid.uuid4().hex[:8]}.example.test"
    url = f"https://{name}:{server.port}/v3"
    fake_dns[name] = [PUBLIC_IP]
    try:
        policy = HttpPolicy(timeout=2)
        policy.check_url(url)  # public when the operator configured it
        fake_dns[name] = ["127.0.0.1"]  # loopback when the adapter connects

        with pytest.raises(UnsafeEndpoint, match="127.0.0.1"):
            policy.session().get(url, timeout=2)
        with pytest.raises(UnsafeEndpoint, match="127.0.0.1"):
            policy.session().get(f"http://{name}:{server.port}/v3", timeout=2)
        with pytest.raises(UnsafeEndpoint):
            policy.session().get(f"http://127.0.0.1:{server.port}/v3", timeout=2)

        # The same name, unguarded, does reach the server: the refusals above were real.
        reached = (
            HttpPolicy(timeout=2, allow_private=True)
            .session()
            .get(f"http://{name}:{server.port}/v3")
        )
        assert reached.status_code == 200
    finally:
        del fake_dns[name]
    # Connections are accepted in order: the only one is the unguarded request's.
    assert server.connections == 1
    assert server.paths == ["/v3"]


@pytest.fixture
def redirecting() -> Iterator[tuple[_Recorder, _Recorder]]:
    """An origin answering every GET with a 302 to a second server (the target)."""
    target = _Recorder(_ok)

    def redirect(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"http://127.0.0.1:{target.port}/stolen")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    origin = _Recorder(redirect)
    yield origin, target
    origin.close()
    target.close()


def _answer(call: Callable[[], requests.Response]) -> requests.Response:
    """The response, also when requests reports it through TooManyRedirects."""
    try:
        return call()
    except requests.TooManyRedirects as error:
        assert error.response is not None
        return error.response


def test_a_session_never_follows_a_redirect(redirecting: tuple[_Recorder, _Recorder]) -> None:
    origin, target = redirecting
    session = HttpPolicy(timeout=2, allow_private=True).session()
    base = f"http://127.0.0.1:{origin.port}"

    first = _answer(lambda: session.get(f"{base}/start"))
    asked = _answer(lambda: session.get(f"{base}/again", allow_redirects=True))
    direct = _answer(lambda: session.request("GET", f"{base}/request", allow_redirects=True))

    for response in (first, asked, direct):
        assert response.status_code == 302
        assert response.headers["Location"].endswith("/stolen")
        assert response.history == []
    assert origin.paths == ["/start", "/again", "/request"]
    assert target.paths == []
    assert target.connections == 0


def test_a_redirect_answer_is_returned_to_the_adapter(
    redirecting: tuple[_Recorder, _Recorder],
) -> None:
    origin, target = redirecting
    session = HttpPolicy(timeout=2, allow_private=True).session()
    response = session.get(f"http://127.0.0.1:{origin.port}/start")
    assert response.status_code == 302
    assert target.paths == []


def test_a_session_ignores_proxies_from_the_environment(
    server: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy variable pointing at the local server must not route the adapter through it.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    session = HttpPolicy(timeout=2).session()
    assert session.trust_env is False
    with pytest.raises(requests.RequestException):
        session.get("https://nowhere.invalid/v3", timeout=2)
    assert server.connections == 0
    assert server.paths == []
