"""Settlement and credit arithmetic as pure functions: a provider's share plus the
consortium's fee add up to what was invoiced net of credits, to the cent; credits never give
back more tax than the invoice charged."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from billing import invoicing, settlements
from billing.money import round_amount

CENT = Decimal("0.01")
amounts = st.integers(min_value=0, max_value=10**9).map(lambda c: Decimal(c) * CENT)
rates = st.decimals(min_value=0, max_value=30, places=2)


@given(
    st.lists(st.tuples(amounts, st.integers(0, 100)), min_size=1, max_size=30),
    rates,
)
def test_nets_plus_fees_are_the_invoiced_net_minus_credits_to_the_cent(
    rows: list[tuple[Decimal, int]], fee_rate: Decimal
) -> None:
    shares = [
        settlements.Share(f"p{index:02d}", "EUR", gross, round_amount(gross * pct / 100, "EUR"))
        for index, (gross, pct) in enumerate(rows)
    ]
    result = settlements.settle(shares, fee_rate)
    due = sum((s.gross - s.credits for s in shares), Decimal(0))
    assert sum((s.net + s.fee for s in result), Decimal(0)) == due
    # The fee is the rounded rate of the whole, each provider's part within a cent of exact.
    assert sum((s.fee for s in result), Decimal(0)) == round_amount(due * fee_rate / 100, "EUR")
    for item in result:
        exact = (item.gross - item.credits) * fee_rate / 100
        assert abs(item.fee - exact) < CENT
        assert item.fee == item.fee.quantize(CENT) and item.net >= 0


def test_fees_are_split_by_largest_remainder_per_currency() -> None:
    # 3 providers with 1.00 EUR each at 50 %: 1.50 of fee, 0.50 each; JPY has no minor unit.
    shares = [settlements.Share(p, "EUR", Decimal("1.00"), Decimal(0)) for p in "abc"]
    shares += [
        settlements.Share("a", "JPY", Decimal(3), Decimal(0)),
        settlements.Share("b", "JPY", Decimal(2), Decimal(0)),
    ]
    result = settlements.settle(shares, Decimal("10"))  # EUR fee 0.30, JPY fee round(0.5) = 1
    assert [(s.currency, s.provider_id, s.fee, s.net) for s in result] == [
        ("EUR", "a", Decimal("0.10"), Decimal("0.90")),
        ("EUR", "b", Decimal("0.10"), Decimal("0.90")),
        ("EUR", "c", Decimal("0.10"), Decimal("0.90")),
        ("JPY", "a", Decimal(1), Decimal(2)),  # 0.6 of a yen: the larger remainder
        ("JPY", "b", Decimal(0), Decimal(2)),
    ]
    nothing = settlements.settle(
        [settlements.Share("a", "EUR", Decimal(0), Decimal(0))], Decimal(5)
    )
    assert nothing[0].fee == 0 and nothing[0].net == 0


@given(
    st.integers(min_value=1, max_value=10**7).map(lambda c: Decimal(c) * CENT),
    st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=12),
    rates.filter(lambda r: r > 0),
)
def test_credits_never_give_back_more_tax_than_charged_and_all_of_it_at_the_end(
    base: Decimal, weights: list[int], rate: Decimal
) -> None:
    """Credit `base` in pieces (the last takes what remains): at every step the tax credited
    so far is the rounded tax of what was credited so far."""
    charged = round_amount(base * rate / 100, "EUR")
    total = sum(weights)
    pieces = [(base * w / total).quantize(CENT, rounding="ROUND_DOWN") for w in weights[:-1]]
    pieces.append(base - sum(pieces, Decimal(0)))
    credited = credited_tax = Decimal(0)
    for piece in pieces:
        if piece == 0:
            continue
        (line,) = invoicing.credit_taxes("EUR", {("S", rate): piece}, {("S", rate): credited})
        credited += piece
        credited_tax += line.amount
        assert credited_tax == round_amount(credited * rate / 100, "EUR") <= charged
    assert credited == base and credited_tax == charged
