"""The readable PDF of a document: in the buyer's language, everything a reader needs is on it
as issued, long documents paginate with the totals kept together, any buyer name renders, it
declares PDF/A-3B, and the same document gives the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from billing import labels
from billing.document import (
    ADJUSTMENT,
    CREDIT_NOTE,
    INVOICE,
    LANGUAGES,
    USAGE,
    Address,
    Corrected,
    Document,
    LegalId,
    Line,
    Party,
    TaxRow,
)
from billing.invoicing import TAX_CATEGORIES
from billing.money import round_amount
from billing.pdf import FONT, MARGIN, _Document, _Widths, _wrap, printable, to_pdf
from billing.rating import METRICS

SELLER = Party(
    name="Consortium du cloud souverain",
    address=Address("FR", ("12 rue de l'Arsenal", "Bâtiment B"), "75004", "Paris"),
    vat_id="FR32123456789",
    legal_id=LegalId("12345678900017"),
)
BUYER = Party(
    name="Agence nationale des données de santé",
    trading_name="ANDS",
    address=Address("FR", ("9 rue Georges Pitard",), "75015", "Paris"),
    vat_id="FR90987654321",
    legal_id=LegalId("18002002600019"),
    organization_id="0d5b7c1e-8a44-4f2e-9d6a-3c1f0e2b7a90",
)
MENTIONS = (
    "Pas d'escompte pour paiement anticipé.",
    "Pénalités de retard : trois fois le taux d'intérêt légal.",
    "Indemnité forfaitaire pour frais de recouvrement : 40 €.",
)
SPACES = str.maketrans({"\u202f": " ", "\u00a0": " "})


def at(day: int, month: int = 3, hour: int = 0) -> datetime:
    return datetime(2030, month, day, hour, tzinfo=UTC)


def item(position: int, amount: str, **changes: Any) -> Line:
    """A line of machine `web-<position>` in March 2030, at 20 % VAT."""
    values: dict[str, Any] = {
        "position": position,
        "kind": USAGE,
        "period": "2030-03",
        "resource_id": f"5c1e0000-0000-4000-8000-{position:012d}",
        "provider_id": "a3f04b2c-6d1e-4f7a-8b9c-0d1e2f3a4b5c",
        "metric": "instance_hour",
        "quantity": Decimal("720"),
        "unit_price": Decimal("0.042"),
        "amount": Decimal(amount),
        "tax_category": "S",
        "tax_rate": Decimal("20"),
        "service_start": at(1),
        "service_end": at(1, month=4),
        "resource_name": f"web-{position}",
        "offer_name": "Small 2 vCPU",
        "provider_name": "Hexagone Cloud",
        "region": "fr-par-1",
        **changes,
    }
    return Line(**values)


def issued(lines: Sequence[Line], **changes: Any) -> Document:
    """An invoice of `lines` to a French agency, its VAT and totals added up from them."""
    currency = changes.get("currency", "EUR")
    bases: dict[tuple[str, Decimal], Decimal] = {}
    for line in lines:
        key = (line.tax_category, line.tax_rate)
        bases[key] = bases.get(key, Decimal(0)) + line.amount
    taxes = tuple(
        TaxRow.of(category, rate, base, round_amount(base * rate / 100, currency))
        for (category, rate), base in sorted(bases.items())
    )
    subtotal = sum((line.amount for line in lines), round_amount(Decimal(0), currency))
    tax = sum((row.amount for row in taxes), round_amount(Decimal(0), currency))
    values: dict[str, Any] = {
        "document_type": INVOICE,
        "id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        "number": "2030-000001",
        "issued_at": at(1, month=4, hour=9),
        "period": "2030-03",
        "period_start": at(1),
        "period_end": at(1, month=4),
        "currency": currency,
        "seller": SELLER,
        "buyer": BUYER,
        "lines": tuple(lines),
        "taxes": taxes,
        "subtotal": subtotal,
        "tax": tax,
        "total": subtotal + tax,
        "language": "fr",
        "due_date": date(2030, 5, 1),
        "payment_terms": labels.payment_terms(30, changes.get("language", "fr")),
        "buyer_reference": "DSI-CLOUD",
        "purchase_order_reference": "EJ-2030-42",
        "legal_mentions": MENTIONS,
        **changes,
    }
    return Document(**values)


def invoice(language: str = "fr") -> Document:
    """1 234,56 € all taxes included: 1 028,80 € of March and of a February adjustment, and
    205,76 € of VAT."""
    return issued(
        [
            item(1, "1000.00", quantity=Decimal("10.000")),
            item(
                2,
                "28.80",
                kind=ADJUSTMENT,
                period="2030-02",
                metric="egress_gib",
                quantity=Decimal("1440.5"),
                unit_price=Decimal("0.02"),
                service_start=at(20, month=2),
                service_end=at(1),
            ),
        ],
        language=language,
    )


def credit_note(language: str = "fr") -> Document:
    """A credit of part of line 1 of the invoice, reverse-charged."""
    credit = item(1, "5.00", tax_category="AE", tax_rate=Decimal("0"), credits_position=1)
    return issued(
        [credit],
        document_type=CREDIT_NOTE,
        id="1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b",
        number="CN-2030-000001",
        issued_at=at(12, month=4, hour=9),
        corrects=Corrected("7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11", "2030-000001", at(1, 4)),
        reason="Machine facturée pendant une panne du fournisseur",
        language=language,
    )


def long_invoice(count: int, language: str = "fr", **changes: Any) -> Document:
    """`count` lines of different heights (some offers have long names)."""
    lines = [
        item(
            position,
            f"{position}.{position % 100:02d}",
            offer_name="Small 2 vCPU" + " with a long offer name" * (position % 4),
        )
        for position in range(1, count + 1)
    ]
    return issued(lines, language=language, **changes)


def pages(content: bytes) -> list[str]:
    """The text of each page, every kind of space a plain one."""
    reader = PdfReader(io.BytesIO(content))
    return [page.extract_text().translate(SPACES) for page in reader.pages]


def flat(text: str) -> str:
    """Text with its line breaks as spaces (cells wrap)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def french() -> list[str]:
    return pages(to_pdf(invoice("fr")))


@pytest.fixture(scope="module")
def english() -> list[str]:
    return pages(to_pdf(invoice("en")))


@pytest.fixture(scope="module")
def thousand_lines() -> tuple[Document, bytes]:
    document = long_invoice(1000)
    return document, to_pdf(document)


def test_a_french_agency_gets_a_french_invoice(french: list[str]) -> None:
    (page,) = french
    text = flat(page)
    assert page.startswith("Facture\n")
    for shown in (
        "Numéro 2030-000001",
        "Date d'émission 1 avril 2030",
        "Période mars 2030 (1–31 mars 2030)",
        "Échéance 1 mai 2030 (Paiement à 30 jours)",
        "Référence acheteur DSI-CLOUD",
        "Numéro d'engagement EJ-2030-42",
        # both parties: legal name, trading name, address lines, post code and city, ids
        "Vendeur Consortium du cloud souverain 12 rue de l'Arsenal Bâtiment B 75004 Paris "
        "France SIRET 12345678900017 N° TVA FR32123456789",
        "Acheteur Agence nationale des données de santé (ANDS) 9 rue Georges Pitard 75015 "
        "Paris France SIRET 18002002600019 N° TVA FR90987654321",
        # the lines: the machine in words, what it counts and when, figures as issued
        "web-1 — Small 2 vCPU, Hexagone Cloud, fr-par-1 heures d'instance, mars 2030",
        "1–31 mars 2030 10,000 0,042 € S 20 % 1 000,00 €",
        "Gio de trafic sortant, régularisation de février 2030",
        "20–28 févr. 2030 1 440,5 0,02 € S 20 % 28,80 €",
        "S – Taux normal de TVA 20 % 1 028,80 € 205,76 €",
        "Total HT 1 028,80 € TVA 205,76 € Total TTC 1 234,56 €",
        *MENTIONS,
        "Facture 2030-000001 · page 1/1",
    ):
        assert shown in text, shown


def test_an_english_agency_gets_the_english_invoice(english: list[str]) -> None:
    (page,) = english
    text = flat(page)
    assert page.startswith("Invoice\n")
    for shown in (
        "Issue date 1 April 2030",
        "Due date 1 May 2030 (30 days net)",
        "Buyer reference DSI-CLOUD",
        "Purchase order EJ-2030-42",
        "Seller Consortium du cloud souverain",
        "VAT number FR32123456789",
        "instance hours, March 2030",
        "GiB of outbound traffic, adjustment for February 2030",
        "1 – 31 Mar 2030 10.000 €0.042 S 20% €1,000.00",
        "Subtotal €1,028.80 VAT €205.76 Total €1,234.56",
        "Invoice 2030-000001 · page 1/1",
    ):
        assert shown in text, shown
    assert "Facture" not in text and "Total TTC" not in text


def test_a_credit_note_names_the_invoice_it_corrects_the_line_it_credits_and_why() -> None:
    (french,) = pages(to_pdf(credit_note("fr")))
    text = flat(french)
    assert french.startswith("Avoir\n")
    assert "Facture d'origine 2030-000001 du 1 avril 2030" in text
    assert "Motif Machine facturée pendant une panne du fournisseur" in text
    assert "Crédite la ligne 1 de la facture 2030-000001" in text
    assert "AE – Autoliquidation VATEX-EU-AE 0 % 5,00 € 0,00 €" in text
    assert "Total TTC 5,00 €" in text
    (english,) = pages(to_pdf(credit_note("en")))
    assert english.startswith("Credit note\n")
    assert "Credits line 1 of invoice 2030-000001" in flat(english)


def test_an_exempt_category_says_why_in_the_documents_language() -> None:
    exempt = item(1, "3.10", tax_category="E", tax_rate=Decimal("0"))
    (text,) = pages(to_pdf(issued([exempt])))
    assert (
        "E – Exonéré de TVA VATEX-EU-132 Exonération de TVA, article 132 de la directive "
        "2006/112/CE 0 % 3,10 € 0,00 €"
    ) in flat(text)


def test_lines_with_different_references_are_grouped_under_them() -> None:
    lines = [
        item(1, "1.00", buyer_reference="DSI", purchase_order_reference="EJ-1"),
        item(2, "2.00", buyer_reference="DRH", purchase_order_reference="EJ-2"),
        item(3, "3.00", buyer_reference="DSI", purchase_order_reference="EJ-1"),
        item(4, "4.00"),
    ]
    (text,) = pages(to_pdf(issued(lines)))
    found = re.findall(
        r"Référence acheteur DSI · Numéro d'engagement EJ-1|Référence acheteur "
        r"DRH · Numéro d'engagement EJ-2|Sans référence|web-\d",
        flat(text),
    )
    assert found == [
        "Référence acheteur DSI · Numéro d'engagement EJ-1",
        "web-1",
        "web-3",
        "Référence acheteur DRH · Numéro d'engagement EJ-2",
        "web-2",
        "Sans référence",
        "web-4",
    ]
    # Lines that all carry the same references need no heading.
    (same,) = pages(to_pdf(issued(lines[:1] + lines[2:3])))
    assert "Référence acheteur DSI ·" not in flat(same)


def yen_invoice() -> Document:
    lines = [item(1, "1173", unit_price=Decimal("5"), tax_rate=Decimal("10"))]
    return issued(lines, currency="JPY", language="en")


def test_a_yen_invoice_shows_whole_amounts() -> None:
    (text,) = pages(to_pdf(yen_invoice()))
    assert "Subtotal JP¥1,173 VAT JP¥117 Total JP¥1,290" in flat(text)


def test_the_pdf_declares_pdf_a_3b_with_the_documents_metadata() -> None:
    reader = PdfReader(io.BytesIO(to_pdf(invoice())))
    xmp = reader.xmp_metadata
    assert xmp is not None
    assert (xmp.pdfaid_part, xmp.pdfaid_conformance) == ("3", "B")
    assert xmp.dc_title == {"x-default": "Facture 2030-000001"}
    assert xmp.xmp_modify_date == xmp.xmp_create_date == datetime(2030, 4, 1, 9)


def test_the_same_document_gives_the_same_bytes() -> None:
    for make in (invoice, credit_note):
        assert to_pdf(make()) == to_pdf(make())


def test_the_same_document_gives_the_same_bytes_in_another_process() -> None:
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


HEADINGS = {"N°", "Désignation", "Jours", "de", "service", "Quantité", "Prix", "unitaire"}


def test_a_thousand_line_invoice_repeats_its_headings_and_counts_its_pages(
    thousand_lines: tuple[Document, bytes],
) -> None:
    document, content = thousand_lines
    texts = pages(content)
    count = len(texts)
    assert count > 30
    for number, text in enumerate(texts, start=1):
        if "web-" in text:  # the last page may hold the VAT breakdown and totals alone
            assert HEADINGS <= set(text.split()), number
        assert text.rstrip().endswith(f"Facture 2030-000001 · page {number}/{count}")
    # every line is on exactly one page, whole, with its amount
    shown = [int(n) for text in texts for n in re.findall(r"\bweb-(\d+) —", text)]
    assert shown == list(range(1, 1001))
    assert str(document.total) == "601194.00"
    assert "Total TTC 601 194,00 €" in flat(texts[-1])


def test_nothing_but_the_footer_is_printed_in_the_bottom_margin(
    thousand_lines: tuple[Document, bytes],
) -> None:
    _, content = thousand_lines
    for page in PdfReader(io.BytesIO(content)).pages[:5]:
        heights: list[tuple[float, str]] = []

        def visit(text: str, cm: list[float], tm: list[float], *_: Any) -> None:
            if text.strip():  # the baseline's height above the bottom edge, in mm
                heights.append(((tm[5] * cm[3] + cm[5]) * 25.4 / 72, text))  # noqa: B023

        page.extract_text(visitor_text=visit)
        assert all(height > MARGIN + 5 for height, text in heights if "· page" not in text)


def test_the_totals_block_never_splits_across_pages() -> None:
    """Lines that end near the bottom of page 1: the VAT breakdown and totals go to page 2
    together (they would fit in part on page 1), and so do the legal mentions. How many lines
    fill page 1 is read from a longer document; the counts around it end the lines within a
    row or two of the bottom."""
    (first, *_) = pages(to_pdf(long_invoice(60)))
    full = max(int(n) for n in re.findall(r"\bweb-(\d+) —", first))
    moved = 0
    for count in range(full - 3, full + 2):
        texts = pages(to_pdf(long_invoice(count)))
        (page,) = [text for text in texts if "Total TTC" in text]
        assert "Détail de la TVA" in page and "Total HT" in page, count
        assert re.search(r"\nTVA [\d ]+,\d\d €\n", page), count  # the VAT total, not a heading
        (mentions,) = [flat(text) for text in texts if MENTIONS[0] in flat(text)]
        assert all(mention in mentions for mention in MENTIONS), count
        if f"web-{count} —" in texts[0] and page is not texts[0]:
            moved += 1
    assert moved >= 2  # the case at hand: the lines end on page 1, the totals start page 2


def test_long_texts_wrap_instead_of_running_off_the_page() -> None:
    reason = " ".join(["Le fournisseur a signalé une panne qui a duré tout le week-end."] * 8)
    street = "Bâtiment C, " * 12 + "1 avenue de Ségur"
    buyer = dataclasses.replace(
        BUYER, name="A" * 150, address=Address("FR", (street,), "75007", "Paris")
    )
    text = "\n".join(pages(to_pdf(dataclasses.replace(credit_note(), reason=reason, buyer=buyer))))
    assert set(reason.split()) <= set(text.split())
    assert set(street.split()) <= set(text.split())
    assert "A" * 30 in text  # a word longer than the column is broken, not lost


def test_cells_wrap_where_fpdf2s_multi_cell_would() -> None:
    pdf = _Document("wrapping", "fr")
    pdf.add_page()
    texts = [
        "web-1 — Small 2 vCPU, Hexagone Cloud, fr-par-1\nheures d'instance, mars 2030",
        "Crédite la ligne 1 de la facture 2030-000001",
        "20 févr. – 28 févr. 2030",
        "1\u202f234\u202f567,89\u00a0€",
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
    document = dataclasses.replace(invoice(), buyer=dataclasses.replace(BUYER, name=name))
    (text,) = pages(to_pdf(document))
    assert "Łódź Αθήνα София ?? Dvořák — Ville de Québec" in text
    assert printable("Łódź Αθήνα София 東京 Œuvre €") == "Łódź Αθήνα София ?? Œuvre €"


def test_every_word_metric_and_vat_category_is_in_both_languages_as_babel_writes_them() -> None:
    assert labels.WORDS["en"].keys() == labels.WORDS["fr"].keys()
    for language in LANGUAGES:
        assert labels.METRICS[language].keys() == METRICS.keys()
        assert labels.TAX_CATEGORIES[language].keys() == TAX_CATEGORIES.keys()
    french = labels.money(Decimal("1234.56"), "EUR", "fr")
    assert french == "1\u202f234,56\u00a0€" and printable(french) == french  # the font has both
    assert labels.money(Decimal("1234.56"), "EUR", "en") == "€1,234.56"
    assert labels.money(Decimal("0.000125"), "EUR", "en") == "€0.000125"  # never rounded
    assert labels.quantity(Decimal("1440.500"), "fr") == "1\u202f440,500"
    assert labels.day(date(2026, 12, 6), "fr") == "6 décembre 2026"
    assert labels.day(date(2026, 12, 6), "en") == "6 December 2026"
    assert labels.payment_terms(30, "fr") == "Paiement à 30 jours"
    assert labels.payment_terms(30, "en") == "30 days net"
    assert labels.metric("instance_hour", "fr") == "heures d'instance"
    with pytest.raises(ValueError, match="language"):
        labels.money(Decimal(1), "EUR", "de")
