"""How long the PDF of an issued invoice takes, for 10 and 1000 lines: the readable PDF/A
(`billing.pdf.to_pdf`) and the Factur-X that `GET /v1/invoices/{id}/export?format=pdf` returns
(`billing.exports.to_factur_x`: that PDF with the CII made and attached by factur-x), and what
finalization adds to issue one: its CII checked against the EN 16931 rules (`billing.cii`,
`billing.schematron`; a process's first check starts Saxon and compiles the rules, timed apart).

The document is shaped as finalization builds it (seller and buyer with addresses and legal
ids, French, lines of a month's usage of named machines, a VAT breakdown, totals, legal
mentions); no database, no HTTP, so the figures are those of the PDF alone (`bench/billing.py`
times the download through the API). The first PDF of the process is timed apart: it parses
the fonts, which later PDFs reuse. Then each size is rendered for a few seconds (10 lines) or a
few times (1000 lines), and the p50 and p99 are printed in milliseconds. `BENCH_DATABASE_URL`
plays no part.

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/pdf.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import SECONDS  # noqa: E402

from billing import cii, schematron  # noqa: E402
from billing.document import (  # noqa: E402
    USAGE,
    Address,
    Document,
    LegalId,
    Line,
    Party,
    TaxRow,
)
from billing.exports import to_factur_x  # noqa: E402
from billing.pdf import to_pdf  # noqa: E402

METRICS = ("instance_hour", "vcpu_hour", "ram_gib_hour", "egress_gib", "storage_gib_month")
MARCH, APRIL = datetime(2030, 3, 1, tzinfo=UTC), datetime(2030, 4, 1, tzinfo=UTC)


def _line(position: int) -> Line:
    amount = (Decimal(position * 137 % 5000) / 100 + 1).quantize(Decimal("0.01"))  # as issued
    return Line(
        position=position,
        kind=USAGE,
        period="2030-03",
        resource_id=f"5c1e0000-0000-4000-8000-{position:012d}",
        provider_id="a3f04b2c-6d1e-4f7a-8b9c-0d1e2f3a4b5c",
        metric=METRICS[position % len(METRICS)],
        quantity=Decimal("720"),
        unit_price=Decimal("0.042"),
        amount=amount,
        tax_category="S",
        tax_rate=Decimal("20"),
        service_start=MARCH,
        service_end=APRIL,
        resource_name=f"web-{position}",
        offer_name="Small 2 vCPU",
        provider_name="Hexagone Cloud",
        region="fr-par-1",
    )


def invoice(lines: int) -> Document:
    """An issued invoice of `lines` lines, all at 20 % VAT, in French."""
    items = tuple(_line(position) for position in range(1, lines + 1))
    subtotal = sum((item.amount for item in items), Decimal("0.00"))
    tax = (subtotal * Decimal("0.2")).quantize(Decimal("0.01"))
    return Document(
        document_type="invoice",
        id="7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        number="2030-000042",
        issued_at=APRIL.replace(minute=5),
        period="2030-03",
        period_start=MARCH,
        period_end=APRIL,
        currency="EUR",
        seller=Party(
            name="Consortium du cloud souverain",
            address=Address("FR", ("12 rue de l'Arsenal",), "75004", "Paris"),
            vat_id="FR32123456789",
            legal_id=LegalId("12345678900017"),
        ),
        buyer=Party(
            name="Agence nationale des données souveraines",
            trading_name="ANDS",
            address=Address("FR", ("1 avenue de Ségur",), "75007", "Paris"),
            vat_id="FR90987654321",
            legal_id=LegalId("18002002600019"),
        ),
        lines=items,
        taxes=(TaxRow("S", Decimal("20"), subtotal, tax),),
        subtotal=subtotal,
        tax=tax,
        total=subtotal + tax,
        language="fr",
        due_date=date(2030, 5, 1),
        payment_terms="Paiement à 30 jours",
        buyer_reference="DSI-CLOUD",
        purchase_order_reference="EJ-2030-42",
        legal_mentions=("Indemnité forfaitaire pour frais de recouvrement : 40 €.",),
    )


def _report(label: str, latencies: list[float], size: int) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
    print(
        f"{label:<32} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({len(latencies)} runs, {size} bytes)"
    )


def checked_cii(document: Document) -> bytes:
    """The CII of `document`, checked against the EN 16931 rules as finalization does."""
    xml = cii.to_cii(document)
    if schematron.errors(xml):
        raise SystemExit("the bench's document breaks an EN 16931 rule")
    return xml


def main() -> None:
    print("goal (issue 19): the PDF of a 10-line invoice in <= 50 ms")
    short, long = invoice(10), invoice(1000)
    started = time.perf_counter()
    size = len(to_pdf(short))
    print(f"{'first PDF (parses the fonts)':<32} {1000 * (time.perf_counter() - started):7.1f} ms")
    started = time.perf_counter()
    checked_cii(short)
    print(
        f"{'first rules check (starts Saxon)':<32} {1000 * (time.perf_counter() - started):7.1f} ms"
    )
    for render, kind in ((to_pdf, "PDF"), (to_factur_x, "Factur-X"), (checked_cii, "CII+rules")):
        for label, document, seconds, at_least in (
            (f"{kind} of a 10-line invoice", short, SECONDS, 10),
            (f"{kind} of a 1000-line invoice", long, 0.0, 5),
        ):
            latencies: list[float] = []
            deadline = time.perf_counter() + seconds
            while len(latencies) < at_least or time.perf_counter() < deadline:
                started = time.perf_counter()
                size = len(render(document))
                latencies.append(time.perf_counter() - started)
            _report(label, latencies, size)


if __name__ == "__main__":
    main()
