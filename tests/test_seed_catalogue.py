"""The demo catalogue seeded by `seed_demo`, as an agency's buyer searches it through the API.

The buyer's credentials come from the file the seed writes, and its token from
`POST /oauth/token`, exactly as someone trying `make run` would get them. Every search filter
must have something to show, and the seed must stay idempotent.

The seed runs once for the module, into a migrated database of its own; every test gets a
copy of that database (a file copy on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL) and
of the credentials file the seed wrote, so that each still has a database of its own.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.engine import URL, make_url

from broker.api.offers import OfferCreateSchema
from broker.api.providers import ProviderCreateSchema
from broker.db import Database
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, run_pending
from broker.migrate import upgrade
from broker.models import AuditEvent, Offer, Provider
from broker.models.base import utcnow
from broker.seed import DEMO_PROVIDERS, offer_payload, provider_payload, seed_demo
from broker.services.audit import verify_chain
from tests.conftest import ApiUser, fetch_token
from tests.helpers import all_pages

HEXAGONE, NORDET, ATLANTIC = "Hexagone Cloud", "Nordet Nuagique", "Atlantic Compute Europe"


@dataclass(frozen=True)
class Seeded:
    """A migrated database seeded by `seed_demo`, and the credentials file it wrote."""

    url: str
    credentials_file: Path


def _postgres_admin(url: URL, statement: str) -> None:
    """Run `statement` (CREATE or DROP DATABASE) on the server of `url`."""
    dsn = f"host={url.host} port={url.port} user={url.username} dbname=postgres"
    with psycopg.connect(dsn, password=url.password, autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture(scope="module")
def seeded(
    db_kind: str,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Seeded]:
    """`seed_demo`, once for the module, into a migrated database of its own."""
    root = tmp_path_factory.mktemp("seeded")
    if db_kind == "postgresql":
        server = make_url(pytestconfig.broker_pg_url)  # type: ignore[attr-defined]
        name = f"broker_seeded_{uuid.uuid4().hex[:12]}"
        _postgres_admin(server, f'CREATE DATABASE "{name}"')
        url = server.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
    else:
        path = root / "broker.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    database = Database(url)
    try:
        seed_demo(database, root / "demo-credentials.json")
    finally:
        database.dispose()  # no connection left: PostgreSQL copies only an unused template
    yield Seeded(url, root / "demo-credentials.json")
    if db_kind == "postgresql":
        _postgres_admin(server, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(seeded: Seeded, tmp_path: Path) -> Iterator[str]:
    """This test's own copy of the seeded database (instead of an empty one)."""
    seeded_url = make_url(seeded.url)
    if seeded_url.get_backend_name() == "sqlite":
        assert seeded_url.database is not None
        path = tmp_path / "broker.db"
        shutil.copyfile(seeded_url.database, path)
        yield f"sqlite:///{path}"
        return
    name = f"broker_seeded_copy_{uuid.uuid4().hex[:12]}"
    _postgres_admin(seeded_url, f'CREATE DATABASE "{name}" TEMPLATE "{seeded_url.database}"')
    yield seeded_url.set(database=name).render_as_string(hide_password=False)
    _postgres_admin(seeded_url, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def credentials_file(tmp_path: Path, seeded: Seeded) -> Path:
    """This test's copy of the credentials file the seed wrote."""
    path = tmp_path / "seed-instance" / "demo-credentials.json"
    path.parent.mkdir()
    shutil.copy2(seeded.credentials_file, path)
    return path


@pytest.fixture
def seeded_buyer(client: FlaskClient, credentials_file: Path) -> ApiUser:
    """A buyer of a seeded agency, logged in with the credentials the seed wrote."""
    written = json.loads(credentials_file.read_text())
    mine = next(c for c in written if c["kind"] == "agency" and c["roles"] == ["buyer"])
    token = fetch_token(client, mine["client_id"], mine["client_secret"])
    return ApiUser(
        mine["client_id"], mine["client_secret"], mine["organization_id"], mine["roles"], token
    )


def search(client: FlaskClient, user: ApiUser, query: str = "") -> list[dict[str, Any]]:
    return all_pages(client, user, f"/v1/offers?{query}" if query else "/v1/offers", limit=7)


def providers_of(offers: list[dict[str, Any]]) -> set[str]:
    return {offer["provider_name"] for offer in offers}


def test_the_buyer_sees_a_published_catalogue_of_three_providers(
    client: FlaskClient, seeded_buyer: ApiUser
) -> None:
    offers = search(client, seeded_buyer)
    assert len(offers) >= 18
    assert {offer["state"] for offer in offers} == {"published"}
    assert providers_of(offers) == {HEXAGONE, NORDET, ATLANTIC}
    machines = [offer for offer in offers if offer["kind"] == "vm"]
    per_provider = Counter(offer["provider_name"] for offer in machines)
    assert all(6 <= count <= 10 for count in per_provider.values()), per_provider
    assert len({offer["id"] for offer in offers}) == len(offers)
    # Sorted by monthly price within each currency by default; the cheapest EUR machine is
    # Atlantic's, the cheapest EUR offer of all a volume.
    euro = [offer for offer in offers if offer["currency"] == "EUR"]
    assert [offer["provider_name"] for offer in euro if offer["kind"] == "vm"][0] == ATLANTIC
    assert euro[0]["kind"] == "volume"
    assert [float(offer["monthly_price"]) for offer in euro] == sorted(
        float(offer["monthly_price"]) for offer in euro
    )
    # One offer shows graduated egress prices.
    tiered = [
        offer["sku"]
        for offer in offers
        if any(price.get("tiers") for price in offer["prices"] if price["metric"] == "egress_gib")
    ]
    assert len(tiered) == 1


def test_sovereign_only_leaves_out_the_operator_exposed_to_foreign_law(
    client: FlaskClient, seeded_buyer: ApiUser
) -> None:
    offers = search(client, seeded_buyer, "sovereign_only=true")
    assert offers
    assert providers_of(offers) == {HEXAGONE, NORDET}
    assert all(not offer["jurisdiction"]["extraterritorial_exposure"] for offer in offers)


def test_secnumcloud_is_hexagone_only(client: FlaskClient, seeded_buyer: ApiUser) -> None:
    offers = search(client, seeded_buyer, "certification=secnumcloud")
    assert offers
    assert providers_of(offers) == {HEXAGONE}
    # Its development offer is outside the qualified perimeter.
    assert "hc-dev-s-lyo" not in {offer["sku"] for offer in offers}


def test_an_expired_certification_matches_nothing_but_is_shown_as_expired(
    client: FlaskClient, seeded_buyer: ApiUser
) -> None:
    assert search(client, seeded_buyer, "certification=soc2-type2") == []
    nordet = [offer for offer in search(client, seeded_buyer) if offer["provider_name"] == NORDET]
    soc2 = [c for offer in nordet for c in offer["compliance"] if c["scheme"] == "soc2-type2"]
    assert soc2
    assert all(claim["valid_now"] is False for claim in soc2)
    cccs = search(client, seeded_buyer, "certification=cccs-medium")
    assert providers_of(cccs) == {NORDET}


def test_canadian_dollars_are_nordet_only(client: FlaskClient, seeded_buyer: ApiUser) -> None:
    offers = search(client, seeded_buyer, "currency=CAD")
    assert offers
    assert providers_of(offers) == {NORDET}


@pytest.mark.parametrize(
    "query",
    [
        "country=FR",
        "country=de",
        "region=ca-qc-2",
        "certification=bsi-c5",
        "certification=hds",
        "min_vcpu=16",
        "min_ram_gib=128",
        "max_monthly_price=200&currency=EUR",
        "q=gpu",
        "q=m%C3%A9moire",
        "kind=vm&min_vcpu=8&sovereign_only=true&sort=-ram_gib",
    ],
)
def test_every_filter_has_something_to_show(
    client: FlaskClient, seeded_buyer: ApiUser, query: str
) -> None:
    everything = search(client, seeded_buyer)
    found = search(client, seeded_buyer, query)
    assert 0 < len(found) < len(everything), query


def test_a_datacenter_tier_filter_keeps_the_offers_of_that_tier_or_above(
    client: FlaskClient, seeded_buyer: ApiUser
) -> None:
    everything = search(client, seeded_buyer)
    tier_four = search(client, seeded_buyer, "min_datacenter_tier=4")
    assert {offer["id"] for offer in tier_four} == {
        offer["id"] for offer in everything if (offer["datacenter_tier"] or 0) >= 4
    }
    assert 0 < len(tier_four) < len(everything)
    refused = client.get("/v1/offers?min_datacenter_tier=5", headers=seeded_buyer.headers)
    assert refused.status_code == 422 and "min_datacenter_tier" in refused.json["errors"]


@pytest.mark.parametrize("sort", ["monthly_price", "-vcpu", "ram_gib", "-name"])
def test_every_sort_orders_the_whole_catalogue(
    client: FlaskClient, seeded_buyer: ApiUser, sort: str
) -> None:
    offers = search(client, seeded_buyer, f"sort={sort}")
    assert len(offers) == len(search(client, seeded_buyer))
    assert len({offer["id"] for offer in offers}) == len(offers)


def test_seeding_twice_duplicates_nothing(
    db: Database, client: FlaskClient, seeded_buyer: ApiUser, credentials_file: Path
) -> None:
    def counts() -> tuple[int, int, int, int]:
        with db.session(read_only=True) as session:
            providers = session.scalar(select(func.count()).select_from(Provider)) or 0
            offers = session.scalar(select(func.count()).select_from(Offer)) or 0
            versions = session.scalar(
                select(func.count()).select_from(
                    select(Offer.provider_id, Offer.sku).distinct().subquery()
                )
            )
            events = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
        return providers, offers, versions or 0, events

    first = counts()
    assert first[0] == 3
    assert first[1] == first[2]  # one version of each offer
    seed_demo(db, credentials_file)
    assert counts() == first
    assert len(search(client, seeded_buyer)) == first[1]
    with db.session(read_only=True) as session:
        assert verify_chain(session).ok


def test_the_seed_data_is_what_the_api_would_accept() -> None:
    """The seed calls the services directly; its tables must still pass the API's schemas."""
    now, some_id = utcnow(), uuid.uuid4()

    def as_json(payload: dict[str, Any]) -> Any:
        def encode(value: Any) -> str:
            return value.isoformat() if isinstance(value, datetime) else str(value)

        return json.loads(json.dumps(payload, default=encode))

    for demo in DEMO_PROVIDERS:
        ProviderCreateSchema().load(as_json(provider_payload(demo, some_id, now)))
        assert 6 <= len(demo.offers) <= 10
        for offer in demo.offers:
            OfferCreateSchema().load(as_json(offer_payload(demo, offer, some_id)))


def test_an_offer_sync_of_a_demo_provider_finds_its_catalogue_in_place(
    app: Flask, db: Database, client: FlaskClient, seeded_buyer: ApiUser, admin: ApiUser
) -> None:
    """The demo providers' simulated clouds sell what their offers list, and the machine types
    not offered yet, which a sync makes drafts of."""
    with db.session(read_only=True) as session:
        providers = session.scalars(select(Provider).order_by(Provider.name)).all()
        offers_before = session.scalar(select(func.count()).select_from(Offer))
    jobs = []
    for provider in providers:
        response = client.post(f"/v1/providers/{provider.id}/sync", headers=admin.headers)
        assert response.status_code == 202, response.get_data(as_text=True)
        jobs.append(response.json["id"])
    assert run_pending(JobContext(db, app.config), HANDLERS) == len(providers)
    for provider, job_id in zip(providers, jobs, strict=True):
        job = client.get(f"/v1/jobs/{job_id}", headers=admin.headers).json
        assert job["state"] == "succeeded", job
        demo = next(d for d in DEMO_PROVIDERS if d.name == provider.name)
        assert sorted(job["result"]["unchanged"]) == sorted(o.sku for o in demo.offers)
        assert sorted(job["result"]["created"]) == sorted(o.sku for o in demo.not_offered)
        assert job["result"]["updated"] == []
        assert job["result"]["versioned"] == job["result"]["skipped"] == []
    new_drafts = sum(len(d.not_offered) for d in DEMO_PROVIDERS)
    assert new_drafts > 0
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(Offer)) == offers_before + new_drafts


def _seeded_user(client: FlaskClient, credentials_file: Path, roles: list[str]) -> ApiUser:
    written = json.loads(credentials_file.read_text())
    mine = next(c for c in written if c["roles"] == roles)
    token = fetch_token(client, mine["client_id"], mine["client_secret"])
    return ApiUser(mine["client_id"], mine["client_secret"], mine["organization_id"], roles, token)


def test_the_demo_has_vouched_evidence_a_signed_statement_and_a_pending_claim(
    client: FlaskClient, seeded_buyer: ApiUser, credentials_file: Path, tmp_path: Path
) -> None:
    assessor = _seeded_user(client, credentials_file, ["assessor"])
    queue = all_pages(client, assessor, "/v1/evidence?state=pending")
    assert [(item["scheme"], item["state"]) for item in queue] == [("secnumcloud", "pending")]
    atlantic = get_provider(client, seeded_buyer, ATLANTIC)
    assert queue[0]["provider_id"] == atlantic["id"]
    # Atlantic's offers show the claim, not as valid; no search finds it by it.
    claims = [c for o in search(client, seeded_buyer, "q=Frankfurt") for c in o["compliance"]]
    assert {
        (c["scheme"], c["state"], c["valid_now"]) for c in claims if c["scheme"] == "secnumcloud"
    } == {("secnumcloud", "pending", False)}
    # Hexagone's EUCS certificate is a statement signed by the demo certification body.
    hexagone = get_provider(client, seeded_buyer, HEXAGONE)
    eucs = [c for c in hexagone["compliance"] if c["scheme"] == "eucs"]
    assert [(c["signed"], c["counts"], c["key_id"]) for c in eucs] == [(True, True, "demo-1")]
    assert providers_of(search(client, seeded_buyer, "certification=eucs")) == {HEXAGONE, ATLANTIC}
    issuers = all_pages(client, seeded_buyer, "/v1/trusted-issuers")
    assert [i["issuer"] for i in issuers] == ["https://certification.demo.example"]
    assert eucs[0]["verified_by"] == issuers[0]["name"]
    # Everything else was entered by the consortium: verified.
    nordet = get_provider(client, seeded_buyer, NORDET)
    evidence = all_pages(client, assessor, f"/v1/providers/{nordet['id']}/evidence")
    assert {(e["state"], e["decided_by"]) for e in evidence} == {("verified", "consortium")}


def get_provider(client: FlaskClient, user: ApiUser, name: str) -> dict[str, Any]:
    return next(p for p in all_pages(client, user, "/v1/providers") if p["name"] == name)
