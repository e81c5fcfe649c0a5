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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from billing.metering import hour_slices, period_bounds, period_of, running_intervals
from billing.rating import Price, Specs, monthly_price, rate, usage_for
from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import Job, Offer, Order, Resource, ResourceEvent, ResourceState, UsageRecord
from broker.services import adapters, audit, offers, storage, usage, webhooks
from broker.services.credentials import Keyring
from broker.services.pagination import Page, paginate
from providers.base import (
    AccessKey,
    Action,
    InstanceState,
    Kind,
    Permanent,
    ProviderAdapter,
    ProviderError,
    Retained,
)

log = logging.getLogger("broker.resources")

ACTION_JOB = "resource.action"
RECONCILE_JOB = "resources.reconcile"

GONE_REASON = "It no longer exists at the provider (deleted outside the broker)."
MACHINE_GONE_REASON = "Not attached: the machine no longer exists at the provider."

# action → (states it may start from, transitional state, state once done)
_SETTLED_ACTIVE = frozenset({ResourceState.ACTIVE})
ACTIONS: dict[str, tuple[frozenset[ResourceState], ResourceState, ResourceState]] = {
    "resize": (_SETTLED_ACTIVE, ResourceState.UPDATING, ResourceState.ACTIVE),
    "attach": (_SETTLED_ACTIVE, ResourceState.UPDATING, ResourceState.ACTIVE),
    "detach": (_SETTLED_ACTIVE, ResourceState.UPDATING, ResourceState.ACTIVE),
    "set_retention": (_SETTLED_ACTIVE, ResourceState.UPDATING, ResourceState.ACTIVE),
    "rotate_key": (_SETTLED_ACTIVE, ResourceState.UPDATING, ResourceState.ACTIVE),
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
# The actions of each kind of resource (terminate deletes a volume or a bucket).
KIND_ACTIONS: dict[str, tuple[str, ...]] = {
    "vm": ("stop", "start", "reboot", "terminate"),
    "volume": ("resize", "attach", "detach", "terminate"),
    "object_storage": ("set_retention", "rotate_key", "terminate"),
}


def record_event(
    session: Session,
    resource: Resource,
    from_state: ResourceState | None,
    to_state: ResourceState,
    reason: str | None = None,
    *,
    now: datetime,
    size_gib: int | None = None,
) -> None:
    """Timestamp a state change (and a volume's size from then on, when it is set)."""
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
            size_gib=size_gib,
        )
    )


def transition(
    session: Session,
    resource: Resource,
    to_state: ResourceState,
    reason: str | None = None,
    *,
    now: datetime,
    size_gib: int | None = None,
) -> None:
    """Move `resource` to `to_state`, timestamped, and tell the agency. `size_gib`: a
    volume's new size, from now on (what metering bills)."""
    from_state = resource.state
    if from_state is to_state and reason == resource.state_reason and size_gib is None:
        return
    if size_gib is not None:
        resource.size_gib = size_gib
    resource.state, resource.state_reason = to_state, reason
    if to_state is ResourceState.ACTIVE and resource.activated_at is None:
        resource.activated_at = now
    if to_state is ResourceState.TERMINATED:
        resource.terminated_at = now
        # A machine gone takes its attachments with it; a volume gone is attached to nothing.
        resource.attached_to_id = None
        session.execute(
            update(Resource)
            .where(Resource.attached_to_id == resource.id)
            .values(attached_to_id=None)
        )
    record_event(session, resource, from_state, to_state, reason, now=now, size_gib=size_gib)
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
    kind: str | None = None,
) -> Page[Resource]:
    """The caller's agency's resources (admins: every agency's), newest first; of one order,
    state or kind (`vm`, `volume`, `object_storage`) when asked."""
    statement = select(Resource)
    if not access.is_admin(caller):
        statement = statement.where(Resource.organization_id == caller.organization_id)
    if order_id is not None:
        statement = statement.where(Resource.order_id == order_id)
    if state is not None:
        statement = statement.where(Resource.state == state)
    if kind is not None:
        statement = statement.where(Resource.kind == kind)
    return paginate(
        session,
        statement,
        [Resource.created_at, Resource.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{order_id}:{state}:{kind}",
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
    metered = max(usage.metered_until(session) or first, first)
    if resource.kind == Kind.VOLUME:  # its size for the time since the meter's last hour
        sizes = [(e.at, e.to_state, e.size_gib) for e in resource.events]
        for hour, _, _, metric, quantity in usage.volume_hours(sizes, metered, now):
            add(hour, metric, quantity)
    elif resource.kind == Kind.VM:
        arrived[usage.INSTANCE_HOUR] = metered
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
    session: Session,
    caller: Caller,
    resource_id: uuid.UUID,
    action: str,
    now: datetime,
    *,
    size_gib: int | None = None,
    machine_id: uuid.UUID | None = None,
    retention_days: int | None = None,
    retained: Retained | None = None,
) -> Job:
    """Start `action` (the agency's buyers and approvers): 422 when the resource's kind has no
    such action or its parameters are wrong, 409 when its state forbids it now.

    `retained`: what the bucket's cloud says it holds under retention (asked before, outside
    the transaction), for a `terminate`: a vault still holding objects under retention is
    not deleted."""
    resource = get_resource(session, caller, resource_id, lock=True)
    if resource.organization_id != caller.organization_id:
        raise NotFound("No such resource.")
    kinds_actions = KIND_ACTIONS[resource.kind]
    if action not in kinds_actions:
        raise ValidationFailed(
            f"A {_KIND_WORDS[resource.kind]} cannot {action.replace('_', ' ')}: its actions are "
            f"{', '.join(kinds_actions)}.",
            code="action_not_for_kind",
            errors={"action": [f"One of: {', '.join(kinds_actions)}."]},
        )
    allowed_from, doing, _ = ACTIONS[action]
    if resource.state not in allowed_from:
        raise Conflict(
            f"Cannot {action.replace('_', ' ')} a resource that is {resource.state}.",
            code="action_not_allowed",
        )
    payload: dict[str, Any] = {}
    if action == "resize":
        payload["size_gib"] = _check_resize(session, resource, size_gib)
    elif action == "attach":
        payload["machine_id"] = str(_check_attach(session, caller, resource, machine_id).id)
    elif action == "detach" and resource.attached_to_id is None:
        raise Conflict("The volume is not attached to any machine.", code="volume_not_attached")
    elif action == "set_retention":
        payload["retention_days"] = _check_retention(resource, retention_days)
    elif action == "rotate_key":
        # The new key's token: a retry of this rotation finds the key it issued.
        payload["key_token"] = f"{resource.token}-key-{uuid.uuid4().hex[:12]}"
    elif action == "terminate" and retained is not None and retained.objects:
        until = f" until {retained.until:%Y-%m-%d}" if retained.until else ""
        raise Conflict(
            f"The vault holds {retained.objects} object(s) under retention{until}: nobody can "
            "delete them before, so the vault cannot be deleted yet.",
            code="under_retention",
        )
    return begin_action(session, caller, resource, action, now, payload)


_KIND_WORDS = {"vm": "machine", "volume": "volume", "object_storage": "bucket"}


def _check_resize(session: Session, resource: Resource, size_gib: int | None) -> int:
    """A volume only grows; its new monthly cost is checked against the budget like an
    order's, and committed at once."""
    if size_gib is None:
        raise ValidationFailed(errors={"size_gib": ["The new size is required to resize."]})
    current = resource.size_gib or 0
    if size_gib <= current:
        raise ValidationFailed(
            f"A volume only grows: it has {current} GiB, ask for more.",
            code="volume_shrink",
            errors={"size_gib": [f"More than {current} GiB."]},
        )
    from broker.services import orders  # orders makes resources: imported when used

    order = session.get_one(Order, resource.order_id)
    prices = offers.parse_prices(order.prices)
    unit = monthly_price(prices, Specs(0, Decimal(0), size_gib))
    orders.check_growth(session, resource, unit - resource.unit_monthly_cost)
    resource.unit_monthly_cost = unit
    return size_gib


def _check_attach(
    session: Session, caller: Caller, volume: Resource, machine_id: uuid.UUID | None
) -> Resource:
    """The agency's own machine, on the volume's provider and in its region (404 for a
    machine the agency does not have, 422 for one elsewhere)."""
    if machine_id is None:
        raise ValidationFailed(errors={"machine_id": ["The machine to attach to is required."]})
    if volume.attached_to_id is not None:
        raise Conflict(
            "The volume is attached to a machine already: detach it first.",
            code="volume_attached",
        )
    machine = session.get(Resource, machine_id)
    if machine is None or machine.organization_id != caller.organization_id:
        raise NotFound("No such machine in your agency.")
    if machine.kind != "vm":
        raise ValidationFailed(
            "A volume attaches to a machine.",
            code="not_a_machine",
            errors={"machine_id": ["Not a machine."]},
        )
    here, there = storage.region_of(session, volume), storage.region_of(session, machine)
    if machine.provider_id != volume.provider_id or here != there:
        raise ValidationFailed(
            "A volume attaches only to a machine of the same provider and region: this machine "
            f"is in {there}, the volume in {here} (or at another provider).",
            code="machine_elsewhere",
            errors={"machine_id": ["A machine of the volume's provider and region."]},
        )
    if machine.state not in (ResourceState.ACTIVE, ResourceState.STOPPED):
        raise Conflict(
            f"The machine is {machine.state}: a volume attaches to a running or stopped one.",
            code="action_not_allowed",
        )
    return machine


def _check_retention(resource: Resource, days: int | None) -> int:
    """Only a vault has a retention, and it is never shortened."""
    if days is None:
        raise ValidationFailed(errors={"retention_days": ["The retention in days is required."]})
    if not resource.retention_days:
        raise ValidationFailed(
            "This bucket was made without object lock: it cannot hold a retention.",
            code="not_a_vault",
            errors={"retention_days": ["Only a vault has a retention."]},
        )
    if days < resource.retention_days:
        raise ValidationFailed(
            f"A vault's retention is never shortened: it keeps every object "
            f"{resource.retention_days} days, ask for {resource.retention_days} or more.",
            code="retention_shortened",
            errors={"retention_days": [f"At least {resource.retention_days}."]},
        )
    return days


def begin_action(
    session: Session,
    actor: Caller | None,
    resource: Resource,
    action: str,
    now: datetime,
    parameters: dict[str, Any] | None = None,
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
        after={"state": resource.state.value, **(parameters or {})},
    )
    return enqueue(
        session,
        ACTION_JOB,
        {"resource_id": str(resource.id), "action": action, **(parameters or {})},
        organization_id=resource.organization_id,
        max_attempts=12,
    )


def run_action_job(context: JobContext, job: Job) -> dict[str, Any]:
    """Carry out an action at the provider, for every kind (`storage` says what each is at
    the cloud). Idempotent: each call it makes is safe to repeat (deleting what is gone
    already succeeds, a resize to the size it has is harmless, a key is issued by token)."""
    payload = job.payload
    resource_id, action = uuid.UUID(payload["resource_id"]), payload["action"]
    _, doing, done = ACTIONS[action]
    with context.db.transaction() as session:
        resource = session.get(Resource, resource_id)
        if resource is None or resource.state is not doing:
            return {"skipped": "the resource is no longer waiting for this action"}
        adapter = adapters.adapter_for_job(session, resource.provider_id, context.config)
        ref, token, kind = resource.provider_ref, resource.token, resource.kind
        machine = (
            session.get(Resource, uuid.UUID(payload["machine_id"]))
            if "machine_id" in payload
            else None
        )
        machine_ref = machine.provider_ref if machine is not None else None
        held = storage.connection(session, resource)
        keyring = adapters.ProviderRuntime.from_config(context.config).keyring
    reason, key = None, None
    try:
        if ref is None:  # never confirmed: find it by its token, if it was made at all
            ref = storage.find(adapter, kind, token)
        if ref is not None:
            key = _carry_out(adapter, kind, ref, action, payload, machine_ref, held)
    except Permanent as error:
        if error.code == "under_retention":  # the cloud still holds objects: the vault stays
            done, reason = ResourceState.ACTIVE, f"Not deleted: {error}"
        elif error.code != "not_found":
            raise
        elif action == "attach" and ref is not None and storage.look(adapter, kind, ref):
            # The machine is what is gone, not the volume.
            done, reason = ResourceState.ACTIVE, MACHINE_GONE_REASON
        else:
            done, reason = ResourceState.TERMINATED, GONE_REASON
    if ref is None and action == "terminate":
        done, reason = ResourceState.FAILED, "It was never made at the provider."
    with context.db.transaction() as session:
        resource = session.get(Resource, resource_id, with_for_update=True)
        if resource is None or resource.state is not doing:
            return {"skipped": "the resource changed meanwhile"}
        if ref is not None:
            resource.provider_ref = ref  # found by its token, when the create's answer was lost
        size = None
        if done is ResourceState.ACTIVE and reason is None:
            size = _record_done(session, resource, action, payload, keyring, key, context.now())
        transition(session, resource, done, reason, now=context.now(), size_gib=size)
        return {"state": done.value}


def _carry_out(
    adapter: ProviderAdapter,
    kind: str,
    ref: str,
    action: str,
    payload: dict[str, Any],
    machine_ref: str | None,
    held: storage.Connection | None,
) -> AccessKey | None:
    """Call the cloud for `action` on `ref`; a rotation returns the new key."""
    if action == "terminate":
        storage.delete(adapter, kind, ref)
    elif action == "resize":
        adapter.volumes().resize_volume(ref, int(payload["size_gib"]))
    elif action == "attach":
        if machine_ref is None:
            raise Permanent("The machine is not made at the provider.", code="not_found")
        adapter.volumes().attach_volume(ref, machine_ref)
    elif action == "detach":
        adapter.volumes().detach_volume(ref)
    elif action == "set_retention":
        adapter.object_storage().set_retention(ref, int(payload["retention_days"]))
    elif action == "rotate_key":
        buckets = adapter.object_storage()
        key = buckets.issue_key(ref, payload["key_token"])
        if held is not None and held.access_key_id != key.key_id:
            buckets.revoke_key(ref, held.access_key_id)
        return key
    else:
        adapter.action(ref, _PROVIDER_ACTIONS[action])
    return None


def _record_done(
    session: Session,
    resource: Resource,
    action: str,
    payload: dict[str, Any],
    keyring: Keyring,
    key: AccessKey | None,
    now: datetime,
) -> int | None:
    """Keep what a storage action changed; returns a volume's new size, if resized."""
    if action == "attach":
        resource.attached_to_id = uuid.UUID(payload["machine_id"])
    elif action == "detach":
        resource.attached_to_id = None
    elif action == "set_retention":
        resource.retention_days = int(payload["retention_days"])
    elif action == "rotate_key" and key is not None:
        storage.replace_key(session, keyring, resource, key, now)
    elif action == "resize":
        return int(payload["size_gib"])
    return None


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
            (r.id, r.provider_ref, r.state, r.kind)
            for r in session.scalars(
                select(Resource).where(
                    Resource.provider_id == provider_id,
                    Resource.state.in_(_SETTLED),
                    Resource.provider_ref.is_not(None),
                )
            )
        ]
    changed = 0
    for resource_id, ref, seen, kind in settled:
        assert ref is not None
        state = storage.look(adapter, kind, ref)
        if state is None or state is InstanceState.DELETED:
            target, reason = ResourceState.TERMINATED, GONE_REASON
        else:
            observed = _OBSERVED.get(state)
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
