"""Declarative base, naming convention and the column types every model shares."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Enum, MetaData, TypeDecorator, Uuid
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so Alembic autogenerate diffs cleanly on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The clock of this request or job, when someone set one (tests move time with it; see
# `use_clock`); otherwise the system's.
_CLOCK: ContextVar[Callable[[], datetime] | None] = ContextVar("broker_clock", default=None)


def utcnow() -> datetime:
    """The broker's one clock: every timestamp it writes (model defaults, audit events, jobs'
    `run_after`, publishing, idempotency records, webhooks) comes from here."""
    clock = _CLOCK.get()
    return clock() if clock is not None else datetime.now(UTC)


def set_clock(clock: Callable[[], datetime] | None) -> Token[Callable[[], datetime] | None]:
    """From now on in this context, `utcnow()` reads `clock` (None, or `utcnow` itself: the
    system's); `reset_clock` with the token puts the previous one back."""
    return _CLOCK.set(None if clock is utcnow else clock)


def reset_clock(token: Token[Callable[[], datetime] | None]) -> None:
    _CLOCK.reset(token)


@contextmanager
def use_clock(clock: Callable[[], datetime] | None) -> Iterator[None]:
    """Within the block, `utcnow()` reads `clock`."""
    token = set_clock(clock)
    try:
        yield
    finally:
        reset_clock(token)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no time zones: values are stored as naive UTC and come back aware. Naive
    values are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def enum_column(kind: type[enum.Enum], length: int = 20) -> Enum:
    """A Python enum stored as its value in a VARCHAR (portable, readable, no DB enum type)."""
    return Enum(
        kind, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), uuid.UUID: Uuid()}


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
