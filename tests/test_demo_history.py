"""The demo's closed month (`broker/demo_history.py`): a new demo has last month's invoices
issued, a credit note, a voided invoice and its replacement, and settlements, all made by the
services and jobs from usage the demo machines really recorded.

Totals are recomputed here from the usage ledger and the prices the orders pinned, not taken
from the code that made them. Everyone reads through the API with the credentials the seed
wrote; tests/test_serve.py reads last month with those the real `broker serve` prints.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from broker.db import Database
from broker.models import (
    AuditEvent,
    BillingRun,
    CreditNote,
    Invoice,
    InvoiceLine,
    Job,
    MeterCursor,
    Order,
    Organization,
    Resource,
    ResourceEvent,
    UsageRecord,
)
from broker.models.base import use_clock
from broker.seed import DEMO_BILLING, seed_demo
from broker.services import ledger
from broker.services.audit import verify_chain
from tests.conftest import ApiUser, fetch_token
from tests.helpers import all_pages, problem

HEALTH_AGENCY = "Agence nationale des données de santé"
CITY = "Ville de Québec"
CONSORTIUM = "Sovereign Cloud Consortium"
FORMATS = {"pdf": "application/pdf", "csv": "text/csv", "cii": "xml", "json": "application/json"}


def month_start(at: datetime) -> datetime:
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def last_month(at: datetime) -> tuple[str, datetime, datetime]:
    """The period before the one `at` is in, with its bounds."""
    end = month_start(at)
    start = month_start(end - timedelta(days=1))
    return f"{start:%Y-%m}", start, end


def cents(value: Fraction) -> Decimal:
    """Half-up to the cent, from an exact value."""
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def login(client: FlaskClient, credentials_file: Path, org: str, role: str) -> ApiUser:
    [mine] = [
        c
        for c in json.loads(credentials_file.read_text())
        if c["organization"] == org and c["roles"] == [role]
    ]
    token = fetch_token(client, mine["client_id"], mine["client_secret"])
    return ApiUser(mine["client_id"], mine["client_secret"], mine["organization_id"], [role], token)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.json


@pytest.fixture
def credentials_file(app: Flask, db: Database) -> Iterator[Path]:
    """A new demo, seeded with its history, into this test's database and instance."""
    path = Path(app.config["INSTANCE_PATH"]) / "demo-credentials.json"
    seed_demo(db, path, app.config)
    yield path


def recomputed(db: Database, invoice_id: str) -> dict[tuple[str, str], Decimal]:
    """Each line's amount, from the ledger records the invoice bills and its orders' prices."""
    quantities: dict[tuple[str, str], Fraction] = defaultdict(Fraction)
    with db.session(read_only=True) as session:
        prices: dict[tuple[str, str], Fraction] = {}
        for record, order in session.execute(
            select(UsageRecord, Order)
            .join(Resource, Resource.id == UsageRecord.resource_id)
            .join(Order, Order.id == Resource.order_id)
            .where(ledger.billed_by() == uuid.UUID(invoice_id))
        ):
            key = (str(record.resource_id), record.metric)
            quantities[key] += record.quantity
            [price] = [p for p in order.prices if p["metric"] == record.metric]
            assert not price.get("tiers")
            prices[key] = Fraction(Decimal(price["unit_price"]))
    return {key: cents(quantity * prices[key]) for key, quantity in quantities.items()}


def check_totals(db: Database, invoice: dict[str, Any], vat_rate: Decimal) -> None:
    amounts = recomputed(db, invoice["id"])
    assert {
        (line["resource_id"], line["metric"]): Decimal(line["amount"]) for line in invoice["lines"]
    } == amounts
    subtotal = sum(amounts.values(), Decimal(0))
    tax = cents(Fraction(subtotal) * Fraction(Decimal(vat_rate)) / 100)
    assert (Decimal(invoice["subtotal"]), Decimal(invoice["tax"])) == (subtotal, tax)
    assert Decimal(invoice["total"]) == subtotal + tax > 0


def invoices_of(client: FlaskClient, finance: ApiUser, period: str, agency: str) -> list[Any]:
    listed = all_pages(client, finance, f"/v1/invoices?period={period}&agency_id={agency}")
    return [
        ok(client.get(f"/v1/invoices/{item['id']}", headers=finance.headers))
        for item in sorted(listed, key=lambda item: item["number"])
    ]


def test_a_new_demo_has_last_month_issued_corrected_and_settled(
    db: Database, client: FlaskClient, credentials_file: Path
) -> None:
    period, start, end = last_month(datetime.now(UTC))
    finance = login(client, credentials_file, CONSORTIUM, "finance")
    health = login(client, credentials_file, HEALTH_AGENCY, "buyer")
    city = login(client, credentials_file, CITY, "buyer")

    # The health agency: one invoice, issued after the month ended, right to the cent.
    [issued] = invoices_of(client, finance, period, health.organization_id)
    assert (issued["state"], issued["currency"]) == ("finalized", "EUR")
    assert issued["number"] and issued["snapshot_sha256"]
    assert end <= datetime.fromisoformat(issued["finalized_at"]) <= datetime.now(UTC)
    check_totals(db, issued, DEMO_BILLING[HEALTH_AGENCY]["vat_rate"])
    # Its machines ran from their order to the month's end: the meter billed exactly that.
    machines = all_pages(client, health, "/v1/resources?kind=vm")
    assert len(machines) == 3 and {m["state"] for m in machines} == {"active"}
    # Its volume too, by the GiB-month for its 100 GiB from when it was made.
    [volume] = all_pages(client, health, "/v1/resources?kind=volume")
    made = datetime.fromisoformat(volume["activated_at"])
    [stored] = [
        Fraction(line["quantity"])
        for line in issued["lines"]
        if (line["resource_id"], line["metric"]) == (volume["id"], "storage_gib_month")
    ]
    assert stored == round(Decimal(100 * (end - made).total_seconds()) / 3600 / 730, 6)
    for machine in machines:
        activated = datetime.fromisoformat(machine["activated_at"])
        assert start < activated < end
        [hours] = [
            Fraction(line["quantity"])
            for line in issued["lines"]
            if (line["resource_id"], line["metric"]) == (machine["id"], "instance_hour")
        ]
        if machine["name"].startswith("dossier-patient"):
            assert hours == round(Decimal((end - activated).total_seconds()) / 3600, 6)
        else:  # the warehouse was stopped for a weekend
            assert hours < Decimal((end - activated).total_seconds()) / 3600

    # ... with a credit note, which its agency finds and downloads.
    [note] = all_pages(client, health, "/v1/credit-notes")
    assert note["invoice_id"] == issued["id"] and note["number"].startswith("CN-")
    credited = {line["invoice_line_id"]: Decimal(line["amount"]) for line in note["lines"]}
    by_id = {line["id"]: line for line in db_lines(db, issued["id"])}
    assert credited and all(
        amount == (by_id[line_id]["amount"] / 10).quantize(Decimal("0.01"), ROUND_HALF_UP)
        for line_id, amount in credited.items()
    )
    assert Decimal(note["subtotal"]) == sum(credited.values())
    assert Decimal(note["total"]) == Decimal(note["subtotal"]) + Decimal(note["tax"])
    exported = client.get(
        f"/v1/credit-notes/{note['id']}/export?format=pdf", headers=health.headers
    )
    assert exported.status_code == 200 and exported.data.startswith(b"%PDF")

    # The city: its first invoice voided (issued before the last day's egress came in), and a
    # replacement that bills that egress too.
    voided, replacement = invoices_of(client, finance, period, city.organization_id)
    assert (voided["state"], replacement["state"]) == ("void", "finalized")
    assert voided["void_reason"] and voided["number"] < replacement["number"]
    check_totals(db, replacement, DEMO_BILLING[CITY]["vat_rate"])
    assert Decimal(replacement["total"]) > Decimal(voided["total"])
    assert all_pages(client, city, "/v1/credit-notes") == []
    # Everything the agencies used last month is on their live invoice.
    with db.session(read_only=True) as session:
        unbilled = session.scalar(
            select(func.count())
            .select_from(UsageRecord)
            .where(
                UsageRecord.period == period,
                ledger.billed_by().is_(None),
            )
        )
        assert unbilled == 0
        assert verify_chain(session).ok

    # Issued invoices download in every format, for the agency as for finance.
    for fmt, media_type in FORMATS.items():
        response = client.get(
            f"/v1/invoices/{issued['id']}/export?format={fmt}", headers=health.headers
        )
        assert response.status_code == 200, (fmt, response.get_data(as_text=True))
        assert media_type in response.headers["Content-Type"]
        assert issued["number"].encode() in response.data or fmt == "pdf"
    assert client.get(f"/v1/invoices/{issued['id']}/export?format=pdf").status_code == 401

    # Settlements: what each provider is owed, from the issued documents only.
    settlement = ok(client.get(f"/v1/settlements?period={period}", headers=finance.headers))
    owed = {item["provider_name"]: item for item in settlement["items"]}
    assert set(owed) == {"Hexagone Cloud", "Nordet Nuagique"}
    assert (owed["Hexagone Cloud"]["gross"], owed["Hexagone Cloud"]["credits"]) == (
        issued["subtotal"],
        note["subtotal"],
    )
    assert (owed["Nordet Nuagique"]["gross"], owed["Nordet Nuagique"]["credits"]) == (
        replacement["subtotal"],
        "0.00",
    )

    # Issued means frozen; the machines not terminated run on into this month.
    problem(
        client.post(f"/v1/invoices/{issued['id']}/finalize", headers=finance.headers),
        409,
        "invoice_issued",
    )
    running = ok(client.get(f"/v1/resources/{machines[0]['id']}", headers=health.headers))
    assert running["cost_this_period"]["period"] == f"{datetime.now(UTC):%Y-%m}"
    assert Decimal(running["cost_this_period"]["amount"]) > 0
    terminated = [m for m in all_pages(client, city, "/v1/resources") if m["state"] != "active"]
    assert [(m["name"], m["state"]) for m in terminated] == [("analytique", "terminated")]
    assert start < datetime.fromisoformat(terminated[0]["terminated_at"]) < end


def db_lines(db: Database, invoice_id: str) -> list[dict[str, Any]]:
    with db.session(read_only=True) as session:
        return [
            {"id": str(line.id), "amount": line.amount}
            for line in session.scalars(
                select(InvoiceLine).where(InvoiceLine.invoice_id == uuid.UUID(invoice_id))
            )
        ]


def counts(db: Database) -> dict[str, int]:
    models = (
        AuditEvent,
        BillingRun,
        CreditNote,
        Invoice,
        InvoiceLine,
        Job,
        MeterCursor,
        Order,
        Organization,
        Resource,
        ResourceEvent,
        UsageRecord,
    )
    with db.session(read_only=True) as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in models
        }


def test_seeding_again_keeps_the_history_and_adds_nothing(
    app: Flask, db: Database, credentials_file: Path
) -> None:
    first = counts(db)
    assert first["Invoice"] == 3 and first["CreditNote"] == 1 and first["UsageRecord"] > 10000
    seed_demo(db, credentials_file, app.config)
    assert counts(db) == first
    # Nothing was left for a worker to do either.
    with db.session(read_only=True) as session:
        assert set(session.scalars(select(Job.state))) == {"succeeded"}


def test_early_in_a_month_the_morning_after_fits_in_the_minutes_since(
    app: Flask, db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    """Three minutes into a month, billing, corrections and replacements all happen within
    them (the clock never runs ahead of the real one)."""
    now = datetime.now(UTC)
    moment = month_start(now) + timedelta(minutes=3)
    if moment > now:
        moment = month_start(month_start(now) - timedelta(days=1)) + timedelta(minutes=3)
    period, _, end = last_month(moment)
    path = Path(app.config["INSTANCE_PATH"]) / "demo-credentials.json"
    with use_clock(lambda: moment):
        seed_demo(db, path, app.config)
    finance = login(client, path, CONSORTIUM, "finance")
    listed = all_pages(client, finance, f"/v1/invoices?period={period}")
    assert sorted(i["state"] for i in listed) == ["finalized", "finalized", "void"]
    for item in listed:
        assert end <= datetime.fromisoformat(item["finalized_at"]) <= moment
        invoice = ok(client.get(f"/v1/invoices/{item['id']}", headers=finance.headers))
        agency = next(n for n in (HEALTH_AGENCY, CITY) if invoice["agency_id"] == org_id(db, n))
        if invoice["state"] == "finalized":
            check_totals(db, invoice, DEMO_BILLING[agency]["vat_rate"])
    assert all_pages(client, finance, "/v1/credit-notes")


def org_id(db: Database, name: str) -> str:
    with db.session(read_only=True) as session:
        return str(session.scalars(select(Organization.id).where(Organization.name == name)).one())


def test_a_demo_seeded_this_month_without_history_is_left_as_it_is(
    app: Flask, db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    """A database an older version seeded (its agencies created this month, no history) cannot
    have had machines last month: a later seeding completes the demo and adds no history."""
    elsewhere = tmp_path / "elsewhere" / "demo-credentials.json"
    seed_demo(db, elsewhere)  # no configuration for this instance: no history, created now
    before = counts(db)
    assert before["Order"] == before["Invoice"] == before["UsageRecord"] == 0
    path = Path(app.config["INSTANCE_PATH"]) / "demo-credentials.json"
    elsewhere.parent.rename(path.parent)
    seed_demo(db, path, app.config)
    assert counts(db) == before
    finance = login(client, path, CONSORTIUM, "finance")
    assert all_pages(client, finance, "/v1/invoices") == []
