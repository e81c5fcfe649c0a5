"""A search's `q` against the condition it replaces, and the search text kept right.

`q` used to be `lower(name) LIKE '%q%' OR lower(sku) LIKE … OR lower(provider name) LIKE …`
(the needle lower-cased by Python, autoescaped) on every row; it is now one `LIKE` over
`offers.search_text`. For any needle — `%`, `_`, `\\`, `/`, accents, case, a line break, a
needle spanning two fields — both conditions must find the same offers, on each database
(SQLite folds ASCII letters only, PostgreSQL by its locale: the search text is lower-cased by
the database, so each keeps its own answer). And every way an offer's name, SKU or provider's
name changes (a new offer, a draft renamed, a new version, a provider renamed) leaves every
offer's search text equal to what it would be computed afresh.
"""

from __future__ import annotations

import uuid

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from broker.db import Database
from broker.models import Offer, OfferState, Provider, ProviderState
from broker.names import name_key
from broker.services import offers as service
from tests.catalogue_fixtures import create_offer, make_provider, publish_offer
from tests.conftest import ApiUser, MakeUser

# Names with what a needle can trip on: LIKE's wildcards and escape characters, letters
# whose case folds differently in Python and in each database, and ordinary words.
PROVIDER_NAMES = ["Nuage Ünïon 100%", "ÉTOILE_net\\cloud", "wolke/ZWEI", "İstanbul Σ Bulut"]
OFFER_NAMES = [
    "Général 2 vCPU",
    "GÉNÉRAL 50% off",
    "mémoire_XL",
    "Backslash \\ and slash /",
    "straße ẞ MASSE",
    "ΟΔΟΣ σίγμα",
    "plain compute",
]
SKUS = ["gen-2", "GEN.50", "mem_xl", "bs-1", "strasse", "odos", "c1"]


def _old_condition(q: str) -> ColumnElement[bool]:
    """The search's `q` before `offers.search_text` (the path it replaces)."""
    needle = q.lower()
    return or_(
        func.lower(Offer.name).contains(needle, autoescape=True),
        func.lower(Offer.sku).contains(needle, autoescape=True),
        func.lower(Provider.name).contains(needle, autoescape=True),
    )


def _found(session: Session, condition: ColumnElement[bool]) -> set[uuid.UUID]:
    return set(session.scalars(select(Offer.id).join_from(Offer, Provider).where(condition)))


@pytest.fixture
def odd_catalogue(db: Database, make_user: MakeUser) -> Database:
    """Every offer name under every provider, written with the ORM (which fills the text)."""
    operator = make_user("provider", ["provider"])
    with db.transaction() as session:
        for provider_name in PROVIDER_NAMES:
            provider = Provider(
                id=uuid.uuid4(),
                name=provider_name,
                name_key=name_key(provider_name),
                organization_id=uuid.UUID(operator.organization_id),
                adapter="simulated",
                adapter_config={},
                regions=[],
                operator_country="FR",
                extraterritorial_exposure=[],
                state=ProviderState.ACTIVE,
            )
            session.add(provider)
            session.flush()
            for name, sku in zip(OFFER_NAMES, SKUS, strict=True):
                session.add(
                    Offer(
                        id=uuid.uuid4(),
                        provider_id=provider.id,
                        sku=sku,
                        version=1,
                        name=name,
                        kind="vm",
                        state=OfferState.PUBLISHED,
                        region_code="fr-par-1",
                        region_country="FR",
                        vcpu=2,
                        ram_gib=4,
                        disk_gib=0,
                        prices=[],
                        currency="EUR",
                        monthly_price=0,
                    )
                )
    return db


def _pieces() -> list[str]:
    """Substrings of every field, and their ends joined across two fields."""
    fields = [*PROVIDER_NAMES, *OFFER_NAMES, *SKUS]
    pieces = [f[i : i + n] for f in fields for n in (1, 3, 6) for i in range(0, len(f), 2)]
    pieces += [f"{a[-3:]}\n{b[:3]}" for a, b in zip(OFFER_NAMES, SKUS, strict=True)]
    pieces += [f"{a[-2:]}{b[:2]}" for a, b in zip(OFFER_NAMES, SKUS, strict=True)]
    return [piece for piece in pieces if piece]


NEEDLES = st.one_of(
    st.sampled_from(_pieces()),
    st.sampled_from(_pieces()).map(str.upper),
    st.sampled_from(_pieces()).map(str.swapcase),
    st.text(alphabet="aAeEéÉüÜßẞσΣςİıi%_\\/ -.\n0", min_size=1, max_size=5),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=NEEDLES)
def test_a_needle_finds_what_the_three_conditions_found(odd_catalogue: Database, q: str) -> None:
    with odd_catalogue.session(read_only=True) as session:
        assert _found(session, service.text_matches(q)) == _found(session, _old_condition(q))


def test_the_fixed_needles_find_something(odd_catalogue: Database) -> None:
    """The property above compares answers; here some of them are not empty, and `%`, `_`,
    `\\`, `/` are literal (`50%` is one name's, not every name with a 50)."""
    with odd_catalogue.session(read_only=True) as session:
        counts = {
            q: len(_found(session, service.text_matches(q)))
            for q in ("50%", "_", "\\", "/", "compute", "GEN", "ünïon\nnl")
        }
    providers, per_provider = len(PROVIDER_NAMES), len(OFFER_NAMES)
    # One offer name under each provider, or every offer of one provider and one offer
    # name under each of the others.
    assert counts == {
        "50%": providers,
        "_": per_provider + providers - 1,
        "\\": per_provider + providers - 1,
        "/": per_provider + providers - 1,
        "compute": providers,
        "GEN": 2 * providers,  # gen-2 and GEN.50 (not Général: é is not e)
        "ünïon\nnl": 0,  # a line break is in no field
    }


# --- the search text stays right ----------------------------------------------------------


def _stale(db: Database) -> list[tuple[str, str]]:
    """Offers whose search text is not what it would be computed afresh."""
    afresh = service.search_text(Offer.name, Offer.sku, Offer.provider_id)
    with db.session(read_only=True) as session:
        rows = session.execute(
            select(Offer.name, Offer.search_text).where(Offer.search_text != afresh)
        )
        return [(row.name, row.search_text) for row in rows]


def _search(client: FlaskClient, user: ApiUser, q: str) -> set[str]:
    response = client.get("/v1/offers", query_string={"q": q}, headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {item["id"] for item in response.json["items"]}


def test_every_write_keeps_the_search_text(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user, name="Nordlicht Cloud")
    operator = setup.operator
    draft, etag = create_offer(client, operator, setup.id, sku="nl-1", name="Aurora Small")
    assert _stale(db) == []
    assert _search(client, operator, "aurora") == {draft["id"]}  # the operator sees drafts
    assert _search(client, operator, "NL-1") == {draft["id"]}
    assert _search(client, operator, "nordlicht") == {draft["id"]}

    renamed = client.patch(
        f"/v1/offers/{draft['id']}",
        json={"name": "Borealis Small"},
        headers={**operator.headers, "If-Match": etag},
    )
    assert renamed.status_code == 200, renamed.get_data(as_text=True)
    assert _stale(db) == []
    assert _search(client, operator, "aurora") == set()
    assert _search(client, operator, "borealis") == {draft["id"]}

    published, etag = publish_offer(client, operator, draft["id"])
    successor = client.patch(
        f"/v1/offers/{published['id']}",
        json={"name": "Borealis Small v2"},
        headers={**operator.headers, "If-Match": etag},
    )
    assert successor.status_code == 201, successor.get_data(as_text=True)
    assert _stale(db) == []
    assert _search(client, operator, "small v2") == {successor.json["id"]}

    provider = client.patch(
        f"/v1/providers/{setup.id}",
        json={"name": "Südlicht Cloud"},
        headers={**admin.headers, "If-Match": setup.etag},
    )
    assert provider.status_code == 200, provider.get_data(as_text=True)
    assert _stale(db) == []
    assert _search(client, operator, "nordlicht") == set()
    assert _search(client, operator, "südlicht") == {draft["id"], successor.json["id"]}


def test_the_audit_log_does_not_record_the_search_text(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    """Derived from fields it records already (as a name's look-alike key is)."""
    setup = make_provider(client, admin, make_user)
    offer, _ = create_offer(client, setup.operator, setup.id)
    response = client.get(
        "/v1/audit-events", query_string={"object_id": offer["id"]}, headers=admin.headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    created = [event["after"] for event in response.json["items"]]
    assert created and all("name" in after for after in created)
    assert all("search_text" not in after for after in created)
