"""Quotes: what an offer would cost the calling agency, and whether its policy allows it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from billing.rating import Estimate, estimate
from broker.auth.identity import Caller
from broker.errors import Conflict
from broker.models import Offer, OfferState, ProviderState
from broker.services import evidence, offers, policies
from broker.services.policies import OfferFacts, Reason


@dataclass(frozen=True)
class Quote:
    offer: Offer
    quantity: int
    hours: Decimal
    estimate: Estimate
    reasons: list[Reason]

    @property
    def allowed(self) -> bool:
        return not self.reasons


def offer_facts(offer: Offer, now: datetime) -> OfferFacts:
    """The sovereignty facts of an offer at `now`: only verified, unexpired evidence counts
    (the offer's region and its provider's jurisdiction are kept counting by
    `evidence.recount`)."""
    provider = offer.provider
    return OfferFacts(
        country=offer.region_country,
        extraterritorial_exposure=tuple(provider.extraterritorial_exposure),
        valid_certifications=evidence.valid_schemes(provider, now) & set(offer.compliance_schemes),
        currency=offer.currency,
        jurisdiction_verified=evidence.verified_jurisdiction(provider) is not None,
    )


def quote(
    session: Session,
    caller: Caller,
    offer_id: uuid.UUID,
    *,
    quantity: int,
    hours: Decimal,
    now: datetime,
) -> Quote:
    """Cost per metric for `quantity` machines over `hours`, checked against the policy."""
    offer = offers.get_offer(session, caller, offer_id)
    if offer.state is not OfferState.PUBLISHED:
        raise Conflict(f"This offer is {offer.state}: it cannot be ordered.", code="not_orderable")
    if offer.provider.state is not ProviderState.ACTIVE:
        raise Conflict("This offer's provider is suspended.", code="not_orderable")
    cost = estimate(offers.prices_of(offer), offers.specs_of(offer), quantity=quantity, hours=hours)
    policy = policies.policy_of(session, caller.organization_id)
    reasons = policies.evaluate(
        policy.sovereignty, offer_facts(offer, now), policy_currency=policy.budget_currency
    )
    return Quote(offer, quantity, hours, cost, reasons)
