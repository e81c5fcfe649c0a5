"""Providers: who sells through the broker, where their data centres are, which law reaches
them and which certifications back their claims."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.db import Database
from broker.errors import NotFound, ValidationFailed
from broker.models import Offer, Organization, OrganizationKind, Provider
from broker.services import adapters, audit, evidence, offers
from broker.services.naming import unique_name_key
from broker.services.pagination import Page, paginate
from broker.services.preconditions import IfMatch
from providers.http import HttpPolicy

# The fields of a provider document that are sovereignty claims (evidence).
CLAIMS = frozenset({"regions", "jurisdiction", "compliance"})

# Endpoints must be public https unless the caller passes the tests' permissive policy.
STRICT = HttpPolicy()


def snapshot(provider: Provider) -> dict[str, Any]:
    """The provider as audited (adapter credentials never appear here; its evidence is
    audited record by record)."""
    return audit.snapshot(provider)


def _apply(provider: Provider, data: dict[str, Any], http: HttpPolicy) -> None:
    """The fields of a provider that are not sovereignty claims (those are evidence)."""
    if "adapter" in data or "adapter_config" in data:
        name = data.get("adapter", provider.adapter)
        config = data.get("adapter_config", provider.adapter_config or {})
        data = {**data, "adapter_config": adapters.check_settings(name, config, http)}
    for name in ("name", "adapter", "adapter_config", "state"):
        if name in data:
            setattr(provider, name, data[name])


def create_provider(
    session: Session,
    actor: Caller | None,
    data: dict[str, Any],
    now: datetime,
    *,
    http: HttpPolicy = STRICT,
) -> Provider:
    """Register a provider operated by a provider organization (admin). The regions,
    jurisdiction and certifications it is given are the consortium's word: verified."""
    operator = session.get(Organization, data["organization_id"])
    if operator is None:
        raise NotFound("No such organization.")
    if operator.kind is not OrganizationKind.PROVIDER:
        raise ValidationFailed(
            errors={"organization_id": ["Must name an organization of kind provider."]}
        )
    key = unique_name_key(session, Provider, data["name"])
    claimed = data["jurisdiction"]
    # Until its evidence is recorded (below), the provider counts as exposed to foreign law.
    provider = Provider(
        id=uuid.uuid4(),
        organization_id=operator.id,
        name_key=key,
        regions=[],
        evidence=[],
        operator_country=claimed["operator_country"],
        extraterritorial_exposure=[],
        exposed=True,
    )
    _apply(provider, data, http)
    session.add(provider)
    evidence.record_claims(session, actor, provider, data, now)
    session.flush()
    audit.record(
        session,
        actor,
        "provider.created",
        "provider",
        provider.id,
        organization_id=operator.id,
        after=snapshot(provider),
    )
    return provider


def get_provider(session: Session, provider_id: uuid.UUID) -> Provider:
    """Providers are public within the broker: every client may read them."""
    provider = session.get(Provider, provider_id)
    if provider is None:
        raise NotFound("No such provider.")
    return provider


def operated_provider(session: Session, caller: Caller, provider_id: uuid.UUID) -> Provider:
    """A provider the caller may administer: admins any, operators their own (else 404)."""
    provider = get_provider(session, provider_id)
    if not access.may_administer_provider(caller, provider):
        raise NotFound("No such provider.")
    return provider


def list_providers(session: Session, *, limit: int, cursor: str | None) -> Page[Provider]:
    return paginate(
        session, select(Provider), [Provider.created_at, Provider.id], limit=limit, cursor=cursor
    )


def refuse_stranding(
    db: Database,
    caller: Caller,
    provider_id: uuid.UUID,
    changes: dict[str, Any],
    runtime: adapters.ProviderRuntime,
) -> None:
    """Refuse (422 `offers_stranded`) a change of `adapter` or `adapter_config` after which the
    provider's cloud would not sell the SKU of one of its published offers in the offer's
    region: every order of it would fail. Checked when the adapter can tell, and before the
    change's transaction begins (the cloud may be slow to answer)."""
    if not changes.keys() & {"adapter", "adapter_config"}:
        return
    with db.session(read_only=True) as session:
        provider = operated_provider(session, caller, provider_id)
        ask = adapters.strands(
            session,
            provider,
            runtime,
            adapter=changes.get("adapter", provider.adapter),
            settings=changes.get("adapter_config", provider.adapter_config or {}),
        )
    stranded = ask()
    if stranded:
        named = ", ".join(f"{offer.sku} in {offer.region_code}" for offer in stranded)
        raise ValidationFailed(
            f"With these settings the cloud would no longer sell what published offers are "
            f"for ({named}): retire those offers first, or keep their machine types.",
            code="offers_stranded",
            errors={
                "adapter_config": [
                    f"Offer {offer.id} ({offer.name}) is for {offer.sku} in {offer.region_code}."
                    for offer in stranded
                ]
            },
        )


def update_provider(
    session: Session,
    caller: Caller,
    provider_id: uuid.UUID,
    *,
    if_match: IfMatch,
    changes: dict[str, Any],
    now: datetime,
    http: HttpPolicy = STRICT,
) -> Provider:
    """Change a provider: admins any, its own operators theirs (but not its state), assessors
    its sovereignty claims only.

    Sovereignty fields (`regions`, `jurisdiction`, `compliance`) are claims: from the
    consortium they are verified at once; from the provider's operators they wait, pending,
    for an assessor, while the verified values keep counting.
    """
    if access.is_assessor_only(caller):
        provider = get_provider(session, provider_id)
        outside = sorted(set(changes) - CLAIMS)
        if outside:
            raise ValidationFailed(
                errors={name: ["Assessors change sovereignty claims only."] for name in outside}
            )
    else:
        provider = operated_provider(session, caller, provider_id)
    if "state" in changes and not access.is_admin(caller):
        raise ValidationFailed(errors={"state": ["Only the consortium can suspend a provider."]})
    if_match.check(provider.version, "provider")
    if "name" in changes:
        provider.name_key = unique_name_key(session, Provider, changes["name"], exclude=provider.id)
    before = snapshot(provider)
    _apply(provider, changes, http)
    evidence.record_claims(session, caller, provider, changes, now)
    provider.version += 1
    session.flush()
    if "name" in changes:  # its offers are found by its name too
        offers.refresh_search_text(session, Offer.provider_id == provider.id)
    audit.record(
        session,
        caller,
        "provider.updated",
        "provider",
        provider.id,
        organization_id=provider.organization_id,
        before=before,
        after=snapshot(provider),
    )
    return provider


def operated_by(session: Session, caller: Caller) -> list[Provider]:
    """The providers the caller operates (its organization's, with the provider role), by
    name: what a provider operator's console pages are about."""
    if not access.is_operator(caller):
        return []
    return list(
        session.scalars(
            select(Provider)
            .where(Provider.organization_id == caller.organization_id)
            .order_by(Provider.name)
        )
    )
