"""Orders: from an agency's click to machines at a provider, exactly once.

An order pins the offer version it was placed on and copies its prices. It is checked against
the agency's policy (sovereignty rules, then budget) in the transaction that creates it, with
the policy row locked, so concurrent orders cannot together spend past the budget. Above the
approval threshold it waits for an approver of the same agency; otherwise, and once approved,
its machines are created as `provisioning` resources and a provisioning job is queued in the
same transaction (see `broker/services/provisioning.py`).

States: pending_approval → approved → provisioning → completed | failed;
pending_approval → rejected; pending_approval | approved → cancelled.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.money import round_amount
from billing.rating import monthly_price
from broker import access
from broker.auth.identity import Caller
from broker.errors import BrokerError, Conflict, NotFound, ValidationFailed
from broker.jobs.queue import enqueue
from broker.models import (
    LIVE_STATES,
    AgencyPolicy,
    BillingProfile,
    Offer,
    OfferState,
    Order,
    OrderState,
    ProviderState,
    Resource,
    ResourceState,
    Role,
)
from broker.services import audit, offers, policies, resources, webhooks
from broker.services.pagination import Page, paginate
from broker.services.policies import offer_facts
from providers.base import order_token

PROVISION_JOB = "order.provision"


class PolicyViolation(BrokerError):
    status, code, title = 422, "policy_violation", "Your agency's policy forbids this order"


class BudgetExceeded(BrokerError):
    status, code, title = 422, "budget_exceeded", "The order would exceed your monthly budget"


def snapshot(order: Order) -> dict[str, Any]:
    return audit.snapshot(order, exclude=frozenset({"parameters", "prices", "version"}))


def committed_monthly_cost(
    session: Session, organization_id: uuid.UUID, *, pending: bool = True
) -> Decimal:
    """What the agency has committed to per month: every machine being made or alive, plus
    (with `pending`) the orders awaiting approval."""
    machines = session.scalar(
        select(func.coalesce(func.sum(Resource.unit_monthly_cost), 0)).where(
            Resource.organization_id == organization_id,
            Resource.state.in_([ResourceState.PROVISIONING, *LIVE_STATES]),
        )
    )
    waiting = 0
    if pending:
        waiting = session.scalar(
            select(func.coalesce(func.sum(Order.monthly_cost), 0)).where(
                Order.organization_id == organization_id,
                Order.state == OrderState.PENDING_APPROVAL,
            )
        )
    # The sums keep the columns' exact type: decimals, not floats.
    return Decimal(machines or 0) + Decimal(waiting or 0)


def order_monthly_cost(offer: Offer, quantity: int) -> tuple[Decimal, Decimal]:
    """What one machine of `offer` and `quantity` of them cost a month (730 h): the figures an
    order records, and its budget and approval are judged by."""
    unit = monthly_price(offers.prices_of(offer), offers.specs_of(offer))
    return unit, unit * quantity


def approval_reason(
    policy: policies.PolicyView, monthly_cost: Decimal, currency: str
) -> str | None:
    """Why an order costing `monthly_cost` a month waits for an approver of its agency (it is
    over the approval threshold), or None when it is approved at once. Quotes tell buyers the
    same, by this same rule."""
    threshold = policy.approval_threshold
    if threshold is None or monthly_cost <= threshold:
        return None
    return (
        f"{monthly_cost} {currency} a month is over the approval threshold of "
        f"{round_amount(threshold, currency)}."
    )


def budget_remaining(
    session: Session, policy: policies.PolicyView, organization_id: uuid.UUID
) -> Decimal | None:
    """What a new order may still cost a month within the agency's budget: the budget less what
    is committed (machines, and orders awaiting approval, as placing an order counts them);
    never below zero. None when the agency has no budget."""
    if policy.monthly_budget is None:
        return None
    committed = committed_monthly_cost(session, organization_id, pending=True)
    return max(policy.monthly_budget - committed, Decimal(0))


def budget_reason(
    session: Session,
    policy: policies.PolicyView,
    organization_id: uuid.UUID,
    amount: Decimal,
    currency: str,
    *,
    pending: bool,
) -> policies.Reason | None:
    """`budget_exceeded` when `amount` more a month would take the agency past its budget."""
    shown = _over_budget(session, policy, organization_id, amount, currency, pending=pending)
    if shown is None:
        return None
    return policies.Reason("budget_exceeded", _budget_detail(shown, currency, policy))


def _over_budget(
    session: Session,
    policy: policies.PolicyView,
    organization_id: uuid.UUID,
    amount: Decimal,
    currency: str,
    *,
    pending: bool,
) -> dict[str, str] | None:
    """The figures (in the currency's minor unit) when `amount` more a month would take the
    agency past its budget; None when it fits or there is no budget."""
    if policy.monthly_budget is None:
        return None
    committed = committed_monthly_cost(session, organization_id, pending=pending)
    if committed + amount <= policy.monthly_budget:
        return None
    return {
        name: str(round_amount(value, currency))
        for name, value in (
            ("committed", committed),
            ("order_monthly_cost", amount),
            ("monthly_budget", policy.monthly_budget),
        )
    }


def check_growth(session: Session, resource: Resource, increase: Decimal) -> None:
    """Refuse (422 `budget_exceeded`) growing `resource` by `increase` a month (a volume's
    resize) when that takes its agency past its budget, as an order would be refused."""
    policy = _lock_policy(session, resource.organization_id)
    if policy.budget_currency not in (None, resource.currency):
        return  # the budget is in another currency: orders are refused before, by the policy
    _refuse_over_budget(session, policy, resource.organization_id, increase, resource.currency)


def _refuse_over_budget(
    session: Session,
    policy: policies.PolicyView,
    organization_id: uuid.UUID,
    amount: Decimal,
    currency: str,
) -> None:
    """422 `budget_exceeded`, with the figures, when `amount` more a month (orders awaiting
    approval counted) takes the agency past its budget."""
    shown = _over_budget(session, policy, organization_id, amount, currency, pending=True)
    if shown is not None:
        raise BudgetExceeded(
            _budget_detail(shown, currency, policy),
            committed=shown["committed"],
            order_monthly_cost=shown["order_monthly_cost"],
            monthly_budget=shown["monthly_budget"],
        )


def _budget_detail(shown: dict[str, str], currency: str, policy: policies.PolicyView) -> str:
    return (
        f"{shown['order_monthly_cost']} {currency} a month on top of "
        f"{shown['committed']} committed exceeds the monthly budget of "
        f"{shown['monthly_budget']} {policy.currency}."
    )


def _violation(reasons: list[policies.Reason], lead: str = "") -> PolicyViolation:
    """The 422 for an order the policy forbids, with every reason. Each reason's detail is a
    sentence of its own (ending with a period), so the detail joins them with a space."""
    return PolicyViolation(
        lead + " ".join(reason.detail for reason in reasons),
        reasons=[{"code": reason.code, "detail": reason.detail} for reason in reasons],
    )


def _lock_policy(session: Session, organization_id: uuid.UUID) -> policies.PolicyView:
    """The agency's policy, its row locked: on PostgreSQL this serializes the agency's orders
    and decisions (SQLite writers are serialized already), so each budget check sees every
    order before it."""
    session.scalar(
        select(AgencyPolicy)
        .where(AgencyPolicy.organization_id == organization_id)
        .with_for_update()
    )
    return policies.policy_of(session, organization_id)


def _notify(session: Session, order: Order) -> None:
    webhooks.notify(
        session,
        order.organization_id,
        webhooks.ORDER_STATE_CHANGED,
        {"order_id": str(order.id), "state": order.state.value, "reason": order.state_reason},
    )


def _save(
    session: Session,
    actor: Caller | None,
    action: str,
    order: Order,
    before: dict[str, Any] | None = None,
) -> None:
    session.flush()
    audit.record(
        session,
        actor,
        action,
        "order",
        order.id,
        organization_id=order.organization_id,
        before=before,
        after=snapshot(order),
    )
    _notify(session, order)


def place_order(session: Session, caller: Caller, data: dict[str, Any], now: datetime) -> Order:
    """Check and record an order (buyers). Approved at once under the approval threshold."""
    offer = offers.get_offer(session, caller, data["offer_id"])
    references = invoice_references(session, caller.organization_id, data)
    if offer.state is not OfferState.PUBLISHED or offer.provider.state is not ProviderState.ACTIVE:
        raise Conflict("This offer cannot be ordered now.", code="not_orderable")
    policy = _lock_policy(session, caller.organization_id)
    reasons = policies.evaluate(
        policy.sovereignty, offer_facts(offer, now), policy_currency=policy.budget_currency
    )
    if reasons:
        raise _violation(reasons)
    unit, total = order_monthly_cost(offer, data["quantity"])
    _refuse_over_budget(session, policy, caller.organization_id, total, offer.currency)
    waits = approval_reason(policy, total, offer.currency)
    order = Order(
        id=uuid.uuid4(),
        organization_id=caller.organization_id,
        created_by=caller.client_id,
        offer_id=offer.id,
        provider_id=offer.provider_id,
        name=data["name"],
        quantity=data["quantity"],
        parameters=data.get("parameters") or {},
        **references,
        prices=offer.prices,
        currency=offer.currency,
        unit_monthly_cost=unit,
        monthly_cost=total,
        state=OrderState.PENDING_APPROVAL if waits else OrderState.APPROVED,
        state_reason=waits,
    )
    session.add(order)
    _save(session, caller, "order.placed", order)
    if not waits:
        _start_provisioning(session, order, now)
    return order


REFERENCES = {
    "buyer_reference": "a buyer reference (its service code)",
    "purchase_order_reference": "a purchase order reference (its commitment number)",
}


def invoice_references(
    session: Session, organization_id: uuid.UUID, data: dict[str, Any]
) -> dict[str, str | None]:
    """The references an order's usage is invoiced under (BT-10, BT-13): its own, else its
    agency's billing profile's. 422 naming each one the profile requires and neither gives."""
    profile = session.get(BillingProfile, organization_id)
    references, errors = {}, {}
    for name, words in REFERENCES.items():
        value = data.get(name) or (getattr(profile, name) if profile is not None else None)
        if value is None and profile is not None and getattr(profile, f"requires_{name}"):
            errors[name] = [
                f"Your agency's billing profile requires {words} on every order: give one."
            ]
        references[name] = value
    if errors:
        raise ValidationFailed(errors=errors)
    return references


def _start_provisioning(session: Session, order: Order, now: datetime) -> None:
    """Make the order's resources (to be created) and queue the job that creates them."""
    offer = session.get_one(Offer, order.offer_id)
    for index in range(order.quantity):
        resource = Resource(
            id=uuid.uuid4(),
            order_id=order.id,
            organization_id=order.organization_id,
            provider_id=order.provider_id,
            offer_id=order.offer_id,
            index=index,
            kind=offer.kind,
            size_gib=offer.size_gib if offer.kind == "volume" else None,
            retention_days=offer.immutability_days if offer.kind == "object_storage" else None,
            name=order.name if order.quantity == 1 else f"{order.name}-{index + 1}",
            token=order_token(order.id, index),
            state=ResourceState.PROVISIONING,
            unit_monthly_cost=order.unit_monthly_cost,
            currency=order.currency,
            addresses=[],
            created_at=now,  # the boot timeout counts from here, on the broker's clock
        )
        session.add(resource)
        resources.record_event(
            session, resource, None, ResourceState.PROVISIONING, now=now, size_gib=resource.size_gib
        )
    enqueue(
        session,
        PROVISION_JOB,
        {"order_id": str(order.id)},
        organization_id=order.organization_id,
        dedupe_key=f"{PROVISION_JOB}:{order.id}",
        # Each attempt is a lookup and maybe a create: at a provider failing one call in three,
        # eight attempts lose about one order in 500; twenty, one in a few million.
        max_attempts=20,
    )


def _visible(session: Session, caller: Caller, order_id: uuid.UUID, *, lock: bool = False) -> Order:
    """The order, if the caller's agency placed it (admins: any). `lock` holds its row until
    the transaction ends, so that of two concurrent decisions the second sees the first."""
    order = session.get(Order, order_id, with_for_update=lock)
    if order is None or not access.sees_organization(caller, order.organization_id):
        raise NotFound("No such order.")
    return order


def get_order(session: Session, caller: Caller, order_id: uuid.UUID) -> Order:
    return _visible(session, caller, order_id)


def list_orders(
    session: Session,
    caller: Caller,
    *,
    limit: int,
    cursor: str | None,
    state: OrderState | None = None,
) -> Page[Order]:
    statement = select(Order)
    if not access.is_admin(caller):
        statement = statement.where(Order.organization_id == caller.organization_id)
    if state is not None:
        statement = statement.where(Order.state == state)
    return paginate(
        session,
        statement,
        [Order.created_at, Order.id],
        limit=limit,
        cursor=cursor,
        descending=True,
        scope=f"{caller.organization_id}:{state}",
    )


def _decide(
    session: Session, caller: Caller, order_id: uuid.UUID, action: str
) -> tuple[Order, dict[str, Any]]:
    """The order an approver of its agency may decide, while it waits for a decision."""
    order = _visible(session, caller, order_id, lock=True)
    if not access.holds_role_in(caller, order.organization_id, Role.APPROVER):
        raise NotFound("No such order.")
    if order.state is not OrderState.PENDING_APPROVAL:
        raise Conflict(
            f"Only an order awaiting approval can be {action}; this one is {order.state}.",
            code="not_pending_approval",
        )
    return order, snapshot(order)


def approve(session: Session, caller: Caller, order_id: uuid.UUID, now: datetime) -> Order:
    """Approve an order awaiting approval, after checking it again against today's evidence
    and policy: the offer's sovereignty facts may have changed (a certification expired or
    was revoked) and so may the budget. An order that no longer complies stays pending and
    the approver gets every reason (422 `policy_violation`)."""
    order, before = _decide(session, caller, order_id, "approved")
    reasons = _still_allowed(session, order, now)
    if reasons:
        raise _violation(reasons, "This order no longer complies: ")
    order.state, order.state_reason = OrderState.APPROVED, None
    order.decided_by, order.decided_at = caller.client_id, now
    _save(session, caller, "order.approved", order, before)
    _start_provisioning(session, order, now)
    return order


def _still_allowed(session: Session, order: Order, now: datetime) -> list[policies.Reason]:
    """Every reason the order would not be placed today. Its budget counts the agency's
    machines and this order; other orders awaiting approval are checked at their turn."""
    offer = session.get_one(Offer, order.offer_id)
    policy = _lock_policy(session, order.organization_id)
    reasons = policies.evaluate(
        policy.sovereignty, offer_facts(offer, now), policy_currency=policy.budget_currency
    )
    if offer.provider.state is not ProviderState.ACTIVE:
        reasons.append(policies.Reason("provider_suspended", "The provider is suspended."))
    over = budget_reason(
        session, policy, order.organization_id, order.monthly_cost, order.currency, pending=False
    )
    return [*reasons, over] if over is not None else reasons


def reject(
    session: Session, caller: Caller, order_id: uuid.UUID, reason: str, now: datetime
) -> Order:
    order, before = _decide(session, caller, order_id, "rejected")
    order.state, order.state_reason = OrderState.REJECTED, reason
    order.decided_by, order.decided_at = caller.client_id, now
    _save(session, caller, "order.rejected", order, before)
    return order


def cancel(session: Session, caller: Caller, order_id: uuid.UUID, now: datetime) -> Order:
    """Withdraw an order before its machines are being made (its agency's buyers and
    approvers)."""
    order = _visible(session, caller, order_id, lock=True)
    if order.organization_id != caller.organization_id:
        raise NotFound("No such order.")
    if order.state not in (OrderState.PENDING_APPROVAL, OrderState.APPROVED):
        raise Conflict(
            f"Only an order awaiting approval or not yet started can be cancelled; this one "
            f"is {order.state}.",
            code="not_cancellable",
        )
    before = snapshot(order)
    order.state, order.state_reason = OrderState.CANCELLED, f"Cancelled by {caller.client_id}."
    for resource in session.scalars(select(Resource).where(Resource.order_id == order.id)):
        resources.transition(
            session, resource, ResourceState.FAILED, "The order was cancelled.", now=now
        )
    _save(session, caller, "order.cancelled", order, before)
    return order


def finish(
    session: Session, order: Order, state: OrderState, reason: str | None, now: datetime
) -> None:
    """Completed or failed, as the provisioning job found it (the worker is the actor)."""
    before = snapshot(order)
    order.state, order.state_reason = state, reason
    order.completed_at = now
    _save(session, None, f"order.{state.value}", order, before)


def mark_provisioning(session: Session, order: Order) -> None:
    before = snapshot(order)
    order.state = OrderState.PROVISIONING
    _save(session, None, "order.provisioning", order, before)


def recheck(session: Session, order: Order, now: datetime) -> list[policies.Reason]:
    """Every reason `approve` would refuse `order` now (the same check, run on its own), so an
    approver sees the verdict before deciding."""
    return _still_allowed(session, order, now)
