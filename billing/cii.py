"""The EN 16931 e-invoice of an issued invoice or credit note: UN/CEFACT CII XML in the
Factur-X flavour, profile EN 16931, made from the frozen document only (so the same document
always gives the same bytes).

- The XML is written by the `factur-x` package from a dict keyed by EN 16931 business terms
  (BT-…, BG-…); nothing is hand-built. Every amount, quantity, price and rate is handed over
  as the document's decimal string, which factur-x copies verbatim (it only formats numbers
  given as int or float), so the XML shows exactly the issued figures: no float, no
  recomputation, no second rounding. Totals are the document's too (line total = tax basis =
  subtotal, tax total, grand total = amount due = total).
- Type code 380 (commercial invoice) or 381 (credit note). A credit note names the invoice it
  corrects as the preceding invoice reference (BT-25 number, BT-26 date) and carries its reason
  as an invoice note; its amounts stay positive, as CII credit notes expect.
- Parties: legal name (BT-27/44), trading name (BT-28/45) when it differs, legal registration
  identifier with its ISO/IEC 6523 scheme (BT-30/47, SIRENE `0002`), VAT id (BT-31/48), address
  lines one to three, post code, city and country.
- References: the buyer reference (BT-10, Chorus Pro's service code) and the purchase order
  reference (BT-13, the commitment number). A line's resource id is its object identifier
  (BT-128), its offer's name the item name (BT-153).
- Periods: the document's ends are exclusive instants, EN 16931 end dates are the last day
  included. The invoicing period (BT-73/74) is `period_start`'s date to the day before
  `period_end`; a line's period (BT-134/135) is the days its service touched. The actual
  delivery date (BT-72) is the period's last day: factur-x needs something in the header
  delivery block (empty, it comes out as `xsi:nil`, which the XSD refuses), and the day the
  period's supply was completed is a fact the document holds.
- Units (UN/ECE Recommendation 20): HUR (hour) for the metrics counted in hours of one thing
  (instance and vCPU hours), C62 ("one") for the others (GiB-hours, GiB-months, GiB), whose
  exact unit the item name spells (it names the metric).
- VAT breakdown: one row per tax row, with the exemption reason code (VATEX, BT-121) and text
  (BT-120) EN 16931 requires for E (exempt) and AE (reverse charge); S and Z carry none.
- An invoice without lines (an agency that used nothing) gets one line of nothing, zero rated,
  in its CII: EN 16931 wants at least one line and one VAT breakdown.
- Notes: the legal mentions (payment terms, late-payment penalties, recovery indemnity) go in
  as invoice notes, as French law wants them on the invoice.
- Checked on every generation: the official XSD here, the EN 16931 business rules
  (Schematron) by `billing.schematron` when an invoice is issued and in the tests.
"""

from __future__ import annotations

from typing import Any

import facturx

from billing import labels
from billing.document import (
    ADJUSTMENT,
    CREDIT_NOTE,
    INVOICE,
    Document,
    Line,
    Party,
    TaxRow,
    days_covered,
)

TYPE_CODES = {INVOICE: "380", CREDIT_NOTE: "381"}  # UNTDID 1001
LEVEL = "en16931"

# UN/ECE Recommendation 20 unit codes; every other metric is counted in C62 ("one").
UNIT_CODES: dict[str, str] = {"instance_hour": "HUR", "vcpu_hour": "HUR"}
COUNT_UNIT = "C62"
# UNTDID 1153 code of a line's object identifier (BT-128-1): the broker's resource id.
OBJECT_SCHEME = "ZZZ"  # mutually defined
# UNTDID 4451 subject code of the notes carrying the legal mentions.
LEGAL_NOTE_SUBJECT = "AAB"


def item_name(line: Line) -> str:
    """What a line bills, in words: the resource, the metric and the period it was used in."""
    used_in = f"adjustment for {line.period}" if line.kind == ADJUSTMENT else line.period
    return f"{line.label} — {line.metric}, {used_in}"


def _party(party: Party) -> dict[str, Any]:
    address = party.address
    fields: dict[str, Any] = {"name": party.name, "country_code": address.country}
    for key, text in zip(("addr_l1", "addr_l2", "addr_l3"), address.lines, strict=False):
        fields[key] = text
    if address.post_code:
        fields["postcode"] = address.post_code
    if address.city:
        fields["city"] = address.city
    if party.vat_id:
        fields["vat_identifier"] = party.vat_id
    if party.legal_id is not None:
        fields["legal_identifier"] = party.legal_id.value
        if party.legal_id.scheme:
            fields["legal_identifier_schemeid"] = party.legal_id.scheme
    if party.trading_name and party.trading_name != party.name:
        fields["biz_name"] = party.trading_name
    return fields


def _line(document: Document, line: Line) -> dict[str, Any]:
    start, end = days_covered(line.service_start, line.service_end)
    fields: dict[str, Any] = {
        "BT-126": str(line.position),
        "BT-128": {OBJECT_SCHEME: line.resource_id},
        "BT-153": item_name(line),
        "BT-129": str(line.quantity),
        "BT-130": UNIT_CODES.get(line.metric, COUNT_UNIT),
        "BT-146": str(line.unit_price),
        "BT-131": str(line.amount),
        "BT-151": line.tax_category,
        "BT-152": str(line.tax_rate),
        "BT-134": start,
        "BT-135": end,
    }
    notes = []
    if line.credits_position is not None and document.corrects is not None:
        notes.append(
            labels.words(document.language)["credits_line"].format(
                position=line.credits_position, number=document.corrects.number
            )
        )
    if line.buyer_reference or line.purchase_order_reference:
        notes.append(
            " / ".join(
                f"{term}: {value}"
                for term, value in (
                    ("BT-10", line.buyer_reference),
                    ("BT-13", line.purchase_order_reference),
                )
                if value
            )
        )
    if notes:
        fields["BT-127-00"] = [{"BT-127": note} for note in notes]
    return fields


# An invoice of an agency that used nothing in the period has no line, but EN 16931 wants at
# least one line (BR-16) and one VAT breakdown (BR-CO-18): a line of nothing, zero rated.
_NOTHING_USED: dict[str, Any] = {
    "BT-126": "0",
    "BT-153": "No usage in the period",
    "BT-129": "0",
    "BT-130": COUNT_UNIT,
    "BT-146": "0",
    "BT-131": "0",
    "BT-151": "Z",
    "BT-152": "0",
}
_NOTHING_TAXED: dict[str, Any] = {"BT-118": "Z", "BT-119": "0", "BT-116": "0", "BT-117": "0"}


def _vat_breakdown(tax: TaxRow) -> dict[str, Any]:
    row = {
        "BT-118": tax.category,
        "BT-119": str(tax.rate),
        "BT-116": str(tax.base),
        "BT-117": str(tax.amount),
    }
    if tax.exemption_reason:
        row["BT-120"] = tax.exemption_reason
    if tax.exemption_code:
        row["BT-121"] = tax.exemption_code
    return row


def data_dict(document: Document) -> dict[str, Any]:
    """The document as factur-x's EN 16931 data dict (a fresh one: factur-x edits it)."""
    period_start, period_end = days_covered(document.period_start, document.period_end)
    fields: dict[str, Any] = {
        "BT-1": document.number,
        "BT-2": document.issued_at.date(),
        "BT-3": TYPE_CODES[document.document_type],
        "BT-5": document.currency,
        "BG-4": _party(document.seller),
        "BG-7": _party(document.buyer),
        "BT-73": period_start,
        "BT-74": period_end,
        # factur-x writes an empty header delivery block as `xsi:nil`, which the XSD refuses:
        # the delivery date (the period's last day, when the supply was completed) fills it.
        "BT-72": period_end,
        "BG-25": [_line(document, line) for line in document.lines] or [_NOTHING_USED],
        "BG-23": [_vat_breakdown(tax) for tax in document.taxes] or [_NOTHING_TAXED],
        "BT-106": str(document.subtotal),
        "BT-109": str(document.subtotal),
        "BT-110": str(document.tax),
        "BT-112": str(document.total),
        "BT-115": str(document.total),
    }
    if document.buyer_reference:
        fields["BT-10"] = document.buyer_reference
    if document.purchase_order_reference:
        fields["BT-13"] = document.purchase_order_reference
    if document.due_date is not None:  # BR-CO-25: an amount due needs a due date or terms
        fields["BT-9"] = document.due_date
    if document.payment_terms:
        fields["BT-20"] = document.payment_terms
    notes = [{"BT-21": LEGAL_NOTE_SUBJECT, "BT-22": text} for text in document.legal_mentions]
    if document.corrects is not None:
        fields["BG-3"] = [
            {"BT-25": document.corrects.number, "BT-26": document.corrects.issued_at.date()}
        ]
        if document.reason and document.reason.strip():
            notes.insert(0, {"BT-22": document.reason})
    if notes:
        fields["BG-1"] = notes
    return fields


def to_cii(document: Document) -> bytes:
    """The EN 16931 CII XML (Factur-X, profile EN 16931) of an issued invoice or credit note.

    Deterministic: factur-x adds no timestamp or random id, so the bytes depend on the
    document alone. Raises if the result does not validate against the official XSD."""
    xml: bytes = facturx.generate_cii_xml(
        data_dict(document), level=LEVEL, check_xsd=True, check_schematron=False
    )
    return xml
