"""Agency policies: reading and replacing them, and the one pure function that says whether
an offer is allowed under a policy (quotes and orders use it).

An agency's buyers read its policy (what they may order, and above what monthly cost an order
waits for an approver); its approvers also replace it; admins do both for any agency."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import NotFound, ValidationFailed
from broker.models import AgencyPolicy, Offer, Organization, OrganizationKind, Role
from broker.services import audit, evidence
from broker.services.preconditions import IfMatch


@dataclass(frozen=True)
class Reason:
    code: str
    detail: str


@dataclass(frozen=True)
class SovereigntyRules:
    required_certifications: frozenset[str] = frozenset()
    allowed_countries: frozenset[str] = frozenset()  # empty: any country
    forbid_extraterritorial: bool = False


@dataclass(frozen=True)
class OfferFacts:
    """What a policy looks at: where the data sits, which law reaches the operator, and which
    certifications hold *now* (expired evidence counts as none)."""

    country: str
    extraterritorial_exposure: tuple[str, ...]
    valid_certifications: frozenset[str]
    currency: str
    jurisdiction_verified: bool = True


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


def evaluate(
    rules: SovereigntyRules, offer: OfferFacts, *, policy_currency: str | None = None
) -> list[Reason]:
    """Every reason the offer breaks the rules; an empty list means it is allowed."""
    reasons = [
        Reason(
            "certification_missing",
            f"The offer has no valid {scheme} certification, which your policy requires.",
        )
        for scheme in sorted(rules.required_certifications - offer.valid_certifications)
    ]
    if rules.allowed_countries and offer.country not in rules.allowed_countries:
        allowed = ", ".join(sorted(rules.allowed_countries))
        reasons.append(
            Reason(
                "country_not_allowed",
                f"The data would sit in {offer.country}; your policy allows {allowed}.",
            )
        )
    if rules.forbid_extraterritorial and not offer.jurisdiction_verified:
        reasons.append(
            Reason(
                "jurisdiction_unverified",
                "Nobody has vouched for the operator's jurisdiction yet; your policy forbids "
                "foreign-law exposure.",
            )
        )
    if rules.forbid_extraterritorial and offer.extraterritorial_exposure:
        exposure = ", ".join(offer.extraterritorial_exposure)
        reasons.append(
            Reason(
                "extraterritorial_exposure",
                f"The operator is exposed to foreign law ({exposure}); your policy forbids it.",
            )
        )
    if policy_currency is not None and offer.currency != policy_currency:
        reasons.append(
            Reason(
                "currency_mismatch",
                f"The offer is priced in {offer.currency}; your budget is in {policy_currency}.",
            )
        )
    return reasons


@dataclass(frozen=True)
class PolicyView:
    """A policy as the API shows it; an agency without a stored policy has the empty one."""

    organization_id: uuid.UUID
    currency: str | None = None
    monthly_budget: Decimal | None = None
    approval_threshold: Decimal | None = None
    sovereignty: SovereigntyRules = field(default_factory=SovereigntyRules)
    version: int = 0

    @property
    def budget_currency(self) -> str | None:
        return self.currency if self.monthly_budget is not None else None


def _view(row: AgencyPolicy) -> PolicyView:
    return PolicyView(
        organization_id=row.organization_id,
        currency=row.currency,
        monthly_budget=row.monthly_budget,
        approval_threshold=row.approval_threshold,
        sovereignty=SovereigntyRules(
            frozenset(row.required_certifications),
            frozenset(row.allowed_countries),
            row.forbid_extraterritorial,
        ),
        version=row.version,
    )


# Who, within the agency, may read its policy and who may replace it (admins: any agency's).
READERS = frozenset({Role.BUYER, Role.APPROVER})
WRITERS = frozenset({Role.APPROVER})


def _agency(
    session: Session, caller: Caller, organization_id: uuid.UUID, roles: frozenset[Role]
) -> Organization:
    """The agency whose policy `caller` may read or write (`roles` of its own agency), or
    404: another agency's policy answers exactly like one that does not exist."""
    allowed = access.is_admin(caller) or access.holds_role_in(caller, organization_id, *roles)
    organization = session.get(Organization, organization_id) if allowed else None
    if organization is None or organization.kind is not OrganizationKind.AGENCY:
        raise NotFound("No such agency.")
    return organization


def policy_of(session: Session, organization_id: uuid.UUID) -> PolicyView:
    row = session.get(AgencyPolicy, organization_id)
    return _view(row) if row is not None else PolicyView(organization_id)


def get_policy(session: Session, caller: Caller, organization_id: uuid.UUID) -> PolicyView:
    """The agency's policy, for its buyers and approvers (admins: any agency's)."""
    _agency(session, caller, organization_id, READERS)
    return policy_of(session, organization_id)


def put_policy(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    *,
    if_match: IfMatch,
    currency: str,
    monthly_budget: Decimal | None,
    approval_threshold: Decimal | None,
    sovereignty: dict[str, Any],
) -> PolicyView:
    """Replace an agency's policy (If-Match: `"v0"` for an agency that has none yet)."""
    _agency(session, caller, organization_id, WRITERS)
    if (
        monthly_budget is not None
        and approval_threshold is not None
        and approval_threshold > monthly_budget
    ):
        raise ValidationFailed(errors={"approval_threshold": ["Cannot exceed the monthly budget."]})
    row = session.get(AgencyPolicy, organization_id)
    current = row.version if row is not None else 0
    if_match.check(current, "policy")
    before = audit.snapshot(row) if row is not None else None
    if row is None:
        row = AgencyPolicy(organization_id=organization_id)
        session.add(row)
    row.currency = currency
    row.monthly_budget = monthly_budget
    row.approval_threshold = approval_threshold
    row.required_certifications = sorted(set(sovereignty.get("required_certifications", [])))
    row.allowed_countries = sorted(set(sovereignty.get("allowed_countries", [])))
    row.forbid_extraterritorial = bool(sovereignty.get("forbid_extraterritorial", False))
    session.flush()
    audit.record(
        session,
        caller,
        "policy.updated",
        "agency_policy",
        organization_id,
        organization_id=organization_id,
        before=before,
        after=audit.snapshot(row),
    )
    return _view(row)
