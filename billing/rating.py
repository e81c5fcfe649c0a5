"""Rating: turning quantities of metrics into money, as pure functions of their inputs.

Prices are per metric, optionally graduated (each band of the quantity at its own price);
amounts are rounded half-up to the currency's minor unit once per line, and a total is the
sum of its rounded lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing.money import UNIT_PRICE_QUANTUM, round_amount

HOURS_PER_MONTH = Decimal(730)

# Metric → unit it is counted in. `instance_hour` is metered by the broker itself; the others
# are reported by providers.
METRICS: dict[str, str] = {
    "instance_hour": "hour",
    "vcpu_hour": "vCPU-hour",
    "ram_gib_hour": "GiB-hour",
    "storage_gib_month": "GiB-month",
    "egress_gib": "GiB",
}


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


@dataclass(frozen=True)
class Estimate:
    lines: tuple[Line, ...]
    total: Decimal
    currency: str


def raw_amount(price: Price, quantity: Decimal) -> Decimal:
    """The exact, unrounded amount for `quantity` of the price's metric."""
    if not price.tiers:
        return quantity * price.unit_price
    amount, lower = Decimal(0), Decimal(0)
    for tier in price.tiers:
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if upper > lower:
            amount += (upper - lower) * tier.unit_price
        if tier.up_to is None or quantity <= tier.up_to:
            break
        lower = tier.up_to
    return amount


def rate(price: Price, quantity: Decimal) -> Line:
    """One line: the quantity, its effective unit price and its amount rounded once."""
    exact = raw_amount(price, quantity)
    unit = (exact / quantity).quantize(UNIT_PRICE_QUANTUM) if quantity else price.unit_price
    return Line(price.metric, quantity, unit, round_amount(exact, price.currency))


def usage_for(specs: Specs, quantity: int, hours: Decimal) -> dict[str, Decimal]:
    """What `quantity` machines of `specs` consume in `hours` (egress is not predictable)."""
    return {
        "instance_hour": quantity * hours,
        "vcpu_hour": quantity * hours * specs.vcpu,
        "ram_gib_hour": quantity * hours * specs.ram_gib,
        "storage_gib_month": quantity * specs.disk_gib * hours / HOURS_PER_MONTH,
    }


def estimate(prices: Sequence[Price], specs: Specs, *, quantity: int, hours: Decimal) -> Estimate:
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
