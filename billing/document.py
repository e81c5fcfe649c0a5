"""The invoice document: an issued invoice or credit note, whole, as one typed tree.

Built once, when the invoice is finalized (or the credit note issued), and frozen: its
`to_snapshot()` form is what the database keeps and what the document's SHA-256 covers, and
`Document.from_snapshot` gives the same tree back. The JSON, CSV, PDF and CII exports read
this tree, never the stored dict.

- Amounts, quantities, prices and rates are `Decimal`s holding the figures as issued (their
  string form is the snapshot's: `Decimal("11.70")` stays "11.70"); instants are UTC
  `datetime`s (written ISO 8601 with `Z`), dates are `date`s.
- The snapshot keeps the keys it has always had (a party's `name`, `legal_name`, `address`,
  `country`, `vat_id`; `payment_terms`, `due_date`, …), newer ones beside them; a document
  frozen before a field existed reads it as its default (`_upgrade`), so it still exports.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

INVOICE, CREDIT_NOTE = "invoice", "credit_note"
LANGUAGES = ("en", "fr")
USAGE, ADJUSTMENT = "usage", "adjustment"

# The VAT exemption reason code (VATEX, BT-121) and text (BT-120) EN 16931 requires for the
# categories that charge no VAT for a reason (BR-E-10, BR-AE-10): exempt public-interest
# services (Council Directive 2006/112/EC, article 132) and reverse charge.
EXEMPTIONS: dict[str, tuple[str, str]] = {
    "E": ("VATEX-EU-132", "Exempt under article 132 of Council Directive 2006/112/EC"),
    "AE": ("VATEX-EU-AE", "Reverse charge"),
}

# ISO/IEC 6523 identifier scheme of the French SIRENE register (SIREN and SIRET numbers).
SIRENE = "0002"


@dataclass(frozen=True)
class Address:
    """A postal address: up to three street lines (BT-35/36/162), post code, city, country."""

    country: str  # ISO 3166-1 alpha-2
    lines: tuple[str, ...] = ()
    post_code: str | None = None
    city: str | None = None


@dataclass(frozen=True)
class LegalId:
    """A party's legal registration identifier (BT-30, BT-47) and its ISO/IEC 6523 scheme."""

    value: str
    scheme: str | None = SIRENE


@dataclass(frozen=True)
class Party:
    """The seller or the buyer. `name` is the legal name (BT-27, BT-44); `trading_name` the
    name it goes by (BT-28, BT-45: the agency's name in the marketplace)."""

    name: str
    address: Address
    trading_name: str | None = None
    vat_id: str | None = None
    legal_id: LegalId | None = None
    organization_id: str | None = None  # the buyer's agency in the broker

    def to_snapshot(self) -> dict[str, Any]:
        """Flat, in the keys snapshots have always had (`name` is the name it goes by,
        `legal_name` its legal name, `address` its street lines as one text), and the newer
        ones beside them."""
        return {
            "name": self.trading_name or self.name,
            "legal_name": self.name,
            "address": "\n".join(self.address.lines) or None,
            "post_code": self.address.post_code,
            "city": self.address.city,
            "country": self.address.country,
            "vat_id": self.vat_id,
            "legal_id": self.legal_id.value if self.legal_id else None,
            "legal_id_scheme": self.legal_id.scheme if self.legal_id else None,
            "organization_id": self.organization_id,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Party:
        legal_name = data.get("legal_name") or data["name"]
        return cls(
            name=legal_name,
            trading_name=data["name"] if data["name"] != legal_name else None,
            address=Address(
                country=data["country"],
                lines=tuple(
                    line.strip()
                    for line in (data.get("address") or "").splitlines()
                    if line.strip()
                ),
                post_code=data.get("post_code"),
                city=data.get("city"),
            ),
            vat_id=data.get("vat_id") or None,
            legal_id=LegalId(data["legal_id"], data.get("legal_id_scheme"))
            if data.get("legal_id")
            else None,
            organization_id=data.get("organization_id"),
        )


@dataclass(frozen=True)
class Line:
    """One line: a resource's quantity of one metric over one period, and what it costs.

    `resource_name`, `offer_name`, `provider_name` and `region` say in words what the resource
    is ("web-1 — Small 2 vCPU, Hexagone Cloud, fr-par-1"); the ids stay for machines.
    On a credit note, `credits_position` is the line of the corrected invoice it credits."""

    position: int
    kind: str  # USAGE, or ADJUSTMENT: usage of an earlier period, reported late
    period: str
    resource_id: str
    provider_id: str
    metric: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    tax_category: str
    tax_rate: Decimal
    service_start: datetime
    service_end: datetime
    resource_name: str | None = None
    offer_name: str | None = None
    provider_name: str | None = None
    region: str | None = None
    buyer_reference: str | None = None
    purchase_order_reference: str | None = None
    credits_position: int | None = None

    @property
    def label(self) -> str:
        """The resource in words, as far as the document knows it."""
        if self.resource_name is None:
            return self.resource_id
        return describe(self.resource_name, self.offer_name, self.provider_name, self.region)


def describe(resource: str, offer: str | None, provider: str | None, region: str | None) -> str:
    """A resource in words: "web-1 — Small 2 vCPU, Hexagone Cloud, fr-par-1"."""
    about = ", ".join(part for part in (offer, provider, region) if part)
    return f"{resource} — {about}" if about else resource


@dataclass(frozen=True)
class TaxRow:
    """The VAT of one category and rate (BG-23), with the exemption reason code (VATEX, BT-121)
    and text (BT-120) of the categories that need one."""

    category: str
    rate: Decimal
    base: Decimal
    amount: Decimal
    exemption_code: str | None = None
    exemption_reason: str | None = None

    @classmethod
    def of(cls, category: str, rate: Decimal, base: Decimal, amount: Decimal) -> TaxRow:
        """A row with the exemption reason its category needs (`EXEMPTIONS`), if any."""
        code, reason = EXEMPTIONS.get(category, (None, None))
        return cls(category, rate, base, amount, code, reason)


@dataclass(frozen=True)
class Corrected:
    """The invoice a credit note corrects."""

    id: str
    number: str
    issued_at: datetime


@dataclass(frozen=True)
class Document:
    """An issued invoice or credit note, whole (see the module's docstring)."""

    document_type: str  # INVOICE or CREDIT_NOTE
    id: str
    number: str
    issued_at: datetime
    period: str
    period_start: datetime
    period_end: datetime  # exclusive
    currency: str
    seller: Party
    buyer: Party
    lines: tuple[Line, ...]
    taxes: tuple[TaxRow, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal
    language: str = "en"  # the buyer's, one of LANGUAGES
    due_date: date | None = None
    payment_terms: str | None = None  # in `language`, e.g. "30 days net"
    buyer_reference: str | None = None  # BT-10, e.g. Chorus Pro's service code
    purchase_order_reference: str | None = None  # BT-13, e.g. the commitment number
    legal_mentions: tuple[str, ...] = ()  # in `language`, as the seller's country requires
    corrects: Corrected | None = None  # credit notes
    reason: str | None = None  # credit notes

    def __post_init__(self) -> None:
        if self.document_type not in (INVOICE, CREDIT_NOTE):
            raise ValueError(f"unknown document type {self.document_type!r}")
        if self.language not in LANGUAGES:
            raise ValueError(f"unknown document language {self.language!r}")

    @property
    def is_credit_note(self) -> bool:
        return self.document_type == CREDIT_NOTE

    def to_snapshot(self) -> dict[str, Any]:
        """The JSON form kept in the database and hashed (`invoicing.fingerprint`)."""
        dumped = _dump(self)
        assert isinstance(dumped, dict)
        return dumped

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Document:
        return _load(cls, _upgrade(snapshot))


def days_covered(start: datetime, end: datetime) -> tuple[date, date]:
    """First and last day (inclusive) touched by the half-open interval [start, end): the
    document's ends are exclusive instants, the days it names are the days included."""
    last = end.date()
    if end.time() == datetime.min.time():  # ends at midnight: that day is not included
        last -= timedelta(days=1)
    return start.date(), max(start.date(), last)


# Snapshot form ---------------------------------------------------------------------------------

T = TypeVar("T")


def _dump(value: Any) -> Any:
    if isinstance(value, Party):
        return value.to_snapshot()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_dump(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}  # each dataclass's field types, resolved once


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _load(cls: type[T], data: Mapping[str, Any]) -> T:
    """`cls` from its `_dump`ed form; missing fields take their defaults."""
    hints = _hints(cls)
    values = {
        f.name: _convert(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name in data
    }
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):  # `X | None`
        if value is None:
            return None
        (inner,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return _convert(inner, value)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        return tuple(_convert(inner, item) for item in value)
    if hint is Party:
        return Party.from_snapshot(value)
    if dataclasses.is_dataclass(hint):
        return _load(hint, value)  # type: ignore[arg-type]
    if hint is Decimal:
        return Decimal(value)
    if hint is datetime:
        return datetime.fromisoformat(value)
    if hint is date:
        return date.fromisoformat(value)
    return value


def _upgrade(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot frozen before documents said what they are and why a category is exempt,
    in today's shape."""
    data = dict(snapshot)
    data.setdefault("document_type", INVOICE)
    data["taxes"] = [
        {
            **dict(
                zip(
                    ("exemption_code", "exemption_reason"), EXEMPTIONS[tax["category"]], strict=True
                )
            ),
            **tax,
        }
        if tax["category"] in EXEMPTIONS
        else tax
        for tax in data["taxes"]
    ]
    return data
