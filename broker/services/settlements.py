"""Settlements: what the consortium owes each provider for a period, from issued documents
only (finalized or paid invoices of the period and the credit notes correcting them; drafts
and void invoices never count). The arithmetic is `billing.settlements`.

A credit note counts against the period of the invoice it corrects, whenever it is issued,
so a period's settlement shows every correction of that period's invoices.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import settlements
from broker import access
from broker.auth.identity import Caller
from broker.models import CreditNote, CreditNoteLine, Invoice, InvoiceLine, Provider
from broker.services.corrections import ISSUED


def for_period(
    session: Session, caller: Caller, period: str, config: Mapping[str, Any]
) -> dict[str, Any]:
    fee_rate = Decimal(str(config["CONSORTIUM_FEE_RATE"]))
    gross = session.execute(
        select(InvoiceLine.provider_id, Invoice.currency, func.sum(InvoiceLine.amount))
        .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
        .where(Invoice.period == period, Invoice.state.in_(ISSUED))
        .group_by(InvoiceLine.provider_id, Invoice.currency)
    )
    credits = {
        (provider_id, currency): amount
        for provider_id, currency, amount in session.execute(
            select(CreditNoteLine.provider_id, CreditNote.currency, func.sum(CreditNoteLine.amount))
            .join(CreditNote, CreditNote.id == CreditNoteLine.credit_note_id)
            .join(Invoice, Invoice.id == CreditNote.invoice_id)
            .where(Invoice.period == period, Invoice.state.in_(ISSUED))
            .group_by(CreditNoteLine.provider_id, CreditNote.currency)
        )
    }
    shares = [
        settlements.Share(
            str(provider_id), currency, amount, credits.get((provider_id, currency), Decimal(0))
        )
        for provider_id, currency, amount in gross
    ]
    # The fee is shared out over every provider, then a provider is shown its own part.
    everyone = settlements.settle(shares, fee_rate)
    providers = {
        str(provider.id): provider
        for provider in session.scalars(
            select(Provider).where(Provider.id.in_({uuid.UUID(s.provider_id) for s in everyone}))
        )
    }
    if not access.sees_every_agency(caller):
        everyone = [
            s
            for s in everyone
            if providers[s.provider_id].organization_id == caller.organization_id
        ]
    return {
        "period": period,
        "fee_rate": str(fee_rate),
        "items": [
            {**asdict(item), "provider_name": providers[item.provider_id].name} for item in everyone
        ],
        "totals": settlements.totals(everyone),
    }
