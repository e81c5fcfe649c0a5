"""3DS Outscale (OUTSCALE API, "OAPI") through osc-sdk-python.

The SDK signs each request locally (OSC4-HMAC-SHA256 with the access key / secret key pair)
and posts it as JSON to `<endpoint>/<Action>`. The adapter keeps the SDK's signing and
transport (`osc_sdk_python.call.Call`) but takes over what the broker must control:

- the requests session is the one `HttpPolicy` hands out (no redirects, no private
  addresses), and every call carries the policy's timeout;
- the SDK's own retries (up to 3, with sleeps of several seconds) and its client-side rate
  limiter are off, so a fault reaches the broker at once and the broker's backoff decides;
- the SDK's profile is built only from the adapter's settings and credentials: by default the
  SDK also reads `OSC_*` environment variables and `~/.osc/config.json`, and `OSC_LOGIN` /
  `OSC_PASSWORD` there would silently switch it to basic auth with somebody else's account.

`OutscaleGateway` itself is not used: it parses the SDK's 1 MB OpenAPI document on every
construction (seconds of CPU) only to check parameter names locally, which the API does
anyway. `Gateway.raw()` is exactly the `Call.api()` used here.

Creates are idempotent on the provider's side: `CreateVms` takes a `ClientToken`, and a
replay with the same token returns the VM made the first time instead of a second one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import requests
from osc_sdk_python.call import Call
from osc_sdk_python.credentials import Endpoint, Profile

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
from providers.http import HttpPolicy, UnsafeEndpoint, parse_retry_after

log = logging.getLogger(__name__)

# The tag that shows a human which broker order a VM belongs to.
ORDER_TAG = "broker-order"
# When a throttling answer carries no usable Retry-After header.
DEFAULT_RETRY_AFTER = 5.0
# Outscale's maximum page size for Read* calls.
PAGE_SIZE = 1000
# A runaway NextPageToken loop is a protocol error, not a reason to spin forever.
MAX_PAGES = 100

# Region names end up in the default endpoint's host name: keep them to what Outscale uses
# (eu-west-2, cloudgouv-eu-west-1, …) so a crafted region cannot point the broker elsewhere.
_REGION = re.compile(r"^[a-z]{2,}(?:-[a-z0-9]+)+$")

_STATES = {
    "pending": InstanceState.PENDING,
    "running": InstanceState.RUNNING,
    "stopping": InstanceState.STOPPING,
    "stopped": InstanceState.STOPPED,
    "shutting-down": InstanceState.DELETING,
    "terminated": InstanceState.DELETED,
    "quarantine": InstanceState.ERROR,
}
# States in which a VM no longer counts as the live instance of its order.
_GONE = frozenset({"shutting-down", "terminated"})

_ACTIONS = {Action.START: "StartVms", Action.STOP: "StopVms", Action.REBOOT: "RebootVms"}

# Outscale error codes (osc_sdk_python/resources/gateway_errors.yaml).
_VM_ABSENT_CODES = frozenset({"5002", "5003", "5063"})  # ghostly-vm, invalid-instance, no-such-vm
_QUOTA_TYPE = "TooManyResources"  # Type "TooManyResources (QuotaExceded)", codes 10000-10046
_THROTTLE_TYPES = frozenset({"RequestLimitExceeded", "Throttling", "TooManyRequests"})
_AUTH_TYPES = frozenset({"AccessDenied", "AuthFailure"})
_BUSY_TYPES = frozenset({"InsufficientCapacity"})


@dataclass(frozen=True)
class _Refusal:
    """An error answer from the API, as parsed from its `Errors` envelope."""

    status: int
    code: str
    type: str
    details: str


class OutscaleRefused(Permanent):
    """The API refused the call (a 4xx answer); `refusal` keeps Outscale's code and type."""

    def __init__(self, message: str, code: str, refusal: _Refusal) -> None:
        super().__init__(message, code=code)
        self.refusal = refusal

    @property
    def vm_absent(self) -> bool:
        return self.refusal.code in _VM_ABSENT_CODES

    @property
    def invalid_state(self) -> bool:
        return self.refusal.type == "InvalidState"


class _Call(Call):
    """The SDK's Call with a profile made only of what it is given (no env, no config file)."""

    def update_profile(self, **kwargs: Any) -> dict[str, Any]:
        self.profile = Profile(**kwargs)
        return {}


def default_endpoint(region: str) -> str:
    return f"https://api.{region}.outscale.com/api/v1"


class OutscaleAdapter(ProviderAdapter):
    """VMs on one Outscale region, for one account (access key / secret key)."""

    name = "outscale"
    features: ClassVar[frozenset[Feature]] = frozenset(
        {Feature.STOP_START, Feature.REBOOT, Feature.PROVIDER_IDEMPOTENCY}
    )
    settings_fields: ClassVar[frozenset[str]] = frozenset(
        {"region", "endpoint", "image", "subnet_id", "security_group_ids", "keypair_name"}
    )
    required_settings: ClassVar[frozenset[str]] = frozenset({"region"})
    credential_fields: ClassVar[frozenset[str]] = frozenset({"access_key", "secret_key"})
    required_credentials: ClassVar[frozenset[str]] = credential_fields
    endpoint_settings: ClassVar[frozenset[str]] = frozenset({"endpoint"})

    _sdk_call: Call | None = None

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        cleaned = super().check_settings(settings, http)
        region = cleaned["region"]
        if not isinstance(region, str) or not _REGION.match(region):
            raise SettingsInvalid("Setting 'region' must be an Outscale region name.", "region")
        endpoint = cleaned.get("endpoint")
        if endpoint is None:
            # The SDK would derive the same URL; check it like one an operator typed in.
            try:
                http.check_url(default_endpoint(region))
            except UnsafeEndpoint as error:
                raise SettingsInvalid(f"Setting 'region': {error}", "region") from None
        else:
            parts = urlsplit(endpoint)
            if parts.query or parts.fragment:
                raise SettingsInvalid(
                    "Setting 'endpoint' must not have a query or fragment.", "endpoint"
                )
            cleaned["endpoint"] = endpoint.rstrip("/")
        for name in ("image", "subnet_id", "keypair_name"):
            if name in cleaned and not isinstance(cleaned[name], str):
                raise SettingsInvalid(f"Setting {name!r} must be a string.", name)
        groups = cleaned.get("security_group_ids")
        if isinstance(groups, str):
            groups = [group.strip() for group in groups.split(",") if group.strip()]
        if groups is not None:
            if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
                raise SettingsInvalid(
                    "Setting 'security_group_ids' must be a list of ids.", "security_group_ids"
                )
            cleaned["security_group_ids"] = groups
        return cleaned

    # -- the contract -------------------------------------------------------------------

    def list_offers(self) -> Iterable[OfferSpec]:
        region = self.settings["region"]
        return [
            _offer(vm_type, region)
            for vm_type in self._read_all("ReadVmTypes", "VmTypes", {})
            if vm_type.get("VmTypeName")
        ]

    def provision(self, request: ProvisionRequest, idempotency_token: str) -> Instance:
        params: dict[str, Any] = {
            "ClientToken": idempotency_token,
            "ImageId": self._image(request),
            "VmType": request.sku,
            "BootOnCreation": True,
        }
        subregion = self._subregion(request.region)
        if subregion:
            params["Placement"] = {"SubregionName": subregion}
        if self.settings.get("subnet_id"):
            params["SubnetId"] = self.settings["subnet_id"]
        if self.settings.get("security_group_ids"):
            params["SecurityGroupIds"] = list(self.settings["security_group_ids"])
        if self.settings.get("keypair_name"):
            params["KeypairName"] = self.settings["keypair_name"]

        answer = self._call("CreateVms", params, creating=True)
        vms = answer.get("Vms")
        if not isinstance(vms, list) or len(vms) != 1 or not _vm_id(vms[0]):
            raise OutcomeUnknown("CreateVms answered without the VM it created.")
        vm = vms[0]
        if vm.get("State") in _GONE:
            # The replayed token was answered with the VM made for it, which has been
            # deleted since: this token cannot make another one (a new order can).
            raise Permanent(
                f"The VM created for this order ({_vm_id(vm)}) has been deleted; "
                "its client token cannot create another.",
                code="token_consumed",
            )
        self._tag(vm, idempotency_token, request.name)
        return self._instance(vm)

    def get(self, ref: str) -> Instance | None:
        vm = self._read_vm(ref)
        if vm is None or vm.get("State") == "terminated":
            return None
        return self._instance(vm)

    def find_by_token(self, token: str) -> Instance | None:
        vms = self._read_all("ReadVms", "Vms", {"Filters": {"ClientTokens": [token]}})
        live = [vm for vm in vms if _vm_id(vm) and vm.get("State") not in _GONE]
        if not live:
            return None
        # Only one VM can carry a client token; should the API ever list more, the oldest
        # is the one the first create made.
        live.sort(key=lambda vm: str(vm.get("CreationDate") or ""))
        return self._instance(live[0])

    def action(self, ref: str, action: Action) -> Instance:
        api_action = _ACTIONS[Action(action)]
        try:
            answer = self._call(api_action, {"VmIds": [ref]})
        except OutscaleRefused as error:
            self._raise_if_absent(ref, error)
            raise
        try:
            instance = self.get(ref)
        except Retryable:
            # The action was done; a failed read-back must not make the broker do it again.
            instance = _from_vm_state(answer, ref, self.settings["region"])
            if instance is None:
                raise
        if instance is None:
            raise Permanent(f"VM {ref} no longer exists.", code="not_found")
        return instance

    def deprovision(self, ref: str) -> None:
        try:
            self._call("DeleteVms", {"VmIds": [ref]})
        except OutscaleRefused as error:
            if error.vm_absent:
                return
            if error.invalid_state and self.get(ref) is None:
                return
            raise

    # -- helpers --------------------------------------------------------------------------

    def _image(self, request: ProvisionRequest) -> str:
        image = request.image or self.settings.get("image")
        if not image:
            raise SettingsInvalid("No image: set the 'image' setting or order one.", "image")
        return str(image)

    def _subregion(self, region: str) -> str | None:
        """The subregion to place the VM in, if the order names one (eu-west-2a)."""
        own = self.settings["region"]
        if not region or region == own:
            return None
        if re.fullmatch(re.escape(own) + r"[a-z]", region):
            return region
        # An adapter serves one region; creating the VM elsewhere would break the order's
        # residency promise.
        raise Permanent(
            f"This provider's Outscale account serves {own}, not {region}.",
            code="invalid_request",
        )

    def _tag(self, vm: Mapping[str, Any], token: str, name: str) -> None:
        """Tag the VM with its order (for humans; lookups use the client token).

        Best effort: the VM exists and is found by its client token either way, and a
        replayed create tags it again.
        """
        tags = _tags(vm)
        wanted = {ORDER_TAG: token}
        if name:
            wanted["Name"] = name[:255]
        missing = [{"Key": k, "Value": v} for k, v in wanted.items() if tags.get(k) != v]
        if not missing:
            return
        try:
            self._call("CreateTags", {"ResourceIds": [_vm_id(vm)], "Tags": missing})
        except (Retryable, Permanent) as error:
            log.warning("Could not tag Outscale VM %s: %s", _vm_id(vm), error)
        else:
            if isinstance(vm, dict):
                vm.setdefault("Tags", []).extend(missing)

    def _read_vm(self, ref: str) -> dict[str, Any] | None:
        try:
            vms = self._read_all("ReadVms", "Vms", {"Filters": {"VmIds": [ref]}})
        except OutscaleRefused as error:
            if error.vm_absent:
                return None
            raise
        return next((vm for vm in vms if _vm_id(vm) == ref), None)

    def _raise_if_absent(self, ref: str, error: OutscaleRefused) -> None:
        """Turn a refusal about a deleted VM into `Permanent(code="not_found")`."""
        if error.vm_absent or (error.invalid_state and self.get(ref) is None):
            raise Permanent(f"VM {ref} no longer exists.", code="not_found") from None

    def _read_all(self, action: str, key: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a paginated Read* call."""
        items: list[dict[str, Any]] = []
        page: dict[str, Any] = {**params, "ResultsPerPage": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            answer = self._call(action, page)
            found = answer.get(key, [])
            if not isinstance(found, list):
                raise Retryable(f"{action} answered with a malformed {key} list.")
            items.extend(item for item in found if isinstance(item, dict))
            next_token = answer.get("NextPageToken")
            if not next_token:
                return items
            page = {**params, "ResultsPerPage": PAGE_SIZE, "NextPageToken": next_token}
        raise Retryable(f"{action} kept answering with more pages.")

    def _instance(self, vm: Mapping[str, Any]) -> Instance:
        tags = _tags(vm)
        state = str(vm.get("State") or "")
        addresses = tuple(
            str(vm[key]) for key in ("PublicIp", "PrivateIp") if isinstance(vm.get(key), str)
        )
        placement = vm.get("Placement") if isinstance(vm.get("Placement"), dict) else {}
        return Instance(
            ref=_vm_id(vm),
            state=_STATES.get(state, InstanceState.UNKNOWN),
            token=vm.get("ClientToken") or tags.get(ORDER_TAG),
            sku=vm.get("VmType"),
            region=self.settings["region"],
            addresses=addresses,
            created_at=_datetime(vm.get("CreationDate")),
            extra={
                "outscale_state": state,
                "state_reason": vm.get("StateReason") or "",
                "image_id": vm.get("ImageId"),
                "subregion": (placement or {}).get("SubregionName"),
                "subnet_id": vm.get("SubnetId") or None,
                "keypair_name": vm.get("KeypairName") or None,
                "tags": tags,
            },
        )

    # -- transport and error mapping --------------------------------------------------------

    def _client(self) -> Call:
        """The SDK client, made on first use (building an adapter stays free of I/O)."""
        if self._sdk_call is None:
            endpoint = self.settings.get("endpoint") or default_endpoint(self.settings["region"])
            call = _Call(
                logger=None,
                limiter=None,  # no client-side rate limiting sleeps: throttling is the broker's
                max_retries=0,  # no SDK retries: one attempt, faults surface as they happen
                access_key=self.credentials["access_key"],
                secret_key=self.credentials["secret_key"],
                region=self.settings["region"],
                protocol=urlsplit(endpoint).scheme,
                endpoints=Endpoint(api=endpoint),
            )
            call.session.close()
            call.session = self.context.http.session()
            # `Retry` hands every key it does not know to `session.request`.
            call.retry_kwargs["timeout"] = self.context.http.timeout
            self._sdk_call = call
        return self._sdk_call

    def _call(
        self, action: str, params: Mapping[str, Any], *, creating: bool = False
    ) -> dict[str, Any]:
        """One API call; every failure leaves as a typed `ProviderError`.

        `creating`: the call may create something, so whatever is not a clear refusal is
        `OutcomeUnknown` (a timeout or a 5xx does not tell whether the VM was made).
        """
        transient = OutcomeUnknown if creating else Retryable
        try:
            answer = self._client().api(action, **params)
        except UnsafeEndpoint as error:
            # Raised at connect time too (a name that now resolves to a private address).
            raise SettingsInvalid(self._scrub(f"Endpoint refused: {error}"), "endpoint") from None
        except requests.HTTPError as error:
            self._raise_http_error(action, error.response, transient)
        except requests.Timeout:
            raise transient(f"Outscale {action} timed out.") from None
        except requests.ConnectionError as error:
            raise transient(
                self._scrub(f"Outscale {action}: connection failed ({error}).")
            ) from None
        except Exception as error:  # anything else is a broken exchange, never a refusal
            raise transient(
                self._scrub(f"Outscale {action} failed: {type(error).__name__}.")
            ) from None
        if not isinstance(answer, dict):
            raise transient(f"Outscale {action} answered with something other than an object.")
        return answer

    def _raise_http_error(
        self,
        action: str,
        response: requests.Response | None,
        transient: type[Retryable],
    ) -> NoReturn:
        if response is None:
            raise transient(f"Outscale {action} failed without an answer.") from None
        refusal = _refusal(response)
        described = self._scrub(_describe(action, refusal))
        if refusal.status == 429 or refusal.type in _THROTTLE_TYPES:
            raise Throttled(
                described,
                retry_after=parse_retry_after(
                    response.headers.get("Retry-After"), DEFAULT_RETRY_AFTER
                ),
            ) from None
        if refusal.status in (401, 403) or refusal.type in _AUTH_TYPES:
            raise OutscaleRefused(described, "unauthorized", refusal) from None
        if refusal.type.startswith(_QUOTA_TYPE):
            raise OutscaleRefused(described, "quota_exceeded", refusal) from None
        # InsufficientCapacity (code 10001, HTTP 400) is Outscale being full, not the request
        # being wrong: nothing was made, and the same call may succeed later.
        if (
            400 <= refusal.status < 500
            and refusal.status != 408
            and refusal.type not in _BUSY_TYPES
        ):
            raise OutscaleRefused(described, "invalid_request", refusal) from None
        raise transient(described) from None


# -- pure helpers -------------------------------------------------------------------------------


def _vm_id(vm: Any) -> str:
    return str(vm.get("VmId") or "") if isinstance(vm, Mapping) else ""


def _tags(vm: Mapping[str, Any]) -> dict[str, str]:
    tags = vm.get("Tags")
    if not isinstance(tags, list):
        return {}
    return {
        str(tag["Key"]): str(tag.get("Value", ""))
        for tag in tags
        if isinstance(tag, dict) and "Key" in tag
    }


def _offer(vm_type: Mapping[str, Any], region: str) -> OfferSpec:
    name = str(vm_type["VmTypeName"])
    try:
        ram = Decimal(str(vm_type.get("MemorySize") or 0))
    except InvalidOperation:
        ram = Decimal(0)
    volumes = int(vm_type.get("VolumeCount") or 0)
    return OfferSpec(
        sku=name,
        name=name,
        vcpu=int(vm_type.get("VcoreCount") or 0),
        ram_gib=ram,
        # Ephemeral (local) disks only; the boot volume (BSU) is sized per VM.
        disk_gib=volumes * int(vm_type.get("VolumeSize") or 0),
        gpu=int(vm_type.get("Gpu") or 0),
        region=region,
        extra={
            key: vm_type[key]
            for key in ("EphemeralsType", "Eth", "MaxPrivateIps", "VolumeCount", "VolumeSize")
            if key in vm_type
        },
    )


def _from_vm_state(answer: Mapping[str, Any], ref: str, region: str) -> Instance | None:
    """An Instance from a Start/Stop/RebootVms answer ({VmId, PreviousState, CurrentState})."""
    for item in answer.get("Vms") or []:
        if isinstance(item, dict) and item.get("VmId") == ref:
            state = str(item.get("CurrentState") or "")
            return Instance(ref=ref, state=_STATES.get(state, InstanceState.UNKNOWN), region=region)
    return None


def _datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _refusal(response: requests.Response) -> _Refusal:
    code = kind = details = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("Errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("Code") or "")
            kind = str(first.get("Type") or "")
            details = str(first.get("Details") or "")
        elif isinstance(body.get("__type"), str):  # the legacy envelope
            kind = body["__type"]
    return _Refusal(status=response.status_code, code=code, type=kind, details=details)


def _describe(action: str, refusal: _Refusal) -> str:
    parts = [f"Outscale {action} answered HTTP {refusal.status}"]
    if refusal.type or refusal.code:
        parts.append(f"{refusal.type or 'error'} {refusal.code}".strip())
    if refusal.details:
        parts.append(refusal.details[:200])
    return ": ".join(parts) + "."
