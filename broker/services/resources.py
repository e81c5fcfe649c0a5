"""Resources: the machines orders made, their day-2 actions, and reconciliation with what the
providers report.

Every state change goes through `transition`, which timestamps it in `resource_events` (what
metering reads) and tells the agency's webhooks. An action moves the resource to a transitional
state at once (a second action meanwhile is a 409) and queues a job that calls the provider.
A periodic job compares live resources with the providers: a machine deleted behind the
broker's back is marked `terminated` with the reason, so it is never billed silently.

A machine's cost so far this period (`cost_this_period`) is its usage in the ledger plus an
estimate of the running time whose usage has not arrived yet, so that a buyer sees from the
first minute what the invoice will say.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.metering import hour_slices, period_bounds, period_of, running_intervals
from billing.rating import Price, rate, usage_for
from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import Job, Offer, Order, Resource, ResourceEvent, ResourceState, UsageRecord
from broker.services import adapters, audit, offers, usage, webhooks
from broker.services.pagination import Page, paginate
from providers.base import Action, InstanceState, Permanent, ProviderError

log = logging.getLogger("broker.resources")

ACTION_JOB = "resource.action"
RECONCILE_JOB = "resources.reconcile"

GONE_REASON = "The machine no longer exists at the provider (deleted outside the broker)."

# action → (states it may start from, transitional state, state once done)
ACTIONS: dict[str, tuple[frozenset[ResourceState], ResourceState, ResourceState]] = {
    "stop": (frozenset({ResourceState.ACTIVE}), ResourceState.STOPPING, ResourceState.STOPPED),
    "start": (frozenset({ResourceState.STOPPED}), ResourceState.STARTING, ResourceState.ACTIVE),
    "reboot": (frozenset({ResourceState.ACTIVE}), ResourceState.REBOOTING, ResourceState.ACTIVE),
    "terminate": (
        frozenset({ResourceState.ACTIVE, ResourceState.STOPPED, ResourceState.ERROR}),
        ResourceState.TERMINATING,
        ResourceState.TERMINATED,
    ),
}
_PROVIDER_ACTIONS = {"stop": Action.STOP, "start": Action.START, "reboot": Action.REBOOT}


def record_event(
    session: Session,
    resource: Resource,
    from_state: ResourceState | None,
    to_state: ResourceState,
    reason: str | None = None,
    *,
    now: datetime,
) -> None:
    resource.events_recorded = (resource.events_recorded or 0) + 1
    session.add(
        ResourceEvent(
            id=uuid.uuid4(),
            resource_id=resource.id,
            seq=resource.events_recorded,
            at=now,
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            reason=reason,
        )
    )


def transition(
    session: Session,
    resource: Resource,
    to_state: ResourceState,
    reason: str | None = None,
    *,
    now: datetime,
) -> None:
    """Move `resource` to `to_state`, timestamped, and tell the agency."""
    from_state = resource.state
    if from_state is to_state and reason == resource.state_reason:
        return
    resource.state, resource.state_reason = to_state, reason
    if to_state is ResourceState.ACTIVE and resource.activated_at is None:
        resource.activated_at = now
    if to_state is ResourceState.TERMINATED:
        resource.terminated_at = now
    record_event(session, resource, from_state, to_state, reason, now=now)
    webhooks.notify(
        session,
        resource.organization_id,
        webhooks.RESOURCE_STATE_CHANGED,
        {
            "resource_id": str(resource.id),
            "order_id": str(resource.order_id),
            "state": to_state.value,
            "reason": reason,
        },
    )


def get_resource(
    session: Session, caller: Caller, resource_id: uuid.UUID, *, lock: bool = False
) -> Resource:
    """The resource, if the caller's agency owns it (admins: any). `lock` holds its row until
    the transaction ends: a state check and the change it allows are then one step."""
    resource = session.get(Resource, resource_id, with_for_update=lock)
    if resource is None or not access.sees_organization(caller, resource.organization_id):
        raise NotFound("No such resource.")
    return resource


def list_resources(
    session: Session,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None,
    order_id: uuid.UUID | None = None,
    state: ResourceState | None = None,
) -> Page[Resource]:
    statement = select(Resource)
    if not access.is_admin(caller):
        statement = statement.where(Resource.organization_id == caller.organization_id)
    if order_id is not None:
        statement = statement.where(Resource.order_id == order_id)
    if state is not None:
        statement = statement.where(Resource.state == state)
    return paginate(
        session,
        statement,
        [Resource.created_at, Resource.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{order_id}:{state}",
    )


# Metrics a machine consumes while it runs, at a rate its size gives (`usage_for`): the broker
# meters `instance_hour` each hour after it ends; vCPU and RAM hours arrive from the provider
# (an adapter poll, hour by hour, or a push). Storage and egress count once they are reported.
RUNNING_METRICS = (usage.INSTANCE_HOUR, "vcpu_hour", "ram_gib_hour")


def _usage_by_day(
    session: Session, resource: Resource, now: datetime
) -> tuple[dict[datetime, dict[str, Fraction]], dict[str, Price]]:
    """What `resource` used each UTC day of this period so far (the day's first instant →
    metric → quantity), and its order's prices.

    Each metric counts its usage in the ledger (on the day its record starts); a running-time
    metric also counts the time the machine ran after that usage ends (after the meter's cursor
    for `instance_hour`, after the last record of the metric for the others), times what the
    machine consumes an hour, each hour on its day. Usage arriving replaces that estimate, since
    the estimate only starts where the usage ends."""
    first = period_bounds(period_of(now))[0]
    by_day: dict[datetime, dict[str, Fraction]] = {}
    arrived: dict[str, datetime] = {}

    def add(at: datetime, metric: str, quantity: Fraction) -> None:
        day = max(at, first).replace(hour=0, minute=0, second=0, microsecond=0)
        on_day = by_day.setdefault(day, {})
        on_day[metric] = on_day.get(metric, Fraction(0)) + quantity

    for metric, start, end, quantity in session.execute(
        select(UsageRecord.metric, UsageRecord.start, UsageRecord.end, UsageRecord.quantity).where(
            UsageRecord.resource_id == resource.id, UsageRecord.period == period_of(now)
        )
    ):
        add(start, metric, quantity)
        arrived[metric] = max(arrived.get(metric, end), end)
    arrived[usage.INSTANCE_HOUR] = usage.metered_until(session) or first
    spans = running_intervals(((event.at, event.to_state) for event in resource.events), now)
    offer = session.get_one(Offer, resource.offer_id)
    per_hour = usage_for(offers.specs_of(offer), quantity=1, hours=1)
    for metric in RUNNING_METRICS:
        since = max(arrived.get(metric, first), first)
        for piece in hour_slices(spans, since, now):
            add(piece.hour, metric, piece.hours * per_hour[metric])
    order = session.get(Order, resource.order_id)
    prices = {price.metric: price for price in offers.parse_prices(order.prices)} if order else {}
    return by_day, prices


def cost_this_period(session: Session, resource: Resource, now: datetime) -> dict[str, Any]:
    """What `resource` has cost so far this period, before tax, at its order's prices: the
    usage of `_usage_by_day`, rated per metric."""
    by_day, prices = _usage_by_day(session, resource, now)
    quantities: dict[str, Fraction] = {}
    for on_day in by_day.values():
        for metric, quantity in on_day.items():
            quantities[metric] = quantities.get(metric, Fraction(0)) + quantity
    lines = [
        rate(prices[metric], quantity)
        for metric, quantity in sorted(quantities.items())
        if metric in prices
    ]
    return {
        "period": period_of(now),
        "currency": resource.currency,
        "amount": sum((line.amount for line in lines), Decimal(0)),
        "lines": lines,
    }


def request_action(
    session: Session, caller: Caller, resource_id: uuid.UUID, action: str, now: datetime
) -> Job:
    """Start `action` (the agency's buyers and approvers): 409 when the state forbids it."""
    resource = get_resource(session, caller, resource_id, lock=True)
    if resource.organization_id != caller.organization_id:
        raise NotFound("No such resource.")
    allowed_from, doing, _ = ACTIONS[action]
    if resource.state not in allowed_from:
        raise Conflict(
            f"Cannot {action} a resource that is {resource.state}.", code="action_not_allowed"
        )
    return begin_action(session, caller, resource, action, now)


def begin_action(
    session: Session, actor: Caller | None, resource: Resource, action: str, now: datetime
) -> Job:
    before = {"state": resource.state.value}
    transition(session, resource, ACTIONS[action][1], now=now)
    audit.record(
        session,
        actor,
        f"resource.{action}",
        "resource",
        resource.id,
        organization_id=resource.organization_id,
        before=before,
        after={"state": resource.state.value},
    )
    return enqueue(
        session,
        ACTION_JOB,
        {"resource_id": str(resource.id), "action": action},
        organization_id=resource.organization_id,
        max_attempts=12,
    )


def run_action_job(context: JobContext, job: Job) -> dict[str, Any]:
    """Carry out a stop/start/reboot/terminate at the provider. Idempotent: each call it makes
    is safe to repeat (terminating a machine already gone succeeds)."""
    resource_id, action = uuid.UUID(job.payload["resource_id"]), job.payload["action"]
    _, doing, done = ACTIONS[action]
    with context.db.transaction() as session:
        resource = session.get(Resource, resource_id)
        if resource is None or resource.state is not doing:
            return {"skipped": "the resource is no longer waiting for this action"}
        adapter = adapters.adapter_for_job(session, resource.provider_id, context.config)
        ref, token = resource.provider_ref, resource.token
    reason = None
    try:
        if ref is None:  # never confirmed: find it by its token, if it was made at all
            found = adapter.find_by_token(token)
            ref = found.ref if found is not None else None
        if ref is not None:
            if action == "terminate":
                adapter.deprovision(ref)
            else:
                adapter.action(ref, _PROVIDER_ACTIONS[action])
    except Permanent as error:
        if error.code != "not_found":
            raise
        done, reason = ResourceState.TERMINATED, GONE_REASON
    if ref is None and action == "terminate":
        done, reason = ResourceState.FAILED, "It was never made at the provider."
    with context.db.transaction() as session:
        resource = session.get(Resource, resource_id, with_for_update=True)
        if resource is None or resource.state is not doing:
            return {"skipped": "the resource changed meanwhile"}
        if ref is not None:
            resource.provider_ref = ref  # found by its token, when the create's answer was lost
        transition(session, resource, done, reason, now=context.now())
        return {"state": done.value}


def action_job_dead(session: Session, job: Job, now: datetime) -> None:
    """The provider never carried the action out: say so on the resource."""
    resource = session.get(Resource, uuid.UUID(job.payload["resource_id"]), with_for_update=True)
    action = job.payload["action"]
    if resource is None or resource.state is not ACTIONS[action][1]:
        return
    transition(
        session,
        resource,
        ResourceState.ERROR,
        f"The provider did not {action} it: {job.last_error}",
        now=now,
    )


# Reconciliation ----------------------------------------------------------------------------

_SETTLED = (ResourceState.ACTIVE, ResourceState.STOPPED, ResourceState.ERROR)
_OBSERVED = {
    InstanceState.RUNNING: ResourceState.ACTIVE,
    InstanceState.STOPPED: ResourceState.STOPPED,
    InstanceState.ERROR: ResourceState.ERROR,
}


def run_reconcile_job(context: JobContext, job: Job) -> dict[str, Any]:
    """Compare every settled resource with its provider's view; correct the broker's."""
    with context.db.session(read_only=True) as session:
        provider_ids = list(
            session.scalars(
                select(Resource.provider_id)
                .where(Resource.state.in_(_SETTLED), Resource.provider_ref.is_not(None))
                .distinct()
            )
        )
    changed, unreachable = 0, []
    for provider_id in provider_ids:
        try:
            changed += _reconcile_provider(context, provider_id)
        except (ProviderError, JobFailed) as error:  # one provider down must not stop the rest
            unreachable.append(str(provider_id))
            log.warning(
                "reconciliation skipped a provider",
                extra={"provider_id": str(provider_id), "error": type(error).__name__},
            )
    return {"providers": len(provider_ids), "changed": changed, "unreachable": unreachable}


def _reconcile_provider(context: JobContext, provider_id: uuid.UUID) -> int:
    with context.db.transaction() as session:
        adapter = adapters.adapter_for_job(session, provider_id, context.config)
        settled = [
            (r.id, r.provider_ref, r.state)
            for r in session.scalars(
                select(Resource).where(
                    Resource.provider_id == provider_id,
                    Resource.state.in_(_SETTLED),
                    Resource.provider_ref.is_not(None),
                )
            )
        ]
    changed = 0
    for resource_id, ref, seen in settled:
        assert ref is not None
        instance = adapter.get(ref)
        if instance is None or instance.state is InstanceState.DELETED:
            target, reason = ResourceState.TERMINATED, GONE_REASON
        else:
            observed = _OBSERVED.get(instance.state)
            if observed is None or observed is seen:
                continue
            target, reason = observed, "State reported by the provider."
        with context.db.transaction() as session:
            resource = session.get(Resource, resource_id, with_for_update=True)
            if resource is None or resource.state is not seen:
                continue  # an action or another reconciliation got there first
            transition(session, resource, target, reason, now=context.now())
            changed += 1
    return changed


def provider_machines(
    session: Session,
    caller: Caller,
    *,
    state: ResourceState | None = None,
    limit: int,
    cursor: str | None,
) -> Page[Resource]:
    """The machines running on the clouds of the providers the caller operates (every
    agency's), newest first."""
    from broker.models import Provider

    statement = select(Resource).where(
        Resource.provider_id.in_(
            select(Provider.id).where(Provider.organization_id == caller.organization_id)
        )
    )
    if not access.is_operator(caller):
        statement = statement.where(Resource.id.is_(None))
    if state is not None:
        statement = statement.where(Resource.state == state)
    return paginate(
        session,
        statement,
        [Resource.created_at, Resource.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"provider:{caller.organization_id}:{state}",
    )


def machine_labels(
    session: Session, machines: list[Resource]
) -> tuple[dict[uuid.UUID, str], dict[uuid.UUID, Offer]]:
    """For a page of machines: the name of each one's agency, and its offer (by id)."""
    from broker.models import Organization

    agencies = {r.organization_id for r in machines}
    offer_ids = {r.offer_id for r in machines}
    names = {
        row.id: row.name
        for row in session.execute(
            select(Organization.id, Organization.name).where(Organization.id.in_(agencies))
        )
    }
    found = {o.id: o for o in session.scalars(select(Offer).where(Offer.id.in_(offer_ids)))}
    return names, found


def cost_by_day(
    session: Session, resource: Resource, now: datetime
) -> list[tuple[datetime, Decimal]]:
    """What `resource` cost each UTC day of this period so far (the day's first instant, the
    amount), before tax. A day's amount is the rise of the period's cost over the day, so
    graduated prices apply to the running total and the days add up to `cost_this_period`."""
    by_day, prices = _usage_by_day(session, resource, now)
    days: list[tuple[datetime, Decimal]] = []
    running: dict[str, Fraction] = {}
    before, day = Decimal(0), period_bounds(period_of(now))[0]
    while day <= now:
        for metric, quantity in by_day.get(day, {}).items():
            running[metric] = running.get(metric, Fraction(0)) + quantity
        total = sum(
            (rate(prices[m], q).amount for m, q in running.items() if m in prices), Decimal(0)
        )
        days.append((day, total - before))
        before, day = total, day + timedelta(days=1)
    return days


def period_usage(
    session: Session, caller: Caller, period: str
) -> list[tuple[Resource, str, Fraction, Decimal | None]]:
    """The caller's agency's usage of `period` by machine and metric: the machine, the metric,
    the quantity and its amount before tax at the machine's order's prices (None for a metric
    it has no price for), rated per machine and metric as its invoice rates them."""
    rows = session.execute(
        select(Resource, UsageRecord.metric, func.sum(UsageRecord.quantity))
        .join(Resource, Resource.id == UsageRecord.resource_id)
        .where(UsageRecord.organization_id == caller.organization_id, UsageRecord.period == period)
        .group_by(Resource.id, UsageRecord.metric)
        .order_by(Resource.name, Resource.id, UsageRecord.metric)
    ).all()
    order_ids = {resource.order_id for resource, _, _ in rows}
    prices = {
        order_id: {price.metric: price for price in offers.parse_prices(raw)}
        for order_id, raw in session.execute(
            select(Order.id, Order.prices).where(Order.id.in_(order_ids))
        )
    }
    shown: list[tuple[Resource, str, Fraction, Decimal | None]] = []
    for resource, metric, quantity in rows:
        price = prices.get(resource.order_id, {}).get(metric)
        shown.append((resource, metric, quantity, rate(price, quantity).amount if price else None))
    return shown
