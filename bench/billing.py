"""How fast usage goes into the ledger through `POST /v1/usage`, and how long a billing run takes.

Sets up a temporary SQLite database (removed at the end; or `BENCH_DATABASE_URL` when set:
an empty database, migrated here; the rows are left there), an app, a consortium with an
admin and a finance client, and a provider organization whose operator (role `provider`)
sells one published offer on a provider on the `simulated` adapter, all through the services
and the API. Orders and resources are inserted directly (one completed order of one machine
per resource, at the offer's prices).

1. Ingestion: `BENCH_USAGE_RECORDS` records (default 20 000; `vcpu_hour`, one clock hour each,
   in the last 21 days) of the machines of one agency are pushed by the operator in batches of
   1000 (`POST /v1/usage`, a fresh `Idempotency-Key` each) through the WSGI test client. The
   same rows (built by `services.usage._row` beforehand, not timed) are then inserted raw
   (SQLAlchemy Core `insert(UsageRecord)` executemany, one transaction per 1000 rows) into the
   same table. Both timed runs start from the same state: the table had the same number of
   rows inserted and deleted before (a raw warm-up round), and each run's rows are deleted
   after it.
2. Billing: for each size in `BENCH_AGENCIES` (default 100 on SQLite, `100,1000` on
   PostgreSQL), that many agencies, each with `BENCH_RESOURCES` machines (default 10) that ran
   every hour of a month of 30 days (the latest ended one for the first size, the one before
   for the next: 720 hourly `instance_hour` records each, as the broker's meter writes them;
   written in bulk, not timed — on PostgreSQL by the database itself, one `INSERT … SELECT`
   over `generate_series`, with the ledger's indexes and keys built after, on SQLite by
   `db.bulk_insert`; some rows are compared with the broker's own; the meter is taken as
   caught up). Table
   statistics are then gathered (as `broker serve` does when it starts, and autovacuum after
   such a load). Then `POST /v1/billing-runs` for that month
   (as finance), with its job run in-process to the end, is timed; a second run of the same
   period (rebuilding the drafts) too.
3. Issuing: every draft of that month is finalized through the API (number, snapshot, hash;
   Stripe is not configured), `GET /v1/settlements` for the month, each export format of one
   invoice (5 downloads each), and the PDF and CII of an invoice of 100 times its lines.

Prints, for ingestion: records per second through the API, by the raw insert, and their
ratio; for billing: the wall time of each run, ledger records per second, and the invoices and
invoice lines made; for issuing: milliseconds per finalization, for the settlements and for
each export. Prints figures only; nothing here is a test.
Run: `.venv/bin/python bench/billing.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Table, delete, event, func, insert, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import COUNTED_NOT_LIMITED  # noqa: E402

from billing import exports  # noqa: E402
from billing.document import Document  # noqa: E402
from billing.metering import floor_hour, period_bounds, period_of, to_quanta  # noqa: E402
from billing.rating import Specs, monthly_price  # noqa: E402
from broker import create_app  # noqa: E402
from broker.db import Database, bulk_insert  # noqa: E402
from broker.jobs.handlers import HANDLERS, ON_DEAD  # noqa: E402
from broker.jobs.queue import JobContext, run_pending  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import (  # noqa: E402
    BillingRun,
    BillingRunState,
    Invoice,
    InvoiceLine,
    MeterCursor,
    Offer,
    Order,
    OrderState,
    Organization,
    OrganizationKind,
    Resource,
    ResourceState,
    Role,
    UsageRecord,
    UsageSource,
)
from broker.services import offers, organizations  # noqa: E402
from broker.services import usage as usage_service  # noqa: E402
from providers.base import order_token  # noqa: E402

USAGE_RECORDS = int(os.environ.get("BENCH_USAGE_RECORDS", "20000"))
# Billing runs at each of these sizes (agencies), each on a month of its own: 100 agencies of 10
# machines are 720 k ledger records, 1000 are 7.2 M (by default on PostgreSQL only: loading
# 7.2 M rows into SQLite takes minutes).
SIZES = [int(n) for n in os.environ.get("BENCH_AGENCIES", "").split(",") if n.strip()]
RESOURCES = int(os.environ.get("BENCH_RESOURCES", "10"))
BATCH = 1000
INGEST_HOURS = 500  # hours of pushed usage per machine (within the 62 days' lookback)
SKU = "bench-vm"
REGION = "fr-par-1"
FLAVOR = {"sku": SKU, "vcpu": 2, "ram_gib": "4", "disk_gib": 50, "region": REGION}


# Set-up --------------------------------------------------------------------------------------


def _organization(database: Database, kind: OrganizationKind, name: str) -> uuid.UUID:
    with database.transaction() as session:
        return organizations.create_organization(session, None, name=name, kind=kind).id


def _client(database: Database, organization_id: uuid.UUID, role: Role) -> tuple[str, str]:
    """An API client of the organization: (client id, secret)."""
    with database.transaction() as session:
        issued = organizations.create_client(
            session, None, organization_id, name=f"bench {role.value}", roles=[role]
        )
        return issued.client.client_id, issued.secret


def _headers(client: FlaskClient, credentials: tuple[str, str]) -> dict[str, str]:
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=credentials
    )
    body = _check(response, 200)
    return {"Authorization": f"Bearer {body['access_token']}"}


def _check(response: Any, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise SystemExit(
            f"{response.request.method} {response.request.path}: {response.status_code} "
            f"(expected {status}): {response.get_data(as_text=True)}"
        )
    return dict(response.json)


def _provider_and_offer(
    client: FlaskClient, admin: dict[str, str], operator: dict[str, str], org_id: uuid.UUID
) -> tuple[uuid.UUID, uuid.UUID]:
    """A provider on the simulated adapter, operated by `org_id`, and its published offer."""
    provider_body = {
        "name": "Bench cloud",
        "organization_id": str(org_id),
        "adapter": "simulated",
        "adapter_config": {"provision_delay_seconds": 0, "flavors": [FLAVOR]},
        "regions": [{"code": REGION, "country": "FR", "city": "Paris", "datacenter_tier": 3}],
        "compliance": [
            {
                "scheme": "secnumcloud",
                "level": "3.2",
                "valid_from": "2020-01-01T00:00:00Z",
                "valid_until": "2099-01-01T00:00:00Z",
                "evidence_url": "https://cyber.gouv.fr/evidence/secnumcloud-42.pdf",
            }
        ],
        "jurisdiction": {
            "operator_country": "FR",
            "parent_country": "FR",
            "extraterritorial_exposure": [],
        },
    }
    provider = _check(client.post("/v1/providers", json=provider_body, headers=admin), 201)
    offer_body = {
        "provider_id": provider["id"],
        "sku": SKU,
        "name": "General purpose 2 vCPU / 4 GiB",
        "kind": "vm",
        "region": REGION,
        "specs": {"vcpu": 2, "ram_gib": 4, "disk_gib": 50},
        "prices": [
            {"metric": metric, "unit_price": unit_price, "currency": "EUR"}
            for metric, unit_price in (
                ("instance_hour", "0.05"),
                ("vcpu_hour", "0.01"),
                ("ram_gib_hour", "0.002"),
                ("storage_gib_month", "0.04"),
            )
        ],
    }
    offer = _check(client.post("/v1/offers", json=offer_body, headers=operator), 201)
    _check(client.post(f"/v1/offers/{offer['id']}/publish", headers=operator), 200)
    return uuid.UUID(provider["id"]), uuid.UUID(offer["id"])


def _machines(
    database: Database,
    offer_id: uuid.UUID,
    agency_id: uuid.UUID,
    count: int,
    activated_at: datetime,
) -> list[uuid.UUID]:
    """`count` active machines of the agency, one completed order each (inserted directly,
    at the published offer's prices, as `orders.place_order` copies them)."""
    with database.session(read_only=True) as session:
        offer = session.get(Offer, offer_id)
        assert offer is not None
        prices, currency, provider_id = offer.prices, offer.currency, offer.provider_id
        unit = monthly_price(
            offers.parse_prices(prices),
            Specs(offer.vcpu, offer.ram_gib, offer.disk_gib),
        )
    order_rows: list[dict[str, Any]] = []
    resource_rows: list[dict[str, Any]] = []
    machines: list[uuid.UUID] = []
    for number in range(count):
        order_id, resource_id = uuid.uuid4(), uuid.uuid4()
        machines.append(resource_id)
        order_rows.append(
            {
                "id": order_id,
                "organization_id": agency_id,
                "created_by": "bench",
                "offer_id": offer_id,
                "provider_id": provider_id,
                "name": f"vm-{number:04d}",
                "quantity": 1,
                "parameters": {},
                "prices": prices,
                "currency": currency,
                "unit_monthly_cost": unit,
                "monthly_cost": unit,
                "state": OrderState.COMPLETED,
                "completed_at": activated_at,
                "created_at": activated_at,
                "updated_at": activated_at,
                "version": 1,
            }
        )
        resource_rows.append(
            {
                "id": resource_id,
                "order_id": order_id,
                "organization_id": agency_id,
                "provider_id": provider_id,
                "offer_id": offer_id,
                "index": 0,
                "name": f"vm-{number:04d}",
                "token": order_token(order_id, 0),
                "provider_ref": f"sim-{resource_id}",
                "addresses": [],
                "state": ResourceState.ACTIVE,
                "unit_monthly_cost": unit,
                "currency": currency,
                "activated_at": activated_at,
                "created_at": activated_at,
                "updated_at": activated_at,
            }
        )
    with database.engine.begin() as connection:
        connection.execute(insert(Order), order_rows)
        connection.execute(insert(Resource), resource_rows)
    return machines


def _hour_row(
    provider_id: uuid.UUID,
    resource_id: uuid.UUID,
    agency_id: uuid.UUID,
    source: UsageSource,
    record_id: str,
    metric: str,
    quantity: Fraction,
    start: datetime,
    now: datetime,
) -> dict[str, Any]:
    return usage_service._row(
        provider_id=provider_id,
        source=source,
        record_id=record_id,
        resource_id=resource_id,
        organization_id=agency_id,
        metric=metric,
        quantity=quantity,
        start=start,
        end=start + timedelta(hours=1),
        now=now,
    )


def _insert_batches(database: Database, rows: Sequence[dict[str, Any]]) -> None:
    """Core executemany, one transaction per `BATCH` rows."""
    for offset in range(0, len(rows), BATCH):
        with database.engine.begin() as connection:
            connection.execute(insert(UsageRecord), rows[offset : offset + BATCH])


def _metered_hours(
    provider_id: uuid.UUID,
    agency_id: uuid.UUID,
    machines: Sequence[uuid.UUID],
    start: datetime,
    hours: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The `instance_hour` records the meter writes for `machines` running `hours` hours from
    `start`: what `usage._row` makes of each (checked by `_check_rows`), with what
    repeats from one record to the next worked out once, so that 7.2 M of them are made in
    seconds rather than minutes."""
    metric, quantity = usage_service.INSTANCE_HOUR, Fraction(1)
    quanta = str(to_quanta(quantity))
    starts = [start + timedelta(hours=hour) for hour in range(hours + 1)]
    stamps = [moment.isoformat() for moment in starts]
    hour_names = [f"{moment:%Y-%m-%dT%H}" for moment in starts]
    periods = [period_of(moment) for moment in starts]
    rows = []
    for resource_id in machines:
        prefix = f"{resource_id}|{metric}|{quanta}|"
        for hour in range(hours):
            fingerprint = f"{prefix}{stamps[hour]}|{stamps[hour + 1]}"
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "provider_id": provider_id,
                    "source": UsageSource.BROKER,
                    "record_id": f"{resource_id}/{hour_names[hour]}",
                    "resource_id": resource_id,
                    "organization_id": agency_id,
                    "metric": metric,
                    "quantity": quantity,
                    "start": starts[hour],
                    "end": starts[hour + 1],
                    "period": periods[hour],
                    "payload_hash": hashlib.sha256(fingerprint.encode()).hexdigest(),
                    "received_at": now,
                }
            )
    return rows


def _generate_metered_hours(
    database: Database,
    provider_id: uuid.UUID,
    agency_ids: Sequence[uuid.UUID],
    start: datetime,
    hours: int,
    now: datetime,
) -> None:
    """What `_metered_hours` makes, for every machine of `agency_ids`, written by PostgreSQL
    itself in one statement (no row crosses the wire; `_check_rows` compares some with the
    broker's own)."""
    metric, quanta = usage_service.INSTANCE_HOUR, to_quanta(Fraction(1))
    stamp = "'YYYY-MM-DD\"T\"HH24:MI:SS'"
    with database.engine.begin() as connection:
        connection.execute(text("SET LOCAL timezone = 'UTC'"))
        connection.execute(
            text(
                "INSERT INTO usage_records (id, provider_id, source, record_id, resource_id,"
                ' organization_id, metric, quantity, start, "end", period, payload_hash,'
                " received_at)"
                " SELECT gen_random_uuid(), :provider, :source,"
                " r.id::text || '/' || to_char(h, 'YYYY-MM-DD\"T\"HH24'), r.id,"
                " r.organization_id, :metric, :quanta, h, h + interval '1 hour',"
                " to_char(h, 'YYYY-MM'), encode(sha256(convert_to("
                f" r.id::text || :fingerprint || to_char(h, {stamp})"
                f" || '+00:00|' || to_char(h + interval '1 hour', {stamp}) || '+00:00',"
                " 'UTF8')), 'hex'), :now"
                " FROM resources r CROSS JOIN generate_series(:first, :last, interval '1 hour') h"
                " WHERE r.organization_id = ANY(:agencies)"
            ),
            {
                "provider": provider_id,
                "source": UsageSource.BROKER.value,
                "metric": metric,
                "quanta": quanta,
                "fingerprint": f"|{metric}|{quanta}|",
                "first": start,
                "last": start + timedelta(hours=hours - 1),
                "agencies": list(agency_ids),
                "now": now,
            },
        )


def _check_rows(
    rows: Sequence[dict[str, Any]], provider_id: uuid.UUID, agency_id: uuid.UUID, now: datetime
) -> None:
    """The fast rows say what the broker's own would (all but their random id)."""
    for row in (rows[0], rows[-1]):
        expected = _hour_row(
            provider_id,
            row["resource_id"],
            agency_id,
            UsageSource.BROKER,
            row["record_id"],
            row["metric"],
            row["quantity"],
            row["start"],
            now,
        )
        assert {**expected, "id": row["id"]} == row, (expected, row)


@contextmanager
def _ledger_built_after(database: Database) -> Iterator[None]:
    """On PostgreSQL, the ledger's secondary indexes, unique and foreign keys are dropped for
    the load and built again after it, from their own definitions (as `pg_restore` does: one
    sort per index instead of millions of insertions, one check per key instead of one per
    row). Elsewhere, nothing."""
    if database.engine.dialect.name != "postgresql":
        yield
        return
    with database.engine.begin() as connection:
        constraints = connection.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'usage_records'::regclass AND contype IN ('u', 'f')"
            )
        ).all()
        indexes = connection.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'usage_records'"
                " AND indexname <> ALL(:kept)"
            ),
            {"kept": ["pk_usage_records", *(name for name, _ in constraints)]},
        ).all()
        for name, _ in constraints:
            connection.execute(text(f'ALTER TABLE usage_records DROP CONSTRAINT "{name}"'))
        for name, _ in indexes:
            connection.execute(text(f'DROP INDEX "{name}"'))
    try:
        yield
    finally:
        with database.engine.begin() as connection:
            for _, definition in indexes:
                connection.execute(text(definition))
            for name, definition in constraints:
                connection.execute(
                    text(f'ALTER TABLE usage_records ADD CONSTRAINT "{name}" {definition}')
                )
            connection.execute(text("ANALYZE usage_records"))


def _delete_usage(database: Database, source: UsageSource) -> None:
    with database.engine.begin() as connection:
        connection.execute(delete(UsageRecord).where(UsageRecord.source == source))


def _loading_database(url: str) -> Database:
    """The same database, for the untimed bulk set-up only: commits do not wait for the disk
    (and SQLite gets a larger page cache)."""
    if url.startswith(("postgres://", "postgresql")):
        return Database(url, connect_args={"options": "-c synchronous_commit=off"})
    database = Database(url)

    @event.listens_for(database.engine, "connect")
    def _relaxed(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-262144")
        cursor.close()

    return database


# Ingestion -----------------------------------------------------------------------------------


def ingestion(
    client: FlaskClient,
    database: Database,
    operator: dict[str, str],
    provider_id: uuid.UUID,
    offer_id: uuid.UUID,
) -> None:
    agency_id = _organization(database, OrganizationKind.AGENCY, "Bench ingest agency")
    now = datetime.now(UTC)
    first_hour = floor_hour(now) - timedelta(hours=INGEST_HOURS + 1)
    count = math.ceil(USAGE_RECORDS / INGEST_HOURS)
    machines = _machines(database, offer_id, agency_id, count, first_hour)
    pushed: list[tuple[uuid.UUID, str, datetime]] = []
    for resource_id in machines:
        for hour in range(INGEST_HOURS):
            start = first_hour + timedelta(hours=hour)
            pushed.append((resource_id, f"{resource_id}/{start:%Y-%m-%dT%H}", start))
    pushed = pushed[:USAGE_RECORDS]
    bodies = [
        {
            "records": [
                {
                    "record_id": record_id,
                    "resource_id": str(resource_id),
                    "metric": "vcpu_hour",
                    "quantity": "2",
                    "start": _iso(start),
                    "end": _iso(start + timedelta(hours=1)),
                }
                for resource_id, record_id, start in pushed[offset : offset + BATCH]
            ]
        }
        for offset in range(0, len(pushed), BATCH)
    ]
    rows = [
        _hour_row(
            provider_id,
            resource_id,
            agency_id,
            UsageSource.PUSH,
            record_id,
            "vcpu_hour",
            Fraction(2),
            start,
            now,
        )
        for resource_id, record_id, start in pushed
    ]

    _insert_batches(database, rows)  # warm-up: both timed runs find the table in this state
    _delete_usage(database, UsageSource.PUSH)

    started = time.perf_counter()
    for body in bodies:
        headers = {**operator, "Idempotency-Key": str(uuid.uuid4())}
        result = _check(client.post("/v1/usage", json=body, headers=headers), 200)
        assert result["created"] == len(body["records"]), result
    api_seconds = time.perf_counter() - started
    _delete_usage(database, UsageSource.PUSH)

    started = time.perf_counter()
    _insert_batches(database, rows)
    raw_seconds = time.perf_counter() - started
    _delete_usage(database, UsageSource.PUSH)

    api_rate, raw_rate = len(rows) / api_seconds, len(rows) / raw_seconds
    print(f"Usage ingestion, {len(rows)} records in batches of {BATCH}:")
    print(f"  POST /v1/usage       {api_rate:9.0f} records/s   ({api_seconds:6.2f} s)")
    print(f"  raw Core insert      {raw_rate:9.0f} records/s   ({raw_seconds:6.2f} s)")
    print(f"  the API reaches {api_rate / raw_rate:.2f}x the raw insert rate")
    print("  goal (issue 19): >= 0.5x the raw insert; >= 20000 records/s on PostgreSQL")


# Billing -------------------------------------------------------------------------------------


def _billing_periods(now: datetime) -> Iterator[str]:
    """The months that have ended and have 30 days (720 hours), latest first."""
    period = period_of(now)
    while True:
        start, _ = period_bounds(period)
        period = period_of(start - timedelta(days=1))
        first, end = period_bounds(period)
        if end - first == timedelta(days=30):
            yield period


def billing_setup(
    database: Database,
    offer_id: uuid.UUID,
    provider_id: uuid.UUID,
    period: str,
    agencies: int,
) -> int:
    """`agencies` new agencies, their machines and every hour of their usage in `period`;
    returns how many ledger records that is."""
    start, end = period_bounds(period)
    hours = int((end - start) / timedelta(hours=1))
    now = datetime.now(UTC)
    records = 0
    postgresql = database.engine.dialect.name == "postgresql"
    agency_ids = []
    for number in range(agencies):
        agency_id = _organization(
            database, OrganizationKind.AGENCY, f"Bench agency {period} {number:04d}"
        )
        agency_ids.append(agency_id)
        machines = _machines(database, offer_id, agency_id, RESOURCES, start)
        with database.engine.begin() as connection:
            # Agencies existing before the period ends are billed for it.
            connection.execute(
                update(Organization)
                .where(Organization.id == agency_id)
                .values(created_at=start - timedelta(days=30))
            )
            if not postgresql:
                rows = _metered_hours(provider_id, agency_id, machines, start, hours, now)
                _check_rows(rows, provider_id, agency_id, now)
                bulk_insert(connection, cast(Table, UsageRecord.__table__), rows)
        records += len(machines) * hours
    if postgresql:
        _generate_metered_hours(database, provider_id, agency_ids, start, hours, now)
        with database.session(read_only=True) as session:
            sample = session.scalars(
                select(UsageRecord).where(UsageRecord.organization_id == agency_ids[0]).limit(2)
            ).all()
            _check_rows(
                [
                    {
                        c.key: getattr(row, c.key)
                        for c in UsageRecord.__table__.columns
                        if c.key != "seq"
                    }
                    for row in sample
                ],
                provider_id,
                agency_ids[0],
                now,
            )
    with database.engine.begin() as connection:
        # The meter is caught up (it runs every five minutes): the run finds nothing to close.
        cursor = floor_hour(now - usage_service.METER_GRACE)
        connection.execute(delete(MeterCursor).where(MeterCursor.name == "meter:instance_hour"))
        connection.execute(insert(MeterCursor), [{"name": "meter:instance_hour", "until": cursor}])
        # Statistics, as `broker serve` gathers them at start and autovacuum after a load.
        connection.execute(text("ANALYZE"))
    return records


def billing_run(
    app: Flask, client: FlaskClient, database: Database, finance: dict[str, str], period: str
) -> tuple[float, BillingRun]:
    started = time.perf_counter()
    headers = {**finance, "Idempotency-Key": str(uuid.uuid4())}
    run = _check(client.post("/v1/billing-runs", json={"period": period}, headers=headers), 202)
    run_pending(JobContext(database, app.config), HANDLERS, on_dead=ON_DEAD)
    seconds = time.perf_counter() - started
    with database.session(read_only=True) as session:
        row = session.get(BillingRun, uuid.UUID(run["id"]))
    assert row is not None
    if row.state is not BillingRunState.SUCCEEDED:
        raise SystemExit(f"the billing run is {row.state}: {row.error}")
    return seconds, row


def billing(
    app: Flask,
    client: FlaskClient,
    database: Database,
    finance_credentials: tuple[str, str],
    offer_id: uuid.UUID,
    provider_id: uuid.UUID,
) -> None:
    postgresql = database.engine.dialect.name == "postgresql"
    periods = _billing_periods(datetime.now(UTC))
    for agencies in SIZES or ([100, 1000] if postgresql else [100]):
        period = next(periods)
        started = time.perf_counter()
        loading = _loading_database(database.url)
        with _ledger_built_after(loading):
            records = billing_setup(loading, offer_id, provider_id, period, agencies)
        loading.dispose()
        setup_seconds = time.perf_counter() - started
        print(
            f"Billing run for {period}: {agencies} agencies x {RESOURCES} machines x "
            f"{records // max(agencies * RESOURCES, 1)} hours = {records} ledger records "
            f"(written {'by the database, then indexed,' if postgresql else 'by executemany'} in "
            f"{setup_seconds:.1f} s, "
            "not timed; table statistics gathered after)"
        )
        run_pending(JobContext(database, app.config), HANDLERS, on_dead=ON_DEAD)  # none expected
        for label in ("first run", "second run (rebuild)"):
            finance = _headers(client, finance_credentials)
            seconds, run = billing_run(app, client, database, finance, period)
            with database.session(read_only=True) as session:
                invoices = session.scalar(
                    select(func.count()).select_from(Invoice).where(Invoice.period == period)
                )
                lines = session.scalar(
                    select(func.count())
                    .select_from(InvoiceLine)
                    .join(Invoice, Invoice.id == InvoiceLine.invoice_id)
                    .where(Invoice.period == period)
                )
            print(
                f"  {label:<21} {seconds:7.2f} s   {records / seconds:9.0f} records/s   "
                f"{run.drafts} drafts built; {invoices} invoices, {lines} lines in {period}"
            )
    print("  goal (issue 19): first run <= 60 s at 7.2 M records on PostgreSQL, linear in records")


def issuing(client: FlaskClient, database: Database, finance_credentials: tuple[str, str]) -> None:
    """Finalize the billed period's drafts, settle the period, export an invoice."""
    finance = _headers(client, finance_credentials)
    period = next(_billing_periods(datetime.now(UTC)))  # the first size's month
    with database.session(read_only=True) as session:
        ids = list(session.scalars(select(Invoice.id).where(Invoice.period == period)))
    started = time.perf_counter()
    for invoice_id in ids:
        _check(client.post(f"/v1/invoices/{invoice_id}/finalize", headers=finance), 200)
    seconds = time.perf_counter() - started
    print(f"Issuing {period}: {len(ids)} invoices")
    print(f"  finalize (number, snapshot, hash)  {1000 * seconds / len(ids):7.1f} ms/invoice")
    started = time.perf_counter()
    report = _check(client.get(f"/v1/settlements?period={period}", headers=finance), 200)
    print(
        f"  GET /v1/settlements               {1000 * (time.perf_counter() - started):7.1f} ms"
        f"   ({len(report['items'])} provider(s); net {report['totals'][0]['net']},"
        f" fee {report['totals'][0]['fee']})"
    )
    with database.session(read_only=True) as session:
        snapshot = session.scalar(select(Invoice.snapshot).where(Invoice.id == ids[0]))
    assert snapshot is not None
    lines = len(snapshot["lines"])
    for fmt in exports.FORMATS:
        url = f"/v1/invoices/{ids[0]}/export?format={fmt}"
        # Warm-up: a process's first PDF parses its fonts (`bench/pdf.py` times it apart).
        client.get(url, headers=finance)
        started = time.perf_counter()
        for _ in range(5):
            size = len(client.get(url, headers=finance).get_data())
        per = (time.perf_counter() - started) / 5
        print(f"  export {fmt:<4} ({lines} lines)         {1000 * per:7.1f} ms   {size:8d} bytes")
    # A large invoice: the same lines a hundred times over (pure functions, no HTTP).
    issued = Document.from_snapshot(snapshot)
    big = dataclasses.replace(
        issued,
        lines=tuple(
            dataclasses.replace(line, position=index)
            for index, line in enumerate(issued.lines * 100, start=1)
        ),
    )
    for fmt in ("pdf", "cii"):
        started = time.perf_counter()
        content, _ = exports.render(big, fmt)
        print(
            f"  {fmt} of {len(big.lines)} lines              "
            f"{1000 * (time.perf_counter() - started):7.0f} ms   {len(content):8d} bytes"
        )


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _timed(label: str, step: Callable[[], None]) -> None:
    started = time.perf_counter()
    step()
    print(f"({label}: {time.perf_counter() - started:.1f} s in all)")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-billing-"))
    try:
        run(workdir, os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{workdir / 'broker.db'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # the SQLite file is large


def run(workdir: Path, url: str) -> None:
    upgrade(url)
    database = Database(url)
    app = create_app(
        {
            "DATABASE_URL": url,
            "INSTANCE_PATH": str(workdir),
            "SIGNING_KEY_FILE": str(workdir / "signing-key.pem"),
            "CREDENTIAL_KEYS": Fernet.generate_key().decode(),
            "PROVIDER_STATE_DIR": str(workdir / "providers"),
            "LOG_LEVEL": "WARNING",
            **COUNTED_NOT_LIMITED,
        }
    )
    client = app.test_client()
    consortium = _organization(database, OrganizationKind.CONSORTIUM, "Bench consortium")
    admin = _headers(client, _client(database, consortium, Role.ADMIN))
    finance_credentials = _client(database, consortium, Role.FINANCE)
    provider_org = _organization(database, OrganizationKind.PROVIDER, "Bench provider")
    operator = _headers(client, _client(database, provider_org, Role.PROVIDER))
    provider_id, offer_id = _provider_and_offer(client, admin, operator, provider_org)

    kind = "PostgreSQL" if database.engine.dialect.name == "postgresql" else "SQLite"
    print(f"python {sys.version.split()[0]}, {kind}")
    _timed("ingestion", lambda: ingestion(client, database, operator, provider_id, offer_id))
    _timed(
        "billing",
        lambda: billing(app, client, database, finance_credentials, offer_id, provider_id),
    )
    _timed("issuing", lambda: issuing(client, database, finance_credentials))
    database.dispose()


if __name__ == "__main__":
    main()
