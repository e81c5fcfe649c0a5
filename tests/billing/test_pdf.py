"""The readable PDF of a snapshot: everything a reader needs is on it, as issued, long
documents paginate, any buyer name renders, and the same snapshot gives the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from billing.pdf import FONT, MARGIN, _Document, _Widths, _wrap, printable, to_pdf
from tests.billing.test_cii import BUYER, SELLER, credit_note, invoice, jpy_invoice, line

HEADINGS = {"#", "Description", "Service", "days", "Quantity", "Unit", "price", "VAT", "Amount"}


def pages(document: dict[str, Any]) -> list[str]:
    reader = PdfReader(io.BytesIO(to_pdf(document)))
    return [page.extract_text() for page in reader.pages]


def baselines(document: dict[str, Any]) -> list[list[tuple[float, str]]]:
    """Per page, each text shown and how high its baseline is above the bottom edge (mm)."""
    found: list[list[tuple[float, str]]] = []

    def visit(text: str, cm: list[float], tm: list[float], *_: Any) -> None:
        if text.strip():
            found[-1].append(((tm[5] * cm[3] + cm[5]) * 25.4 / 72, text))

    for page in PdfReader(io.BytesIO(to_pdf(document))).pages:
        found.append([])
        page.extract_text(visitor_text=visit)
    return found


def words(text: str) -> set[str]:
    return set(text.split())


def metric(position: int) -> str:
    """Names of different lengths, so rows of different heights."""
    return "instance_hour" + "_of_a_flavour_with_a_long_name" * (position % 5)


def long_invoice(count: int = 120) -> dict[str, Any]:
    items = [
        line(position, metric(position), f"{position}.{position % 100:02d}", "S", "20")
        for position in range(1, count + 1)
    ]
    subtotal = sum((Decimal(item["amount"]) for item in items), Decimal(0))
    tax = (subtotal * Decimal("0.2")).quantize(Decimal("0.01"))
    return invoice(
        lines=items,
        taxes=[{"category": "S", "rate": "20", "base": str(subtotal), "amount": str(tax)}],
        subtotal=str(subtotal),
        tax=str(tax),
        total=str(subtotal + tax),
    )


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
    for make in (invoice, credit_note, long_invoice):
        assert to_pdf(make()) == to_pdf(make())


def test_the_same_snapshot_gives_the_same_bytes_in_another_process() -> None:
    """Nothing depends on the process either (say, the order of a set of strings)."""
    script = (
        "import hashlib; from billing.pdf import to_pdf; from tests.billing.test_pdf import "
        "long_invoice; print(hashlib.sha256(to_pdf(long_invoice(30))).hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == hashlib.sha256(to_pdf(long_invoice(30))).hexdigest()


def test_a_long_invoice_paginates_with_the_headings_on_every_page_and_every_amount() -> None:
    document = long_invoice()
    texts = pages(document)

    assert len(texts) > 1
    assert all(HEADINGS <= words(text) for text in texts)  # the headings repeat
    assert all(f"page {n}/{len(texts)}" in text for n, text in enumerate(texts, start=1))
    found = words("\n".join(texts))
    assert {item["amount"] for item in document["lines"]} <= found
    # no row is split over two pages: each line's description is whole on exactly one
    assert all(
        sum(f"{item['resource_id']}," in text for text in texts) == 1 for item in document["lines"]
    )
    assert f"Total {document['total']} EUR" in texts[-1]
    for page in baselines(document):  # nothing but the footer in the bottom margin
        assert all(height > MARGIN + 5 for height, text in page if "· page" not in text)


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


def test_long_descriptions_wrap_in_their_column_and_long_words_break() -> None:
    name = "a_metric_with_a_name_far_longer_than_the_description_column_is_wide_" * 2
    (text,) = pages(invoice(lines=[line(1, name, "1.00", "S", "20")]))
    rows = text.splitlines()
    assert not any(name in row for row in rows)  # broken over several lines...
    assert name in "".join(rows)  # ...and nothing lost
    assert {"resource", "5c1e0000-0000-4000-8000-000000000001,", "2030-03"} <= words(text)


def test_cells_wrap_where_fpdf2s_multi_cell_would() -> None:
    pdf = _Document("wrapping")
    pdf.add_page()
    texts = [
        "instance_hour — resource 5c1e0000-0000-4000-8000-000000000001, adjustment for 2030-02",
        "egress_gib — resource 5c1e0000-0000-4000-8000-000000000003, 2030-03\n"
        "Credits line 1 of invoice 2030-000001",
        "2030-03-10 – 2030-03-20",
        "Amount (EUR)",
        "A" * 150,
        "x" * 120 + " then words",
        "a  b   c    d     e      f " * 3,
        " leading and trailing spaces ",
        "Łódź Αθήνα София Dvořák — Ville de Québec, " * 3,
        "no\n\nempty line, one at the end\n",
        "thin\u2009space and no\u00a0break space " * 3,
    ]
    for style in ("", "B"):
        pdf.set_font(FONT, style=style, size=8)
        widths = _Widths(pdf)
        for text in texts:
            for width in (5, 10, 13, 19, 34, 67, 178):
                expected = pdf.multi_cell(
                    width + 2, 4.5, text, padding=1, dry_run=True, output="LINES"
                )
                assert _wrap(text, width, widths) == expected, (style, width, text)


def test_names_print_as_written_in_any_european_script_and_unknown_glyphs_as_a_mark() -> None:
    name = "Łódź Αθήνα София 東京 Dvořák — Ville de Québec"
    (text,) = pages(invoice(buyer={**BUYER, "legal_name": name}))
    assert "Łódź Αθήνα София ?? Dvořák — Ville de Québec" in text
    assert printable("Łódź Αθήνα София 東京 Œuvre €") == "Łódź Αθήνα София ?? Œuvre €"
