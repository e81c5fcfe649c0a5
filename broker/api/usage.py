"""`/v1/usage`: the usage ledger. Providers' operators push records for machines on their
providers; agencies read their own, finance everything."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify
from marshmallow import types as ma_types

from billing.metering import shown
from billing.rating import METRICS
from broker.api.base import Blueprint, current_caller, now, request_session
from broker.api.idempotency import idempotent
from broker.api.schemas import (
    MONEY_PATTERN,
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
MAX_RECORD_ID = 200


class UsageRecordInSchema(StrictSchema):
    record_id = ma.fields.String(
        required=True,
        validate=[ma.validate.Length(min=1, max=MAX_RECORD_ID), NO_CONTROL_CHARACTERS],
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
    """A batch of records. It documents the body and answers every invalid one; a batch that
    is valid through and through is loaded by `well_formed_batch` instead (see there)."""

    records = ma.fields.List(
        ma.fields.Nested(UsageRecordInSchema),
        required=True,
        validate=ma.validate.Length(min=1, max=service.MAX_BATCH),
    )

    def load(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        many: bool | None = None,
        partial: bool | ma_types.StrSequenceOrSet | None = None,
        unknown: ma_types.UnknownOption | None = None,
    ) -> Any:
        if not (many or self.many or partial or unknown):
            batch = well_formed_batch(data)
            if batch is not None:
                return batch
        return super().load(data, many=many, partial=partial, unknown=unknown)


_RECORD_FIELDS = frozenset(UsageRecordInSchema().fields)
_PUSHED_METRICS = frozenset(service.PROVIDER_METRICS)
_AMOUNT = re.compile(MONEY_PATTERN)  # what `Money` takes before it reads the number


def well_formed_batch(data: object) -> dict[str, Any] | None:
    """`UsagePushSchema`'s load of a batch in which nothing is wrong, or None when anything
    might be (marshmallow then loads it again and names every error).

    Loading a thousand records through nested marshmallow schemas was 40 % of an ingestion
    request. This takes the same values field by field, with the same functions marshmallow
    calls (`uuid.UUID`, `datetime.fromisoformat`, `Decimal`) and the schema's own rules (its
    fields, the metrics, the amount pattern, `MAX_QUANTITY`, the record id's length and
    characters, no NUL anywhere), and gives up at the first doubt: it never makes an error
    message, so a bad batch's answer is the schema's own, word for word.
    `tests/test_usage_ingestion_fast_path.py` holds both loads equal over generated batches."""
    if not isinstance(data, dict) or data.keys() != {"records"}:
        return None
    records = data["records"]
    if not isinstance(records, list) or not 1 <= len(records) <= service.MAX_BATCH:
        return None
    loaded = []
    for record in records:
        if not isinstance(record, dict) or record.keys() != _RECORD_FIELDS:
            return None
        record_id, resource_id, metric, quantity, start, end = (
            record["record_id"],
            record["resource_id"],
            record["metric"],
            record["quantity"],
            record["start"],
            record["end"],
        )
        if not (
            isinstance(record_id, str)
            and 1 <= len(record_id) <= MAX_RECORD_ID
            and NO_CONTROL_CHARACTERS.pattern.fullmatch(record_id)
            and isinstance(resource_id, str)
            and isinstance(metric, str)
            and metric in _PUSHED_METRICS
            and isinstance(quantity, str)
            and _AMOUNT.fullmatch(quantity)
            and isinstance(start, str)
            and isinstance(end, str)
            and "\x00" not in resource_id + start + end
        ):
            return None
        try:
            amount = Decimal(quantity)
            loaded.append(
                {
                    "record_id": record_id,
                    "resource_id": uuid.UUID(resource_id),
                    "metric": metric,
                    "quantity": amount,
                    "start": _instant(start),
                    "end": _instant(end),
                }
            )
        except ValueError:
            return None
        if amount > MAX_QUANTITY:
            return None
    return {"records": loaded}


def _instant(text: str) -> datetime:
    """What `Timestamp` loads: ISO 8601, read as UTC when it names no offset."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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
@blp.arguments(UsagePushSchema())
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
    return jsonify(push_result_body(result))


def push_result_body(result: service.PushResult) -> dict[str, Any]:
    """`PushResultSchema().dump(result)`, built directly: the result holds the answer's very
    fields already (`records` as `{record_id, status}`), and marshmallow's dump of a thousand
    nested records cost as much as the plausibility rules of the batch. The schema documents
    the answer; `tests/test_usage_ingestion_fast_path.py` holds the two equal."""
    return {"created": result.created, "duplicates": result.duplicates, "records": result.records}


@blp.route("", methods=["GET"])
@blp.auth(Role.BUYER, Role.APPROVER, Role.PROVIDER, Role.FINANCE, Role.ADMIN)
@blp.arguments(UsageListArgs(), location="query")
@blp.response(200, page_of(UsageRecordSchema))
def list_usage(args: dict[str, Any]) -> Any:
    """Usage records, newest first: your agency's machines', your providers' machines', or
    (finance) all of them."""
    return service.list_usage(request_session(), current_caller(), **args)
