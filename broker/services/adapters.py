"""Between the broker and its provider adapters: checking a provider's adapter settings and
credentials, and building an adapter for it with its decrypted credentials."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.db import Database
from broker.errors import ValidationFailed
from broker.jobs.queue import JobFailed
from broker.models import Offer, OfferState, Provider
from broker.models.base import utcnow
from broker.services import credentials
from broker.services.credentials import Keyring
from providers import registry
from providers.base import (
    AdapterContext,
    Feature,
    Kind,
    ProviderAdapter,
    ProviderError,
    SettingsInvalid,
    kinds_of,
)
from providers.http import HttpPolicy, UnsafeEndpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderRuntime:
    """What building adapters needs from the configuration."""

    keyring: Keyring
    http: HttpPolicy
    state_dir: Path
    # The broker's clock (tests move it): simulated clouds keep the same time as the broker.
    clock: Callable[[], datetime] = utcnow

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProviderRuntime:
        return cls(
            clock=config.get("CLOCK", utcnow),
            keyring=Keyring.from_config(config),
            http=HttpPolicy(
                timeout=float(config["PROVIDER_TIMEOUT"]),
                allow_private=bool(config.get("PROVIDER_ALLOW_PRIVATE_ENDPOINTS")),
            ),
            state_dir=Path(config["PROVIDER_STATE_DIR"]),
        )


def adapter_class(name: str, field: str = "adapter") -> type[ProviderAdapter]:
    try:
        return registry.load(name)
    except registry.AdapterUnavailable as error:
        installed = ", ".join(registry.names()) or "none"
        raise ValidationFailed(errors={field: [f"{error} Installed: {installed}."]}) from None


def check_settings(name: str, settings: Mapping[str, Any], http: HttpPolicy) -> dict[str, Any]:
    """The settings cleaned by the adapter, or 422 naming the offending field."""
    try:
        return adapter_class(name).check_settings(settings, http)
    except SettingsInvalid as error:
        field = f"adapter_config.{error.field_name}" if error.field_name else "adapter_config"
        raise ValidationFailed(errors={field: [str(error)]}) from None


def check_credentials(name: str, values: Mapping[str, Any]) -> None:
    try:
        adapter_class(name).check_credentials(values)
    except SettingsInvalid as error:
        field = f"credentials.{error.field_name}" if error.field_name else "credentials"
        raise ValidationFailed(errors={field: [str(error)]}) from None


def adapter_for_job(
    session: Session, provider_id: uuid.UUID, config: Mapping[str, Any]
) -> ProviderAdapter:
    """`adapter_for` in a job: what retrying cannot mend (no provider, unusable settings or
    credentials) is a `JobFailed`."""
    provider = session.get(Provider, provider_id)
    if provider is None:
        raise JobFailed("The provider no longer exists.")
    try:
        return adapter_for(session, provider, ProviderRuntime.from_config(config))
    except (
        registry.AdapterUnavailable,
        SettingsInvalid,
        credentials.CredentialsUnreadable,
    ) as error:
        raise JobFailed(str(error)) from None


def machine_types(db: Database, offer_id: uuid.UUID, runtime: ProviderRuntime) -> set[str] | None:
    """The SKUs the cloud of the offer's provider sells now (for the offer's region, when the
    cloud says where), or None when its adapter cannot tell — no credentials yet, settings no
    longer usable, the cloud unreachable — and checks relying on it are skipped.

    The database is read in a short session of its own and the cloud called after it is
    closed: no transaction (on SQLite, no write lock) waits on a network call."""
    with db.session(read_only=True) as session:
        offer = session.get(Offer, offer_id)
        if offer is None:
            return None
        if offer.kind != "vm":
            return None  # clouds list their machine types only; storage is checked by kind
        region = offer.region_code
        adapter = adapter_or_none(session, offer.provider, runtime)
    listing = _listing(adapter, offer.provider_id)
    if listing is None:
        return None
    return {sku for sku, where in listing if where in (None, region)}


def strands(
    session: Session,
    provider: Provider,
    runtime: ProviderRuntime,
    *,
    adapter: str,
    settings: Mapping[str, Any],
) -> Callable[[], list[Offer] | None]:
    """A question to ask once `session` is closed: which of the provider's published offers
    its cloud would not sell in their region with the adapter `adapter` set up with `settings`
    (None when that adapter cannot tell). The cloud is called by the question, so that no
    transaction waits on it."""
    published = list(
        session.scalars(
            select(Offer)
            .where(Offer.provider_id == provider.id, Offer.state == OfferState.PUBLISHED)
            .order_by(Offer.sku, Offer.region_code)
        )
    )
    built = (
        adapter_or_none(session, provider, runtime, adapter=adapter, settings=settings)
        if published
        else None
    )

    def ask() -> list[Offer] | None:
        if not published:
            return []
        listing = _listing(built, provider.id)
        if listing is None or built is None:
            return None
        return [
            offer
            for offer in published
            if (
                offer.kind == Kind.VM
                and (offer.sku, None) not in listing
                and (offer.sku, offer.region_code) not in listing
            )
            or (offer.kind != Kind.VM and storage_refusal(built.features, offer) is not None)
        ]

    return ask


def storage_refusal(features: frozenset[Feature], offer: Offer) -> str | None:
    """Why a cloud with `features` cannot make what the storage `offer` sells, or None:
    `kind_not_sold` (no such kind), `immutability_unsupported` (a vault without object lock).
    Clouds list their machine types, not their storage: the adapter's features tell."""
    if Kind(offer.kind) not in kinds_of(features):
        return "kind_not_sold"
    if offer.immutability_days and Feature.OBJECT_LOCK not in features:
        return "immutability_unsupported"
    return None


def adapter_or_none(
    session: Session, provider: Provider, runtime: ProviderRuntime, **other: Any
) -> ProviderAdapter | None:
    try:
        return adapter_for(session, provider, runtime, **other)
    except (registry.AdapterUnavailable, ProviderError, credentials.CredentialsUnreadable) as error:
        log.info("machine types of provider %s unknown: %s", provider.id, error)
        return None


def _listing(
    adapter: ProviderAdapter | None, provider_id: uuid.UUID
) -> set[tuple[str, str | None]] | None:
    """What the cloud sells, as (SKU, region or None for everywhere); None when unknown."""
    if adapter is None:
        return None
    try:
        return {(spec.sku, spec.region) for spec in adapter.list_offers()}
    except (ProviderError, UnsafeEndpoint, OSError) as error:
        log.info("machine types of provider %s unknown: %s", provider_id, error)
        return None


def adapter_for(
    session: Session,
    provider: Provider,
    runtime: ProviderRuntime,
    *,
    adapter: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> ProviderAdapter:
    """An adapter for `provider`, with its credentials decrypted just now (its own adapter
    and settings, or the `adapter` and `settings` given: to try a change before making it).

    Raises `registry.AdapterUnavailable`, `SettingsInvalid` (settings re-checked: a name may
    resolve elsewhere than when it was configured) or `credentials.CredentialsUnreadable`.
    """
    secrets = credentials.load(session, provider.id, runtime.keyring)
    context = AdapterContext(
        provider_id=provider.id, state_dir=runtime.state_dir, http=runtime.http, clock=runtime.clock
    )
    return registry.build(
        adapter or provider.adapter,
        provider.adapter_config if settings is None else settings,
        secrets,
        context,
    )
