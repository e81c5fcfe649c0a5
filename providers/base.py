"""The contract every provider adapter implements (Libcloud's driver shape, typed).

An adapter speaks one cloud's API and nothing else: no Flask, no broker database. The broker
gives it its settings (non-secret, e.g. the endpoint and region), its credentials (decrypted
just before the call) and an `AdapterContext` (the provider's id, a directory for local state,
and the HTTP policy every outbound call must follow).

Errors are typed so callers know what to do next:

- `Retryable`: nothing happened, or the call was safe to repeat; try again later.
- `Throttled(retry_after)`: the provider asked to wait `retry_after` seconds.
- `OutcomeUnknown`: a create may or may not have happened (timeout, lost answer, 5xx). Never
  create again before looking the instance up by its token: `ensure_provisioned` does it.
- `Permanent(code)`: retrying the same call cannot succeed (quota exceeded, bad flavor, …).

Three kinds of thing are sold (`Kind`). As in Libcloud, machines are the adapter itself (the
compute driver), block volumes are extra methods of the compute driver (Libcloud's
`NodeDriver.create_volume`, `attach_volume`, …: a volume attaches to that cloud's machines), and
object storage is a driver family of its own (Libcloud's `StorageDriver` and its containers),
which may speak another API than the compute one (Outscale's OOS speaks S3). An adapter says
what it sells in `features` and hands out the matching drivers: `volumes()` returns a
`VolumeDriver`, `object_storage()` an `ObjectStorageDriver`. Both keep the exactly-once
contract of machines: every create carries the order's token and is looked up by it first.
"""

from __future__ import annotations

import abc
import enum
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from providers.http import HttpPolicy

# Bumped when the abstract methods or value objects change incompatibly. The registry refuses
# a plugin written against another version.
CONTRACT_VERSION = 1


class InstanceState(enum.StrEnum):
    """Instance states as the broker knows them; each adapter maps its cloud's onto these."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    REBOOTING = "rebooting"
    DELETING = "deleting"
    DELETED = "deleted"
    ERROR = "error"
    UNKNOWN = "unknown"


class Kind(enum.StrEnum):
    """What an offer sells."""

    VM = "vm"
    VOLUME = "volume"  # block storage, attached to a machine of the same cloud and region
    OBJECT_STORAGE = "object_storage"  # a bucket; with a default retention, a vault


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    REBOOT = "reboot"


class Feature(enum.StrEnum):
    """Optional capabilities an adapter declares in `features`."""

    STOP_START = "stop_start"
    REBOOT = "reboot"
    USAGE = "usage"
    # The cloud itself deduplicates creates by token (e.g. Outscale's ClientToken).
    PROVIDER_IDEMPOTENCY = "provider_idempotency"
    # Block volumes (`volumes()`), and buckets (`object_storage()`).
    VOLUMES = "volumes"
    OBJECT_STORAGE = "object_storage"
    # Buckets with a default retention in compliance mode (write once, read many): vaults.
    OBJECT_LOCK = "object_lock"


def kinds_of(features: frozenset[Feature]) -> frozenset[Kind]:
    """The kinds of thing an adapter with `features` can make."""
    kinds = {Kind.VM}
    if Feature.VOLUMES in features:
        kinds.add(Kind.VOLUME)
    if Feature.OBJECT_STORAGE in features:
        kinds.add(Kind.OBJECT_STORAGE)
    return frozenset(kinds)


def order_token(order_id: uuid.UUID, index: int = 0) -> str:
    """The token (tag or client token) that ties a cloud instance to a broker order: one per
    machine of the order (`index` counts from 0)."""
    return f"broker-order-{order_id}-{index}"


@dataclass(frozen=True)
class OfferSpec:
    """A machine type as the cloud lists it (an OpenStack flavor, an Outscale VM type)."""

    sku: str
    name: str
    vcpu: int
    ram_gib: Decimal
    disk_gib: int
    gpu: int = 0
    region: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProvisionRequest:
    order_id: uuid.UUID
    sku: str
    region: str
    name: str
    image: str | None = None
    index: int = 0  # which machine of the order
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return order_token(self.order_id, self.index)


@dataclass(frozen=True)
class Instance:
    ref: str  # the cloud's own id of the instance
    state: InstanceState
    token: str | None = None
    sku: str | None = None
    region: str | None = None
    addresses: tuple[str, ...] = ()
    created_at: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeRequest:
    """A block volume to make for one order: `size_gib` of the `sku` volume type (a Cinder
    volume type, an Outscale volume type such as `gp2` or `io1`), with `iops` where the type
    takes them."""

    order_id: uuid.UUID
    sku: str
    region: str
    name: str
    size_gib: int
    encrypted: bool = True
    iops: int | None = None
    index: int = 0

    @property
    def token(self) -> str:
        return order_token(self.order_id, self.index)


@dataclass(frozen=True)
class Volume:
    ref: str
    state: InstanceState  # PENDING while created, RUNNING once usable (attached or not)
    size_gib: int
    token: str | None = None
    region: str | None = None
    attached_to: str | None = None  # the ref of the machine it is attached to
    encrypted: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BucketRequest:
    """A bucket to make for one order. `name` is what the bucket is called (DNS-safe, unique
    at the cloud: the broker derives it from the token); `retention_days` set makes it a vault
    (a default retention in compliance mode: no object can be deleted or overwritten before
    it is that old, by anybody)."""

    order_id: uuid.UUID
    sku: str
    region: str
    name: str
    encrypted: bool = True
    versioning: bool = False
    retention_days: int | None = None
    index: int = 0

    @property
    def token(self) -> str:
        return order_token(self.order_id, self.index)


@dataclass(frozen=True)
class Bucket:
    ref: str  # the bucket's name
    state: InstanceState
    endpoint: str  # the S3 (or Swift) endpoint its users connect to
    token: str | None = None
    region: str | None = None
    encrypted: bool = True
    versioning: bool = False
    retention_days: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AccessKey:
    """A key pair that reaches one bucket. Its `secret` never appears in a repr."""

    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Retained:
    """Objects a bucket holds under retention now, and until when the last one is held."""

    objects: int
    until: datetime | None = None


@dataclass(frozen=True)
class UsageSample:
    """A quantity of one metric consumed by one instance over `[start, end)`.

    `record_id` is the cloud's own identifier of the sample: replaying it must be harmless.
    """

    record_id: str
    ref: str
    metric: str
    quantity: Decimal
    start: datetime
    end: datetime
    token: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


class ProviderError(Exception):
    """Base of the typed adapter errors. The message never contains credentials."""


class Retryable(ProviderError):
    """Transient failure; the same call may be repeated later."""


class Throttled(Retryable):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(Retryable):
    """The call may have taken effect. Reconcile by token before creating again."""


class Permanent(ProviderError):
    """Codes used by the built-in adapters: `quota_exceeded`, `invalid_request`, `not_found`,
    `unauthorized`, `unsupported_cloud`, `conflict`, `adapter_settings_invalid`; for storage
    `unsupported` (the cloud does not sell that kind or feature), `volume_shrink` (volumes
    only grow), `retention_shortened` (a retention is never shortened) and `under_retention`
    (a bucket holding objects under retention cannot be deleted)."""

    def __init__(self, message: str, code: str = "provider_refused") -> None:
        super().__init__(message)
        self.code = code


class SettingsInvalid(Permanent):
    """The adapter's settings or credentials are unusable (missing field, unsafe endpoint)."""

    def __init__(self, message: str, field_name: str | None = None) -> None:
        super().__init__(message, code="adapter_settings_invalid")
        self.field_name = field_name


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AdapterContext:
    provider_id: uuid.UUID
    state_dir: Path  # where an adapter may keep local state (the simulated cloud does)
    http: HttpPolicy
    clock: Callable[[], datetime] = _utcnow


class ProviderAdapter(abc.ABC):
    """One cloud API. Subclasses set `name`, `features`, and implement the abstract methods.

    Instances are cheap and short-lived: the broker builds one per unit of work, so an adapter
    holds no state that must outlive it except what it keeps under `context.state_dir`.
    """

    name: ClassVar[str]
    contract_version: ClassVar[int] = CONTRACT_VERSION
    features: ClassVar[frozenset[Feature]] = frozenset()
    # Names of the settings (non-secret) and credentials (secret) the adapter reads.
    settings_fields: ClassVar[frozenset[str]] = frozenset()
    required_settings: ClassVar[frozenset[str]] = frozenset()
    credential_fields: ClassVar[frozenset[str]] = frozenset()
    required_credentials: ClassVar[frozenset[str]] = frozenset()
    # Settings holding URLs the adapter will call: checked by the endpoint policy.
    endpoint_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        settings: Mapping[str, Any],
        credentials: Mapping[str, str],
        context: AdapterContext,
    ) -> None:
        self.settings = self.check_settings(settings, context.http)
        self.check_credentials(credentials)
        self.credentials = dict(credentials)
        self.context = context

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
        """Validate settings (unknown or missing keys, unsafe endpoints); return them cleaned.

        Raises `SettingsInvalid` naming the offending field.
        """
        unknown = sorted(set(settings) - cls.settings_fields)
        if unknown:
            raise SettingsInvalid(f"Unknown setting {unknown[0]!r}.", unknown[0])
        for name in sorted(cls.required_settings - set(settings)):
            raise SettingsInvalid(f"Setting {name!r} is required.", name)
        for name in sorted(cls.endpoint_settings & set(settings)):
            value = settings[name]
            if not isinstance(value, str):
                raise SettingsInvalid(f"Setting {name!r} must be a URL.", name)
            try:
                http.check_url(value)
            except ValueError as error:
                raise SettingsInvalid(f"Setting {name!r}: {error}", name) from None
        return dict(settings)

    @classmethod
    def check_credentials(cls, credentials: Mapping[str, Any]) -> None:
        """Refuse credentials naming fields the adapter does not know, or missing some."""
        for key, value in credentials.items():
            if key not in cls.credential_fields:
                raise SettingsInvalid(f"Unknown credential {key!r}.", key)
            if not isinstance(value, str):
                raise SettingsInvalid(f"Credential {key!r} must be a string.", key)
        for key in sorted(cls.required_credentials):
            if not credentials.get(key):
                raise SettingsInvalid(f"Credential {key!r} is required.", key)

    def _scrub(self, text: str) -> str:
        """`text` with every credential value masked: clouds may echo what they were sent,
        and error messages end up in job records and logs."""
        for value in self.credentials.values():
            if value:
                text = text.replace(value, "***")
        return text

    @abc.abstractmethod
    def list_offers(self) -> Iterable[OfferSpec]:
        """The machine types the cloud sells (imported as draft offers by a sync)."""

    @abc.abstractmethod
    def provision(self, request: ProvisionRequest, idempotency_token: str) -> Instance:
        """Create an instance carrying `idempotency_token`. A clear refusal (quota, bad
        request, bad credentials) is `Permanent`, a 429 `Throttled`; any other failure must be
        raised as `OutcomeUnknown`."""

    @abc.abstractmethod
    def get(self, ref: str) -> Instance | None:
        """The instance, or None when the cloud no longer has it."""

    @abc.abstractmethod
    def find_by_token(self, token: str) -> Instance | None:
        """The live instance carrying `token`, or None."""

    @abc.abstractmethod
    def action(self, ref: str, action: Action) -> Instance:
        """Start, stop or reboot. `Permanent(code="not_found")` if the instance is gone."""

    @abc.abstractmethod
    def deprovision(self, ref: str) -> None:
        """Delete the instance. An instance already gone counts as deleted."""

    def volumes(self) -> VolumeDriver:
        """The cloud's block volumes (with `Feature.VOLUMES`)."""
        raise Permanent(f"{self.name} does not sell block volumes here.", code="unsupported")

    def object_storage(self) -> ObjectStorageDriver:
        """The cloud's object storage (with `Feature.OBJECT_STORAGE`)."""
        raise Permanent(f"{self.name} does not sell object storage here.", code="unsupported")

    def usage(self, since: datetime, until: datetime) -> Iterable[UsageSample]:
        """Usage the cloud reports for `[since, until)`; only with `Feature.USAGE`."""
        return ()

    def health(self) -> Health:
        """Whether the cloud answers with these settings and credentials."""
        try:
            list(self.list_offers())
        except ProviderError as error:
            return Health(False, str(error))
        return Health(True)

    def ensure_provisioned(self, request: ProvisionRequest) -> Instance:
        """Create the instance for `request` unless it exists already.

        This is what the broker calls, first time and on every retry: after an
        `OutcomeUnknown`, the instance made by the lost call is found by its token instead of
        being created twice.
        """
        existing = self.find_by_token(request.token)
        if existing is not None:
            return existing
        return self.provision(request, request.token)


class VolumeDriver(abc.ABC):
    """Block volumes of one cloud (Libcloud's volume methods of `NodeDriver`).

    Errors are typed as for machines; a create that may have happened is `OutcomeUnknown`,
    reconciled by `ensure_volume`. Faults injected into machine operations apply to the
    volume operations of the same shape (create → provision, get, find → find_by_token,
    resize/attach/detach → action, delete → deprovision)."""

    @abc.abstractmethod
    def create_volume(self, request: VolumeRequest, idempotency_token: str) -> Volume:
        """Create the volume carrying `idempotency_token`."""

    @abc.abstractmethod
    def get_volume(self, ref: str) -> Volume | None:
        """The volume, or None when the cloud no longer has it."""

    @abc.abstractmethod
    def find_volume(self, token: str) -> Volume | None:
        """The live volume carrying `token`, or None."""

    @abc.abstractmethod
    def resize_volume(self, ref: str, size_gib: int) -> Volume:
        """Grow the volume to `size_gib` (the same size again is harmless: a retry);
        `Permanent(code="volume_shrink")` for a smaller one."""

    @abc.abstractmethod
    def attach_volume(self, ref: str, instance_ref: str) -> Volume:
        """Attach the volume to the machine `instance_ref` (already attached there: done)."""

    @abc.abstractmethod
    def detach_volume(self, ref: str) -> Volume:
        """Detach the volume (not attached: done)."""

    @abc.abstractmethod
    def delete_volume(self, ref: str) -> None:
        """Delete the volume. One already gone counts as deleted."""

    def ensure_volume(self, request: VolumeRequest) -> Volume:
        """Create the volume for `request` unless its token finds it already."""
        existing = self.find_volume(request.token)
        if existing is not None:
            return existing
        return self.create_volume(request, request.token)


class ObjectStorageDriver(abc.ABC):
    """Buckets of one cloud (Libcloud's `StorageDriver` containers), with the keys that reach
    them and, with `Feature.OBJECT_LOCK`, a default retention that is never shortened."""

    @abc.abstractmethod
    def create_bucket(self, request: BucketRequest, idempotency_token: str) -> Bucket:
        """Create the bucket carrying `idempotency_token`; `Permanent(code="unsupported")` for
        a retention on a cloud without object lock."""

    @abc.abstractmethod
    def get_bucket(self, ref: str) -> Bucket | None:
        """The bucket, or None when the cloud no longer has it."""

    @abc.abstractmethod
    def find_bucket(self, token: str) -> Bucket | None:
        """The live bucket carrying `token`, or None."""

    @abc.abstractmethod
    def set_retention(self, ref: str, days: int) -> Bucket:
        """Set or extend the bucket's default retention to `days` (the same again is
        harmless); `Permanent(code="retention_shortened")` for fewer days than it has."""

    @abc.abstractmethod
    def retained(self, ref: str) -> Retained:
        """How many objects the bucket holds under retention now."""

    @abc.abstractmethod
    def delete_bucket(self, ref: str) -> None:
        """Delete the bucket and the objects it holds. One already gone counts as deleted;
        `Permanent(code="under_retention")` while some object is still under retention."""

    @abc.abstractmethod
    def issue_key(self, ref: str, token: str) -> AccessKey:
        """A new key pair that reaches the bucket `ref` (and nothing else it can help). `token`
        names what the key is for, so that a cloud that can look keys up finds a key issued by
        a call whose answer was lost."""

    @abc.abstractmethod
    def revoke_key(self, ref: str, key_id: str) -> None:
        """Revoke a key of the bucket (one already gone counts as revoked)."""

    def ensure_bucket(self, request: BucketRequest) -> Bucket:
        """Create the bucket for `request` unless its token finds it already."""
        existing = self.find_bucket(request.token)
        if existing is not None:
            return existing
        return self.create_bucket(request, request.token)
