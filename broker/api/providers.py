"""`/v1/providers`: who sells through the broker, where, under which law, with what evidence."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker import access
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
from broker.api.evidence import dump_evidence
from broker.api.jobs import JobSchema, job_location
from broker.api.schemas import (
    ListArgs,
    StrictSchema,
    Timestamp,
    WholeNumber,
    adapter_name_field,
    country_field,
    https_url_field,
    iso_z,
    law_code_field,
    name_field,
    page_of,
    sha256_field,
    slug_field,
)
from broker.models import EvidenceKind, EvidenceState, Provider, ProviderState, Role
from broker.services import adapters, credentials, evidence, offer_sync
from broker.services import providers as service

blp = Blueprint("providers", __name__, url_prefix="/v1/providers", description="Providers")

_ETAG = {"ETag": {"schema": {"type": "string"}}}


class RegionSchema(StrictSchema):
    code = slug_field(max_length=50, example="fr-par-1", required=True)
    country = country_field(required=True)
    city = name_field(load_default=None, allow_none=True)
    datacenter_tier = WholeNumber(
        load_default=None, allow_none=True, validate=ma.validate.Range(min=1, max=4)
    )


class CertificationSchema(StrictSchema):
    scheme = slug_field(required=True, metadata={"description": "secnumcloud, hds, bsi-c5, …"})
    level = name_field(load_default=None, allow_none=True)
    valid_from = Timestamp(required=True)
    valid_until = Timestamp(required=True)
    issuer = name_field(
        load_default=None, allow_none=True, metadata={"description": "Who certified."}
    )
    evidence_url = https_url_field(
        load_default=None, allow_none=True, metadata={"description": "The certificate."}
    )
    document_sha256 = sha256_field(load_default=None, allow_none=True)


class JurisdictionSchema(StrictSchema):
    operator_country = country_field(required=True)
    parent_country = country_field(load_default=None, allow_none=True)
    extraterritorial_exposure = ma.fields.List(
        law_code_field(),
        load_default=list,
        validate=ma.validate.Length(max=20),
        metadata={"description": "Foreign laws reaching the operator, e.g. `US_CLOUD_ACT`."},
    )


class ProviderPatchSchema(StrictSchema):
    name = name_field()
    adapter = adapter_name_field()
    adapter_config = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(max=100)),
        metadata={
            "description": "Replaced whole, not merged: send every setting (a partial one drops "
            "the others, such as `flavors`)."
        },
    )
    regions = ma.fields.List(
        ma.fields.Nested(RegionSchema), validate=ma.validate.Length(min=1, max=100)
    )
    compliance = ma.fields.List(
        ma.fields.Nested(CertificationSchema), validate=ma.validate.Length(max=50)
    )
    jurisdiction = ma.fields.Nested(JurisdictionSchema)
    state = ma.fields.Enum(ProviderState, by_value=True, metadata={"description": "Admins only."})


class ProviderCreateSchema(ProviderPatchSchema):
    name = name_field(required=True)
    organization_id = ma.fields.UUID(required=True)
    adapter = adapter_name_field(required=True)
    adapter_config = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(max=100)), load_default=dict
    )
    regions = ma.fields.List(
        ma.fields.Nested(RegionSchema), required=True, validate=ma.validate.Length(min=1, max=100)
    )
    compliance = ma.fields.List(
        ma.fields.Nested(CertificationSchema),
        load_default=list,
        validate=ma.validate.Length(max=50),
    )
    jurisdiction = ma.fields.Nested(JurisdictionSchema, required=True)


class RegionOutSchema(ma.Schema):
    code = ma.fields.String()
    country = ma.fields.String()
    city = ma.fields.String(allow_none=True)
    datacenter_tier = ma.fields.Integer(allow_none=True)


class JurisdictionOutSchema(ma.Schema):
    operator_country = ma.fields.String()
    parent_country = ma.fields.String(allow_none=True)
    extraterritorial_exposure = ma.fields.List(ma.fields.String())


class ProviderSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    organization_id = ma.fields.UUID()
    adapter = ma.fields.String()
    adapter_config = ma.fields.Method(
        "_adapter_config",
        metadata={
            "type": ["object", "null"],
            "description": "Shown to admins and the provider's own operators; null to others.",
        },
    )
    regions = ma.fields.List(ma.fields.Nested(RegionOutSchema))
    compliance = ma.fields.Method(
        "_compliance",
        metadata={
            "type": "array",
            "items": {"$ref": "#/components/schemas/Evidence"},
            "description": "Verified certifications (expired ones too: see `counts`).",
        },
    )
    jurisdiction = ma.fields.Method("_jurisdiction")
    pending_evidence = ma.fields.Method(
        "_pending",
        metadata={
            "type": "array",
            "items": {"$ref": "#/components/schemas/Evidence"},
            "description": "Claims awaiting an assessor: shown to the provider's operators "
            "and the consortium; empty for others.",
        },
    )
    state = ma.fields.Enum(ProviderState, by_value=True)
    created_at = Timestamp()

    def _adapter_config(self, provider: Provider) -> dict[str, Any] | None:
        caller = current_caller()
        shown = access.may_administer_provider(caller, provider)
        return provider.adapter_config if shown else None

    def _compliance(self, provider: Provider) -> list[dict[str, Any]]:
        verified = [
            item
            for item in provider.evidence
            if item.kind is EvidenceKind.CERTIFICATION and item.state is EvidenceState.VERIFIED
        ]
        return dump_evidence(sorted(verified, key=lambda e: (e.scheme or "", e.submitted_at)))

    def _jurisdiction(self, provider: Provider) -> dict[str, Any]:
        """What counts: the verified jurisdiction, plus exposures disclosed since."""
        vouched = evidence.verified_jurisdiction(provider)
        return {
            "operator_country": provider.operator_country,
            "parent_country": provider.parent_country,
            "extraterritorial_exposure": provider.extraterritorial_exposure,
            "evidence_id": str(vouched.id) if vouched is not None else None,
            "verified_by": vouched.decided_by if vouched is not None else None,
            "verified_at": iso_z(vouched.decided_at) if vouched is not None else None,
        }

    def _pending(self, provider: Provider) -> list[dict[str, Any]]:
        caller = current_caller()
        if not access.sees_all_evidence(caller, provider):
            return []
        return dump_evidence([e for e in provider.evidence if e.state is EvidenceState.PENDING])


class CredentialsSchema(StrictSchema):
    credentials = ma.fields.Dict(
        keys=ma.fields.String(validate=ma.validate.Length(min=1, max=100)),
        values=ma.fields.String(validate=ma.validate.Length(min=1, max=4096)),
        required=True,
        validate=ma.validate.Length(min=1, max=20),
        metadata={"description": "Write-only: stored encrypted, never shown again."},
    )


class CredentialsOutSchema(ma.Schema):
    field_names = ma.fields.List(
        ma.fields.String(),
        attribute="fields",
        data_key="fields",
        metadata={"description": "Names only."},
    )
    updated_at = Timestamp()


def _provider_response(provider: Provider) -> Response:
    return with_etag(jsonify(ProviderSchema().dump(provider)), provider.version)


@blp.route("", methods=["GET"])
@blp.auth()
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(ProviderSchema))
def list_providers(args: dict[str, Any]) -> Any:
    """List the consortium's providers."""
    return service.list_providers(request_session(), **args)


@blp.route("", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(ProviderCreateSchema())
@blp.response(201, ProviderSchema, headers=_ETAG)
def create_provider(data: dict[str, Any]) -> Response:
    """Register a provider (operated by an organization of kind provider)."""
    provider = service.create_provider(
        request_session(), current_caller(), data, now(), http=provider_runtime().http
    )
    return created(_provider_response(provider), "providers.get_provider", provider_id=provider.id)


@blp.route("/<uuid:provider_id>", methods=["GET"])
@blp.auth()
@blp.response(200, ProviderSchema, headers=_ETAG)
def get_provider(provider_id: uuid.UUID) -> Response:
    """Read a provider, its regions, jurisdiction and compliance evidence."""
    return _provider_response(service.get_provider(request_session(), provider_id))


@blp.route("/<uuid:provider_id>", methods=["PATCH"])
@blp.auth(Role.ADMIN, Role.ASSESSOR, Role.PROVIDER)
@blp.arguments(ProviderPatchSchema())
@blp.response(200, ProviderSchema, headers=_ETAG)
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def update_provider(data: dict[str, Any], provider_id: uuid.UUID) -> Response:
    """Change a provider (admins; its own operators, except `state`; assessors, its claims
    only). Needs `If-Match`.

    `regions`, `jurisdiction` and `compliance` are sovereignty claims: from the consortium
    they are verified at once; from the provider's operators they become pending evidence
    (listed in `pending_evidence`) and the verified values keep counting until an assessor
    decides.

    A change of `adapter` or `adapter_config` after which the cloud would no longer sell the
    SKU of a published offer in its region is refused (422 `offers_stranded`, naming the
    offers), whenever the adapter can tell. Arrays (`regions`, `compliance`, and those inside
    `adapter_config`) are replaced whole, not merged."""
    service.refuse_stranding(database(), current_caller(), provider_id, data, provider_runtime())
    provider = service.update_provider(
        request_session(),
        current_caller(),
        provider_id,
        if_match=if_match(),
        changes=data,
        now=now(),
        http=provider_runtime().http,
    )
    return _provider_response(provider)


@blp.route("/<uuid:provider_id>/credentials", methods=["PUT"])
@blp.auth(Role.ADMIN, Role.PROVIDER)
@blp.arguments(CredentialsSchema())
@blp.response(200, CredentialsOutSchema)
def set_credentials(data: dict[str, Any], provider_id: uuid.UUID) -> Any:
    """Set the credentials its adapter uses (admins; the provider's operators). Write-only."""
    provider = service.operated_provider(request_session(), current_caller(), provider_id)
    adapters.check_credentials(provider.adapter, data["credentials"])
    return credentials.set_credentials(
        request_session(),
        current_caller(),
        provider,
        data["credentials"],
        provider_runtime().keyring,
    )


@blp.route("/<uuid:provider_id>/credentials", methods=["GET"])
@blp.auth(Role.ADMIN, Role.PROVIDER)
@blp.response(200, CredentialsOutSchema)
def get_credentials(provider_id: uuid.UUID) -> Any:
    """Which credential fields are set, and when (never their values)."""
    provider = service.operated_provider(request_session(), current_caller(), provider_id)
    return credentials.stored(request_session(), provider.id)


@blp.route("/<uuid:provider_id>/credentials", methods=["DELETE"])
@blp.auth(Role.ADMIN, Role.PROVIDER)
@blp.response(204)
def clear_credentials(provider_id: uuid.UUID) -> None:
    """Forget the provider's credentials."""
    provider = service.operated_provider(request_session(), current_caller(), provider_id)
    credentials.clear_credentials(request_session(), current_caller(), provider)


@blp.route("/<uuid:provider_id>/sync", methods=["POST"])
@blp.auth(Role.ADMIN, Role.PROVIDER)
@blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}}})
def sync_offers(provider_id: uuid.UUID) -> Any:
    """Import the adapter's machine types as draft offers, in the background.

    Answers the queued job; follow `Location` to see it finish. A sync already waiting for
    this provider is answered instead of a second one.
    """
    job = offer_sync.request_sync(request_session(), current_caller(), provider_id)
    return job, 202, job_location(job)
