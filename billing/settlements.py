"""What the consortium owes each provider for a period: pure arithmetic, no database.

A provider's *gross* is the net (before tax) of the issued invoice lines for resources placed
on it; its *credits* are what credit notes gave back on those lines. The consortium keeps a
fee on what remains (`fee_rate` percent) and pays the provider the rest (*net*). VAT is not
part of a settlement: the consortium invoices the agencies and remits their VAT.

The fee is rounded once per currency, on the whole period, then shared between providers by
the largest-remainder method, so for each currency

    sum(net) + sum(fee) == sum(gross) - sum(credits)      (to the cent, always)

and no provider's fee is off by more than one minor unit from its exact share.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing.money import minor_unit, round_amount

FIGURES = ("gross", "credits", "fee", "net")


@dataclass(frozen=True)
class Share:
    provider_id: str
    currency: str
    gross: Decimal
    credits: Decimal


@dataclass(frozen=True)
class Settlement:
    provider_id: str
    currency: str
    gross: Decimal
    credits: Decimal
    fee: Decimal
    net: Decimal


def settle(shares: Iterable[Share], fee_rate: Decimal) -> list[Settlement]:
    """One settlement per share, ordered by currency then provider."""
    by_currency: dict[str, list[Share]] = defaultdict(list)
    for share in shares:
        by_currency[share.currency].append(share)
    settlements = []
    for currency in sorted(by_currency):
        group = sorted(by_currency[currency], key=lambda share: share.provider_id)
        fees = _allocate_fee(currency, [share.gross - share.credits for share in group], fee_rate)
        for share, fee in zip(group, fees, strict=True):
            due = share.gross - share.credits
            settlements.append(
                Settlement(share.provider_id, currency, share.gross, share.credits, fee, due - fee)
            )
    return settlements


def totals(items: Iterable[Settlement]) -> list[dict[str, Any]]:
    """Per currency, the sums of `items`' gross, credits, fee and net."""
    sums: dict[str, dict[str, Decimal]] = {}
    for item in items:
        total = sums.setdefault(item.currency, dict.fromkeys(FIGURES, Decimal(0)))
        for name in FIGURES:
            total[name] += getattr(item, name)
    return [{"currency": currency, **figures} for currency, figures in sorted(sums.items())]


def _allocate_fee(currency: str, dues: list[Decimal], fee_rate: Decimal) -> list[Decimal]:
    """The currency's fee, rounded once on the total, split in proportion to `dues` in whole
    minor units (largest remainders get the leftover units; ties go to the earlier share)."""
    unit = minor_unit(currency)
    total_due = sum(dues, Decimal(0))
    if total_due <= 0:
        return [Decimal(0) * unit for _ in dues]
    units_total = int(round_amount(total_due * fee_rate / 100, currency) / unit)
    exact = [Fraction(units_total) * Fraction(due) / Fraction(total_due) for due in dues]
    units = [share.numerator // share.denominator for share in exact]
    leftover = units_total - sum(units)
    by_remainder = sorted(range(len(dues)), key=lambda i: (-(exact[i] - units[i]), i))
    for i in by_remainder[:leftover]:
        units[i] += 1
    return [Decimal(count) * unit for count in units]
