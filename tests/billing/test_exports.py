"""Exports of a document: canonical JSON, a CSV safe to open in a spreadsheet with its headers in
the language asked, and a Factur-X PDF carrying the CII, the same bytes at every download."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from decimal import Decimal

import facturx
import pytest
from pypdf import PdfReader

from billing import cii, exports
from billing.invoicing import fingerprint
from tests.billing.test_pdf import BUYER, credit_note, invoice, issued, item, pages


@pytest.fixture(scope="module")
def factur_x() -> tuple[bytes, str]:
    return exports.render(invoice("fr"), "pdf")


def rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode())))


def test_the_json_export_is_the_hashed_canonical_snapshot() -> None:
    document = invoice()
    content, media_type = exports.render(document, "json")
    assert media_type == "application/json"
    assert hashlib.sha256(content).hexdigest() == fingerprint(document.to_snapshot())
    assert json.loads(content) == document.to_snapshot()


def test_the_csv_has_every_line_and_tax_row_its_amounts_summing_to_the_total() -> None:
    malicious = '=HYPERLINK("https://evil.example")'
    lines = [
        item(1, "1000.00", resource_name="@SUM(A1:A9)"),
        item(2, "28.80", buyer_reference="+DSI", purchase_order_reference="-EJ-7"),
    ]
    document = issued(lines, buyer=dataclasses.replace(BUYER, name=malicious), language="en")
    content, media_type = exports.render(document, "csv")
    assert media_type == "text/csv; charset=utf-8"
    header, *body = rows(content)
    assert header == list(exports.CSV_COLUMNS)
    found = [dict(zip(header, row, strict=True)) for row in body]
    assert [row["kind"] for row in found] == ["usage", "usage", "tax"]
    assert sum(Decimal(row["amount"]) for row in found) == document.total == Decimal("1234.56")
    assert found[0]["quantity"] == "720" and found[0]["unit_price"] == "0.042"
    assert found[0]["service_start"] == "2030-03-01T00:00:00Z"
    # No cell a spreadsheet would run as a formula; a line without references of its own
    # carries the document's.
    assert {row["buyer"] for row in found} == {"'" + malicious}
    assert [row["resource_name"] for row in found] == ["'@SUM(A1:A9)", "web-2", ""]
    assert [row["buyer_reference"] for row in found] == ["DSI-CLOUD", "'+DSI", ""]
    assert [row["purchase_order_reference"] for row in found] == ["EJ-2030-42", "'-EJ-7", ""]


def test_the_csv_headers_are_in_the_language_asked_and_the_cells_stay_as_issued() -> None:
    document = invoice("fr")
    french, _ = exports.render(document, "csv")  # one document: in its language
    header, *body = rows(french)
    assert header[:4] == ["Numéro de facture", "Période de facturation", "Devise", "Acheteur"]
    assert header[-2:] == ["Référence acheteur", "Numéro d'engagement"]
    english = rows(exports.to_csv([document, credit_note()], "en"))  # a period's, for finance
    assert english[0] == list(exports.CSV_COLUMNS)
    assert english[1 : len(body) + 1] == body
    assert [row[0] for row in english[1:]] == ["2030-000001"] * 3 + ["CN-2030-000001"] * 2


def test_the_pdf_is_a_factur_x_carrying_the_cii(factur_x: tuple[bytes, str]) -> None:
    content, media_type = factur_x
    assert media_type == "application/pdf"
    assert facturx.get_xml_from_pdf(content, check_xsd=False) == (
        "factur-x.xml",
        cii.to_cii(invoice("fr")),
    )
    xmp = PdfReader(io.BytesIO(content)).xmp_metadata
    assert xmp is not None
    assert (xmp.pdfaid_part, xmp.pdfaid_conformance) == ("3", "B")
    (page,) = pages(content)  # the readable document, in the buyer's language
    assert "Total TTC 1 234,56 €" in page


def test_the_factur_x_is_the_same_bytes_stamped_with_the_issue_not_the_clock(
    factur_x: tuple[bytes, str],
) -> None:
    content, _ = factur_x
    assert exports.render(invoice("fr"), "pdf")[0] == content
    reader = PdfReader(io.BytesIO(content))
    assert reader.metadata is not None
    issued_at = "D:20300401090000+00'00'"
    assert (reader.metadata["/CreationDate"], reader.metadata["/ModDate"]) == (issued_at,) * 2
    assert reader.metadata.title == "Facture 2030-000001"
    xmp = reader.xmp_metadata
    assert xmp is not None and xmp.xmp_modify_date == invoice().issued_at.replace(tzinfo=None)
    other = dataclasses.replace(invoice("fr"), issued_at=invoice().issued_at.replace(hour=10))
    assert exports.render(other, "pdf")[0] != content


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        exports.render(invoice(), "xls")
