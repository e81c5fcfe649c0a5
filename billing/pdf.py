"""The readable PDF of an issued invoice or credit note (A4, fpdf2), made from its frozen
snapshot only, so the same snapshot always gives the same bytes.

- Byte-identical output: the PDF creation date is the document's `issued_at`, and the file
  identifier fpdf2 writes is a hash of the content and that date; nothing random or read from
  the clock gets in.
- Font: DejaVu Sans, embedded (subset) from the copy shipped in `billing/fonts/` (the same
  file everywhere, so the bytes do not depend on the host). It covers Latin with every
  European accent, Greek and Cyrillic, so "Łódź", "Αθήνα" and "София" print as written.
  Characters it has no glyph for (Chinese, Japanese, …) print as "?" (`printable`); the
  exact names are in the JSON and CII exports of the same snapshot.
- Content: title, number, issue date and period; for a credit note the invoice it corrects
  and why; seller and buyer; one table row per line (item name as the CII names it, service
  days, quantity, unit price, VAT, amount), repeated headings on every page; the VAT
  breakdown per category; subtotal, VAT and total in the currency. Every figure is the
  snapshot's string, as issued.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fontTools.ttLib import TTFont
from fpdf import FPDF
from fpdf.fonts import FontFace

from billing.cii import (
    CREDIT_NOTE,
    INVOICE,
    credited_line_note,
    days_covered,
    document_type,
    instant,
    item_name,
    present,
)
from billing.invoicing import TAX_CATEGORIES

TITLES = {INVOICE: "Invoice", CREDIT_NOTE: "Credit note"}
FONTS = Path(__file__).resolve().parent / "fonts"
MISSING = "?"
FONT = "dejavu"
MARGIN = 15.0
LINE_COLUMNS = ("#", "Description", "Service days", "Quantity", "Unit price", "VAT", "Amount")
LINE_WIDTHS = (7, 69, 36, 20, 15, 12, 21)
LINE_ALIGN = ("RIGHT", "LEFT", "LEFT", "RIGHT", "RIGHT", "LEFT", "RIGHT")
TAX_COLUMNS = ("VAT category", "Rate", "Base", "VAT amount")
TAX_WIDTHS = (70, 30, 40, 40)
TAX_ALIGN = ("LEFT", "RIGHT", "RIGHT", "RIGHT")
BOLD = FontFace(emphasis="BOLD")


@functools.cache
def _glyphs() -> frozenset[int]:
    """The code points the font can draw."""
    with TTFont(FONTS / "DejaVuSans.ttf", lazy=True) as font:
        return frozenset(font.getBestCmap())


def printable(text: str) -> str:
    """`text` with what the font cannot draw replaced by "?" (line breaks kept)."""
    glyphs = _glyphs()
    return "".join(c if c == "\n" or ord(c) in glyphs else MISSING for c in text)


class _Document(FPDF):
    """An A4 page with the document's number and the page count in the footer."""

    def __init__(self, reference: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.reference = reference
        self.add_font(FONT, "", FONTS / "DejaVuSans.ttf")
        self.add_font(FONT, "B", FONTS / "DejaVuSans-Bold.ttf")
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(auto=True, margin=MARGIN + 5)

    def footer(self) -> None:
        self.set_y(-MARGIN)
        self.set_font(FONT, size=8)
        self.cell(0, 5, f"{self.reference} · page {self.page_no()}/{{nb}}", align="C")


def _day(value: str) -> str:
    return instant(value).date().isoformat()


def _days(start: str, end: str) -> str:
    first, last = days_covered(start, end)
    return first.isoformat() if first == last else f"{first.isoformat()} – {last.isoformat()}"


def _field(pdf: FPDF, label: str, value: str) -> None:
    """A label and its value, the value wrapping under itself."""
    pdf.set_font(FONT, style="B", size=9)
    pdf.cell(32, 5, label)
    pdf.set_font(FONT, size=9)
    pdf.multi_cell(0, 5, printable(value), new_x="LMARGIN", new_y="NEXT")


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(4)
    pdf.set_font(FONT, style="B", size=11)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")


def _header(pdf: FPDF, snapshot: Mapping[str, Any], title: str) -> None:
    pdf.set_font(FONT, style="B", size=18)
    pdf.cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    _field(pdf, "Number", snapshot["number"])
    _field(pdf, "Issue date", _day(snapshot["issued_at"]))
    days = _days(snapshot["period_start"], snapshot["period_end"])
    _field(pdf, "Period", f"{snapshot['period']} ({days})")
    if snapshot.get("due_date"):
        _field(pdf, "Due date", f"{snapshot['due_date']} ({snapshot['payment_terms']})")
    _field(pdf, "Currency", snapshot["currency"])
    if document_type(snapshot) == CREDIT_NOTE:
        corrects = snapshot["corrects"]
        _field(pdf, "Corrects", f"invoice {corrects['number']} of {_day(corrects['issued_at'])}")
        if present(snapshot.get("reason")):
            _field(pdf, "Reason", snapshot["reason"])


def _party_lines(name: str, party: Mapping[str, Any], trading_name: str | None) -> list[str]:
    lines = [name]
    if trading_name and trading_name != name:
        lines.append(f"({trading_name})")
    if present(party.get("address")):
        lines.append(party["address"])
    lines.append(f"Country: {party['country']}")
    if present(party.get("vat_id")):
        lines.append(f"VAT id: {party['vat_id']}")
    return lines


def _wrapped_lines(pdf: FPDF, width: float, text: str) -> int:
    """How many lines `text` takes in a `width` wide multi-cell, in the current font."""
    lines = pdf.multi_cell(width, 5, text, dry_run=True, output="LINES")
    assert isinstance(lines, list)
    return len(lines)


def _parties(pdf: FPDF, snapshot: Mapping[str, Any]) -> None:
    """Seller and buyer side by side; the page goes on under the taller of the two."""
    seller, buyer = snapshot["seller"], snapshot["buyer"]
    blocks = (
        ("Seller", printable("\n".join(_party_lines(seller["name"], seller, None)))),
        (
            "Buyer",
            printable("\n".join(_party_lines(buyer["legal_name"], buyer, buyer.get("name")))),
        ),
    )
    width = (pdf.epw - 10) / 2
    pdf.set_font(FONT, size=9)
    tallest = max(_wrapped_lines(pdf, width, text) for _, text in blocks)
    pdf.ln(4)
    if pdf.get_y() + 7 + 5 * tallest > pdf.page_break_trigger:  # keep both blocks on one page
        pdf.add_page()
    top = bottom = pdf.get_y()
    for index, (label, text) in enumerate(blocks):
        pdf.set_xy(pdf.l_margin + index * (width + 10), top)
        pdf.set_font(FONT, style="B", size=11)
        pdf.cell(width, 7, label, new_x="LEFT", new_y="NEXT")
        pdf.set_font(FONT, size=9)
        pdf.multi_cell(width, 5, text, new_x="LEFT", new_y="NEXT")
        bottom = max(bottom, pdf.get_y())
    pdf.set_xy(pdf.l_margin, bottom)


def _table(
    pdf: FPDF,
    headings: Sequence[str],
    widths: Sequence[int],
    align: Sequence[str],
    rows: Sequence[Sequence[str]],
) -> None:
    pdf.set_font(FONT, size=8)
    with pdf.table(
        col_widths=tuple(widths),
        width=sum(widths),
        align="LEFT",
        text_align=tuple(align),
        headings_style=BOLD,
        borders_layout="HORIZONTAL_LINES",
        line_height=4.5,
        padding=1,
        repeat_headings=1,
    ) as table:
        table.row(headings)
        for cells in rows:
            table.row([printable(cell) for cell in cells])


def _line_row(snapshot: Mapping[str, Any], line: Mapping[str, Any]) -> list[str]:
    description = item_name(line)
    note = credited_line_note(snapshot, line)
    if note:
        description += f"\n{note}"
    return [
        str(line["position"]),
        description,
        _days(line["service_start"], line["service_end"]),
        line["quantity"],
        line["unit_price"],
        f"{line['tax_category']} {line['tax_rate']} %",
        line["amount"],
    ]


def _tax_row(tax: Mapping[str, Any]) -> list[str]:
    category = tax["category"]
    label = TAX_CATEGORIES.get(category)
    return [
        f"{category} – {label}" if label else category,
        f"{tax['rate']} %",
        tax["base"],
        tax["amount"],
    ]


def _totals(pdf: FPDF, snapshot: Mapping[str, Any]) -> None:
    """Subtotal, VAT and total, right-aligned under the tables."""
    currency = snapshot["currency"]
    rows = (
        ("Subtotal", snapshot["subtotal"], ""),
        ("VAT", snapshot["tax"], ""),
        ("Total", snapshot["total"], "B"),
    )
    pdf.ln(4)
    for label, amount, style in rows:
        pdf.set_x(pdf.l_margin + pdf.epw - 80)
        pdf.set_font(FONT, style=style, size=10 if style else 9)
        pdf.cell(40, 6, label)
        pdf.cell(40, 6, f"{amount} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")


def to_pdf(snapshot: Mapping[str, Any]) -> bytes:
    """The readable A4 PDF of an issued invoice or credit note, byte-identical per snapshot."""
    title = TITLES[document_type(snapshot)]
    pdf = _Document(printable(f"{title} {snapshot['number']}"))
    pdf.set_creation_date(instant(snapshot["issued_at"]))
    pdf.set_title(f"{title} {snapshot['number']}")
    pdf.set_author(snapshot["seller"]["name"])
    pdf.set_lang("en")
    pdf.add_page()
    _header(pdf, snapshot, title)
    _parties(pdf, snapshot)
    currency = snapshot["currency"]
    _heading(pdf, "Lines")
    headings = [*LINE_COLUMNS[:-1], f"{LINE_COLUMNS[-1]} ({currency})"]
    lines = [_line_row(snapshot, line) for line in snapshot["lines"]]
    _table(pdf, headings, LINE_WIDTHS, LINE_ALIGN, lines)
    _heading(pdf, "VAT breakdown")
    taxes = [_tax_row(tax) for tax in snapshot["taxes"]]
    _table(
        pdf,
        [*TAX_COLUMNS[:2], *(f"{h} ({currency})" for h in TAX_COLUMNS[2:])],
        TAX_WIDTHS,
        TAX_ALIGN,
        taxes,
    )
    _totals(pdf, snapshot)
    return bytes(pdf.output())
