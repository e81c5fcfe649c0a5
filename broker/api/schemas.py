"""Schemas shared by every resource: request base class, list arguments and page envelope."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma

from broker.services.pagination import DEFAULT_LIMIT, MAX_LIMIT


class Timestamp(ma.fields.AwareDateTime):
    """A UTC instant written as ISO 8601 with `Z` (`2026-11-22T13:37:00.123456Z`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", default_timezone=UTC, **kwargs)

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _nul_fields(value: Any, path: str = "") -> list[str]:
    """Paths (`a.0.b`) of the strings in `value` that contain a NUL character."""
    if isinstance(value, str):
        return [path or "_schema"] if "\x00" in value else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list
    ) else ()
    return [found for k, v in items for found in _nul_fields(v, f"{path}.{k}" if path else str(k))]


class StrictSchema(ma.Schema):
    """Request schema: unknown fields are rejected (and documented as such), and no text may
    carry a NUL character (PostgreSQL cannot store one; no legitimate input has one)."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _refuse_nul(self, data: Any, **_kwargs: Any) -> Any:
        fields = _nul_fields(data)
        if fields:
            raise ma.ValidationError({f: ["NUL characters are not allowed."] for f in fields})
        return data


NO_CONTROL_CHARACTERS = ma.validate.Regexp(
    r"^[^\x00-\x1f\x7f]*$", error="Control characters are not allowed."
)


def name_field(**kwargs: Any) -> ma.fields.String:
    """A human-readable name: 1–200 characters, no control characters."""
    return ma.fields.String(
        validate=[ma.validate.Length(min=1, max=200), NO_CONTROL_CHARACTERS], **kwargs
    )


class ListArgs(StrictSchema):
    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Items per page, 1–{MAX_LIMIT}."},
    )
    cursor = ma.fields.String(
        load_default=None,
        validate=ma.validate.Length(max=1000),
        metadata={"description": "Opaque cursor from a previous page's `next_cursor`."},
    )


_page_schemas: dict[str, type[ma.Schema]] = {}


def page_of(item_schema: type[ma.Schema]) -> type[ma.Schema]:
    """`{"items": [...], "next_cursor": "…" | null}` around `item_schema` (one class each)."""
    name = item_schema.__name__.removesuffix("Schema") + "PageSchema"
    if name not in _page_schemas:
        fields: dict[str, Any] = {
            "items": ma.fields.List(ma.fields.Nested(item_schema), required=True),
            "next_cursor": ma.fields.String(
                required=True,
                allow_none=True,
                metadata={"description": "Pass as `cursor` for the next page; null at the end."},
            ),
        }
        _page_schemas[name] = type(name, (ma.Schema,), fields)
    return _page_schemas[name]
