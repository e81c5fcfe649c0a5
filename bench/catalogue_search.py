"""What a catalogue search costs with 10,000 published offers.

Seeds 40 providers (with their certifications, some expired, some operators exposed to foreign
law) and 10,000 published VM offers with their compliance claims, by bulk ORM inserts in one
transaction, into a temporary SQLite database — or into `BENCH_DATABASE_URL` when set (an
empty, migrated-or-not database; the rows are left there). Then measures in-process through
the WSGI test client (no network) requests per second and p50/p99 latency of a buyer's
searches of `GET /v1/offers`, each next to a bare Flask JSON endpoint (the floor on this
machine), and prints the query plan the database chose for each search's main statement.

Both databases are ANALYZEd first: SQLite as `broker serve` does after seeding, PostgreSQL as
autovacuum would after such a load.

Prints figures only; nothing here is a test. Run: `.venv/bin/python bench/catalogue_search.py`.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from timing import COUNTED_NOT_LIMITED, SECONDS, bare_flask_client, measure  # noqa: E402

from billing.rating import Price, Specs, Tier, monthly_price  # noqa: E402
from broker import create_app  # noqa: E402
from broker.db import Database  # noqa: E402
from broker.migrate import upgrade  # noqa: E402
from broker.models import (  # noqa: E402
    Evidence,
    EvidenceKind,
    EvidenceState,
    Offer,
    OfferCompliance,
    OfferState,
    OrganizationKind,
    Provider,
    ProviderState,
    Role,
)
from broker.models.base import utcnow  # noqa: E402
from broker.names import name_key  # noqa: E402
from broker.services import organizations  # noqa: E402
from broker.services.offers import price_documents, refresh_search_text  # noqa: E402

PROVIDERS = 40
OFFERS = 10_000
DEEP_PAGE = 40  # the page reached by following next_cursor (limit 50: offers 1951–2000)

# country → (currency, cities, national scheme or None)
COUNTRIES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "FR": ("EUR", ("Paris", "Lyon", "Marseille", "Lille", "Strasbourg"), "secnumcloud"),
    "DE": ("EUR", ("Frankfurt", "Berlin", "München"), "bsi-c5"),
    "NL": ("EUR", ("Amsterdam", "Rotterdam"), None),
    "IE": ("EUR", ("Dublin", "Cork"), None),
    "BE": ("EUR", ("Bruxelles", "Antwerpen"), None),
    "ES": ("EUR", ("Madrid", "Barcelona"), "ens-high"),
    "IT": ("EUR", ("Milano", "Roma"), "acn-qc2"),
    "CA": ("CAD", ("Montréal", "Québec City", "Toronto"), "cccs-medium"),
    "CH": ("CHF", ("Zürich", "Genève"), None),
}
# family → (vCPU : GiB of RAM, sizes as vCPU counts, GPUs)
FAMILIES: dict[str, tuple[int, tuple[int, ...], int]] = {
    "Standard": (4, (1, 2, 4, 8, 16, 32), 0),
    "Compute": (2, (2, 4, 8, 16, 32, 64), 0),
    "Memory": (8, (2, 4, 8, 16, 32, 64), 0),
    "Burst": (2, (1, 2, 4), 0),
    "GPU": (8, (8, 16, 32), 1),
}
SIZES = {1: "XS", 2: "S", 4: "M", 8: "L", 16: "XL", 32: "2XL", 64: "4XL"}
# metric → base unit price in EUR; each provider applies its own factor
RATES = {
    "instance_hour": Decimal("0.004"),
    "vcpu_hour": Decimal("0.015"),
    "ram_gib_hour": Decimal("0.005"),
    "storage_gib_month": Decimal("0.05"),
    "egress_gib": Decimal("0.015"),
}
GPU_HOUR = Decimal("1.80")
FX = {"EUR": Decimal(1), "CAD": Decimal("1.48"), "CHF": Decimal("0.95")}

SEARCHES: list[tuple[str, str]] = [
    ("no filter, by monthly_price", "/v1/offers?sort=monthly_price&limit=50"),
    ("country=FR&certification=secnumcloud", "/v1/offers?country=FR&certification=secnumcloud"),
    (
        "sovereign_only&min_vcpu=8&sort=-ram_gib",
        "/v1/offers?sovereign_only=true&min_vcpu=8&sort=-ram_gib",
    ),
    ("q=frankfurt", "/v1/offers?q=frankfurt"),
    ("max_monthly_price=200&currency=EUR", "/v1/offers?max_monthly_price=200&currency=EUR"),
]


def _unit(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.000001"))


def seed(session: Session, rng: random.Random) -> int:
    """Bulk-insert the providers, their evidence, the offers and their claims; return the
    number of offers."""
    now = utcnow()
    countries = list(COUNTRIES)
    provider_rows: list[dict[str, Any]] = []
    evidence_rows: list[dict[str, Any]] = []
    offer_rows: list[dict[str, Any]] = []
    claim_rows: list[dict[str, Any]] = []
    for number in range(PROVIDERS):
        country = countries[number % len(countries)]
        currency, cities, national = COUNTRIES[country]
        exposed = number % 4 == 3  # a subsidiary of a US group
        name = f"Bench Provider {number:02d}"
        operator = organizations.create_organization(
            session, None, name=name, kind=OrganizationKind.PROVIDER
        )
        provider_id = uuid.uuid4()
        regions = [
            {
                "code": f"{country.lower()}-{index + 1}",
                "country": country,
                "city": city,
                "datacenter_tier": rng.choice((3, 3, 4)),
            }
            for index, city in enumerate(rng.sample(cities, k=min(len(cities), 3)))
        ]
        provider_rows.append(
            {
                "id": provider_id,
                "name": name,
                "name_key": name_key(name),
                "organization_id": operator.id,
                "adapter": "simulated",
                "adapter_config": {},
                "regions": regions,
                "operator_country": country,
                "parent_country": "US" if exposed else None,
                "extraterritorial_exposure": ["US_CLOUD_ACT"] if exposed else [],
                "exposed": exposed,
                "state": ProviderState.ACTIVE,
                "version": 1,
                "created_at": now,
            }
        )
        # (scheme, days valid from, days valid until): relative to now
        evidence = [("iso27001", -300, 700), ("eucs", -100, 900)]
        if national and not (exposed and national == "secnumcloud"):
            evidence.append((national, -200, 800))
        if number % 3 == 0:
            evidence.append(("soc2-type2", -500, -30 if number % 2 else 300))
        if country == "FR" and number % 2 == 0:
            evidence.append(("hds", -150, 600))
        schemes = [scheme for scheme, _, _ in evidence]
        vouched = {
            "provider_id": provider_id,
            "state": EvidenceState.VERIFIED,
            "submitted_by": "consortium",
            "submitted_at": now,
            "decided_by": "consortium",
            "decided_at": now,
        }
        evidence_rows += [
            {
                **vouched,
                "id": uuid.uuid4(),
                "kind": EvidenceKind.CERTIFICATION,
                "scheme": scheme,
                "valid_from": now + timedelta(days=start),
                "valid_until": now + timedelta(days=end),
                "evidence_url": f"https://evidence.example/{provider_id}/{scheme}.pdf",
            }
            for scheme, start, end in evidence
        ]
        # A claim waiting for an assessor: it must not count.
        evidence_rows.append(
            {
                **vouched,
                "id": uuid.uuid4(),
                "kind": EvidenceKind.CERTIFICATION,
                "state": EvidenceState.PENDING,
                "decided_by": None,
                "decided_at": None,
                "scheme": "secnumcloud",
                "valid_from": now - timedelta(days=1),
                "valid_until": now + timedelta(days=1000),
            }
        )
        evidence_rows.append(
            {
                **vouched,
                "id": uuid.uuid4(),
                "kind": EvidenceKind.JURISDICTION,
                "operator_country": country,
                "parent_country": "US" if exposed else None,
                "extraterritorial_exposure": ["US_CLOUD_ACT"] if exposed else [],
            }
        )
        evidence_rows += [
            {
                **vouched,
                "id": uuid.uuid4(),
                "kind": EvidenceKind.REGION,
                "region_code": region["code"],
                "country": region["country"],
                "city": region["city"],
                "datacenter_tier": region["datacenter_tier"],
            }
            for region in regions
        ]
        factor = Decimal(rng.randint(70, 140)) / 100 * FX[currency]
        rates = {metric: _unit(rate * factor) for metric, rate in RATES.items()}
        for index in range(OFFERS // PROVIDERS):
            family = rng.choice(list(FAMILIES))
            ratio, sizes, gpus = FAMILIES[family]
            vcpu = rng.choice(sizes)
            region = rng.choice(regions)
            specs = Specs(vcpu, Decimal(vcpu * ratio), rng.choice((20, 50, 100, 200)) * vcpu)
            instance = rates["instance_hour"] + gpus * _unit(GPU_HOUR * factor)
            prices = [
                Price(metric, instance if metric == "instance_hour" else rate, currency)
                for metric, rate in rates.items()
            ]
            if index % 50 == 0:  # some graduated egress
                egress = rates["egress_gib"]
                prices[-1] = Price(
                    "egress_gib",
                    egress,
                    currency,
                    (Tier(Decimal(100), Decimal(0)), Tier(None, egress)),
                )
            offer_id = uuid.uuid4()
            offer_rows.append(
                {
                    "id": offer_id,
                    "provider_id": provider_id,
                    "sku": f"bp{number:02d}-{family.lower()}-{SIZES[vcpu].lower()}-{index:04d}",
                    "version": 1,
                    "name": f"{family} {SIZES[vcpu]} — {region['city']}",
                    "kind": "vm",
                    "state": OfferState.PUBLISHED,
                    "region_code": region["code"],
                    "region_country": country,
                    "region_city": region["city"],
                    "datacenter_tier": region["datacenter_tier"],
                    "vcpu": specs.vcpu,
                    "ram_gib": specs.ram_gib,
                    "disk_gib": specs.disk_gib,
                    "gpu": gpus,
                    "prices": price_documents(prices),
                    "currency": currency,
                    "monthly_price": monthly_price(prices, specs),
                    "published_at": now,
                    "revision": 1,
                    "created_at": now,
                }
            )
            claimed = [s for s in schemes if s == "iso27001" or rng.random() < 0.8]
            claim_rows += [{"offer_id": offer_id, "scheme": scheme} for scheme in claimed]
    session.execute(insert(Provider), provider_rows)
    columns = {column.key for column in Evidence.__table__.columns}
    session.execute(
        insert(Evidence), [{key: row.get(key) for key in columns} for row in evidence_rows]
    )
    # Bulk inserts skip the ORM, which writes an offer's search text: one UPDATE writes them.
    session.execute(insert(Offer), [{**row, "search_text": ""} for row in offer_rows])
    refresh_search_text(session)
    session.execute(insert(OfferCompliance), claim_rows)
    return len(offer_rows)


def main_statement(app: Flask, client: FlaskClient, path: str, headers: dict[str, str]) -> Any:
    """The SQL (and its parameters) of the search's main SELECT over offers."""
    engine = app.extensions["broker.db"].engine
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM offers JOIN" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert client.get(path, headers=headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen[0]


def query_plan(app: Flask, statement: str, parameters: Any) -> list[str]:
    """The plan the database chose, and the median time of the statement run alone."""
    engine = app.extensions["broker.db"].engine
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters
        ).all()
        timings = []
        for _ in range(15):
            started = time.perf_counter()
            connection.exec_driver_sql(statement, parameters).all()
            timings.append(time.perf_counter() - started)
        connection.rollback()
    plan = (
        [f"{'  ' * _depth(rows, row)}{row[-1]}" for row in rows] if sqlite else [r[0] for r in rows]
    )
    return [*plan, f"(this statement alone: p50 {statistics.median(timings) * 1000:.2f} ms)"]


def _depth(rows: list[Any], row: Any) -> int:
    """Indentation of a SQLite plan row: how many ancestors it has (rows are id, parent, …)."""
    parents = {r[0]: r[1] for r in rows}
    depth, parent = 0, row[1]
    while parent in parents:
        depth, parent = depth + 1, parents[parent]
    return depth


def main() -> None:
    url = os.environ.get("BENCH_DATABASE_URL")
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    url = url or f"sqlite:///{workdir / 'broker.db'}"
    upgrade(url)
    database = Database(url)
    with database.session(read_only=True) as session:
        if session.scalar(select(func.count()).select_from(Offer)):
            sys.exit(
                f"{database.engine.url.render_as_string()} has offers already: give an empty one"
            )
    started = time.perf_counter()
    with database.transaction() as session:
        count = seed(session, random.Random(20_260_101))
        agency = organizations.create_organization(
            session, None, name="Bench Agency", kind=OrganizationKind.AGENCY
        )
        issued = organizations.create_client(
            session, None, agency.id, name="bench buyer", roles=[Role.BUYER]
        )
        client_id, secret = issued.client.client_id, issued.secret
    if database.engine.dialect.name == "postgresql":
        with database.engine.begin() as connection:
            connection.execute(text("ANALYZE"))  # as autovacuum would after such a load
    else:
        database.refresh_statistics()  # as `make run` does after seeding
    seeded_in = time.perf_counter() - started
    database.dispose()

    bare_client = bare_flask_client()
    app = create_app(
        {
            "DATABASE_URL": url,
            "INSTANCE_PATH": str(workdir),
            "LOG_LEVEL": "WARNING",
            **COUNTED_NOT_LIMITED,
        }
    )
    client = app.test_client()
    form = {"grant_type": "client_credentials"}
    token = client.post("/oauth/token", data=form, auth=(client_id, secret)).json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    # The deep page: follow next_cursor from the first page of the default search.
    cursor = None
    for _ in range(DEEP_PAGE - 1):
        page = client.get(
            "/v1/offers?limit=50" + (f"&cursor={cursor}" if cursor else ""), headers=headers
        ).json
        cursor = page["next_cursor"]
    searches = [
        *SEARCHES,
        (f"page {DEEP_PAGE} via next_cursor", f"/v1/offers?limit=50&cursor={cursor}"),
    ]

    backend = database.engine.dialect.name
    print(
        f"python {sys.version.split()[0]}, {backend}, {count} published offers of {PROVIDERS} "
        f"providers seeded in {seeded_in:.1f} s, in-process, {SECONDS:.0f} s per line"
    )
    statement, parameters = main_statement(app, client, searches[0][1], headers)
    print(f"\nmain search statement ({searches[0][1]}):\n{statement}\n")
    print("its query plan:")
    for line in query_plan(app, statement, parameters):
        print(f"  {line}")
    print("\nquery plans of the other searches:")
    for name, path in searches[1:]:
        statement, parameters = main_statement(app, client, path, headers)
        items = len(client.get(path, headers=headers).json["items"])
        print(f"  {name} ({items} items on the page):")
        for line in query_plan(app, statement, parameters):
            print(f"    {line}")
    print()

    floor = measure("bare Flask JSON endpoint", lambda: bare_client.get("/ping").status_code)

    def search(path: str) -> Callable[[], int]:
        return lambda: client.get(path, headers=headers).status_code

    for name, path in searches:
        rate = measure(name, search(path))
        print(f"{'':<44} {floor / rate:9.1f}x the bare endpoint's time")


if __name__ == "__main__":
    main()
