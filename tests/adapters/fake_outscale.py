"""A fake Outscale API (OAPI) on 127.0.0.1, for the Outscale adapter's tests and the contract suite.

It speaks the subset the adapter uses: `POST /api/v1/<Action>` with a JSON body, answers in
Outscale's envelopes (`ResponseContext`, and `Errors: [{Type, Code, Details}]` on failure),
and keeps VMs, volumes, EIM users and their access keys in memory. OOS (buckets) is not here:
the harness points the adapter at the local S3 of `tests.adapters.moto_s3`.

Requests must be signed (OSC4-HMAC-SHA256) with the one key pair it knows: the signature is
recomputed here, independently of the SDK, so a wrong secret key is refused with 401 just like
a wrong access key.

Faults from a `FaultPlan` are applied to the main call of each adapter operation:

| API call                          | Operation       |
|-----------------------------------|-----------------|
| ReadVmTypes                       | list_offers     |
| CreateVms                         | provision       |
| ReadVms filtered by VmIds         | get             |
| ReadVms filtered by ClientTokens  | find_by_token   |
| StartVms / StopVms / RebootVms    | action          |
| DeleteVms                         | deprovision     |
| CreateVolume                      | provision       |
| ReadVolumes by VolumeIds          | get             |
| ReadVolumes by ClientTokens       | find_by_token   |
| UpdateVolume / Link / UnlinkVolume| action          |
| DeleteVolume                      | deprovision     |
| CreateAccessKey / DeleteAccessKey | action          |

CreateTags (the adapter's follow-up to creates), the other EIM calls and ReadAccounts take no
fault.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response

from providers.faults import Fault, FaultPlan, Operation
from providers.outscale import OutscaleAdapter
from tests.adapters import moto_s3
from tests.adapters.harness import HANG_SECONDS, Harness, serve_wsgi, test_context

ACCESS_KEY = "AKFAKEOUTSCALE00000001"
SECRET_KEY = "fake-outscale-secret-0123456789abcdef"
REGION = "eu-west-2"
SKU = "tinav5.c2r4p2"
IMAGE = "ami-fa4e0001"
ACCOUNT_ID = "123456789012"
VOLUME_TYPES = ("standard", "gp2", "io1")
VOLUME_SKU = "gp2"
MAX_KEYS_PER_USER = 10  # OUTSCALE's limit

VM_TYPES: tuple[dict[str, Any], ...] = (
    {"VmTypeName": "tinav5.c1r1p2", "VcoreCount": 1, "MemorySize": 1.0, "Gpu": 0, "Eth": 2},
    {"VmTypeName": SKU, "VcoreCount": 2, "MemorySize": 4.0, "Gpu": 0, "Eth": 2},
    {
        "VmTypeName": "tinav5.c4r16p1",
        "VcoreCount": 4,
        "MemorySize": 16.5,
        "Gpu": 0,
        "Eth": 4,
        "VolumeCount": 2,
        "VolumeSize": 50,
        "EphemeralsType": "local",
    },
)

_AUTHORIZATION = re.compile(
    r"^OSC4-HMAC-SHA256 Credential=(?P<ak>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/osc4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)


class ApiError(Exception):
    """An error answer in Outscale's envelope."""

    def __init__(self, status: int, type_: str, code: str = "", details: str = "") -> None:
        super().__init__(details or type_)
        self.status, self.type, self.code, self.details = status, type_, code, details


def _no_such_vm(ref: str) -> ApiError:
    return ApiError(400, "InvalidResource", "5063", f"The VmId '{ref}' does not exist.")


def _no_such_volume(ref: str) -> ApiError:
    return ApiError(400, "InvalidResource", "5064", f"The VolumeId '{ref}' does not exist.")


def _no_such_user(name: str) -> ApiError:
    return ApiError(400, "InvalidResource", "5075", f"The user '{name}' does not exist.")


_DEVICE_NAME = re.compile(r"^/dev/(sd|xvd)[b-z][a-z]?$")
_USER_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")


class FakeOutscale:
    """The WSGI app. `page_size` caps Read* pages so pagination is exercised."""

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        region: str = REGION,
        page_size: int = 2,
    ) -> None:
        self.faults = faults or FaultPlan()
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.page_size = page_size
        self.vms: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}  # by name
        self.access_keys: dict[str, dict[str, Any]] = {}  # by id, with UserName and SecretKey
        self.calls: list[str] = []  # every authenticated action, in order
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # every call and its body
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ReadVmTypes": self._read_vm_types,
            "CreateVms": self._create_vms,
            "ReadVms": self._read_vms,
            "StartVms": self._start_vms,
            "StopVms": self._stop_vms,
            "RebootVms": self._reboot_vms,
            "DeleteVms": self._delete_vms,
            "CreateTags": self._create_tags,
            "CreateVolume": self._create_volume,
            "ReadVolumes": self._read_volumes,
            "UpdateVolume": self._update_volume,
            "LinkVolume": self._link_volume,
            "UnlinkVolume": self._unlink_volume,
            "DeleteVolume": self._delete_volume,
            "ReadAccounts": self._read_accounts,
            "CreateUser": self._create_user,
            "DeleteUser": self._delete_user,
            "CreateAccessKey": self._create_access_key,
            "ReadAccessKeys": self._read_access_keys,
            "UpdateAccessKey": self._update_access_key,
            "DeleteAccessKey": self._delete_access_key,
        }

    # -- the cloud's side, for tests --------------------------------------------------------

    def with_token(self, token: str) -> list[dict[str, Any]]:
        """Live VMs carrying `token` (as client token or `broker-order` tag)."""
        with self._lock:
            return [
                vm
                for vm in self.vms.values()
                if vm["State"] != "terminated" and _carries(vm, token)
            ]

    def count_with_token(self, token: str) -> int:
        return len(self.with_token(token))

    def terminate(self, ref: str) -> None:
        """Delete a VM behind the adapter's back (it stays listed as terminated)."""
        with self._lock:
            if ref in self.vms:
                self._terminated(self.vms[ref])

    def volumes_with_token(self, token: str) -> list[dict[str, Any]]:
        """Volumes carrying `token` (as client token or `broker-order` tag)."""
        with self._lock:
            return [volume for volume in self.volumes.values() if _carries(volume, token)]

    def count_volumes_with_token(self, token: str) -> int:
        return len(self.volumes_with_token(token))

    def delete_volume(self, ref: str) -> None:
        """Delete a volume behind the adapter's back (attached or not)."""
        with self._lock:
            self.volumes.pop(ref, None)

    def keys_of(self, user: str) -> list[dict[str, Any]]:
        """The access keys of an EIM user (secret keys included)."""
        with self._lock:
            return [dict(k) for k in self.access_keys.values() if k["UserName"] == user]

    # -- WSGI ---------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        return self._respond(request)(environ, start_response)

    def _respond(self, request: Request) -> Response:
        match = re.fullmatch(r"/api/v1/([A-Za-z]+)", request.path)
        if request.method != "POST" or match is None:
            return _error(ApiError(404, "NotFound", details="No such API path."))
        action = match.group(1)
        raw = request.get_data()
        try:
            self._authenticate(request, raw)
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ApiError(400, "InvalidParameterValue", details="The body is not an object.")
            handler = self._handlers.get(action)
            if handler is None:
                raise ApiError(400, "InvalidAction", details=f"Unknown action {action}.")
            with self._lock:
                self.calls.append(action)
                self.bodies.append((action, body))
            return self._run(action, body, handler)
        except ApiError as error:
            return _error(error)
        except ValueError:
            return _error(ApiError(400, "InvalidParameterValue", details="Malformed JSON."))

    def _run(
        self,
        action: str,
        body: dict[str, Any],
        handler: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Response:
        operation = _operation(action, body)
        fault = self.faults.next(operation) if operation is not None else None
        if fault is Fault.TIMEOUT_BEFORE:
            time.sleep(HANG_SECONDS)
            raise ApiError(503, "ServiceUnavailable", details="Timed out before doing anything.")
        if fault is Fault.SERVER_ERROR:
            raise ApiError(503, "ServiceUnavailable", details="Try again later.")
        if fault is Fault.THROTTLED:
            response = _error(ApiError(429, "RequestLimitExceeded", details="Slow down."))
            response.headers["Retry-After"] = str(self.faults.retry_after_seconds)
            return response
        if fault is Fault.QUOTA_EXCEEDED:
            # What Outscale answers when an account's quota is used up.
            code, details = {
                "CreateVolume": ("10018", "too-many-volumes"),
                "CreateAccessKey": ("10005", "too-many-accesskeys"),
            }.get(action, ("10029", "too-many-cores"))
            raise ApiError(400, "TooManyResources (QuotaExceded)", code, details)
        if fault is Fault.DELETED_OUT_OF_BAND:
            for ref in self._named_vms(body):
                self.terminate(ref)
            for ref in self._named_volumes(body):
                self.delete_volume(ref)
        with self._lock:
            answer = handler(body)
        if fault is Fault.TIMEOUT_AFTER_COMMIT:
            time.sleep(HANG_SECONDS)
        return _json(200, answer)

    def _authenticate(self, request: Request, body: bytes) -> None:
        match = _AUTHORIZATION.match(request.headers.get("Authorization", ""))
        if match is None or match["ak"] != self.access_key:
            presented = match["ak"] if match else "none"
            # Outscale-like: the refusal names the key it did not know.
            raise ApiError(401, "AccessDenied", "1", f"Unknown access key {presented}.")
        date_iso = request.headers.get("X-Osc-Date", "")
        scope = f"{match['date']}/{match['region']}/{match['service']}/osc4_request"
        values = {
            "content-type": request.headers.get("Content-Type", ""),
            # The SDK signs the host without its port.
            "host": request.host.rsplit(":", 1)[0],
            "x-osc-date": date_iso,
        }
        signed = match["signed"].split(";")
        canonical = "\n".join(
            [
                request.method,
                request.path,
                "",
                "".join(f"{name}:{values.get(name, '')}\n" for name in signed),
                match["signed"],
                hashlib.sha256(body).hexdigest(),
            ]
        )
        to_sign = "\n".join(
            ["OSC4-HMAC-SHA256", date_iso, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("OSC4" + self.secret_key).encode()
        for part in (match["date"], match["region"], match["service"], "osc4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if (
            not hmac.compare_digest(expected, match["signature"])
            or match["region"] != self.region
            or not date_iso.startswith(match["date"])
        ):
            raise ApiError(401, "AccessDenied", "1", "The request signature does not match.")

    # -- actions (called with the lock held) ---------------------------------------------------

    def _read_vm_types(self, body: dict[str, Any]) -> dict[str, Any]:
        names = (body.get("Filters") or {}).get("VmTypeNames")
        found = [dict(t) for t in VM_TYPES if not names or t["VmTypeName"] in names]
        return self._page(body, "VmTypes", found)

    def _create_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        image, vm_type, token = body.get("ImageId"), body.get("VmType"), body.get("ClientToken")
        if not image:
            raise ApiError(400, "MissingParameter", details="ImageId is required.")
        if vm_type not in {t["VmTypeName"] for t in VM_TYPES}:
            raise ApiError(400, "InvalidResource", "5024", f"No such VM type {vm_type}.")
        if token:
            # Idempotency: the VM made for this token, whatever its state now.
            for vm in self.vms.values():
                if vm["ClientToken"] == token:
                    if (vm["ImageId"], vm["VmType"]) != (image, vm_type):
                        raise ApiError(400, "InvalidParameterValue", "4091", "token-mismatch")
                    return {"Vms": [dict(vm)], "ResponseContext": _context()}
        number = next(self._ids)
        vm = {
            "VmId": f"i-{number:08x}",
            "State": "running",
            "StateReason": "",
            "VmType": vm_type,
            "ImageId": image,
            "ClientToken": token or "",
            "CreationDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "PrivateIp": f"10.0.{number // 250}.{number % 250 + 4}",
            "Placement": {
                "SubregionName": (body.get("Placement") or {}).get("SubregionName")
                or f"{self.region}a",
                "Tenancy": "default",
            },
            "SubnetId": body.get("SubnetId", ""),
            "KeypairName": body.get("KeypairName", ""),
            "SecurityGroups": [{"SecurityGroupId": g} for g in body.get("SecurityGroupIds", [])],
            "Tags": [],
        }
        self.vms[vm["VmId"]] = vm
        return {"Vms": [dict(vm)], "ResponseContext": _context()}

    def _read_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        filters = body.get("Filters") or {}
        found = [
            dict(vm)
            for vm in self.vms.values()
            if _matches(vm.get("VmId"), filters.get("VmIds"))
            and _matches(vm.get("ClientToken"), filters.get("ClientTokens"))
            and _matches(vm.get("State"), filters.get("VmStateNames"))
            and all(
                any(f"{t['Key']}={t['Value']}" == wanted for t in vm["Tags"])
                for wanted in filters.get("Tags") or []
            )
        ]
        return self._page(body, "Vms", found)

    def _start_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._transition(body, {"stopped": "running", "running": "running"})

    def _stop_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._transition(body, {"running": "stopped", "stopped": "stopped"})

    def _reboot_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._transition(body, {"running": "running"})

    def _delete_vms(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self._transition(
            body, {state: "terminated" for state in ("running", "stopped", "terminated")}
        )
        for ref in _strings(body.get("VmIds")):
            self._terminated(self.vms[ref])
        return answer

    def _create_tags(self, body: dict[str, Any]) -> dict[str, Any]:
        resources = [self._taggable(ref) for ref in body.get("ResourceIds") or []]
        for resource in resources:
            for tag in body.get("Tags") or []:
                resource["Tags"] = [t for t in resource["Tags"] if t["Key"] != tag["Key"]]
                resource["Tags"].append(
                    {"Key": str(tag["Key"]), "Value": str(tag.get("Value", ""))}
                )
        return {"ResponseContext": _context()}

    # -- volumes -----------------------------------------------------------------------------

    def _create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        volume_type = body.get("VolumeType") or "standard"
        size, token, subregion = (
            body.get("Size"),
            body.get("ClientToken"),
            body.get("SubregionName"),
        )
        iops = body.get("Iops")
        if volume_type not in VOLUME_TYPES:
            raise ApiError(400, "InvalidParameterValue", "4045", f"No volume type {volume_type}.")
        if not isinstance(size, int) or not 1 <= size <= 14901:
            raise ApiError(400, "InvalidParameterValue", "4078", "invalid-volume-size")
        if not isinstance(subregion, str) or not re.fullmatch(
            re.escape(self.region) + "[a-z]", subregion
        ):
            raise ApiError(400, "InvalidParameterValue", "4047", f"No subregion {subregion}.")
        if iops is not None and volume_type != "io1":
            raise ApiError(400, "InvalidParameterCombination", "3002", "Iops is for io1 only.")
        if token:
            for volume in self.volumes.values():
                if volume["ClientToken"] == token:
                    if (volume["VolumeType"], volume["Size"]) != (volume_type, size):
                        raise ApiError(400, "InvalidParameterValue", "4091", "token-mismatch")
                    return {"Volume": dict(volume), "ResponseContext": _context()}
        number = next(self._ids)
        volume = {
            "VolumeId": f"vol-{number:08x}",
            "State": "available",
            "VolumeType": volume_type,
            "Size": size,
            "Iops": iops if iops is not None else (100 if volume_type == "gp2" else None),
            "SubregionName": subregion,
            "ClientToken": token or "",
            "CreationDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "LinkedVolumes": [],
            "Tags": [],
        }
        if volume["Iops"] is None:
            del volume["Iops"]
        self.volumes[volume["VolumeId"]] = volume
        # Outscale answers while the volume is still being made; it is usable on the next read.
        return {"Volume": {**volume, "State": "creating"}, "ResponseContext": _context()}

    def _read_volumes(self, body: dict[str, Any]) -> dict[str, Any]:
        filters = body.get("Filters") or {}
        found = [
            _copy(volume)
            for volume in self.volumes.values()
            if _matches(volume["VolumeId"], filters.get("VolumeIds"))
            and _matches(volume["ClientToken"], filters.get("ClientTokens"))
            and _matches(volume["State"], filters.get("VolumeStates"))
            and (
                not filters.get("LinkVolumeVmIds")
                or any(
                    link["VmId"] in filters["LinkVolumeVmIds"] for link in volume["LinkedVolumes"]
                )
            )
            and all(
                any(f"{t['Key']}={t['Value']}" == wanted for t in volume["Tags"])
                for wanted in filters.get("Tags") or []
            )
        ]
        return self._page(body, "Volumes", found)

    def _update_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(body.get("VolumeId"))
        size = body.get("Size")
        if size is not None:
            if not isinstance(size, int) or size < volume["Size"] or size > 14901:
                raise ApiError(400, "InvalidParameterValue", "4078", "invalid-volume-size")
            volume["Size"] = size
        return {"Volume": _copy(volume), "ResponseContext": _context()}

    def _link_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(body.get("VolumeId"))
        vm = self._vm(str(body.get("VmId") or ""))
        device = body.get("DeviceName")
        if not isinstance(device, str) or not _DEVICE_NAME.match(device):
            raise ApiError(400, "InvalidParameterValue", "4019", "invalid-device-name")
        if vm["State"] == "terminated":
            raise ApiError(400, "InvalidState", "6006", f"The VM is {vm['State']}.")
        if volume["State"] != "available":
            raise ApiError(400, "InvalidState", "6007", f"The volume is {volume['State']}.")
        if vm["Placement"]["SubregionName"] != volume["SubregionName"]:
            raise ApiError(400, "InvalidParameterValue", "4077", "not in the VM's subregion")
        for other in self.volumes.values():
            if any(
                link["VmId"] == vm["VmId"] and link["DeviceName"] == device
                for link in other["LinkedVolumes"]
            ):
                raise ApiError(409, "ResourceConflict", "9003", "device-conflict")
        volume["LinkedVolumes"] = [
            {
                "VmId": vm["VmId"],
                "VolumeId": volume["VolumeId"],
                "DeviceName": device,
                "State": "attached",
                "DeleteOnVmDeletion": False,
            }
        ]
        volume["State"] = "in-use"
        return {"ResponseContext": _context()}

    def _unlink_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(body.get("VolumeId"))
        if not volume["LinkedVolumes"]:
            raise ApiError(409, "ResourceConflict", "9063", "volume-not-in-use")
        volume["LinkedVolumes"] = []
        volume["State"] = "available"
        return {"ResponseContext": _context()}

    def _delete_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        volume = self._volume(body.get("VolumeId"))
        if volume["State"] == "in-use":
            raise ApiError(400, "InvalidState", "6007", "The volume is in-use.")
        del self.volumes[volume["VolumeId"]]
        return {"ResponseContext": _context()}

    # -- EIM ---------------------------------------------------------------------------------

    def _read_accounts(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Accounts": [{"AccountId": ACCOUNT_ID}], "ResponseContext": _context()}

    def _create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("UserName")
        if not isinstance(name, str) or not _USER_NAME.match(name):
            raise ApiError(400, "InvalidParameterValue", "4000", "invalid user name")
        if name in self.users:
            raise ApiError(409, "ResourceConflict", "9022", "duplicate-username")
        self.users[name] = {
            "UserName": name,
            "UserId": f"user-{next(self._ids):08x}",
            "Path": body.get("Path") or "/",
            "CreationDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        return {"User": dict(self.users[name]), "ResponseContext": _context()}

    def _delete_user(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._user(body.get("UserName"))
        if any(key["UserName"] == name for key in self.access_keys.values()):
            raise ApiError(409, "ResourceConflict", "9000", "The user still has access keys.")
        del self.users[name]
        return {"ResponseContext": _context()}

    def _create_access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._user(body.get("UserName"))
        if sum(key["UserName"] == name for key in self.access_keys.values()) >= MAX_KEYS_PER_USER:
            raise ApiError(400, "TooManyResources (QuotaExceded)", "10005", "too-many-accesskeys")
        key = {
            "AccessKeyId": f"AKFAKEEIM{next(self._ids):013d}",
            "SecretKey": uuid.uuid4().hex + uuid.uuid4().hex[:8],
            "State": "ACTIVE",
            "Tag": str(body.get("Tag") or ""),
            "UserName": name,
            "CreationDate": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        self.access_keys[key["AccessKeyId"]] = key
        shown = {k: v for k, v in key.items() if k != "UserName"}
        return {"AccessKey": shown, "ResponseContext": _context()}

    def _read_access_keys(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._user(body.get("UserName"))
        filters = body.get("Filters") or {}
        found = [
            {k: v for k, v in key.items() if k not in ("SecretKey", "UserName")}
            for key in self.access_keys.values()
            if key["UserName"] == name
            and (not body.get("Tag") or key["Tag"] == body["Tag"])
            and _matches(key["AccessKeyId"], filters.get("AccessKeyIds"))
            and _matches(key["State"], filters.get("States"))
        ]
        return {"AccessKeys": found, "ResponseContext": _context()}

    def _update_access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._access_key(body)
        if body.get("State") in ("ACTIVE", "INACTIVE"):
            key["State"] = body["State"]
        return {"AccessKey": {k: v for k, v in key.items() if k != "SecretKey"}}

    def _delete_access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._access_key(body)
        if key["State"] != "INACTIVE":
            # OUTSCALE deletes an EIM user's key only once it is inactive.
            raise ApiError(400, "InvalidState", "6003", "The access key is still ACTIVE.")
        del self.access_keys[key["AccessKeyId"]]
        return {"ResponseContext": _context()}

    # -- helpers ---------------------------------------------------------------------------------

    def _transition(self, body: dict[str, Any], moves: dict[str, str]) -> dict[str, Any]:
        vms = [self._vm(ref) for ref in _strings(body.get("VmIds"))]
        if not vms:
            raise ApiError(400, "MissingParameter", details="VmIds is required.")
        for vm in vms:  # all or nothing, like the API
            if vm["State"] not in moves:
                raise ApiError(400, "InvalidState", "6006", f"The VM is {vm['State']}.")
        changes = []
        for vm in vms:
            changes.append(
                {
                    "VmId": vm["VmId"],
                    "PreviousState": vm["State"],
                    "CurrentState": moves[vm["State"]],
                }
            )
            vm["State"] = moves[vm["State"]]
        return {"Vms": changes, "ResponseContext": _context()}

    def _vm(self, ref: str) -> dict[str, Any]:
        vm = self.vms.get(ref)
        if vm is None:
            raise _no_such_vm(ref)
        return vm

    def _volume(self, ref: Any) -> dict[str, Any]:
        volume = self.volumes.get(str(ref or ""))
        if volume is None:
            raise _no_such_volume(str(ref or ""))
        return volume

    def _taggable(self, ref: str) -> dict[str, Any]:
        return self.volumes[ref] if ref in self.volumes else self._vm(ref)

    def _user(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self.users:
            raise _no_such_user(str(name or ""))
        return name

    def _access_key(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._user(body.get("UserName"))
        key = self.access_keys.get(str(body.get("AccessKeyId") or ""))
        if key is None or key["UserName"] != name:
            raise ApiError(400, "InvalidResource", "5027", "no-such-key")
        return key

    def _terminated(self, vm: dict[str, Any]) -> None:
        """A VM terminated: its data volumes are detached (they are not deleted with it)."""
        vm["State"] = "terminated"
        for volume in self.volumes.values():
            if any(link["VmId"] == vm["VmId"] for link in volume["LinkedVolumes"]):
                volume["LinkedVolumes"] = []
                volume["State"] = "available"

    def _named_volumes(self, body: dict[str, Any]) -> list[str]:
        """The volumes a call is about: by id, or by the client token it names."""
        filters = body.get("Filters") or {}
        refs = _strings([body.get("VolumeId")]) + _strings(filters.get("VolumeIds"))
        tokens = _strings(filters.get("ClientTokens")) + _strings([body.get("ClientToken")])
        with self._lock:
            refs += [v["VolumeId"] for v in self.volumes.values() if v["ClientToken"] in tokens]
        return refs

    def _named_vms(self, body: dict[str, Any]) -> list[str]:
        """The VMs a call is about: by id, or by the client token it names."""
        filters = body.get("Filters") or {}
        refs = _strings(body.get("VmIds")) + _strings(filters.get("VmIds"))
        tokens = _strings(filters.get("ClientTokens")) + _strings([body.get("ClientToken")])
        with self._lock:
            refs += [vm["VmId"] for vm in self.vms.values() if vm["ClientToken"] in tokens]
        return refs

    def _page(self, body: dict[str, Any], key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        size = min(int(body.get("ResultsPerPage") or 100), self.page_size)
        start = int(body.get("NextPageToken") or 0)
        answer: dict[str, Any] = {key: items[start : start + size], "ResponseContext": _context()}
        if start + size < len(items):
            answer["NextPageToken"] = str(start + size)
        return answer


def _operation(action: str, body: dict[str, Any]) -> Operation | None:
    if action in ("ReadVms", "ReadVolumes"):
        filters = body.get("Filters") or {}
        if filters.get("ClientTokens") or filters.get("Tags"):
            return Operation.FIND_BY_TOKEN
        return Operation.GET if filters.get("VmIds") or filters.get("VolumeIds") else None
    return {
        "ReadVmTypes": Operation.LIST_OFFERS,
        "CreateVms": Operation.PROVISION,
        "StartVms": Operation.ACTION,
        "StopVms": Operation.ACTION,
        "RebootVms": Operation.ACTION,
        "DeleteVms": Operation.DEPROVISION,
        "CreateVolume": Operation.PROVISION,
        "UpdateVolume": Operation.ACTION,
        "LinkVolume": Operation.ACTION,
        "UnlinkVolume": Operation.ACTION,
        "DeleteVolume": Operation.DEPROVISION,
        "CreateAccessKey": Operation.ACTION,
        "DeleteAccessKey": Operation.ACTION,
    }.get(action)


def _carries(resource: dict[str, Any], token: str) -> bool:
    return resource["ClientToken"] == token or any(
        t["Key"] == "broker-order" and t["Value"] == token for t in resource["Tags"]
    )


def _copy(volume: dict[str, Any]) -> dict[str, Any]:
    return {**volume, "LinkedVolumes": [dict(link) for link in volume["LinkedVolumes"]]}


def _matches(value: Any, wanted: Iterable[Any] | None) -> bool:
    return not wanted or value in wanted


def _strings(values: Any) -> list[str]:
    return [v for v in values or [] if isinstance(v, str) and v]


def _context() -> dict[str, str]:
    return {"RequestId": str(uuid.uuid4())}


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _error(error: ApiError) -> Response:
    entry = {"Type": error.type, "Code": error.code, "Details": error.details}
    return _json(error.status, {"Errors": [entry], "ResponseContext": _context()})


@contextmanager
def serve(faults: FaultPlan | None = None, **kwargs: Any) -> Iterator[tuple[FakeOutscale, str]]:
    """Run a fake Outscale; yield it and its API endpoint (`http://127.0.0.1:<port>/api/v1`)."""
    cloud = FakeOutscale(faults=faults, **kwargs)
    with serve_wsgi(cloud) as url:
        yield cloud, f"{url}/api/v1"


def build_adapter(
    endpoint: str,
    tmp_path: Path | object,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    **settings: Any,
) -> OutscaleAdapter:
    return OutscaleAdapter(
        {"region": REGION, "endpoint": endpoint, "image": IMAGE, **settings},
        {"access_key": access_key, "secret_key": secret_key},
        test_context(tmp_path),
    )


@contextmanager
def harness(tmp_path: Path | object) -> Iterator[Harness]:
    """The contract suite's view of the Outscale adapter, against a fresh fake cloud and the
    emptied local S3 (both honouring the same fault plan)."""
    faults = FaultPlan()
    with moto_s3.moto_s3(faults) as (s3_endpoint, _), serve(faults) as (cloud, endpoint):
        yield Harness(
            build=lambda: build_adapter(endpoint, tmp_path, oos_endpoint=s3_endpoint),
            faults=faults,
            count_with_token=cloud.count_with_token,
            delete_out_of_band=cloud.terminate,
            sku=SKU,
            region=REGION,
            features=frozenset(OutscaleAdapter.features),
            volume_sku=VOLUME_SKU,
            count_volumes_with_token=cloud.count_volumes_with_token,
            delete_volume_out_of_band=cloud.delete_volume,
            count_buckets_with_token=moto_s3.count_buckets_with_token,
            put_object=moto_s3.put_object,
        )


@contextmanager
def fake_outscale_cloud(
    tmp_path: Path | object, faults: FaultPlan | None = None, region: str = REGION
) -> Iterator[dict[str, Any]]:
    """An Outscale account for an end-to-end test of the broker: a fake Outscale API and the
    local S3 as its OOS, sharing one fault plan. Yields a dict with the adapter's `settings`
    and `credentials` (what an operator registers for an `outscale` provider; the broker's
    `HttpPolicy` must admit private addresses, as in tests), the `cloud` (`FakeOutscale`, for
    cloud-side checks), the `s3_endpoint` and the fault plan (`faults`). `region` is the
    account's region (the broker's region code of the offers it sells). `tmp_path` is unused
    (kept for the shape of the other helpers)."""
    plan = faults if faults is not None else FaultPlan()
    with moto_s3.moto_s3(plan) as (s3_endpoint, _), serve(plan, region=region) as (cloud, endpoint):
        yield {
            "settings": {
                "region": region,
                "endpoint": endpoint,
                "oos_endpoint": s3_endpoint,
                "image": IMAGE,
            },
            "credentials": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
            "cloud": cloud,
            "s3_endpoint": s3_endpoint,
            "faults": plan,
        }
