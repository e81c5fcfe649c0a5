"""Catalogue search (`GET /v1/offers`) against a brute-force filter over the same inputs.

A catalogue of four providers (one exposed to the US CLOUD Act, one suspended) and 150
offers is written straight to the database; the expected result of every query is computed
in Python from those inputs alone, never from the code under test. Every assertion about
search goes through HTTP with a real token: every filter alone and combined, every sort with
ties broken by id, cursors walked to the end, who sees which offers, cursors bound to their
query, and certifications that are matched only while their evidence is valid.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.rating import Specs, monthly_price
from broker.db import Database
from broker.models import (
    Offer,
    OfferCompliance,
    OfferState,
    Provider,
    ProviderState,
)
from broker.names import name_key
from broker.services.offers import parse_prices, price_documents
from tests.catalogue_fixtures import vouched_provider_evidence
from tests.conftest import ApiUser, MakeUser

NOW = datetime(2027, 3, 15, 9, 30, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
CENT = Decimal("0.01")

SORTS = ["monthly_price", "vcpu", "ram_gib", "name"]
ALL_SORTS = [f"{d}{s}" for s in SORTS for d in ("", "-")]
SCHEMES = ["secnumcloud", "hds", "iso27001", "bsi-c5"]
NAMES = [
    "Compute Small",
    "compute small",
    "Compute Medium",
    "COMPUTE LARGE",
    "Memory 2x",
    "GPU_Box",
    "Promo 50% off",
    "Zenith",
    "alpha edge",
    "Beta Edge",
]
QUERIES = [
    "",
    "compute",
    "COMPUTE",
    "small",
    "sas",
    "SKY",
    "bund",
    "50%",
    "%",
    "_",
    "gpu_",
    "nsv.",
    "c8",
    "-01",
    "edge",
    "zzz",
    "Promo 50",
]


# --- the catalogue, as the test knows it -------------------------------------------------------


@dataclass(eq=False)
class ProviderSpec:
    key: str
    name: str
    operator_country: str
    parent_country: str | None
    exposure: list[str]
    state: ProviderState
    regions: list[dict[str, Any]]
    # (scheme, valid_from, valid_until)
    evidence: list[tuple[str, datetime, datetime]]
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    organization_id: str = ""

    def certified(self, scheme: str, at: datetime) -> bool:
        return any(s == scheme and start <= at < end for s, start, end in self.evidence)

    @property
    def schemes(self) -> list[str]:
        return sorted({scheme for scheme, _, _ in self.evidence})


@dataclass(frozen=True, eq=False)
class OfferSpec:
    id: uuid.UUID
    provider: ProviderSpec
    sku: str
    name: str
    state: OfferState
    region: dict[str, Any]
    vcpu: int
    ram: Decimal
    disk: int
    currency: str
    unit_prices: dict[str, Decimal]
    claims: frozenset[str]

    @property
    def monthly(self) -> Decimal:
        """730 hours of one machine, each metric rounded half-up to the cent, then summed."""
        usage = {
            "instance_hour": Decimal(730),
            "vcpu_hour": Decimal(730 * self.vcpu),
            "ram_gib_hour": 730 * self.ram,
            "storage_gib_month": Decimal(self.disk),
        }
        return sum(
            (
                (usage[metric] * price).quantize(CENT, rounding=ROUND_HALF_UP)
                for metric, price in self.unit_prices.items()
            ),
            Decimal(0),
        )


@dataclass
class Catalogue:
    providers: dict[str, ProviderSpec]
    offers: list[OfferSpec]
    buyer: ApiUser
    operators: dict[str, ApiUser]  # provider key → an operator of that provider

    def user(self, who: str) -> ApiUser:
        return self.buyer if who == "buyer" else self.operators[who]

    def visible(self, who: str) -> list[OfferSpec]:
        """Published offers of active providers; drafts too, for their own operators."""
        return [
            o
            for o in self.offers
            if (o.state is OfferState.PUBLISHED and o.provider.state is ProviderState.ACTIVE)
            or (who != "buyer" and o.state is OfferState.DRAFT and o.provider.key == who)
        ]


def _provider_specs() -> dict[str, ProviderSpec]:
    def region(code: str, country: str, city: str, tier: int | None = 3) -> dict[str, Any]:
        return {"code": code, "country": country, "city": city, "datacenter_tier": tier}

    return {
        "nuage": ProviderSpec(
            "nuage",
            "Nuage Souverain SAS",
            "FR",
            None,
            [],
            ProviderState.ACTIVE,
            [
                region("fr-par-1", "FR", "Paris"),
                region("fr-lyo-1", "FR", "Lyon", 4),
                region("de-fra-2", "DE", "Frankfurt"),
            ],
            [
                ("secnumcloud", NOW - 300 * DAY, NOW + 65 * DAY),
                ("hds", NOW - 1000 * DAY, NOW - 10 * DAY),  # expired
                ("iso27001", NOW - 100 * DAY, NOW + 900 * DAY),
            ],
        ),
        "wolke": ProviderSpec(
            "wolke",
            "Wolke Bund GmbH",
            "DE",
            "DE",
            [],
            ProviderState.ACTIVE,
            [region("de-fra-1", "DE", "Frankfurt"), region("de-ber-1", "DE", "Berlin", None)],
            [
                ("bsi-c5", NOW - 50 * DAY, NOW + 500 * DAY),
                ("iso27001", NOW - 800 * DAY, NOW - DAY),  # expired yesterday
                ("secnumcloud", NOW + 20 * DAY, NOW + 700 * DAY),  # not valid yet
            ],
        ),
        "maple": ProviderSpec(
            "maple",
            "Maple Sky Inc.",
            "CA",
            "US",
            ["US_CLOUD_ACT"],
            ProviderState.ACTIVE,
            [
                region("ca-mtl-1", "CA", "Montreal"),
                region("ca-tor-1", "CA", "Toronto"),
                region("fr-par-1", "FR", "Paris"),
            ],
            [
                ("iso27001", NOW - 10 * DAY, NOW + 300 * DAY),
                ("hds", NOW - 900 * DAY, NOW - 200 * DAY),  # an expired one …
                ("hds", NOW - 199 * DAY, NOW + 166 * DAY),  # … and its valid renewal
            ],
        ),
        "ombre": ProviderSpec(
            "ombre",
            "Ombre Cloud SAS",
            "FR",
            None,
            [],
            ProviderState.SUSPENDED,
            [region("fr-par-1", "FR", "Paris")],
            [("secnumcloud", NOW - 10 * DAY, NOW + 100 * DAY)],
        ),
    }


def _offer_specs(providers: dict[str, ProviderSpec]) -> list[OfferSpec]:
    rng = random.Random(20270315)
    counts = {"nuage": 50, "wolke": 35, "maple": 45, "ombre": 20}
    prefixes = {"nuage": "nsv", "wolke": "wbd", "maple": "mpl", "ombre": "omb"}
    offers: list[OfferSpec] = []
    index = 0
    for key, count in counts.items():
        provider = providers[key]
        for _ in range(count):
            index += 1
            region = rng.choice(provider.regions)
            if key == "maple":
                currency = "EUR" if region["country"] == "FR" else "CAD"
            else:
                currency = rng.choice(["EUR", "EUR", "EUR", "CAD"]) if key == "nuage" else "EUR"
            previous = offers[-1] if offers else None
            if previous is not None and index % 7 == 3:
                # Same machine and prices as the previous offer: ties on every sort key.
                vcpu, ram, disk = previous.vcpu, previous.ram, previous.disk
                unit_prices, currency = dict(previous.unit_prices), previous.currency
                name = previous.name
            else:
                vcpu = rng.choice([1, 2, 4, 8, 16, 32, 64])
                ram = Decimal(rng.choice(["0.5", "1", "2", "3.75", "4", "8", "16", "32", "64"]))
                disk = rng.choice([0, 20, 50, 100])
                unit_prices = {
                    "instance_hour": Decimal(rng.choice(["0.01", "0.0125", "0.02", "0.047"])),
                    "vcpu_hour": Decimal(rng.choice(["0.004", "0.0051", "0.01"])),
                    "ram_gib_hour": Decimal(rng.choice(["0.0015", "0.002", "0.003125"])),
                }
                storage = rng.choice([None, "0.04", "0.055"])
                if storage is not None:
                    unit_prices["storage_gib_month"] = Decimal(storage)
                name = rng.choice(NAMES)
            state = rng.choices(
                [OfferState.PUBLISHED, OfferState.DRAFT, OfferState.RETIRED], [70, 15, 15]
            )[0]
            claims = frozenset(rng.sample(provider.schemes, rng.randint(0, len(provider.schemes))))
            separator = rng.choice([".", "_", "-"])
            offers.append(
                OfferSpec(
                    id=uuid.uuid4(),
                    provider=provider,
                    sku=f"{prefixes[key]}{separator}c{vcpu}-{index:03d}",
                    name=name,
                    state=state,
                    region=region,
                    vcpu=vcpu,
                    ram=ram,
                    disk=disk,
                    currency=currency,
                    unit_prices=unit_prices,
                    claims=claims,
                )
            )
    return offers


def insert_catalogue(db: Database, providers: list[ProviderSpec], offers: list[OfferSpec]) -> None:
    """Write providers, their evidence and offers directly with the ORM."""
    with db.transaction() as session:
        for p in providers:
            session.add(
                Provider(
                    id=p.id,
                    name=p.name,
                    name_key=name_key(p.name),
                    organization_id=uuid.UUID(p.organization_id),
                    adapter="fake",
                    adapter_config={},
                    regions=p.regions,
                    operator_country=p.operator_country,
                    parent_country=p.parent_country,
                    extraterritorial_exposure=p.exposure,
                    exposed=bool(p.exposure),
                    state=p.state,
                    version=1,
                    evidence=vouched_provider_evidence(
                        datetime(2020, 1, 1, tzinfo=UTC),
                        certifications=[
                            (
                                scheme,
                                "high" if scheme == "secnumcloud" else None,
                                start,
                                end,
                                f"https://evidence.example/{p.key}/{scheme}",
                            )
                            for scheme, start, end in p.evidence
                        ],
                        jurisdiction=(p.operator_country, p.parent_country, list(p.exposure)),
                        regions=p.regions,
                    ),
                )
            )
        session.flush()
        for o in offers:
            raw = [
                {"metric": metric, "unit_price": str(price), "currency": o.currency}
                for metric, price in o.unit_prices.items()
            ]
            prices = parse_prices(raw)
            session.add(
                Offer(
                    id=o.id,
                    provider_id=o.provider.id,
                    sku=o.sku,
                    version=1,
                    name=o.name,
                    kind="vm",
                    state=o.state,
                    region_code=o.region["code"],
                    region_country=o.region["country"],
                    region_city=o.region["city"],
                    datacenter_tier=o.region["datacenter_tier"],
                    vcpu=o.vcpu,
                    ram_gib=o.ram,
                    disk_gib=o.disk,
                    gpu=0,
                    prices=price_documents(prices),
                    currency=o.currency,
                    monthly_price=monthly_price(prices, Specs(o.vcpu, o.ram, o.disk)),
                    published_at=None if o.state is OfferState.DRAFT else NOW - 30 * DAY,
                    retired_at=NOW - DAY if o.state is OfferState.RETIRED else None,
                    compliance=[OfferCompliance(scheme=s) for s in sorted(o.claims)],
                )
            )


@pytest.fixture
def catalogue(app: Flask, db: Database, make_user: MakeUser) -> Catalogue:
    app.config["CLOCK"] = lambda: NOW
    providers = _provider_specs()
    operators: dict[str, ApiUser] = {}
    for key, provider in providers.items():
        operator = make_user("provider", ["provider"], name=f"{provider.name} (operator)")
        provider.organization_id = operator.organization_id
        operators[key] = operator
    offers = _offer_specs(providers)
    insert_catalogue(db, list(providers.values()), offers)
    return Catalogue(providers, offers, make_user("agency", ["buyer"]), operators)


# --- the brute force -------------------------------------------------------------------------


def matches(offer: OfferSpec, params: dict[str, Any], at: datetime = NOW) -> bool:
    """Whether `offer` satisfies the query `params`, decided from the test's own inputs."""
    checks: dict[str, Callable[[Any], bool]] = {
        "provider": lambda v: str(offer.provider.id) == str(v),
        "region": lambda v: offer.region["code"] == v,
        "country": lambda v: offer.region["country"] == v.upper(),
        "kind": lambda v: v == "vm",
        "min_vcpu": lambda v: offer.vcpu >= int(v),
        "min_ram_gib": lambda v: offer.ram >= Decimal(str(v)),
        "currency": lambda v: offer.currency == v,
        "max_monthly_price": lambda v: offer.monthly <= Decimal(v),
        "certification": lambda v: v in offer.claims and offer.provider.certified(v, at),
        "sovereign_only": lambda v: v != "true" or not offer.provider.exposure,
        "q": lambda v: (
            not v
            or v.lower() in offer.name.lower()
            or v.lower() in offer.sku.lower()
            or v.lower() in offer.provider.name.lower()
        ),
        "sort": lambda v: True,
    }
    return all(checks[name](value) for name, value in params.items())


def sort_key(sort: str) -> Callable[[OfferSpec], tuple[Any, ...]]:
    """The order a sort promises, ties broken by id; prices compare within a currency only,
    so a price sort groups offers by currency first."""
    field_name = sort.removeprefix("-")
    value: Callable[[OfferSpec], Any] = {
        "monthly_price": lambda o: (o.currency, o.monthly),
        "vcpu": lambda o: o.vcpu,
        "ram_gib": lambda o: o.ram,
        "name": lambda o: o.name,
    }[field_name]
    return lambda o: (value(o), o.id.int)


def expected(catalogue: Catalogue, who: str, params: dict[str, Any]) -> list[str]:
    sort = params.get("sort", "monthly_price")
    found = [o for o in catalogue.visible(who) if matches(o, params)]
    found.sort(key=sort_key(sort), reverse=sort.startswith("-"))
    return [str(o.id) for o in found]


def walk(client: FlaskClient, user: ApiUser, params: dict[str, Any], limit: int) -> list[str]:
    """Every id of a search, following `next_cursor`; each page checked on the way."""
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(500):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/offers", query_string=query, headers=user.headers)
        assert response.status_code == 200, (query, response.get_data(as_text=True))
        page = response.json
        assert len(page["items"]) <= limit
        ids.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
        assert len(page["items"]) == limit, "a page before the last one is short"
    raise AssertionError("pagination did not end")


# --- every filter alone, every sort ------------------------------------------------------------


def _single_filters(catalogue: Catalogue) -> list[dict[str, Any]]:
    providers = catalogue.providers
    eur_prices = sorted({o.monthly for o in catalogue.offers if o.currency == "EUR"})
    cad_prices = sorted({o.monthly for o in catalogue.offers if o.currency == "CAD"})
    cases: list[dict[str, Any]] = [{}]
    cases += [{"provider": str(p.id)} for p in providers.values()]
    cases += [{"provider": str(uuid.uuid4())}]
    cases += [{"region": code} for code in ["fr-par-1", "fr-lyo-1", "de-fra-1", "ca-tor-1"]]
    cases += [{"region": "mars-1"}]
    cases += [{"country": c} for c in ["FR", "fr", "De", "dE", "ca", "US"]]
    cases += [{"kind": "vm"}]
    cases += [{"min_vcpu": n} for n in [0, 1, 8, 9, 64, 65]]
    cases += [{"min_ram_gib": r} for r in ["0", "0.5", "0.6", "3.75", "3.74", "64", "64.5"]]
    cases += [{"currency": c} for c in ["EUR", "CAD", "USD"]]
    for currency, amounts in (("EUR", eur_prices), ("CAD", cad_prices)):
        for amount in [amounts[0], amounts[len(amounts) // 2], amounts[-1]]:
            cases.append({"max_monthly_price": str(amount), "currency": currency})
            cases.append({"max_monthly_price": str(amount - CENT), "currency": currency})
        cases.append({"max_monthly_price": "0", "currency": currency})
    cases += [{"certification": s} for s in [*SCHEMES, "soc2"]]
    cases += [{"sovereign_only": "true"}, {"sovereign_only": "false"}]
    cases += [{"q": q} for q in QUERIES]
    return cases


def _in_memory_catalogue() -> Catalogue:
    """The same generated catalogue, without a database (for checks on the data itself)."""
    providers = _provider_specs()
    return Catalogue(providers, _offer_specs(providers), None, {})  # type: ignore[arg-type]


def test_the_catalogue_has_what_the_scenarios_need() -> None:
    """Guard: the generated data exercises drafts, retirements, ties and every provider."""
    catalogue = _in_memory_catalogue()
    states = {o.state for o in catalogue.offers}
    assert states == set(OfferState)
    for key in catalogue.providers:
        assert any(o.provider.key == key and o.state is OfferState.DRAFT for o in catalogue.offers)
    visible = catalogue.visible("buyer")
    assert len({o.monthly for o in visible}) < len(visible), "no ties on monthly_price"
    assert any("%" in o.name for o in visible) and any("_" in o.sku for o in visible)
    assert {o.currency for o in visible} == {"EUR", "CAD"}
    # Most single filters are neither empty nor everything.
    everything = expected(catalogue, "buyer", {})
    informative = [
        params
        for params in _single_filters(catalogue)
        if 0 < len(expected(catalogue, "buyer", params)) < len(everything)
    ]
    assert len(informative) >= 30


@pytest.mark.parametrize("who", ["buyer", "nuage"])
def test_every_filter_alone_equals_the_brute_force(
    client: FlaskClient, catalogue: Catalogue, who: str
) -> None:
    user = catalogue.user(who)
    for params in _single_filters(catalogue):
        want = expected(catalogue, who, params)
        assert walk(client, user, params, limit=200) == want, params


def test_filters_combine(client: FlaskClient, catalogue: Catalogue) -> None:
    nuage, maple = catalogue.providers["nuage"], catalogue.providers["maple"]
    combinations: list[dict[str, Any]] = [
        {"country": "fr", "certification": "secnumcloud", "sovereign_only": "true"},
        {"region": "fr-par-1", "currency": "EUR", "sort": "-vcpu"},
        {"provider": str(maple.id), "certification": "hds", "min_vcpu": 4},
        {"provider": str(nuage.id), "certification": "hds"},  # expired evidence: nothing
        {"country": "DE", "certification": "bsi-c5", "q": "edge", "sort": "name"},
        {"min_vcpu": 8, "min_ram_gib": "16", "currency": "CAD", "sort": "-monthly_price"},
        {"max_monthly_price": "60", "currency": "EUR", "sovereign_only": "true", "q": "compute"},
        {"country": "FR", "sovereign_only": "true", "certification": "iso27001", "kind": "vm"},
        {"q": "sas", "region": "fr-par-1", "sort": "-ram_gib"},
    ]
    for params in combinations:
        for who in ("buyer", "nuage"):
            want = expected(catalogue, who, params)
            assert walk(client, catalogue.user(who), params, limit=200) == want, (who, params)
    # Not all of them are trivially empty.
    assert sum(bool(expected(catalogue, "buyer", p)) for p in combinations) >= 6


def test_every_sort_walked_in_small_pages_yields_each_match_once_in_order(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    for sort in ALL_SORTS:
        want = expected(catalogue, "buyer", {"sort": sort})
        got = walk(client, catalogue.buyer, {"sort": sort}, limit=7)
        assert len(got) == len(set(got)), sort
        assert got == want, sort
        # Ties exist on every key, so the id tie-break is really exercised.
        values = [sort_key(sort)(o)[0] for o in catalogue.visible("buyer")]
        assert len(set(values)) < len(values), sort


def test_a_filtered_search_walked_one_offer_at_a_time(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    params = {"currency": "EUR", "min_vcpu": 16, "sort": "-name"}
    want = expected(catalogue, "nuage", params)
    assert 3 <= len(want) <= 60
    assert walk(client, catalogue.operators["nuage"], params, limit=1) == want


def test_search_shows_each_offer_as_it_was_written(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    by_id = {str(o.id): o for o in catalogue.offers}
    response = client.get(
        "/v1/offers", query_string={"limit": 200}, headers=catalogue.buyer.headers
    )
    assert response.status_code == 200
    for item in response.json["items"]:
        offer = by_id[item["id"]]
        assert item["provider_id"] == str(offer.provider.id)
        assert item["provider_name"] == offer.provider.name
        assert (item["sku"], item["name"], item["kind"]) == (offer.sku, offer.name, "vm")
        assert item["state"] == "published"
        assert item["region"]["code"] == offer.region["code"]
        assert item["region"]["country"] == offer.region["country"]
        assert item["specs"]["vcpu"] == offer.vcpu
        assert Decimal(str(item["specs"]["ram_gib"])) == offer.ram
        assert item["currency"] == offer.currency
        # Money is a string, in the currency's minor unit (EUR and CAD: cents).
        assert re.fullmatch(r"[0-9]+\.[0-9]{2}", item["monthly_price"]), item["monthly_price"]
        assert Decimal(item["monthly_price"]) == offer.monthly
        assert item["jurisdiction"]["extraterritorial_exposure"] == offer.provider.exposure
        shown = {c["scheme"]: c["valid_now"] for c in item["compliance"]}
        assert shown == {s: offer.provider.certified(s, NOW) for s in offer.claims}


# --- the property ------------------------------------------------------------------------------

WHO = st.sampled_from(["buyer", "nuage", "wolke"])


# The catalogue's prices are deterministic (its generator is seeded); only ids are random.
MONTHLY_PRICES = sorted({str(o.monthly) for o in _offer_specs(_provider_specs())})

FILTER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "provider": st.sampled_from(["nuage", "wolke", "maple", "ombre"]),
    "region": st.sampled_from(["fr-par-1", "fr-lyo-1", "de-fra-1", "de-ber-1", "ca-mtl-1"]),
    "country": st.sampled_from(["FR", "fr", "De", "CA", "ca", "US"]),
    "kind": st.just("vm"),
    "min_vcpu": st.integers(0, 70),
    "min_ram_gib": st.sampled_from(["0.25", "1", "2.5", "3.75", "8", "16", "33"]),
    "currency": st.sampled_from(["EUR", "CAD"]),
    "max_monthly_price": st.one_of(
        st.integers(0, 20000).map(lambda cents: str(Decimal(cents).scaleb(-2))),
        st.sampled_from(MONTHLY_PRICES),  # exactly some offer's price: the `<=` boundary
    ),
    "certification": st.sampled_from([*SCHEMES, "soc2"]),
    "sovereign_only": st.sampled_from(["true", "false"]),
    "q": st.sampled_from(QUERIES),
    "sort": st.sampled_from(ALL_SORTS),
}


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    """Up to four filters (a sort counts as one), with values from the catalogue's range."""
    names = draw(st.lists(st.sampled_from(sorted(FILTER_VALUES)), max_size=4, unique=True))
    params = {name: draw(FILTER_VALUES[name]) for name in names}
    if "max_monthly_price" in params and "currency" not in params:
        params["currency"] = draw(FILTER_VALUES["currency"])
    return params


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=queries(), who=WHO, limit=st.integers(1, 60))
def test_property_paged_search_equals_the_brute_force(
    client: FlaskClient, catalogue: Catalogue, params: dict[str, Any], who: str, limit: int
) -> None:
    if "provider" in params:
        params = {**params, "provider": str(catalogue.providers[params["provider"]].id)}
    want = expected(catalogue, who, params)
    # Keep the walk short: at most ~12 pages whatever the draw.
    limit = max(limit, math.ceil(len(want) / 12))
    got = walk(client, catalogue.user(who), params, limit=limit)
    assert len(got) == len(set(got))
    assert got == want


# --- who sees what -----------------------------------------------------------------------------


def _ids(offers: list[OfferSpec]) -> set[str]:
    return {str(o.id) for o in offers}


def test_a_buyer_sees_only_published_offers_of_active_providers(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    seen = set(walk(client, catalogue.buyer, {}, limit=200))
    published_active = [
        o for o in catalogue.offers if o.state is OfferState.PUBLISHED and o.provider.key != "ombre"
    ]
    assert seen == _ids(published_active)
    suspended = [o for o in catalogue.offers if o.provider.key == "ombre"]
    assert any(o.state is OfferState.PUBLISHED for o in suspended)
    assert not seen & _ids(suspended)
    ombre = str(catalogue.providers["ombre"].id)
    assert walk(client, catalogue.buyer, {"provider": ombre}, limit=50) == []


@pytest.mark.parametrize("who", ["nuage", "wolke"])
def test_an_operator_also_sees_its_own_drafts_but_no_one_elses(
    client: FlaskClient, catalogue: Catalogue, who: str
) -> None:
    seen = set(walk(client, catalogue.operators[who], {}, limit=200))
    drafts = [o for o in catalogue.offers if o.state is OfferState.DRAFT]
    own = [o for o in drafts if o.provider.key == who]
    others = [o for o in drafts if o.provider.key != who]
    retired = [o for o in catalogue.offers if o.state is OfferState.RETIRED]
    assert own and others and retired
    assert _ids(own) <= seen
    assert not seen & _ids(others)
    assert not seen & _ids(retired)
    assert seen == _ids(catalogue.visible(who))


def test_a_draft_is_readable_by_its_operators_only(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    draft = next(
        o for o in catalogue.offers if o.state is OfferState.DRAFT and o.provider.key == "wolke"
    )
    path = f"/v1/offers/{draft.id}"
    assert client.get(path, headers=catalogue.operators["wolke"].headers).status_code == 200
    assert client.get(path, headers=catalogue.operators["nuage"].headers).status_code == 404
    assert client.get(path, headers=catalogue.buyer.headers).status_code == 404


def test_retired_offers_never_appear_whatever_the_query(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    retired = _ids([o for o in catalogue.offers if o.state is OfferState.RETIRED])
    for who in ("buyer", "nuage", "wolke", "maple"):
        for params in ({}, {"q": "compute"}, {"sort": "-vcpu"}):
            assert not set(walk(client, catalogue.user(who), params, limit=200)) & retired


def test_search_needs_a_token(client: FlaskClient, catalogue: Catalogue) -> None:
    assert client.get("/v1/offers").status_code == 401


# --- prices in several currencies ---------------------------------------------------------------


def test_a_price_sort_never_mixes_currencies(client: FlaskClient, catalogue: Catalogue) -> None:
    """CAD and EUR amounts do not compare: the default sort (by price) lists each currency's
    offers together, cheapest first; descending reverses both; a `currency` filter leaves one
    plain price order."""
    visible = catalogue.visible("buyer")
    by_id = {str(o.id): o for o in visible}
    for params, currencies in (
        ({}, ["CAD", "EUR"]),
        ({"sort": "monthly_price"}, ["CAD", "EUR"]),
        ({"sort": "-monthly_price"}, ["EUR", "CAD"]),
        ({"currency": "EUR", "sort": "-monthly_price"}, ["EUR"]),
    ):
        got = [by_id[i] for i in walk(client, catalogue.buyer, params, limit=11)]
        assert len(got) == len([o for o in visible if matches(o, params)]), params
        # One run per currency, in the order given …
        runs = [
            c for i, c in enumerate(o.currency for o in got) if i == 0 or got[i - 1].currency != c
        ]
        assert runs == currencies, params
        # … each sorted by price (ties by id).
        for currency in currencies:
            prices = [(o.monthly, o.id.int) for o in got if o.currency == currency]
            descending = params.get("sort", "").startswith("-")
            assert prices == sorted(prices, reverse=descending), (params, currency)
    # Interleaving by amount alone would have mixed them: the catalogue has CAD offers both
    # cheaper and dearer than some EUR offer.
    eur = [o.monthly for o in visible if o.currency == "EUR"]
    assert any(min(eur) < o.monthly < max(eur) for o in visible if o.currency == "CAD")


# --- refusals --------------------------------------------------------------------------------


def test_a_price_ceiling_needs_a_currency(client: FlaskClient, catalogue: Catalogue) -> None:
    response = client.get(
        "/v1/offers", query_string={"max_monthly_price": "100"}, headers=catalogue.buyer.headers
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "currency" in response.json["errors"]


def test_a_cursor_only_continues_the_query_it_came_from(
    client: FlaskClient, catalogue: Catalogue
) -> None:
    base = {"currency": "EUR", "sort": "monthly_price"}
    headers = catalogue.buyer.headers
    first = client.get("/v1/offers", query_string={**base, "limit": 3}, headers=headers)
    assert first.status_code == 200
    cursor = first.json["next_cursor"]
    assert cursor

    same = client.get(
        "/v1/offers", query_string={**base, "limit": 3, "cursor": cursor}, headers=headers
    )
    assert same.status_code == 200
    assert same.json["items"][0]["id"] == expected(catalogue, "buyer", base)[3]

    for changed in [
        {"min_vcpu": 2},
        {"currency": "CAD"},
        {"q": "compute"},
        {"sort": "-monthly_price"},
        {"sort": "name"},
        {"certification": "hds"},
        {"sovereign_only": "true"},
    ]:
        other = client.get(
            "/v1/offers",
            query_string={**base, **changed, "limit": 3, "cursor": cursor},
            headers=headers,
        )
        assert other.status_code == 422, (changed, other.get_data(as_text=True))
        assert "cursor" in other.json["errors"], changed

    garbage = client.get(
        "/v1/offers", query_string={**base, "cursor": "not-a-cursor"}, headers=headers
    )
    assert garbage.status_code == 422
    assert "cursor" in garbage.json["errors"]


# --- certifications expire ---------------------------------------------------------------------


def test_a_certification_matches_only_while_its_evidence_is_valid(
    app: Flask, client: FlaskClient, db: Database, make_user: MakeUser
) -> None:
    expires = NOW + 10 * DAY  # secnumcloud valid until T
    starts = NOW + 5 * DAY  # bsi-c5 valid from F (in the future at NOW)
    operator = make_user("provider", ["provider"])
    provider = ProviderSpec(
        "clock",
        "Horloge Cloud SAS",
        "FR",
        None,
        [],
        ProviderState.ACTIVE,
        [{"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3}],
        [
            ("secnumcloud", NOW - 365 * DAY, expires),
            ("bsi-c5", starts, NOW + 365 * DAY),
        ],
        organization_id=operator.organization_id,
    )

    def offer(sku: str, claims: set[str]) -> OfferSpec:
        return OfferSpec(
            uuid.uuid4(),
            provider,
            sku,
            f"Offer {sku}",
            OfferState.PUBLISHED,
            provider.regions[0],
            2,
            Decimal(4),
            0,
            "EUR",
            {"instance_hour": Decimal("0.05")},
            frozenset(claims),
        )

    claiming = offer("claims-both", {"secnumcloud", "bsi-c5"})
    silent = offer("claims-none", set())  # the provider's evidence is not its claim
    insert_catalogue(db, [provider], [claiming, silent])
    buyer = make_user("agency", ["buyer"])

    def found(scheme: str, at: datetime) -> list[str]:
        app.config["CLOCK"] = lambda: at
        return walk(client, buyer, {"certification": scheme}, limit=10)

    def valid_now(at: datetime) -> dict[str, bool]:
        app.config["CLOCK"] = lambda: at
        response = client.get(f"/v1/offers/{claiming.id}", headers=buyer.headers)
        assert response.status_code == 200
        return {c["scheme"]: c["valid_now"] for c in response.json["compliance"]}

    mine = [str(claiming.id)]
    assert found("secnumcloud", NOW) == mine
    assert found("secnumcloud", expires - SECOND) == mine
    assert found("secnumcloud", expires + SECOND) == []
    assert found("secnumcloud", expires + 400 * DAY) == []

    assert found("bsi-c5", NOW) == []
    assert found("bsi-c5", starts - SECOND) == []
    assert found("bsi-c5", starts + SECOND) == mine

    assert valid_now(NOW) == {"secnumcloud": True, "bsi-c5": False}
    assert valid_now(starts + SECOND) == {"secnumcloud": True, "bsi-c5": True}
    assert valid_now(expires + SECOND) == {"secnumcloud": False, "bsi-c5": True}

    app.config["CLOCK"] = lambda: NOW
    response = client.get(f"/v1/offers/{claiming.id}", headers=buyer.headers)
    secnumcloud = next(c for c in response.json["compliance"] if c["scheme"] == "secnumcloud")
    assert secnumcloud["valid_until"] == expires.isoformat().replace("+00:00", "Z")
