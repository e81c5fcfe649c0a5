"""Metering: billing periods, exact quantities, and how long a machine ran, hour by hour.

A quantity in the usage ledger is exact. Providers report decimals (at most 6 places); the
broker meters running time to the microsecond, and a microsecond is 1/3,600,000,000 of an
hour, which no decimal writes exactly. Both are whole multiples of `QUANTUM`
(1/3,600,000,000 of a unit), so quantities are `Fraction`s stored as integer counts of it:
sums stay exact, and an invoice line rounds once, at the end.

Usage a provider reports is also checked for plausibility here, as pure functions: it must
fall within the life of the resource it is billed to, and its quantity within what that
resource can consume in the time it covers (`life_refusal`, `quantity_refusal`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from billing.money import UNIT_PRICE_QUANTUM, to_decimal, trim_decimals
from billing.rating import BROKER_METERED, HOURS_PER_MONTH, KIND_METRICS

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
    at = at.astimezone(UTC)
    return f"{at.year}-{at.month:02d}"  # as `strftime("%Y-%m")` here, in a third of its time


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


# The states in which a volume exists at its provider, billed for its provisioned size: from
# when it is first made until it is deleted (stopped machines keep their volumes, and pay).
EXISTING_STATES = frozenset(
    {"active", "stopping", "stopped", "starting", "rebooting", "updating", "terminating", "error"}
)


def sized_intervals(
    events: Iterable[tuple[datetime, str, int | None]], until: datetime
) -> list[tuple[datetime, datetime, int]]:
    """The `[start, end)` spans a volume existed, each with the size it had then, from its
    state changes `(at, to_state, size_gib or None)` in time order: a size counts from the
    event that set it (made, resized) on; a span still open ends at `until`."""
    spans: list[tuple[datetime, datetime, int]] = []
    size: int | None = None
    started: datetime | None = None
    for at, state, new_size in events:
        exists = state in EXISTING_STATES
        if started is not None and (not exists or (new_size is not None and new_size != size)):
            if started < at and size:
                spans.append((started, at, size))
            started = None
        if new_size is not None:
            size = new_size
        if exists and started is None:
            started = at
    if started is not None and started < until and size:
        spans.append((started, until, size))
    return spans


def gib_months(gib_hours: Fraction) -> Fraction:
    """GiB-hours as GiB-months (730 h), floored to the ledger's resolution: a volume is never
    billed a quantum more than it held (and a quantum is far below a cent)."""
    exact = gib_hours / HOURS_PER_MONTH
    return Fraction(exact.numerator * QUANTA_PER_UNIT // exact.denominator, QUANTA_PER_UNIT)


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


# Plausibility --------------------------------------------------------------------------------

# The stable codes of the rules reported usage is refused by (the API's problem `code`).
RESOURCE_NEVER_MADE = "resource_never_made"
OUTSIDE_RESOURCE_LIFE = "outside_resource_life"
QUANTITY_IMPLAUSIBLE = "quantity_implausible"
METRIC_POLLED = "metric_polled"
METRIC_METERED = "metric_metered"

# What the ledger can hold for one resource, metric and period: a 64-bit count of quanta. An
# hourly ceiling is kept under it over the longest month, so that no plausible month of usage
# (hence no invoice line) overflows what storage holds.
LEDGER_CAPACITY = Fraction(2**63 - 1, QUANTA_PER_UNIT)
MAX_HOURLY_CEILING = LEDGER_CAPACITY / (31 * 24)


@dataclass(frozen=True)
class Refusal:
    """Why a usage record is refused: the rule's stable `code`, the field to blame, and why."""

    code: str
    field: str
    message: str


@dataclass(frozen=True)
class Capacity:
    """What one resource can consume: the kind and size of the offer it was ordered from."""

    kind: str  # vm | volume | object_storage
    vcpu: int
    ram_gib: Decimal
    disk_gib: int


@dataclass(frozen=True)
class Ceilings:
    """The plausibility settings: ceilings no offer's size gives, and how far the clocks of a
    cloud and of the broker may disagree about when a resource came and went."""

    egress_gib_per_hour: Fraction
    requests_per_hour: Fraction
    bucket_gib: Fraction
    life_tolerance: timedelta


def hourly_ceiling(metric: str, capacity: Capacity, ceilings: Ceilings) -> Fraction:
    """The most of `metric` one resource can plausibly consume in an hour: its vCPUs, its GiB
    of RAM, its disk (a bucket: the bucket ceiling) for an hour's share of a month (730 h), or
    the egress and request ceilings. A metric without a rule has none (0)."""
    per_hour: Fraction
    if metric == "instance_hour":
        per_hour = Fraction(1)
    elif metric == "vcpu_hour":
        per_hour = Fraction(capacity.vcpu)
    elif metric == "ram_gib_hour":
        per_hour = Fraction(capacity.ram_gib)
    elif metric == "storage_gib_month":
        stored = ceilings.bucket_gib if capacity.kind == "object_storage" else capacity.disk_gib
        per_hour = Fraction(stored) / HOURS_PER_MONTH
    elif metric == "egress_gib":
        per_hour = ceilings.egress_gib_per_hour
    elif metric == "requests":
        per_hour = ceilings.requests_per_hour
    else:
        per_hour = Fraction(0)
    return min(per_hour, MAX_HOURLY_CEILING)


def metered_refusal(metric: str, kind: str) -> Refusal | None:
    """Why `metric` is not reported for a resource of `kind`: the broker meters it itself
    (a machine's instance hours, a volume's provisioned GiB-months), or that kind has no
    such metric."""
    if metric in BROKER_METERED.get(kind, frozenset()):
        return Refusal(
            METRIC_METERED,
            "metric",
            f"The broker meters {metric} of a {kind} itself, from its life and size: it is "
            "not reported (it would be billed twice).",
        )
    if metric not in KIND_METRICS.get(kind, ()):
        return Refusal(
            QUANTITY_IMPLAUSIBLE,
            "metric",
            f"A {kind} does not consume {metric} (its metrics: "
            f"{', '.join(KIND_METRICS.get(kind, ()))}).",
        )
    return None


def life_refusal(
    start: datetime,
    end: datetime,
    activated_at: datetime | None,
    terminated_at: datetime | None,
    tolerance: timedelta,
) -> Refusal | None:
    """Why `[start, end)` does not lie within the resource's life, or None.

    A resource lives from when it first became active (`activated_at`: before that the cloud
    was still making it, and the broker meters nothing either) until it was terminated; the
    two clocks may disagree by `tolerance` at each end. One never active was never made.
    """
    if activated_at is None:
        return Refusal(
            RESOURCE_NEVER_MADE,
            "resource_id",
            "The resource was never made (it has never been active): it has no usage.",
        )
    if start < activated_at - tolerance:
        return Refusal(
            OUTSIDE_RESOURCE_LIFE,
            "start",
            f"The record starts before the resource became active ({_iso(activated_at)}, "
            f"{_seconds(tolerance)} of clock skew tolerated): cut it to the resource's life.",
        )
    if terminated_at is not None and end > terminated_at + tolerance:
        return Refusal(
            OUTSIDE_RESOURCE_LIFE,
            "end",
            f"The record ends after the resource was terminated ({_iso(terminated_at)}, "
            f"{_seconds(tolerance)} of clock skew tolerated): cut it to the resource's life.",
        )
    return None


def within_life(
    start: datetime,
    end: datetime,
    activated_at: datetime | None,
    terminated_at: datetime | None,
    tolerance: timedelta,
) -> tuple[datetime, datetime] | None:
    """The part of `[start, end)` within the resource's life (with the tolerance), or None.
    For samples an adapter reports per clock hour, as clouds do: an hour a machine came up in
    overlaps its life without lying within it."""
    if activated_at is None:
        return None
    first = max(start, activated_at - tolerance)
    last = end if terminated_at is None else min(end, terminated_at + tolerance)
    return (first, last) if first < last else None


@dataclass(frozen=True)
class Span:
    """A quantity of one metric over `[start, end)`."""

    start: datetime
    end: datetime
    quantity: Fraction


def quantity_refusal(
    metric: str,
    record: Span,
    per_hour: Fraction,
    overlapping: Sequence[Span] = (),
) -> Refusal | None:
    """Why `record` claims more than the resource can consume, or None.

    Alone, it must stay within `per_hour` times the hours it covers. With the other records of
    the same resource and metric that overlap it, the sum must stay within `per_hour` times
    the hours they cover together: splitting an impossible quantity over many records with
    the same window does not make it possible.
    """
    hours = hours_between(record.start, record.end)
    if record.quantity > per_hour * hours:
        return Refusal(
            QUANTITY_IMPLAUSIBLE,
            "quantity",
            f"{_text(record.quantity)} of {metric} in {_text(hours)} h is more than the "
            f"resource can consume: at most {_text(per_hour * hours)} "
            f"({_text(per_hour)} an hour).",
        )
    if not overlapping:
        return None
    first = min(record.start, *(span.start for span in overlapping))
    last = max(record.end, *(span.end for span in overlapping))
    total = record.quantity + sum((span.quantity for span in overlapping), Fraction(0))
    hours = hours_between(first, last)
    if total > per_hour * hours:
        return Refusal(
            QUANTITY_IMPLAUSIBLE,
            "quantity",
            f"With the {len(overlapping)} other record(s) of {metric} it overlaps, the "
            f"resource would have consumed {_text(total)} from {_iso(first)} to {_iso(last)}: "
            f"at most {_text(per_hour * hours)} is plausible ({_text(per_hour)} an hour).",
        )
    return None


def _text(quantity: Fraction) -> str:
    """A quantity in a message: as `shown` (6 decimals), or whole when too big for that."""
    return str(shown(quantity)) if abs(quantity) < 10**15 else str(round(quantity))


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _seconds(tolerance: timedelta) -> str:
    return f"{int(tolerance.total_seconds())} s"
