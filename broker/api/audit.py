"""`/v1/audit-events`: the hash-chained audit log."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from broker.api.base import Blueprint, current_caller, request_session
from broker.api.schemas import ListArgs, Timestamp, page_of
from broker.services import audit as service

blp = Blueprint("audit", __name__, url_prefix="/v1/audit-events", description="Audit log")


class AuditEventSchema(ma.Schema):
    id = ma.fields.UUID()
    seq = ma.fields.Integer()
    occurred_at = Timestamp()
    actor_client_id = ma.fields.String(allow_none=True)
    actor_organization_id = ma.fields.UUID(allow_none=True)
    organization_id = ma.fields.UUID(allow_none=True)
    action = ma.fields.String()
    object_type = ma.fields.String()
    object_id = ma.fields.String()
    before = ma.fields.Dict(allow_none=True)
    after = ma.fields.Dict(allow_none=True)
    request_id = ma.fields.String(allow_none=True)
    prev_hash = ma.fields.String()
    hash = ma.fields.String()


class AuditListArgs(ListArgs):
    object_type = ma.fields.String(load_default=None, validate=ma.validate.Length(max=50))
    object_id = ma.fields.String(load_default=None, validate=ma.validate.Length(max=64))


@blp.route("", methods=["GET"])
@blp.auth()
@blp.arguments(AuditListArgs(), location="query")
@blp.response(200, page_of(AuditEventSchema))
def list_audit_events(args: dict[str, Any]) -> Any:
    """Audit events in chain order: all for admins, your organization's for everyone else."""
    return service.list_events(request_session(), current_caller(), **args)
