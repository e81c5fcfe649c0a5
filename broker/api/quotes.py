"""`POST /v1/quotes`: what an offer would cost, and whether your agency's policy allows it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma

from broker.api.base import Blueprint, current_caller, now, request_session
from broker.api.schemas import Money, RatedLineSchema, StrictSchema, WholeNumber
from broker.models import Role
from broker.services import quotes as service

blp = Blueprint("quotes", __name__, url_prefix="/v1/quotes", description="Quotes")


class QuoteRequestSchema(StrictSchema):
    offer_id = ma.fields.UUID(required=True)
    quantity = WholeNumber(load_default=1, validate=ma.validate.Range(min=1, max=1000))
    hours = WholeNumber(
        load_default=730,
        validate=ma.validate.Range(min=1, max=8784),
        metadata={"description": "Hours of running (730 ≈ one month)."},
    )
    stored_gib = WholeNumber(
        load_default=None,
        validate=ma.validate.Range(min=1, max=1_048_576),
        metadata={
            "description": "Object storage only: GiB the bucket will store (1,000 unless "
            "given). Requests and egress are not estimated."
        },
    )


class ReasonSchema(ma.Schema):
    code = ma.fields.String()
    detail = ma.fields.String()


class QuoteSchema(ma.Schema):
    offer_id = ma.fields.UUID(attribute="offer.id")
    offer_version = ma.fields.Integer(attribute="offer.version")
    quantity = ma.fields.Integer()
    hours = ma.fields.Integer()
    stored_gib = ma.fields.Integer(allow_none=True)
    lines = ma.fields.List(ma.fields.Nested(RatedLineSchema), attribute="estimate.lines")
    total = Money(attribute="estimate.total", currency_from="estimate.currency")
    currency = ma.fields.String(attribute="estimate.currency")
    allowed = ma.fields.Boolean(
        metadata={
            "description": "Whether your agency's policy and budget allow ordering this "
            "(`reasons` says why not), as placing the order would check them."
        }
    )
    reasons = ma.fields.List(ma.fields.Nested(ReasonSchema))
    approval_required = ma.fields.Boolean(
        metadata={
            "description": "Whether an order of this would wait for an approver of your agency: "
            "its monthly cost (`quantity` machines for 730 h, whatever `hours`) is over the "
            "policy's approval threshold. The same rule orders follow; an order that is not "
            "`allowed` is refused instead."
        }
    )
    budget_remaining = Money(
        allow_none=True,
        currency_from="budget_currency",
        metadata={
            "description": "What is left of your agency's monthly budget before this order: the "
            "budget less what is committed a month (machines being made or alive, and orders "
            "awaiting approval); 0 when already reached; null without a budget. In "
            "`budget_currency`."
        },
    )
    budget_currency = ma.fields.String(
        allow_none=True,
        metadata={"description": "The currency of your agency's budget; null without one."},
    )


@blp.route("", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.arguments(QuoteRequestSchema())
@blp.response(200, QuoteSchema)
def create_quote(data: dict[str, Any]) -> service.Quote:
    """Price `quantity` machines of an offer for `hours`, per metric, against your policy."""
    return service.quote(
        request_session(),
        current_caller(),
        data["offer_id"],
        quantity=data["quantity"],
        hours=Decimal(data["hours"]),
        now=now(),
        stored_gib=data["stored_gib"],
    )
