"""Keyset pagination with opaque cursors.

A cursor is the sort key of the last item returned, base64url-encoded JSON. The next page
starts strictly after it, so rows inserted meanwhile never shift or repeat what a client has
already seen, and the cost of a page does not grow with its depth.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from broker.errors import ValidationFailed

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


_BIGINT = range(-(2**63), 2**63)


def _decode_value(column: InstrumentedAttribute[Any], raw: Any) -> Any:
    """Rebuild one sort-key value; anything a cursor of ours cannot hold raises ValueError."""
    python_type = column.type.python_type
    if python_type is int:
        if not isinstance(raw, int) or isinstance(raw, bool) or raw not in _BIGINT:
            raise ValueError("not a 64-bit integer")
        return raw
    if not isinstance(raw, str):
        raise ValueError("not a string")
    if python_type is datetime:
        moment = datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment.astimezone(UTC)  # OverflowError near year 1 or 9999
    if python_type is uuid.UUID:
        return uuid.UUID(raw)
    if python_type is Decimal:
        number = Decimal(raw)
        if not number.is_finite() or abs(number) >= 10**12:
            raise ValueError("not a plausible amount")
        return number
    return raw


def encode_cursor(values: Sequence[Any], scope: str | None = None) -> str:
    encoded = [_encode_value(v) for v in values]
    payload = json.dumps([scope, *encoded] if scope else encoded, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(
    cursor: str, keys: Sequence[InstrumentedAttribute[Any]], scope: str | None = None
) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(raw, list):
            raise ValueError("wrong shape")
        if scope:
            if not raw or raw[0] != scope:
                raise ValueError("a cursor of another query")
            raw = raw[1:]
        if len(raw) != len(keys):
            raise ValueError("wrong shape")
        return [_decode_value(column, value) for column, value in zip(keys, raw, strict=True)]
    except (
        ValueError,
        TypeError,
        OverflowError,
        InvalidOperation,
        binascii.Error,
        UnicodeDecodeError,
    ) as exc:
        raise ValidationFailed(
            "The cursor is not one this API returned.", errors={"cursor": ["Invalid cursor."]}
        ) from exc


def paginate(
    session: Session,
    statement: Select[T],
    keys: Sequence[InstrumentedAttribute[Any]],
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    descending: bool = False,
    scope: str | None = None,
) -> Page[T]:
    """Run `statement` ordered by `keys` (unique together) from `cursor` on.

    `scope` names the query (its filters and order): a cursor from another query is refused
    rather than silently continuing somewhere meaningless.
    """
    page = _keyset(statement, keys, limit, cursor, descending, scope)
    return _page(list(session.scalars(page)), keys, limit, scope)


def paginate_rows(
    session: Session,
    statement: Select[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    descending: bool = False,
    scope: str | None = None,
) -> Page[Row[Any]]:
    """`paginate` for a statement of columns rather than of one entity: a page of rows.

    For a list read often and shown as is (the catalogue): rows skip the ORM's identity map
    and attribute instrumentation. Every key must be among the columns selected, under its
    own name, since the cursor is read from the last row. The cursors are the same as
    `paginate`'s for the same keys and scope."""
    page = _keyset(statement, keys, limit, cursor, descending, scope)
    return _page(list(session.execute(page)), keys, limit, scope)


def _keyset(
    statement: Select[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    limit: int,
    cursor: str | None,
    descending: bool,
    scope: str | None,
) -> Select[Any]:
    """`statement` from after `cursor`, in the order of `keys`, one more row than a page."""
    if cursor:
        after = tuple_(
            *[
                literal(value, column.type)
                for column, value in zip(keys, decode_cursor(cursor, keys, scope), strict=True)
            ]
        )
        statement = statement.where(tuple_(*keys) < after if descending else tuple_(*keys) > after)
    order = [key.desc() for key in keys] if descending else list(keys)
    return statement.order_by(*order).limit(limit + 1)


def _page(
    rows: list[Any], keys: Sequence[InstrumentedAttribute[Any]], limit: int, scope: str | None
) -> Page[Any]:
    """A page of `rows` (one more than `limit` when there is a next page) and its cursor."""
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, encode_cursor([getattr(last, column.key) for column in keys], scope))
