"""Payments received outside Stripe (`/v1/invoices/{id}/payments`): finance records the bank
transfers that pay an issued invoice; the agency reads them (`broker.services.transfers`)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, current_caller, now, request_session
from broker.api.idempotency import idempotent
from broker.api.schemas import (
    NO_CONTROL_CHARACTERS,
    ListArgs,
    Money,
    StrictSchema,
    Timestamp,
    agency_id_field,
    page_of,
)
from broker.models import Role
from broker.services import transfers

blp = Blueprint(
    "invoice_payments",
    __name__,
    url_prefix="/v1/invoices",
    description="Payments received outside Stripe (bank transfers)",
)

REFERENCE_LENGTH = 140  # SEPA's remittance information


class InvoicePaymentCreateSchema(StrictSchema):
    amount = Money(
        required=True,
        metadata={
            "description": "In the invoice's currency, positive, whole minor units "
            '(e.g. "1200.00"); at most what is still owed'
        },
    )
    received_on = ma.fields.Date(
        required=True,
        error_messages={"invalid": "Expected a date as YYYY-MM-DD, such as `2030-04-15`."},
        metadata={
            "description": "The day the money arrived (the bank statement's date): not in the "
            "future, not before the invoice was issued"
        },
    )
    reference = ma.fields.String(
        required=True,
        validate=[ma.validate.Length(min=1, max=REFERENCE_LENGTH), NO_CONTROL_CHARACTERS],
        metadata={"description": "The transfer's reference, as the bank statement shows it"},
    )


class InvoicePaymentSchema(ma.Schema):
    id = ma.fields.UUID()
    invoice_id = ma.fields.UUID()
    agency_id = agency_id_field()
    amount = Money(currency_from="currency")
    currency = ma.fields.String()
    received_on = ma.fields.Date()
    reference = ma.fields.String()
    recorded_by = ma.fields.String(metadata={"description": "Who recorded it (client id)"})
    created_at = Timestamp()


class RecordedInvoicePaymentSchema(InvoicePaymentSchema):
    """A payment just recorded, with what its invoice is still owed after it."""

    amount_due = Money(
        currency_from="currency",
        metadata={"description": "What the invoice is still owed after this payment"},
    )


class InvoicePaymentListSchema(page_of(InvoicePaymentSchema)):  # type: ignore[misc]
    """A page of an invoice's payments, and where its payment stands."""

    currency = ma.fields.String()
    total = Money(currency_from="currency", metadata={"description": "The invoice's total"})
    credited = Money(
        currency_from="currency", metadata={"description": "By its credit notes, tax included"}
    )
    amount_paid = Money(
        currency_from="currency", metadata={"description": "By the payments recorded here"}
    )
    amount_due = Money(
        currency_from="currency",
        metadata={"description": "What is still owed (0 once paid or void)"},
    )


@blp.route("/<uuid:invoice_id>/payments", methods=["POST"])
@blp.auth(Role.FINANCE)
@idempotent(required=True)
@blp.arguments(InvoicePaymentCreateSchema)
@blp.response(201, RecordedInvoicePaymentSchema)
def record_payment(data: dict[str, Any], invoice_id: uuid.UUID) -> Response:
    """Record a payment received outside Stripe (a bank transfer) for a finalized invoice
    (`Idempotency-Key`). Payments add up; the one that pays all that is still owed (the total
    less credit notes and earlier payments) moves the invoice to `paid`. An amount above what
    is owed is 422 naming `amount`; a draft, void or paid invoice is 409 (`not_issued`,
    `invoice_void`, `invoice_paid`). Stripe is not told."""
    receipt = transfers.record_payment(
        request_session(), current_caller(), invoice_id, now=now(), **data
    )
    # The payment's fields, and its receipt's `amount_due`.
    response = jsonify(
        RecordedInvoicePaymentSchema(exclude=("amount_due",)).dump(receipt.payment)
        | RecordedInvoicePaymentSchema(only=("amount_due",)).dump(receipt)
    )
    response.status_code = 201
    return response


@blp.route("/<uuid:invoice_id>/payments", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@blp.arguments(ListArgs, location="query")
@blp.response(200, InvoicePaymentListSchema)
def list_payments(args: dict[str, Any], invoice_id: uuid.UUID) -> Any:
    """An invoice's payments received outside Stripe, in the order they were recorded, with
    its total, credits, amount paid and amount still due: your agency's invoices, or (finance)
    any."""
    page, balance = transfers.list_payments(request_session(), current_caller(), invoice_id, **args)
    return {"items": page.items, "next_cursor": page.next_cursor, **dataclasses.asdict(balance)}
