"""Exports of issued invoices and credit notes, made from their `Document` only (so every
download of a document is byte-identical, whatever happened since).

- JSON: the document's snapshot in its canonical form, the very bytes its SHA-256 covers.
- CSV (spreadsheets): a row per line, then a row per tax category, so the `amount` column sums
  to the total. The header row is in the language asked for: English headers are the columns'
  names (`invoice_number`, `amount`, …), which programs read by name; French ones are words
  (`labels.CSV_HEADERS`). The cells are the figures and codes as issued, in either language.
- PDF (people, and e-invoicing platforms): a Factur-X, the PDF/A-3B of `billing.pdf` with the
  CII of `billing.cii` attached as `factur-x.xml` by the `factur-x` library (profile EN 16931).
- CII (e-invoicing platforms): the bare EN 16931 Cross Industry Invoice XML, `billing.cii`.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import facturx

from billing import cii, labels, pdf
from billing.document import Document
from billing.invoicing import canonical_json

CSV_COLUMNS = (
    "invoice_number",
    "invoice_period",
    "currency",
    "buyer",
    "position",
    "kind",
    "period",
    "resource_id",
    "resource_name",
    "provider_id",
    "metric",
    "quantity",
    "unit_price",
    "amount",
    "tax_category",
    "tax_rate",
    "service_start",
    "service_end",
    "buyer_reference",
    "purchase_order_reference",
)
TAX_KIND = "tax"  # the `kind` of a tax row

FORMATS = ("json", "csv", "pdf", "cii")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
    "cii": "application/xml",
}
EXTENSIONS = {"json": "json", "csv": "csv", "pdf": "pdf", "cii": "xml"}
FACTUR_X_LEVEL = "en16931"


def render(document: Document, fmt: str) -> tuple[bytes, str]:
    """The document in format `fmt`: (content, media type)."""
    if fmt == "json":
        content = to_json(document)
    elif fmt == "csv":
        content = to_csv([document], document.language)
    elif fmt == "pdf":
        content = to_factur_x(document)
    elif fmt == "cii":
        content = cii.to_cii(document)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return content, MEDIA_TYPES[fmt]


def to_json(document: Document) -> bytes:
    return canonical_json(document.to_snapshot())


# CSV -------------------------------------------------------------------------------------------


def _text_cell(text: str | None) -> str:
    """Free text a spreadsheet must not run as a formula (CSV injection)."""
    if text is None:
        return ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _instant(value: datetime) -> str:
    """An instant as the snapshot writes it (ISO 8601, UTC, `Z`)."""
    return value.isoformat().replace("+00:00", "Z")


def _rows(document: Document) -> Iterator[dict[str, str | int | Decimal]]:
    """The CSV rows of one document: its lines, then its tax rows."""
    invoice = {
        "invoice_number": document.number,
        "invoice_period": document.period,
        "currency": document.currency,
        "buyer": _text_cell(document.buyer.name),
    }
    for line in document.lines:
        yield {
            **invoice,
            "position": line.position,
            "kind": line.kind,
            "period": line.period,
            "resource_id": line.resource_id,
            "resource_name": _text_cell(line.resource_name),
            "provider_id": line.provider_id,
            "metric": line.metric,
            "quantity": line.quantity,
            "unit_price": line.unit_price,
            "amount": line.amount,
            "tax_category": line.tax_category,
            "tax_rate": line.tax_rate,
            "service_start": _instant(line.service_start),
            "service_end": _instant(line.service_end),
            # A line without references of its own falls under the document's (BT-10, BT-13).
            "buyer_reference": _text_cell(line.buyer_reference or document.buyer_reference),
            "purchase_order_reference": _text_cell(
                line.purchase_order_reference or document.purchase_order_reference
            ),
        }
    for tax in document.taxes:
        yield {
            **invoice,
            "kind": TAX_KIND,
            "quantity": tax.base,
            "amount": tax.amount,
            "tax_category": tax.category,
            "tax_rate": tax.rate,
        }


def to_csv(documents: Iterable[Document], language: str) -> bytes:
    """One CSV of the lines (and tax rows) of every document given, in order, its header row
    in `language`."""
    headers = labels.csv_headers(CSV_COLUMNS, language)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(headers)
    for document in documents:
        for row in _rows(document):
            writer.writerow([row.get(column, "") for column in CSV_COLUMNS])
    return buffer.getvalue().encode()


# Factur-X --------------------------------------------------------------------------------------

# factur-x stamps the PDF it makes with the clock (the XMP dates, the document information's
# CreationDate and ModDate, the attached XML's ModDate), through these two functions of its
# module. They are wrapped once so that, while `to_factur_x` runs, they read the document's
# issue instead: the same document gives the same bytes. The instant is a context variable,
# so concurrent threads each stamp their own document, and any other caller of factur-x (none
# in the broker) still gets the clock.
_STAMP: ContextVar[datetime | None] = ContextVar("factur_x_stamp", default=None)
_FACTURX: Any = importlib.import_module("facturx.facturx")
_pdf_timestamp = _FACTURX._get_pdf_timestamp
_metadata_timestamp = _FACTURX._get_metadata_timestamp


def _stamped_pdf_timestamp(date: datetime | None = None) -> Any:
    return _pdf_timestamp(date if date is not None else _STAMP.get())


def _stamped_metadata_timestamp() -> Any:
    stamp = _STAMP.get()
    if stamp is None:
        return _metadata_timestamp()
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


_FACTURX._get_pdf_timestamp = _stamped_pdf_timestamp
_FACTURX._get_metadata_timestamp = _stamped_metadata_timestamp


@contextlib.contextmanager
def _stamped(instant: datetime) -> Iterator[None]:
    token = _STAMP.set(instant)
    try:
        yield
    finally:
        _STAMP.reset(token)


def to_factur_x(document: Document) -> bytes:
    """The Factur-X of an issued document (profile EN 16931): its PDF/A-3B with its CII
    attached as `factur-x.xml`, byte-identical per document.

    The CII was checked against the XSD when it was made (`cii.to_cii`), so factur-x does not
    check it again. The PDF's metadata (title, author, subject, language) is the document's,
    in its language, instead of the English factur-x writes by default."""
    title = pdf.title(document)
    metadata = {
        "author": document.seller.name,
        "title": title,
        "subject": f"{title} · {document.seller.name} · {document.buyer.name}",
        "keywords": "Factur-X",
    }
    with _stamped(document.issued_at):
        content: bytes = facturx.generate_from_binary(
            pdf.to_pdf(document),
            cii.to_cii(document),
            flavor="factur-x",
            level=FACTUR_X_LEVEL,
            check_xsd=False,
            pdf_metadata=metadata,
            lang=document.language,
        )
    return content
