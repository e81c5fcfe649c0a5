"""The demo's closed month: last month as the demo agencies lived it, so that issued invoices,
exports, a credit note, a void and settlements can be tried on the first day.

On a new database the seed founds the demo consortium the day before last month began (see
`founding_moment`), then replays last month with the broker's clock (`use_clock`,
`JobContext(now=…)`) set to each moment in turn, through the services the API calls and the job
handlers a worker runs:

- the agencies' buyers order machines and a volume (`orders.place_order`); the order above the
  Québec threshold waits for its approver (`orders.approve`); the provisioning jobs make them on
  the simulated clouds, whose databases keep them, running, for the worker after the seed;
- a machine is stopped for a weekend and started again, another is terminated mid-month
  (`resources.request_action` and the action jobs);
- each night the meter closes the day's instance hours, the usage poll records what the
  simulated clouds report (vCPU and RAM hours), and the operators push the day's egress
  (`usage.push`);
- once the month is over, finance runs billing for it, finalizes both invoices, credits part of
  the health agency's (an outage), and voids the city's, issued before Nordet Nuagique pushed
  its egress of the month's last day, then runs billing again and finalizes the replacement.

Settlements are computed from those issued documents whenever they are read.

Every December moment lies between the end of the month and now: early in a month the morning
after is compressed into the minutes that have passed (never a clock ahead of the real one). The
machines that were not terminated keep running into this month.

History is made once, on the database it can be true of: the demo agencies existed before the
month began, have no order yet, and nothing was metered past its start. A database with any
invoice of a demo agency has its history (or billing of its own) and is left alone, so a second
seeding adds nothing; an older database seeded without history is left as it is (its agencies
were created after the month began, or its meter has closed those hours already: a past month
cannot be made up for it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.metering import period_bounds, period_of
from billing.money import round_amount
from broker.auth.identity import Caller
from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.models import (
    Invoice,
    InvoiceState,
    MeterCursor,
    Offer,
    OfferState,
    Order,
    Organization,
    OrganizationKind,
    Provider,
    Resource,
    Role,
)
from broker.models.base import use_clock
from broker.services import billing_runs, corrections, invoices, orders, resources, usage

log = logging.getLogger("broker.seed")

HEALTH_AGENCY = "Agence nationale des données de santé"
CITY = "Ville de Québec"
CONSORTIUM = "Sovereign Cloud Consortium"


@dataclass(frozen=True)
class PastOrder:
    """An order of last month: its moments are offsets from the month's first instant."""

    agency: str
    name: str
    sku: str
    quantity: int
    placed: timedelta
    approved: timedelta | None = None  # by the agency's approver (over its threshold)
    egress_gib_per_day: Decimal = Decimal(0)  # per machine, pushed by the provider's operator
    stopped: tuple[timedelta, timedelta] | None = None  # (stop, start) of its machines
    terminated: timedelta | None = None  # all its machines


def _at(days: int, hours: int, minutes: int = 0) -> timedelta:
    return timedelta(days=days, hours=hours, minutes=minutes)


PAST_ORDERS: tuple[PastOrder, ...] = (
    PastOrder(
        HEALTH_AGENCY,
        "dossier-patient",
        "hc-std-m-par",
        2,
        placed=_at(0, 8),
        egress_gib_per_day=Decimal("6.5"),
    ),
    PastOrder(
        HEALTH_AGENCY,
        "entrepot-donnees",
        "hc-mem-xl-par",
        1,
        placed=_at(0, 8, 30),
        stopped=(_at(13, 19), _at(15, 7)),  # a maintenance weekend
    ),
    # A volume for the warehouse's data, billed by the broker for its size (100 GiB).
    PastOrder(HEALTH_AGENCY, "archives", "hc-bloc-ssd-par", 1, placed=_at(2, 10)),
    PastOrder(
        CITY, "portail-citoyen", "nn-m-qc", 2, placed=_at(0, 9), egress_gib_per_day=Decimal(35)
    ),
    PastOrder(
        CITY,
        "analytique",
        "nn-mem-xl-mtl",
        1,
        placed=_at(1, 9, 30),
        approved=_at(1, 14),  # 967.54 CAD a month: over the city's threshold of 400
        terminated=_at(19, 18),  # the study is over
    ),
)

# How long a simulated machine takes to boot, and a little more: when provisioning looks again.
BOOT_WAIT = timedelta(seconds=10)
# After the month, as offsets from its end (compressed into the time since, early in a month).
NIGHTLY = timedelta(minutes=10)  # each night's metering, polling and egress reports
BILLING_RUN = _at(0, 6)
FINALIZED = _at(0, 9)
CREDITED = _at(1, 9)
LATE_EGRESS = _at(1, 10)
VOIDED = _at(1, 10, 30)
REBILLED = _at(1, 10, 35)
REPLACED = _at(1, 11)
AFTERWARDS = _at(1, 12)  # the whole morning after, for compressing it
# The city's egress of the month's last day reaches the broker only after its invoice is issued.
LATE_AGENCY = CITY
CREDIT_SHARE = Decimal("0.10")  # of the first dossier-patient machine's lines
CREDIT_REASON = (
    "Service credit: Paris region (fr-par-1) unavailable for 3 hours on the 12th "
    "(availability commitment 99.9 %)."
)
VOID_REASON = (
    "Issued before Nordet Nuagique reported the egress of the month's last day; replaced by an "
    "invoice that includes it."
)


def previous_period(now: datetime) -> str:
    """The calendar month before the one `now` is in."""
    return period_of(period_bounds(period_of(now))[0] - timedelta(days=1))


def founding_moment(now: datetime) -> datetime:
    """When a new demo consortium is founded: the day before last month began."""
    return period_bounds(previous_period(now))[0] - timedelta(days=1)


def seed_history(db: Database, config: Mapping[str, Any], now: datetime) -> bool:
    """Give the demo its closed month, when it has none and can have one; whether it did."""
    period = previous_period(now)
    with db.session(read_only=True) as session:
        reason = _why_not(session, period)
    if reason is not None:
        log.info("demo history for %s not added: %s", period, reason)
        return False
    _History(db, config, period, now).replay()
    log.info("demo history for %s added", period)
    return True


def _why_not(session: Session, period: str) -> str | None:
    """Why the demo cannot be given `period` as its history (None: it can)."""
    start, _ = period_bounds(period)
    agencies = session.scalars(
        select(Organization).where(Organization.name.in_([HEALTH_AGENCY, CITY]))
    ).all()
    ids = [agency.id for agency in agencies]
    if session.scalar(select(Invoice.id).where(Invoice.organization_id.in_(ids)).limit(1)):
        return "the demo agencies have invoices already"
    late = [agency.name for agency in agencies if agency.created_at > start]
    if late or len(agencies) < 2:
        return f"the demo agencies were created after {period} began ({', '.join(late)})"
    if session.scalar(select(Order.id).where(Order.organization_id.in_(ids)).limit(1)):
        return "the demo agencies have orders already (an earlier seeding stopped part-way?)"
    if session.scalar(select(MeterCursor.name).where(MeterCursor.until > start).limit(1)):
        return f"usage was metered past the start of {period} already"
    return None


class _Clock:
    """The broker's clock during the replay: it moves only forward, never past `limit`."""

    def __init__(self, at: datetime, limit: datetime) -> None:
        self.at, self.limit = at, limit

    def __call__(self) -> datetime:
        return self.at

    def move(self, to: datetime) -> None:
        assert self.at <= to <= self.limit, (self.at, to, self.limit)
        self.at = to


def _caller(organization: Organization, role: Role) -> Caller:
    """The seed acting in `role` for `organization` (audited as the client `seed`)."""
    return Caller(
        client_id="seed",
        organization_id=organization.id,
        organization_kind=organization.kind,
        roles=frozenset({role}),
    )


@dataclass
class _Placed:
    plan: PastOrder
    order_id: uuid.UUID
    provider: Provider


class _History:
    """One replay of `period`, step by step, each step at its moment."""

    def __init__(self, db: Database, config: Mapping[str, Any], period: str, now: datetime):
        self.db, self.period = db, period
        self.start, self.end = period_bounds(period)
        self.clock = _Clock(self.start, now)
        # Adapters read the clock from the configuration: the simulated clouds keep our time.
        self.config = {**config, "CLOCK": self.clock}
        # The morning after the month, squeezed into the time since it ended if need be.
        self.squeeze = min(Fraction(1), Fraction((now - self.end) / AFTERWARDS))
        self.placed: list[_Placed] = []
        with db.session(read_only=True) as session:
            named = {o.name: o for o in session.scalars(select(Organization))}
            for organization in named.values():
                session.expunge(organization)
        self.organizations = named

    def after(self, offset: timedelta) -> datetime:
        """The moment `offset` after the month ended (squeezed early in a month)."""
        return self.end + offset * float(self.squeeze)

    def replay(self) -> None:
        steps = self._steps()
        steps.sort(key=lambda step: step[0])
        with use_clock(self.clock):
            for moment, step in steps:
                self.clock.move(moment)
                step()

    def _steps(self) -> list[tuple[datetime, Callable[[], None]]]:
        steps: list[tuple[datetime, Callable[[], None]]] = []
        for plan in PAST_ORDERS:
            steps.append((self.start + plan.placed, partial(self._order, plan)))
            if plan.approved is not None:
                steps.append((self.start + plan.approved, partial(self._approve, plan)))
            if plan.stopped is not None:
                stop, start = plan.stopped
                steps.append((self.start + stop, partial(self._act, plan, "stop")))
                steps.append((self.start + start, partial(self._act, plan, "start")))
            if plan.terminated is not None:
                steps.append((self.start + plan.terminated, partial(self._act, plan, "terminate")))
        day = self.start
        while day + timedelta(days=1) < self.end:
            steps.append((day + timedelta(days=1) + NIGHTLY, partial(self._night, day)))
            day += timedelta(days=1)
        steps += [
            (self.after(NIGHTLY), partial(self._night, day, late=LATE_AGENCY)),
            (self.after(BILLING_RUN), self._bill),
            (self.after(FINALIZED), self._finalize),
            (self.after(CREDITED), self._credit),
            (self.after(LATE_EGRESS), partial(self._report_egress, day, only=LATE_AGENCY)),
            (self.after(VOIDED), self._void),
            (self.after(REBILLED), self._bill),
            (self.after(REPLACED), self._finalize),
        ]
        return steps

    # Jobs ----------------------------------------------------------------------------------

    def _context(self) -> JobContext:
        return JobContext(self.db, self.config, now=self.clock)

    def _run_jobs(self) -> None:
        """Run what is ready now, as a worker would, then what a booting machine waited for."""
        run_pending(self._context(), HANDLERS, worker="seed", on_dead=ON_DEAD)
        self.clock.move(self.clock() + BOOT_WAIT)
        run_pending(self._context(), HANDLERS, worker="seed", on_dead=ON_DEAD)

    # Orders and machines -------------------------------------------------------------------

    def _order(self, plan: PastOrder) -> None:
        buyer = _caller(self.organizations[plan.agency], Role.BUYER)
        with self.db.transaction() as session:
            offer = session.scalars(
                select(Offer).where(Offer.sku == plan.sku, Offer.state == OfferState.PUBLISHED)
            ).one()
            order = orders.place_order(
                session,
                buyer,
                {"offer_id": offer.id, "quantity": plan.quantity, "name": plan.name},
                self.clock(),
            )
            provider = session.get_one(Provider, order.provider_id)
            session.expunge(provider)
            self.placed.append(_Placed(plan, order.id, provider))
        self._run_jobs()

    def _placed(self, plan: PastOrder) -> _Placed:
        return next(placed for placed in self.placed if placed.plan is plan)

    def _approve(self, plan: PastOrder) -> None:
        approver = _caller(self.organizations[plan.agency], Role.APPROVER)
        with self.db.transaction() as session:
            orders.approve(session, approver, self._placed(plan).order_id, self.clock())
        self._run_jobs()

    def _machines(self, session: Session, placed: _Placed) -> list[Resource]:
        return list(
            session.scalars(
                select(Resource)
                .where(Resource.order_id == placed.order_id)
                .order_by(Resource.index)
            )
        )

    def _act(self, plan: PastOrder, action: str) -> None:
        buyer = _caller(self.organizations[plan.agency], Role.BUYER)
        with self.db.transaction() as session:
            for machine in self._machines(session, self._placed(plan)):
                resources.request_action(session, buyer, machine.id, action, self.clock())
        self._run_jobs()

    # Usage ---------------------------------------------------------------------------------

    def _night(self, day: datetime, late: str | None = None) -> None:
        """After `day`: the operators report its egress (but `late`'s), the meter closes its
        hours, the poll asks the clouds for theirs."""
        self._report_egress(day, skip=late)
        context = self._context()
        usage.meter_closed_hours(context)
        usage.run_poll_job(context, None)

    def _report_egress(
        self, day: datetime, only: str | None = None, skip: str | None = None
    ) -> None:
        """Each provider's operator pushes `day`'s egress of the machines it ran that day."""
        batches: dict[uuid.UUID, tuple[Provider, list[dict[str, Any]]]] = {}
        with self.db.session(read_only=True) as session:
            for placed in self.placed:
                plan = placed.plan
                wanted = only is None or plan.agency == only
                if not plan.egress_gib_per_day or plan.agency == skip or not wanted:
                    continue
                for machine in self._machines(session, placed):
                    record = _egress(machine, day, plan.egress_gib_per_day)
                    if record is not None:
                        batch = batches.setdefault(placed.provider.id, (placed.provider, []))
                        batch[1].append(record)
        for provider, records in batches.values():
            operator = Caller(
                client_id="seed",
                organization_id=provider.organization_id,
                organization_kind=OrganizationKind.PROVIDER,
                roles=frozenset({Role.PROVIDER}),
            )
            with self.db.transaction() as session:
                usage.push(session, operator, records, self.clock(), self.config)

    # Billing -------------------------------------------------------------------------------

    def _finance(self) -> Caller:
        return _caller(self.organizations[CONSORTIUM], Role.FINANCE)

    def _bill(self) -> None:
        with self.db.transaction() as session:
            billing_runs.start_run(session, self._finance(), self.period, self.clock())
        run_pending(self._context(), HANDLERS, worker="seed", on_dead=ON_DEAD)

    def _invoice(self, session: Session, agency: str) -> Invoice:
        """The agency's live invoice of the period."""
        return session.scalars(
            select(Invoice).where(
                Invoice.organization_id == self.organizations[agency].id,
                Invoice.period == self.period,
                Invoice.state != InvoiceState.VOID,
            )
        ).one()

    def _finalize(self) -> None:
        with self.db.transaction() as session:
            for agency in (HEALTH_AGENCY, CITY):
                invoice = self._invoice(session, agency)
                if invoice.state is InvoiceState.DRAFT:
                    invoices.finalize(
                        session, self._finance(), invoice.id, self.clock(), self.config
                    )

    def _credit(self) -> None:
        """Credit a share of every line of the first dossier-patient machine (an outage)."""
        placed = next(p for p in self.placed if p.plan.name == "dossier-patient")
        with self.db.transaction() as session:
            machine = self._machines(session, placed)[0]
            invoice = self._invoice(session, placed.plan.agency)
            lines = [
                {"position": line.position, "amount": amount}
                for line in invoice.lines
                if line.resource_id == machine.id
                for amount in [round_amount(line.amount * CREDIT_SHARE, invoice.currency)]
                if amount > 0
            ]
            corrections.issue_credit_note(
                session, self._finance(), invoice.id, CREDIT_REASON, lines, self.clock()
            )

    def _void(self) -> None:
        with self.db.transaction() as session:
            invoice = self._invoice(session, LATE_AGENCY)
            corrections.void(session, self._finance(), invoice.id, VOID_REASON, self.clock())


def _egress(machine: Resource, day: datetime, per_day: Decimal) -> dict[str, Any] | None:
    """`machine`'s egress record of `day` (the part of it the machine lived), or None."""
    if machine.activated_at is None:
        return None
    start = max(day, machine.activated_at)
    end = min(day + timedelta(days=1), machine.terminated_at or day + timedelta(days=1))
    if end <= start:
        return None
    # A little more on some days than on others, the same on every replay.
    variation = Decimal(80 + (day.day * 37) % 41) / 100
    share = Decimal((end - start).total_seconds()) / Decimal(86400)
    return {
        "record_id": f"egress/{machine.id}/{day:%Y-%m-%d}",
        "resource_id": machine.id,
        "metric": "egress_gib",
        "quantity": (per_day * variation * share).quantize(Decimal("0.001")),
        "start": start,
        "end": end,
    }
