"""Sovereignty evidence: providers claim, the consortium's assessors (or a trusted issuer's
signature) vouch. See `broker/services/evidence.py` for the rules."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, now, request_session
from broker.api.schemas import (
    ListArgs,
    StrictSchema,
    Timestamp,
    WholeNumber,
    country_field,
    https_url_field,
    iso_z,
    law_code_field,
    name_field,
    page_of,
    reason_field,
    sha256_field,
    slug_field,
)
from broker.models import Evidence, EvidenceKind, EvidenceState, Role
from broker.services import evidence as service

blp = Blueprint("evidence", __name__, url_prefix="/v1", description="Sovereignty evidence")


class CertificationClaimSchema(StrictSchema):
    """A certification, described: who certified what, until when, and the document."""

    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(["certification"]))
    scheme = slug_field(required=True, metadata={"description": "secnumcloud, hds, bsi-c5, …"})
    level = name_field(load_default=None, allow_none=True)
    valid_from = Timestamp(required=True)
    valid_until = Timestamp(required=True)
    issuer = name_field(load_default=None, allow_none=True)
    evidence_url = https_url_field(load_default=None, allow_none=True)
    document_sha256 = sha256_field(load_default=None, allow_none=True)


class SignedStatementClaimSchema(StrictSchema):
    """A certification as its issuer signed it: verified by the signature."""

    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(["certification"]))
    statement = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=16384),
        metadata={
            "description": "A compact JWS (or VC-JWT) from a trusted issuer: `iss`, `sub` (the "
            "provider id), `scheme`, `level`, `nbf`, `exp`."
        },
    )


class JurisdictionClaimSchema(StrictSchema):
    """Which law reaches the operator."""

    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(["jurisdiction"]))
    operator_country = country_field(required=True)
    parent_country = country_field(load_default=None, allow_none=True)
    extraterritorial_exposure = ma.fields.List(
        law_code_field(),
        load_default=list,
        validate=ma.validate.Length(max=20),
        metadata={"description": "Foreign laws reaching the operator, e.g. `US_CLOUD_ACT`."},
    )


class RegionClaimSchema(StrictSchema):
    """Where a region's data centre is, and its tier."""

    kind = ma.fields.String(required=True, validate=ma.validate.OneOf(["region"]))
    region_code = slug_field(max_length=50, example="fr-par-1", required=True)
    country = country_field(required=True)
    city = name_field(load_default=None, allow_none=True)
    datacenter_tier = WholeNumber(
        load_default=None, allow_none=True, validate=ma.validate.Range(min=1, max=4)
    )


CLAIM_SCHEMAS: tuple[type[StrictSchema], ...] = (
    CertificationClaimSchema,
    SignedStatementClaimSchema,
    JurisdictionClaimSchema,
    RegionClaimSchema,
)


class EvidenceClaimSchema(ma.Schema):
    """One claim, read with the schema of its `kind` (documented as their `oneOf`)."""

    # What a request without a body is told to send (see `broker.api.base.body_required`).
    BODY_HINT = (
        "a claim whose `kind` is certification, jurisdiction or region, with the fields of "
        'that kind, such as {"kind": "jurisdiction", "operator_country": "FR"}.'
    )

    def load(self, data: Any, **_kwargs: Any) -> Any:
        if not isinstance(data, dict):
            raise ma.ValidationError({"_schema": ["A JSON object is required."]})
        kind = data.get("kind")
        schema: type[StrictSchema]
        if kind == "certification":
            schema = SignedStatementClaimSchema if "statement" in data else CertificationClaimSchema
        elif kind == "jurisdiction":
            schema = JurisdictionClaimSchema
        elif kind == "region":
            schema = RegionClaimSchema
        else:
            raise ma.ValidationError({"kind": ["One of: certification, jurisdiction, region."]})
        return schema().load(data)


# The fields each kind of evidence has (as shown).
KIND_FIELDS: dict[EvidenceKind, frozenset[str]] = {
    EvidenceKind.CERTIFICATION: frozenset(
        {"scheme", "level", "valid_from", "valid_until", "issuer", "evidence_url"}
        | {"document_sha256", "signed", "statement", "key_id"}
    ),
    EvidenceKind.JURISDICTION: frozenset(
        {"operator_country", "parent_country", "extraterritorial_exposure"}
    ),
    EvidenceKind.REGION: frozenset({"region_code", "country", "city", "datacenter_tier"}),
}


class EvidenceSchema(ma.Schema):
    id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    kind = ma.fields.Enum(EvidenceKind, by_value=True)
    state = ma.fields.Enum(EvidenceState, by_value=True)
    counts = ma.fields.Method(
        "_counts",
        metadata={"type": "boolean", "description": "Verified and valid now: it counts."},
    )
    scheme = ma.fields.String(allow_none=True)
    level = ma.fields.String(allow_none=True)
    valid_from = Timestamp(allow_none=True)
    valid_until = Timestamp(allow_none=True)
    issuer = ma.fields.String(allow_none=True)
    evidence_url = ma.fields.String(allow_none=True)
    document_sha256 = ma.fields.String(allow_none=True)
    signed = ma.fields.Function(
        lambda item: item.statement is not None,
        metadata={"type": "boolean", "description": "Backed by a trusted issuer's signature."},
    )
    statement = ma.fields.String(
        allow_none=True, metadata={"description": "The signed statement, to check yourself."}
    )
    key_id = ma.fields.String(allow_none=True)
    operator_country = ma.fields.String(allow_none=True)
    parent_country = ma.fields.String(allow_none=True)
    extraterritorial_exposure = ma.fields.List(ma.fields.String(), allow_none=True)
    region_code = ma.fields.String(allow_none=True)
    country = ma.fields.String(allow_none=True)
    city = ma.fields.String(allow_none=True)
    datacenter_tier = ma.fields.Integer(allow_none=True)
    submitted_by = ma.fields.String()
    submitted_at = Timestamp()
    decided_by = ma.fields.String(allow_none=True)
    decided_by_organization_id = ma.fields.UUID(allow_none=True)
    decided_at = Timestamp(allow_none=True)
    verified_by = ma.fields.Method(
        "_verified_by",
        metadata={
            "type": ["string", "null"],
            "description": "Who vouched: an assessor, the consortium, or the signing issuer.",
        },
    )
    verified_at = ma.fields.Method(
        "_verified_at", metadata={"type": ["string", "null"], "format": "date-time"}
    )
    reason = ma.fields.String(allow_none=True)

    @ma.post_dump(pass_original=True)
    def _only_its_kind(
        self, data: dict[str, Any], item: Evidence, **_kwargs: Any
    ) -> dict[str, Any]:
        """A certification shows no region fields, and so on."""
        foreign = set().union(*(f for k, f in KIND_FIELDS.items() if k is not item.kind))
        return {name: value for name, value in data.items() if name not in foreign}

    def _counts(self, item: Evidence) -> bool:
        return service.counts(item, now())

    def _verified_by(self, item: Evidence) -> str | None:
        return item.decided_by if item.state is EvidenceState.VERIFIED else None

    def _verified_at(self, item: Evidence) -> str | None:
        if item.state is not EvidenceState.VERIFIED:
            return None
        return iso_z(item.decided_at)


def dump_evidence(items: Iterable[Evidence]) -> list[dict[str, Any]]:
    dumped: list[dict[str, Any]] = EvidenceSchema(many=True).dump(list(items))
    return dumped


class EvidenceListArgs(ListArgs):
    state = ma.fields.Enum(EvidenceState, by_value=True, load_default=None)
    kind = ma.fields.Enum(EvidenceKind, by_value=True, load_default=None)


class EvidenceQueueArgs(EvidenceListArgs):
    provider_id = ma.fields.UUID(load_default=None)


class EvidenceRejectSchema(StrictSchema):
    reason = reason_field()


@blp.route("/providers/<uuid:provider_id>/evidence", methods=["POST"])
@blp.auth(Role.PROVIDER, Role.ASSESSOR, Role.ADMIN)
@blp.arguments(EvidenceClaimSchema())
@blp.response(201, EvidenceSchema)
@blp.doc(
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": list(CLAIM_SCHEMAS)}}},
    }
)
def submit_evidence(data: dict[str, Any], provider_id: uuid.UUID) -> Any:
    """Claim one certification, jurisdiction or region for a provider.

    From its operators a claim is `pending` until an assessor decides; from the consortium it
    is `verified` at once; a signed `statement` from a trusted issuer is verified by its
    signature (or refused, 422 `statement_rejected`, with the `reason`)."""
    item = service.submit(request_session(), current_caller(), provider_id, data, now())
    return created(
        _evidence_response(item),
        "evidence.get_evidence",
        provider_id=provider_id,
        evidence_id=item.id,
    )


def _evidence_response(item: Evidence) -> Response:
    return jsonify(EvidenceSchema().dump(item))


@blp.route("/providers/<uuid:provider_id>/evidence", methods=["GET"])
@blp.auth()
@blp.arguments(EvidenceListArgs(), location="query")
@blp.response(200, page_of(EvidenceSchema))
def list_provider_evidence(args: dict[str, Any], provider_id: uuid.UUID) -> Any:
    """A provider's evidence: everyone sees what was verified (and who vouched); its
    operators and the consortium see pending, rejected and withdrawn claims too."""
    return service.list_evidence(
        request_session(), current_caller(), provider_id=provider_id, **args
    )


@blp.route("/providers/<uuid:provider_id>/evidence/<uuid:evidence_id>", methods=["GET"])
@blp.auth()
@blp.response(200, EvidenceSchema)
def get_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> Any:
    """One piece of evidence."""
    return service.get(request_session(), current_caller(), provider_id, evidence_id)


@blp.route("/providers/<uuid:provider_id>/evidence/<uuid:evidence_id>/verify", methods=["POST"])
@blp.auth(Role.ASSESSOR, Role.ADMIN)
@blp.response(200, EvidenceSchema)
def verify_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> Any:
    """Vouch for a pending claim: it counts from now on (403 for a provider whose
    organization you belong to)."""
    return service.verify(request_session(), current_caller(), provider_id, evidence_id, now())


@blp.route("/providers/<uuid:provider_id>/evidence/<uuid:evidence_id>/reject", methods=["POST"])
@blp.auth(Role.ASSESSOR, Role.ADMIN)
@blp.arguments(EvidenceRejectSchema())
@blp.response(200, EvidenceSchema)
def reject_evidence(data: dict[str, Any], provider_id: uuid.UUID, evidence_id: uuid.UUID) -> Any:
    """Refuse a pending claim, or revoke a verified certification, saying why."""
    return service.reject(
        request_session(), current_caller(), provider_id, evidence_id, data["reason"], now()
    )


@blp.route("/providers/<uuid:provider_id>/evidence/<uuid:evidence_id>/withdraw", methods=["POST"])
@blp.auth(Role.PROVIDER)
@blp.response(200, EvidenceSchema)
def withdraw_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> Any:
    """Take back a pending claim or a verified certification of a provider you operate."""
    return service.withdraw(request_session(), current_caller(), provider_id, evidence_id, now())


@blp.route("/evidence", methods=["GET"])
@blp.auth(Role.ASSESSOR, Role.ADMIN)
@blp.arguments(EvidenceQueueArgs(), location="query")
@blp.response(200, page_of(EvidenceSchema))
def evidence_queue(args: dict[str, Any]) -> Any:
    """The assessors' queue: every provider's evidence, oldest first (`?state=pending`)."""
    return service.list_evidence(request_session(), current_caller(), **args)
