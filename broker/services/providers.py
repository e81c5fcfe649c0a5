"""Providers: who sells through the broker, where their data centres are, which law reaches
them and which certifications back their claims."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, PreconditionFailed, ValidationFailed
from broker.models import Certification, Organization, OrganizationKind, Provider, Role
from broker.services import adapters, audit
from broker.services.pagination import Page, paginate
from providers.http import HttpPolicy

# Endpoints must be public https unless the caller passes the tests' permissive policy.
STRICT = HttpPolicy()


def snapshot(provider: Provider) -> dict[str, Any]:
    """The provider as audited (adapter credentials never appear here)."""
    return {
        **audit.snapshot(provider),
        "certifications": [
            audit.snapshot(c, exclude=frozenset({"id", "provider_id"}))
            for c in provider.certifications
        ],
    }


def valid_schemes(provider: Provider, now: datetime) -> frozenset[str]:
    """Schemes for which the provider holds evidence valid at `now`."""
    return frozenset(
        c.scheme for c in provider.certifications if c.valid_from <= now < c.valid_until
    )


def _check_regions(regions: list[dict[str, Any]]) -> None:
    codes = [region["code"] for region in regions]
    if len(set(codes)) != len(codes):
        raise ValidationFailed(errors={"regions": ["Region codes must be unique."]})


def _certifications(evidence: list[dict[str, Any]]) -> list[Certification]:
    for index, item in enumerate(evidence):
        if item["valid_until"] <= item["valid_from"]:
            raise ValidationFailed(
                errors={f"compliance.{index}.valid_until": ["Must be after valid_from."]}
            )
    return [Certification(id=uuid.uuid4(), **item) for item in evidence]


def _apply(provider: Provider, data: dict[str, Any], http: HttpPolicy) -> None:
    if "adapter" in data or "adapter_config" in data:
        name = data.get("adapter", provider.adapter)
        config = data.get("adapter_config", provider.adapter_config or {})
        data = {**data, "adapter_config": adapters.check_settings(name, config, http)}
    if "regions" in data:
        _check_regions(data["regions"])
        provider.regions = data["regions"]
    if "compliance" in data:
        provider.certifications = _certifications(data["compliance"])
    if "jurisdiction" in data:
        jurisdiction = data["jurisdiction"]
        provider.operator_country = jurisdiction["operator_country"]
        provider.parent_country = jurisdiction.get("parent_country")
        exposure = sorted(set(jurisdiction.get("extraterritorial_exposure", [])))
        provider.extraterritorial_exposure = exposure
        provider.exposed = bool(exposure)
    for name in ("name", "adapter", "adapter_config", "state"):
        if name in data:
            setattr(provider, name, data[name])


def _name_taken(session: Session, name: str, exclude: uuid.UUID | None = None) -> bool:
    statement = select(Provider.id).where(Provider.name == name)
    if exclude is not None:
        statement = statement.where(Provider.id != exclude)
    return session.scalar(statement) is not None


def create_provider(
    session: Session,
    actor: Caller | None,
    data: dict[str, Any],
    *,
    http: HttpPolicy = STRICT,
) -> Provider:
    """Register a provider operated by a provider organization (admin)."""
    operator = session.get(Organization, data["organization_id"])
    if operator is None:
        raise NotFound("No such organization.")
    if operator.kind is not OrganizationKind.PROVIDER:
        raise ValidationFailed(
            errors={"organization_id": ["Must name an organization of kind provider."]}
        )
    if _name_taken(session, data["name"]):
        raise Conflict(f"A provider named {data['name']!r} exists already.", code="name_taken")
    provider = Provider(id=uuid.uuid4(), organization_id=operator.id)
    _apply(provider, data, http)
    session.add(provider)
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
    operator = Role.PROVIDER in caller.roles and caller.organization_id == provider.organization_id
    if not (caller.is_admin or operator):
        raise NotFound("No such provider.")
    return provider


def list_providers(session: Session, *, limit: int, cursor: str | None) -> Page[Provider]:
    return paginate(
        session, select(Provider), [Provider.created_at, Provider.id], limit=limit, cursor=cursor
    )


def update_provider(
    session: Session,
    caller: Caller,
    provider_id: uuid.UUID,
    *,
    expected_version: int,
    changes: dict[str, Any],
    http: HttpPolicy = STRICT,
) -> Provider:
    """Change a provider: admins any, its own operators theirs (but not its state)."""
    provider = operated_provider(session, caller, provider_id)
    if "state" in changes and not caller.is_admin:
        raise ValidationFailed(errors={"state": ["Only the consortium can suspend a provider."]})
    if provider.version != expected_version:
        raise PreconditionFailed("The provider changed since you read it; read it again.")
    if "name" in changes and _name_taken(session, changes["name"], exclude=provider.id):
        raise Conflict(f"A provider named {changes['name']!r} exists already.", code="name_taken")
    before = snapshot(provider)
    _apply(provider, changes, http)
    provider.version += 1
    session.flush()
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
