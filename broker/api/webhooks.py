"""`/v1/webhooks`: where an agency wants its order and resource state changes delivered.

Deliveries are signed with a secret shown once, in the answer to `POST` (see
broker/services/webhooks.py for the signature, the retry rules, the cap on endpoints and the
failures that disable an endpoint). `POST …/enable` and `…/disable` change its `state`.
"""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify

from broker.api.base import (
    Blueprint,
    created,
    current_caller,
    provider_runtime,
    request_session,
)
from broker.api.schemas import ListArgs, PublicUrl, StrictSchema, Timestamp, page_of
from broker.models import Role, WebhookEndpoint
from broker.models.orders import WebhookEndpointState
from broker.services import webhooks as service

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks", description="Webhooks")


class WebhookCreateSchema(StrictSchema):
    url = ma.fields.String(
        required=True,
        validate=[
            ma.validate.Length(max=500),
            PublicUrl("https://hooks.example.org/broker", local_when="WEBHOOKS_ALLOW_PRIVATE"),
        ],
        metadata={
            "description": "An https URL whose host name resolves to public addresses only "
            "(any http(s) URL when the server runs with BROKER_ALLOW_PRIVATE_WEBHOOKS=true, "
            "for development)."
        },
    )
    events = ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(service.EVENT_TYPES)),
        load_default=list,
        validate=ma.validate.Length(max=20),
        metadata={
            "description": "Event types to deliver (repeats are ignored); empty or absent: "
            "all of them."
        },
    )
    organization_id = ma.fields.UUID(
        load_default=None,
        metadata={
            "description": "Whose endpoint it is: your own organization (the default); "
            "admins may name any organization."
        },
    )


class WebhookListArgs(ListArgs):
    organization_id = ma.fields.UUID(
        load_default=None, metadata={"description": "Only this organization's endpoints."}
    )


class WebhookSchema(ma.Schema):
    id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    url = ma.fields.String()
    events = ma.fields.List(
        ma.fields.String(), metadata={"description": "Empty: every event type."}
    )
    active = ma.fields.Boolean(metadata={"description": "Whether `state` is `active`."})
    state = ma.fields.Enum(
        WebhookEndpointState,
        by_value=True,
        metadata={
            "description": "`disabled`: nothing is delivered to it (its owner disabled it, or "
            f"{service.DISABLE_AFTER_FAILURES} delivery attempts in a row failed) until it is "
            "enabled again (`POST …/enable`)."
        },
    )
    consecutive_failures = ma.fields.Integer(
        metadata={
            "description": "Failed delivery attempts since the last one that succeeded; at "
            f"{service.DISABLE_AFTER_FAILURES} the endpoint is disabled."
        }
    )
    last_error = ma.fields.String(
        allow_none=True, metadata={"description": "Why the last failed attempt failed."}
    )
    last_failure_at = Timestamp(allow_none=True)
    last_delivered_at = Timestamp(allow_none=True)
    disabled_at = Timestamp(allow_none=True)
    disabled_reason = ma.fields.String(allow_none=True)
    created_at = Timestamp()


class WebhookCreatedSchema(WebhookSchema):
    secret = ma.fields.String(
        metadata={
            "description": "The signing secret of `Broker-Signature`. Shown once, now: only "
            "an encrypted copy is kept."
        }
    )


@blp.route("", methods=["POST"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.arguments(WebhookCreateSchema())
@blp.response(201, WebhookCreatedSchema)
def create_webhook(data: dict[str, Any]) -> Response:
    """Register an endpoint for your organization's order and resource state changes.

    The answer holds the signing secret, never shown again. An organization has at most
    10 endpoints: one more is 409 `webhook_endpoint_limit`.
    """
    runtime = provider_runtime()
    endpoint, secret = service.register(
        request_session(),
        current_caller(),
        data["url"],
        data["events"],
        runtime.keyring,
        service.http_policy(current_app.config),
        organization_id=data["organization_id"],
    )
    response = jsonify({**WebhookSchema().dump(endpoint), "secret": secret})
    response.headers["Cache-Control"] = "no-store"
    return created(response, "webhooks.get_webhook", endpoint_id=endpoint.id)


@blp.route("", methods=["GET"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.arguments(WebhookListArgs(), location="query")
@blp.response(200, page_of(WebhookSchema))
def list_webhooks(args: dict[str, Any]) -> Any:
    """List your organization's endpoints (admins: every organization's)."""
    return service.list_endpoints(request_session(), current_caller(), **args)


@blp.route("/<uuid:endpoint_id>", methods=["GET"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.response(200, WebhookSchema)
def get_webhook(endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """Read an endpoint (never its secret)."""
    return service.get_endpoint(request_session(), current_caller(), endpoint_id)


@blp.route("/<uuid:endpoint_id>", methods=["DELETE"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.response(204)
def delete_webhook(endpoint_id: uuid.UUID) -> None:
    """Remove an endpoint; deliveries still queued for it are dropped."""
    service.delete_endpoint(request_session(), current_caller(), endpoint_id)


@blp.route("/<uuid:endpoint_id>/enable", methods=["POST"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.response(200, WebhookSchema)
def enable_webhook(endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """Deliver to a disabled endpoint again, its failures counted from zero.

    Events of the time it was disabled are not sent.
    """
    return service.enable_endpoint(request_session(), current_caller(), endpoint_id)


@blp.route("/<uuid:endpoint_id>/disable", methods=["POST"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.response(200, WebhookSchema)
def disable_webhook(endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """Stop delivering to an endpoint until it is enabled again."""
    return service.disable_endpoint(request_session(), current_caller(), endpoint_id)
