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
    `unauthorized`, `unsupported_cloud`, `conflict`, `adapter_settings_invalid`."""

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
