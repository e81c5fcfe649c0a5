"""OpenStack adapter: Keystone v3 for authentication, Nova for servers, Cinder for block
volumes and Swift for object storage (all through openstacksdk).

Written for sovereign OpenStack clouds (Sovereign Cloud Stack and others), which hand out
application credentials rather than passwords; both work.

How it keeps to the contract:

- Every request goes through the broker's guarded `requests` session (no redirects, no
  private addresses unless the policy allows them, a timeout on every call). The SDK gets a
  keystoneauth session wrapping it and is told nothing else: no clouds.yaml, no `OS_*`
  environment variables, no retries of its own (the broker retries with its own backoff).
- Every endpoint used (compute, block-storage, object-store, identity) comes from the
  Keystone catalogue, which the cloud controls, so each is held to the same endpoint policy
  as the configured `auth_url` before the first call to it.
- Servers are created with the idempotency token as a Nova server tag, and found again by
  filtering on that tag. Both need a Nova microversion (2.52 for tags at create, 2.26 for the
  filter), so the adapter pins one instead of letting the SDK pick the newest it knows: the
  requests then mean the same thing on every cloud, and a cloud too old for them refuses
  them outright rather than ignoring the tag.

Block volumes (`Feature.VOLUMES`) are Cinder v3 volumes: the offer's sku is the volume type,
the token is kept in the volume's metadata (`broker-token`) and found again with Cinder's
`metadata` list filter (checked again here, as for tags). Cinder too is pinned to one
microversion, 3.42, the first that grows a volume while it is attached (`os-extend`).
Attaching and detaching go through Nova's volume attachments, as on any OpenStack. Cinder has
no idempotent create: a lost create answer is reconciled by the token, like servers.

Object storage (`Feature.OBJECT_STORAGE`) is Swift: a bucket is a container named by the
request (the broker names it after the token) whose metadata `X-Container-Meta-Broker-Token`
carries the token; its endpoint is the catalogue's object-store endpoint (`extra` also gives
the S3 endpoint of the same proxy, where Swift's `s3api` middleware answers). Swift has no
write-once retention, so no `Feature.OBJECT_LOCK`: a bucket with a retention is refused
(`unsupported`) and nothing is ever retained; versioned buckets are refused too (Swift's
versions would have to be listed and deleted with the container). The containers are
written with plain requests through the SDK's object-store proxy rather than its `Container`
resource, whose metadata is kept in a dictionary shared by every container made in the
process (openstacksdk 4.x).

Keys to a bucket are EC2 credentials of the broker's own Keystone user and project (what
`s3api` accepts). The blob holds the key pair, the bucket and the token it was issued for, so
a key whose creation answer was lost is found by its token. An EC2 credential reaches every
container of the project, not one: Swift cannot narrow it without a user per bucket. The
credential calls are made with keystoneauth's request logging off, so no secret reaches a
debug log.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

import keystoneauth1.exceptions as ksa_exceptions
import openstack.exceptions as sdk_exceptions
import requests
from keystoneauth1 import adapter as ksa_adapter
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from openstack.compute.v2.server import Server as SdkServer
from openstack.connection import Connection

from providers.base import (
    AccessKey,
    Action,
    Bucket,
    BucketRequest,
    Feature,
    Instance,
    InstanceState,
    ObjectStorageDriver,
    OfferSpec,
    OutcomeUnknown,
    Permanent,
    ProviderAdapter,
    ProviderError,
    ProvisionRequest,
    Retained,
    Retryable,
    SettingsInvalid,
    Throttled,
    Volume,
    VolumeDriver,
    VolumeRequest,
)
from providers.faults import Operation
from providers.http import HttpPolicy, UnsafeEndpoint, parse_retry_after

# The Nova microversion every call is made with: 2.52 is the first that accepts tags in the
# create request (2.26 added the `tags` list filter, 2.37 `networks: "auto"`, 2.47 the
# embedded flavor in server details).
NOVA_MICROVERSION = "2.52"

# The Cinder microversion every call is made with: 3.42 is the first that extends a volume
# while it is attached (in-use).
CINDER_MICROVERSION = "3.42"

# Tags the broker puts on servers start with this (see `providers.base.order_token`); `get`
# uses it to tell the broker's tag from any others an operator added.
TOKEN_TAG_PREFIX = "broker-order-"

# Where the token is kept on a Cinder volume (metadata key) and on a Swift container.
VOLUME_TOKEN_KEY = "broker-token"
CONTAINER_TOKEN_HEADER = "X-Container-Meta-Broker-Token"
# What the order asked of the container (Swift encrypts at rest for the whole cluster or not
# at all, which its API does not say: this records the encryption the offer was sold with).
CONTAINER_ENCRYPTED_HEADER = "X-Container-Meta-Broker-Encrypted"
# Swift's account and container listings return at most this many names per page.
LISTING_PAGE = 1000

# When a 429 carries no usable Retry-After.
DEFAULT_RETRY_AFTER = 1.0

INTERFACES = frozenset({"public", "internal", "admin"})

PASSWORD_CREDENTIALS = ("username", "password")
APPLICATION_CREDENTIALS = ("application_credential_id", "application_credential_secret")

_STATES = {
    "BUILD": InstanceState.PENDING,
    "ACTIVE": InstanceState.RUNNING,
    "SHUTOFF": InstanceState.STOPPED,
    "REBOOT": InstanceState.REBOOTING,
    "HARD_REBOOT": InstanceState.REBOOTING,
    "DELETED": InstanceState.DELETED,
    "SOFT_DELETED": InstanceState.DELETED,
    "ERROR": InstanceState.ERROR,
}


_VOLUME_STATES = {
    "creating": InstanceState.PENDING,
    "downloading": InstanceState.PENDING,  # being filled from an image
    "available": InstanceState.RUNNING,
    "in-use": InstanceState.RUNNING,
    "reserved": InstanceState.RUNNING,
    "attaching": InstanceState.RUNNING,
    "detaching": InstanceState.RUNNING,
    "extending": InstanceState.RUNNING,
    "backing-up": InstanceState.RUNNING,
    "uploading": InstanceState.RUNNING,
    "retyping": InstanceState.RUNNING,
    "deleting": InstanceState.DELETING,
    "deleted": InstanceState.DELETED,
}


# The state a finished action leaves the server in.
_ACTION_TARGETS = {Action.START: InstanceState.RUNNING, Action.STOP: InstanceState.STOPPED}


def instance_state(status: str | None, task_state: str | None = None) -> InstanceState:
    """Nova's status (refined by its task state, which says what is under way) as ours."""
    # A server being deleted or powered off keeps its status (ACTIVE, …) until it is done.
    if task_state == "deleting":
        return InstanceState.DELETING
    if task_state == "powering-off":
        return InstanceState.STOPPING
    return _STATES.get((status or "").upper(), InstanceState.UNKNOWN)


def volume_state(status: str | None) -> InstanceState:
    """Cinder's volume status as ours: every `error…` status (error_extending, …) is ERROR."""
    status = (status or "").lower()
    if status.startswith("error"):
        return InstanceState.ERROR
    return _VOLUME_STATES.get(status, InstanceState.UNKNOWN)


def s3_endpoint(swift_endpoint: str) -> str:
    """Where Swift's `s3api` middleware answers: the proxy's root, before `/v1/AUTH_…`."""
    parts = urlsplit(swift_endpoint)
    path = parts.path
    index = path.find("/v1/")
    if index >= 0 or path.endswith("/v1"):
        path = path[: index if index >= 0 else -3]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


def v3_auth_url(auth_url: str) -> str:
    """The Keystone v3 URL for `auth_url`, which clouds publish with or without `/v3`.

    The v3 plugins append `/auth/tokens` to it as is (and skip version discovery, one request
    fewer and one less document from the cloud to trust).
    """
    parts = urlsplit(auth_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/v3"):
        path += "/v3"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class OpenStackAdapter(ProviderAdapter, VolumeDriver, ObjectStorageDriver):
    """Machines (the adapter itself), Cinder volumes and Swift containers: `volumes()` and
    `object_storage()` hand out the adapter, which is both drivers too."""

    name = "openstack"
    features: ClassVar[frozenset[Feature]] = frozenset(
        {Feature.STOP_START, Feature.REBOOT, Feature.VOLUMES, Feature.OBJECT_STORAGE}
    )
    settings_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "auth_url",
            "region",
            "project_id",
            "project_name",
            "user_domain_name",
            "project_domain_name",
            "image",
            "network",
            "interface",
        }
    )
    required_settings: ClassVar[frozenset[str]] = frozenset({"auth_url", "region"})
    credential_fields: ClassVar[frozenset[str]] = frozenset(
        PASSWORD_CREDENTIALS + APPLICATION_CREDENTIALS
    )
    endpoint_settings: ClassVar[frozenset[str]] = frozenset({"auth_url"})

    _connection: Connection | None = None
    _session: ksa_session.Session | None = None
    # The services whose endpoints were checked against the policy on this connection.
    _checked: frozenset[str] = frozenset()

    # -- settings and credentials --------------------------------------------------------

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        cleaned = super().check_settings(settings, http)
        for key, value in cleaned.items():
            if not isinstance(value, str) or not value.strip():
                raise SettingsInvalid(f"Setting {key!r} must be a non-empty string.", key)
        interface = cleaned.get("interface", "public")
        if interface not in INTERFACES:
            raise SettingsInvalid(
                f"Setting 'interface' must be one of {', '.join(sorted(INTERFACES))}.",
                "interface",
            )
        return cleaned

    @classmethod
    def check_credentials(cls, credentials: Mapping[str, Any]) -> None:
        """Either a username and password or an application credential, complete."""
        super().check_credentials(credentials)
        given = {key for key, value in credentials.items() if value}
        kinds = [
            pair for pair in (PASSWORD_CREDENTIALS, APPLICATION_CREDENTIALS) if given & set(pair)
        ]
        if not kinds:
            raise SettingsInvalid(
                "Credentials need either 'username' and 'password' or "
                "'application_credential_id' and 'application_credential_secret'."
            )
        if len(kinds) > 1:
            raise SettingsInvalid(
                "Give either a username and password or an application credential, not both."
            )
        for key in kinds[0]:
            if key not in given:
                raise SettingsInvalid(f"Credential {key!r} is required.", key)

    def _auth_plugin(self) -> v3.Password | v3.ApplicationCredential:
        auth_url = v3_auth_url(self.settings["auth_url"])
        creds = self.credentials
        if creds.get("application_credential_id"):
            # An application credential is bound to its project: no scope may be asked for.
            return v3.ApplicationCredential(
                auth_url=auth_url,
                application_credential_id=creds["application_credential_id"],
                application_credential_secret=creds["application_credential_secret"],
            )
        project_id = self.settings.get("project_id")
        project_name = self.settings.get("project_name")
        if not (project_id or project_name):
            raise SettingsInvalid(
                "Password credentials need the setting 'project_id' or 'project_name'.",
                "project_id",
            )
        return v3.Password(
            auth_url=auth_url,
            username=creds["username"],
            password=creds["password"],
            user_domain_name=self.settings.get("user_domain_name", "Default"),
            project_id=project_id,
            project_name=None if project_id else project_name,
            project_domain_name=(
                None if project_id else self.settings.get("project_domain_name", "Default")
            ),
        )

    # -- the SDK connection --------------------------------------------------------------

    @property
    def _region(self) -> str:
        return str(self.settings["region"])

    @property
    def _interface(self) -> str:
        return str(self.settings.get("interface", "public"))

    def _connect(self) -> Connection:
        """The SDK connection, authenticated and with its compute endpoint checked.

        Called inside `_translate`, which types whatever it raises.
        """
        if self._connection is not None:
            return self._connection
        http = self.context.http
        session = ksa_session.Session(
            auth=self._auth_plugin(),
            session=http.session(),
            timeout=http.timeout,
            redirect=False,
            connect_retries=0,
            app_name="cloud-broker",
        )
        # With a session given, the SDK reads neither clouds.yaml nor OS_* variables. The
        # retry counts are the SDK's defaults already; they are spelled out so that a change
        # of default upstream cannot start retrying creates behind the broker's back.
        connection = Connection(
            session=session,
            region_name=self._region,
            interface=self._interface,
            compute_default_microversion=NOVA_MICROVERSION,
            block_storage_default_microversion=CINDER_MICROVERSION,
            connect_retries=0,
            status_code_retries=0,
            app_name="cloud-broker",
        )
        # Authenticates (one Keystone call) and reads the catalogue, without discovery.
        if not self._catalogued(session, "compute"):
            raise SettingsInvalid(
                f"The Keystone catalogue has no {self._interface} compute endpoint in region "
                f"{self._region!r}.",
                "region",
            )
        # Nova's version document may point elsewhere again: check where calls really go.
        self._check_endpoint(connection.compute.get_endpoint(), "compute")
        self._session = session
        self._connection = connection
        self._checked = frozenset({"compute"})
        return connection

    def _catalogued(self, session: ksa_session.Session, service_type: str) -> str | None:
        """The catalogue's endpoint for `service_type` (held to the policy), or None."""
        try:
            url = session.get_endpoint(
                service_type=service_type,
                interface=self._interface,
                region_name=self._region,
                skip_discovery=True,
            )
        except ksa_exceptions.EndpointNotFound:
            return None
        if not url:
            return None
        self._check_endpoint(url, service_type)
        return str(url)

    def _service(self, service_type: str, what: str) -> Any:
        """The SDK proxy of a storage service, its endpoints checked on first use.

        A catalogue without the service means the cloud does not sell `what` here.
        """
        connection = self._connect()
        if service_type in self._checked:
            return getattr(connection, service_type.replace("-", "_"))
        assert self._session is not None
        # Checked before the proxy is made: making it runs the service's version discovery.
        if not self._catalogued(self._session, service_type):
            raise Permanent(
                f"The Keystone catalogue has no {self._interface} {service_type} endpoint "
                f"in region {self._region!r}: this cloud sells no {what} there.",
                code="unsupported",
            )
        proxy = getattr(connection, service_type.replace("-", "_"))
        # Discovery (Cinder's, Keystone's version documents) may point elsewhere again.
        # (keystoneauth's method: the identity proxy's own `get_endpoint` is an API call.)
        self._check_endpoint(ksa_adapter.Adapter.get_endpoint(proxy), service_type)
        self._checked = self._checked | {service_type}
        return proxy

    def _check_endpoint(self, url: str | None, service_type: str) -> None:
        if url is None:
            return
        try:
            self.context.http.check_url(url)
        except UnsafeEndpoint as error:
            raise SettingsInvalid(
                f"The {service_type} endpoint the cloud announces is refused: {error}",
                "auth_url",
            ) from None

    # -- error mapping ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        text = super()._scrub(text)
        for value in self._secrets:
            text = text.replace(value, "***")
        return text

    # Secrets the adapter made itself (a key being issued): masked like the credentials.
    _secrets: tuple[str, ...] = ()

    @contextmanager
    def _translate(self, operation: Operation, *, secret: str | None = None) -> Iterator[None]:
        """Turn whatever the SDK, keystoneauth or requests raise into the typed errors.

        With `secret` (a secret the call sends: an EC2 secret being created), the typed error
        masks it too and does not chain the SDK's exception, whose text the adapter does not
        control (a cloud may echo the request).
        """
        if secret is None:
            with self._typed(operation):
                yield
            return
        saved = self._secrets
        self._secrets = (*saved, secret)
        try:
            with self._typed(operation):
                yield
        except ProviderError as error:
            error.__cause__ = error.__context__ = None
            error.__suppress_context__ = True
            raise
        finally:
            self._secrets = saved

    @contextmanager
    def _typed(self, operation: Operation) -> Iterator[None]:
        provisioning = operation is Operation.PROVISION
        unknown: type[Retryable] = OutcomeUnknown if provisioning else Retryable
        try:
            yield
        except (Retryable, Permanent):
            raise
        except UnsafeEndpoint as error:
            # The guarded session refused an address at connect time.
            raise SettingsInvalid(
                self._scrub(f"OpenStack endpoint refused: {error}"), "auth_url"
            ) from None
        except (sdk_exceptions.HttpException, ksa_exceptions.HttpError) as error:
            self._raise_http(operation, error)
        except (ksa_exceptions.EndpointNotFound, ksa_exceptions.EmptyCatalog) as error:
            raise SettingsInvalid(self._scrub(f"OpenStack catalogue: {error}"), "region") from error
        except sdk_exceptions.ConfigException as error:
            # Raised when the cloud's Nova or Cinder is older than the pinned microversion.
            raise Permanent(
                self._scrub(f"OpenStack {operation}: {error}"), code="unsupported_cloud"
            ) from error
        except (ksa_exceptions.ConnectionError, requests.RequestException) as error:
            # Includes timeouts: keystoneauth reports a lost answer as ConnectTimeout too, so
            # a create that timed out may well have happened.
            raise unknown(
                self._scrub(f"OpenStack {operation}: {type(error).__name__}: {error}")
            ) from error
        except Exception as error:  # an SDK failure of any other kind must be typed too
            raise unknown(
                self._scrub(f"OpenStack {operation} failed: {type(error).__name__}: {error}")
            ) from error

    def _raise_http(self, operation: Operation, error: Exception) -> NoReturn:
        response: requests.Response | None = getattr(error, "response", None)
        status = getattr(error, "status_code", None) or getattr(error, "http_status", None)
        if status is None and response is not None:
            status = response.status_code
        details = str(getattr(error, "details", None) or getattr(error, "message", "") or "")
        if response is not None and not details:
            details = response.text[:300]
        message = self._scrub(f"OpenStack {operation}: HTTP {status}: {details}".strip())
        if status == 429:
            header = response.headers.get("Retry-After") if response is not None else None
            raise Throttled(message, parse_retry_after(header, DEFAULT_RETRY_AFTER)) from error
        lowered = details.lower()
        # Nova: "Quota exceeded for cores…"; Cinder: "…exceeded for quota 'volumes'",
        # "…exceeds allowed gigabytes quota"; Swift: "Reached container limit of 100".
        if status in (403, 413) and (
            ("quota" in lowered and "exceed" in lowered) or "container limit" in lowered
        ):
            raise Permanent(message, code="quota_exceeded") from error
        if status in (401, 403):
            # Refused before anything was done, on create too.
            raise Permanent(message, code="unauthorized") from error
        if status == 406:
            # Nova refuses a microversion it does not know.
            raise Permanent(message, code="unsupported_cloud") from error
        if operation is Operation.PROVISION:
            if status in (400, 404):
                raise Permanent(message, code="invalid_request") from error
            raise OutcomeUnknown(message) from error
        if status == 404:
            raise Permanent(message, code="not_found") from error
        if status is not None and 400 <= status < 500 and status not in (408, 409):
            raise Permanent(message, code="invalid_request") from error
        # 5xx, 408 and 409 (Nova's "the server is busy with another task").
        raise Retryable(message) from error

    # -- value objects --------------------------------------------------------------------

    def _instance(self, server: Any, token: str | None = None) -> Instance:
        tags = [str(tag) for tag in (server.tags or [])]
        if token is None:
            token = next((tag for tag in tags if tag.startswith(TOKEN_TAG_PREFIX)), None)
        addresses = tuple(
            str(entry["addr"])
            for entries in (server.addresses or {}).values()
            for entry in entries
            if isinstance(entry, Mapping) and entry.get("addr")
        )
        flavor = server.flavor
        sku = getattr(flavor, "original_name", None) or getattr(flavor, "name", None)
        return Instance(
            ref=str(server.id),
            state=instance_state(server.status, server.task_state),
            token=token,
            sku=sku,
            region=self._region,
            addresses=addresses,
            created_at=_parse_time(server.created_at),
            extra={"status": server.status, "task_state": server.task_state, "name": server.name},
        )

    # -- the contract ---------------------------------------------------------------------

    def list_offers(self) -> Iterable[OfferSpec]:
        with self._translate(Operation.LIST_OFFERS):
            flavors = list(self._connect().compute.flavors(details=True))
            return [
                OfferSpec(
                    sku=str(flavor.name),
                    name=str(flavor.name),
                    vcpu=int(flavor.vcpus),
                    ram_gib=Decimal(int(flavor.ram)) / 1024,
                    disk_gib=int(flavor.disk),
                    region=self._region,
                    extra={"flavor_id": str(flavor.id)},
                )
                for flavor in flavors
            ]

    def provision(self, request: ProvisionRequest, idempotency_token: str) -> Instance:
        if request.region != self._region:
            # One adapter speaks to one region: a server elsewhere would be a wrong delivery.
            raise Permanent(
                f"This OpenStack provider serves region {self._region!r}, not {request.region!r}.",
                code="invalid_request",
            )
        image = request.image or self.settings.get("image")
        if not image:
            raise SettingsInvalid(
                "No image: the request names none and the setting 'image' is unset.", "image"
            )
        network = self.settings.get("network")
        networks: str | list[dict[str, str]] = [{"uuid": network}] if network else "auto"
        with self._translate(Operation.PROVISION):
            compute = self._connect().compute
            flavor_id = next(
                (f.id for f in compute.flavors(details=True) if f.name == request.sku), None
            )
            if flavor_id is None:
                raise Permanent(
                    f"OpenStack has no flavor named {request.sku!r}.", code="invalid_request"
                )
            server = compute.create_server(
                name=request.name,
                flavor_id=flavor_id,
                image_id=image,
                networks=networks,
                tags=[idempotency_token],
            )
            if not server.id:
                # Accepted, but the answer did not say what was made: look it up by token.
                raise OutcomeUnknown("OpenStack provision: the create answer had no server id.")
            # The create answer holds little more than the id; the server is building.
            return Instance(
                ref=str(server.id),
                state=InstanceState.PENDING,
                token=idempotency_token,
                sku=request.sku,
                region=self._region,
                extra={"name": request.name},
            )

    def get(self, ref: str) -> Instance | None:
        with self._translate(Operation.GET):
            try:
                server = self._connect().compute.get_server(ref)
            except sdk_exceptions.NotFoundException:
                return None
            return self._instance(server)

    def find_by_token(self, token: str) -> Instance | None:
        with self._translate(Operation.FIND_BY_TOKEN):
            for server in self._connect().compute.servers(details=True, tags=token):
                # Checked here too: a Nova that ignored the filter would list every server.
                if token not in (server.tags or []):
                    continue
                found = self._instance(server, token)
                if found.state not in (InstanceState.DELETED, InstanceState.DELETING):
                    return found
            return None

    def action(self, ref: str, action: Action) -> Instance:
        with self._translate(Operation.ACTION):
            compute = self._connect().compute
            try:
                if action is Action.START:
                    compute.start_server(ref)
                elif action is Action.STOP:
                    compute.stop_server(ref)
                elif action is Action.REBOOT:
                    compute.reboot_server(ref, "SOFT")
                else:  # pragma: no cover - Action is closed
                    raise Permanent(f"Unsupported action {action!r}.", code="invalid_request")
            except sdk_exceptions.NotFoundException as error:
                raise Permanent(f"OpenStack server {ref} not found.", code="not_found") from error
            except sdk_exceptions.ConflictException:
                # Nova refuses to stop a stopped server (or start a running one) with 409: a
                # retried action whose first answer was lost ends here, and has succeeded.
                current = self.get(ref)
                if current is not None and current.state is _ACTION_TARGETS.get(action):
                    return current
                raise
        instance = self.get(ref)
        if instance is None:
            raise Permanent(f"OpenStack server {ref} not found.", code="not_found")
        return instance

    def deprovision(self, ref: str) -> None:
        with self._translate(Operation.DEPROVISION):
            self._connect().compute.delete_server(ref, ignore_missing=True)

    # -- the storage drivers ----------------------------------------------------------------

    def volumes(self) -> VolumeDriver:
        return self

    def object_storage(self) -> ObjectStorageDriver:
        return self

    def _check_region(self, region: str) -> None:
        if region != self._region:
            # One adapter speaks to one region: a volume elsewhere would be a wrong delivery.
            raise Permanent(
                f"This OpenStack provider serves region {self._region!r}, not {region!r}.",
                code="invalid_request",
            )

    # -- block volumes (Cinder) -------------------------------------------------------------

    def _cinder(self) -> Any:
        return self._service("block-storage", "block volumes")

    def _volume(self, volume: Any, token: str | None = None) -> Volume:
        metadata = volume.metadata if isinstance(volume.metadata, Mapping) else {}
        attachments = [a for a in (volume.attachments or []) if isinstance(a, Mapping)]
        servers = [str(a["server_id"]) for a in attachments if a.get("server_id")]
        return Volume(
            ref=str(volume.id),
            state=volume_state(volume.status),
            size_gib=int(volume.size or 0),
            token=token or metadata.get(VOLUME_TOKEN_KEY),
            region=self._region,
            attached_to=servers[0] if servers else None,
            # Cinder encrypts by volume type; the volume says whether its type does.
            encrypted=bool(volume.is_encrypted),
            extra={
                "status": volume.status,
                "volume_type": volume.volume_type,
                "name": volume.name,
                "availability_zone": volume.availability_zone,
                "device": next((a.get("device") for a in attachments if a.get("device")), None),
            },
        )

    def _cinder_volume(self, cinder: Any, ref: str) -> Any:
        """The SDK volume `ref`; `Permanent(code="not_found")` when Cinder has none."""
        try:
            return cinder.get_volume(ref)
        except sdk_exceptions.NotFoundException as error:
            raise Permanent(f"OpenStack volume {ref} not found.", code="not_found") from error

    def create_volume(self, request: VolumeRequest, idempotency_token: str) -> Volume:
        """A Cinder volume of type `request.sku`. Cinder's QoS (iops) belongs to the volume
        type, so `request.iops` is the offer's business, not a per-volume setting."""
        self._check_region(request.region)
        if request.size_gib < 1:
            raise Permanent("A volume needs a positive size.", code="invalid_request")
        with self._translate(Operation.PROVISION):
            volume = self._cinder().create_volume(
                name=request.name,
                size=request.size_gib,
                volume_type=request.sku,
                metadata={VOLUME_TOKEN_KEY: idempotency_token},
            )
            if not volume.id:
                raise OutcomeUnknown("OpenStack create_volume: the answer had no volume id.")
            return self._volume(volume, idempotency_token)

    def get_volume(self, ref: str) -> Volume | None:
        with self._translate(Operation.GET):
            try:
                volume = self._cinder().get_volume(ref)
            except sdk_exceptions.NotFoundException:
                return None
            found = self._volume(volume)
            return None if found.state is InstanceState.DELETED else found

    def find_volume(self, token: str) -> Volume | None:
        with self._translate(Operation.FIND_BY_TOKEN):
            # Cinder reads the `metadata` filter as a dict literal, which JSON is.
            listing = self._cinder().volumes(
                details=True, properties=json.dumps({VOLUME_TOKEN_KEY: token})
            )
            for volume in listing:
                # Checked here too: a Cinder ignoring the filter would list every volume.
                metadata = volume.metadata if isinstance(volume.metadata, Mapping) else {}
                if metadata.get(VOLUME_TOKEN_KEY) != token:
                    continue
                found = self._volume(volume, token)
                if found.state not in (InstanceState.DELETED, InstanceState.DELETING):
                    return found
            return None

    def resize_volume(self, ref: str, size_gib: int) -> Volume:
        with self._translate(Operation.ACTION):
            cinder = self._cinder()
            current = self._volume(self._cinder_volume(cinder, ref))
            if size_gib < current.size_gib:
                raise Permanent(
                    f"Volume {ref} has {current.size_gib} GiB: volumes only grow.",
                    code="volume_shrink",
                )
            if size_gib == current.size_gib:
                return current  # done already (a retry whose first answer was lost)
            if current.state is InstanceState.PENDING:
                raise Permanent("The volume is still being created.", code="conflict")
            cinder.extend_volume(ref, size_gib)  # the `os-extend` action
            return self._volume(self._cinder_volume(cinder, ref))

    def attach_volume(self, ref: str, instance_ref: str) -> Volume:
        """Attach through Nova (`os-volume_attachments`), which tells Cinder."""
        with self._translate(Operation.ACTION):
            cinder = self._cinder()
            current = self._volume(self._cinder_volume(cinder, ref))
            if current.attached_to == instance_ref:
                return current
            if current.attached_to is not None:
                raise Permanent(
                    f"Volume {ref} is attached to {current.attached_to}.", code="conflict"
                )
            if current.state is InstanceState.PENDING:
                raise Permanent("The volume is still being created.", code="conflict")
            # An unknown server is Nova's 404: `not_found`.
            self._connect().compute.create_volume_attachment(instance_ref, ref)
            return self._volume(self._cinder_volume(cinder, ref))

    def detach_volume(self, ref: str) -> Volume:
        with self._translate(Operation.ACTION):
            cinder = self._cinder()
            current = self._volume(self._cinder_volume(cinder, ref))
            if current.attached_to is None:
                return current
            compute = self._connect().compute
            for attachment in self._cinder_volume(cinder, ref).attachments or []:
                server_id = attachment.get("server_id") if isinstance(attachment, Mapping) else None
                if server_id:
                    # A Server (not its id): the SDK would otherwise look it up first.
                    compute.delete_volume_attachment(
                        SdkServer.new(id=str(server_id)), ref, ignore_missing=True
                    )
            return self._volume(self._cinder_volume(cinder, ref))

    def delete_volume(self, ref: str) -> None:
        with self._translate(Operation.DEPROVISION):
            cinder = self._cinder()
            try:
                cinder.delete_volume(ref, ignore_missing=True)
            except sdk_exceptions.BadRequestException:
                # Cinder refuses to delete a volume that is attached, or being deleted.
                try:
                    current = self._volume(cinder.get_volume(ref))
                except sdk_exceptions.NotFoundException:
                    return
                if current.state in (InstanceState.DELETING, InstanceState.DELETED):
                    return  # a retry whose first answer was lost
                if current.attached_to is not None:
                    raise Permanent(
                        f"Volume {ref} is attached to {current.attached_to}: detach it first.",
                        code="conflict",
                    ) from None
                raise

    # -- object storage (Swift containers) --------------------------------------------------

    def _swift(self) -> Any:
        return self._service("object-store", "object storage")

    @staticmethod
    def _checked_response(response: requests.Response) -> requests.Response:
        sdk_exceptions.raise_from_response(response)
        return response

    def _head_container(self, swift: Any, name: str) -> requests.Response | None:
        response: requests.Response = swift.head(quote(name, safe=""))
        if response.status_code == 404:
            return None
        return self._checked_response(response)

    def _bucket(self, swift: Any, name: str, headers: Mapping[str, str]) -> Bucket:
        endpoint = str(swift.get_endpoint())
        return Bucket(
            ref=name,
            state=InstanceState.RUNNING,
            # The keys issued are EC2 credentials, which Swift's `s3api` takes: its users
            # connect there with any S3 client (the Swift API itself stays in `extra`).
            endpoint=s3_endpoint(endpoint),
            token=headers.get(CONTAINER_TOKEN_HEADER),
            region=self._region,
            encrypted=headers.get(CONTAINER_ENCRYPTED_HEADER, "").lower() == "true",
            versioning=False,
            retention_days=None,
            extra={
                "protocol": "swift",
                "swift_endpoint": endpoint,
                "s3_endpoint": s3_endpoint(endpoint),
                "objects": int(headers.get("X-Container-Object-Count") or 0),
                "bytes": int(headers.get("X-Container-Bytes-Used") or 0),
            },
        )

    def create_bucket(self, request: BucketRequest, idempotency_token: str) -> Bucket:
        """A Swift container named `request.name`, the token in its metadata.

        Swift's PUT of a container that exists succeeds and overwrites its metadata, so the
        name is looked at first: the container made by a create whose answer was lost is
        this one again; a container of another order's is a conflict.
        """
        if request.retention_days is not None:
            raise Permanent(
                "OpenStack Swift has no write-once retention: no vault here.", code="unsupported"
            )
        if request.versioning:
            raise Permanent(
                "Versioned buckets are not sold through this OpenStack adapter.",
                code="unsupported",
            )
        self._check_region(request.region)
        name = request.name
        if not name or "/" in name or len(name.encode()) > 256:
            raise Permanent(f"{name!r} is not a valid container name.", code="invalid_request")
        with self._translate(Operation.PROVISION):
            swift = self._swift()
            existing = self._head_container(swift, name)
            if existing is not None:
                if existing.headers.get(CONTAINER_TOKEN_HEADER) != idempotency_token:
                    raise Permanent(f"Container {name} exists already.", code="conflict")
                return self._bucket(swift, name, existing.headers)
            headers = {
                CONTAINER_TOKEN_HEADER: idempotency_token,
                CONTAINER_ENCRYPTED_HEADER: "true" if request.encrypted else "false",
            }
            self._checked_response(swift.put(quote(name, safe=""), headers=headers))
            return self._bucket(swift, name, headers)

    def get_bucket(self, ref: str) -> Bucket | None:
        with self._translate(Operation.GET):
            swift = self._swift()
            response = self._head_container(swift, ref)
            return None if response is None else self._bucket(swift, ref, response.headers)

    def find_bucket(self, token: str) -> Bucket | None:
        """The container the broker named after `token` (the account's listing, filtered
        by that prefix), if its metadata carries the token."""
        with self._translate(Operation.FIND_BY_TOKEN):
            swift = self._swift()
            listing = self._checked_response(
                swift.get(
                    swift.get_endpoint(),
                    params={"format": "json", "prefix": token, "limit": LISTING_PAGE},
                )
            )
            names = [entry.get("name") for entry in listing.json() if isinstance(entry, Mapping)]
            if token not in names:
                return None
            response = self._head_container(swift, token)
            if response is None or response.headers.get(CONTAINER_TOKEN_HEADER) != token:
                return None
            return self._bucket(swift, token, response.headers)

    def set_retention(self, ref: str, days: int) -> Bucket:
        raise Permanent(
            "OpenStack Swift has no write-once retention: no vault here.", code="unsupported"
        )

    def retained(self, ref: str) -> Retained:
        """Nothing: Swift holds no object under retention. The container is read all the
        same (its first listed object), so that a container gone is `not_found`."""
        with self._translate(Operation.ACTION):
            swift = self._swift()
            response: requests.Response = swift.get(
                quote(ref, safe=""), params={"format": "json", "limit": 1}
            )
            if response.status_code == 404:
                raise Permanent(f"OpenStack container {ref} not found.", code="not_found")
            self._checked_response(response)
        return Retained(0)

    def delete_bucket(self, ref: str) -> None:
        """Delete the container; Swift refuses one that holds objects (409), so they are
        deleted first, then the container again."""
        path = quote(ref, safe="")
        with self._translate(Operation.DEPROVISION):
            swift = self._swift()
            response: requests.Response = swift.delete(path)
            if response.status_code == 409:
                self._delete_objects(swift, ref)
                response = swift.delete(path)
            if response.status_code != 404:  # gone already counts as deleted
                self._checked_response(response)

    def _delete_objects(self, swift: Any, ref: str) -> None:
        container = quote(ref, safe="")
        marker = ""
        while True:
            params = {"format": "json", "limit": LISTING_PAGE, "marker": marker}
            response: requests.Response = swift.get(container, params=params)
            if response.status_code == 404:
                return
            names = [
                str(entry["name"])
                for entry in self._checked_response(response).json()
                if isinstance(entry, Mapping) and entry.get("name")
            ]
            for name in names:
                deleted: requests.Response = swift.delete(f"{container}/{quote(name, safe='')}")
                if deleted.status_code != 404:
                    self._checked_response(deleted)
            if len(names) < LISTING_PAGE:
                return
            marker = names[-1]

    # -- keys: EC2 credentials in Keystone ----------------------------------------------------

    def _ec2_credentials(self, identity: Any) -> list[tuple[str, dict[str, Any]]]:
        """The broker user's EC2 credentials as (id, blob). Not logged: the blobs hold
        secrets."""
        assert self._session is not None
        response = self._checked_response(
            identity.get(
                "/credentials",
                params={"type": "ec2", "user_id": self._session.get_user_id()},
                log=False,
            )
        )
        found = []
        for credential in response.json().get("credentials") or []:
            if not isinstance(credential, Mapping):
                continue
            try:
                blob = json.loads(credential.get("blob") or "")
            except (TypeError, ValueError):
                continue
            if isinstance(blob, dict) and credential.get("id"):
                found.append((str(credential["id"]), blob))
        return found

    def issue_key(self, ref: str, token: str) -> AccessKey:
        """An EC2 credential of the broker's user in its project, for Swift's `s3api`.

        Its blob names the bucket and the token, so that a key whose answer was lost is
        found again instead of being made twice. Keystone may add fields of its own to the
        blob (e.g. the application credential it was made with)."""
        with self._translate(Operation.ACTION):
            if self._head_container(self._swift(), ref) is None:
                raise Permanent(f"OpenStack container {ref} not found.", code="not_found")
            identity = self._service("identity", "keys")
            for _, blob in self._ec2_credentials(identity):
                if blob.get("broker_token") == token and blob.get("bucket") == ref:
                    if blob.get("access") and blob.get("secret"):
                        return AccessKey(str(blob["access"]), str(blob["secret"]))
        access, secret = secrets.token_hex(16), secrets.token_hex(20)
        with self._translate(Operation.ACTION, secret=secret):
            assert self._session is not None
            blob = {"access": access, "secret": secret, "bucket": ref, "broker_token": token}
            credential = {
                "type": "ec2",
                "blob": json.dumps(blob),
                "project_id": self._session.get_project_id(),
                "user_id": self._session.get_user_id(),
            }
            self._checked_response(
                identity.post("/credentials", json={"credential": credential}, log=False)
            )
        return AccessKey(access, secret)

    def revoke_key(self, ref: str, key_id: str) -> None:
        """Delete the EC2 credential `key_id` issued for `ref` (another bucket's is left)."""
        with self._translate(Operation.ACTION):
            identity = self._service("identity", "keys")
            for credential_id, blob in self._ec2_credentials(identity):
                if blob.get("access") == key_id and blob.get("bucket") == ref:
                    response: requests.Response = identity.delete(
                        f"/credentials/{quote(credential_id, safe='')}", log=False
                    )
                    if response.status_code != 404:
                        self._checked_response(response)
