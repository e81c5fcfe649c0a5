"""The EN 16931 e-invoice of an issued invoice or credit note: UN/CEFACT CII XML in the
Factur-X flavour, profile EN 16931, made from the frozen snapshot only (so the same snapshot
always gives the same bytes).

- The XML is written by the `factur-x` package from a dict keyed by EN 16931 business terms
  (BT-…, BG-…); nothing is hand-built. Every amount, quantity, price and rate is handed over
  as the snapshot's decimal string, which factur-x copies verbatim (it only formats numbers
  given as int or float), so the XML shows exactly the snapshot's figures: no float, no
  recomputation, no second rounding. Totals are the snapshot's too (line total = tax basis =
  subtotal, tax total, grand total = amount due = total).
- Type code 380 (commercial invoice) or 381 (credit note). A credit note names the invoice it
  corrects as the preceding invoice reference (BT-25 number, BT-26 date) and carries its reason
  as an invoice note; its amounts stay positive, as CII credit notes expect.
- A party's address is one free text in the snapshot: it goes whole into address line one,
  with the country code as the country; no post code or city is guessed out of it. Empty
  seller address or VAT id are left out. The buyer's legal name is the EN 16931 buyer name
  (BT-44), its name in the marketplace the trading name (BT-45) when it differs.
- Periods: the snapshot's ends are exclusive instants, EN 16931 end dates are the last day
  included. The invoicing period (BT-73/74) is `period_start`'s date to the day before
  `period_end`; a line's period (BT-134/135) is the days its service touched. The actual
  delivery date (BT-72) is the period's last day: factur-x needs something in the header
  delivery block (empty, it comes out as `xsi:nil`, which the XSD refuses), and the day the
  period's supply was completed is a fact the snapshot holds.
- Units (UN/ECE Recommendation 20): HUR (hour) for the metrics counted in hours of one thing
  (instance and vCPU hours), C62 ("one") for the others (GiB-hours, GiB-months, GiB), whose
  exact unit the item name spells (it names the metric).
- VAT breakdown: one row per snapshot tax row, with the exemption reason text EN 16931 requires
  for E (exempt) and AE (reverse charge); S and Z carry none (the rules forbid it).
- The XSD check runs on every generation (offline); the Schematron check needs a network
  server and is never called.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import facturx

from billing.invoicing import ADJUSTMENT

INVOICE, CREDIT_NOTE = "invoice", "credit_note"
TYPE_CODES = {INVOICE: "380", CREDIT_NOTE: "381"}  # UNTDID 1001
LEVEL = "en16931"

# UN/ECE Recommendation 20 unit codes; every other metric is counted in C62 ("one").
UNIT_CODES: dict[str, str] = {"instance_hour": "HUR", "vcpu_hour": "HUR"}
COUNT_UNIT = "C62"

# BT-120 texts of the categories EN 16931 wants a reason for (BR-E-10, BR-AE-10).
EXEMPTION_REASONS: dict[str, str] = {"E": "Exempt", "AE": "Reverse charge"}


def document_type(snapshot: Mapping[str, Any]) -> str:
    """`invoice` or `credit_note` (snapshots taken before credit notes existed are invoices)."""
    kind: str = snapshot.get("document_type", INVOICE)
    if kind not in TYPE_CODES:
        raise ValueError(f"unknown document type {kind!r}")
    return kind


def instant(value: str) -> datetime:
    """A snapshot time (ISO 8601, UTC, ending in `Z`)."""
    return datetime.fromisoformat(value)


def days_covered(start: str, end: str) -> tuple[date, date]:
    """First and last day (inclusive) touched by the half-open interval [start, end)."""
    first, after = instant(start), instant(end)
    last = after.date()
    if after.time() == datetime.min.time():  # ends at midnight: that day is not included
        last -= timedelta(days=1)
    return first.date(), max(first.date(), last)


def item_name(line: Mapping[str, Any]) -> str:
    """What a line bills, in words: metric, resource, and the period it was used in."""
    used_in = line["period"]
    when = f"adjustment for {used_in}" if line["kind"] == ADJUSTMENT else used_in
    return f"{line['metric']} — resource {line['resource_id']}, {when}"


def credited_line_note(snapshot: Mapping[str, Any], line: Mapping[str, Any]) -> str | None:
    """On a credit note, which line of the corrected invoice a line credits."""
    position = line.get("credits_position")
    if position is None:
        return None
    return f"Credits line {position} of invoice {snapshot['corrects']['number']}"


def present(value: str | None) -> bool:
    """Whether an optional snapshot text is given (`None` and blank count as absent)."""
    return bool(value and value.strip())


def _party(name: str, party: Mapping[str, Any], trading_name: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": name, "country_code": party["country"]}
    if present(party.get("address")):
        fields["addr_l1"] = party["address"]
    if present(party.get("vat_id")):
        fields["vat_identifier"] = party["vat_id"]
    if trading_name and trading_name != name:
        fields["biz_name"] = trading_name
    return fields


def _line(snapshot: Mapping[str, Any], line: Mapping[str, Any]) -> dict[str, Any]:
    start, end = days_covered(line["service_start"], line["service_end"])
    fields: dict[str, Any] = {
        "BT-126": str(line["position"]),
        "BT-153": item_name(line),
        "BT-129": line["quantity"],
        "BT-130": UNIT_CODES.get(line["metric"], COUNT_UNIT),
        "BT-146": line["unit_price"],
        "BT-131": line["amount"],
        "BT-151": line["tax_category"],
        "BT-152": line["tax_rate"],
        "BT-134": start,
        "BT-135": end,
    }
    note = credited_line_note(snapshot, line)
    if note:
        fields["BT-127-00"] = [{"BT-127": note}]
    return fields


def _vat_breakdown(tax: Mapping[str, Any]) -> dict[str, Any]:
    row = {
        "BT-118": tax["category"],
        "BT-119": tax["rate"],
        "BT-116": tax["base"],
        "BT-117": tax["amount"],
    }
    if tax["category"] in EXEMPTION_REASONS:
        row["BT-120"] = EXEMPTION_REASONS[tax["category"]]
    return row


def data_dict(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot as factur-x's EN 16931 data dict (a fresh one: factur-x edits it)."""
    kind = document_type(snapshot)
    buyer, seller = snapshot["buyer"], snapshot["seller"]
    period_start, period_end = days_covered(snapshot["period_start"], snapshot["period_end"])
    fields: dict[str, Any] = {
        "BT-1": snapshot["number"],
        "BT-2": instant(snapshot["issued_at"]).date(),
        "BT-3": TYPE_CODES[kind],
        "BT-5": snapshot["currency"],
        "BG-4": _party(seller["name"], seller),
        "BG-7": _party(buyer["legal_name"], buyer, trading_name=buyer.get("name")),
        "BT-73": period_start,
        "BT-74": period_end,
        # factur-x writes an empty header delivery block as `xsi:nil`, which the XSD refuses:
        # the delivery date (the period's last day, when the supply was completed) fills it.
        "BT-72": period_end,
        "BG-25": [_line(snapshot, line) for line in snapshot["lines"]],
        "BG-23": [_vat_breakdown(tax) for tax in snapshot["taxes"]],
        "BT-106": snapshot["subtotal"],
        "BT-109": snapshot["subtotal"],
        "BT-110": snapshot["tax"],
        "BT-112": snapshot["total"],
        "BT-115": snapshot["total"],
    }
    if snapshot.get("due_date"):  # BR-CO-25: an amount due needs a due date or terms
        fields["BT-9"] = date.fromisoformat(snapshot["due_date"])
        fields["BT-20"] = snapshot["payment_terms"]
    if kind == CREDIT_NOTE:
        corrects = snapshot["corrects"]
        fields["BG-3"] = [
            {"BT-25": corrects["number"], "BT-26": instant(corrects["issued_at"]).date()}
        ]
        if present(snapshot.get("reason")):
            fields["BG-1"] = [{"BT-22": snapshot["reason"]}]
    return fields


def to_cii(snapshot: Mapping[str, Any]) -> bytes:
    """The EN 16931 CII XML (Factur-X, profile EN 16931) of an issued invoice or credit note.

    Deterministic: factur-x adds no timestamp or random id, so the bytes depend on the
    snapshot alone. Raises if the result does not validate against the official XSD."""
    xml: bytes = facturx.generate_cii_xml(
        data_dict(snapshot), level=LEVEL, check_xsd=True, check_schematron=False
    )
    return xml
