"""How long the PDF of an issued invoice takes (`billing.pdf.to_pdf`, what
`GET /v1/invoices/{id}/export?format=pdf` returns), for 10 and 1000 lines.

The snapshot is shaped as finalization freezes it (seller, buyer with an accented name, lines
of a month's usage of machines, a VAT breakdown, totals); no database, no HTTP, so the figures
are those of the PDF alone (`bench/billing.py` times the download through the API). The first
PDF of the process is timed apart: it parses the fonts, which later PDFs reuse. Then each size
is rendered for a few seconds (10 lines) or a few times (1000 lines), and the p50 and p99 are
printed in milliseconds. `BENCH_DATABASE_URL` plays no part.

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/pdf.py`.
"""

from __future__ import annotations

import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import SECONDS  # noqa: E402

from billing.pdf import to_pdf  # noqa: E402

METRICS = ("instance_hour", "vcpu_hour", "ram_gib_hour", "egress_gib", "storage_gib_month")


def _line(position: int) -> dict[str, Any]:
    amount = (Decimal(position * 137 % 5000) / 100 + 1).quantize(Decimal("0.01"))  # as issued
    return {
        "position": position,
        "kind": "usage",
        "period": "2030-03",
        "resource_id": f"5c1e0000-0000-4000-8000-{position:012d}",
        "provider_id": "a3f04b2c-6d1e-4f7a-8b9c-0d1e2f3a4b5c",
        "metric": METRICS[position % len(METRICS)],
        "quantity": "720",
        "unit_price": "0.042",
        "amount": str(amount),
        "tax_category": "S",
        "tax_rate": "20",
        "service_start": "2030-03-01T00:00:00Z",
        "service_end": "2030-04-01T00:00:00Z",
    }


def invoice(lines: int) -> dict[str, Any]:
    """An issued invoice of `lines` lines, all at 20 % VAT."""
    items = [_line(position) for position in range(1, lines + 1)]
    subtotal = sum((Decimal(item["amount"]) for item in items), Decimal(0))
    tax = (subtotal * Decimal("0.2")).quantize(Decimal("0.01"))
    return {
        "document_type": "invoice",
        "id": "7b0c2f3e-0f7e-4a8e-9a57-2d0f3a1b9c11",
        "number": "2030-000042",
        "issued_at": "2030-04-01T00:05:00Z",
        "period": "2030-03",
        "period_start": "2030-03-01T00:00:00Z",
        "period_end": "2030-04-01T00:00:00Z",
        "due_date": "2030-05-01",
        "payment_terms": "30 days",
        "currency": "EUR",
        "seller": {
            "name": "Sovereign Cloud Consortium",
            "address": "12 rue de l'Arsenal, 75004 Paris",
            "country": "FR",
            "vat_id": "FR32123456789",
        },
        "buyer": {
            "organization_id": "0d5b7c1e-8a44-4f2e-9d6a-3c1f0e2b7a90",
            "name": "ANDS",
            "legal_name": "Agence nationale des données souveraines",
            "address": "1 avenue de Ségur, 75007 Paris",
            "country": "FR",
            "vat_id": "FR90987654321",
        },
        "lines": items,
        "taxes": [{"category": "S", "rate": "20", "base": str(subtotal), "amount": str(tax)}],
        "subtotal": str(subtotal),
        "tax": str(tax),
        "total": str(subtotal + tax),
    }


def _report(label: str, latencies: list[float], size: int) -> None:
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
    print(
        f"{label:<32} p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({len(latencies)} PDFs, {size} bytes)"
    )


def main() -> None:
    print("goal (issue 19): the PDF of a 10-line invoice in <= 50 ms")
    short, long = invoice(10), invoice(1000)
    started = time.perf_counter()
    size = len(to_pdf(short))
    print(f"{'first PDF (parses the fonts)':<32} {1000 * (time.perf_counter() - started):7.1f} ms")
    for label, document, seconds, at_least in (
        ("PDF of a 10-line invoice", short, SECONDS, 10),
        ("PDF of a 1000-line invoice", long, 0.0, 5),
    ):
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(latencies) < at_least or time.perf_counter() < deadline:
            started = time.perf_counter()
            size = len(to_pdf(document))
            latencies.append(time.perf_counter() - started)
        _report(label, latencies, size)


if __name__ == "__main__":
    main()
