"""Invoicing: lines, tax and totals of one invoice, and the frozen snapshot of a finalized one.

Pure functions of their inputs. Each line is rated from its exact quantity and rounded once,
half-up, to the currency's minor unit; tax is computed per tax category on the summed nets of
that category and rounded once per category; the total is the subtotal plus the taxes. Every
figure on an invoice therefore adds up exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.document import USAGE
from billing.money import UNIT_PRICE_QUANTUM, round_amount, to_decimal
from billing.rating import Price, raw_amount

# EN 16931 VAT category codes an invoice line may carry. Only `S` has a rate of its own (the
# agency's VAT rate); the others are 0 %.
STANDARD = "S"
TAX_CATEGORIES: dict[str, str] = {
    STANDARD: "standard rate",
    "Z": "zero rated",
    "E": "exempt from VAT",
    "AE": "reverse charge",
}



@dataclass(frozen=True)
class TaxProfile:
    """Where the agency is taxed and at what standard VAT rate (a percentage)."""

    country: str
    vat_rate: Decimal

    def category(self, category: str) -> str:
        """The category a line of `category` is charged in: a standard rate of 0 % is zero
        rating (EN 16931 wants a standard rate above zero, BR-S-05)."""
        return "Z" if category == STANDARD and self.vat_rate == 0 else category

    def rate(self, category: str) -> Decimal:
        if category not in TAX_CATEGORIES:
            raise ValueError(f"unknown tax category {category!r}")
        return self.vat_rate if category == STANDARD else Decimal(0)


@dataclass(frozen=True)
class Consumption:
    """What one line bills: a resource's quantity of one metric in one period.

    For an adjustment (usage that arrived after its period was invoiced), `already_billed` is
    what that period's invoices billed of it, so graduated tiers continue where they stopped.
    """

    kind: str
    period: str
    resource_id: str
    provider_id: str
    metric: str
    quantity: Fraction
    price: Price
    service_start: datetime
    service_end: datetime
    tax_category: str = STANDARD
    already_billed: Fraction = Fraction(0)
    buyer_reference: str | None = None
    purchase_order_reference: str | None = None


@dataclass(frozen=True)
class Line:
    kind: str
    period: str
    resource_id: str
    provider_id: str
    metric: str
    quantity: Fraction
    unit_price: Decimal  # the effective (average) price when tiers apply
    amount: Decimal
    tax_category: str
    tax_rate: Decimal
    service_start: datetime
    service_end: datetime
    buyer_reference: str | None = None
    purchase_order_reference: str | None = None


@dataclass(frozen=True)
class TaxLine:
    category: str
    rate: Decimal
    base: Decimal
    amount: Decimal


@dataclass(frozen=True)
class Totals:
    lines: tuple[Line, ...]
    taxes: tuple[TaxLine, ...]
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def rate_line(item: Consumption, currency: str, profile: TaxProfile) -> Line:
    if item.price.currency != currency:
        raise ValueError(f"a {item.price.currency} price on a {currency} invoice")
    exact = raw_amount(item.price, item.already_billed + item.quantity) - raw_amount(
        item.price, item.already_billed
    )
    unit = (
        to_decimal(exact / item.quantity, UNIT_PRICE_QUANTUM)
        if item.quantity
        else item.price.unit_price
    )
    return Line(
        kind=item.kind,
        period=item.period,
        resource_id=item.resource_id,
        provider_id=item.provider_id,
        metric=item.metric,
        quantity=item.quantity,
        unit_price=unit,
        amount=round_amount(exact, currency),
        tax_category=profile.category(item.tax_category),
        tax_rate=profile.rate(item.tax_category),
        service_start=item.service_start,
        service_end=item.service_end,
        buyer_reference=item.buyer_reference,
        purchase_order_reference=item.purchase_order_reference,
    )


def _line_order(line: Line) -> tuple[Any, ...]:
    """Lines grouped by the buyer's references (its service, its commitment), then usage
    before adjustments, by period, provider, resource and metric."""
    return (
        line.buyer_reference or "",
        line.purchase_order_reference or "",
        line.kind != USAGE,
        line.period,
        line.provider_id,
        line.resource_id,
        line.metric,
    )


def build(currency: str, items: Iterable[Consumption], profile: TaxProfile) -> Totals:
    """Rate every item into a line and add them up: the figures of one invoice."""
    lines = tuple(sorted((rate_line(item, currency, profile) for item in items), key=_line_order))
    bases: dict[tuple[str, Decimal], Decimal] = {}
    for line in lines:
        key = (line.tax_category, line.tax_rate)
        bases[key] = bases.get(key, Decimal(0)) + line.amount
    taxes = tuple(
        TaxLine(category, rate, base, round_amount(base * rate / 100, currency))
        for (category, rate), base in sorted(bases.items())
    )
    subtotal = sum((line.amount for line in lines), Decimal(0))
    tax = sum((tax.amount for tax in taxes), Decimal(0))
    zero = round_amount(Decimal(0), currency)
    return Totals(lines, taxes, subtotal + zero, tax + zero, subtotal + tax + zero)


def credit_taxes(
    currency: str,
    credit: Mapping[tuple[str, Decimal], Decimal],
    credited_before: Mapping[tuple[str, Decimal], Decimal],
) -> tuple[TaxLine, ...]:
    """The tax of a credit note crediting `credit` (net per (category, rate)) of an invoice
    of which `credited_before` was already credited.

    Tax is rounded on the cumulative credited base: the tax credited so far is always the
    rounded tax of everything credited so far, so several partial credits never credit more
    tax than the invoice charged, and crediting everything gives back exactly its tax.
    """
    taxes = []
    for (category, rate), base in sorted(credit.items()):
        before = credited_before.get((category, rate), Decimal(0))
        amount = round_amount((before + base) * rate / 100, currency) - round_amount(
            before * rate / 100, currency
        )
        taxes.append(TaxLine(category, rate, base, amount))
    return tuple(taxes)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The one byte form of a snapshot: sorted keys, no spaces, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def fingerprint(document: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical form: anyone holding the snapshot can check it."""
    return hashlib.sha256(canonical_json(document)).hexdigest()
