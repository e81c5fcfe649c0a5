"""`/v1/trusted-issuers`: certification bodies whose signed statements verify themselves."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, now, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
from broker.api.schemas import ListArgs, Matches, StrictSchema, Timestamp, name_field, page_of
from broker.models import Role, TrustedIssuer
from broker.services import trusted_issuers as service

blp = Blueprint(
    "trusted_issuers", __name__, url_prefix="/v1/trusted-issuers", description="Trusted issuers"
)

_ETAG = {"ETag": {"schema": {"type": "string"}}}
ISSUER_PATTERN = Matches(
    r"^[\x21-\x7e]+$",
    "the issuer's identifier as its statements' `iss` carries it, usually a URI such as "
    "`https://issuer.example.org`: printable ASCII without spaces",
)


class JwkSetSchema(StrictSchema):
    """A JWK set of public keys (RSA ≥ 2048 bits, EC P-256/P-384, Ed25519), each with a
    `kid`."""

    keys = ma.fields.List(
        ma.fields.Dict(keys=ma.fields.String()),
        required=True,
        validate=ma.validate.Length(min=1, max=20),
    )


class TrustedIssuerPatchSchema(StrictSchema):
    name = name_field()
    issuer = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=500), ISSUER_PATTERN],
        metadata={"description": "The `iss` its statements carry (a URI, usually)."},
    )
    jwks = ma.fields.Nested(JwkSetSchema, metadata={"description": "Its public keys."})


class TrustedIssuerCreateSchema(TrustedIssuerPatchSchema):
    name = name_field(required=True)
    issuer = ma.fields.String(
        required=True,
        validate=[ma.validate.Length(min=1, max=500), ISSUER_PATTERN],
        metadata={"description": "The `iss` its statements carry (a URI, usually)."},
    )
    jwks = ma.fields.Nested(
        JwkSetSchema, required=True, metadata={"description": "Its public keys."}
    )


class TrustedIssuerSchema(ma.Schema):
    id = ma.fields.UUID()
    name = ma.fields.String()
    issuer = ma.fields.String()
    jwks = ma.fields.Dict()
    created_at = Timestamp()


def _response(row: TrustedIssuer) -> Response:
    return with_etag(jsonify(TrustedIssuerSchema().dump(row)), row.version)


@blp.route("", methods=["GET"])
@blp.auth()
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(TrustedIssuerSchema))
def list_trusted_issuers(args: dict[str, Any]) -> Any:
    """The issuers whose signed statements the consortium trusts, with their public keys."""
    return service.list_issuers(request_session(), **args)


@blp.route("", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(TrustedIssuerCreateSchema())
@blp.response(201, TrustedIssuerSchema, headers=_ETAG)
def create_trusted_issuer(data: dict[str, Any]) -> Response:
    """Trust an issuer: statements signed by one of its keys verify themselves."""
    row = service.create(request_session(), current_caller(), data)
    return created(_response(row), "trusted_issuers.get_trusted_issuer", issuer_id=row.id)


@blp.route("/<uuid:issuer_id>", methods=["GET"])
@blp.auth()
@blp.response(200, TrustedIssuerSchema, headers=_ETAG)
def get_trusted_issuer(issuer_id: uuid.UUID) -> Response:
    """One trusted issuer and its public keys."""
    return _response(service.get(request_session(), issuer_id))


@blp.route("/<uuid:issuer_id>", methods=["PATCH"])
@blp.auth(Role.ADMIN)
@blp.arguments(TrustedIssuerPatchSchema())
@blp.response(200, TrustedIssuerSchema, headers=_ETAG)
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def update_trusted_issuer(data: dict[str, Any], issuer_id: uuid.UUID) -> Response:
    """Rename an issuer or replace its keys (statements signed by a removed key stop
    counting). Needs `If-Match`."""
    row = service.update(
        request_session(),
        current_caller(),
        issuer_id,
        if_match=if_match(),
        changes=data,
        now=now(),
    )
    return _response(row)


@blp.route("/<uuid:issuer_id>", methods=["DELETE"])
@blp.auth(Role.ADMIN)
@blp.response(204)
def delete_trusted_issuer(issuer_id: uuid.UUID) -> None:
    """Stop trusting an issuer: every statement it signed stops counting."""
    service.delete(request_session(), current_caller(), issuer_id, now())
