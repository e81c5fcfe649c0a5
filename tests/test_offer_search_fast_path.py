"""The catalogue's read path (`GET /v1/offers`: rows, documents built by hand) against the
path it replaces: the same search through the ORM (`services.offers.search_offers`, which the
console still uses) dumped by `OfferSchema`, the schema that documents the list.

A small catalogue is written straight to the database with every variety a listing shows:
the three kinds of offer, drafts (with and without prices), published and retired versions
(superseded), prices with tiers and in two currencies, claims whose evidence is verified and
valid, expired, not yet valid, pending, rejected (so no evidence shown), signed by an issuer,
two verified certificates of one scheme (the best one shown), a provider exposed to foreign
law and a suspended one. For a buyer and for the operator who sees its drafts, every sort
and a spread of filters, each page of a walk by cursor must be the same on both paths: the
same documents field by field, and the same `next_cursor`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from billing.rating import Price, Specs, Tier, monthly_price
from broker.api.offers import OfferSchema
from broker.auth.identity import Caller
from broker.db import Database
from broker.models import (
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
from broker.models.base import use_clock
from broker.names import name_key
from broker.services import offers as service
from broker.services.offers import price_documents
from tests.conftest import ApiUser, MakeUser

NOW = datetime(2027, 3, 15, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)
SORTS = [f"{d}{s}" for s in service.SORTS for d in ("", "-")]
FILTERS = [
    "",
    "&certification=secnumcloud",
    "&certification=hds&kind=vm",
    "&kind=object_storage&sovereign_only=true",
    "&q=bloc&country=fr",
    "&currency=CHF&max_monthly_price=500&min_vcpu=2",
]


def _certification(
    provider_id: uuid.UUID,
    scheme: str,
    state: EvidenceState,
    start: datetime,
    end: datetime,
    submitted: datetime,
    **facts: Any,
) -> Evidence:
    decided = state in (EvidenceState.VERIFIED, EvidenceState.REJECTED)
    return Evidence(
        id=uuid.uuid4(),
        provider_id=provider_id,
        kind=EvidenceKind.CERTIFICATION,
        state=state,
        scheme=scheme,
        valid_from=start,
        valid_until=end,
        submitted_by="provider:someone",
        submitted_at=submitted,
        decided_by="consortium" if decided else None,
        decided_at=submitted + DAY if decided else None,
        **facts,
    )


def _provider(
    session: Any, name: str, organization_id: uuid.UUID, state: ProviderState, exposed: bool
) -> Provider:
    provider = Provider(
        id=uuid.uuid4(),
        name=name,
        name_key=name_key(name),
        organization_id=organization_id,
        adapter="simulated",
        adapter_config={},
        regions=[
            {"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3},
            {"code": "ch-zrh-1", "country": "CH", "city": None, "datacenter_tier": None},
        ],
        operator_country="FR",
        parent_country="US" if exposed else None,
        extraterritorial_exposure=["US_CLOUD_ACT"] if exposed else [],
        exposed=exposed,
        state=state,
        version=1,
        created_at=NOW - 400 * DAY,
    )
    session.add(provider)
    return provider


def _offer(
    session: Any,
    provider: Provider,
    number: int,
    *,
    kind: str = "vm",
    state: OfferState = OfferState.PUBLISHED,
    schemes: tuple[str, ...] = (),
    priced: bool = True,
    currency: str = "EUR",
    region: str = "fr-par-1",
    **specs: Any,
) -> Offer:
    base = Decimal("0.01") * (number % 7 + 1)
    prices = [Price("instance_hour" if kind == "vm" else "storage_gib_month", base, currency)]
    if kind == "vm":
        prices.append(Price("vcpu_hour", Decimal("0.004"), currency))
        if number % 2:
            tiers = (Tier(Decimal(100), Decimal(0)), Tier(None, Decimal("0.02")))
            prices.append(Price("egress_gib", Decimal("0.02"), currency, tiers))
    country = "FR" if region == "fr-par-1" else "CH"
    offer = Offer(
        id=uuid.uuid4(),
        provider_id=provider.id,
        sku=f"sku-{number:03d}",
        version=1 + number % 2,
        name=["Bloc rapide", "General 2", "Archive", "general 2", "Zeta"][number % 5],
        kind=kind,
        state=state,
        region_code=region,
        region_country=country,
        region_city="Paris" if country == "FR" else None,
        datacenter_tier=3 if country == "FR" else None,
        vcpu=specs.get("vcpu", 0),
        ram_gib=Decimal(specs.get("ram_gib", "0")),
        disk_gib=specs.get("disk_gib", specs.get("size_gib", 0)),
        gpu=specs.get("gpu", 0),
        size_gib=specs.get("size_gib"),
        performance=specs.get("performance"),
        iops=specs.get("iops"),
        encrypted=specs.get("encrypted", False),
        versioning=specs.get("versioning", False),
        immutability_days=specs.get("immutability_days"),
        prices=price_documents(prices) if priced else [],
        currency=currency,
        monthly_price=Decimal(0),
        published_at=None if state is OfferState.DRAFT else NOW - number * DAY,
        retired_at=NOW - DAY if state is OfferState.RETIRED else None,
        superseded_by_id=uuid.uuid4() if state is OfferState.RETIRED else None,
        created_at=NOW - (number + 10) * DAY,
        compliance=[OfferCompliance(scheme=scheme) for scheme in schemes],
    )
    if priced:
        offer.monthly_price = monthly_price(
            prices, Specs(offer.vcpu, offer.ram_gib, offer.disk_gib)
        )
    session.add(offer)
    return offer


@pytest.fixture
def catalogue(app: Flask, db: Database, make_user: MakeUser) -> tuple[ApiUser, ApiUser]:
    """A buyer, and the operator of the first provider; the catalogue in the database."""
    app.config["CLOCK"] = lambda: NOW
    buyer = make_user("agency", ["buyer"])
    operator = make_user("provider", ["provider"])
    other = make_user("provider", ["provider"])
    with db.transaction() as session:
        mine = _provider(
            session, "Nuage Bloc", uuid.UUID(operator.organization_id), ProviderState.ACTIVE, False
        )
        exposed = _provider(
            session, "Maple Sky", uuid.UUID(other.organization_id), ProviderState.ACTIVE, True
        )
        suspended = _provider(
            session, "Ombre", uuid.UUID(other.organization_id), ProviderState.SUSPENDED, False
        )
        session.flush()
        v, p, r = EvidenceState.VERIFIED, EvidenceState.PENDING, EvidenceState.REJECTED
        session.add_all(
            [
                # Two verified secnumcloud certificates: the longer-lived one is shown.
                _certification(
                    mine.id,
                    "secnumcloud",
                    v,
                    NOW - 300 * DAY,
                    NOW + 65 * DAY,
                    NOW - 300 * DAY,
                    level="3.2",
                    evidence_url="https://e.example/1",
                ),
                _certification(
                    mine.id,
                    "secnumcloud",
                    v,
                    NOW - 10 * DAY,
                    NOW + 400 * DAY,
                    NOW - 10 * DAY,
                    issuer="ANSSI",
                    statement="eyJ.signed.jws",
                    document_sha256="ab" * 32,
                ),
                _certification(mine.id, "hds", v, NOW - 900 * DAY, NOW - DAY, NOW - 900 * DAY),
                _certification(mine.id, "iso27001", p, NOW - DAY, NOW + 700 * DAY, NOW - DAY),
                _certification(mine.id, "bsi-c5", r, NOW - DAY, NOW + 700 * DAY, NOW - 2 * DAY),
                _certification(
                    exposed.id, "hds", v, NOW + 20 * DAY, NOW + 700 * DAY, NOW - 5 * DAY
                ),
                _certification(exposed.id, "hds", p, NOW - 5 * DAY, NOW + 90 * DAY, NOW - 4 * DAY),
                _certification(suspended.id, "secnumcloud", v, NOW - DAY, NOW + DAY, NOW - DAY),
            ]
        )
        every = ("secnumcloud", "hds", "iso27001", "bsi-c5")
        number = 0
        for provider in (mine, exposed, suspended):
            for state in (OfferState.PUBLISHED, OfferState.DRAFT, OfferState.RETIRED):
                for currency in ("EUR", "CHF"):
                    number += 1
                    schemes = every[number % 4 :] if number % 5 else ()
                    region = "fr-par-1" if currency == "EUR" else "ch-zrh-1"
                    common = {"state": state, "schemes": schemes, "currency": currency}
                    _offer(
                        session,
                        provider,
                        number,
                        vcpu=1 + number % 4,
                        ram_gib="3.75",
                        disk_gib=50,
                        gpu=number % 2,
                        region=region,
                        **common,
                    )
                    number += 1
                    _offer(
                        session,
                        provider,
                        number,
                        kind="volume",
                        size_gib=100 + number,
                        performance="high-iops",
                        iops=3000,
                        encrypted=True,
                        region=region,
                        **common,
                    )
                    number += 1
                    _offer(
                        session,
                        provider,
                        number,
                        kind="object_storage",
                        encrypted=True,
                        versioning=True,
                        immutability_days=None if number % 2 else 30,
                        region=region,
                        **common,
                    )
            number += 1
            _offer(
                session,
                provider,
                number,
                state=OfferState.DRAFT,
                priced=False,
                vcpu=2,
                ram_gib="4",
                schemes=("secnumcloud",),
            )
    return buyer, operator


def _caller(user: ApiUser, kind: OrganizationKind) -> Caller:
    return Caller(
        user.client_id,
        uuid.UUID(user.organization_id),
        kind,
        frozenset(Role(role) for role in user.roles),
    )


def _orm_page(
    app: Flask, db: Database, caller: Caller, query: dict[str, Any], cursor: str | None
) -> dict[str, Any]:
    """The page the ORM path finds, dumped by `OfferSchema` as the list documents it."""
    arguments = dict(query)
    limit = arguments.pop("limit")
    with app.test_request_context(), use_clock(lambda: NOW), db.session(read_only=True) as session:
        page = service.search_offers(
            session, caller, service.Search(**arguments), now=NOW, limit=limit, cursor=cursor
        )
        return {"items": OfferSchema(many=True).dump(page.items), "next_cursor": page.next_cursor}


def _search_args(app: Flask, path: str) -> dict[str, Any]:
    from broker.api.offers import SearchArgs

    with app.test_request_context(path):
        from flask import request

        return dict(SearchArgs().load(request.args.to_dict()))


@pytest.mark.parametrize("sort", SORTS)
def test_every_page_is_the_orm_paths_page(
    app: Flask, db: Database, client: FlaskClient, catalogue: tuple[ApiUser, ApiUser], sort: str
) -> None:
    buyer, operator = catalogue
    users = [
        (buyer, _caller(buyer, OrganizationKind.AGENCY)),
        (operator, _caller(operator, OrganizationKind.PROVIDER)),
    ]
    pages = 0
    for user, caller in users:
        for extra in FILTERS:
            path = f"/v1/offers?sort={sort}&limit=5{extra}"
            query = _search_args(app, path)
            query.pop("cursor")
            cursor = None
            while True:
                response = client.get(
                    path + (f"&cursor={cursor}" if cursor else ""), headers=user.headers
                )
                assert response.status_code == 200, response.get_data(as_text=True)
                expected = _orm_page(app, db, caller, query, cursor)
                assert response.json == expected, (path, cursor)
                pages += 1
                cursor = response.json["next_cursor"]
                if cursor is None:
                    break
    assert pages > 2 * len(FILTERS)  # walks of several pages, not just first pages


def test_the_catalogue_shows_every_variety(
    client: FlaskClient, catalogue: tuple[ApiUser, ApiUser]
) -> None:
    """The comparison above covers what it claims: each variety is on some page."""
    _, operator = catalogue
    items = client.get("/v1/offers?limit=200", headers=operator.headers).json["items"]
    assert {item["kind"] for item in items} == {"vm", "volume", "object_storage"}
    assert {item["state"] for item in items} == {"published", "draft"}
    claims = [claim for item in items for claim in item["compliance"]]
    assert {claim["state"] for claim in claims} == {"verified", "pending", None}
    assert {claim["valid_now"] for claim in claims} == {True, False}
    assert any(claim["signed"] for claim in claims)
    assert any(item["prices"] == [] for item in items)
    assert any("tiers" in price for item in items for price in item["prices"])
    assert {item["currency"] for item in items} == {"EUR", "CHF"}
    assert any(item["jurisdiction"]["extraterritorial_exposure"] for item in items)
