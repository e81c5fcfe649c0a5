"""OpenStack adapter: Keystone v3 for authentication, Nova for servers (through openstacksdk).

Written for sovereign OpenStack clouds (Sovereign Cloud Stack and others), which hand out
application credentials rather than passwords; both work.

How it keeps to the contract:

- Every request goes through the broker's guarded `requests` session (no redirects, no
  private addresses unless the policy allows them, a timeout on every call). The SDK gets a
  keystoneauth session wrapping it and is told nothing else: no clouds.yaml, no `OS_*`
  environment variables, no retries of its own (the broker retries with its own backoff).
- The compute endpoint comes from the Keystone catalogue, which the cloud controls, so it is
  held to the same endpoint policy as the configured `auth_url`.
- Servers are created with the idempotency token as a Nova server tag, and found again by
  filtering on that tag. Both need a Nova microversion (2.52 for tags at create, 2.26 for the
  filter), so the adapter pins one instead of letting the SDK pick the newest it knows: the
  requests then mean the same thing on every cloud, and a cloud too old for them refuses
  them outright rather than ignoring the tag.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit, urlunsplit

import keystoneauth1.exceptions as ksa_exceptions
import openstack.exceptions as sdk_exceptions
import requests
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3
from openstack.connection import Connection

from providers.base import (
    Action,
    Feature,
    Instance,
    InstanceState,
    OfferSpec,
    OutcomeUnknown,
    Permanent,
    ProviderAdapter,
    ProvisionRequest,
    Retryable,
    SettingsInvalid,
    Throttled,
)
from providers.faults import Operation
from providers.http import HttpPolicy, UnsafeEndpoint, parse_retry_after

# The Nova microversion every call is made with: 2.52 is the first that accepts tags in the
# create request (2.26 added the `tags` list filter, 2.37 `networks: "auto"`, 2.47 the
# embedded flavor in server details).
NOVA_MICROVERSION = "2.52"

# Tags the broker puts on servers start with this (see `providers.base.order_token`); `get`
# uses it to tell the broker's tag from any others an operator added.
TOKEN_TAG_PREFIX = "broker-order-"

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


class OpenStackAdapter(ProviderAdapter):
    name = "openstack"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.STOP_START, Feature.REBOOT})
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
            connect_retries=0,
            status_code_retries=0,
            app_name="cloud-broker",
        )
        # Authenticates (one Keystone call) and reads the catalogue, without discovery.
        catalogued = session.get_endpoint(
            service_type="compute",
            interface=self._interface,
            region_name=self._region,
            skip_discovery=True,
        )
        if not catalogued:
            raise SettingsInvalid(
                f"The Keystone catalogue has no {self._interface} compute endpoint in region "
                f"{self._region!r}.",
                "region",
            )
        self._check_endpoint(catalogued)
        # Nova's version document may point elsewhere again: check where calls really go.
        self._check_endpoint(connection.compute.get_endpoint())
        self._connection = connection
        return connection

    def _check_endpoint(self, url: str | None) -> None:
        if url is None:
            return
        try:
            self.context.http.check_url(url)
        except UnsafeEndpoint as error:
            raise SettingsInvalid(
                f"The compute endpoint the cloud announces is refused: {error}",
                "auth_url",
            ) from None

    # -- error mapping ------------------------------------------------------------------

    @contextmanager
    def _translate(self, operation: Operation) -> Iterator[None]:
        """Turn whatever the SDK, keystoneauth or requests raise into the typed errors."""
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
            # Raised when the cloud's Nova is older than the pinned microversion.
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
        if status in (403, 413) and "quota exceeded" in details.lower():
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
