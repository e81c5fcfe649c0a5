"""The audit log: every state change by a client, written in the same transaction as the
change, each event chained to the previous one by SHA-256."""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.context import correlation_id
from broker.models import AuditChainHead, AuditEvent
from broker.models.base import utcnow
from broker.services.pagination import Page, paginate

GENESIS_HASH = "0" * 64
HEAD_ID = 1


# Columns derived from others (a name's look-alike key): recording them says nothing more.
DERIVED = frozenset({"name_key"})


def snapshot(obj: Any, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A JSON-ready copy of a model's columns (secrets are excluded by the caller)."""
    mapper = inspect(type(obj))
    return {
        column.key: _jsonable(getattr(obj, column.key))
        for column in mapper.column_attrs
        if column.key not in exclude and column.key not in DERIVED
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _event_hash(event: AuditEvent) -> str:
    body = {
        "seq": event.seq,
        "occurred_at": _jsonable(event.occurred_at),
        "actor_client_id": event.actor_client_id,
        "actor_organization_id": _jsonable(event.actor_organization_id),
        "organization_id": _jsonable(event.organization_id),
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((event.prev_hash + canonical).encode()).hexdigest()


def record(
    session: Session,
    actor: Caller | None,
    action: str,
    obj_type: str,
    obj_id: uuid.UUID | str,
    *,
    organization_id: uuid.UUID | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to the chain inside the caller's transaction."""
    head = session.scalar(
        select(AuditChainHead).where(AuditChainHead.id == HEAD_ID).with_for_update()
    )
    if head is None:
        raise RuntimeError("audit chain head missing: the database was not migrated")
    event = AuditEvent(
        seq=head.seq + 1,
        # Microseconds dropped so the hashed text survives every database round-trip.
        occurred_at=utcnow().replace(microsecond=0),
        actor_client_id=actor.client_id if actor else None,
        actor_organization_id=actor.organization_id if actor else None,
        organization_id=organization_id,
        action=action,
        object_type=obj_type,
        object_id=str(obj_id),
        before=_jsonable(before) if before is not None else None,
        after=_jsonable(after) if after is not None else None,
        request_id=correlation_id.get(),
        prev_hash=head.hash,
    )
    event.hash = _event_hash(event)
    head.seq, head.hash = event.seq, event.hash
    session.add(event)
    return event


def list_events(
    session: Session,
    caller: Caller,
    *,
    object_type: str | None = None,
    object_id: str | None = None,
    limit: int,
    cursor: str | None,
    newest_first: bool = False,
) -> Page[AuditEvent]:
    """Admins read every event; everyone else reads the events of their organization. In the
    order of the chain, or newest first (the console's audit log)."""
    statement = select(AuditEvent)
    if not access.is_admin(caller):
        statement = statement.where(AuditEvent.organization_id == caller.organization_id)
    if object_type:
        statement = statement.where(AuditEvent.object_type == object_type)
    if object_id:
        statement = statement.where(AuditEvent.object_id == object_id)
    return paginate(
        session,
        statement,
        [AuditEvent.seq],
        limit=limit,
        cursor=cursor,
        descending=newest_first,
        scope="newest-first" if newest_first else None,
    )


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events_checked: int
    broken_at_seq: int | None = None
    reason: str | None = None


def _events_in_order(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        statement = (
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        )
        rows = list(session.scalars(statement))
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()


def verify_chain(session: Session) -> ChainReport:
    """Walk the chain from the start; report the first event whose link does not hold."""
    expected_prev, expected_seq, checked = GENESIS_HASH, 1, 0
    for event in _events_in_order(session):
        if event.seq != expected_seq:
            return ChainReport(False, checked, expected_seq, "event missing from the sequence")
        if event.prev_hash != expected_prev:
            return ChainReport(False, checked, event.seq, "prev_hash does not match")
        if _event_hash(event) != event.hash:
            return ChainReport(False, checked, event.seq, "event content does not match its hash")
        expected_prev, expected_seq, checked = event.hash, event.seq + 1, checked + 1
    head = session.get(AuditChainHead, HEAD_ID)
    if head is not None and (head.seq != checked or head.hash != expected_prev):
        return ChainReport(False, checked, checked + 1, "events missing after the last one")
    return ChainReport(True, checked)

