"""3DS Outscale: VMs and block volumes (OUTSCALE API, "OAPI") through osc-sdk-python, buckets on
OUTSCALE Object Storage (OOS) through its S3 API (`providers.s3`).

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

Creates are idempotent on the provider's side: `CreateVms` and `CreateVolume` take a
`ClientToken`, and a replay with the same token returns the VM (volume) made the first time
instead of a second one; both are found by it too (`Filters.ClientTokens`).

Volumes (BSU) are created in the order's subregion, else the `subregion` setting, else the
region's subregion A (where Outscale puts VMs and volumes by default: a volume attaches only to
a VM of its subregion), and attach on the next free device name `/dev/xvdb`…`/dev/xvdz`. The
OAPI has no per-volume encryption switch: the `volumes_encrypted` setting (default true) says
whether the account's block storage is encrypted at rest, and a volume ordered encrypted is
refused (`unsupported`) where it is not.

Buckets live on OOS (`oos_endpoint`, default `https://oos.<region>.outscale.com`), with object
lock (vaults) in COMPLIANCE mode. EIM policies do not apply to OOS, so a bucket's keys belong to
an EIM user of its own (named after the bucket, with no OAPI rights: EIM users have none by
default) that the bucket's policy grants its objects to; each key is tagged with the token it
was issued for, and an issue whose answer was lost is replaced by the next, never doubled
(OUTSCALE shows a secret key only once). Deleting a bucket removes its user and keys.

Settings: `region` (required), `endpoint`, `oos_endpoint`, `image`, `subnet_id`,
`security_group_ids`, `keypair_name`, `subregion` (for VMs too when set), `volumes_encrypted`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import requests
from osc_sdk_python.call import Call
from osc_sdk_python.credentials import Endpoint, Profile

from providers.base import (
    AccessKey,
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
    Volume,
    VolumeDriver,
    VolumeRequest,
)
from providers.http import HttpPolicy, UnsafeEndpoint, parse_retry_after
from providers.s3 import S3ObjectStorage

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

_VOLUME_STATES = {
    "creating": InstanceState.PENDING,
    "available": InstanceState.RUNNING,
    "in-use": InstanceState.RUNNING,
    "deleting": InstanceState.DELETING,
    "error": InstanceState.ERROR,
}
# Device names a data volume may take (`/dev/sda1` is the root device's).
_DEVICES = tuple(f"/dev/xvd{letter}" for letter in "bcdefghijklmnopqrstuvwxyz")

# Outscale error codes (osc_sdk_python/resources/gateway_errors.yaml).
_VM_ABSENT_CODES = frozenset({"5002", "5003", "5063"})  # ghostly-vm, invalid-instance, no-such-vm
_VOLUME_ABSENT_CODES = frozenset({"5064"})  # no-such-volume
_VOLUME_NOT_LINKED_CODES = frozenset({"9063"})  # volume-not-in-use
_DEVICE_TAKEN_CODES = frozenset({"9003", "9004"})  # device-conflict, device-in-use
_USER_ABSENT_CODES = frozenset({"5075"})  # no-such-user
_USER_EXISTS_CODES = frozenset({"9000", "9022"})  # already-exist, duplicate-username
_KEY_ABSENT_CODES = frozenset({"4000", "5027"})  # access-keys-not-found, no-such-key
_CONFLICT_TYPES = frozenset({"InvalidState", "ResourceConflict"})
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

    def coded(self, codes: frozenset[str]) -> bool:
        return self.refusal.code in codes


class _Call(Call):
    """The SDK's Call with a profile made only of what it is given (no env, no config file)."""

    def update_profile(self, **kwargs: Any) -> dict[str, Any]:
        self.profile = Profile(**kwargs)
        return {}


def default_endpoint(region: str) -> str:
    return f"https://api.{region}.outscale.com/api/v1"


def default_oos_endpoint(region: str) -> str:
    return f"https://oos.{region}.outscale.com"


class OutscaleAdapter(ProviderAdapter):
    """VMs, volumes and buckets on one Outscale region, for one account (access key / secret
    key)."""

    name = "outscale"
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.STOP_START,
            Feature.REBOOT,
            Feature.PROVIDER_IDEMPOTENCY,
            Feature.VOLUMES,
            Feature.OBJECT_STORAGE,
            Feature.OBJECT_LOCK,
        }
    )
    settings_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "region",
            "endpoint",
            "oos_endpoint",
            "image",
            "subnet_id",
            "security_group_ids",
            "keypair_name",
            "subregion",
            "volumes_encrypted",
        }
    )
    required_settings: ClassVar[frozenset[str]] = frozenset({"region"})
    credential_fields: ClassVar[frozenset[str]] = frozenset({"access_key", "secret_key"})
    required_credentials: ClassVar[frozenset[str]] = credential_fields
    endpoint_settings: ClassVar[frozenset[str]] = frozenset({"endpoint", "oos_endpoint"})

    _sdk_call: Call | None = None
    _storage: S3ObjectStorage | None = None

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        cleaned = super().check_settings(settings, http)
        region = cleaned["region"]
        if not isinstance(region, str) or not _REGION.match(region):
            raise SettingsInvalid("Setting 'region' must be an Outscale region name.", "region")
        for name, default in (
            ("endpoint", default_endpoint),
            ("oos_endpoint", default_oos_endpoint),
        ):
            endpoint = cleaned.get(name)
            if endpoint is None:
                # The default URL (the SDK would derive the same for the API); check it like
                # one an operator typed in.
                try:
                    http.check_url(default(region))
                except UnsafeEndpoint as error:
                    raise SettingsInvalid(f"Setting 'region': {error}", "region") from None
            else:
                parts = urlsplit(endpoint)
                if parts.query or parts.fragment:
                    raise SettingsInvalid(
                        f"Setting {name!r} must not have a query or fragment.", name
                    )
                cleaned[name] = endpoint.rstrip("/")
        subregion = cleaned.get("subregion")
        if subregion is not None and (
            not isinstance(subregion, str)
            or not re.fullmatch(re.escape(region) + r"[a-z]", subregion)
        ):
            raise SettingsInvalid(
                f"Setting 'subregion' must be a subregion of {region} ({region}a, …).",
                "subregion",
            )
        if not isinstance(cleaned.get("volumes_encrypted", True), bool):
            raise SettingsInvalid(
                "Setting 'volumes_encrypted' must be true or false.", "volumes_encrypted"
            )
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
        subregion = self._subregion(request.region) or self.settings.get("subregion")
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
        self._tag(vm, _vm_id(vm), idempotency_token, request.name)
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

    def volumes(self) -> OutscaleVolumes:
        return OutscaleVolumes(self)

    def object_storage(self) -> S3ObjectStorage:
        if self._storage is None:
            region = self.settings["region"]
            self._storage = S3ObjectStorage(
                endpoint=self.settings.get("oos_endpoint") or default_oos_endpoint(region),
                region=region,
                access_key=self.credentials["access_key"],
                secret_key=self.credentials["secret_key"],
                http=self.context.http,
                clock=self.context.clock,
                keys=OutscaleKeys(self),
                scrub=self._scrub,
                endpoint_setting="oos_endpoint",
            )
        return self._storage

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

    def _tag(self, resource: Mapping[str, Any], resource_id: str, token: str, name: str) -> None:
        """Tag a VM or volume with its order (for humans; lookups use the client token).

        Best effort: the resource exists and is found by its client token either way, and a
        replayed create tags it again.
        """
        tags = _tags(resource)
        wanted = {ORDER_TAG: token}
        if name:
            wanted["Name"] = name[:255]
        missing = [{"Key": k, "Value": v} for k, v in wanted.items() if tags.get(k) != v]
        if not missing:
            return
        try:
            self._call("CreateTags", {"ResourceIds": [resource_id], "Tags": missing})
        except (Retryable, Permanent) as error:
            log.warning("Could not tag Outscale resource %s: %s", resource_id, error)
        else:
            if isinstance(resource, dict):
                resource.setdefault("Tags", []).extend(missing)

    def _volume_subregion(self, region: str) -> str:
        own = self.settings["region"]
        return self._subregion(region) or self.settings.get("subregion") or f"{own}a"

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


class OutscaleVolumes(VolumeDriver):
    """BSU volumes of the adapter's account, through the same OAPI calls and error mapping as
    its VMs (faults: CreateVolume → provision, ReadVolumes by id → get, by client token →
    find, UpdateVolume / LinkVolume / UnlinkVolume → action, DeleteVolume → deprovision)."""

    def __init__(self, adapter: OutscaleAdapter) -> None:
        self.adapter = adapter

    def create_volume(self, request: VolumeRequest, idempotency_token: str) -> Volume:
        adapter = self.adapter
        if request.encrypted and not adapter.settings.get("volumes_encrypted", True):
            raise Permanent(
                "This provider's Outscale block storage is not encrypted at rest.",
                code="unsupported",
            )
        if request.size_gib < 1:
            raise Permanent("A volume is at least 1 GiB.", code="invalid_request")
        params: dict[str, Any] = {
            "ClientToken": idempotency_token,
            "VolumeType": request.sku,
            "Size": request.size_gib,
            "SubregionName": adapter._volume_subregion(request.region),
        }
        if request.iops is not None:
            params["Iops"] = request.iops
        answer = adapter._call("CreateVolume", params, creating=True)
        volume = answer.get("Volume")
        if not isinstance(volume, dict) or not _volume_id(volume):
            raise OutcomeUnknown("CreateVolume answered without the volume it created.")
        if volume.get("State") == "deleting":
            raise Permanent(
                f"The volume created for this order ({_volume_id(volume)}) has been deleted; "
                "its client token cannot create another.",
                code="token_consumed",
            )
        adapter._tag(volume, _volume_id(volume), idempotency_token, request.name)
        return self._volume(volume)

    def get_volume(self, ref: str) -> Volume | None:
        volume = self._read(ref)
        return None if volume is None else self._volume(volume)

    def find_volume(self, token: str) -> Volume | None:
        found = self.adapter._read_all(
            "ReadVolumes", "Volumes", {"Filters": {"ClientTokens": [token]}}
        )
        live = [v for v in found if _volume_id(v) and v.get("State") != "deleting"]
        if not live:
            return None
        live.sort(key=lambda volume: str(volume.get("CreationDate") or ""))
        return self._volume(live[0])

    def resize_volume(self, ref: str, size_gib: int) -> Volume:
        volume = self._require(ref)
        current = int(volume.get("Size") or 0)
        if size_gib < current:
            raise Permanent(
                f"Volume {ref} has {current} GiB; a volume only grows.", code="volume_shrink"
            )
        if size_gib == current:
            return self._volume(volume)
        try:
            answer = self.adapter._call("UpdateVolume", {"VolumeId": ref, "Size": size_gib})
        except OutscaleRefused as error:
            self._raise_refusal(ref, error)
        updated = answer.get("Volume")
        resized = self._volume(updated if isinstance(updated, dict) else volume)
        if resized.size_gib < size_gib:
            # Outscale grows a volume in the background (a TaskId): the size is the one asked.
            resized = replace(resized, size_gib=size_gib, extra={**resized.extra, "resizing": True})
        return resized

    def attach_volume(self, ref: str, instance_ref: str) -> Volume:
        volume = self._require(ref)
        attached = _attached_to(volume)
        if attached == instance_ref:
            return self._volume(volume)
        if attached is not None:
            raise Permanent(
                f"Volume {ref} is attached to {attached}: detach it first.", code="conflict"
            )
        device = self._free_device(instance_ref)
        try:
            self.adapter._call(
                "LinkVolume", {"VolumeId": ref, "VmId": instance_ref, "DeviceName": device}
            )
        except OutscaleRefused as error:
            if error.vm_absent or (error.invalid_state and self.adapter.get(instance_ref) is None):
                raise Permanent(f"VM {instance_ref} no longer exists.", code="not_found") from None
            if error.coded(_DEVICE_TAKEN_CODES):
                raise Retryable(
                    f"Device {device} of VM {instance_ref} was taken meanwhile."
                ) from None
            self._raise_refusal(ref, error)
        return self._read_back(ref, volume, attached_to=instance_ref, device=device)

    def detach_volume(self, ref: str) -> Volume:
        volume = self._require(ref)
        if _attached_to(volume) is None:
            return self._volume(volume)
        try:
            self.adapter._call("UnlinkVolume", {"VolumeId": ref})
        except OutscaleRefused as error:
            if not error.coded(_VOLUME_NOT_LINKED_CODES):
                self._raise_refusal(ref, error)
        return self._read_back(ref, volume, attached_to=None, device=None)

    def delete_volume(self, ref: str) -> None:
        try:
            self.adapter._call("DeleteVolume", {"VolumeId": ref})
        except OutscaleRefused as error:
            if error.coded(_VOLUME_ABSENT_CODES):
                return
            if error.refusal.type in _CONFLICT_TYPES:
                volume = self._read(ref)
                if volume is None:
                    return
                attached = _attached_to(volume)
                if attached is not None:
                    raise Permanent(
                        f"Volume {ref} is attached to {attached}: detach it first.",
                        code="conflict",
                    ) from None
                raise Permanent(self.adapter._scrub(str(error)), code="conflict") from None
            raise

    # -- helpers --------------------------------------------------------------------------

    def _read(self, ref: str) -> dict[str, Any] | None:
        try:
            found = self.adapter._read_all(
                "ReadVolumes", "Volumes", {"Filters": {"VolumeIds": [ref]}}
            )
        except OutscaleRefused as error:
            if error.coded(_VOLUME_ABSENT_CODES):
                return None
            raise
        return next((volume for volume in found if _volume_id(volume) == ref), None)

    def _require(self, ref: str) -> dict[str, Any]:
        volume = self._read(ref)
        if volume is None or volume.get("State") == "deleting":
            raise Permanent(f"Volume {ref} no longer exists.", code="not_found")
        return volume

    def _read_back(
        self, ref: str, before: dict[str, Any], *, attached_to: str | None, device: str | None
    ) -> Volume:
        """The volume after a link or unlink; what was asked if the read-back fails (the
        action was done: a failed read must not make the broker do it again)."""
        try:
            volume = self.get_volume(ref)
        except Retryable:
            guessed = self._volume(before)
            return replace(
                guessed,
                attached_to=attached_to,
                extra={**guessed.extra, "device_name": device},
            )
        if volume is None:
            raise Permanent(f"Volume {ref} no longer exists.", code="not_found")
        return volume

    def _free_device(self, vm_ref: str) -> str:
        linked = self.adapter._read_all(
            "ReadVolumes", "Volumes", {"Filters": {"LinkVolumeVmIds": [vm_ref]}}
        )
        used = {
            link.get("DeviceName")
            for volume in linked
            for link in volume.get("LinkedVolumes") or []
            if isinstance(link, dict) and link.get("VmId") == vm_ref
        }
        for device in _DEVICES:
            if device not in used:
                return device
        raise Permanent(f"VM {vm_ref} has no free device name left.", code="conflict")

    def _raise_refusal(self, ref: str, error: OutscaleRefused) -> NoReturn:
        if error.coded(_VOLUME_ABSENT_CODES):
            raise Permanent(f"Volume {ref} no longer exists.", code="not_found") from None
        if error.refusal.type in _CONFLICT_TYPES:
            raise Permanent(self.adapter._scrub(str(error)), code="conflict") from None
        raise error

    def _volume(self, volume: Mapping[str, Any]) -> Volume:
        tags = _tags(volume)
        state = str(volume.get("State") or "")
        link = _link(volume)
        return Volume(
            ref=_volume_id(volume),
            state=_VOLUME_STATES.get(state, InstanceState.UNKNOWN),
            size_gib=int(volume.get("Size") or 0),
            token=volume.get("ClientToken") or tags.get(ORDER_TAG),
            region=self.adapter.settings["region"],
            attached_to=_attached_to(volume),
            encrypted=bool(self.adapter.settings.get("volumes_encrypted", True)),
            extra={
                "outscale_state": state,
                "volume_type": volume.get("VolumeType"),
                "iops": volume.get("Iops"),
                "subregion": volume.get("SubregionName"),
                "device_name": (link or {}).get("DeviceName"),
                "link_state": (link or {}).get("State"),
                "tags": tags,
            },
        )


class OutscaleKeys:
    """The keys of OOS buckets: an EIM user per bucket, named after it, and its access keys,
    each tagged with the token it was issued for (the `KeyIssuer` of `providers.s3`)."""

    def __init__(self, adapter: OutscaleAdapter) -> None:
        self.adapter = adapter
        self._account_id: str | None = None

    def principal(self, bucket: str) -> str:
        user = _user_name(bucket)
        try:
            self.adapter._call("CreateUser", {"UserName": user})
        except OutscaleRefused as error:
            if not (error.coded(_USER_EXISTS_CODES) or error.refusal.type == "ResourceConflict"):
                raise
        return f"arn:aws:iam::{self._account()}:user/{user}"

    def issue(self, bucket: str, token: str) -> AccessKey:
        user = _user_name(bucket)
        # A key an earlier call made for this token lost its secret with the answer.
        for key_id in self._key_ids(user, token):
            self._delete(user, key_id)
        answer = self.adapter._call("CreateAccessKey", {"UserName": user, "Tag": token})
        key = answer.get("AccessKey")
        if not isinstance(key, dict) or not key.get("AccessKeyId") or not key.get("SecretKey"):
            raise Retryable("CreateAccessKey answered without the key it made.")
        return AccessKey(key_id=str(key["AccessKeyId"]), secret=str(key["SecretKey"]))

    def revoke(self, bucket: str, key_id: str) -> None:
        self._delete(_user_name(bucket), key_id)

    def forget(self, bucket: str) -> None:
        user = _user_name(bucket)
        for key_id in self._key_ids(user, None):
            self._delete(user, key_id)
        try:
            self.adapter._call("DeleteUser", {"UserName": user})
        except OutscaleRefused as error:
            if not error.coded(_USER_ABSENT_CODES):
                raise

    def _key_ids(self, user: str, token: str | None) -> list[str]:
        params: dict[str, Any] = {"UserName": user}
        if token is not None:
            params["Tag"] = token
        try:
            answer = self.adapter._call("ReadAccessKeys", params)
        except OutscaleRefused as error:
            if error.coded(_USER_ABSENT_CODES):
                return []
            raise
        return [
            str(key["AccessKeyId"])
            for key in answer.get("AccessKeys") or []
            if isinstance(key, dict)
            and key.get("AccessKeyId")
            and (token is None or key.get("Tag") == token)
        ]

    def _delete(self, user: str, key_id: str) -> None:
        """Deactivate, then delete (OUTSCALE deletes only inactive keys of EIM users)."""
        for action, params in (
            ("UpdateAccessKey", {"AccessKeyId": key_id, "UserName": user, "State": "INACTIVE"}),
            ("DeleteAccessKey", {"AccessKeyId": key_id, "UserName": user}),
        ):
            try:
                self.adapter._call(action, params)
            except OutscaleRefused as error:
                if error.coded(_KEY_ABSENT_CODES | _USER_ABSENT_CODES):
                    return
                raise

    def _account(self) -> str:
        if self._account_id is None:
            accounts = self.adapter._call("ReadAccounts", {}).get("Accounts")
            first = accounts[0] if isinstance(accounts, list) and accounts else None
            account_id = first.get("AccountId") if isinstance(first, dict) else None
            if not isinstance(account_id, str) or not account_id.isdigit():
                raise Retryable("ReadAccounts answered without the account's id.")
            self._account_id = account_id
        return self._account_id


# -- pure helpers -------------------------------------------------------------------------------


def _vm_id(vm: Any) -> str:
    return str(vm.get("VmId") or "") if isinstance(vm, Mapping) else ""


def _volume_id(volume: Any) -> str:
    return str(volume.get("VolumeId") or "") if isinstance(volume, Mapping) else ""


def _link(volume: Mapping[str, Any]) -> dict[str, Any] | None:
    """The volume's attachment, if it is attached or being attached."""
    for link in volume.get("LinkedVolumes") or []:
        if (
            isinstance(link, dict)
            and link.get("VmId")
            and link.get("State", "attached")
            in (
                "attaching",
                "attached",
            )
        ):
            return link
    return None


def _attached_to(volume: Mapping[str, Any]) -> str | None:
    link = _link(volume)
    return str(link["VmId"]) if link else None


def _user_name(bucket: str) -> str:
    """The EIM user of a bucket: its name (bucket names fit EIM's user-name rules)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,62}", bucket):
        raise Permanent(f"{bucket!r} is not a bucket name.", code="invalid_request")
    return bucket


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
