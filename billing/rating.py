"""Rating: turning quantities of metrics into money, as pure functions of their inputs.

Prices are per metric, optionally graduated (each band of the quantity at its own price);
amounts are rounded half-up to the currency's minor unit once per line, and a total is the
sum of its rounded lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from billing.money import UNIT_PRICE_QUANTUM, round_amount, to_decimal

HOURS_PER_MONTH = 730

# Metric → unit it is counted in. `instance_hour` is metered by the broker itself; the others
# are reported by providers.
METRICS: dict[str, str] = {
    "instance_hour": "hour",
    "vcpu_hour": "vCPU-hour",
    "ram_gib_hour": "GiB-hour",
    "storage_gib_month": "GiB-month",
    "egress_gib": "GiB",
    "requests": "request",
}


# What each kind of offer is priced by: the metric every offer of the kind must price first,
# then the others it may. Volumes bill their provisioned size (`storage_gib_month`, metered by
# the broker from the volume's life and resizes); buckets the GiB they store, the requests
# they serve and their egress (reported by the provider).
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "vm": ("instance_hour", "vcpu_hour", "ram_gib_hour", "storage_gib_month", "egress_gib"),
    "volume": ("storage_gib_month",),
    "object_storage": ("storage_gib_month", "requests", "egress_gib"),
}
# Metrics the broker meters itself, from each resource's life: never reported by providers.
BROKER_METERED: dict[str, frozenset[str]] = {
    "vm": frozenset({"instance_hour"}),
    "volume": frozenset({"storage_gib_month"}),
    "object_storage": frozenset(),
}
# How much a bucket is compared, quoted and budgeted at when nobody says how much it will
# store: 1,000 GiB for a month.
STORED_GIB_BASIS = 1000


@dataclass(frozen=True)
class Tier:
    """A band of a graduated price: quantities up to `up_to` (None: no limit)."""

    up_to: Decimal | None
    unit_price: Decimal


@dataclass(frozen=True)
class Price:
    metric: str
    unit_price: Decimal
    currency: str
    tiers: tuple[Tier, ...] = ()
    # EN 16931 VAT category of what this price charges for (see billing.invoicing).
    tax_category: str = "S"


@dataclass(frozen=True)
class Specs:
    vcpu: int
    ram_gib: Decimal
    disk_gib: int


@dataclass(frozen=True)
class Line:
    metric: str
    quantity: Decimal
    unit_price: Decimal  # the effective (average) price when tiers apply
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class Estimate:
    lines: tuple[Line, ...]
    total: Decimal
    currency: str


Quantity = Decimal | Fraction


def raw_amount(price: Price, quantity: Quantity) -> Fraction:
    """The exact, unrounded amount for `quantity` of the price's metric.

    Exact means a `Fraction`: a share of a month (`hours / 730`) has no finite decimal form,
    and rounding it early can tip a half-cent the wrong way (75 GiB for an hour at 3.65 is
    0.375, not 0.37499…).
    """
    quantity = Fraction(quantity)
    if not price.tiers:
        return quantity * Fraction(price.unit_price)
    amount, lower = Fraction(0), Fraction(0)
    for tier in price.tiers:
        bound = None if tier.up_to is None else Fraction(tier.up_to)
        upper = quantity if bound is None else min(quantity, bound)
        if upper > lower:
            amount += (upper - lower) * Fraction(tier.unit_price)
        if bound is None or quantity <= bound:
            break
        lower = bound
    return amount


def rate(price: Price, quantity: Quantity) -> Line:
    """One line: the quantity, its effective unit price and its amount rounded once."""
    exact = raw_amount(price, quantity)
    quantity = Fraction(quantity)
    unit = to_decimal(exact / quantity, UNIT_PRICE_QUANTUM) if quantity else price.unit_price
    return Line(
        price.metric,
        to_decimal(quantity, UNIT_PRICE_QUANTUM).normalize(),
        unit,
        round_amount(exact, price.currency),
        price.currency,
    )


def usage_for(specs: Specs, quantity: int, hours: Decimal | int) -> dict[str, Fraction]:
    """What `quantity` machines of `specs` consume in `hours` (egress is not predictable)."""
    machine_hours = quantity * Fraction(hours)
    return {
        "instance_hour": machine_hours,
        "vcpu_hour": machine_hours * specs.vcpu,
        "ram_gib_hour": machine_hours * Fraction(specs.ram_gib),
        "storage_gib_month": machine_hours * specs.disk_gib / HOURS_PER_MONTH,
    }


def estimate(
    prices: Sequence[Price], specs: Specs, *, quantity: int, hours: Decimal | int
) -> Estimate:
    """Cost of running `quantity` machines for `hours`: one line per priced metric."""
    currencies = {price.currency for price in prices}
    if len(currencies) != 1:
        raise ValueError("an offer is priced in exactly one currency")
    usage = usage_for(specs, quantity, hours)
    lines = tuple(rate(price, usage[price.metric]) for price in prices if price.metric in usage)
    currency = currencies.pop()
    total = round_amount(sum((line.amount for line in lines), Decimal(0)), currency)
    return Estimate(lines, total, currency)


def monthly_price(prices: Sequence[Price], specs: Specs) -> Decimal:
    """One machine for 730 hours: the figure the catalogue compares offers by."""
    return estimate(prices, specs, quantity=1, hours=HOURS_PER_MONTH).total
