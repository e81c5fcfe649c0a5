"""The PDF's fast path — each font parsed once per process, each document's glyphs subset from
a working font when it has them all — gives the very bytes of the path it replaced: fpdf2's own
`add_font` of the files for every document, and `output` subsetting the whole font. Documents
rendered one after another in one process share no glyphs: each is as if it were alone."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from billing import pdf
from billing.document import Document
from tests.billing.test_pdf import BUYER, credit_note, invoice, long_invoice, yen_invoice

LATIN = "Agence nationale des données souveraines — Dvořák, Łódź, Œuvre €"
GREEK_CYRILLIC = "Δήμος Αθηναίων · Столична община София"
BEYOND_WORKING_FONT = "Հայաստան ∮ ⅓ ☺"  # Armenian and symbols: in the font, not in the working one
NO_GLYPH = "東京都庁"  # printed as "?"


class _Reference(pdf._Document):
    """The path replaced: fpdf2 parses each font file for the document and subsets the whole
    font when it writes the PDF."""

    def add_fonts(self) -> None:
        for style, file in pdf.FACES.items():
            self.add_font(pdf.FONT, style, pdf.FONTS / file)

    def to_bytes(self) -> bytes:
        return bytes(self.output())


def reference_pdf(document: Document) -> bytes:
    with mock.patch.object(pdf, "_Document", _Reference):
        return pdf.to_pdf(document)


def texts(content: bytes) -> list[str]:
    """The text of each page."""
    return [page.extract_text() for page in PdfReader(io.BytesIO(content)).pages]


def assert_as_reference(document: Document) -> None:
    fast, reference = pdf.to_pdf(document), reference_pdf(document)
    assert texts(fast) == texts(reference)  # the same pages, the same text on each
    assert fast == reference


def buyer_named(name: str) -> Document:
    return dataclasses.replace(invoice(), buyer=dataclasses.replace(BUYER, name=name))


DOCUMENTS: dict[str, Callable[[], Document]] = {
    "French invoice": invoice,
    "English invoice": lambda: invoice("en"),
    "credit note": credit_note,
    "yen invoice": yen_invoice,
    "four pages": lambda: long_invoice(30),
    "Greek and Cyrillic buyer": lambda: buyer_named(GREEK_CYRILLIC),
    "buyer beyond the working font": lambda: buyer_named(BEYOND_WORKING_FONT),
    "buyer without glyphs": lambda: buyer_named(NO_GLYPH),
}


@pytest.mark.parametrize("make", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_a_document_is_byte_for_byte_the_one_fpdf2_makes_alone(
    make: Callable[[], Document],
) -> None:
    assert_as_reference(make())


def test_documents_in_turn_each_embed_their_own_glyphs_only() -> None:
    """Bold and regular glyphs of one document never reach the next, nor go missing there."""
    names = (LATIN, GREEK_CYRILLIC, BEYOND_WORKING_FONT, NO_GLYPH, LATIN, GREEK_CYRILLIC)
    contents = [pdf.to_pdf(buyer_named(name)) for name in names]
    assert contents[:2] == contents[4:]
    for name, content in zip(names[:4], contents, strict=False):
        assert content == reference_pdf(buyer_named(name)), name
    for name, content in zip(names[:2], contents, strict=False):
        assert set(name.split()) <= set(texts(content)[0].split())


def test_the_working_font_serves_only_documents_whose_glyphs_it_has_all() -> None:
    face = pdf._faces()[pdf.FONT]

    def glyphs_in_source(text: str) -> int:
        return len(face.source([face.parsed.cmap[ord(c)] for c in text]).getGlyphOrder())

    whole = len(face._open(face.data).getGlyphOrder())
    assert glyphs_in_source(LATIN + GREEK_CYRILLIC) == len(face.working_glyphs) < whole
    assert glyphs_in_source(LATIN + BEYOND_WORKING_FONT) == whole


WORKING = st.characters(min_codepoint=0x20, max_codepoint=0x52F) | st.characters(
    min_codepoint=0x1E00, max_codepoint=0x214F
)
ANY = st.characters(min_codepoint=0x20, max_codepoint=0xFFFF, exclude_categories=("Cs",))


@settings(max_examples=4)
@given(names=st.lists(st.text(WORKING | ANY, min_size=1, max_size=40), min_size=2, max_size=2))
def test_any_names_in_turn_give_the_reference_bytes(names: list[str]) -> None:
    for name in names:
        document = buyer_named(name)
        assert pdf.to_pdf(document) == reference_pdf(document)
