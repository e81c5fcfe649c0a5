"""`/v1/organizations/{id}/policy`: an agency's budget and sovereignty rules."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, current_caller, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
from broker.api.schemas import (
    JsonBool,
    Money,
    StrictSchema,
    country_field,
    currency_field,
    slug_field,
)
from broker.models import Role
from broker.services import policies as service

blp = Blueprint("policies", __name__, url_prefix="/v1/organizations", description="Agency policies")

_ETAG = {"ETag": {"schema": {"type": "string"}}}


class SovereigntySchema(StrictSchema):
    required_certifications = ma.fields.List(
        slug_field(), load_default=list, validate=ma.validate.Length(max=20)
    )
    allowed_countries = ma.fields.List(
        country_field(),
        load_default=list,
        validate=ma.validate.Length(max=250),
        metadata={"description": "Where data may sit; empty means anywhere."},
    )
    forbid_extraterritorial = JsonBool(load_default=False)


class PolicySchema(StrictSchema):
    currency = currency_field(required=True)
    monthly_budget = Money(required=True, allow_none=True)
    approval_threshold = Money(
        required=True,
        allow_none=True,
        metadata={"description": "Orders costing more per month wait for an approver."},
    )
    sovereignty = ma.fields.Nested(SovereigntySchema, load_default=dict)


class SovereigntyOutSchema(ma.Schema):
    required_certifications = ma.fields.Function(lambda r: sorted(r.required_certifications))
    allowed_countries = ma.fields.Function(lambda r: sorted(r.allowed_countries))
    forbid_extraterritorial = ma.fields.Boolean()


class PolicyOutSchema(ma.Schema):
    organization_id = ma.fields.UUID()
    currency = ma.fields.String(allow_none=True)
    monthly_budget = Money(allow_none=True, currency_from="currency")
    approval_threshold = Money(allow_none=True, currency_from="currency")
    sovereignty = ma.fields.Nested(SovereigntyOutSchema)


def _policy_response(policy: service.PolicyView) -> Response:
    return with_etag(jsonify(PolicyOutSchema().dump(policy)), policy.version)


@blp.route("/<uuid:organization_id>/policy", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.response(200, PolicyOutSchema, headers=_ETAG)
def get_policy(organization_id: uuid.UUID) -> Response:
    """Read an agency's policy (its buyers and approvers, or admins), so buyers know before
    ordering what is allowed and what waits for an approver. Without one, all fields are empty
    and the ETag is `"v0"`. Another agency's policy answers 404."""
    return _policy_response(
        service.get_policy(request_session(), current_caller(), organization_id)
    )


@blp.route("/<uuid:organization_id>/policy", methods=["PUT"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.arguments(PolicySchema())
@blp.response(200, PolicyOutSchema, headers=_ETAG)
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def put_policy(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Replace an agency's policy (its approvers, or admins). Needs `If-Match` with the ETag
    you read."""
    policy = service.put_policy(
        request_session(),
        current_caller(),
        organization_id,
        if_match=if_match(),
        **data,
    )
    return _policy_response(policy)
