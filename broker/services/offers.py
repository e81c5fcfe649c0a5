"""Offers: a provider's versioned catalogue entries, and the search agencies run over them.

Lifecycle: draft → published → retired. A draft may be edited; a published version never
changes — editing it creates the next version as a draft, and publishing that draft retires
the version it replaces. Only the provider's own operators see its drafts or change its offers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    SQLColumnExpression,
    and_,
    event,
    exists,
    false,
    func,
    inspect,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import InstrumentedAttribute, Mapper, Session, contains_eager

from billing.invoicing import STANDARD
from billing.money import MoneyError, parse_unit_price
from billing.rating import (
    KIND_METRICS,
    METRICS,
    STORED_GIB_BASIS,
    Price,
    Specs,
    Tier,
    monthly_price,
)
from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import (
    Offer,
    OfferCompliance,
    OfferState,
    Provider,
    ProviderState,
)
from broker.models.base import utcnow
from broker.services import adapters, audit, evidence
from broker.services.pagination import Page, paginate, paginate_rows
from broker.services.preconditions import IfMatch
from providers import registry

# Each sort's keys, before the offer id that breaks ties. Prices in different currencies do not
# compare, so a price sort groups offers by currency first (as `max_monthly_price` needs a
# `currency`); within one currency (or with the `currency` filter) it is a plain price order.
SORTS: dict[str, tuple[InstrumentedAttribute[Any], ...]] = {
    "monthly_price": (Offer.currency, Offer.monthly_price),
    "vcpu": (Offer.vcpu,),
    "ram_gib": (Offer.ram_gib,),
    "name": (Offer.name,),
}


# --- prices -----------------------------------------------------------------------------------


def _tiers_rise(tiers: tuple[Tier, ...]) -> bool:
    """Bounds rise strictly from above zero, and only the last tier is unbounded."""
    bounds = [tier.up_to for tier in tiers]
    if bounds[-1] is not None:
        return False
    finite = [bound for bound in bounds[:-1] if bound is not None]
    return len(finite) == len(bounds) - 1 and all(
        low < high for low, high in zip([Decimal(0), *finite], finite, strict=False)
    )


def parse_prices(raw: list[dict[str, Any]], kind: str | None = None) -> list[Price]:
    """Validate an offer's price list: known metrics, once each, one currency, tiers rising;
    with its `kind`, only the metrics that kind is priced by, and the one it must have."""
    errors: dict[str, list[str]] = {}
    prices: list[Price] = []
    for index, item in enumerate(raw):
        try:
            tiers = tuple(
                Tier(
                    None if tier.get("up_to") is None else Decimal(tier["up_to"]),
                    parse_unit_price(tier["unit_price"]),
                )
                for tier in item.get("tiers") or ()
            )
            prices.append(
                Price(
                    item["metric"],
                    parse_unit_price(item["unit_price"]),
                    item["currency"],
                    tiers,
                    item.get("tax_category", STANDARD),
                )
            )
        except MoneyError as error:
            errors[f"prices.{index}"] = [str(error)]
            continue
        if tiers and not _tiers_rise(tiers):
            errors[f"prices.{index}.tiers"] = [
                "Tiers need rising positive `up_to` bounds and a last tier without one."
            ]
    metrics = [price.metric for price in prices]
    if len(set(metrics)) != len(metrics):
        errors["prices"] = ["Each metric may be priced once."]
    if len({price.currency for price in prices}) > 1:
        errors["prices"] = ["All prices of an offer are in one currency."]
    if kind is not None and not errors:
        allowed = KIND_METRICS[kind]
        foreign = [metric for metric in metrics if metric not in allowed]
        if foreign:
            errors["prices"] = [
                f"An offer of kind {kind} is not priced by {', '.join(foreign)} "
                f"(its metrics: {', '.join(allowed)})."
            ]
        elif allowed[0] not in metrics:
            errors["prices"] = [required_price(kind)]
    if errors:
        raise ValidationFailed(errors=errors)
    return prices


def price_documents(prices: list[Price]) -> list[dict[str, Any]]:
    """How prices are stored and shown: decimals as strings, with the metric's unit."""
    documents = []
    for price in prices:
        document: dict[str, Any] = {
            "metric": price.metric,
            "unit": METRICS[price.metric],
            "unit_price": str(price.unit_price),
            "currency": price.currency,
            "tax_category": price.tax_category,
        }
        if price.tiers:
            document["tiers"] = [
                {
                    "up_to": None if tier.up_to is None else str(tier.up_to),
                    "unit_price": str(tier.unit_price),
                }
                for tier in price.tiers
            ]
        documents.append(document)
    return documents


def required_price(kind: str) -> str:
    return f"An offer of kind {kind} needs a `{KIND_METRICS[kind][0]}` price."


# What an offer may describe; the API's schemas and the offer sync both hold offers to it.
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
SPEC_LIMITS: dict[str, tuple[float, float]] = {
    "vcpu": (1, 1024),
    "ram_gib": (0.25, 65536),
    "disk_gib": (0, 1_000_000),
    "gpu": (0, 64),
    "size_gib": (1, 65536),
    "iops": (100, 1_000_000),
    "immutability_days": (1, 36500),
}
# The specs of each kind of offer (the API's schemas check their types and limits).
KIND_SPECS: dict[str, tuple[str, ...]] = {
    "vm": ("vcpu", "ram_gib", "disk_gib", "gpu"),
    "volume": ("size_gib", "performance", "iops", "encrypted"),
    "object_storage": ("encrypted", "versioning", "immutability_days"),
}


def gib(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.001"))


def prices_of(offer: Offer) -> list[Price]:
    # A draft imported by an offer sync has no prices until its operator sets them.
    return parse_prices(offer.prices) if offer.prices else []


def specs_of(offer: Offer, stored_gib: int | None = None) -> Specs:
    """What one unit of the offer consumes, for rating: a machine's size, a volume's size as
    its disk, a bucket's `stored_gib` (the comparison basis unless given) as its disk."""
    if offer.kind == "object_storage":
        return Specs(0, Decimal(0), STORED_GIB_BASIS if stored_gib is None else stored_gib)
    return Specs(offer.vcpu, Decimal(offer.ram_gib), offer.disk_gib)


def specs_document(offer: Offer | Row[Any]) -> dict[str, Any]:
    """An offer's specs as shown, by kind (of a model, or of a row of `LISTING_COLUMNS`)."""
    if offer.kind == "volume":
        return {
            "size_gib": offer.size_gib,
            "performance": offer.performance,
            "iops": offer.iops,
            "encrypted": offer.encrypted,
        }
    if offer.kind == "object_storage":
        return {
            "encrypted": offer.encrypted,
            "versioning": offer.versioning,
            "immutability_days": offer.immutability_days,
        }
    return {
        "vcpu": offer.vcpu,
        "ram_gib": float(offer.ram_gib),
        "disk_gib": offer.disk_gib,
        "gpu": offer.gpu,
    }


def _set_specs(offer: Offer, specs: dict[str, Any]) -> None:
    """Set the specs of the offer's kind (checked by the API's schema of that kind); the
    others are cleared, so a search by one kind's specs never matches another kind."""
    offer.vcpu, offer.ram_gib, offer.disk_gib, offer.gpu = 0, Decimal(0), 0, 0
    offer.size_gib = offer.performance = offer.iops = offer.immutability_days = None
    offer.encrypted = offer.versioning = False
    if offer.kind == "vm":
        # RAM is a size, not money: a JSON number, kept to the MiB-ish precision of 3 places.
        offer.vcpu, offer.ram_gib = specs["vcpu"], gib(specs["ram_gib"])
        offer.disk_gib, offer.gpu = specs.get("disk_gib", 0), specs.get("gpu", 0)
    elif offer.kind == "volume":
        offer.size_gib = offer.disk_gib = specs["size_gib"]
        offer.performance, offer.iops = specs.get("performance"), specs.get("iops")
        offer.encrypted = specs.get("encrypted", False)
    else:
        offer.encrypted = specs.get("encrypted", False)
        offer.versioning = specs.get("versioning", False)
        offer.immutability_days = specs.get("immutability_days") or None


# --- visibility ------------------------------------------------------------------------------


# Built once: SQL expressions are immutable, and every search starts with this one.
_PUBLIC = and_(Offer.state == OfferState.PUBLISHED, Provider.state == ProviderState.ACTIVE)


def _visible(caller: Caller) -> ColumnElement[bool]:
    """Published offers of active providers for all; drafts too for their own operators."""
    if not access.is_operator(caller):
        return _PUBLIC
    return or_(
        _PUBLIC,
        and_(Offer.state == OfferState.DRAFT, Provider.organization_id == caller.organization_id),
    )


def get_offer(session: Session, caller: Caller, offer_id: uuid.UUID) -> Offer:
    """Any version that was published; unpublished ones only for their provider's operators."""
    offer = session.get(Offer, offer_id)
    # Never published (a draft, or a draft abandoned by retiring it): its operators' only.
    if offer is None or (
        offer.published_at is None and not access.operates(caller, offer.provider)
    ):
        raise NotFound("No such offer.")
    return offer


def _own_offer(session: Session, caller: Caller, offer_id: uuid.UUID) -> Offer:
    offer = session.get(Offer, offer_id)
    if offer is None or not access.operates(caller, offer.provider):
        raise NotFound("No such offer.")
    return offer


# --- lifecycle -------------------------------------------------------------------------------


def _apply(
    offer: Offer, provider: Provider, data: dict[str, Any], *, creating: bool = False
) -> None:
    """Set the editable fields of a draft from `data` and derive the rest. A new offer that
    names no compliance claims every scheme its provider has evidence for (pending or
    verified: a claim shows as such, and only counting evidence counts)."""
    for name in ("name", "kind"):
        if name in data:
            setattr(offer, name, data[name])
    if "region" in data:
        region = provider.region(data["region"])
        if region is None:
            codes = ", ".join(r["code"] for r in provider.regions) or "none"
            raise ValidationFailed(
                errors={"region": [f"Not a region of this provider (its regions: {codes})."]}
            )
        offer.region_code = region["code"]
        offer.region_country = region["country"]
        offer.region_city = region.get("city")
        offer.datacenter_tier = region.get("datacenter_tier")
    if "specs" in data:
        _set_specs(offer, data["specs"])
    if "prices" in data:
        # Only an offer sync passes no prices (its drafts are priced by their operators).
        offer.prices = (
            price_documents(parse_prices(data["prices"], offer.kind)) if data["prices"] else []
        )
        if offer.prices:
            offer.currency = offer.prices[0]["currency"]
    if "compliance" in data or creating:
        held = evidence.claimable_schemes(provider)
        claimed = set(data.get("compliance", held))
        beyond = sorted(claimed - held)
        if beyond:
            raise ValidationFailed(
                errors={"compliance": [f"The provider holds no evidence for: {', '.join(beyond)}."]}
            )
        offer.compliance = [OfferCompliance(scheme=scheme) for scheme in sorted(claimed)]
    prices = prices_of(offer)
    offer.monthly_price = monthly_price(prices, specs_of(offer)) if prices else Decimal(0)


def create_offer(
    session: Session, caller: Caller, data: dict[str, Any], *, currency: str | None = None
) -> Offer:
    """A new offer, as a draft, for a provider the caller operates. `currency` is for a draft
    without prices (from an offer sync); otherwise the prices say it."""
    provider = session.get(Provider, data["provider_id"])
    if provider is None or not access.operates(caller, provider):
        raise NotFound("No such provider among those you operate.")
    taken = session.scalar(
        select(Offer.id).where(Offer.provider_id == provider.id, Offer.sku == data["sku"])
    )
    if taken is not None:
        raise Conflict(
            f"SKU {data['sku']!r} exists already: edit that offer to make a new version.",
            code="sku_taken",
        )
    offer = Offer(
        id=uuid.uuid4(),
        provider_id=provider.id,
        provider=provider,
        sku=data["sku"],
        version=1,
        currency=currency,
    )
    _apply(offer, provider, data, creating=True)
    session.add(offer)
    _save(session, caller, "offer.created", offer)
    return offer


@dataclass(frozen=True)
class Edit:
    offer: Offer
    created: bool  # True when the edit made a new version


def edit_offer(
    session: Session,
    caller: Caller,
    offer_id: uuid.UUID,
    *,
    if_match: IfMatch,
    changes: dict[str, Any],
) -> Edit:
    """Edit a draft in place, or make the next version (a draft) of a published offer."""
    offer = _own_offer(session, caller, offer_id)
    if_match.check(offer.revision, "offer")
    if offer.state is OfferState.RETIRED:
        raise Conflict("A retired offer cannot change.", code="offer_retired")
    if offer.state is OfferState.DRAFT:
        before = snapshot(offer)
        _apply(offer, offer.provider, changes)
        _save(session, caller, "offer.updated", offer, before=before)
        return Edit(offer, created=False)
    newer = session.scalar(
        select(Offer).where(
            Offer.provider_id == offer.provider_id,
            Offer.sku == offer.sku,
            Offer.version > offer.version,
        )
    )
    if newer is not None:
        raise Conflict(
            f"Version {newer.version} of this offer exists already ({newer.id}); edit it.",
            code="newer_version_exists",
        )
    successor = Offer(
        id=uuid.uuid4(),
        provider_id=offer.provider_id,
        provider=offer.provider,
        sku=offer.sku,
        version=offer.version + 1,
        name=offer.name,
        kind=offer.kind,
        region_code=offer.region_code,
        region_country=offer.region_country,
        region_city=offer.region_city,
        datacenter_tier=offer.datacenter_tier,
        vcpu=offer.vcpu,
        ram_gib=offer.ram_gib,
        disk_gib=offer.disk_gib,
        gpu=offer.gpu,
        size_gib=offer.size_gib,
        performance=offer.performance,
        iops=offer.iops,
        encrypted=offer.encrypted,
        versioning=offer.versioning,
        immutability_days=offer.immutability_days,
        prices=offer.prices,
        currency=offer.currency,
        compliance=[OfferCompliance(scheme=s) for s in offer.compliance_schemes],
    )
    _apply(successor, offer.provider, changes)
    session.add(successor)
    _save(session, caller, "offer.versioned", successor)
    return Edit(successor, created=True)


def publish_offer(
    session: Session, caller: Caller, offer_id: uuid.UUID, *, sold: set[str] | None = None
) -> Offer:
    """Put a draft in the catalogue; the version it replaces (if any) is retired.

    `sold`: the SKUs the provider's cloud sells in the offer's region, when its adapter can
    tell (`adapters.machine_types`): an offer of anything else could never be provisioned."""
    offer = _own_offer(session, caller, offer_id)
    if offer.state is not OfferState.DRAFT:
        raise Conflict(
            f"Only a draft can be published; this offer is {offer.state}.", code="not_a_draft"
        )
    if not offer.prices:
        raise ValidationFailed(
            "Set the offer's prices before publishing it.",
            errors={"prices": [required_price(offer.kind)]},
        )
    _check_sold(offer)
    if sold is not None and offer.sku not in sold:
        raise ValidationFailed(
            f"The provider's cloud does not sell {offer.sku!r} in {offer.region_code}: every "
            "order of it would fail.",
            code="sku_not_sold",
            errors={"sku": [f"Not a machine type of the cloud in {offer.region_code}."]},
        )
    now = utcnow()
    for previous in session.scalars(
        select(Offer).where(
            Offer.provider_id == offer.provider_id,
            Offer.sku == offer.sku,
            Offer.state == OfferState.PUBLISHED,
        )
    ):
        previous.state, previous.retired_at = OfferState.RETIRED, now
        previous.superseded_by_id = offer.id
        previous.revision += 1
    before = snapshot(offer)
    offer.state, offer.published_at = OfferState.PUBLISHED, now
    _save(session, caller, "offer.published", offer, before=before)
    return offer


def _check_sold(offer: Offer) -> None:
    """A storage offer needs a provider whose adapter makes that kind of thing, and a vault
    one whose cloud enforces retention (object lock): otherwise every order would fail."""
    try:
        features = registry.load(offer.provider.adapter).features
    except registry.AdapterUnavailable:
        return  # the provider's adapter is broken: its orders fail anyway, and say why
    refusal = adapters.storage_refusal(features, offer)
    cloud = offer.provider.adapter
    if refusal == "kind_not_sold":
        raise ValidationFailed(
            f"The provider's cloud ({cloud}) does not sell {offer.kind} here: every order of "
            "it would fail.",
            code=refusal,
            errors={"kind": [f"The {cloud} adapter makes no {offer.kind}."]},
        )
    if refusal == "immutability_unsupported":
        raise ValidationFailed(
            f"The provider's cloud ({cloud}) cannot enforce a retention (object lock): it "
            "cannot sell a vault.",
            code=refusal,
            errors={"specs.immutability_days": ["The provider's cloud has no object lock."]},
        )


def retire_offer(session: Session, caller: Caller, offer_id: uuid.UUID) -> Offer:
    """Take an offer out of the catalogue (a draft is simply abandoned). Orders already
    placed keep the version they pinned."""
    offer = _own_offer(session, caller, offer_id)
    if offer.state is OfferState.RETIRED:
        raise Conflict("This offer is retired already.", code="offer_retired")
    before = snapshot(offer)
    offer.state, offer.retired_at = OfferState.RETIRED, utcnow()
    _save(session, caller, "offer.retired", offer, before=before)
    return offer


class Proof(evidence.Certification, Protocol):
    """The evidence behind a claim, as shown: an `Evidence`, or a row of
    `evidence.SHOWN_CERTIFICATION_COLUMNS` (the catalogue's read path)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def level(self) -> str | None: ...
    @property
    def issuer(self) -> str | None: ...
    @property
    def evidence_url(self) -> str | None: ...
    @property
    def document_sha256(self) -> str | None: ...
    @property
    def statement(self) -> str | None: ...
    @property
    def decided_by(self) -> str | None: ...
    @property
    def decided_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Claim:
    """A scheme an offer claims, with the provider's evidence for it as of some instant."""

    scheme: str
    evidence: Proof | None
    valid_now: bool


def claims(offer: Offer, now: datetime) -> list[Claim]:
    """For each claimed scheme, the evidence to show (`evidence.best_certification`)."""
    shown = []
    for scheme in offer.compliance_schemes:
        proof = evidence.best_certification(offer.provider, scheme, now)
        shown.append(Claim(scheme, proof, proof is not None and evidence.counts(proof, now)))
    return shown


def _save(
    session: Session,
    caller: Caller,
    action: str,
    offer: Offer,
    *,
    before: dict[str, Any] | None = None,
) -> None:
    """Write an offer and audit it. A change to an existing offer (`before` given) bumps its
    revision, the ETag: its compliance claims live in child rows, so the mapper cannot tell."""
    if before is not None:
        offer.revision += 1
    session.flush()
    audit.record(
        session,
        caller,
        action,
        "offer",
        offer.id,
        organization_id=offer.provider.organization_id,
        before=before,
        after=snapshot(offer),
    )


def snapshot(offer: Offer) -> dict[str, Any]:
    return {
        **audit.snapshot(offer, exclude=frozenset({"search_text"})),  # derived: says nothing more
        "compliance": offer.compliance_schemes,
    }


# --- the text a search's `q` looks in ---------------------------------------------------------

# Between the fields of `Offer.search_text`: a character none of them holds (names refuse
# control characters, SKUs are `SKU_PATTERN`), so a needle without it matches across no field's
# end, and a needle with it matches nothing, as when each field was searched on its own.
_FIELD_END = "\n"


def search_text(
    name: str | SQLColumnExpression[str],
    sku: str | SQLColumnExpression[str],
    provider_id: uuid.UUID | SQLColumnExpression[uuid.UUID],
) -> ColumnElement[str]:
    """`Offer.search_text` of an offer, as SQL: its name, its SKU and its provider's name, each
    lower-cased by the database's own `lower()`, one line each.

    The database's, not Python's: the search compared `lower(column)` with the needle
    lower-cased by Python, so the same needles match as before on each backend (SQLite folds
    ASCII letters only; PostgreSQL by its locale). Of values (an offer being written) or of
    columns (offers being refreshed); the provider's name is read by its id, as it stands
    when the statement runs."""
    provider_name = select(Provider.name).where(Provider.id == provider_id).scalar_subquery()
    return (
        func.lower(_text(name))
        + _FIELD_END
        + func.lower(_text(sku))
        + _FIELD_END
        + func.lower(provider_name)
    )


def _text(value: str | SQLColumnExpression[str]) -> SQLColumnExpression[str]:
    return literal(value, Offer.name.type) if isinstance(value, str) else value


def refresh_search_text(session: Session, *where: ColumnElement[bool]) -> None:
    """Recompute the search text of the offers `where` says (all without it): after their
    provider is renamed, or after offers were inserted in bulk, without the ORM."""
    session.execute(
        update(Offer)
        .where(*where)
        .values(search_text=search_text(Offer.name, Offer.sku, Offer.provider_id)),
        execution_options={"synchronize_session": False},  # nothing reads it from the model
    )


@event.listens_for(Offer, "before_insert")
def _search_text_of_new_offer(
    _mapper: Mapper[Offer], _connection: Connection, offer: Offer
) -> None:
    """Every offer the ORM writes gets its search text in its own INSERT."""
    offer.search_text = search_text(offer.name, offer.sku, offer.provider_id)


@event.listens_for(Offer, "before_update")
def _search_text_of_edited_offer(
    _mapper: Mapper[Offer], _connection: Connection, offer: Offer
) -> None:
    """A draft renamed gets its search text in its UPDATE (a SKU never changes, a version's is
    its predecessor's, but the rule is the search text's, not the service's)."""
    state = inspect(offer)
    if state.attrs.name.history.has_changes() or state.attrs.sku.history.has_changes():
        offer.search_text = search_text(offer.name, offer.sku, offer.provider_id)


# --- search ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    provider: uuid.UUID | None = None
    region: str | None = None
    country: str | None = None
    kind: str | None = None
    min_vcpu: int | None = None
    min_ram_gib: float | None = None
    min_datacenter_tier: int | None = None
    min_size_gib: int | None = None
    encrypted: bool | None = None
    immutable: bool | None = None
    max_monthly_price: Decimal | None = None
    currency: str | None = None
    certification: str | None = None
    sovereign_only: bool = False
    q: str | None = None
    sort: str = "monthly_price"


def certified_now(scheme: str, now: datetime) -> ColumnElement[bool]:
    """The offer claims `scheme` and its provider's evidence for it counts at `now`."""
    claimed = exists().where(OfferCompliance.offer_id == Offer.id, OfferCompliance.scheme == scheme)
    return and_(claimed, evidence.certified(scheme, now))


def _search_conditions(caller: Caller, search: Search, now: datetime) -> list[ColumnElement[bool]]:
    """What an offer (joined to its provider) must meet to be found by `search`."""
    if search.max_monthly_price is not None and search.currency is None:
        raise ValidationFailed(
            "Prices in different currencies do not compare: name the currency.",
            errors={"currency": ["Required with max_monthly_price."]},
        )
    conditions: list[ColumnElement[bool]] = [_visible(caller)]
    if search.provider is not None:
        conditions.append(Offer.provider_id == search.provider)
    if search.region is not None:
        conditions.append(Offer.region_code == search.region)
    if search.country is not None:
        conditions.append(Offer.region_country == search.country.upper())
    if search.kind is not None:
        conditions.append(Offer.kind == search.kind)
    if search.min_vcpu is not None:
        conditions.append(_unless_sorted(search, Offer.vcpu) >= search.min_vcpu)
    if search.min_ram_gib is not None:
        conditions.append(_unless_sorted(search, Offer.ram_gib) >= gib(search.min_ram_gib))
    if search.min_datacenter_tier is not None:
        conditions.append(Offer.datacenter_tier >= search.min_datacenter_tier)
    if search.min_size_gib is not None:
        conditions.append(Offer.size_gib >= search.min_size_gib)
    if search.encrypted is not None:
        conditions.append(Offer.encrypted.is_(search.encrypted))
    if search.immutable is not None:
        conditions.append(
            Offer.immutability_days > 0
            if search.immutable
            else func.coalesce(Offer.immutability_days, 0) == 0
        )
    if search.currency is not None:
        conditions.append(Offer.currency == search.currency.upper())
    if search.max_monthly_price is not None:
        conditions.append(Offer.monthly_price <= search.max_monthly_price)
    if search.certification is not None:
        conditions.append(certified_now(search.certification, now))
    if search.sovereign_only:
        conditions.append(Provider.exposed.is_(False))
    if search.q:
        conditions.append(text_matches(search.q))
    return conditions


def text_matches(q: str) -> ColumnElement[bool]:
    """The offer's name, SKU or provider's name holds `q`, whatever the case (`q` lower-cased
    by Python, the fields by the database: see `search_text`), `%`, `_` and `/` literally."""
    needle = q.lower()
    if _FIELD_END in needle:
        return false()
    return Offer.search_text.contains(needle, autoescape=True)


def _unless_sorted(
    search: Search, column: InstrumentedAttribute[Any]
) -> InstrumentedAttribute[Any] | ColumnElement[Any]:
    """`column` for a range filter, kept from the planner's choice of index (`+ 0`, SQLite's
    documented way) unless the search sorts by it.

    A page is the first 51 offers in the sort's order: walking the sort's index and
    filtering stops after them, while a range over another index (`min_vcpu=8` matches half
    the catalogue) must read and sort every match first. SQLite, which does not weigh the
    LIMIT, took the range (`sort=-ram_gib&min_vcpu=8`: 20–30 ms over 10,000 offers, 0.05 ms
    walking the RAM index); PostgreSQL weighs it, and loses nothing."""
    if column.key in {key.key for key in SORTS[search.sort.removeprefix("-")]}:
        return column
    return column + 0


def _sort_keys(search: Search) -> list[InstrumentedAttribute[Any]]:
    """The search's sort keys, ending with the offer id that breaks ties."""
    return [*SORTS[search.sort.removeprefix("-")], Offer.id]


def search_offers(
    session: Session,
    caller: Caller,
    search: Search,
    *,
    now: datetime,
    limit: int,
    cursor: str | None,
) -> Page[Offer]:
    """The catalogue seen by `caller`, filtered and sorted, one page at a time, as offers
    (with their provider and claims) for pages that use the model, such as the console's.
    `search_listings` finds the same page, for the API."""
    conditions = _search_conditions(caller, search, now)
    statement = (
        select(Offer)
        .join(Offer.provider)
        .options(contains_eager(Offer.provider))  # one join serves filters and loading
        .where(*conditions)
    )
    return paginate(
        session,
        statement,
        _sort_keys(search),
        limit=limit,
        cursor=cursor,
        descending=search.sort.startswith("-"),
        scope=_fingerprint(search),
    )


# What a listing reads of an offer and its provider: every column of the offer but its
# revision (the ETag, which a list does not show) and its search text, and the provider's name
# and jurisdiction under names that cannot clash with the offer's own.
LISTING_COLUMNS = (
    *(
        column
        for column in Offer.__table__.columns
        if column.key not in {"revision", "search_text"}
    ),
    Provider.name.label("provider_name"),
    Provider.operator_country,
    Provider.parent_country,
    Provider.extraterritorial_exposure,
)


@dataclass(frozen=True, slots=True)
class Listing:
    """An offer as the catalogue lists it: a row of `LISTING_COLUMNS` (its attributes are
    named as the offer's, plus `provider_name`, `operator_country`, `parent_country`,
    `extraterritorial_exposure`) and its claims, as `claims` would give them."""

    offer: Row[Any]
    claims: list[Claim]


def search_listings(
    session: Session,
    caller: Caller,
    search: Search,
    *,
    now: datetime,
    limit: int,
    cursor: str | None,
) -> Page[Listing]:
    """`search_offers`' page (same offers, order and cursors) read as rows, for the API.

    The ORM's cost per offer (identity map, instrumented attributes, each provider's evidence
    loaded as objects) was most of a search's time: this reads the page in three statements
    of plain columns — the offers with their provider's, the schemes they claim, and the live
    certifications of their providers — and ranks each provider's evidence for a scheme once
    (`evidence.best_of`, as `claims` does), however many of its offers the page holds."""
    conditions = _search_conditions(caller, search, now)
    statement = select(*LISTING_COLUMNS).join_from(Offer, Provider).where(*conditions)
    page = paginate_rows(
        session,
        statement,
        _sort_keys(search),
        limit=limit,
        cursor=cursor,
        descending=search.sort.startswith("-"),
        scope=_fingerprint(search),
    )
    schemes: dict[uuid.UUID, list[str]] = {row.id: [] for row in page.items}
    if schemes:
        for offer_id, scheme in session.execute(
            select(OfferCompliance.offer_id, OfferCompliance.scheme)
            .where(OfferCompliance.offer_id.in_(schemes))
            .order_by(OfferCompliance.scheme)
        ):
            schemes[offer_id].append(scheme)
    held = evidence.live_certifications(session, {row.provider_id for row in page.items})
    ranked: dict[tuple[uuid.UUID, str], Claim] = {}

    def claim(provider_id: uuid.UUID, scheme: str) -> Claim:
        key = (provider_id, scheme)
        if key not in ranked:
            proof = evidence.best_of(held[provider_id], scheme, now)
            ranked[key] = Claim(scheme, proof, proof is not None and evidence.counts(proof, now))
        return ranked[key]

    listings = [
        Listing(row, [claim(row.provider_id, scheme) for scheme in schemes[row.id]])
        for row in page.items
    ]
    return Page(listings, page.next_cursor)


def _fingerprint(search: Search) -> str:
    """A short digest of the filters and sort, bound into the search's cursors."""
    # The fields one level deep (all are plain values): `dataclasses.asdict` would give the
    # same document, through a deep copy of each value.
    fields = {field.name: getattr(search, field.name) for field in dataclasses.fields(search)}
    canonical = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def claimed_schemes(session: Session) -> list[str]:
    """Every compliance scheme some offer claims, for a search form's choices."""
    return list(
        session.scalars(select(OfferCompliance.scheme).distinct().order_by(OfferCompliance.scheme))
    )


def provider_offers(
    session: Session,
    caller: Caller,
    *,
    state: OfferState | None = None,
    limit: int,
    cursor: str | None,
) -> Page[Offer]:
    """Every version of the offers of the providers the caller operates (drafts, published
    and retired), by SKU then version, one page at a time."""
    statement = (
        select(Offer)
        .join(Offer.provider)
        .options(contains_eager(Offer.provider))
        .where(Provider.organization_id == caller.organization_id)
    )
    if not access.is_operator(caller):
        statement = statement.where(Offer.id.is_(None))
    if state is not None:
        statement = statement.where(Offer.state == state)
    return paginate(
        session,
        statement,
        [Offer.sku, Offer.version, Offer.id],
        limit=limit,
        cursor=cursor,
        scope=f"{caller.organization_id}:{state}",
    )


def versions(session: Session, offer: Offer) -> list[Offer]:
    """Every version of an offer (same provider and SKU), newest first."""
    return list(
        session.scalars(
            select(Offer)
            .where(Offer.provider_id == offer.provider_id, Offer.sku == offer.sku)
            .order_by(Offer.version.desc())
        )
    )
