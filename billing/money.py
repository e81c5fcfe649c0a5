"""Exact money: `Decimal` amounts, ISO 4217 currencies, rounding half-up to the minor unit.

Unit prices keep up to 6 decimals; amounts are rounded once, per line, to the currency's
minor unit. Floats never touch money.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction

# ISO 4217 minor units of the currencies the consortium's members bill in.
MINOR_UNITS: dict[str, int] = {
    "EUR": 2,
    "CAD": 2,
    "USD": 2,
    "CHF": 2,
    "GBP": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "RON": 2,
    "BGN": 2,
    "ISK": 0,
    "JPY": 0,
}
UNIT_PRICE_PLACES = 6
UNIT_PRICE_QUANTUM = Decimal(1).scaleb(-UNIT_PRICE_PLACES)


class MoneyError(ValueError):
    """A value that is not acceptable as money (unknown currency, too many decimals, …)."""


def minor_unit(currency: str) -> Decimal:
    try:
        return Decimal(1).scaleb(-MINOR_UNITS[currency])
    except KeyError as exc:
        raise MoneyError(f"unsupported currency {currency!r}") from exc


def to_decimal(value: Decimal | Fraction, quantum: Decimal) -> Decimal:
    """`value` rounded half-up to `quantum` (`Decimal("0.01")`), exactly, even from a Fraction."""
    if isinstance(value, Decimal):
        return value.quantize(quantum, rounding=ROUND_HALF_UP)
    if value < 0:  # half-up rounds away from zero, as Decimal's ROUND_HALF_UP does
        return -to_decimal(-value, quantum)
    scaled = value / Fraction(quantum)
    whole = scaled.numerator // scaled.denominator
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return (Decimal(whole) * quantum).quantize(quantum)


def round_amount(amount: Decimal | Fraction, currency: str) -> Decimal:
    """Round half-up to the currency's minor unit (`12.345 EUR` → `12.35`)."""
    return to_decimal(amount, minor_unit(currency))


def parse_unit_price(value: str | Decimal) -> Decimal:
    """A non-negative price with at most 6 decimals, exactly as given."""
    try:
        price = Decimal(value)
    except (InvalidOperation, TypeError) as exc:
        raise MoneyError(f"not a decimal number: {value!r}") from exc
    if not price.is_finite() or price < 0:
        raise MoneyError("a price must be a finite, non-negative number")
    if price != price.quantize(UNIT_PRICE_QUANTUM, rounding=ROUND_HALF_UP):
        raise MoneyError(f"a unit price has at most {UNIT_PRICE_PLACES} decimals")
    return price


def trim_decimals(value: Decimal, keep: int = 2) -> Decimal:
    """Drop trailing zeros beyond `keep` decimals (`0.050000` → `0.05`, `1.000000` → `1.00`)."""
    trimmed = value.normalize()
    exponent = int(trimmed.as_tuple().exponent)
    return value.quantize(Decimal(1).scaleb(min(exponent, -keep)))


def to_micros(value: Decimal) -> int:
    """Store a ≤ 6-decimal amount as an exact integer (for sorting and comparing in SQL)."""
    return int(value.scaleb(UNIT_PRICE_PLACES).to_integral_value(rounding=ROUND_HALF_UP))


def from_micros(value: int) -> Decimal:
    return Decimal(value).scaleb(-UNIT_PRICE_PLACES).quantize(UNIT_PRICE_QUANTUM)
