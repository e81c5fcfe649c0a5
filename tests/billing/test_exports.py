"""Invoice exports from a snapshot: canonical JSON, and a CSV safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import hashlib
import io
from decimal import Decimal
from typing import Any

from billing import exports
from billing.invoicing import fingerprint


def snapshot(buyer: str) -> dict[str, Any]:
    line = {
        "position": 1,
        "kind": "usage",
        "period": "2030-03",
        "resource_id": "r",
        "provider_id": "p",
        "metric": "instance_hour",
        "quantity": "10",
        "unit_price": "0.05",
        "amount": "0.50",
        "tax_category": "S",
        "tax_rate": "20",
        "service_start": "2030-03-01T00:00:00Z",
        "service_end": "2030-03-01T10:00:00Z",
    }
    return {
        "number": "2030-000001",
        "period": "2030-03",
        "currency": "EUR",
        "buyer": {"legal_name": buyer},
        "lines": [line],
        "taxes": [{"category": "S", "rate": "20", "base": "0.50", "amount": "0.10"}],
        "total": "0.60",
    }


def test_the_json_export_is_the_hashed_canonical_snapshot() -> None:
    document = snapshot("Ville de Québec")
    assert hashlib.sha256(exports.to_json(document)).hexdigest() == fingerprint(document)
    assert "Québec".encode() in exports.to_json(document)


def test_the_csv_amounts_sum_to_the_total_and_no_cell_is_a_formula() -> None:
    content = exports.to_csv([snapshot('=HYPERLINK("https://evil.example")')]).decode()
    rows = list(csv.DictReader(io.StringIO(content)))
    assert [row["kind"] for row in rows] == ["usage", "tax"]
    assert sum(Decimal(row["amount"]) for row in rows) == Decimal("0.60")
    assert {row["buyer"] for row in rows} == {'\'=HYPERLINK("https://evil.example")'}
