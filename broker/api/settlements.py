"""`/v1/settlements`: what the consortium owes each provider for a period."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app

from broker.api.base import Blueprint, current_caller, request_session
from broker.api.schemas import Money, StrictSchema, period_field
from broker.models import Role
from broker.services import settlements as service

blp = Blueprint(
    "settlements", __name__, url_prefix="/v1/settlements", description="Provider settlements"
)


class SettlementArgs(StrictSchema):
    period = period_field(required=True)


class SettlementSchema(ma.Schema):
    provider_id = ma.fields.UUID()
    provider_name = ma.fields.String()
    currency = ma.fields.String()
    gross = Money(
        currency_from="currency",
        metadata={"description": "Net of the issued invoice lines for its resources"},
    )
    credits = Money(currency_from="currency", metadata={"description": "Credited back on them"})
    fee = Money(currency_from="currency", metadata={"description": "The consortium's fee"})
    net = Money(currency_from="currency", metadata={"description": "Owed to the provider"})


class SettlementTotalSchema(ma.Schema):
    currency = ma.fields.String()
    gross = Money(currency_from="currency")
    credits = Money(currency_from="currency")
    fee = Money(currency_from="currency")
    net = Money(currency_from="currency")


class SettlementReportSchema(ma.Schema):
    period = ma.fields.String()
    fee_rate = ma.fields.String(
        metadata={"description": 'The consortium\'s fee, percent of gross − credits, e.g. "5"'}
    )
    items = ma.fields.List(ma.fields.Nested(SettlementSchema))
    totals = ma.fields.List(ma.fields.Nested(SettlementTotalSchema))


@blp.route("", methods=["GET"])
@blp.auth(Role.FINANCE, Role.ADMIN, Role.PROVIDER)
@blp.arguments(SettlementArgs(), location="query")
@blp.response(200, SettlementReportSchema)
def get_settlements(args: dict[str, Any]) -> Any:
    """Per provider and currency, from the period's issued invoices and the credit notes that
    correct them: gross, credits, the consortium's fee and the net owed. The fee is rounded
    once per currency and shared out so that nets plus fees equal the invoiced net minus
    credits, to the cent. VAT is not part of it. A provider's operators see their own."""
    return service.for_period(
        request_session(), current_caller(), args["period"], current_app.config
    )
