"""`/v1/resources`: the machines, volumes and buckets an agency's orders made, their day-2
actions, and how to reach a bucket (its secret key shown once)."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import (
    Blueprint,
    current_caller,
    database,
    now,
    provider_runtime,
    request_session,
)
from broker.api.jobs import JobSchema, job_location
from broker.api.schemas import (
    ListArgs,
    Money,
    RatedLineSchema,
    StrictSchema,
    Timestamp,
    WholeNumber,
    agency_id_field,
    page_of,
)
from broker.models import ResourceState, Role
from broker.services import resources as service
from broker.services import storage

blp = Blueprint("resources", __name__, url_prefix="/v1/resources", description="Resources")


class ResourceListArgs(ListArgs):
    order_id = ma.fields.UUID()
    state = ma.fields.Enum(ResourceState, by_value=True)
    kind = ma.fields.String(validate=ma.validate.OneOf(list(service.KIND_ACTIONS)))


class ResourceEventSchema(ma.Schema):
    at = Timestamp()
    from_state = ma.fields.String(allow_none=True)
    to_state = ma.fields.String()
    reason = ma.fields.String(allow_none=True)
    size_gib = ma.fields.Integer(allow_none=True)


class ConnectionSchema(ma.Schema):
    """How to reach a bucket with any S3 client (`endpoint_url`, bucket, region, key pair)."""

    endpoint = ma.fields.String()
    bucket = ma.fields.String()
    region = ma.fields.String()
    access_key_id = ma.fields.String()
    issued_at = Timestamp()
    secret_shown_at = Timestamp(
        attribute="shown_at",
        allow_none=True,
        metadata={"description": "When the secret key was shown (once); null: not yet."},
    )


class RevealedConnectionSchema(ConnectionSchema):
    secret_access_key = ma.fields.String(
        metadata={"description": "Shown once, now: it is erased from the broker."}
    )


class ResourceSchema(ma.Schema):
    id = ma.fields.UUID()
    order_id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    agency_id = agency_id_field()
    provider_id = ma.fields.UUID()
    offer_id = ma.fields.UUID()
    kind = ma.fields.String(metadata={"description": "`vm`, `volume` or `object_storage`."})
    name = ma.fields.String()
    size_gib = ma.fields.Integer(
        allow_none=True, metadata={"description": "A volume's provisioned size now."}
    )
    attached_to_id = ma.fields.UUID(
        allow_none=True, metadata={"description": "The machine a volume is attached to."}
    )
    retention_days = ma.fields.Integer(
        allow_none=True,
        metadata={"description": "A vault's default retention (compliance mode), in days."},
    )
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
    connection = ma.fields.Nested(
        ConnectionSchema,
        allow_none=True,
        metadata={"description": "A bucket's: how to reach it (the secret key aside)."},
    )
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
    action = ma.fields.String(
        required=True,
        validate=ma.validate.OneOf(sorted(service.ACTIONS)),
        metadata={
            "description": "A machine: `stop`, `start`, `reboot`, `terminate`. A volume: "
            "`resize` (with `size_gib`, grow only), `attach` (with `machine_id`), `detach`, "
            "`terminate`. A bucket: `set_retention` (with `retention_days`, a vault's, never "
            "shorter), `rotate_key`, `terminate`."
        },
    )
    size_gib = WholeNumber(validate=ma.validate.Range(min=1, max=65536))
    machine_id = ma.fields.UUID()
    retention_days = WholeNumber(validate=ma.validate.Range(min=1, max=36500))


@blp.route("", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.arguments(ResourceListArgs(), location="query")
@blp.response(200, page_of(ResourceSchema))
def list_resources(args: dict[str, Any]) -> Any:
    """Your agency's machines, volumes and buckets, newest first (admins: every agency's)."""
    return service.list_resources(request_session(), current_caller(), **args)


@blp.route("/<uuid:resource_id>", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.response(200, ResourceDetailSchema)
def get_resource(resource_id: uuid.UUID) -> Response:
    """A machine, with every state it went through and when, and its cost so far this period."""
    session = request_session()
    resource = service.get_resource(session, current_caller(), resource_id)
    body = ResourceDetailSchema(exclude=["cost_this_period", "connection"]).dump(resource)
    found = storage.connection(session, resource)
    body["connection"] = ConnectionSchema().dump(found) if found is not None else None
    body["cost_this_period"] = CostSchema().dump(service.cost_this_period(session, resource, now()))
    return jsonify(body)


@blp.route("/<uuid:resource_id>/actions", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.arguments(ActionSchema())
@blp.response(202, JobSchema, headers={"Location": {"schema": {"type": "string"}}})
def act(data: dict[str, Any], resource_id: uuid.UUID) -> Any:
    """An action, carried out in the background (202 and the job). 422 when the resource's
    kind has no such action or its parameters are wrong (`action_not_for_kind`,
    `volume_shrink`, `machine_elsewhere`, `retention_shortened`, `budget_exceeded`); 404 for a
    machine your agency does not have; 409 when the state does not allow it now (another
    action under way; `under_retention`: a vault still holding objects it must keep)."""
    caller = current_caller()
    action = data.pop("action")
    retained = None
    if action == "terminate":  # asked of the cloud before the transaction writes anything
        retained = storage.retained(database(), caller, resource_id, provider_runtime())
    job = service.request_action(
        request_session(), caller, resource_id, action, now(), retained=retained, **data
    )
    return job, 202, job_location(job)


@blp.route("/<uuid:resource_id>/secret", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.response(200, RevealedConnectionSchema)
def reveal_secret(resource_id: uuid.UUID) -> Response:
    """A bucket's connection details with its secret key, once: the broker erases the secret
    as it answers (409 `secret_already_shown` afterwards: rotate the key with the
    `rotate_key` action, then ask again). Not replayable with an `Idempotency-Key`, so that no
    copy of the secret is stored."""
    found = storage.reveal_secret(
        request_session(), current_caller(), resource_id, provider_runtime().keyring, now()
    )
    response = jsonify(RevealedConnectionSchema().dump(found))
    response.headers["Cache-Control"] = "no-store"
    return response
