"""Exports of issued invoices, made from their frozen snapshot only (so every download of an
invoice is byte-identical, whatever happened since).

- JSON: the snapshot in its canonical form, the very bytes its SHA-256 covers.
- CSV (spreadsheets): a row per invoice line, then a row per tax category, so the `amount`
  column sums to the invoice's total.
- PDF (people): `billing.pdf`.
- CII (e-invoicing platforms): EN 16931 Cross Industry Invoice XML, `billing.cii`.

Credit notes have the same snapshot shape (`document_type: credit_note`) and the same exports.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from typing import Any

from billing import cii, pdf
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
    "provider_id",
    "metric",
    "quantity",
    "unit_price",
    "amount",
    "tax_category",
    "tax_rate",
    "service_start",
    "service_end",
)


def _text_cell(text: str) -> str:
    """Free text a spreadsheet must not run as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


FORMATS = ("json", "csv", "pdf", "cii")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "pdf": "application/pdf",
    "cii": "application/xml",
}
EXTENSIONS = {"json": "json", "csv": "csv", "pdf": "pdf", "cii": "xml"}


def render(snapshot: Mapping[str, Any], fmt: str) -> tuple[bytes, str]:
    """The document in format `fmt`: (content, media type)."""
    if fmt == "json":
        content = to_json(snapshot)
    elif fmt == "csv":
        content = to_csv([snapshot])
    elif fmt == "pdf":
        content = pdf.to_pdf(snapshot)
    elif fmt == "cii":
        content = cii.to_cii(snapshot)
    else:
        raise ValueError(f"unknown export format {fmt!r}")
    return content, MEDIA_TYPES[fmt]


def to_json(snapshot: Mapping[str, Any]) -> bytes:
    return canonical_json(snapshot)


def to_csv(snapshots: Iterable[Mapping[str, Any]]) -> bytes:
    """One CSV of the lines (and tax rows) of every snapshot given, in order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for snapshot in snapshots:
        invoice = {
            "invoice_number": snapshot["number"],
            "invoice_period": snapshot["period"],
            "currency": snapshot["currency"],
            "buyer": _text_cell(snapshot["buyer"]["legal_name"]),
        }
        for line in snapshot["lines"]:
            writer.writerow({**invoice, **{name: line[name] for name in CSV_COLUMNS[4:]}})
        for tax in snapshot["taxes"]:
            writer.writerow(
                {
                    **invoice,
                    "kind": "tax",
                    "quantity": tax["base"],
                    "amount": tax["amount"],
                    "tax_category": tax["category"],
                    "tax_rate": tax["rate"],
                }
            )
    return buffer.getvalue().encode()
