"""Invoice arithmetic and metering, as pure functions: exact quantities, lines rounded once,
tax once per category, totals that add up; running time cut at hours and months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import invoicing
from billing.document import ADJUSTMENT, USAGE
from billing.metering import (
    QuantityError,
    from_quanta,
    hour_slices,
    period_bounds,
    period_of,
    running_intervals,
    to_quanta,
)
from billing.rating import Price, Tier

T0 = datetime(2030, 3, 1, tzinfo=UTC)
FR = invoicing.TaxProfile("FR", Decimal("20"))


def consumption(quantity: Fraction, price: Price, **overrides: object) -> invoicing.Consumption:
    values: dict[str, object] = {
        "kind": USAGE,
        "period": "2030-03",
        "resource_id": "r",
        "provider_id": "p",
        "metric": price.metric,
        "quantity": quantity,
        "price": price,
        "service_start": T0,
        "service_end": T0 + timedelta(hours=1),
        "tax_category": price.tax_category,
    }
    values.update(overrides)
    return invoicing.Consumption(**values)  # type: ignore[arg-type]


quantities = st.fractions(min_value=0, max_value=10_000, max_denominator=3_600_000)
unit_prices = st.decimals(min_value=0, max_value=50, places=6)
categories = st.sampled_from(["S", "Z", "E"])


@given(
    st.lists(st.tuples(quantities, unit_prices, categories), min_size=1, max_size=40),
    st.decimals(min_value=0, max_value=30, places=3),
)
def test_totals_are_rounded_lines_plus_tax_per_category(
    items: list[tuple[Fraction, Decimal, str]], vat_rate: Decimal
) -> None:
    profile = invoicing.TaxProfile("FR", vat_rate)
    totals = invoicing.build(
        "EUR",
        [
            consumption(quantity, Price("vcpu_hour", price, "EUR", tax_category=category))
            for quantity, price, category in items
        ],
        profile,
    )
    cent = Decimal("0.01")

    def half_up(exact: Fraction) -> Decimal:  # in whole cents, independently of the code
        return Decimal(int(exact * 100 + Fraction(1, 2))) / 100

    def charged_in(category: str) -> str:  # a 0 % standard rate is zero rating (BR-S-05)
        return "Z" if category == "S" and vat_rate == 0 else category

    assert sorted((line.amount, line.tax_category) for line in totals.lines) == sorted(
        (half_up(quantity * Fraction(price)), charged_in(category))
        for quantity, price, category in items
    )
    bases: dict[str, Decimal] = {}
    for line in totals.lines:
        bases[line.tax_category] = bases.get(line.tax_category, Decimal(0)) + line.amount
    assert {tax.category: tax.base for tax in totals.taxes} == bases
    for tax in totals.taxes:
        rate = vat_rate if tax.category == "S" else Decimal(0)
        assert tax.rate == rate
        assert tax.amount == (tax.base * rate / 100).quantize(cent, rounding=ROUND_HALF_UP)
    assert totals.subtotal == sum((line.amount for line in totals.lines), Decimal(0))
    assert totals.tax == sum((tax.amount for tax in totals.taxes), Decimal(0))
    assert totals.total == totals.subtotal + totals.tax


def test_a_half_cent_is_rounded_once_per_line_not_per_record() -> None:
    price = Price("instance_hour", Decimal("0.05"), "EUR")
    # three records of 20 minutes make one line of exactly one hour: 0.05 (rounding each
    # record, 0.0166… → 0.02, would have made 0.06)
    third = Fraction(1, 3)
    totals = invoicing.build("EUR", [consumption(third + third + third, price)], FR)
    assert totals.lines[0].amount == Decimal("0.05")
    # 2.5 h at 0.05 = 0.125 → 0.13; VAT 20 % of 0.13 = 0.026 → 0.03, once for the category
    totals = invoicing.build(
        "EUR", [consumption(Fraction(5, 2), Price("vcpu_hour", Decimal("0.05"), "EUR"))], FR
    )
    assert (totals.subtotal, totals.tax, totals.total) == (
        Decimal("0.13"),
        Decimal("0.03"),
        Decimal("0.16"),
    )


def test_an_adjustment_continues_the_tiers_where_its_period_stopped() -> None:
    tiered = Price(
        "egress_gib",
        Decimal("0.09"),
        "EUR",
        (Tier(Decimal(100), Decimal("0.09")), Tier(None, Decimal("0.05"))),
    )
    # 90 GiB billed already; 20 late: 10 at 0.09 and 10 at 0.05
    late = consumption(Fraction(20), tiered, kind=ADJUSTMENT, already_billed=Fraction(90))
    (line,) = invoicing.build("EUR", [late], FR).lines
    assert (line.amount, line.unit_price) == (Decimal("1.40"), Decimal("0.07"))


def test_a_price_in_another_currency_is_refused() -> None:
    with pytest.raises(ValueError, match="CAD price on a EUR invoice"):
        invoicing.build(
            "EUR", [consumption(Fraction(1), Price("vcpu_hour", Decimal(1), "CAD"))], FR
        )


def test_quantities_are_exact_to_the_microsecond_and_refuse_finer() -> None:
    assert from_quanta(to_quanta(Fraction(1, 3600 * 1_000_000))) == Fraction(1, 3_600_000_000)
    assert from_quanta(to_quanta(Decimal("1.000001"))) == Fraction(1_000_001, 1_000_000)
    with pytest.raises(QuantityError):
        to_quanta(Fraction(1, 7))


def test_running_time_is_cut_at_every_hour_and_month() -> None:
    events = [
        (datetime(2030, 3, 31, 22, 30, tzinfo=UTC), "provisioning"),
        (datetime(2030, 3, 31, 22, 30, tzinfo=UTC), "active"),
        (datetime(2030, 3, 31, 23, 10, tzinfo=UTC), "stopping"),
        (datetime(2030, 3, 31, 23, 50, tzinfo=UTC), "active"),
        (datetime(2030, 4, 1, 0, 45, 30, 500, tzinfo=UTC), "terminating"),
    ]
    spans = running_intervals(events, until=datetime(2030, 5, 1, tzinfo=UTC))
    slices = list(hour_slices(spans, *period_bounds("2030-03")))
    assert [(s.hour.hour, s.hours) for s in slices] == [
        (22, Fraction(1, 2)),
        (23, Fraction(20, 60)),
    ]
    april = list(hour_slices(spans, *period_bounds("2030-04")))
    assert [(s.start, s.end, s.hours) for s in april] == [
        (
            datetime(2030, 4, 1, tzinfo=UTC),
            datetime(2030, 4, 1, 0, 45, 30, 500, tzinfo=UTC),
            Fraction(45 * 60 + 30, 3600) + Fraction(500, 3_600_000_000),
        )
    ]


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))]
        ),
    )
)
def test_a_period_is_the_utc_month_as_strftime_writes_it(at: datetime) -> None:
    assert period_of(at) == at.astimezone(UTC).strftime("%Y-%m")
