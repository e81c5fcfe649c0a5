"""The readable PDF of an issued invoice or credit note (A4, PDF/A-3B, fpdf2), made from its
`Document` only and written in the document's language, so the same document always gives the
same bytes. `billing.exports` attaches the CII to it to make the Factur-X.

- PDF/A-3B (fpdf2's compliance mode: embedded fonts only, an sRGB output intent, XMP
  metadata). fpdf2 would stamp the XMP's modification date from the clock: the XMP is written
  here (`_xmp`) with the document's `issued_at` as every date.
- Byte-identical output: the PDF creation date is the document's `issued_at`, and the file
  identifier fpdf2 writes is a hash of the content and that date; nothing random or read from
  the clock gets in.
- Language (`document.language`): every word, amount, quantity, rate and date is written as
  that language writes it (`billing.labels`): « Facture », « Total TTC », 1 234,56 €.
- Font: DejaVu Sans, embedded (subset) from the copy shipped in `billing/fonts/` (the same
  file everywhere, so the bytes do not depend on the host). It covers Latin with every
  European accent, Greek and Cyrillic, and the narrow and plain no-break spaces French
  figures are written with, so "Łódź", "Αθήνα", "София" and "1 234,56 €" print as written.
  Characters it has no glyph for (Chinese, Japanese, …) print as "?" (`printable`); the
  exact names are in the JSON and CII exports of the same document.
- Content: title, number, issue date, period, due date and payment terms, the buyer's
  references (BT-10, BT-13); for a credit note the invoice it corrects and why; seller and
  buyer with their address, legal identifier (SIRET) and VAT number; one table row per line
  (the resource in words, what it counts and when, service days, quantity, unit price, VAT,
  amount), the lines grouped under a small heading per (buyer reference, purchase order) when
  they carry different ones; the VAT breakdown per category; subtotal, VAT and total; the
  seller's legal mentions. Every figure is the document's, as issued.
- Pages: the table headings repeat on every page, every footer says "page k/N", and the VAT
  breakdown and totals are one block that never splits: measured first, it starts a page when
  it would not fit in what is left of the current one.
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
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from html import escape
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

from fontTools import subset
from fontTools.ttLib import TTFont
from fpdf import FPDF
from fpdf.fonts import SubsetMap, TTFFont
from fpdf.line_break import BREAKING_SPACE_SYMBOLS_STR, NBSP, SOFT_HYPHEN
from fpdf.output import OutputProducer

from billing import labels
from billing.document import ADJUSTMENT, Document, Line, Party, TaxRow, days_covered

FONTS = Path(__file__).resolve().parent / "fonts"
MISSING = "?"
FONT = "dejavu"
MARGIN = 15.0
COMPLIANCE = "PDF/A-3B"  # what Factur-X requires of the PDF the CII is attached to


class Column(NamedTuple):
    """A column of a table: its heading (a key of `labels.WORDS`), width and alignment."""

    heading: str
    width: float  # mm
    align: str  # "L" or "R"


LINE_COLUMNS = (
    Column("position", 8, "R"),
    Column("description", 61, "L"),
    Column("service_days", 30, "L"),
    Column("quantity", 22, "R"),
    Column("unit_price", 20, "R"),
    Column("vat", 14, "R"),
    Column("amount", 25, "R"),
)
TAX_COLUMNS = (
    Column("vat_category", 80, "L"),
    Column("rate", 25, "R"),
    Column("base", 40, "R"),
    Column("vat_amount", 35, "R"),
)
TABLE_FONT_SIZE = 8  # pt
TABLE_LINE_HEIGHT = 4.5  # mm, a line of text in a cell
TABLE_PADDING = 1.0  # mm, around a cell's text
TOLERANCE = 1e-9  # fpdf2's, when it compares a line's width with the room for it
BREAKING_SPACES = frozenset(BREAKING_SPACE_SYMBOLS_STR)
HEADING_HEIGHT = 4 + 7  # mm, `_heading`: the space above it and its line
TOTALS_HEIGHT = 4 + 3 * 6  # mm, `_totals`: the space above it and its three lines
MENTION_LINE_HEIGHT = 4  # mm
FIELD_LABEL_WIDTH = 45  # mm, the header's labels: « Numéro d'engagement » in bold is 41

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
    """An A4 PDF/A-3B page with the document's title and number and the page count in the
    footer, in the document's language."""

    def __init__(self, reference: str, language: str) -> None:
        super().__init__(
            orientation="portrait", unit="mm", format="A4", enforce_compliance=COMPLIANCE
        )
        self.reference = reference
        self.words = labels.words(language)
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
        page = self.words["page"].format(page=self.page_no(), pages="{nb}")
        self.cell(0, 5, f"{self.reference} · {page}", align="C")


def _xmp(title: str, author: str, issued_at: datetime) -> str:
    """The XMP metadata of a PDF/A-3B document: what fpdf2 writes in its PDF/A mode, except
    that every date is the document's issue (fpdf2 takes the modification date from the
    clock), so that the same document gives the same bytes. In PDF/A mode fpdf2 writes no
    document information dictionary: the title and author are here."""
    when = escape(issued_at.isoformat(timespec="seconds"))
    return "\n".join(
        (
            '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="fpdf2">',
            '  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"',
            '    xmlns:dc="http://purl.org/dc/elements/1.1/"',
            '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"',
            '    xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/">',
            '    <rdf:Description rdf:about=""',
            f'        xmp:CreateDate="{when}"',
            f'        xmp:ModifyDate="{when}"',
            f'        xmp:MetadataDate="{when}">',
            "      <pdfaid:part>3</pdfaid:part>",
            "      <pdfaid:conformance>B</pdfaid:conformance>",
            "      <dc:title><rdf:Alt>",
            f'        <rdf:li xml:lang="x-default">{escape(title)}</rdf:li>',
            "      </rdf:Alt></dc:title>",
            f"      <dc:creator><rdf:Seq><rdf:li>{escape(author)}</rdf:li></rdf:Seq></dc:creator>",
            "    </rdf:Description>",
            "  </rdf:RDF>",
            "</x:xmpmeta>",
        )
    )


def title(document: Document) -> str:
    """How the document names itself, in its language: "Facture 2030-000001", "Credit note
    CN-2030-000001" (the PDF's title and footer, and the Factur-X metadata)."""
    return f"{labels.words(document.language)[document.document_type]} {document.number}"


def _field(pdf: FPDF, label: str, value: str) -> None:
    """A label and its value, the value wrapping under itself."""
    pdf.set_font(FONT, style="B", size=9)
    pdf.cell(FIELD_LABEL_WIDTH, 5, label)
    pdf.set_font(FONT, size=9)
    pdf.multi_cell(0, 5, printable(value), new_x="LMARGIN", new_y="NEXT")


def _heading(pdf: FPDF, text: str) -> None:
    """A section's heading (`HEADING_HEIGHT` high)."""
    pdf.ln(4)
    pdf.set_font(FONT, style="B", size=11)
    pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")


def _header(pdf: _Document, document: Document) -> None:
    words, language = pdf.words, document.language
    pdf.set_font(FONT, style="B", size=18)
    pdf.cell(0, 10, words[document.document_type], new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    _field(pdf, words["number"], document.number)
    _field(pdf, words["issue_date"], labels.day(document.issued_at.date(), language))
    first, last = days_covered(document.period_start, document.period_end)
    days = labels.days(first, last, language)
    _field(pdf, words["period"], f"{labels.month(document.period, language)} ({days})")
    if document.due_date is not None:
        due = labels.day(document.due_date, language)
        terms = f" ({document.payment_terms})" if document.payment_terms else ""
        _field(pdf, words["due_date"], due + terms)
    elif document.payment_terms:
        _field(pdf, words["payment_terms"], document.payment_terms)
    _field(pdf, words["currency"], document.currency)
    if document.buyer_reference:
        _field(pdf, words["buyer_reference"], document.buyer_reference)
    if document.purchase_order_reference:
        _field(pdf, words["purchase_order_reference"], document.purchase_order_reference)
    if document.corrects is not None:
        corrected = words["corrected_invoice"].format(
            number=document.corrects.number,
            date=labels.day(document.corrects.issued_at.date(), language),
        )
        _field(pdf, words["corrects"], corrected)
    if document.reason and document.reason.strip():
        _field(pdf, words["reason"], document.reason)


def _party_lines(party: Party, words: Mapping[str, str], language: str) -> list[str]:
    """A party as it reads on the document: legal name (and the name it goes by), address,
    country, legal identifier and VAT number."""
    lines = [party.name]
    if party.trading_name and party.trading_name != party.name:
        lines.append(f"({party.trading_name})")
    address = party.address
    lines.extend(line for line in address.lines if line.strip())
    place = " ".join(part for part in (address.post_code, address.city) if part)
    if place:
        lines.append(place)
    lines.append(labels.country(address.country, language))
    if party.legal_id is not None:
        name = labels.legal_id_label(party.legal_id, language)
        lines.append(f"{name} {party.legal_id.value}")
    if party.vat_id:
        lines.append(f"{words['vat_id']} {party.vat_id}")
    return lines


def _wrapped_lines(pdf: FPDF, width: float, text: str) -> int:
    """How many lines `text` takes in a `width` wide multi-cell, in the current font."""
    lines = pdf.multi_cell(width, 5, text, dry_run=True, output="LINES")
    assert isinstance(lines, list)
    return len(lines)


def _parties(pdf: _Document, document: Document) -> None:
    """Seller and buyer side by side; the page goes on under the taller of the two."""
    words, language = pdf.words, document.language
    blocks = [
        (words[role], printable("\n".join(_party_lines(party, words, language))))
        for role, party in (("seller", document.seller), ("buyer", document.buyer))
    ]
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


class _Section(NamedTuple):
    """A heading across a table, over the rows that follow it (a group of lines)."""

    text: str


class _Row(NamedTuple):
    """A row laid out: its columns, each cell's lines, and the widths of the font it is in."""

    columns: Sequence[Column]
    cells: list[list[str]]
    widths: _Widths
    section: bool = False

    @property
    def height(self) -> float:
        return max(1, *map(len, self.cells)) * TABLE_LINE_HEIGHT + 2 * TABLE_PADDING


class _Table:
    """A table laid out for `pdf` (headings in bold, sections in bold across every column,
    rows in the regular face), every cell's text wrapped to its column once: its height is
    known before it is drawn."""

    def __init__(
        self, pdf: _Document, columns: Sequence[Column], rows: Sequence[Sequence[str] | _Section]
    ) -> None:
        across = (Column("", sum(column.width for column in columns), "L"),)
        pdf.set_font(FONT, style="B", size=TABLE_FONT_SIZE)
        bold = _Widths(pdf)
        titles = [pdf.words[column.heading] for column in columns]
        self.headings = _Row(columns, _cells(columns, titles, bold), bold)
        sections = {
            index: _Row(across, _cells(across, [printable(row.text)], bold), bold, section=True)
            for index, row in enumerate(rows)
            if isinstance(row, _Section)
        }
        pdf.set_font(FONT, size=TABLE_FONT_SIZE)
        regular = _Widths(pdf)
        self.body = [
            sections[index]
            if isinstance(row, _Section)
            else _Row(columns, _cells(columns, [printable(text) for text in row], regular), regular)
            for index, row in enumerate(rows)
        ]

    @property
    def height(self) -> float:
        return self.headings.height + sum(row.height for row in self.body)

    def draw(self, pdf: FPDF) -> None:
        """Headings and rows, a rule under each row but the last (and under no section). A row
        that does not fit on the page goes to the next one, under the headings again; the
        headings never stay alone at the bottom of a page, nor does a section's heading."""
        body = self.body
        if body and pdf.will_page_break(self.headings.height + self._kept(0)):
            pdf.add_page()
        _draw(pdf, self.headings, rule=bool(body))
        for index, row in enumerate(body):
            if pdf.will_page_break(self._kept(index)):
                pdf.add_page()
                _draw(pdf, self.headings, rule=True)
            _draw(pdf, row, rule=not row.section and index < len(body) - 1)

    def _kept(self, index: int) -> float:
        """The height of row `index` and, for a section, of the row it heads: what must fit."""
        height = self.body[index].height
        if self.body[index].section and index + 1 < len(self.body):
            height += self.body[index + 1].height
        return height


def _cells(columns: Sequence[Column], texts: Sequence[str], widths: _Widths) -> list[list[str]]:
    """A row's texts, each in the lines it takes in its column."""
    return [
        _wrap(text, column.width - 2 * TABLE_PADDING, widths)
        for column, text in zip(columns, texts, strict=True)
    ]


def _draw(pdf: FPDF, row: _Row, *, rule: bool) -> None:
    """One row of wrapped cells at the current position, in the font its widths measured,
    with a rule under it if asked; the position moves to the start of the next row."""
    family, style, size = row.widths.font
    pdf.set_font(family, style=style, size=size)
    top, height, x = pdf.get_y(), row.height, pdf.l_margin
    for column, lines in zip(row.columns, row.cells, strict=True):
        # The lines are centred in the row, each baseline where `cell()` would put it.
        y = top + (height - (len(lines) - 1) * TABLE_LINE_HEIGHT) / 2 + 0.3 * pdf.font_size
        for line in lines:
            if column.align == "R":
                pdf.text(x + column.width - TABLE_PADDING - row.widths.of(line), y, line)
            else:
                pdf.text(x + TABLE_PADDING, y, line)
            y += TABLE_LINE_HEIGHT
        x += column.width
    if rule:
        pdf.line(pdf.l_margin, top + height, x, top + height)
    pdf.set_xy(pdf.l_margin, top + height)


# Content ---------------------------------------------------------------------------------------


def _line_row(document: Document, line: Line, words: Mapping[str, str]) -> list[str]:
    """A line's cells: the resource in words, then what it counts and in which period (or
    which period an adjustment makes up for), then on a credit note the line it credits."""
    language, currency = document.language, document.currency
    month = labels.month(line.period, language)
    when = words["adjustment"].format(period=month) if line.kind == ADJUSTMENT else month
    description = f"{line.label}\n{labels.metric(line.metric, language)}, {when}"
    if line.credits_position is not None and document.corrects is not None:
        credited = words["credits_line"].format(
            position=line.credits_position, number=document.corrects.number
        )
        description += f"\n{credited}"
    return [
        str(line.position),
        description,
        labels.days(*days_covered(line.service_start, line.service_end), language),
        labels.quantity(line.quantity, language),
        labels.money(line.unit_price, currency, language),
        f"{line.tax_category} {labels.rate(line.tax_rate, language)}",
        labels.money(line.amount, currency, language),
    ]


def _references(buyer_reference: str | None, order: str | None, words: Mapping[str, str]) -> str:
    """The heading of a group of lines: the buyer's references they carry."""
    found = [
        f"{words[key]} {value}"
        for key, value in (
            ("buyer_reference", buyer_reference),
            ("purchase_order_reference", order),
        )
        if value
    ]
    return " · ".join(found) or words["no_reference"]


def _line_rows(document: Document, words: Mapping[str, str]) -> Iterator[Sequence[str] | _Section]:
    """The rows of the lines table: the lines in order, or, when they carry different buyer
    references or purchase orders, grouped by them (in order of first appearance) under a
    section heading per group."""
    groups: dict[tuple[str | None, str | None], list[Line]] = {}
    for line in document.lines:
        groups.setdefault((line.buyer_reference, line.purchase_order_reference), []).append(line)
    for (buyer_reference, order), lines in groups.items():
        if len(groups) > 1:
            yield _Section(_references(buyer_reference, order, words))
        for line in lines:
            yield _line_row(document, line, words)


def _tax_row(tax: TaxRow, document: Document) -> list[str]:
    """A VAT category's row; an exempt or reverse-charged one says why, with its VATEX code."""
    language, currency = document.language, document.currency
    name = labels.tax_category(tax.category, language)
    category = f"{tax.category} – {name}"
    reason = labels.exemption(tax.exemption_code, tax.exemption_reason, language)
    if reason == name:  # reverse charge: « Autoliquidation » says it already
        reason = None
    why = " ".join(part for part in (tax.exemption_code, reason) if part)
    return [
        f"{category}\n{why}" if why else category,
        labels.rate(tax.rate, language),
        labels.money(tax.base, currency, language),
        labels.money(tax.amount, currency, language),
    ]


def _totals(pdf: _Document, document: Document) -> None:
    """Subtotal, VAT and total, right-aligned under the tables (`TOTALS_HEIGHT` high)."""
    words = pdf.words
    rows = (
        (words["subtotal"], document.subtotal, ""),
        (words["vat"], document.tax, ""),
        (words["total"], document.total, "B"),
    )
    pdf.ln(4)
    for label, amount, style in rows:
        pdf.set_x(pdf.l_margin + pdf.epw - 90)
        pdf.set_font(FONT, style=style, size=10 if style else 9)
        pdf.cell(45, 6, label)
        shown = labels.money(amount, document.currency, document.language)
        pdf.cell(45, 6, shown, align="R", new_x="LMARGIN", new_y="NEXT")


def _closing(pdf: _Document, document: Document) -> None:
    """The VAT breakdown and the totals, one block that never splits across pages: when it
    does not fit in what is left of the page (and would fit on a page of its own), it starts
    the next one."""
    breakdown = _Table(pdf, TAX_COLUMNS, [_tax_row(tax, document) for tax in document.taxes])
    height = HEADING_HEIGHT + breakdown.height + TOTALS_HEIGHT
    if pdf.will_page_break(height) and height <= pdf.page_break_trigger - pdf.t_margin:
        pdf.add_page()
    _heading(pdf, pdf.words["vat_breakdown"])
    breakdown.draw(pdf)
    _totals(pdf, document)


def _mentions(pdf: FPDF, document: Document) -> None:
    """The seller's legal mentions (payment terms, late-payment penalties, …), at the end, in
    one block that never splits across pages."""
    if not document.legal_mentions:
        return
    pdf.ln(6)
    pdf.set_font(FONT, size=8)
    lines = sum(
        _wrapped_lines(pdf, pdf.epw, printable(mention)) for mention in document.legal_mentions
    )
    if pdf.will_page_break(lines * MENTION_LINE_HEIGHT):
        pdf.add_page()
    for mention in document.legal_mentions:
        pdf.multi_cell(0, MENTION_LINE_HEIGHT, printable(mention), new_x="LMARGIN", new_y="NEXT")


def to_pdf(document: Document) -> bytes:
    """The readable A4 PDF/A-3B of an issued invoice or credit note, in its language,
    byte-identical per document."""
    name, author = title(document), document.seller.name
    pdf = _Document(printable(name), document.language)
    pdf.set_creation_date(document.issued_at)
    pdf.set_title(name)
    pdf.set_author(author)
    pdf.set_lang(document.language)
    pdf.set_xmp_metadata(_xmp(name, author, document.issued_at))
    pdf.add_page()
    _header(pdf, document)
    _parties(pdf, document)
    _heading(pdf, pdf.words["lines"])
    _Table(pdf, LINE_COLUMNS, list(_line_rows(document, pdf.words))).draw(pdf)
    _closing(pdf, document)
    _mentions(pdf, document)
    return pdf.to_bytes()
