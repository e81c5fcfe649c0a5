"""The EN 16931 business rules (the Schematron of the Factur-X EN 16931 profile, run offline by
Saxon-HE) over the CII of every kind of document the broker issues: the fixtures, and invoices
and credit notes generated from random usage by the broker's own invoicing. Every document a
test of the API issues is checked too, at finalization (`refuse_broken_rules`)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import cii, invoicing, schematron
from billing.document import (
    CREDIT_NOTE,
    USAGE,
    Corrected,
    Document,
    Line,
    TaxRow,
)
from billing.metering import shown
from billing.money import round_amount
from billing.rating import Price
from tests.billing.test_cii import credit_note, invoice, jpy_invoice, structured

START = datetime(2030, 3, 1, tzinfo=UTC)
END = datetime(2030, 4, 1, tzinfo=UTC)


def rules_broken(document: Document) -> list[str]:
    return [failure.rule for failure in schematron.errors(cii.to_cii(document))]


def test_every_fixture_passes_the_en16931_rules() -> None:
    for snapshot in (invoice(), credit_note(), jpy_invoice()):
        assert rules_broken(Document.from_snapshot(snapshot)) == [], snapshot["number"]
    assert rules_broken(structured()) == []


def test_a_broken_total_is_caught_as_br_co_15() -> None:
    document = structured()
    broken = dataclasses.replace(document, total=document.total + Decimal("0.01"))
    assert "BR-CO-15" in rules_broken(broken)  # total with VAT = total without VAT + VAT
    failure = next(f for f in schematron.errors(cii.to_cii(broken)) if f.rule == "BR-CO-15")
    assert "BT-112" in failure.text


def test_an_exempt_line_without_its_reason_breaks_br_e_10() -> None:
    document = Document.from_snapshot(invoice())
    bare = tuple(
        dataclasses.replace(tax, exemption_code=None, exemption_reason=None)
        for tax in document.taxes
    )
    assert rules_broken(dataclasses.replace(document, taxes=bare)) == ["BR-E-10"]


def _rules_in_this_process(xml: bytes) -> tuple[int, list[str]]:
    return os.getpid(), [failure.rule for failure in schematron.errors(xml)]


def test_a_forked_worker_checks_the_rules_with_its_own_saxon() -> None:
    """gunicorn forks its workers from a process that may have checked documents already:
    each worker builds its own processor (`schematron._processor`) and gets the same answers."""
    document = structured()
    broken = cii.to_cii(dataclasses.replace(document, total=document.total + 1))
    assert rules_broken(document) == []  # this process has its processor now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pid, rules = pool.apply(_rules_in_this_process, (broken,))
    assert pid != os.getpid() and rules == ["BR-CO-15"]


METRICS = ("instance_hour", "vcpu_hour", "ram_gib_hour", "storage_gib_month", "egress_gib")
CATEGORIES = ("S", "S", "Z", "E", "AE")


@st.composite
def usage(draw: st.DrawFn) -> invoicing.Consumption:
    hours = draw(st.integers(min_value=0, max_value=744 * 60)) / 60
    start = START + timedelta(minutes=draw(st.integers(min_value=0, max_value=44_000)))
    return invoicing.Consumption(
        kind=USAGE,
        period="2030-03",
        resource_id=f"5c1e0000-0000-4000-8000-{draw(st.integers(0, 10**12)):012d}",
        provider_id="a3f04b2c-6d1e-4f7a-8b9c-0d1e2f3a4b5c",
        metric=draw(st.sampled_from(METRICS)),
        quantity=Fraction(hours).limit_denominator(60),
        price=Price(
            metric="instance_hour",
            unit_price=Decimal(draw(st.integers(min_value=0, max_value=5_000_000))) / 10**6,
            currency="EUR",
            tax_category=draw(st.sampled_from(CATEGORIES)),
        ),
        service_start=start,
        service_end=min(END, start + timedelta(hours=max(hours, 1))),
    )


def issued(items: list[invoicing.Consumption], vat_rate: Decimal) -> Document:
    """An invoice of `items` as the broker issues one: rated, taxed and totalled by
    `billing.invoicing`, figures as the snapshot keeps them."""
    totals = invoicing.build("EUR", items, invoicing.TaxProfile("FR", vat_rate))
    base = structured()
    lines = tuple(
        Line(
            position=position,
            kind=line.kind,
            period=line.period,
            resource_id=line.resource_id,
            provider_id=line.provider_id,
            metric=line.metric,
            quantity=shown(line.quantity),
            unit_price=line.unit_price,
            amount=line.amount,
            tax_category=line.tax_category,
            tax_rate=line.tax_rate,
            service_start=line.service_start,
            service_end=line.service_end,
            resource_name=f"vm-{position}",
        )
        for position, line in enumerate(totals.lines, start=1)
    )
    return dataclasses.replace(
        base,
        lines=lines,
        taxes=tuple(
            TaxRow.of(tax.category, tax.rate, tax.base, tax.amount) for tax in totals.taxes
        ),
        subtotal=totals.subtotal,
        tax=totals.tax,
        total=totals.total,
    )


def credited(document: Document, shares: list[int]) -> Document:
    """A credit note of a share (percent) of some of the invoice's lines, its tax as the
    broker computes it (`invoicing.credit_taxes`)."""
    wanted = {
        line.position: round_amount(line.amount * share / 100, "EUR")
        for line, share in zip(document.lines, shares, strict=False)
        if round_amount(line.amount * share / 100, "EUR") > 0
    }
    if not wanted:
        wanted = {document.lines[0].position: document.lines[0].amount}
    by_position = {line.position: line for line in document.lines}
    credit: dict[tuple[str, Decimal], Decimal] = {}
    for position, amount in wanted.items():
        key = (by_position[position].tax_category, by_position[position].tax_rate)
        credit[key] = credit.get(key, Decimal(0)) + amount
    taxes = invoicing.credit_taxes("EUR", credit, {})
    lines = tuple(
        dataclasses.replace(
            by_position[position],
            position=index,
            credits_position=position,
            amount=amount,
            **(
                {}
                if amount == by_position[position].amount
                else {"quantity": Decimal(1), "unit_price": amount}
            ),
        )
        for index, (position, amount) in enumerate(sorted(wanted.items()), start=1)
    )
    subtotal = sum(wanted.values(), Decimal(0))
    tax = sum((row.amount for row in taxes), Decimal(0))
    return dataclasses.replace(
        document,
        document_type=CREDIT_NOTE,
        number="CN-2030-000001",
        corrects=Corrected(document.id, document.number, document.issued_at),
        reason="Outage",
        lines=lines,
        taxes=tuple(TaxRow.of(row.category, row.rate, row.base, row.amount) for row in taxes),
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        due_date=None,
        payment_terms=None,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(usage(), min_size=1, max_size=8),
    vat_rate=st.sampled_from([Decimal("20"), Decimal("5.5"), Decimal("14.975"), Decimal("0")]),
    shares=st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=8),
)
def test_generated_invoices_and_their_credit_notes_pass_the_rules(
    items: list[invoicing.Consumption], vat_rate: Decimal, shares: list[int]
) -> None:
    document = issued(items, vat_rate)
    assert rules_broken(document) == []
    assert rules_broken(credited(document, shares)) == []
