"""The readable PDF of a snapshot: everything a reader needs is on it, as issued, long
documents paginate, any buyer name renders, and the same snapshot gives the same bytes."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

from pypdf import PdfReader

from billing.pdf import printable, to_pdf
from tests.billing.test_cii import BUYER, SELLER, credit_note, invoice, jpy_invoice, line


def pages(document: dict[str, Any]) -> list[str]:
    reader = PdfReader(io.BytesIO(to_pdf(document)))
    return [page.extract_text() for page in reader.pages]


def words(text: str) -> set[str]:
    return set(text.split())


def test_an_invoice_shows_its_number_parties_lines_taxes_and_total() -> None:
    document = invoice()
    (text,) = pages(document)

    assert text.startswith("Invoice")
    assert "2030-000001" in text
    assert SELLER["name"] in text and BUYER["legal_name"] in text
    assert SELLER["vat_id"] in text and BUYER["vat_id"] in text
    assert "Period 2030-03 (2030-03-01 – 2030-03-31)" in text
    found = words(text)
    assert {item["amount"] for item in document["lines"]} <= found
    assert {tax["amount"] for tax in document["taxes"]} <= found
    assert {tax["base"] for tax in document["taxes"]} <= found
    assert "Total 22.43 EUR" in text
    assert "Subtotal 19.23 EUR" in text and "VAT 3.20 EUR" in text
    assert "egress_gib — resource" in text and "adjustment for 2030-02" in text


def test_a_credit_note_names_the_invoice_it_corrects_and_why() -> None:
    document = credit_note()
    (text,) = pages(document)
    assert text.startswith("Credit note")
    assert "CN-2030-000001" in text
    assert "Corrects invoice 2030-000001 of 2030-04-01" in text
    assert "Reason Machine billed during a provider outage" in text
    assert "Credits line 1 of invoice 2030-000001" in text
    assert "AE – reverse charge" in text
    assert "Total 5.00 EUR" in text


def test_a_yen_invoice_shows_whole_amounts() -> None:
    (text,) = pages(jpy_invoice())
    assert {"1173", "117"} <= words(text)
    assert "Total 1290 JPY" in text


def test_the_same_snapshot_gives_the_same_bytes() -> None:
    for make in (invoice, credit_note):
        assert to_pdf(make()) == to_pdf(make())


def test_a_long_invoice_paginates_and_shows_every_amount() -> None:
    items = [
        line(position, "instance_hour", f"{position}.{position % 100:02d}", "S", "20")
        for position in range(1, 121)
    ]
    subtotal = sum((Decimal(item["amount"]) for item in items), Decimal(0))
    tax = (subtotal * Decimal("0.2")).quantize(Decimal("0.01"))
    document = invoice(
        lines=items,
        taxes=[{"category": "S", "rate": "20", "base": str(subtotal), "amount": str(tax)}],
        subtotal=str(subtotal),
        tax=str(tax),
        total=str(subtotal + tax),
    )
    texts = pages(document)

    assert len(texts) > 1
    assert all("Description" in text for text in texts[1:])  # the headings repeat
    assert all(f"page {n}/{len(texts)}" in text for n, text in enumerate(texts, start=1))
    found = words("\n".join(texts))
    assert {item["amount"] for item in items} <= found
    assert f"Total {subtotal + tax} EUR" in texts[-1]


def test_long_texts_wrap_instead_of_running_off_the_page() -> None:
    reason = " ".join(["The provider reported an outage that lasted the whole weekend."] * 8)
    address = "Bâtiment C, " * 12 + "1 avenue de Ségur, 75007 Paris"
    document = credit_note()
    document["reason"] = reason
    document["buyer"] = {**BUYER, "address": address, "legal_name": "A" * 150}
    text = "\n".join(pages(document))
    assert words(reason) <= words(text)
    assert words(address) <= words(text)
    assert "A" * 30 in text  # a word longer than the column is broken, not lost


def test_names_print_as_written_in_any_european_script_and_unknown_glyphs_as_a_mark() -> None:
    name = "Łódź Αθήνα София 東京 Dvořák — Ville de Québec"
    (text,) = pages(invoice(buyer={**BUYER, "legal_name": name}))
    assert "Łódź Αθήνα София ?? Dvořák — Ville de Québec" in text
    assert printable("Łódź Αθήνα София 東京 Œuvre €") == "Łódź Αθήνα София ?? Œuvre €"
