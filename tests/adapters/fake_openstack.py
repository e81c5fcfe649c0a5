"""A fake OpenStack (Keystone v3 + the Nova subset the adapter uses) for the adapter tests.

It speaks HTTP on 127.0.0.1, so the adapter runs through openstacksdk, keystoneauth and the
broker's guarded session exactly as against a real cloud:

- Keystone: `POST /identity/v3/auth/tokens` checks the password or application credential
  and answers with a project-scoped token whose catalogue points compute at this server.
- Nova, under `/compute/v2.1`: version documents, flavors, servers (create, list with the
  `tags` filter, show, delete) and the start / stop / reboot actions, all in memory. Servers
  go straight to ACTIVE. Microversions matter as on a real Nova: tags at create need 2.52,
  and below 2.26 the `tags` filter is ignored and tags are left out of server bodies.

The main Nova call of each operation honours a `FaultPlan` (Keystone and discovery never
fault): see `_FAULTED` for which request is which operation.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from providers.faults import Fault, FaultPlan, Operation
from providers.openstack import OpenStackAdapter
from tests.adapters.harness import HANG_SECONDS, Harness, serve_wsgi, test_context

REGION = "RegionOne"
SKU = "SCS-2V-4-20s"
IMAGE_ID = "0b6e1c8a-3f4e-4a47-9c7e-5d0c6a1f0e01"
PROJECT_ID = "5f4dcc3b5aa765d61d8327deb882cf99"
PROJECT_NAME = "broker-tenant"
USERNAME = "broker"
PASSWORD = "correct horse battery staple"
APP_CREDENTIAL_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
APP_CREDENTIAL_SECRET = "app-cred-secret-9f8e7d6c"

MAX_MICROVERSION = (2, 96)

# name → (id, vcpus, ram MiB, disk GiB): Sovereign Cloud Stack flavor names.
FLAVORS = {
    "SCS-1V-2": ("5a7c1d2e-0001-4c1e-9d6f-000000000001", 1, 2048, 0),
    SKU: ("5a7c1d2e-0002-4c1e-9d6f-000000000002", 2, 4096, 20),
    "SCS-4V-16-100s": ("5a7c1d2e-0003-4c1e-9d6f-000000000003", 4, 16384, 100),
}

QUOTA_MESSAGE = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"


def _error(status: int, kind: str, message: str) -> Response:
    response = jsonify({kind: {"code": status, "message": message}})
    response.status_code = status
    return response


def _microversion() -> tuple[int, int]:
    """The compute microversion the request asks for (2.1 when it names none)."""
    header = request.headers.get("OpenStack-API-Version", "")
    value = header.split()[-1] if header.lower().startswith("compute") else ""
    value = value or request.headers.get("X-OpenStack-Nova-API-Version", "2.1")
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def token_body(
    compute_url: str, region: str = REGION, methods: Sequence[str] = ("password",)
) -> dict[str, Any]:
    """A Keystone v3 token with a project scope and a catalogue holding compute.

    Built by hand: `keystoneauth1.fixture.V3Token` would do it, but importing
    `keystoneauth1.fixture` needs the `fixtures` test library, which the broker does not
    install.
    """
    now = datetime.now(UTC)
    default = {"id": "default", "name": "Default"}
    token: dict[str, Any] = {
        "methods": list(methods),
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "expires_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "audit_ids": [uuid.uuid4().hex],
        "user": {"id": uuid.uuid4().hex, "name": USERNAME, "domain": default},
        "project": {"id": PROJECT_ID, "name": PROJECT_NAME, "domain": default},
        "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
        "catalog": [
            {
                "id": uuid.uuid4().hex,
                "type": "compute",
                "name": "nova",
                "endpoints": [
                    {
                        "id": uuid.uuid4().hex,
                        "interface": interface,
                        "region": region,
                        "region_id": region,
                        "url": compute_url,
                    }
                    for interface in ("public", "internal")
                ],
            }
        ],
    }
    if list(methods) == ["application_credential"]:
        token["application_credential"] = {
            "id": APP_CREDENTIAL_ID,
            "name": "broker",
            "restricted": True,
        }
    return {"token": token}


def nova_version(compute_url: str) -> dict[str, Any]:
    """Nova's description of its v2.1 API (served at the endpoint and its parent)."""
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": "{}.{}".format(*MAX_MICROVERSION),
        "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{compute_url.rstrip('/')}/"}],
        "media-types": [
            {
                "base": "application/json",
                "type": "application/vnd.openstack.compute+json;version=2.1",
            }
        ],
    }


@dataclass
class FakeServer:
    id: str
    name: str
    flavor: str
    image: str
    networks: Any
    tags: list[str]
    status: str = "ACTIVE"
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    address: str = "10.0.0.2"


class FakeOpenStack:
    """Keystone + Nova state and the WSGI app serving it. Thread-safe."""

    def __init__(self, region: str = REGION, faults: FaultPlan | None = None) -> None:
        self.region = region
        self.faults = faults or FaultPlan()
        self.servers: dict[str, FakeServer] = {}
        self.tokens: set[str] = set()
        # Every Nova request as (method, path, microversion), for tests to inspect.
        self.calls: list[tuple[str, str, tuple[int, int]]] = []
        self.create_bodies: list[dict[str, Any]] = []
        # Exceptions raised inside the fake (answered 500): a test asserts there are none.
        self.errors: list[BaseException] = []
        self._addresses = itertools.count(10)
        self._lock = threading.Lock()
        self.app = self._build_app()

    # -- views and actions from the cloud's side --------------------------------------------

    def count_with_token(self, token: str) -> int:
        with self._lock:
            return sum(token in server.tags for server in self.servers.values())

    def delete_out_of_band(self, ref: str) -> None:
        with self._lock:
            self.servers.pop(ref, None)

    def adapter_settings(self, base_url: str) -> dict[str, str]:
        return {
            "auth_url": f"{base_url}/identity/v3",
            "region": self.region,
            "project_name": PROJECT_NAME,
            "user_domain_name": "Default",
            "project_domain_name": "Default",
            "image": IMAGE_ID,
        }

    # -- documents --------------------------------------------------------------------------

    def _server_body(self, server: FakeServer, microversion: tuple[int, int]) -> dict[str, Any]:
        flavor_id, vcpus, ram, disk = FLAVORS[server.flavor]
        body: dict[str, Any] = {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "OS-EXT-STS:task_state": None,
            "OS-EXT-STS:vm_state": {"ACTIVE": "active", "SHUTOFF": "stopped"}.get(
                server.status, "building"
            ),
            "tenant_id": PROJECT_ID,
            "created": server.created,
            "updated": server.created,
            "image": {"id": server.image},
            "flavor": {
                "original_name": server.flavor,
                "vcpus": vcpus,
                "ram": ram,
                "disk": disk,
                "ephemeral": 0,
                "swap": 0,
                "extra_specs": {},
            },
            "addresses": {
                "auto_allocated_network": [
                    {"addr": server.address, "version": 4, "OS-EXT-IPS:type": "fixed"}
                ]
            },
            "metadata": {},
            "links": [
                {"rel": "self", "href": f"{request.host_url}compute/v2.1/servers/{server.id}"}
            ],
        }
        if microversion >= (2, 26):
            body["tags"] = list(server.tags)
        return body

    # -- faults -----------------------------------------------------------------------------

    def _faulted(
        self, operation: Operation, work: Callable[[], Response], ref: str | None = None
    ) -> Response:
        """Run `work` (the operation's effect and answer) under the fault plan."""
        fault = self.faults.next(operation)
        if fault is Fault.TIMEOUT_BEFORE:
            time.sleep(HANG_SECONDS)  # the client has given up; nothing is done
            return _error(504, "computeFault", "Gateway timeout.")
        if fault is Fault.SERVER_ERROR:
            return _error(503, "computeFault", "Service unavailable, try again later.")
        if fault is Fault.THROTTLED:
            response = _error(429, "overLimit", "Rate limit exceeded.")
            response.headers["Retry-After"] = str(self.faults.retry_after_seconds)
            return response
        if fault is Fault.QUOTA_EXCEEDED and operation is Operation.PROVISION:
            return _error(403, "forbidden", QUOTA_MESSAGE)
        if fault is Fault.DELETED_OUT_OF_BAND and ref is not None:
            self.delete_out_of_band(ref)
        response = work()
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            time.sleep(HANG_SECONDS)  # done, but the answer comes too late
        return response

    # -- the app ----------------------------------------------------------------------------

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.url_map.strict_slashes = False

        @app.post("/identity/v3/auth/tokens")
        def issue_token() -> Response:
            return self._issue_token(request.get_json(force=True, silent=True) or {})

        @app.get("/compute")
        def list_nova_versions() -> Response:
            return jsonify({"versions": [nova_version(f"{request.host_url}compute/v2.1")]})

        @app.get("/compute/v2.1")
        def show_nova_version() -> Response:
            return jsonify({"version": nova_version(f"{request.host_url}compute/v2.1")})

        @app.errorhandler(Exception)
        def crashed(error: Exception) -> Response | HTTPException:
            # A crash, or a request the fake does not know (which the adapter should not make).
            self.errors.append(error)
            if isinstance(error, HTTPException):
                return error
            return _error(500, "computeFault", f"The fake crashed: {error!r}")

        @app.before_request
        def authenticate() -> Response | None:
            if not request.path.startswith("/compute/v2.1/"):
                return None
            self.calls.append((request.method, request.path, _microversion()))
            if request.headers.get("X-Auth-Token") not in self.tokens:
                return _error(401, "error", "The request you have made requires authentication.")
            return None

        @app.get("/compute/v2.1/flavors/detail")
        def list_flavors() -> Response:
            return self._faulted(Operation.LIST_OFFERS, self._flavors)

        @app.post("/compute/v2.1/servers")
        def create_server() -> Response:
            body = request.get_json(force=True, silent=True) or {}
            microversion = _microversion()
            return self._faulted(Operation.PROVISION, lambda: self._create(body, microversion))

        @app.get("/compute/v2.1/servers/detail")
        def list_servers() -> Response:
            tag = request.args.get("tags")
            microversion = _microversion()
            return self._faulted(Operation.FIND_BY_TOKEN, lambda: self._list(tag, microversion))

        @app.get("/compute/v2.1/servers/<ref>")
        def show_server(ref: str) -> Response:
            microversion = _microversion()
            return self._faulted(Operation.GET, lambda: self._show(ref, microversion), ref)

        @app.post("/compute/v2.1/servers/<ref>/action")
        def server_action(ref: str) -> Response:
            body = request.get_json(force=True, silent=True) or {}
            return self._faulted(Operation.ACTION, lambda: self._action(ref, body), ref)

        @app.delete("/compute/v2.1/servers/<ref>")
        def delete_server(ref: str) -> Response:
            return self._faulted(Operation.DEPROVISION, lambda: self._delete(ref), ref)

        return app

    # -- Keystone ---------------------------------------------------------------------------

    def _issue_token(self, body: dict[str, Any]) -> Response:
        identity = body.get("auth", {}).get("identity", {})
        methods = identity.get("methods", [])
        scope = body.get("auth", {}).get("scope")
        if methods == ["password"]:
            user = identity.get("password", {}).get("user", {})
            valid = user.get("name") == USERNAME and user.get("password") == PASSWORD
            project = (scope or {}).get("project", {})
            if valid and project.get("id") not in (None, PROJECT_ID):
                valid = False
            if valid and "id" not in project and project.get("name") != PROJECT_NAME:
                valid = False
        elif methods == ["application_credential"]:
            credential = identity.get("application_credential", {})
            valid = (
                credential.get("id") == APP_CREDENTIAL_ID
                and credential.get("secret") == APP_CREDENTIAL_SECRET
                and scope is None  # Keystone refuses a scope with an application credential
            )
        else:
            valid = False
        if not valid:
            return _error(401, "error", "The request you have made requires authentication.")

        body = token_body(f"{request.host_url}compute/v2.1", self.region, methods)
        token_id = uuid.uuid4().hex
        with self._lock:
            self.tokens.add(token_id)
        response = jsonify(body)
        response.status_code = 201
        response.headers["X-Subject-Token"] = token_id
        return response

    # -- Nova -------------------------------------------------------------------------------

    def _flavors(self) -> Response:
        return jsonify(
            {
                "flavors": [
                    {
                        "id": flavor_id,
                        "name": name,
                        "vcpus": vcpus,
                        "ram": ram,
                        "disk": disk,
                        "swap": 0,
                        "OS-FLV-EXT-DATA:ephemeral": 0,
                        "OS-FLV-DISABLED:disabled": False,
                        "os-flavor-access:is_public": True,
                        "rxtx_factor": 1.0,
                        "links": [],
                    }
                    for name, (flavor_id, vcpus, ram, disk) in FLAVORS.items()
                ]
            }
        )

    def _create(self, body: dict[str, Any], microversion: tuple[int, int]) -> Response:
        self.create_bodies.append(body)
        server = body.get("server", {})
        tags = server.get("tags", [])
        if tags and microversion < (2, 52):
            return _error(
                400,
                "badRequest",
                "Invalid input for field/attribute server. Additional properties are not "
                "allowed ('tags' was unexpected)",
            )
        if microversion >= (2, 37) and "networks" not in server:
            return _error(400, "badRequest", "Invalid input: 'networks' is a required property")
        by_id = {flavor_id: name for name, (flavor_id, *_) in FLAVORS.items()}
        flavor = by_id.get(server.get("flavorRef", ""))
        if flavor is None:
            return _error(
                400, "badRequest", f"Flavor {server.get('flavorRef')} could not be found."
            )
        if not server.get("imageRef"):
            return _error(400, "badRequest", "Block Device Mapping is Invalid: no image.")
        created = FakeServer(
            id=str(uuid.uuid4()),
            name=str(server.get("name", "")),
            flavor=flavor,
            image=str(server["imageRef"]),
            networks=server.get("networks"),
            tags=[str(tag) for tag in tags],
            address=f"10.0.0.{next(self._addresses)}",
        )
        with self._lock:
            self.servers[created.id] = created
        response = jsonify(
            {
                "server": {
                    "id": created.id,
                    "links": [],
                    "OS-DCF:diskConfig": "MANUAL",
                    "security_groups": [{"name": "default"}],
                }
            }
        )
        response.status_code = 202
        return response

    def _list(self, tag: str | None, microversion: tuple[int, int]) -> Response:
        with self._lock:
            servers = list(self.servers.values())
        if tag is not None and microversion >= (2, 26):
            servers = [server for server in servers if tag in server.tags]
        return jsonify({"servers": [self._server_body(s, microversion) for s in servers]})

    def _missing(self, ref: str) -> Response:
        return _error(404, "itemNotFound", f"Instance {ref} could not be found.")

    def _show(self, ref: str, microversion: tuple[int, int]) -> Response:
        with self._lock:
            server = self.servers.get(ref)
        if server is None:
            return self._missing(ref)
        return jsonify({"server": self._server_body(server, microversion)})

    def _action(self, ref: str, body: dict[str, Any]) -> Response:
        with self._lock:
            server = self.servers.get(ref)
            if server is None:
                return self._missing(ref)
            if "os-stop" in body:
                if server.status != "ACTIVE":
                    return self._conflict("stop", server)
                server.status = "SHUTOFF"
            elif "os-start" in body:
                if server.status != "SHUTOFF":
                    return self._conflict("start", server)
                server.status = "ACTIVE"
            elif "reboot" in body:
                if server.status != "ACTIVE":
                    return self._conflict("reboot", server)
                server.status = "ACTIVE"
            else:
                return _error(400, "badRequest", "Unsupported server action.")
        return Response(status=202)

    def _conflict(self, action: str, server: FakeServer) -> Response:
        state = {"ACTIVE": "active", "SHUTOFF": "stopped"}.get(server.status, "building")
        return _error(
            409,
            "conflictingRequest",
            f"Cannot '{action}' instance {server.id} while it is in vm_state {state}",
        )

    def _delete(self, ref: str) -> Response:
        with self._lock:
            if self.servers.pop(ref, None) is None:
                return self._missing(ref)
        return Response(status=204)


@contextmanager
def fake_openstack(faults: FaultPlan | None = None) -> Iterator[tuple[FakeOpenStack, str]]:
    """A running fake cloud and its base URL."""
    cloud = FakeOpenStack(faults=faults)
    with serve_wsgi(cloud.app) as base_url:
        yield cloud, base_url


@contextmanager
def harness(tmp_path: object) -> Iterator[Harness]:
    """The contract suite's view of the OpenStack adapter, against a fresh fake cloud."""
    with fake_openstack() as (cloud, base_url):

        def build() -> OpenStackAdapter:
            return OpenStackAdapter(
                settings=cloud.adapter_settings(base_url),
                credentials={"username": USERNAME, "password": PASSWORD},
                context=test_context(tmp_path),
            )

        yield Harness(
            build=build,
            faults=cloud.faults,
            count_with_token=cloud.count_with_token,
            delete_out_of_band=cloud.delete_out_of_band,
            sku=SKU,
            region=REGION,
            features=frozenset(OpenStackAdapter.features),
        )
