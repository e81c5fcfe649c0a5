"""What each invoice billed of the usage ledger, kept as ranges of the ledger's numbering.

The ledger is append-only and numbered (`usage_records.seq`, in the order records were
written). An invoice bills, for each period and currency of its agency, the records numbered
in one or more ranges `(from_seq, through_seq]` (`UsageTake`); a billing run therefore writes a
few rows per agency instead of marking every record it bills, and never rewrites the ledger.

For one agency, period and currency, the takes of invoices that are not void never overlap and
cover every record up to the highest `through_seq` — except the ranges of voided invoices that
nobody took again. So what is left to bill there is: the records above that highest number, and
those gaps, each taken again with exactly the range it had. `LedgerSweep` says below which
number an agency has nothing left at all, so a run reads only the records written since the
agency's oldest unbilled one, not its whole history.

Every range stops at a *watermark*: a number below which every record is already committed, so
a record committed later can never land inside a range already taken. On SQLite, writers take
turns, so the highest number seen is one. On PostgreSQL, a record's number is drawn when it is
inserted, and a transaction that drew a lower one may commit after a higher one: `watermark`
briefly takes a SHARE lock on the ledger, which waits for the transactions writing it to end
(and lets readers through), then reads the highest number.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction

from sqlalchemy import ColumnElement, ScalarSelect, and_, func, select, text
from sqlalchemy.orm import Session

from broker.models import (
    Invoice,
    InvoiceState,
    LedgerSweep,
    Resource,
    UsageRecord,
    UsageTake,
)

Key = tuple[uuid.UUID, str, str]  # resource, metric, period


def watermark(session: Session) -> int:
    """The ledger's highest number below which every record is committed. Call it in a
    short transaction of its own (on PostgreSQL it holds a lock until that one ends)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE usage_records IN SHARE MODE"))
    return session.scalar(select(func.coalesce(func.max(UsageRecord.seq), 0))) or 0


@dataclass(frozen=True)
class Range:
    period: str
    currency: str
    from_seq: int  # exclusive
    through_seq: int  # inclusive


@dataclass
class Unbilled:
    """What an agency has left to bill up to a watermark, per (period, currency)."""

    ranges: dict[tuple[str, str], list[Range]]
    # For each (period, currency), a number below which it has nothing left to bill.
    floors: dict[tuple[str, str], int]
    through_seq: int


def unbilled(session: Session, organization_id: uuid.UUID, through_seq: int) -> Unbilled:
    """The ranges of the agency's records, up to `through_seq`, that no invoice bills."""
    sweep = session.get(LedgerSweep, organization_id, with_for_update=True)  # vs. a void
    covered = sweep.covered_through if sweep is not None else 0
    currency_of = _currencies(session, organization_id)
    seen: dict[tuple[str, str], tuple[int, int]] = {}
    for resource_id, period, lowest, highest in session.execute(
        select(
            UsageRecord.resource_id,
            UsageRecord.period,
            func.min(UsageRecord.seq),
            func.max(UsageRecord.seq),
        )
        .where(
            UsageRecord.organization_id == organization_id,
            UsageRecord.seq > covered,
            UsageRecord.seq <= through_seq,
        )
        .group_by(UsageRecord.resource_id, UsageRecord.period)
    ):
        pair = (period, currency_of[resource_id])
        low, high = seen.get(pair, (lowest, highest))
        seen[pair] = (min(low, lowest), max(high, highest))
    takes = session.execute(
        select(UsageTake, Invoice.state)
        .join(Invoice, Invoice.id == UsageTake.invoice_id)
        .where(
            UsageTake.organization_id == organization_id,
            UsageTake.period.in_({period for period, _ in seen}),
        )
    ).all()
    ranges: dict[tuple[str, str], list[Range]] = {}
    floors: dict[tuple[str, str], int] = {}
    for pair, (lowest, highest) in seen.items():
        period, currency = pair
        of_pair = [
            (take, state)
            for take, state in takes
            if take.currency == currency and take.period == period
        ]
        live = {
            (t.from_seq, t.through_seq) for t, state in of_pair if state is not InvoiceState.VOID
        }
        top = max((through for _, through in live), default=0)
        gaps = sorted(
            {(t.from_seq, t.through_seq) for t, state in of_pair if state is InvoiceState.VOID}
            - live
        )
        found = [Range(period, currency, low, high) for low, high in gaps if high <= top]
        floor = [r.from_seq for r in found]  # a gap holds records from just above its start
        if highest > top:
            found.append(Range(period, currency, top, through_seq))
            # Above `top`, the pair's records seen start at `lowest` (none lie unbilled below
            # the sweep), so nothing is left at or below `max(top, lowest - 1)`.
            floor.append(max(top, lowest - 1))
        if found:
            ranges[pair] = found
            floors[pair] = min(floor)
    return Unbilled(ranges, floors, through_seq)


def take(session: Session, invoice: Invoice, ranges: list[Range]) -> None:
    """The draft bills these ranges (from then on they are its own)."""
    session.add_all(
        UsageTake(
            invoice_id=invoice.id,
            organization_id=invoice.organization_id,
            period=r.period,
            currency=r.currency,
            from_seq=r.from_seq,
            through_seq=r.through_seq,
        )
        for r in ranges
    )
    session.flush()


def sweep(
    session: Session, organization_id: uuid.UUID, left: Unbilled, taken: set[tuple[str, str]]
) -> None:
    """Remember below which number the agency has nothing left to bill, once the pairs in
    `taken` were billed: the lowest floor of what was left, else the watermark."""
    floors = [floor for pair, floor in left.floors.items() if pair not in taken]
    covered = min(floors, default=left.through_seq)
    row = session.get(LedgerSweep, organization_id)  # locked by `unbilled`
    if row is None:
        session.add(LedgerSweep(organization_id=organization_id, covered_through=covered))
    else:
        row.covered_through = covered


def release(session: Session, invoice: Invoice) -> None:
    """A voided invoice's records are billable again: its agency's sweep goes back below them
    (its takes stay, as the record of what it billed)."""
    lowest = session.scalar(
        select(func.min(UsageTake.from_seq)).where(UsageTake.invoice_id == invoice.id)
    )
    row = session.get(LedgerSweep, invoice.organization_id, with_for_update=True)
    if lowest is not None and row is not None and row.covered_through > lowest:
        row.covered_through = lowest


def _covers() -> ColumnElement[bool]:
    """The take's range holds the record (its currency joined through `Resource`)."""
    return and_(
        UsageTake.organization_id == UsageRecord.organization_id,
        UsageTake.period == UsageRecord.period,
        UsageTake.currency == Resource.currency,
        UsageRecord.seq > UsageTake.from_seq,
        UsageRecord.seq <= UsageTake.through_seq,
    )


Consumed = tuple[uuid.UUID, str, str, Fraction, datetime, datetime]


def consumption(session: Session, invoice_id: uuid.UUID) -> list[Consumed]:
    """The invoice's records summed per resource, metric and period, with their first start
    and last end.

    One statement per take, with its bounds as values: the planner then reads the agency's
    range of the ledger index once (a join on the bounds made it probe the ledger per resource).
    """
    takes = session.scalars(select(UsageTake).where(UsageTake.invoice_id == invoice_id)).all()
    if not takes:
        return []
    currency_of = _currencies(session, takes[0].organization_id)
    sums: dict[Key, Consumed] = {}
    for t in takes:
        for resource_id, metric, period, quantity, start, end in session.execute(
            select(
                UsageRecord.resource_id,
                UsageRecord.metric,
                UsageRecord.period,
                func.sum(UsageRecord.quantity),
                func.min(UsageRecord.start),
                func.max(UsageRecord.end),
            )
            .where(
                UsageRecord.organization_id == t.organization_id,
                UsageRecord.seq > t.from_seq,
                UsageRecord.seq <= t.through_seq,
                UsageRecord.period == t.period,
            )
            .group_by(UsageRecord.resource_id, UsageRecord.metric, UsageRecord.period)
        ):
            if currency_of[resource_id] != t.currency:
                continue
            key = (resource_id, metric, period)
            if key in sums:
                _, _, _, before, first, last = sums[key]
                quantity, start, end = before + quantity, min(first, start), max(last, end)
            sums[key] = (resource_id, metric, period, quantity, start, end)
    return sorted(sums.values(), key=lambda row: (str(row[0]), row[1], row[2]))


def _currencies(session: Session, organization_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The currency of each of the agency's resources (what its records are billed in)."""
    rows = session.execute(
        select(Resource.id, Resource.currency).where(Resource.organization_id == organization_id)
    )
    return {resource_id: currency for resource_id, currency in rows}


def billed_elsewhere(
    session: Session, keys: list[Key], invoice_id: uuid.UUID
) -> dict[Key, Fraction]:
    """How much of each (resource, metric, period) invoices other than this one (and not
    void) billed already."""
    if not keys:
        return {}
    rows = session.execute(
        select(
            UsageRecord.resource_id,
            UsageRecord.metric,
            UsageRecord.period,
            func.sum(UsageRecord.quantity),
        )
        .join(Resource, Resource.id == UsageRecord.resource_id)
        .join(UsageTake, _covers())
        .join(Invoice, Invoice.id == UsageTake.invoice_id)
        .where(
            UsageRecord.resource_id.in_({resource_id for resource_id, _, _ in keys}),
            UsageTake.invoice_id != invoice_id,
            Invoice.state != InvoiceState.VOID,
        )
        .group_by(UsageRecord.resource_id, UsageRecord.metric, UsageRecord.period)
    )
    wanted = set(keys)
    return {
        (resource_id, metric, period): total
        for resource_id, metric, period, total in rows
        if (resource_id, metric, period) in wanted
    }


def billed_by() -> ScalarSelect[uuid.UUID]:
    """The invoice (not void) that bills a record, for `with_expression(UsageRecord.invoice_id,
    billed_by())`."""
    return (
        select(UsageTake.invoice_id)
        .join(Invoice, Invoice.id == UsageTake.invoice_id)
        .join(Resource, Resource.id == UsageRecord.resource_id)
        .where(_covers(), Invoice.state != InvoiceState.VOID)
        .limit(1)
        .correlate(UsageRecord)
        .scalar_subquery()
    )
