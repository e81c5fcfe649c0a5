"""Metering: billing periods, exact quantities, and how long a machine ran, hour by hour.

A quantity in the usage ledger is exact. Providers report decimals (at most 6 places); the
broker meters running time to the microsecond, and a microsecond is 1/3,600,000,000 of an
hour, which no decimal writes exactly. Both are whole multiples of `QUANTUM`
(1/3,600,000,000 of a unit), so quantities are `Fraction`s stored as integer counts of it:
sums stay exact, and an invoice line rounds once, at the end.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from billing.money import UNIT_PRICE_QUANTUM, to_decimal, trim_decimals

QUANTA_PER_UNIT = 3_600_000_000  # a microsecond is this share of an hour
QUANTUM = Fraction(1, QUANTA_PER_UNIT)
HOUR = timedelta(hours=1)
MICROSECOND = timedelta(microseconds=1)

# The states a machine is billed `instance_hour` for: it runs (a reboot keeps the meter going;
# a stop or terminate request stops it at once).
RUNNING_STATES = frozenset({"active", "rebooting"})

_PERIOD = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class QuantityError(ValueError):
    """A quantity the ledger cannot hold exactly (or a negative one)."""


def to_quanta(quantity: Fraction | Decimal | int) -> int:
    """`quantity` as a whole number of `QUANTUM`s; refuses what is not a whole number of them."""
    exact = quantity if isinstance(quantity, Fraction) else Fraction(quantity)
    whole, rest = divmod(exact.numerator * QUANTA_PER_UNIT, exact.denominator)
    if rest:
        raise QuantityError(f"{quantity} is finer than the ledger's resolution")
    return whole


def from_quanta(quanta: int) -> Fraction:
    return Fraction(quanta, QUANTA_PER_UNIT)


def shown(quantity: Fraction) -> Decimal:
    """A quantity for people: rounded half-up to 6 decimals (the exact value is kept)."""
    return trim_decimals(to_decimal(quantity, UNIT_PRICE_QUANTUM), keep=0)


def hours_between(start: datetime, end: datetime) -> Fraction:
    """The exact hours from `start` to `end`, to the microsecond."""
    return Fraction((end - start) // MICROSECOND, QUANTA_PER_UNIT)


# Periods -------------------------------------------------------------------------------------


def parse_period(text: str) -> str:
    """A calendar month `YYYY-MM` (UTC); raises ValueError otherwise."""
    if not _PERIOD.match(text) or int(text[:4]) < 2000:
        raise ValueError("A period is a month written YYYY-MM (e.g. 2026-11).")
    return text


def period_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """`[first instant, first instant of the next month)` of a period, in UTC."""
    year, month = int(period[:4]), int(period[5:7])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def next_period(period: str) -> str:
    return period_of(period_bounds(period)[1])


def floor_hour(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Running time --------------------------------------------------------------------------------


def running_intervals(
    events: Iterable[tuple[datetime, str]], until: datetime
) -> list[tuple[datetime, datetime]]:
    """The `[start, end)` spans a machine ran, from its state changes `(at, to_state)` in
    time order; a span still open ends at `until`."""
    spans: list[tuple[datetime, datetime]] = []
    started: datetime | None = None
    for at, state in events:
        if state in RUNNING_STATES and started is None:
            started = at
        elif state not in RUNNING_STATES and started is not None:
            spans.append((started, at))
            started = None
    if started is not None and started < until:
        spans.append((started, until))
    return spans


@dataclass(frozen=True)
class HourSlice:
    """Running time within one clock hour: `hours` of it, between `start` and `end`."""

    hour: datetime
    start: datetime
    end: datetime
    hours: Fraction


def hour_slices(
    spans: Iterable[tuple[datetime, datetime]], since: datetime, until: datetime
) -> Iterator[HourSlice]:
    """Cut running spans at every clock hour (hence at every period boundary) within
    `[since, until)`; one slice per hour the machine ran in, in time order."""
    by_hour: dict[datetime, list[tuple[datetime, datetime]]] = {}
    for span_start, span_end in spans:
        start, end = max(span_start, since), min(span_end, until)
        while start < end:
            hour = floor_hour(start)
            piece_end = min(end, hour + HOUR)
            by_hour.setdefault(hour, []).append((start, piece_end))
            start = piece_end
    for hour in sorted(by_hour):
        pieces = by_hour[hour]
        yield HourSlice(
            hour,
            min(start for start, _ in pieces),
            max(end for _, end in pieces),
            sum((hours_between(start, end) for start, end in pieces), Fraction(0)),
        )
