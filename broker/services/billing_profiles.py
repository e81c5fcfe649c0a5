"""Agencies' billing profiles: how each is invoiced — its legal identity (name, legal
identifier, VAT id, address), where and how it is taxed, the language of its invoices, and the
references its orders carry unless they give their own (`broker.services.orders`).

An agency without a profile is invoiced with the consortium's defaults (version 0). Invoices
already issued keep the profile they were issued with (in their document); drafts use the
current one when rebuilt.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import NotFound
from broker.models import (
    BillingProfile,
    Organization,
    OrganizationKind,
)
from broker.services import audit
from broker.services.preconditions import IfMatch


def get_agency(session: Session, organization_id: uuid.UUID) -> Organization:
    organization = session.get(Organization, organization_id)
    if organization is None or organization.kind is not OrganizationKind.AGENCY:
        raise NotFound("No such agency.")
    return organization


# Invoices are in English unless the agency's billing profile asks for French (as documents
# issued before profiles had a language were).
DEFAULT_LANGUAGE = "en"
PROFILE_FIELDS = (
    "legal_name",
    "address",
    "post_code",
    "city",
    "country",
    "vat_id",
    "vat_rate",
    "legal_id",
    "legal_id_scheme",
    "language",
    "buyer_reference",
    "purchase_order_reference",
    "requires_buyer_reference",
    "requires_purchase_order_reference",
)


def profile_view(
    session: Session, organization: Organization, config: Mapping[str, Any]
) -> dict[str, Any]:
    """The agency's billing profile; without one, the consortium's defaults (version 0)."""
    row = session.get(BillingProfile, organization.id)
    if row is not None:
        return {
            "organization_id": organization.id,
            **{name: getattr(row, name) for name in PROFILE_FIELDS},
            "version": row.version,
        }
    country = config["SELLER"]["country"]
    return {
        **dict.fromkeys(PROFILE_FIELDS),
        "organization_id": organization.id,
        "legal_name": organization.name,
        "country": country,
        "vat_rate": Decimal(config["DEFAULT_VAT_RATE"]),
        "language": DEFAULT_LANGUAGE,
        "requires_buyer_reference": False,
        "requires_purchase_order_reference": False,
        "version": 0,
    }


def get_profile(
    session: Session, caller: Caller, organization_id: uuid.UUID, config: Mapping[str, Any]
) -> dict[str, Any]:
    if not access.may_read_agency(caller, organization_id):
        raise NotFound("No such agency.")
    return profile_view(session, get_agency(session, organization_id), config)


def put_profile(
    session: Session,
    caller: Caller,
    organization_id: uuid.UUID,
    data: Mapping[str, Any],
    *,
    if_match: IfMatch,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Replace an agency's billing profile (finance, admins). Invoices already finalized keep
    the profile they were issued with (in their snapshot); drafts use it when rebuilt."""
    organization = get_agency(session, organization_id)
    row = session.get(BillingProfile, organization_id)
    if_match.check(row.version if row is not None else 0, "billing profile")
    before = audit.snapshot(row) if row is not None else None
    if row is None:
        row = BillingProfile(organization_id=organization_id)
        session.add(row)
    for name in PROFILE_FIELDS:
        setattr(row, name, data.get(name))
    if row.language is None:
        row.language = DEFAULT_LANGUAGE
    if row.legal_id is None:
        row.legal_id_scheme = None
    session.flush()
    audit.record(
        session,
        caller,
        "billing_profile.updated",
        "billing_profile",
        organization_id,
        organization_id=organization_id,
        before=before,
        after=audit.snapshot(row),
    )
    return profile_view(session, organization, config)
