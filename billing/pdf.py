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
- Tables are drawn here rather than with fpdf2's `table()`, which lays every cell out with
  `multi_cell` twice (seconds for a 1000-line invoice): each cell's text is wrapped once
  (`_wrap` breaks lines where `multi_cell` would, from character widths measured once per
  font) and its lines are placed with `text()` where `table()` placed them. A row that does
  not fit goes to the next page, under the headings again.
- Fonts (most of the time of a short document went there: fpdf2's `add_font` parses each TTF,
  about 25 ms, and `output` subsets the whole 6,000-glyph font, about 20 ms). Each style is
  parsed once per process (`_Face`) and every document gets its own copy of the parse
  (`_Face.font_for`): what fpdf2 only reads (character map, glyph ids, metrics) is shared,
  what it changes per document (the glyphs used, the widths looked up, the font descriptor) is
  fresh. The fontTools font is never shared, since `output` subsets it in place: each document
  opens its own from bytes at output time (`_Embedding`), from a "working font" when it has
  every glyph the document used — the face subset once to the scripts invoices are written
  in, with fpdf2's options and the glyph names kept — else from the whole file. Subsetting
  either gives the same bytes: a subset keeps the glyphs chosen, in the font's order, and the
  working font's only other changes are the ones fpdf2's own subsetting makes. The first PDF
  of a process pays for the parse and the working font (about 130 ms).
  `tests/billing/test_pdf_fast_path.py` pins the output to that of fpdf2's `add_font` and
  `output` per document, byte for byte.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, NamedTuple

from fontTools import subset
from fontTools.ttLib import TTFont
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont
from fpdf.line_break import BREAKING_SPACE_SYMBOLS_STR, NBSP, SOFT_HYPHEN
from fpdf.output import OutputProducer

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


class Column(NamedTuple):
    """A column of a table: its heading, width and how its text aligns."""

    heading: str
    width: float  # mm
    align: str  # "L" or "R"
    amounts: bool = False  # in the document's currency, which the heading then names


LINE_COLUMNS = (
    Column("#", 7, "R"),
    Column("Description", 69, "L"),
    Column("Service days", 36, "L"),
    Column("Quantity", 20, "R"),
    Column("Unit price", 15, "R"),
    Column("VAT", 12, "L"),
    Column("Amount", 21, "R", amounts=True),
)
TAX_COLUMNS = (
    Column("VAT category", 70, "L"),
    Column("Rate", 30, "R"),
    Column("Base", 40, "R", amounts=True),
    Column("VAT amount", 40, "R", amounts=True),
)
TABLE_FONT_SIZE = 8  # pt
TABLE_LINE_HEIGHT = 4.5  # mm, a line of text in a cell
TABLE_PADDING = 1.0  # mm, around a cell's text
TOLERANCE = 1e-9  # fpdf2's, when it compares a line's width with the room for it
BREAKING_SPACES = frozenset(BREAKING_SPACE_SYMBOLS_STR)


FACES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}  # style: file
# What invoices are written in: Latin with every accent, IPA, Greek and Cyrillic, their
# extended blocks, punctuation, currency and letterlike symbols (first and last code point).
WORKING_RANGES = ((0x0000, 0x052F), (0x1E00, 0x214F))
# fpdf2's subsetting options (`OutputProducer._add_fonts`): the working font is subset with
# them too, so that fpdf2's subsetting of it finds nothing more to drop or to change.
SUBSET_DROPPED_TABLES = (
    *("FFTM", "GDEF", "GPOS", "GSUB", "MATH", "hdmx", "meta", "sbix"),
    *("CBDT", "CBLC", "EBDT", "EBLC", "EBSC", "SVG ", "CPAL", "COLR"),
)


class _Face:
    """A style of the font, parsed once per process by fpdf2's own `add_font`; documents get
    copies of the parse (`font_for`) and their glyphs from `source` at output time."""

    def __init__(self, style: str, file: Path) -> None:
        scratch = FPDF()
        scratch.add_font(FONT, style, file)
        (parsed,) = scratch.fonts.values()
        # A colour font would be drawn from its fontTools font, which is not copied here.
        assert isinstance(parsed, TTFFont) and parsed.color_font is None
        self.parsed = parsed
        self.data = file.read_bytes()
        self.working, self.working_glyphs = self._subset_to_working_ranges(parsed.ttfont)
        parsed.close()  # its fontTools font is subset now, and never given to a document

    def font_for(self, pdf: FPDF) -> TTFFont:
        """A copy of the parse for `pdf`, as `add_font` would have made it. Shared, read only:
        the character map, glyph ids, names and metrics. Fresh: the font's number in `pdf`, the
        widths (a `defaultdict`, which grows when a character it lacks is measured), the
        descriptor (`output` names it and gives it its object id and the font stream), the map
        of glyphs used, the missing glyphs, and the fontTools font (`output` subsets it). As
        fpdf2 2.8's `TTFFont` has them; `test_pdf_fast_path.py` tells if that changes."""
        font = copy.copy(self.parsed)
        font.i = len(pdf.fonts) + 1
        font.cw = self.parsed.cw.copy()
        font.desc = copy.copy(self.parsed.desc)
        font.subset = SubsetMap(font)
        font.missing_glyphs = []
        font.biggest_size_pt = 0
        font.ttfont = self._open(self.data)  # until `_Embedding` puts the one to subset
        return font

    def source(self, glyph_names: Sequence[str]) -> TTFont:
        """A fresh font for `output` to subset to `glyph_names`: the working font when it has
        them all (a third of the glyphs: it takes half the time), else the whole file."""
        if self.working_glyphs.issuperset(glyph_names):
            return self._open(self.working)
        return self._open(self.data)

    @staticmethod
    def _open(data: bytes) -> TTFont:
        """Opened as `TTFFont` opens a font file (the timestamp is the file's, as written)."""
        return TTFont(BytesIO(data), recalcTimestamp=False, lazy=True)

    @staticmethod
    def _subset_to_working_ranges(font: TTFont) -> tuple[bytes, frozenset[str]]:
        """`font` (fpdf2's parse of the file, whose tables are read already) subset in place to
        `WORKING_RANGES` with fpdf2's options, glyph names kept (fpdf2 subsets by glyph name),
        and saved with its glyphs and bounds as the file has them: `output` recompiles the
        glyphs it keeps and recomputes the bounds, as it does from the file. Returns the bytes
        and the names of the glyphs kept."""
        options = subset.Options(notdef_outline=True, recommended_glyphs=True, glyph_names=True)
        options.drop_tables += SUBSET_DROPPED_TABLES
        subsetter = subset.Subsetter(options)
        subsetter.populate(
            unicodes=[
                code
                for code in font.getBestCmap()
                if any(first <= code <= last for first, last in WORKING_RANGES)
            ]
        )
        subsetter.subset(font)
        font.recalcBBoxes = False
        working = BytesIO()
        font.save(working)
        return working.getvalue(), frozenset(font.getGlyphOrder())


@functools.cache
def _faces() -> dict[str, _Face]:
    """Each style of the font (fpdf2's key for it: the family and the style) and its face."""
    return {f"{FONT}{style}": _Face(style, FONTS / file) for style, file in FACES.items()}


@functools.cache
def _glyphs() -> frozenset[int]:
    """The code points the font can draw."""
    return frozenset(_faces()[FONT].parsed.cmap)


def printable(text: str) -> str:
    """`text` with what the font cannot draw replaced by "?" (line breaks kept)."""
    glyphs = _glyphs()
    if glyphs.issuperset(map(ord, text)):
        return text
    return "".join(c if c == "\n" or ord(c) in glyphs else MISSING for c in text)


class _Embedding(OutputProducer):
    """fpdf2's output, each of our fonts subset from the `source` its face picks for the glyphs
    the document used: they are all known here, the last page's footer and the page count
    included, which `FPDF.output` writes just before."""

    def bufferize(self) -> bytearray:
        faces = _faces()
        for key, font in self.fpdf.fonts.items():
            if key in faces and isinstance(font, TTFFont):
                font.ttfont = faces[key].source(font.subset.get_all_glyph_names())
        return super().bufferize()


class _Document(FPDF):
    """An A4 page with the document's number and the page count in the footer."""

    def __init__(self, reference: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.reference = reference
        self.add_fonts()
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(auto=True, margin=MARGIN + 5)

    def add_fonts(self) -> None:
        """The regular and bold faces, copies of the parse of each (what `add_font` does for
        a file, without parsing it again)."""
        for key, face in _faces().items():
            self.fonts[key] = face.font_for(self)

    def to_bytes(self) -> bytes:
        """The PDF, its fonts subset as `_Embedding` does."""
        return bytes(self.output(output_producer_class=_Embedding))

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


class _Widths(dict[str, float]):
    """Widths of texts in the current font: each character is measured once (a call to
    `FPDF.get_string_width` costs about as much for one character as for a line) and a text is
    as wide as its characters together, which is how fpdf2 adds them up too (no kerning, no
    character spacing). `font` is the font measured, current whenever a character is."""

    def __init__(self, pdf: FPDF) -> None:
        super().__init__()
        self.pdf = pdf
        self.font = (pdf.font_family, pdf.font_style, pdf.font_size_pt)

    def __missing__(self, char: str) -> float:
        pdf = self.pdf
        assert (pdf.font_family, pdf.font_style, pdf.font_size_pt) == self.font
        width = self[char] = pdf.get_string_width(char)
        return width

    def of(self, text: str) -> float:
        return sum(self[char] for char in text)


def _wrap(text: str, width: float, widths: _Widths) -> list[str]:
    """`text` in lines no wider than `width`, broken where fpdf2's `multi_cell` breaks it: at
    each "\n", else at the last space that fits (which is dropped), and inside a word only when
    the word alone is wider than the line (the rest goes on, nothing is lost). Soft hyphens are
    not printed (`multi_cell` prints one only where it breaks there, which this never does)."""
    lines = []
    for paragraph in text.replace("\r", "").replace(SOFT_HYPHEN, "").split("\n"):
        line, used, space = "", 0.0, -1  # `space`: where the last space in `line` is
        for char in paragraph:
            advance = widths[char]
            if used + advance - width > TOLERANCE:
                if char in BREAKING_SPACES:
                    lines.append(line)
                    line, used, space = "", 0.0, -1
                    continue
                if space >= 0:
                    lines.append(line[:space])
                    line, space = line[space + 1 :], -1
                    used = widths.of(line)
                if line and used + advance - width > TOLERANCE:
                    lines.append(line)
                    line, used = "", 0.0
            if char in BREAKING_SPACES:
                space = len(line)
            line += char
            used += advance
        lines.append(line)
    if not lines[-1]:  # nothing after the last "\n", or no text at all
        lines.pop()
    return [line.replace(NBSP, " ") for line in lines]


def _table(
    pdf: FPDF, columns: Sequence[Column], rows: Sequence[Sequence[str]], currency: str
) -> None:
    """Headings and rows, a rule under each row but the last, each cell's text wrapped to its
    column and centred in the row's height. A row that does not fit on the page goes to the next
    one, under the headings again; the headings never stay alone at the bottom of a page."""
    titles = [f"{c.heading} ({currency})" if c.amounts else c.heading for c in columns]
    pdf.set_font(FONT, style="B", size=TABLE_FONT_SIZE)
    bold = _Widths(pdf)
    headings = _cells(columns, titles, bold)
    pdf.set_font(FONT, size=TABLE_FONT_SIZE)
    regular = _Widths(pdf)
    body = [_cells(columns, [printable(text) for text in texts], regular) for texts in rows]
    if body and pdf.will_page_break(_height(headings) + _height(body[0])):
        pdf.add_page()
    _row(pdf, columns, headings, bold, rule=bool(body))
    for index, cells in enumerate(body):
        if pdf.will_page_break(_height(cells)):
            pdf.add_page()
            _row(pdf, columns, headings, bold, rule=True)
        _row(pdf, columns, cells, regular, rule=index < len(body) - 1)


def _cells(columns: Sequence[Column], texts: Sequence[str], widths: _Widths) -> list[list[str]]:
    """A row's texts, each in the lines it takes in its column."""
    return [
        _wrap(text, column.width - 2 * TABLE_PADDING, widths)
        for column, text in zip(columns, texts, strict=True)
    ]


def _height(cells: Sequence[Sequence[str]]) -> float:
    return max(1, *map(len, cells)) * TABLE_LINE_HEIGHT + 2 * TABLE_PADDING


def _row(
    pdf: FPDF,
    columns: Sequence[Column],
    cells: Sequence[Sequence[str]],
    widths: _Widths,
    *,
    rule: bool,
) -> None:
    """One row of wrapped cells at the current position, in the font `widths` measured, with a
    rule under it if asked; the position moves to the start of the next row."""
    family, style, size = widths.font
    pdf.set_font(family, style=style, size=size)
    top, height, x = pdf.get_y(), _height(cells), pdf.l_margin
    for column, lines in zip(columns, cells, strict=True):
        # The lines are centred in the row, each baseline where `cell()` would put it.
        y = top + (height - (len(lines) - 1) * TABLE_LINE_HEIGHT) / 2 + 0.3 * pdf.font_size
        for line in lines:
            if column.align == "R":
                pdf.text(x + column.width - TABLE_PADDING - widths.of(line), y, line)
            else:
                pdf.text(x + TABLE_PADDING, y, line)
            y += TABLE_LINE_HEIGHT
        x += column.width
    if rule:
        pdf.line(pdf.l_margin, top + height, x, top + height)
    pdf.set_xy(pdf.l_margin, top + height)


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
    _table(pdf, LINE_COLUMNS, [_line_row(snapshot, line) for line in snapshot["lines"]], currency)
    _heading(pdf, "VAT breakdown")
    _table(pdf, TAX_COLUMNS, [_tax_row(tax) for tax in snapshot["taxes"]], currency)
    _totals(pdf, snapshot)
    return pdf.to_bytes()
