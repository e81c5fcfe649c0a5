"""`/v1/usage`: the usage ledger. Providers' operators push records for machines on their
providers; agencies read their own, finance everything."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify

from billing.metering import shown
from billing.rating import METRICS
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
from broker.models import Role, UsageSource
from broker.services import usage as service

blp = Blueprint("usage", __name__, url_prefix="/v1/usage", description="Usage")


# The ledger keeps quantities as 64-bit counts of 1/3.6e9 (a microsecond of an hour), so it
# holds up to about 2.5e9 units: one record is held under a billion.
MAX_QUANTITY = Decimal("999999999.999999")
QUANTITY_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"


class UsageRecordInSchema(StrictSchema):
    record_id = ma.fields.String(
        required=True,
        validate=[ma.validate.Length(min=1, max=200), NO_CONTROL_CHARACTERS],
        metadata={"description": "Your own id of the record: a replay must carry the same."},
    )
    resource_id = ma.fields.UUID(required=True)
    metric = ma.fields.String(required=True, validate=ma.validate.OneOf(service.PROVIDER_METRICS))
    quantity = Money(
        required=True,
        validate=ma.validate.Range(max=MAX_QUANTITY),
        metadata={
            "description": "A decimal string, ≤ 6 decimals, under a billion.",
            "pattern": QUANTITY_PATTERN,
        },
    )
    start = Timestamp(required=True)
    end = Timestamp(required=True)


class UsagePushSchema(StrictSchema):
    records = ma.fields.List(
        ma.fields.Nested(UsageRecordInSchema),
        required=True,
        validate=ma.validate.Length(min=1, max=service.MAX_BATCH),
    )


class PushedRecordSchema(ma.Schema):
    record_id = ma.fields.String()
    status = ma.fields.String(metadata={"description": "`created`, or `duplicate` (a replay)"})


class PushResultSchema(ma.Schema):
    created = ma.fields.Integer()
    duplicates = ma.fields.Integer()
    records = ma.fields.List(ma.fields.Nested(PushedRecordSchema))


class UsageListArgs(ListArgs):
    resource_id = ma.fields.UUID()
    metric = ma.fields.String(validate=ma.validate.OneOf(sorted(METRICS)))
    start_from = Timestamp(data_key="from", metadata={"description": "Usage ending after this"})
    end_to = Timestamp(data_key="to", metadata={"description": "Usage starting before this"})


class ExactQuantity(ma.fields.Field):
    """A ledger quantity (exact) written as a decimal string rounded to 6 places."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(shown(value))


class UsageRecordSchema(ma.Schema):
    id = ma.fields.UUID()
    record_id = ma.fields.String()
    source = ma.fields.Enum(UsageSource, by_value=True)
    resource_id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    agency_id = agency_id_field()
    metric = ma.fields.String()
    quantity = ExactQuantity(metadata={"type": "string"})
    start = Timestamp()
    end = Timestamp()
    period = ma.fields.String()
    received_at = Timestamp()
    invoice_id = ma.fields.UUID(allow_none=True)


@blp.route("", methods=["POST"])
@blp.auth(Role.PROVIDER)
@idempotent(required=True)
@blp.arguments(UsagePushSchema)
@blp.response(200, PushResultSchema)
def push_usage(data: dict[str, Any]) -> Response:
    """Report usage of machines on your providers (≤ 1000 records, `Idempotency-Key`).

    The batch is stored whole or not at all: an invalid record (unknown resource, interval in
    the future, older than the lookback window or across two months) is a 422 naming it; a
    record id already received with other contents is a 409. A record received before with
    the same contents is answered `duplicate` and counts once.

    Usage that cannot have happened is a 422 too, its `refused` list naming each record
    (`index`, `record_id`) and the rule's `code`, which is also the problem's `code` when it
    is the only thing wrong: `resource_never_made` (the machine never became active),
    `outside_resource_life` (before its activation or after its termination, beyond the
    clock-skew tolerance), `quantity_implausible` (more than the machine can use in that time,
    alone or with the pushed records it overlaps: its vCPUs, its GiB of RAM, its disk, the
    egress and request ceilings), `metric_polled` (its adapter reports that metric of that
    machine for that month itself)."""
    result = service.push(
        request_session(), current_caller(), data["records"], now(), current_app.config
    )
    return jsonify(PushResultSchema().dump(result))


@blp.route("", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.PROVIDER, Role.FINANCE, Role.ADMIN)
@blp.arguments(UsageListArgs, location="query")
@blp.response(200, page_of(UsageRecordSchema))
def list_usage(args: dict[str, Any]) -> Any:
    """Usage records, newest first: your agency's machines', your providers' machines', or
    (finance) all of them."""
    return service.list_usage(request_session(), current_caller(), **args)
