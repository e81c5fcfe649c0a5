"""A fake OpenStack (the Keystone, Nova, Cinder and Swift subsets the adapter uses) for the
adapter tests.

It speaks HTTP on 127.0.0.1, so the adapter runs through openstacksdk, keystoneauth and the
broker's guarded session exactly as against a real cloud:

- Keystone: `POST /identity/v3/auth/tokens` checks the password or application credential
  and answers with a project-scoped token whose catalogue points compute, block-storage,
  object-store and identity at this server; `/identity/v3/credentials` keeps EC2
  credentials (list by type and user, create, delete; the id is the sha256 of the access
  key, as Keystone makes it).
- Nova, under `/compute/v2.1`: version documents, flavors, servers (create, list with the
  `tags` filter, show, delete) and the start / stop / reboot actions, all in memory. Servers
  go straight to ACTIVE. Microversions matter as on a real Nova: tags at create need 2.52,
  and below 2.26 the `tags` filter is ignored and tags are left out of server bodies. Volume
  attachments (`os-volume_attachments`) attach and detach Cinder volumes; deleting a server
  detaches its volumes.
- Cinder, under `/volume/v3/<project>`: version documents, volumes (create, list with the
  `metadata` filter, show, delete) and the `os-extend` action, which grows an attached volume
  only from microversion 3.42. Volumes are `creating` in the create answer, then available.
- Swift, under `/object/v1/AUTH_<project>`: the account listing, containers (PUT, HEAD,
  listing, DELETE, refused with 409 while it holds objects) with their metadata, and object
  DELETE; and, at `/object/<bucket>/<key>`, an S3 PUT as Swift's `s3api` takes it, for the
  holder of a live EC2 credential (the access key is checked, not the signature).

The main call of each operation honours a `FaultPlan` (authentication and discovery never
fault); which request is which operation is said where its route is declared.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
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

from providers.base import AccessKey, Bucket
from providers.faults import Fault, FaultPlan, Operation
from providers.openstack import OpenStackAdapter
from tests.adapters.harness import HANG_SECONDS, Harness, serve_wsgi, test_context

REGION = "RegionOne"
SKU = "SCS-2V-4-20s"
IMAGE_ID = "0b6e1c8a-3f4e-4a47-9c7e-5d0c6a1f0e01"
PROJECT_ID = "5f4dcc3b5aa765d61d8327deb882cf99"
PROJECT_NAME = "broker-tenant"
USER_ID = "9a0d1e7c5b3f4e2a8c6d0b1f2e3a4c5d"
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
VOLUME_QUOTA_MESSAGE = (
    "VolumeLimitExceeded: Maximum number of volumes allowed (10) exceeded for quota 'volumes'."
)
CONTAINER_QUOTA_MESSAGE = "Reached container limit of 100"

# Volume types (SCS names): name → (id, encrypted).
VOLUME_TYPES = {
    "LUKS": ("6c1f0e2d-0001-4a7b-8e9f-000000000001", True),
    "ssd": ("6c1f0e2d-0002-4a7b-8e9f-000000000002", False),
}
VOLUME_SKU = "LUKS"
MAX_VOLUME_MICROVERSION = (3, 71)
SWIFT_ACCOUNT = f"AUTH_{PROJECT_ID}"


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


def _volume_microversion() -> tuple[int, int]:
    """The block-storage microversion the request asks for (3.0 when it names none)."""
    header = request.headers.get("OpenStack-API-Version", "")
    value = header.split()[-1] if header.lower().startswith("volume") else "3.0"
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def _catalog_entry(service_type: str, name: str, url: str, region: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": service_type,
        "name": name,
        "endpoints": [
            {
                "id": uuid.uuid4().hex,
                "interface": interface,
                "region": region,
                "region_id": region,
                "url": url,
            }
            for interface in ("public", "internal")
        ],
    }


def token_body(
    compute_url: str,
    region: str = REGION,
    methods: Sequence[str] = ("password",),
    *,
    volume_url: str | None = None,
    object_url: str | None = None,
    identity_url: str | None = None,
) -> dict[str, Any]:
    """A Keystone v3 token with a project scope and a catalogue holding compute (and the
    block-storage, object-store and identity services whose URLs are given).

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
        "user": {"id": USER_ID, "name": USERNAME, "domain": default},
        "project": {"id": PROJECT_ID, "name": PROJECT_NAME, "domain": default},
        "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
        "catalog": [_catalog_entry("compute", "nova", compute_url, region)],
    }
    for service_type, name, url in (
        ("block-storage", "cinderv3", volume_url),
        ("object-store", "swift", object_url),
        ("identity", "keystone", identity_url),
    ):
        if url is not None:
            token["catalog"].append(_catalog_entry(service_type, name, url, region))
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


def cinder_version(volume_root: str) -> dict[str, Any]:
    """Cinder's description of its v3 API (`volume_root` is the service's unversioned URL)."""
    return {
        "id": "v3.0",
        "status": "CURRENT",
        "version": "{}.{}".format(*MAX_VOLUME_MICROVERSION),
        "min_version": "3.0",
        "updated": "2023-08-31T00:00:00Z",
        "links": [{"rel": "self", "href": f"{volume_root.rstrip('/')}/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}
        ],
    }


def keystone_version(identity_root: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{identity_root.rstrip('/')}/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000")


@dataclass
class FakeVolume:
    id: str
    name: str
    size: int
    volume_type: str
    metadata: dict[str, str]
    status: str = "available"
    # Cinder's attachment records: server_id, attachment_id, device, …
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=_now)


@dataclass
class FakeObject:
    size: int
    written_at: str = field(default_factory=_now)


@dataclass
class FakeContainer:
    name: str
    # Metadata headers as Swift keeps them (X-Container-Meta-…), names title-cased.
    metadata: dict[str, str]
    objects: dict[str, FakeObject] = field(default_factory=dict)
    created: float = field(default_factory=time.time)


@dataclass
class FakeCredential:
    id: str
    user_id: str
    project_id: str
    type: str
    blob: str


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
    """Keystone, Nova, Cinder and Swift state and the WSGI app serving it. Thread-safe."""

    def __init__(self, region: str = REGION, faults: FaultPlan | None = None) -> None:
        self.region = region
        self.faults = faults or FaultPlan()
        self.servers: dict[str, FakeServer] = {}
        self.tokens: set[str] = set()
        # Every Nova request as (method, path, microversion), for tests to inspect.
        self.calls: list[tuple[str, str, tuple[int, int]]] = []
        self.create_bodies: list[dict[str, Any]] = []
        self.volumes: dict[str, FakeVolume] = {}
        self.containers: dict[str, FakeContainer] = {}
        self.credentials: dict[str, FakeCredential] = {}
        # Cinder requests as (method, path, microversion); bodies of creates and actions.
        self.volume_calls: list[tuple[str, str, tuple[int, int]]] = []
        self.volume_bodies: list[dict[str, Any]] = []
        self.volume_actions: list[dict[str, Any]] = []
        self.volume_filters: list[str | None] = []  # the `metadata` filter of each listing
        # Nova volume attachment requests as (method, path).
        self.attachment_calls: list[tuple[str, str]] = []
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
            self._detach_all(ref)

    def count_volumes_with_token(self, token: str) -> int:
        with self._lock:
            return sum(
                volume.metadata.get("broker-token") == token and volume.status != "deleting"
                for volume in self.volumes.values()
            )

    def delete_volume_out_of_band(self, ref: str) -> None:
        with self._lock:
            self.volumes.pop(ref, None)

    def count_buckets_with_token(self, token: str) -> int:
        with self._lock:
            return sum(
                container.metadata.get("X-Container-Meta-Broker-Token") == token
                for container in self.containers.values()
            )

    def delete_container_out_of_band(self, name: str) -> None:
        with self._lock:
            self.containers.pop(name, None)

    def live_access_keys(self) -> set[str]:
        """The access keys of the EC2 credentials Keystone holds."""
        with self._lock:
            return {json.loads(c.blob).get("access") for c in self.credentials.values()}

    def _detach_all(self, server_id: str) -> None:
        """What Nova does to the volumes of a server being deleted (lock held)."""
        for volume in self.volumes.values():
            volume.attachments = [a for a in volume.attachments if a["server_id"] != server_id]
            if not volume.attachments and volume.status == "in-use":
                volume.status = "available"

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
        self,
        operation: Operation,
        work: Callable[[], Response],
        ref: str | None = None,
        vanish: Callable[[], None] | None = None,
    ) -> Response:
        """Run `work` (the operation's effect and answer) under the fault plan.

        A `deleted_out_of_band` fault deletes the server `ref` first (or runs `vanish`, which
        deletes whatever else the call is about)."""
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
            if request.path.startswith("/volume/"):
                return _error(413, "overLimit", VOLUME_QUOTA_MESSAGE)
            if request.path.startswith("/object/"):
                return Response(CONTAINER_QUOTA_MESSAGE, status=403, mimetype="text/plain")
            return _error(403, "forbidden", QUOTA_MESSAGE)
        if fault is Fault.DELETED_OUT_OF_BAND:
            if vanish is not None:
                vanish()
            elif ref is not None:
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
            path = request.path
            if path.startswith("/compute/v2.1/"):
                self.calls.append((request.method, path, _microversion()))
            elif path.startswith(f"/volume/v3/{PROJECT_ID}"):
                self.volume_calls.append((request.method, path, _volume_microversion()))
            elif not (
                path.startswith(f"/object/v1/{SWIFT_ACCOUNT}")
                or path.startswith("/identity/v3/credentials")
            ):
                return None  # authentication, discovery and the S3 interface
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

        self._route_attachments(app)
        self._route_cinder(app)
        self._route_swift(app)
        self._route_credentials(app)
        return app

    def _route_attachments(self, app: Flask) -> None:
        """Nova's volume attachments: attach and detach are actions."""

        @app.post("/compute/v2.1/servers/<ref>/os-volume_attachments")
        def attach(ref: str) -> Response:
            self.attachment_calls.append((request.method, request.path))
            body = request.get_json(force=True, silent=True) or {}
            return self._faulted(Operation.ACTION, lambda: self._attach(ref, body))

        @app.delete("/compute/v2.1/servers/<ref>/os-volume_attachments/<volume_id>")
        def detach(ref: str, volume_id: str) -> Response:
            self.attachment_calls.append((request.method, request.path))
            return self._faulted(Operation.ACTION, lambda: self._detach(ref, volume_id))

    def _route_cinder(self, app: Flask) -> None:
        """Cinder: create → provision, list → find_by_token, show → get, actions → action,
        delete → deprovision."""
        base = f"/volume/v3/{PROJECT_ID}"

        @app.get("/volume")
        def list_cinder_versions() -> Response:
            return jsonify({"versions": [cinder_version(f"{request.host_url}volume")]})

        @app.get("/volume/v3")
        def show_cinder_version() -> Response:
            return jsonify({"versions": [cinder_version(f"{request.host_url}volume")]})

        @app.post(f"{base}/volumes")
        def create_volume() -> Response:
            body = request.get_json(force=True, silent=True) or {}
            return self._faulted(Operation.PROVISION, lambda: self._create_volume(body))

        @app.get(f"{base}/volumes/detail")
        def list_volumes() -> Response:
            wanted = request.args.get("metadata")
            self.volume_filters.append(wanted)
            return self._faulted(Operation.FIND_BY_TOKEN, lambda: self._list_volumes(wanted))

        @app.get(f"{base}/volumes/<ref>")
        def show_volume(ref: str) -> Response:
            return self._faulted(
                Operation.GET,
                lambda: self._show_volume(ref),
                vanish=lambda: self.delete_volume_out_of_band(ref),
            )

        @app.post(f"{base}/volumes/<ref>/action")
        def volume_action(ref: str) -> Response:
            body = request.get_json(force=True, silent=True) or {}
            microversion = _volume_microversion()
            return self._faulted(
                Operation.ACTION,
                lambda: self._volume_action(ref, body, microversion),
                vanish=lambda: self.delete_volume_out_of_band(ref),
            )

        @app.delete(f"{base}/volumes/<ref>")
        def delete_volume(ref: str) -> Response:
            return self._faulted(
                Operation.DEPROVISION,
                lambda: self._delete_volume(ref),
                vanish=lambda: self.delete_volume_out_of_band(ref),
            )

    def _route_swift(self, app: Flask) -> None:
        """Swift: container PUT → provision, HEAD → get, the account listing → find_by_token,
        the container's listing → action (what `retained` reads), container DELETE →
        deprovision; object deletes never fault."""
        account = f"/object/v1/{SWIFT_ACCOUNT}"

        @app.get(account)
        def list_containers() -> Response:
            args = request.args
            return self._faulted(Operation.FIND_BY_TOKEN, lambda: self._list_containers(args))

        @app.put(f"{account}/<name>")
        def create_container(name: str) -> Response:
            headers = dict(request.headers)
            return self._faulted(Operation.PROVISION, lambda: self._create_container(name, headers))

        @app.route(f"{account}/<name>", methods=["HEAD"])
        def head_container(name: str) -> Response:
            return self._faulted(
                Operation.GET,
                lambda: self._head_container(name),
                vanish=lambda: self.delete_container_out_of_band(name),
            )

        @app.get(f"{account}/<name>")
        def list_objects(name: str) -> Response:
            args = request.args
            return self._faulted(Operation.ACTION, lambda: self._list_objects(name, args))

        @app.delete(f"{account}/<name>")
        def delete_container(name: str) -> Response:
            return self._faulted(
                Operation.DEPROVISION,
                lambda: self._delete_container(name),
                vanish=lambda: self.delete_container_out_of_band(name),
            )

        @app.delete(f"{account}/<name>/<path:key>")
        def delete_object(name: str, key: str) -> Response:
            return self._delete_object(name, key)

        @app.put("/object/<bucket>/<path:key>")
        def s3_put_object(bucket: str, key: str) -> Response:
            return self._s3_put(bucket, key)

    def _route_credentials(self, app: Flask) -> None:
        """Keystone's discovery and EC2 credentials (every credential call is an action)."""

        @app.get("/identity")
        def list_keystone_versions() -> Response:
            root = f"{request.host_url}identity"
            return jsonify({"versions": {"values": [keystone_version(root)]}})

        @app.get("/identity/v3")
        def show_keystone_version() -> Response:
            return jsonify({"version": keystone_version(f"{request.host_url}identity")})

        @app.get("/identity/v3/credentials")
        def list_credentials() -> Response:
            args = request.args
            return self._faulted(Operation.ACTION, lambda: self._list_credentials(args))

        @app.post("/identity/v3/credentials")
        def create_credential() -> Response:
            body = request.get_json(force=True, silent=True) or {}
            return self._faulted(Operation.ACTION, lambda: self._create_credential(body))

        @app.delete("/identity/v3/credentials/<credential_id>")
        def delete_credential(credential_id: str) -> Response:
            return self._faulted(Operation.ACTION, lambda: self._delete_credential(credential_id))

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

        root = request.host_url.rstrip("/")
        body = token_body(
            f"{root}/compute/v2.1",
            self.region,
            methods,
            volume_url=f"{root}/volume/v3/{PROJECT_ID}",
            object_url=f"{root}/object/v1/{SWIFT_ACCOUNT}",
            identity_url=f"{root}/identity/v3",
        )
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
            self._detach_all(ref)
        return Response(status=204)

    # -- Nova volume attachments ------------------------------------------------------------

    def _attach(self, server_id: str, body: dict[str, Any]) -> Response:
        volume_id = str((body.get("volumeAttachment") or {}).get("volumeId") or "")
        with self._lock:
            server = self.servers.get(server_id)
            if server is None:
                return self._missing(server_id)
            volume = self.volumes.get(volume_id)
            if volume is None:
                return _error(404, "itemNotFound", f"Volume {volume_id} could not be found.")
            if volume.status != "available":
                return _error(
                    400,
                    "badRequest",
                    f"Invalid input received: Invalid volume: Volume {volume_id} status must "
                    f"be available or downloading to reserve, but the current status is "
                    f"{volume.status}.",
                )
            used = sum(
                a["server_id"] == server_id for v in self.volumes.values() for a in v.attachments
            )
            device = f"/dev/vd{chr(ord('b') + used)}"
            volume.attachments.append(
                {
                    "server_id": server_id,
                    "attachment_id": str(uuid.uuid4()),
                    "volume_id": volume_id,
                    "id": volume_id,
                    "device": device,
                    "host_name": None,
                    "attached_at": _now(),
                }
            )
            volume.status = "in-use"
        attachment = {"id": volume_id, "serverId": server_id, "volumeId": volume_id}
        return jsonify({"volumeAttachment": {**attachment, "device": device}})

    def _detach(self, server_id: str, volume_id: str) -> Response:
        with self._lock:
            if server_id not in self.servers:
                return self._missing(server_id)
            volume = self.volumes.get(volume_id)
            if volume is None or not any(a["server_id"] == server_id for a in volume.attachments):
                return _error(404, "itemNotFound", f"volume_id not found: {volume_id}")
            volume.attachments = [a for a in volume.attachments if a["server_id"] != server_id]
            if not volume.attachments:
                volume.status = "available"
        return Response(status=202)

    # -- Cinder -----------------------------------------------------------------------------

    def _volume_body(self, volume: FakeVolume, status: str | None = None) -> dict[str, Any]:
        type_id, encrypted = VOLUME_TYPES[volume.volume_type]
        return {
            "id": volume.id,
            "name": volume.name,
            "size": volume.size,
            "status": status or volume.status,
            "volume_type": volume.volume_type,
            "volume_type_id": type_id,
            "encrypted": encrypted,
            "metadata": dict(volume.metadata),
            "attachments": [dict(a) for a in volume.attachments],
            "availability_zone": "nova",
            "bootable": "false",
            "multiattach": False,
            "created_at": volume.created,
            "updated_at": volume.created,
            "user_id": USER_ID,
            "os-vol-tenant-attr:tenant_id": PROJECT_ID,
            "description": None,
            "snapshot_id": None,
            "source_volid": None,
            "replication_status": None,
            "consistencygroup_id": None,
            "links": [],
        }

    def _missing_volume(self, ref: str) -> Response:
        return _error(404, "itemNotFound", f"Volume {ref} could not be found.")

    def _create_volume(self, body: dict[str, Any]) -> Response:
        self.volume_bodies.append(body)
        spec = body.get("volume") or {}
        volume_type = spec.get("volume_type")
        if volume_type not in VOLUME_TYPES:
            return _error(
                404, "itemNotFound", f"Volume type with name {volume_type} could not be found."
            )
        size = spec.get("size")
        if not isinstance(size, int) or size < 1:
            return _error(400, "badRequest", f"Invalid input received: size {size!r}.")
        metadata = spec.get("metadata") or {}
        created = FakeVolume(
            id=str(uuid.uuid4()),
            name=str(spec.get("name") or ""),
            size=size,
            volume_type=str(volume_type),
            metadata={str(k): str(v) for k, v in metadata.items()},
        )
        with self._lock:
            self.volumes[created.id] = created
        # The create answer shows the volume as Cinder has it then: still being created.
        response = jsonify({"volume": self._volume_body(created, status="creating")})
        response.status_code = 202
        return response

    def _list_volumes(self, wanted: str | None) -> Response:
        with self._lock:
            volumes = list(self.volumes.values())
        if wanted is not None:
            # Cinder reads the filter with ast.literal_eval.
            filters = ast.literal_eval(wanted)
            volumes = [
                v for v in volumes if all(v.metadata.get(k) == x for k, x in filters.items())
            ]
        return jsonify({"volumes": [self._volume_body(v) for v in volumes]})

    def _show_volume(self, ref: str) -> Response:
        with self._lock:
            volume = self.volumes.get(ref)
        if volume is None:
            return self._missing_volume(ref)
        return jsonify({"volume": self._volume_body(volume)})

    def _volume_action(
        self, ref: str, body: dict[str, Any], microversion: tuple[int, int]
    ) -> Response:
        self.volume_actions.append(body)
        with self._lock:
            volume = self.volumes.get(ref)
            if volume is None:
                return self._missing_volume(ref)
            if "os-extend" not in body:
                return _error(400, "badRequest", "There is no such action.")
            new_size = (body["os-extend"] or {}).get("new_size")
            allowed = ("available", "in-use") if microversion >= (3, 42) else ("available",)
            if volume.status not in allowed:
                return _error(
                    400,
                    "badRequest",
                    f"Invalid volume: Volume {ref} status must be {' or '.join(allowed)} to "
                    f"extend, but current status is: {volume.status}.",
                )
            if not isinstance(new_size, int) or new_size <= volume.size:
                return _error(
                    400,
                    "badRequest",
                    "Invalid input received: New size for extend must be greater than current "
                    f"size. (current: {volume.size}, extended: {new_size}).",
                )
            volume.size = new_size
        return Response(status=202)

    def _delete_volume(self, ref: str) -> Response:
        with self._lock:
            volume = self.volumes.get(ref)
            if volume is None:
                return self._missing_volume(ref)
            if volume.attachments or volume.status not in ("available", "error"):
                return _error(
                    400,
                    "badRequest",
                    "Invalid volume: Volume status must be available or error or "
                    "error_restoring or error_extending or error_managing and must not be "
                    "migrating, attached, belong to a group, have snapshots, awaiting a "
                    "transfer, or be disassociated from snapshots after volume transfer.",
                )
            del self.volumes[ref]
        return Response(status=202)

    # -- Swift ------------------------------------------------------------------------------

    def _container_missing(self) -> Response:
        return Response(
            "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>",
            status=404,
            mimetype="text/html",
        )

    def _list_containers(self, args: Any) -> Response:
        prefix, marker = args.get("prefix", ""), args.get("marker", "")
        limit = int(args.get("limit", 10000))
        with self._lock:
            listing = [
                {
                    "name": c.name,
                    "count": len(c.objects),
                    "bytes": sum(o.size for o in c.objects.values()),
                    "last_modified": _now(),
                }
                for c in sorted(self.containers.values(), key=lambda c: c.name)
                if c.name.startswith(prefix) and c.name > marker
            ]
        return jsonify(listing[:limit])

    def _create_container(self, name: str, headers: dict[str, str]) -> Response:
        metadata = {
            key.title(): value
            for key, value in headers.items()
            if key.lower().startswith("x-container-meta-")
        }
        with self._lock:
            existing = self.containers.get(name)
            if existing is not None:
                # Swift: the container exists; its metadata is updated.
                existing.metadata.update(metadata)
                return Response(status=202)
            self.containers[name] = FakeContainer(name=name, metadata=metadata)
        return Response(status=201)

    def _head_container(self, name: str) -> Response:
        with self._lock:
            container = self.containers.get(name)
            if container is None:
                return Response(status=404)
            headers = {
                **container.metadata,
                "X-Container-Object-Count": str(len(container.objects)),
                "X-Container-Bytes-Used": str(sum(o.size for o in container.objects.values())),
                "X-Timestamp": f"{container.created:.5f}",
            }
        return Response(status=204, headers=headers)

    def _list_objects(self, name: str, args: Any) -> Response:
        marker, limit = args.get("marker", ""), int(args.get("limit", 10000))
        with self._lock:
            container = self.containers.get(name)
            if container is None:
                return self._container_missing()
            listing = [
                {
                    "name": key,
                    "bytes": obj.size,
                    "hash": hashlib.md5(key.encode(), usedforsecurity=False).hexdigest(),
                    "content_type": "application/octet-stream",
                    "last_modified": obj.written_at,
                }
                for key, obj in sorted(container.objects.items())
                if key > marker
            ]
        return jsonify(listing[:limit])

    def _delete_container(self, name: str) -> Response:
        with self._lock:
            container = self.containers.get(name)
            if container is None:
                return self._container_missing()
            if container.objects:
                return Response(
                    "<html><h1>Conflict</h1><p>There was a conflict when trying to complete "
                    "your request.</p></html>",
                    status=409,
                    mimetype="text/html",
                )
            del self.containers[name]
        return Response(status=204)

    def _delete_object(self, name: str, key: str) -> Response:
        with self._lock:
            container = self.containers.get(name)
            if container is None or container.objects.pop(key, None) is None:
                return self._container_missing()
        return Response(status=204)

    def _s3_error(self, status: int, code: str, message: str) -> Response:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        return Response(body, status=status, mimetype="application/xml")

    def _s3_put(self, bucket: str, key: str) -> Response:
        """PutObject as `s3api` takes it, for a live EC2 access key (SigV4 or V2 header)."""
        authorization = request.headers.get("Authorization", "")
        access = authorization.partition("Credential=")[2].partition("/")[0]
        if not access and authorization.startswith("AWS "):
            access = authorization[4:].partition(":")[0]
        if not access or access not in self.live_access_keys():
            return self._s3_error(403, "InvalidAccessKeyId", "The access key is not known.")
        data = request.get_data()
        with self._lock:
            container = self.containers.get(bucket)
            if container is None:
                return self._s3_error(404, "NoSuchBucket", "The bucket does not exist.")
            container.objects[key] = FakeObject(size=len(data))
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return Response(status=200, headers={"ETag": f'"{etag}"'})

    # -- Keystone EC2 credentials -----------------------------------------------------------

    def _credential_body(self, credential: FakeCredential) -> dict[str, Any]:
        return {
            "id": credential.id,
            "user_id": credential.user_id,
            "project_id": credential.project_id,
            "type": credential.type,
            "blob": credential.blob,
            "links": {"self": f"{request.host_url}identity/v3/credentials/{credential.id}"},
        }

    def _list_credentials(self, args: Any) -> Response:
        with self._lock:
            found = [
                self._credential_body(c)
                for c in self.credentials.values()
                # A member sees their own credentials only, whatever the filter says.
                if c.user_id == USER_ID
                and args.get("type", c.type) == c.type
                and args.get("user_id", c.user_id) == c.user_id
            ]
        return jsonify({"credentials": found, "links": {"self": request.url}})

    def _create_credential(self, body: dict[str, Any]) -> Response:
        spec = body.get("credential") or {}
        try:
            blob = json.loads(spec.get("blob") or "")
        except ValueError:
            blob = None
        if spec.get("type") != "ec2" or not isinstance(blob, dict) or not blob.get("access"):
            return _error(400, "error", "Invalid blob in credential.")
        if spec.get("project_id") != PROJECT_ID or spec.get("user_id") != USER_ID:
            return _error(403, "error", "You are not authorized to perform the action.")
        credential = FakeCredential(
            id=hashlib.sha256(str(blob["access"]).encode()).hexdigest(),
            user_id=USER_ID,
            project_id=PROJECT_ID,
            type="ec2",
            blob=json.dumps(blob),
        )
        with self._lock:
            if credential.id in self.credentials:
                return _error(409, "error", "Conflict occurred attempting to store credential.")
            self.credentials[credential.id] = credential
        response = jsonify({"credential": self._credential_body(credential)})
        response.status_code = 201
        return response

    def _delete_credential(self, credential_id: str) -> Response:
        with self._lock:
            if self.credentials.pop(credential_id, None) is None:
                return _error(404, "error", f"Could not find credential: {credential_id}.")
        return Response(status=204)


@contextmanager
def fake_openstack(faults: FaultPlan | None = None) -> Iterator[tuple[FakeOpenStack, str]]:
    """A running fake cloud and its base URL."""
    cloud = FakeOpenStack(faults=faults)
    with serve_wsgi(cloud.app) as base_url:
        yield cloud, base_url


def s3_put_object(bucket: Bucket, key: AccessKey, name: str, region: str = REGION) -> None:
    """Write an object as the bucket's user would: boto3 with the issued key, at the S3
    endpoint of the bucket's Swift proxy."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=bucket.extra["s3_endpoint"],
        aws_access_key_id=key.key_id,
        aws_secret_access_key=key.secret,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",
            connect_timeout=2,
            read_timeout=2,
        ),
    )
    client.put_object(Bucket=bucket.ref, Key=name, Body=b"a record kept by the agency")


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
            volume_sku=VOLUME_SKU,
            count_volumes_with_token=cloud.count_volumes_with_token,
            delete_volume_out_of_band=cloud.delete_volume_out_of_band,
            count_buckets_with_token=cloud.count_buckets_with_token,
            put_object=s3_put_object,
        )
