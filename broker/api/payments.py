"""`POST /v1/webhooks/stripe`: Stripe's payment events (signed, not token-authenticated)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app, request

from broker.api.base import Blueprint, now, request_session
from broker.services import payments as service

blp = Blueprint("payments", __name__, url_prefix="/v1/webhooks", description="Payments")


class WebhookReceiptSchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "`processed` or `duplicate`"})
    event_id = ma.fields.String()
    outcome = ma.fields.String()


@blp.route("/stripe", methods=["POST"])
@blp.doc(
    security=[],
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    parameters=[
        {
            "name": "Stripe-Signature",
            "in": "header",
            "required": True,
            "schema": {"type": "string"},
            "description": '`t=<unix time>,v1=<HMAC-SHA256 of "t.body">`',
        }
    ],
)
@blp.response(200, WebhookReceiptSchema)
def stripe_webhook() -> Any:
    """A Stripe event. The signature is checked on the raw body with the configured secret
    and a timestamp tolerance (400 `bad_signature` otherwise); an event already received is
    answered `duplicate` and changes nothing; an invoice's payment state only moves forward,
    whatever order events arrive in."""
    return service.receive_event(
        request_session(),
        request.get_data(cache=False),
        request.headers.get("Stripe-Signature"),
        current_app.config,
        now(),
    )
