"""Unit tests of `billing.rating`: flat and graduated prices, one rounding per line, totals
that are the sum of their lines, and the monthly figure the catalogue compares offers by.

Expected amounts are worked out by hand, or by an independent restatement of graduated
pricing (each band of the quantity at its own price) in the property test.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.money import MoneyError
from billing.rating import (
    HOURS_PER_MONTH,
    Price,
    Specs,
    Tier,
    estimate,
    monthly_price,
    rate,
    raw_amount,
)

D = Decimal

GRADUATED = Price(
    "instance_hour",
    D("0.10"),
    "EUR",
    (Tier(D(100), D("0.10")), Tier(D(500), D("0.08")), Tier(None, D("0.05"))),
)


# --- raw_amount --------------------------------------------------------------------------------


def test_a_flat_price_is_quantity_times_unit_price_unrounded() -> None:
    price = Price("instance_hour", D("0.0125"), "EUR")
    assert raw_amount(price, D(730)) == D("9.125")
    assert raw_amount(price, D("0.5")) == D("0.00625")
    assert raw_amount(price, D(0)) == 0


@pytest.mark.parametrize(
    ("quantity", "amount"),
    [
        ("0", "0"),
        ("1", "0.10"),
        ("50", "5.00"),
        ("100", "10.00"),  # exactly on the first boundary
        ("100.5", "10.04"),  # 100 × 0.10 + 0.5 × 0.08
        ("101", "10.08"),
        ("500", "42.00"),  # exactly on the second boundary: 10 + 400 × 0.08
        ("501", "42.05"),
        ("800", "57.00"),  # 10 + 32 + 300 × 0.05
        ("10000", "517.00"),  # 10 + 32 + 9500 × 0.05
    ],
)
def test_graduated_tiers_price_each_band_at_its_own_rate(quantity: str, amount: str) -> None:
    assert raw_amount(GRADUATED, D(quantity)) == D(amount)


def test_the_top_level_unit_price_is_ignored_when_tiers_apply() -> None:
    tiered = Price("vcpu_hour", D("99"), "EUR", (Tier(D(10), D("0.5")), Tier(None, D("0.25"))))
    assert raw_amount(tiered, D(20)) == D("7.5")


def test_a_single_unbounded_tier_is_a_flat_price() -> None:
    single = Price("vcpu_hour", D("0.01"), "EUR", (Tier(None, D("0.0042")),))
    assert raw_amount(single, D(1234)) == D("5.1828")


# --- rate ----------------------------------------------------------------------------------


def test_rate_rounds_the_line_once_half_up() -> None:
    line = rate(Price("instance_hour", D("0.0125"), "EUR"), D(1))
    assert line.amount == D("0.01")  # 0.0125 → 0.01
    line = rate(Price("instance_hour", D("0.000005"), "EUR"), D(1000))
    assert line.amount == D("0.01")  # exactly 0.005 → 0.01
    assert (line.metric, line.quantity, line.unit_price) == (
        "instance_hour",
        D(1000),
        D("0.000005"),
    )


def test_rate_rounds_the_sum_of_the_bands_not_each_band() -> None:
    # 1 × 0.004 + 1 × 0.0045 = 0.0085 → 0.01; rounding each band first would give 0.00.
    price = Price(
        "instance_hour", D("0.004"), "EUR", (Tier(D(1), D("0.004")), Tier(None, D("0.0045")))
    )
    assert rate(price, D(2)).amount == D("0.01")
    # 0.005 + 0.005 = 0.010 → 0.01; rounding each band first would give 0.02.
    price = Price(
        "instance_hour", D("0.005"), "EUR", (Tier(D(1), D("0.005")), Tier(None, D("0.005")))
    )
    assert rate(price, D(2)).amount == D("0.01")


def test_rate_shows_the_effective_unit_price_of_a_graduated_line() -> None:
    line = rate(GRADUATED, D(800))
    assert line.amount == D("57.00")
    assert line.unit_price == D("0.07125")
    line = rate(GRADUATED, D(3))
    assert line.unit_price == D("0.1")
    line = rate(GRADUATED, D(700))  # 52 / 700 = 0.0742857142… → 6 decimals
    assert line.unit_price == D("0.074286")


def test_rate_of_zero_quantity_is_zero_at_the_list_price() -> None:
    line = rate(GRADUATED, D(0))
    assert line.amount == D("0.00")
    assert line.unit_price == D("0.10")


def test_rate_rounds_to_the_currency_minor_unit() -> None:
    assert rate(Price("instance_hour", D("1.5"), "JPY"), D(3)).amount == D(5)  # 4.5 → 5
    with pytest.raises(MoneyError):
        rate(Price("instance_hour", D("1.5"), "XXX"), D(3))


# --- estimate and monthly_price ---------------------------------------------------------------

PRICES = [
    Price("instance_hour", D("0.0125"), "EUR"),
    Price("vcpu_hour", D("0.0051"), "EUR"),
    Price("ram_gib_hour", D("0.003125"), "EUR"),
    Price("storage_gib_month", D("0.055"), "EUR"),
    Price("egress_gib", D("0.01"), "EUR"),
]
SPECS = Specs(vcpu=4, ram_gib=D(16), disk_gib=100)


def test_estimate_has_a_line_per_predictable_metric_and_sums_them() -> None:
    result = estimate(PRICES, SPECS, quantity=3, hours=D(100))
    assert result.currency == "EUR"
    assert [line.metric for line in result.lines] == [
        "instance_hour",
        "vcpu_hour",
        "ram_gib_hour",
        "storage_gib_month",
    ]
    by_metric = {line.metric: line for line in result.lines}
    assert by_metric["instance_hour"].quantity == 300
    assert by_metric["vcpu_hour"].quantity == 1200
    assert by_metric["ram_gib_hour"].quantity == 4800
    storage = by_metric["storage_gib_month"].quantity
    assert abs(Fraction(storage) - Fraction(30000, 730)) < Fraction(1, 10**6)
    assert [line.amount for line in result.lines] == [D("3.75"), D("6.12"), D("15.00"), D("2.26")]
    assert result.total == D("27.13")
    assert result.total == sum(line.amount for line in result.lines)


def test_an_estimate_total_is_the_sum_of_rounded_lines() -> None:
    prices = [
        Price("instance_hour", D("0.00005"), "EUR"),  # 0.005 → 0.01
        Price("vcpu_hour", D("0.000125"), "EUR"),  # 0.025 → 0.03
        Price("ram_gib_hour", D("0.000025"), "EUR"),  # 0.0025 → 0.00
    ]
    result = estimate(prices, Specs(2, D(1), 0), quantity=1, hours=D(100))
    assert [line.amount for line in result.lines] == [D("0.01"), D("0.03"), D("0.00")]
    assert result.total == D("0.04")  # not round(0.0325) = 0.03


def test_storage_is_rated_on_the_exact_gib_months() -> None:
    """75 GiB for one hour at 3.65 per GiB-month is exactly 0.375 → 0.38 (half-up)."""
    prices = [Price("instance_hour", D(0), "EUR"), Price("storage_gib_month", D("3.65"), "EUR")]
    result = estimate(prices, Specs(1, D(1), 75), quantity=1, hours=D(1))
    storage = next(line for line in result.lines if line.metric == "storage_gib_month")
    assert storage.amount == D("0.38")
    assert result.total == D("0.38")


def test_an_estimate_in_two_currencies_is_refused() -> None:
    mixed = [Price("instance_hour", D("0.01"), "EUR"), Price("vcpu_hour", D("0.01"), "CAD")]
    with pytest.raises(ValueError):
        estimate(mixed, SPECS, quantity=1, hours=D(1))
    with pytest.raises(ValueError):
        estimate([], SPECS, quantity=1, hours=D(1))


def test_monthly_price_is_one_machine_for_730_hours() -> None:
    assert HOURS_PER_MONTH == 730
    # 730 × 0.0125 = 9.125 → 9.13 ; 2920 × 0.0051 = 14.892 → 14.89 ;
    # 11680 × 0.003125 = 36.50 ; 100 × 0.055 = 5.50  → 66.02
    assert monthly_price(PRICES, SPECS) == D("66.02")
    assert monthly_price(PRICES, SPECS) == estimate(PRICES, SPECS, quantity=1, hours=D(730)).total


def test_monthly_price_with_graduated_tiers() -> None:
    # 730 h: 100 × 0.10 + 400 × 0.08 + 230 × 0.05 = 10 + 32 + 11.5 = 53.50
    assert monthly_price([GRADUATED], Specs(1, D(1), 0)) == D("53.50")


# --- property: graduated pricing, restated --------------------------------------------------


def bands_amount(tiers: list[tuple[Decimal | None, Decimal]], quantity: Decimal) -> Decimal:
    """Sum over bands (lower, upper] of the part of `quantity` inside it times its price."""
    total, lower = Decimal(0), Decimal(0)
    for up_to, unit_price in tiers:
        upper = quantity if up_to is None else up_to
        inside = max(Decimal(0), min(quantity, upper) - lower)
        total += inside * unit_price
        if up_to is not None:
            lower = up_to
    return total


@st.composite
def tier_tables(draw: st.DrawFn) -> list[tuple[Decimal | None, Decimal]]:
    steps = draw(st.lists(st.integers(1, 50_000), min_size=0, max_size=5))
    bounds: list[Decimal] = []
    for step in steps:
        bounds.append((bounds[-1] if bounds else Decimal(0)) + Decimal(step).scaleb(-3))
    prices = st.decimals(min_value=0, max_value=10, places=6, allow_nan=False)
    return [(bound, draw(prices)) for bound in bounds] + [(None, draw(prices))]


@given(
    tiers=tier_tables(),
    quantity=st.decimals(min_value=0, max_value=300, places=4, allow_nan=False),
    boundary=st.one_of(st.none(), st.integers(0, 4)),
)
def test_property_raw_amount_matches_an_independent_restatement(
    tiers: list[tuple[Decimal | None, Decimal]], quantity: Decimal, boundary: int | None
) -> None:
    bounds = [up_to for up_to, _ in tiers if up_to is not None]
    if boundary is not None and bounds:
        quantity = bounds[boundary % len(bounds)]  # exactly on a boundary
    price = Price("vcpu_hour", tiers[0][1], "EUR", tuple(Tier(u, p) for u, p in tiers))
    exact = bands_amount(tiers, quantity)
    assert raw_amount(price, quantity) == exact
    assert rate(price, quantity).amount == exact.quantize(D("0.01"), rounding=ROUND_HALF_UP)
