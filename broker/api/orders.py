"""`/v1/orders`: an agency orders machines; approvers decide the orders that need it."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, now, request_session
from broker.api.idempotency import idempotent
from broker.api.schemas import (
    BUYER_REFERENCE,
    NO_CONTROL_CHARACTERS,
    PURCHASE_ORDER_REFERENCE,
    ListArgs,
    Matches,
    Money,
    StrictSchema,
    Timestamp,
    WholeNumber,
    agency_id_field,
    name_field,
    page_of,
    reference_field,
    slug_field,
)
from broker.models import Order, OrderState, Role
from broker.services import orders as service

blp = Blueprint("orders", __name__, url_prefix="/v1/orders", description="Orders")

SSH_KEY = (
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]{16,8192}( [^\n]{0,200})?$"
)
SSH_KEY_EXPECTED = (
    "an OpenSSH public key line such as `ssh-ed25519 AAAAC3Nza… user@host`: the type "
    "(ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp256/384/521), a space, the base64 key, and an "
    "optional comment, on one line"
)


class OrderParametersSchema(StrictSchema):
    image = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=200), NO_CONTROL_CHARACTERS],
        metadata={"description": "Image id or name at the provider (its default when absent)."},
    )
    ssh_public_key = ma.fields.String(validate=Matches(SSH_KEY, SSH_KEY_EXPECTED))


class OrderCreateSchema(StrictSchema):
    offer_id = ma.fields.UUID(required=True)
    quantity = WholeNumber(load_default=1, validate=ma.validate.Range(min=1, max=20))
    name = slug_field(
        max_length=50, example="web-01", required=True, metadata={"description": "Machine name."}
    )
    parameters = ma.fields.Nested(OrderParametersSchema, load_default=dict)
    buyer_reference = reference_field(BUYER_REFERENCE + " The billing profile's when absent.")
    purchase_order_reference = reference_field(
        PURCHASE_ORDER_REFERENCE + " The billing profile's when absent."
    )


class RejectSchema(StrictSchema):
    reason = name_field(required=True)


class OrderListArgs(ListArgs):
    state = ma.fields.Enum(OrderState, by_value=True)


class OrderSchema(ma.Schema):
    id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    agency_id = agency_id_field()
    created_by = ma.fields.String()
    offer_id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    name = ma.fields.String()
    quantity = ma.fields.Integer()
    parameters = ma.fields.Dict()
    buyer_reference = ma.fields.String(allow_none=True)
    purchase_order_reference = ma.fields.String(allow_none=True)
    prices = ma.fields.List(ma.fields.Dict(), metadata={"description": "Pinned at order time."})
    currency = ma.fields.String()
    unit_monthly_cost = Money(currency_from="currency")
    monthly_cost = Money(currency_from="currency")
    state = ma.fields.Enum(OrderState, by_value=True)
    state_reason = ma.fields.String(allow_none=True)
    decided_by = ma.fields.String(allow_none=True)
    decided_at = Timestamp(allow_none=True)
    completed_at = Timestamp(allow_none=True)
    created_at = Timestamp()


def _order_response(order: Order, status: int = 200) -> Response:
    response = jsonify(OrderSchema().dump(order))
    response.status_code = status
    return response


@blp.route("", methods=["POST"])
@blp.auth(Role.BUYER)
@idempotent(required=True)
@blp.arguments(OrderCreateSchema())
@blp.response(201, OrderSchema)
def place_order(data: dict[str, Any]) -> Response:
    """Order machines of an offer. Needs an `Idempotency-Key`. Checked against your agency's
    policy (422 `policy_violation` with reasons, 422 `budget_exceeded`); over the approval
    threshold it waits for an approver (`pending_approval`), otherwise it is approved and
    provisioned in the background."""
    order = service.place_order(request_session(), current_caller(), data, now())
    return created(_order_response(order), "orders.get_order", order_id=order.id)


@blp.route("", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.arguments(OrderListArgs(), location="query")
@blp.response(200, page_of(OrderSchema))
def list_orders(args: dict[str, Any]) -> Any:
    """Your agency's orders, newest first (admins: every agency's)."""
    return service.list_orders(request_session(), current_caller(), **args)


@blp.route("/<uuid:order_id>", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.ADMIN)
@blp.response(200, OrderSchema)
def get_order(order_id: uuid.UUID) -> Any:
    return service.get_order(request_session(), current_caller(), order_id)


@blp.route("/<uuid:order_id>/approve", methods=["POST"])
@blp.auth(Role.APPROVER)
@blp.response(200, OrderSchema)
def approve_order(order_id: uuid.UUID) -> Any:
    """Approve an order awaiting approval (approvers of its agency): provisioning starts."""
    return service.approve(request_session(), current_caller(), order_id, now())


@blp.route("/<uuid:order_id>/reject", methods=["POST"])
@blp.auth(Role.APPROVER)
@blp.arguments(RejectSchema())
@blp.response(200, OrderSchema)
def reject_order(data: dict[str, Any], order_id: uuid.UUID) -> Any:
    """Reject an order awaiting approval, saying why (approvers of its agency)."""
    return service.reject(request_session(), current_caller(), order_id, data["reason"], now())


@blp.route("/<uuid:order_id>/cancel", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.response(200, OrderSchema)
def cancel_order(order_id: uuid.UUID) -> Any:
    """Withdraw an order awaiting approval or not yet started."""
    return service.cancel(request_session(), current_caller(), order_id, now())
