"""The append-only, hash-chained audit log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.models.base import Base, IdMixin, utcnow


class AuditEvent(IdMixin, Base):
    """One state change: who did what to which object, with before/after and the chain hash.

    `hash = sha256(prev_hash || canonical JSON of the event)`, so editing, deleting or
    reordering any event breaks every later link.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_client_id: Mapped[str | None] = mapped_column(String(64))
    actor_organization_id: Mapped[uuid.UUID | None]
    # The organization whose data changed: the tenant that may read this event.
    organization_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    action: Mapped[str] = mapped_column(String(100))
    object_type: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[str] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    request_id: Mapped[str | None] = mapped_column(String(100))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The single row holding the chain's last sequence number and hash.

    Appending locks this row (``FOR UPDATE`` on PostgreSQL; SQLite writers are already
    serialized by ``BEGIN IMMEDIATE``), so concurrent transactions extend the chain one at a
    time and never fork it.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
