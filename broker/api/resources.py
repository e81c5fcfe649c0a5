"""`/v1/resources`: the machines an agency's orders made, and their day-2 actions."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, current_caller, now, request_session
from broker.api.jobs import JobSchema, job_location
from broker.api.schemas import (
    ListArgs,
    Money,
    RatedLineSchema,
    StrictSchema,
    Timestamp,
    agency_id_field,
    page_of,
)
from broker.models import ResourceState, Role
from broker.services import resources as service

blp = Blueprint("resources", __name__, url_prefix="/v1/resources", description="Resources")


class ResourceListArgs(ListArgs):
    order_id = ma.fields.UUID()
    state = ma.fields.Enum(ResourceState, by_value=True)


class ResourceEventSchema(ma.Schema):
    at = Timestamp()
    from_state = ma.fields.String(allow_none=True)
    to_state = ma.fields.String()
    reason = ma.fields.String(allow_none=True)


class ResourceSchema(ma.Schema):
    id = ma.fields.UUID()
    order_id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    agency_id = agency_id_field()
    provider_id = ma.fields.UUID()
    offer_id = ma.fields.UUID()
    name = ma.fields.String()
    state = ma.fields.Enum(ResourceState, by_value=True)
    state_reason = ma.fields.String(allow_none=True)
    provider_ref = ma.fields.String(allow_none=True)
    addresses = ma.fields.List(ma.fields.String())
    unit_monthly_cost = Money(currency_from="currency")
    currency = ma.fields.String()
    created_at = Timestamp()
    activated_at = Timestamp(allow_none=True)
    terminated_at = Timestamp(allow_none=True)


class CostSchema(ma.Schema):
    period = ma.fields.String()
    currency = ma.fields.String()
    amount = Money(currency_from="currency")
    lines = ma.fields.List(ma.fields.Nested(RatedLineSchema))


class ResourceDetailSchema(ResourceSchema):
    events = ma.fields.List(ma.fields.Nested(ResourceEventSchema))
    cost_this_period = ma.fields.Nested(
        CostSchema,
        metadata={
            "description": "What the machine has cost so far this period, at its order's "
            "prices, before tax: the usage recorded for every metric, plus an estimate for the "
            "running time whose usage has not arrived yet. The broker meters instance hours "
            "each hour; vCPU and RAM hours come from the provider later (polled hour by hour, "
            "or pushed), so until they do they are estimated from the machine's size (vCPUs, "
            "GiB of RAM) and the time it ran; once they arrive they replace the estimate for "
            "the time they cover. Storage and egress count once reported. The invoice bills "
            "the usage recorded."
        },
    )


class ActionSchema(StrictSchema):
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(sorted(service.ACTIONS)))


@blp.route("", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.arguments(ResourceListArgs, location="query")
@blp.response(200, page_of(ResourceSchema))
def list_resources(args: dict[str, Any]) -> Any:
    """Your agency's machines, newest first (admins: every agency's)."""
    return service.list_resources(request_session(), current_caller(), **args)


@blp.route("/<uuid:resource_id>", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.response(200, ResourceDetailSchema)
def get_resource(resource_id: uuid.UUID) -> Response:
    """A machine, with every state it went through and when, and its cost so far this period."""
    session = request_session()
    resource = service.get_resource(session, current_caller(), resource_id)
    body = ResourceDetailSchema(exclude=["cost_this_period"]).dump(resource)
    body["cost_this_period"] = CostSchema().dump(service.cost_this_period(session, resource, now()))
    return jsonify(body)


@blp.route("/<uuid:resource_id>/actions", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.arguments(ActionSchema)
@blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}}})
def act(data: dict[str, Any], resource_id: uuid.UUID) -> Any:
    """`stop`, `start`, `reboot` or `terminate`, carried out in the background (202 and the
    job). 409 when the machine's state does not allow it (or another action is under way)."""
    job = service.request_action(
        request_session(), current_caller(), resource_id, data["action"], now()
    )
    return job, 202, job_location(job)
