"""`/v1/offers`: the catalogue. Providers publish and version their offers; everyone searches."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from billing.invoicing import STANDARD, TAX_CATEGORIES
from billing.rating import METRICS
from broker.api.base import (
    Blueprint,
    created,
    current_caller,
    database,
    now,
    provider_runtime,
    request_session,
)
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
from broker.api.limits import expensive
from broker.api.schemas import (
    NO_CONTROL_CHARACTERS,
    ListArgs,
    Matches,
    Money,
    StrictSchema,
    Timestamp,
    WholeNumber,
    currency_field,
    iso_z,
    name_field,
    page_of,
    slug_field,
)
from broker.models import EvidenceState, Offer, OfferState, Role
from broker.services import adapters
from broker.services import offers as service

blp = Blueprint("offers", __name__, url_prefix="/v1/offers", description="Catalogue")

_ETAG = {"ETag": {"schema": {"type": "string"}}}
KINDS = list(service.KIND_SPECS)


def _within(name: str) -> ma.validate.Range:
    low, high = service.SPEC_LIMITS[name]
    return ma.validate.Range(min=low, max=high)


class SpecsSchema(StrictSchema):
    """A machine's specs (`kind` `vm`)."""

    vcpu = WholeNumber(required=True, validate=_within("vcpu"))
    ram_gib = ma.fields.Float(required=True, validate=_within("ram_gib"))
    disk_gib = WholeNumber(load_default=0, validate=_within("disk_gib"))
    gpu = WholeNumber(load_default=0, validate=_within("gpu"))


class VolumeSpecsSchema(StrictSchema):
    """A block volume's specs (`kind` `volume`)."""

    size_gib = WholeNumber(
        required=True,
        validate=_within("size_gib"),
        metadata={"description": "The size ordered; a volume grows later, never shrinks."},
    )
    performance = slug_field(
        max_length=40,
        load_default="standard",
        metadata={"description": "Performance class, e.g. `standard`, `high-iops`."},
    )
    iops = WholeNumber(load_default=None, allow_none=True, validate=_within("iops"))
    encrypted = ma.fields.Boolean(load_default=False)


class ObjectStorageSpecsSchema(StrictSchema):
    """A bucket's specs (`kind` `object_storage`); with `immutability_days`, a vault."""

    encrypted = ma.fields.Boolean(load_default=False)
    versioning = ma.fields.Boolean(load_default=False)
    immutability_days = WholeNumber(
        load_default=None,
        allow_none=True,
        validate=_within("immutability_days"),
        metadata={
            "description": "Default retention in compliance mode: no object can be deleted or "
            "overwritten before it is that many days old, by anybody (write once, read many)."
        },
    )


SPECS_SCHEMAS: dict[str, type[StrictSchema]] = {
    "vm": SpecsSchema,
    "volume": VolumeSpecsSchema,
    "object_storage": ObjectStorageSpecsSchema,
}


def specs_field(**kwargs: Any) -> ma.fields.Dict:
    return ma.fields.Dict(
        metadata={
            "description": "By kind — vm: {vcpu, ram_gib, disk_gib, gpu}; volume: {size_gib, "
            "performance, iops, encrypted}; object_storage: {encrypted, versioning, "
            "immutability_days}. Replaced whole: send every field of the specs."
        },
        **kwargs,
    )


def load_specs(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` checked by the specs schema of `kind` (422 naming `specs.<field>` otherwise)."""
    try:
        loaded: dict[str, Any] = SPECS_SCHEMAS[kind]().load(raw)
    except ma.ValidationError as error:
        raise ma.ValidationError({"specs": error.messages}) from None
    return loaded


class TierSchema(StrictSchema):
    up_to = Money(
        required=True, allow_none=True, metadata={"description": "null for the last tier"}
    )
    unit_price = Money(required=True)


class PriceSchema(StrictSchema):
    metric = ma.fields.String(required=True, validate=ma.validate.OneOf(sorted(METRICS)))
    unit_price = Money(required=True, metadata={"description": "Up to 6 decimals."})
    currency = currency_field(required=True)
    tiers = ma.fields.List(
        ma.fields.Nested(TierSchema),
        validate=ma.validate.Length(min=1, max=20),
        metadata={"description": "Graduated: each band of the quantity at its own price."},
    )
    tax_category = ma.fields.String(
        load_default=STANDARD,
        validate=ma.validate.OneOf(sorted(TAX_CATEGORIES)),
        metadata={"description": "EN 16931 VAT category: S standard (the default), Z, E, AE."},
    )


class OfferPatchSchema(StrictSchema):
    name = name_field()
    region = slug_field(
        max_length=50, example="fr-par-1", metadata={"description": "A region code of the provider"}
    )
    specs = specs_field()
    prices = ma.fields.List(
        ma.fields.Nested(PriceSchema),
        validate=ma.validate.Length(min=1, max=len(METRICS)),
        metadata={"description": "Replaced whole, not merged: send every price the offer keeps."},
    )
    compliance = ma.fields.List(
        slug_field(),
        validate=ma.validate.Length(max=50),
        metadata={
            "description": "Schemes claimed: a subset of the provider's evidence. Replaced "
            "whole, not merged."
        },
    )


class OfferCreateSchema(OfferPatchSchema):
    provider_id = ma.fields.UUID(required=True)
    sku = ma.fields.String(
        required=True,
        validate=Matches(
            service.SKU_PATTERN,
            "a SKU such as `vm.s2-4`: letters, digits, dots, underscores and hyphens, starting "
            "with a letter or digit, at most 100 characters",
            suggest=True,
        ),
    )
    name = name_field(required=True)
    kind = ma.fields.String(load_default="vm", validate=ma.validate.OneOf(KINDS))
    region = slug_field(max_length=50, example="fr-par-1", required=True)
    specs = specs_field(required=True)
    prices = ma.fields.List(
        ma.fields.Nested(PriceSchema),
        required=True,
        validate=ma.validate.Length(min=1, max=len(METRICS)),
    )

    @ma.post_load
    def _specs_of_kind(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["specs"] = load_specs(data["kind"], data["specs"])
        return data


def _claim(claim: service.Claim) -> dict[str, Any]:
    """A scheme the offer claims and the evidence behind it: who vouched, when, the hash.

    Built by hand rather than by a schema: a catalogue page shows a few hundred of these.
    """
    proof = claim.evidence
    verified = proof is not None and proof.state is EvidenceState.VERIFIED
    return {
        "scheme": claim.scheme,
        "valid_now": claim.valid_now,
        "state": proof.state.value if proof is not None else None,
        "evidence_id": str(proof.id) if proof is not None else None,
        "level": proof.level if proof is not None else None,
        "valid_from": iso_z(proof.valid_from) if proof is not None else None,
        "valid_until": iso_z(proof.valid_until) if proof is not None else None,
        "issuer": proof.issuer if proof is not None else None,
        "evidence_url": proof.evidence_url if proof is not None else None,
        "document_sha256": proof.document_sha256 if proof is not None else None,
        "signed": proof is not None and proof.statement is not None,
        "verified_by": proof.decided_by if verified and proof is not None else None,
        "verified_at": iso_z(proof.decided_at) if verified and proof is not None else None,
    }


class OfferSchema(ma.Schema):
    id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    provider_name = ma.fields.String(attribute="provider.name")
    sku = ma.fields.String()
    name = ma.fields.String()
    kind = ma.fields.String()
    state = ma.fields.Enum(OfferState, by_value=True)
    version = ma.fields.Integer()
    region = ma.fields.Method("_region")
    datacenter_tier = ma.fields.Integer(allow_none=True)
    specs = ma.fields.Method("_specs")
    prices = ma.fields.List(ma.fields.Dict())
    currency = ma.fields.String()
    monthly_price = Money(
        currency_from="currency",
        metadata={
            "description": "A month (730 hours) of one unit, for comparison: a machine, a "
            "volume of its size, a bucket storing 1,000 GiB (requests and egress aside)."
        },
    )
    compliance = ma.fields.Method(
        "_compliance",
        metadata={
            "type": "array",
            "items": {"type": "object"},
            "description": "The schemes claimed, each with the evidence behind it: `state`, "
            "`valid_now` (it counts), `verified_by`, `verified_at`, `issuer`, "
            "`document_sha256`, `signed`.",
        },
    )
    jurisdiction = ma.fields.Method("_jurisdiction")
    published_at = Timestamp(allow_none=True)
    retired_at = Timestamp(allow_none=True)
    superseded_by_id = ma.fields.UUID(allow_none=True)
    created_at = Timestamp()

    def _region(self, offer: Offer) -> dict[str, Any]:
        return {
            "code": offer.region_code,
            "country": offer.region_country,
            "city": offer.region_city,
        }

    def _specs(self, offer: Offer) -> dict[str, Any]:
        return service.specs_document(offer)

    def _compliance(self, offer: Offer) -> list[dict[str, Any]]:
        return [_claim(claim) for claim in service.claims(offer, now())]

    def _jurisdiction(self, offer: Offer) -> dict[str, Any]:
        return {
            "operator_country": offer.provider.operator_country,
            "parent_country": offer.provider.parent_country,
            "extraterritorial_exposure": offer.provider.extraterritorial_exposure,
        }


class SearchArgs(ListArgs):
    provider = ma.fields.UUID(load_default=None)
    region = slug_field(max_length=50, example="fr-par-1", load_default=None)
    country = ma.fields.String(
        load_default=None,
        validate=Matches(
            r"^[A-Za-z]{2}$",
            "an ISO 3166-1 alpha-2 country code, such as `FR`",
            suggest=True,
            equal=2,
        ),
    )
    kind = ma.fields.String(load_default=None, validate=ma.validate.OneOf(KINDS))
    min_vcpu = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=0, max=1024))
    min_ram_gib = ma.fields.Float(load_default=None, validate=ma.validate.Range(min=0, max=65536))
    min_datacenter_tier = ma.fields.Integer(
        load_default=None,
        validate=ma.validate.Range(min=1, max=4),
        metadata={"description": "Uptime Institute tier of the datacenter, at least (1–4)."},
    )
    min_size_gib = ma.fields.Integer(
        load_default=None,
        validate=ma.validate.Range(min=1, max=65536),
        metadata={"description": "Volumes of at least this size (GiB)."},
    )
    encrypted = ma.fields.Boolean(
        load_default=None, metadata={"description": "Storage encrypted at rest (or not)."}
    )
    immutable = ma.fields.Boolean(
        load_default=None,
        metadata={"description": "Buckets with a default retention (vaults), or without."},
    )
    max_monthly_price = Money(load_default=None)
    currency = currency_field(load_default=None)
    certification = slug_field(load_default=None)
    sovereign_only = ma.fields.Boolean(load_default=False)
    q = ma.fields.String(
        load_default=None, validate=[ma.validate.Length(max=100), NO_CONTROL_CHARACTERS]
    )
    sort = ma.fields.String(
        load_default="monthly_price",
        validate=ma.validate.OneOf([f"{d}{k}" for k in service.SORTS for d in ("", "-")]),
        metadata={
            "description": "Field to sort by; prefix `-` for descending. Prices in different "
            "currencies do not compare: `monthly_price` sorts by `currency` first (alphabetical "
            "ISO 4217 code), then by price within each currency, and `-monthly_price` reverses "
            "both. Give `currency` for one plain price order."
        },
    )


# The schema's own field, so an amount is written one way (`Money`: the currency's minor unit).
_MONTHLY_PRICE = OfferSchema._declared_fields["monthly_price"]


def listing_document(listing: service.Listing, shown: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """`OfferSchema().dump(offer)` of a listed offer, built by hand from its row.

    Marshmallow's dump of a page of 50 offers (a few hundred fields each, with their claims)
    cost more than the search's SQL; the schema stays the contract and documents the list,
    and `tests/test_offer_search_fast_path.py` holds this to its output, field by field.
    `shown`: the documents of the claims already written for this page, by the claim's
    identity (a page's offers of one provider share their claims' objects: `Listing`)."""
    row = listing.offer
    compliance = []
    for claim in listing.claims:
        document = shown.get(id(claim))
        if document is None:
            document = shown[id(claim)] = _claim(claim)
        compliance.append(document)
    return {
        "id": str(row.id),
        "provider_id": str(row.provider_id),
        "provider_name": row.provider_name,
        "sku": row.sku,
        "name": row.name,
        "kind": row.kind,
        "state": row.state.value,
        "version": row.version,
        "region": {"code": row.region_code, "country": row.region_country, "city": row.region_city},
        "datacenter_tier": row.datacenter_tier,
        "specs": service.specs_document(row),
        "prices": [dict(price) for price in row.prices],
        "currency": row.currency,
        "monthly_price": _MONTHLY_PRICE.serialize("monthly_price", row),
        "compliance": compliance,
        "jurisdiction": {
            "operator_country": row.operator_country,
            "parent_country": row.parent_country,
            "extraterritorial_exposure": row.extraterritorial_exposure,
        },
        "published_at": iso_z(row.published_at),
        "retired_at": iso_z(row.retired_at),
        "superseded_by_id": None if row.superseded_by_id is None else str(row.superseded_by_id),
        "created_at": iso_z(row.created_at),
    }


def _offer_response(offer: Offer) -> Response:
    return with_etag(jsonify(OfferSchema().dump(offer)), offer.revision)


@blp.route("", methods=["GET"])
@blp.auth()
@expensive
# An instance, not the class: webargs would build a schema (copying its fields) per request.
@blp.arguments(SearchArgs(), location="query")
@blp.response(200, page_of(OfferSchema))
def search_offers(args: dict[str, Any]) -> Any:
    """Search the catalogue. `certification` matches evidence valid now; `sovereign_only`
    leaves out operators exposed to foreign law. Providers also see their own drafts."""
    limit, cursor = args.pop("limit"), args.pop("cursor")
    page = service.search_listings(
        request_session(),
        current_caller(),
        service.Search(**args),
        now=now(),
        limit=limit,
        cursor=cursor,
    )
    shown: dict[int, dict[str, Any]] = {}
    items = [listing_document(listing, shown) for listing in page.items]
    return jsonify({"items": items, "next_cursor": page.next_cursor})


@blp.route("", methods=["POST"])
@blp.auth(Role.PROVIDER)
@blp.arguments(OfferCreateSchema())
@blp.response(201, OfferSchema, headers=_ETAG)
def create_offer(data: dict[str, Any]) -> Response:
    """Create an offer, as a draft, for a provider you operate."""
    offer = service.create_offer(request_session(), current_caller(), data)
    return created(_offer_response(offer), "offers.get_offer", offer_id=offer.id)


@blp.route("/<uuid:offer_id>", methods=["GET"])
@blp.auth()
@blp.response(200, OfferSchema, headers=_ETAG)
def get_offer(offer_id: uuid.UUID) -> Response:
    """Read one version of an offer (drafts: their provider's operators only)."""
    return _offer_response(service.get_offer(request_session(), current_caller(), offer_id))


@blp.route("/<uuid:offer_id>", methods=["PATCH"])
@blp.auth(Role.PROVIDER)
@blp.arguments(OfferPatchSchema())
@blp.response(200, OfferSchema, headers=_ETAG)
@blp.alt_response(201, schema=OfferSchema, description="A new version (draft) was created")
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def edit_offer(data: dict[str, Any], offer_id: uuid.UUID) -> Response:
    """Edit a draft (200), or make the next version of a published offer as a draft (201).

    Fields left out keep their value; a field sent replaces the old value whole (`prices`,
    `specs` and `compliance` are not merged). The `ETag` is the document's revision, not the
    offer's `version`: send it back as it is in `If-Match`."""
    if "specs" in data:  # checked by the specs schema of the offer's kind
        offer = service.get_offer(request_session(), current_caller(), offer_id)
        data["specs"] = load_specs(offer.kind, data["specs"])
    edit = service.edit_offer(
        request_session(),
        current_caller(),
        offer_id,
        if_match=if_match(),
        changes=data,
    )
    response = _offer_response(edit.offer)
    if edit.created:
        return created(response, "offers.get_offer", offer_id=edit.offer.id)
    return response


@blp.route("/<uuid:offer_id>/publish", methods=["POST"])
@blp.auth(Role.PROVIDER)
@blp.response(200, OfferSchema, headers=_ETAG)
def publish_offer(offer_id: uuid.UUID) -> Response:
    """Publish a draft; the version it replaces is retired. When the provider's adapter can
    list what its cloud sells, a SKU it does not sell is refused (422 `sku_not_sold`)."""
    sold = adapters.machine_types(database(), offer_id, provider_runtime())
    offer = service.publish_offer(request_session(), current_caller(), offer_id, sold=sold)
    return _offer_response(offer)


@blp.route("/<uuid:offer_id>/retire", methods=["POST"])
@blp.auth(Role.PROVIDER)
@blp.response(200, OfferSchema, headers=_ETAG)
def retire_offer(offer_id: uuid.UUID) -> Response:
    """Withdraw an offer from the catalogue (orders placed keep their version)."""
    return _offer_response(service.retire_offer(request_session(), current_caller(), offer_id))
