"""Quotes: what an offer would cost the calling agency, and whether its policy allows it.

A quote answers what placing the order would: the same policy check, the same budget check
and the same approval rule as `broker/services/orders.py` (it calls them), so a buyer knows
before ordering whether the order would be refused, wait for an approver, or go through.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from billing.rating import Estimate, estimate
from broker.auth.identity import Caller
from broker.errors import Conflict, ValidationFailed
from broker.models import Offer, OfferState, ProviderState
from broker.services import offers, orders, policies
from broker.services.policies import Reason


@dataclass(frozen=True)
class Quote:
    offer: Offer
    quantity: int
    hours: Decimal
    estimate: Estimate
    reasons: list[Reason]
    approval_required: bool
    stored_gib: int | None
    budget_remaining: Decimal | None
    budget_currency: str | None

    @property
    def allowed(self) -> bool:
        return not self.reasons


def quote(
    session: Session,
    caller: Caller,
    offer_id: uuid.UUID,
    *,
    quantity: int,
    hours: Decimal,
    now: datetime,
    stored_gib: int | None = None,
) -> Quote:
    """Cost per metric for `quantity` units over `hours`, checked against the policy and
    the budget as an order of `quantity` units would be (by its monthly cost). A bucket is
    rated for `stored_gib` stored (1,000 GiB unless given); its requests and egress are not
    predictable and left out."""
    offer = offers.get_offer(session, caller, offer_id)
    if offer.state is not OfferState.PUBLISHED:
        raise Conflict(f"This offer is {offer.state}: it cannot be ordered.", code="not_orderable")
    if offer.provider.state is not ProviderState.ACTIVE:
        raise Conflict("This offer's provider is suspended.", code="not_orderable")
    if stored_gib is not None and offer.kind != "object_storage":
        raise ValidationFailed(
            errors={"stored_gib": ["Only an object storage offer is rated by GiB stored."]}
        )
    specs = offers.specs_of(offer, stored_gib)
    cost = estimate(offers.prices_of(offer), specs, quantity=quantity, hours=hours)
    policy = policies.policy_of(session, caller.organization_id)
    reasons = policies.evaluate(
        policy.sovereignty,
        policies.offer_facts(offer, now),
        policy_currency=policy.budget_currency,
    )
    _, monthly = orders.order_monthly_cost(offer, quantity)
    if policy.budget_currency in (None, offer.currency):  # otherwise: currency_mismatch above
        over = orders.budget_reason(
            session, policy, caller.organization_id, monthly, offer.currency, pending=True
        )
        reasons += [over] if over is not None else []
    return Quote(
        offer,
        quantity,
        hours,
        cost,
        reasons,
        approval_required=orders.approval_reason(policy, monthly, offer.currency) is not None,
        budget_remaining=orders.budget_remaining(session, policy, caller.organization_id),
        budget_currency=policy.budget_currency,
        stored_gib=specs.disk_gib if offer.kind == "object_storage" else None,
    )
