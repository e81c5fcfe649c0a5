"""Schemas shared by every resource: request base class, list arguments and page envelope."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import current_app, has_app_context
from marshmallow import utils

from billing.money import MINOR_UNITS, round_amount, trim_decimals
from broker.names import NAME_PATTERN, check_name
from broker.services.pagination import DEFAULT_LIMIT, MAX_LIMIT


def iso_z(value: datetime | None) -> str | None:
    """A UTC instant as ISO 8601 with `Z` (`2026-11-22T13:37:00.123456Z`)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Timestamp(ma.fields.AwareDateTime):
    """A UTC instant written as ISO 8601 with `Z` (`2026-11-22T13:37:00.123456Z`)."""

    def __init__(self, **kwargs: Any) -> None:
        expected = "an ISO 8601 date and time, such as `2026-11-22T13:37:00Z`"
        kwargs["error_messages"] = {
            "invalid": f"Expected {expected}.",
            "invalid_awareness": f"Expected {expected} (with `Z` or an offset like `+01:00`).",
            **kwargs.get("error_messages", {}),
        }
        super().__init__(format="iso", default_timezone=UTC, **kwargs)

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> Any:
        return iso_z(value)


class StrictSchema(ma.Schema):
    """Request schema: unknown fields are rejected (and documented as such), and no text may
    carry a NUL character (PostgreSQL cannot store one; no legitimate input has one)."""

    class Meta:
        unknown = ma.RAISE

    @ma.pre_load
    def _refuse_nul(self, data: Any, **_kwargs: Any) -> Any:
        # Nested objects are checked by their own (strict) schemas; free-form objects
        # (`Dict` fields) are stored as JSON, where a NUL is just an escape.
        if not isinstance(data, dict):
            return data
        refused: dict[str, list[str]] = {}
        for name, value in data.items():
            if isinstance(self.fields.get(name), ma.fields.Dict):
                continue
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, str) and "\x00" in item for item in items):
                refused[name] = ["NUL characters are not allowed."]
        if refused:
            raise ma.ValidationError(refused)
        return data


class Matches(ma.validate.Regexp):
    """A pattern whose error says, in words, what matches: marshmallow's own says only
    "String does not match expected pattern.", which leaves the caller guessing.

    `expected` completes the sentence "Expected …" (say, "an ISO 3166-1 alpha-2 country code
    in capitals, such as FR"). With `suggest` (for codes and identifiers, where case and spaces
    carry no meaning: not for URLs or free text), when a change of case or of spaces alone
    would make the input match, the message suggests it too ("Did you mean FR?").
    """

    def __init__(
        self,
        regex: str,
        expected: str,
        *,
        suggest: bool = False,
        max: int | None = None,  # noqa: A002 - the names apispec reads a length bound by
        equal: int | None = None,
    ) -> None:
        self.pattern = re.compile(regex)
        super().__init__(self.pattern, error=f"Expected {expected}.")
        self.expected = expected
        self.suggest = suggest
        # A length bound the OpenAPI document shows (`maxLength`: every query string is
        # bounded); the pattern enforces it too, with the same message.
        self.min, self.max, self.equal = None, max, equal

    def __call__(self, value: Any) -> Any:
        # `fullmatch`: a pattern's `$` would also let a trailing newline through.
        if not isinstance(value, str) or self.pattern.fullmatch(value) is None:
            suggestion = self.suggestion(value) if self.suggest else None
            hint = f" Did you mean `{suggestion}`?" if suggestion else ""
            raise ma.ValidationError(self.error + hint)
        return value

    def suggestion(self, value: Any) -> str | None:
        """The input with its case or spaces changed, if that alone makes it match."""
        if not isinstance(value, str) or len(value) > _MAX_SUGGESTED:
            return None
        for variant in (fix(value) for fix in _FIXES):
            if variant and variant != value and self.pattern.fullmatch(variant):
                return variant
        return None


# A public https URL by name: a host name (not an address: TLS certificates name hosts, and
# addresses are where SSRF hides), an optional port 1–65535, an optional path.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = (
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}"
    r"|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
)
_HOST = rf"(?:{_LABEL}\.)+{_TOP_LABEL}{_PORT}"
PUBLIC_URL_PATTERN = rf"^https://{_HOST}(?:/[^\x00-\x20\x7f]*)?$"
# The same without a query or a fragment (an OpenID issuer identifier).
PUBLIC_BASE_URL_PATTERN = rf"^https://{_HOST}(?:/[^\x00-\x20\x7f?#]*)?$"
# What a switch for local development (or the tests' local servers) lets through besides.
LOCAL_URL_PATTERN = r"^https?://[^\s/?#]+(?:[/?#][^\x00-\x20\x7f]*)?$"


class PublicUrl(Matches):
    """An https URL of a public host name (the pattern the OpenAPI document shows); when the
    app's setting `local_when` is on (a development switch, or the tests' local servers), any
    http(s) URL. Where it is then called is checked again by the HTTP policy."""

    def __init__(self, example: str, *, local_when: str, query: bool = True) -> None:
        super().__init__(
            PUBLIC_URL_PATTERN if query else PUBLIC_BASE_URL_PATTERN,
            "an https URL with a public host name (not an IP address), an optional port and "
            f"path{'' if query else ' (no query or fragment)'}, such as `{example}`",
        )
        self.local_when = local_when

    def __call__(self, value: Any) -> Any:
        local = has_app_context() and current_app.config.get(self.local_when)
        if local and isinstance(value, str) and re.fullmatch(LOCAL_URL_PATTERN, value):
            return value
        return super().__call__(value)


# Suggestions are short: echoing a long input back adds nothing.
_MAX_SUGGESTED = 100
_FIXES = (
    str.strip,
    str.lower,
    str.upper,
    lambda text: "-".join(text.lower().split()),
    lambda text: "".join(text.split()),
    lambda text: "".join(text.split()).upper(),
)

NO_CONTROL_CHARACTERS = Matches(
    r"^[^\x00-\x1f\x7f]*$", "text without control characters (tabs, line breaks and the like)"
)


class Money(ma.fields.Decimal):
    """An exact amount as a JSON string (`"12.40"`), never a float; up to 6 decimals.

    With `currency_from`, an amount is written in that currency's minor unit (`"58.94"`,
    `"5477"` for JPY); without it (unit prices), with the decimals it has, at least two.
    """

    def __init__(self, *, currency_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(
            as_string=True,
            metadata={"pattern": MONEY_PATTERN, **kwargs.pop("metadata", {})},
            **kwargs,
        )
        self.currency_from = currency_from

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        amount = Decimal(value)
        if self.currency_from is not None:
            currency = utils.get_value(obj, self.currency_from)
            if currency:
                return str(round_amount(amount, currency))
        return str(trim_decimals(amount))

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(MONEY_PATTERN, value):
            raise ma.ValidationError('An amount as a string, e.g. "12.40" (≤ 6 decimals).')
        return super()._deserialize(value, attr, data, **kwargs)


MONEY_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,6})?$"


class RatedLineSchema(ma.Schema):
    """A quantity of one metric at a price (`billing.rating.Line`): quotes, costs so far."""

    metric = ma.fields.String()
    quantity = ma.fields.Decimal(as_string=True)
    unit_price = Money()
    amount = Money(currency_from="currency")
    currency = ma.fields.String()


COUNTRY_PATTERN = r"^[A-Z]{2}$"
COUNTRY_EXPECTED = "an ISO 3166-1 alpha-2 country code in capitals, such as `FR` or `DE`"


def country_field(**kwargs: Any) -> ma.fields.String:
    """An ISO 3166-1 alpha-2 country code (`FR`, `CA`)."""
    return ma.fields.String(
        validate=Matches(COUNTRY_PATTERN, COUNTRY_EXPECTED, suggest=True, equal=2), **kwargs
    )


def law_code_field(**kwargs: Any) -> ma.fields.String:
    """A foreign law reaching an operator (an extraterritorial exposure): `US_CLOUD_ACT`."""
    return ma.fields.String(
        validate=Matches(
            r"^[A-Z][A-Z0-9_]{1,39}$",
            "a foreign law's code such as `US_CLOUD_ACT`: capitals, digits and underscores, "
            "starting with a letter, 2–40 characters",
            suggest=True,
        ),
        **kwargs,
    )


def adapter_name_field(**kwargs: Any) -> ma.fields.String:
    """The name of a provider adapter plugin (`simulated`, `openstack`, `outscale`)."""
    return ma.fields.String(
        validate=Matches(
            r"^[a-z][a-z0-9_]{1,49}$",
            "an adapter name such as `openstack`: lowercase letters, digits and underscores, "
            "starting with a letter, 2–50 characters",
            suggest=True,
        ),
        **kwargs,
    )


def currency_field(**kwargs: Any) -> ma.fields.String:
    """An ISO 4217 currency the broker bills in."""
    return ma.fields.String(validate=ma.validate.OneOf(sorted(MINOR_UNITS)), **kwargs)


def slug_field(
    max_length: int = 40, *, example: str = "secnumcloud", **kwargs: Any
) -> ma.fields.String:
    """A machine name: lower-case letters, digits and dashes (`secnumcloud`, `bsi-c5`)."""
    return ma.fields.String(
        validate=Matches(
            rf"^[a-z0-9][a-z0-9-]{{0,{max_length - 1}}}$",
            f"a lowercase slug such as `{example}`: a–z, 0–9 and hyphens, not starting with a "
            f"hyphen, at most {max_length} characters",
            suggest=True,
            max=max_length,
        ),
        **kwargs,
    )


PERIOD_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"


def period_field(**kwargs: Any) -> ma.fields.String:
    """A billing period: a calendar month, `YYYY-MM`."""
    return ma.fields.String(
        validate=Matches(PERIOD_PATTERN, "a calendar month as YYYY-MM, such as `2026-11`", equal=7),
        metadata={"example": "2026-11", **kwargs.pop("metadata", {})},
        **kwargs,
    )


def agency_id_field() -> ma.fields.Function:
    """`agency_id`: the agency an object belongs to (its `organization_id`)."""
    return ma.fields.Function(
        lambda obj: str(utils.get_value(obj, "organization_id")),
        metadata={"type": "string", "format": "uuid", "description": "The agency it belongs to"},
    )


class WholeNumber(ma.fields.Integer):
    """A JSON integer: `2` or `2.0` (JSON Schema agrees), never `2.5`, `"2"` or `true`."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ma.ValidationError("Expected a whole number, such as 2.")
        return int(value)


class JsonBool(ma.fields.Boolean):
    """A JSON `true`/`false` (not 0, 1 or "yes", which marshmallow would otherwise accept)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ma.ValidationError("Not a boolean (true or false).")
        return value


def https_url_field(**kwargs: Any) -> ma.fields.String:
    """An https URL (evidence, endpoints): no other scheme, no spaces."""
    return ma.fields.String(
        validate=[
            ma.validate.Length(max=500),
            Matches(
                r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\x00-\x20\x7f]*)?$",
                "an https URL without spaces, such as `https://example.org/certificate.pdf`",
            ),
        ],
        **kwargs,
    )


def _visible_name(value: str) -> None:
    problems = check_name(value)
    if problems:
        raise ma.ValidationError(problems)


def name_field(**kwargs: Any) -> ma.fields.String:
    """A human-readable name: 1–200 characters, no control, invisible or bidi characters."""
    metadata = {"pattern": NAME_PATTERN, **kwargs.pop("metadata", {})}
    return ma.fields.String(
        validate=[ma.validate.Length(min=1, max=200), _visible_name],
        metadata=metadata,
        **kwargs,
    )


def reference_field(description: str) -> ma.fields.String:
    """A public buyer's reference printed on its invoices (a service code, a commitment
    number): 1–100 characters without control characters; absent or null for none."""
    return ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[ma.validate.Length(min=1, max=100), NO_CONTROL_CHARACTERS],
        metadata={"description": description},
    )


BUYER_REFERENCE = "Buyer reference (EN 16931 BT-10), e.g. the service code of Chorus Pro."
PURCHASE_ORDER_REFERENCE = (
    "Purchase order reference (EN 16931 BT-13), e.g. the commitment number of a public buyer."
)


def reason_field() -> ma.fields.String:
    """Why (a decision, a correction): 1–500 characters, no control characters."""
    return ma.fields.String(
        required=True, validate=[ma.validate.Length(min=1, max=500), NO_CONTROL_CHARACTERS]
    )


def sha256_field(**kwargs: Any) -> ma.fields.String:
    """A SHA-256 digest in lower-case hex (of a document, say)."""
    return ma.fields.String(
        validate=Matches(
            r"^[0-9a-f]{64}$", "a SHA-256 digest as 64 lower-case hex digits", suggest=True
        ),
        **kwargs,
    )


class ListArgs(StrictSchema):
    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Items per page, 1–{MAX_LIMIT}."},
    )
    cursor = ma.fields.String(
        # Absent or empty: the first page (a query string carries text, never null).
        load_default="",
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
