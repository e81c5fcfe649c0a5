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


class ReasonSchema(ma.Schema):
    code = ma.fields.String()
    detail = ma.fields.String()


class QuoteSchema(ma.Schema):
    offer_id = ma.fields.UUID(attribute="offer.id")
    offer_version = ma.fields.Integer(attribute="offer.version")
    quantity = ma.fields.Integer()
    hours = ma.fields.Integer()
    lines = ma.fields.List(ma.fields.Nested(RatedLineSchema), attribute="estimate.lines")
    total = Money(attribute="estimate.total", currency_from="estimate.currency")
    currency = ma.fields.String(attribute="estimate.currency")
    allowed = ma.fields.Boolean()
    reasons = ma.fields.List(ma.fields.Nested(ReasonSchema))


@blp.route("", methods=["POST"])
@blp.auth(Role.BUYER, Role.APPROVER)
@blp.arguments(QuoteRequestSchema)
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
    )
