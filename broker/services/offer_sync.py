"""Offer sync: import a provider's machine types (from its adapter) as draft offers.

`request_sync` enqueues the job in the caller's transaction; `run_sync_job` is its handler.
For each machine type the adapter lists:

- no offer of that SKU yet → a new draft (no prices: its operator sets them, then publishes);
- the newest version is a draft → that draft's name and specs are updated when they differ;
- the newest version is published and its specs differ → its next version is made as a draft
  (prices carried over); the published version itself never changes;
- otherwise (same specs, or retired) → left alone.

A machine type in a region the provider does not declare is skipped and reported. Re-running
the job gives the same result, so a crash halfway through is harmless.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import Caller
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import Job, Offer, OfferState, OrganizationKind, Provider, Role
from broker.services import adapters, offers, providers
from broker.services.preconditions import IfMatch
from providers.base import OfferSpec

JOB_KIND = "provider.sync_offers"
DEFAULT_CURRENCY = "EUR"


def request_sync(session: Session, caller: Caller, provider_id: uuid.UUID) -> Job:
    """Queue a sync (admins, or the provider's operators). A sync already waiting is reused."""
    provider = providers.operated_provider(session, caller, provider_id)
    return enqueue(
        session,
        JOB_KIND,
        {"provider_id": str(provider.id), "requested_by": caller.client_id},
        organization_id=provider.organization_id,
        dedupe_key=f"{JOB_KIND}:{provider.id}",
    )


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    versioned: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "versioned": self.versioned,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


def _specs(spec: OfferSpec) -> dict[str, Any]:
    return {
        "vcpu": spec.vcpu,
        "ram_gib": spec.ram_gib,
        "disk_gib": spec.disk_gib,
        "gpu": spec.gpu,
    }


def _refusal(spec: OfferSpec) -> str | None:
    """Why the catalogue cannot hold this machine type as an offer (None: it can)."""
    if not re.match(offers.SKU_PATTERN, spec.sku):
        return "its name is not a valid SKU"
    if not spec.name.strip():
        return "it has no name"
    for name, value in _specs(spec).items():
        low, high = offers.SPEC_LIMITS[name]
        if not low <= value <= high:
            return f"{name} {value} is outside [{low}, {high}]"
    return None


def _same(offer: Offer, spec: OfferSpec, region: str) -> bool:
    return (
        offer.name == spec.name[:200]
        and offer.region_code == region
        and (offer.vcpu, offer.disk_gib, offer.gpu) == (spec.vcpu, spec.disk_gib, spec.gpu)
        and Decimal(offer.ram_gib) == offers.gib(spec.ram_gib)
    )


def sync_offers(
    session: Session, caller: Caller, provider: Provider, specs: list[OfferSpec]
) -> SyncReport:
    report = SyncReport()
    regions = [region["code"] for region in provider.regions]
    currency = session.scalar(
        select(Offer.currency)
        .where(Offer.provider_id == provider.id)
        .order_by(Offer.created_at.desc())
        .limit(1)
    )
    for spec in specs:
        refusal = _refusal(spec)
        if refusal is not None:
            report.skipped.append({"sku": spec.sku[:100], "reason": refusal})
            continue
        region = spec.region if spec.region is not None else regions[0]
        if region not in regions:
            report.skipped.append(
                {"sku": spec.sku, "reason": f"region {region!r} is not one of the provider's"}
            )
            continue
        changes = {"name": spec.name[:200], "region": region, "specs": _specs(spec)}
        newest = session.scalar(
            select(Offer)
            .where(Offer.provider_id == provider.id, Offer.sku == spec.sku)
            .order_by(Offer.version.desc())
            .limit(1)
        )
        if newest is None:
            offers.create_offer(
                session,
                caller,
                {
                    **changes,
                    "provider_id": provider.id,
                    "sku": spec.sku,
                    "kind": "vm",
                    "prices": [],
                },
                currency=currency or DEFAULT_CURRENCY,
            )
            report.created.append(spec.sku)
        elif newest.state is OfferState.RETIRED or _same(newest, spec, region):
            report.unchanged.append(spec.sku)
        else:
            edit = offers.edit_offer(
                session, caller, newest.id, if_match=IfMatch.of(newest.revision), changes=changes
            )
            (report.versioned if edit.created else report.updated).append(spec.sku)
    return report


def run_sync_job(context: JobContext, job: Job) -> dict[str, Any]:
    """The job handler: list the adapter's machine types, then write drafts in one
    transaction. Adapter errors propagate typed (retryable ones are retried)."""
    provider_id = uuid.UUID(job.payload["provider_id"])
    with context.db.transaction() as session:
        adapter = adapters.adapter_for_job(session, provider_id, context.config)
    specs = list(adapter.list_offers())  # outside any transaction: it is a network call
    with context.db.transaction() as session:
        provider = session.get(Provider, provider_id)
        if provider is None:
            raise JobFailed("The provider no longer exists.")
        # The job acts for whoever asked, as an operator of this provider.
        caller = Caller(
            client_id=str(job.payload.get("requested_by", "worker")),
            organization_id=provider.organization_id,
            organization_kind=OrganizationKind.PROVIDER,
            roles=frozenset({Role.PROVIDER}),
        )
        return sync_offers(session, caller, provider, specs).as_dict()


def latest_sync(session: Session, provider_id: uuid.UUID) -> Job | None:
    """The most recent offer sync asked for the provider (queued, running or finished)."""
    return session.scalar(
        select(Job)
        .where(Job.kind == JOB_KIND, Job.payload["provider_id"].as_string() == str(provider_id))
        .order_by(Job.created_at.desc())
        .limit(1)
    )
