"""Unit tests of `billing.money`: exact decimal money, ISO 4217 minor units, half-up rounding,
unit prices of at most six decimals, and integer micros for storage."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import (
    MoneyError,
    from_micros,
    minor_unit,
    parse_unit_price,
    round_amount,
    to_micros,
)


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.005", "EUR", "0.01"),  # half-up, where banker's rounding gives 0.00
        ("2.675", "EUR", "2.68"),  # exactly, as a Decimal (the float 2.675 is 2.67499…)
        ("0.015", "CAD", "0.02"),
        ("0.025", "EUR", "0.03"),  # half-even would give 0.02
        ("0.004999999", "EUR", "0.00"),
        ("1.994", "USD", "1.99"),
        ("1.995", "USD", "2.00"),
        ("3", "EUR", "3.00"),
        ("12.345", "EUR", "12.35"),
        ("0", "EUR", "0.00"),
        ("12.5", "JPY", "13"),
        ("12.4999", "JPY", "12"),
        ("0.5", "JPY", "1"),
        ("99.5", "ISK", "100"),
    ],
)
def test_round_amount_rounds_half_up_to_the_minor_unit(
    amount: str, currency: str, rounded: str
) -> None:
    result = round_amount(Decimal(amount), currency)
    assert result == Decimal(rounded)
    assert str(result) == rounded  # the minor unit's number of places, exactly


def test_jpy_has_no_decimals() -> None:
    assert minor_unit("JPY") == Decimal(1)
    assert round_amount(Decimal("1234.56"), "JPY").as_tuple().exponent == 0
    assert minor_unit("EUR") == Decimal("0.01")


@pytest.mark.parametrize("currency", ["XYZ", "eur", "", "EURO"])
def test_an_unknown_currency_raises_money_error(currency: str) -> None:
    with pytest.raises(MoneyError):
        round_amount(Decimal("1.00"), currency)
    with pytest.raises(MoneyError):
        minor_unit(currency)


def test_money_error_is_a_value_error() -> None:
    assert issubclass(MoneyError, ValueError)


@pytest.mark.parametrize(
    "value", ["0", "0.123456", "12", "0.000001", "1E+3", "999999999999.999999", "0.10"]
)
def test_parse_unit_price_keeps_the_price_exactly(value: str) -> None:
    price = parse_unit_price(value)
    assert isinstance(price, Decimal)
    assert price == Decimal(value)
    assert parse_unit_price(Decimal(value)) == Decimal(value)


@pytest.mark.parametrize(
    "value",
    [
        "0.1234567",  # seven decimals
        "0.0000001",
        "1e-7",
        "-0.01",
        "-1",
        "NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "abc",
        "",
        "1,5",
        None,
    ],
)
def test_parse_unit_price_refuses_what_is_not_a_price(value: str | None) -> None:
    with pytest.raises(MoneyError):
        parse_unit_price(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "micros"),
    [("0", 0), ("1", 1_000_000), ("0.000001", 1), ("12.345678", 12_345_678), ("-2.5", -2_500_000)],
)
def test_micros_are_millionths(value: str, micros: int) -> None:
    assert to_micros(Decimal(value)) == micros
    back = from_micros(micros)
    assert back == Decimal(value)
    assert back.as_tuple().exponent == -6


@given(
    st.decimals(
        min_value=Decimal("-999999999999"),
        max_value=Decimal("999999999999"),
        places=6,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_property_micros_round_trip(value: Decimal) -> None:
    micros = to_micros(value)
    assert isinstance(micros, int)
    assert from_micros(micros) == value
    assert to_micros(from_micros(micros)) == micros


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_property_micros_from_any_integer_round_trip(micros: int) -> None:
    assert to_micros(from_micros(micros)) == micros
