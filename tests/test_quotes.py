"""Quotes (`POST /v1/quotes`): what an offer would cost an agency, and whether its policy
allows it.

Offers are written straight to the database; every expected amount is worked out in the test
(by hand, or exactly with `Fraction` and rounded half-up to the cent), never by the code under
test. Policies are set through the API by the agency's approver, and the clock is moved through
`app.config["CLOCK"]` to let certifications expire.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
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
MONEY = re.compile(r"^[0-9]+\.[0-9]{2}$")  # an amount in EUR or CAD, as a JSON string
PLAIN_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")


# --- helpers -----------------------------------------------------------------------------------

REGIONS = [
    {"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3},
    {"code": "ca-mtl-1", "country": "CA", "city": "Montreal", "datacenter_tier": 3},
]


def half_up(value: Fraction | Decimal | int, places: int = 2) -> Decimal:
    """Round a non-negative exact value half-up to `places` decimals."""
    scaled = Fraction(value) * 10**places
    whole = scaled.numerator // scaled.denominator
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return Decimal(whole).scaleb(-places)


def add_provider(
    db: Database,
    organization_id: str,
    *,
    name: str | None = None,
    country: str = "FR",
    exposure: tuple[str, ...] = (),
    evidence: tuple[tuple[str, datetime, datetime], ...] = (),
    state: ProviderState = ProviderState.ACTIVE,
) -> uuid.UUID:
    provider_id = uuid.uuid4()
    name = name or f"Provider {provider_id.hex[:8]}"
    with db.transaction() as session:
        session.add(
            Provider(
                id=provider_id,
                name=name,
                name_key=name_key(name),
                organization_id=uuid.UUID(organization_id),
                adapter="fake",
                adapter_config={},
                regions=REGIONS,
                operator_country=country,
                parent_country=None,
                extraterritorial_exposure=list(exposure),
                exposed=bool(exposure),
                state=state,
                version=1,
                evidence=vouched_provider_evidence(
                    datetime(2020, 1, 1, tzinfo=UTC),
                    certifications=[(s, None, a, b, None) for s, a, b in evidence],
                    jurisdiction=(country, None, list(exposure)),
                    regions=REGIONS,
                ),
            )
        )
    return provider_id


def add_offer(
    db: Database,
    provider_id: uuid.UUID,
    prices: dict[str, Any],
    *,
    currency: str = "EUR",
    vcpu: int = 2,
    ram: str = "4",
    disk: int = 0,
    region: tuple[str, str] = ("fr-par-1", "FR"),
    claims: tuple[str, ...] = (),
    state: OfferState = OfferState.PUBLISHED,
) -> uuid.UUID:
    """An offer priced `{metric: "unit price" | [(up_to, unit_price), …]}`."""
    raw = []
    for metric, price in prices.items():
        if isinstance(price, list):
            tiers = [{"up_to": up_to, "unit_price": unit} for up_to, unit in price]
            raw.append(
                {"metric": metric, "unit_price": price[0][1], "currency": currency, "tiers": tiers}
            )
        else:
            raw.append({"metric": metric, "unit_price": str(price), "currency": currency})
    parsed = parse_prices(raw)
    offer_id = uuid.uuid4()
    with db.transaction() as session:
        session.add(
            Offer(
                id=offer_id,
                provider_id=provider_id,
                sku=f"sku-{offer_id.hex[:12]}",
                version=1,
                name="Quoted machine",
                kind="vm",
                state=state,
                region_code=region[0],
                region_country=region[1],
                region_city=None,
                datacenter_tier=3,
                vcpu=vcpu,
                ram_gib=Decimal(ram),
                disk_gib=disk,
                gpu=0,
                prices=price_documents(parsed),
                currency=currency,
                monthly_price=monthly_price(parsed, Specs(vcpu, Decimal(ram), disk)),
                published_at=None if state is OfferState.DRAFT else NOW - DAY,
                retired_at=NOW if state is OfferState.RETIRED else None,
                compliance=[OfferCompliance(scheme=s) for s in sorted(claims)],
            )
        )
    return offer_id


def quote(client: FlaskClient, user: ApiUser, body: dict[str, Any]) -> Any:
    return client.post("/v1/quotes", json=body, headers=user.headers)


def ok_quote(client: FlaskClient, user: ApiUser, offer_id: uuid.UUID, **body: Any) -> Any:
    response = quote(client, user, {"offer_id": str(offer_id), **body})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def lines_by_metric(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    lines = {line["metric"]: line for line in body["lines"]}
    assert len(lines) == len(body["lines"]), "a metric appears twice"
    return lines


@pytest.fixture
def operator(app: Flask, make_user: MakeUser) -> ApiUser:
    app.config["CLOCK"] = lambda: NOW
    return make_user("provider", ["provider"])


@pytest.fixture
def provider_id(db: Database, operator: ApiUser) -> uuid.UUID:
    return add_provider(
        db,
        operator.organization_id,
        evidence=(("iso27001", NOW - 100 * DAY, NOW + 100 * DAY),),
    )


@pytest.fixture
def approver(make_user: MakeUser, buyer: ApiUser) -> ApiUser:
    return make_user("agency", ["approver"], organization_id=buyer.organization_id)


def set_policy(client: FlaskClient, approver: ApiUser, **policy: Any) -> None:
    path = f"/v1/organizations/{approver.organization_id}/policy"
    current = client.get(path, headers=approver.headers)
    assert current.status_code == 200, current.get_data(as_text=True)
    body = {"currency": "EUR", "monthly_budget": None, "approval_threshold": None, **policy}
    response = client.put(
        path, json=body, headers={**approver.headers, "If-Match": current.headers["ETag"]}
    )
    assert response.status_code == 200, response.get_data(as_text=True)


# --- lines and amounts -------------------------------------------------------------------------


def test_a_quote_has_one_line_per_metric_worked_out_by_hand(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(
        db,
        provider_id,
        {
            "instance_hour": "0.0125",
            "vcpu_hour": "0.0051",
            "ram_gib_hour": "0.003125",
            "storage_gib_month": "0.055",
            "egress_gib": "0.01",  # not predictable: no line
        },
        vcpu=4,
        ram="16",
        disk=100,
    )
    body = ok_quote(client, buyer, offer_id, quantity=3, hours=100)

    assert body["offer_id"] == str(offer_id)
    assert body["offer_version"] == 1
    assert (body["quantity"], body["hours"]) == (3, 100)
    assert body["currency"] == "EUR"
    lines = lines_by_metric(body)
    assert set(lines) == {"instance_hour", "vcpu_hour", "ram_gib_hour", "storage_gib_month"}
    # instance: 3 × 100 = 300 h × 0.0125 = 3.75
    assert Decimal(lines["instance_hour"]["quantity"]) == 300
    assert lines["instance_hour"]["amount"] == "3.75"
    # vCPU: 3 × 100 × 4 = 1200 × 0.0051 = 6.12
    assert Decimal(lines["vcpu_hour"]["quantity"]) == 1200
    assert lines["vcpu_hour"]["amount"] == "6.12"
    # RAM: 3 × 100 × 16 = 4800 × 0.003125 = 15.00
    assert Decimal(lines["ram_gib_hour"]["quantity"]) == 4800
    assert lines["ram_gib_hour"]["amount"] == "15.00"
    # storage: 3 × 100 GiB × 100 h / 730 = 41.0958… GiB-months × 0.055 = 2.2602… → 2.26
    storage = Decimal(lines["storage_gib_month"]["quantity"])
    assert abs(Fraction(storage) - Fraction(3 * 100 * 100, 730)) < Fraction(1, 10**6)
    assert lines["storage_gib_month"]["amount"] == "2.26"
    assert body["total"] == "27.13"
    for line in body["lines"]:
        # Decimal strings, written plainly ("300", never "3E+2").
        assert PLAIN_DECIMAL.match(line["quantity"]), line
        assert PLAIN_DECIMAL.match(line["unit_price"]), line
        assert MONEY.match(line["amount"]), line
    assert Decimal(lines["vcpu_hour"]["unit_price"]) == Decimal("0.0051")
    assert body["allowed"] is True and body["reasons"] == []


def test_a_cad_offer_is_quoted_in_cad(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(
        db,
        provider_id,
        {"instance_hour": "0.0333", "vcpu_hour": "0.0117"},
        currency="CAD",
        vcpu=2,
        region=("ca-mtl-1", "CA"),
    )
    body = ok_quote(client, buyer, offer_id, quantity=2, hours=730)
    lines = lines_by_metric(body)
    assert body["currency"] == "CAD"
    # 1460 h × 0.0333 = 48.618 → 48.62 ; 2920 vCPU-h × 0.0117 = 34.164 → 34.16
    assert lines["instance_hour"]["amount"] == "48.62"
    assert lines["vcpu_hour"]["amount"] == "34.16"
    assert body["total"] == "82.78"
    assert MONEY.match(body["total"])


def test_amounts_round_half_up_per_line_and_the_total_sums_the_rounded_lines(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(
        db,
        provider_id,
        {"instance_hour": "0.00005", "vcpu_hour": "0.000125", "ram_gib_hour": "0.000025"},
        vcpu=2,
        ram="1",
    )
    body = ok_quote(client, buyer, offer_id, quantity=1, hours=100)
    lines = lines_by_metric(body)
    assert lines["instance_hour"]["amount"] == "0.01"  # 0.005 → 0.01 (half-even: 0.00)
    assert lines["vcpu_hour"]["amount"] == "0.03"  # 0.025 → 0.03 (half-even: 0.02)
    assert lines["ram_gib_hour"]["amount"] == "0.00"  # 0.0025 → 0.00
    # The exact sum 0.0325 would round to 0.03; a total is the sum of its rounded lines.
    assert body["total"] == "0.04"


def test_a_yen_offer_is_quoted_in_whole_yen(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    prices = {"instance_hour": "1.5", "vcpu_hour": "0.25"}
    offer_id = add_offer(db, provider_id, prices, currency="JPY", vcpu=1)
    body = ok_quote(client, buyer, offer_id, quantity=1, hours=3)
    lines = lines_by_metric(body)
    assert body["currency"] == "JPY"
    assert Decimal(lines["instance_hour"]["amount"]) == 5  # 4.5 → 5
    assert Decimal(lines["vcpu_hour"]["amount"]) == 1  # 0.75 → 1
    assert Decimal(body["total"]) == 6

    # A month: 730 × 1.5 = 1095 and 730 × 0.25 = 182.5 → 183; 1278 yen. The catalogue
    # writes that amount in the currency's minor unit ("1278"); a quote of the same month
    # must write the same amount the same way.
    month = ok_quote(client, buyer, offer_id)
    shown = client.get(f"/v1/offers/{offer_id}", headers=buyer.headers).json["monthly_price"]
    assert shown == "1278"
    assert month["total"] == shown
    assert [line["amount"] for line in month["lines"]] == ["1095", "183"]


def test_hours_default_to_a_month_and_quantity_to_one(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.0137", "vcpu_hour": "0.002"})
    body = ok_quote(client, buyer, offer_id)
    assert (body["quantity"], body["hours"]) == (1, 730)
    lines = lines_by_metric(body)
    assert Decimal(lines["instance_hour"]["quantity"]) == 730
    assert Decimal(lines["vcpu_hour"]["quantity"]) == 1460
    assert lines["instance_hour"]["amount"] == "10.00"  # 730 × 0.0137 = 10.001
    assert lines["vcpu_hour"]["amount"] == "2.92"
    assert body["total"] == "12.92"
    # The same machine for a month is what the catalogue shows as its monthly price.
    shown = client.get(f"/v1/offers/{offer_id}", headers=buyer.headers).json["monthly_price"]
    assert Decimal(shown) == Decimal("12.92")


def test_graduated_tiers_price_each_band_at_its_own_rate(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    tiers = [("100", "0.10"), ("500", "0.08"), (None, "0.05")]
    offer_id = add_offer(db, provider_id, {"instance_hour": tiers}, vcpu=1)

    # 2 × 400 = 800 h: 100 × 0.10 + 400 × 0.08 + 300 × 0.05 = 10 + 32 + 15 = 57.00
    body = ok_quote(client, buyer, offer_id, quantity=2, hours=400)
    [line] = body["lines"]
    assert Decimal(line["quantity"]) == 800
    assert line["amount"] == "57.00"
    assert Decimal(line["unit_price"]) == Decimal("0.07125")
    assert body["total"] == "57.00"

    # Exactly on a boundary: 2 × 250 = 500 h → 10 + 32 = 42.00
    assert ok_quote(client, buyer, offer_id, quantity=2, hours=250)["total"] == "42.00"
    # Inside the first band: 50 h → 5.00
    assert ok_quote(client, buyer, offer_id, quantity=1, hours=50)["total"] == "5.00"
    # One hour past the first boundary: 10 + 0.08 = 10.08
    assert ok_quote(client, buyer, offer_id, quantity=1, hours=101)["total"] == "10.08"


def test_storage_rounds_the_exact_amount_half_up(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    """75 GiB for 1 hour is 75/730 GiB-month; at 3.65 per GiB-month that is exactly 0.375,
    which rounds half-up to 0.38 (75/730 has no finite decimal expansion, so dividing first
    and multiplying after gives 0.37499…, one cent short)."""
    offer_id = add_offer(
        db, provider_id, {"instance_hour": "0", "storage_gib_month": "3.65"}, disk=75
    )
    body = ok_quote(client, buyer, offer_id, quantity=1, hours=1)
    lines = lines_by_metric(body)
    assert lines["storage_gib_month"]["amount"] == "0.38"
    assert body["total"] == "0.38"


METRICS = ["instance_hour", "vcpu_hour", "ram_gib_hour", "storage_gib_month"]
UNIT_PRICES = st.decimals(min_value=0, max_value=5, places=6, allow_nan=False)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prices=st.fixed_dictionaries(
        {"instance_hour": UNIT_PRICES},
        optional={m: UNIT_PRICES for m in METRICS[1:]},
    ),
    vcpu=st.integers(1, 128),
    ram=st.sampled_from(["0.25", "0.5", "1", "3.75", "12.125", "256"]),
    disk=st.integers(0, 5000),
    quantity=st.integers(1, 1000),
    hours=st.integers(1, 8784),
    currency=st.sampled_from(["EUR", "CAD"]),
)
def test_property_each_line_is_its_exact_amount_rounded_and_the_total_their_sum(
    client: FlaskClient,
    db: Database,
    buyer: ApiUser,
    provider_id: uuid.UUID,
    prices: dict[str, Decimal],
    vcpu: int,
    ram: str,
    disk: int,
    quantity: int,
    hours: int,
    currency: str,
) -> None:
    offer_prices = {metric: str(price) for metric, price in prices.items()}
    offer_id = add_offer(
        db, provider_id, offer_prices, currency=currency, vcpu=vcpu, ram=ram, disk=disk
    )
    body = ok_quote(client, buyer, offer_id, quantity=quantity, hours=hours)

    usage = {
        "instance_hour": Fraction(quantity * hours),
        "vcpu_hour": Fraction(quantity * hours * vcpu),
        "ram_gib_hour": quantity * hours * Fraction(ram),
        "storage_gib_month": Fraction(quantity * disk * hours, 730),
    }
    lines = lines_by_metric(body)
    assert set(lines) == set(prices)
    for metric, unit_price in prices.items():
        line = lines[metric]
        assert Decimal(line["amount"]) == half_up(usage[metric] * Fraction(unit_price)), metric
        assert PLAIN_DECIMAL.match(line["quantity"]), line
        assert MONEY.match(line["amount"]), line
    assert Decimal(body["total"]) == sum(Decimal(line["amount"]) for line in body["lines"])
    assert MONEY.match(body["total"])
    assert body["currency"] == currency


# --- what cannot be quoted, and who may ask --------------------------------------------------


def test_an_unknown_offer_is_not_found(client: FlaskClient, buyer: ApiUser) -> None:
    response = quote(client, buyer, {"offer_id": str(uuid.uuid4())})
    assert response.status_code == 404


def test_a_draft_is_not_found_and_a_retired_offer_not_orderable(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    draft = add_offer(db, provider_id, {"instance_hour": "0.01"}, state=OfferState.DRAFT)
    retired = add_offer(db, provider_id, {"instance_hour": "0.01"}, state=OfferState.RETIRED)

    response = quote(client, buyer, {"offer_id": str(draft)})
    assert response.status_code == 404  # a buyer cannot see another's draft at all

    response = quote(client, buyer, {"offer_id": str(retired)})
    assert response.status_code == 409, response.get_data(as_text=True)
    assert response.json["code"] == "not_orderable"


def test_an_offer_of_a_suspended_provider_is_not_orderable(
    client: FlaskClient, db: Database, buyer: ApiUser, operator: ApiUser
) -> None:
    suspended = add_provider(db, operator.organization_id, state=ProviderState.SUSPENDED)
    offer_id = add_offer(db, suspended, {"instance_hour": "0.01"})
    response = quote(client, buyer, {"offer_id": str(offer_id)})
    assert response.status_code == 409, response.get_data(as_text=True)
    assert response.json["code"] == "not_orderable"


def test_only_buyers_and_approvers_get_quotes(
    client: FlaskClient,
    db: Database,
    make_user: MakeUser,
    operator: ApiUser,
    provider_id: uuid.UUID,
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.01"})
    admin = make_user("consortium", ["admin"])
    finance = make_user("consortium", ["finance"], organization_id=admin.organization_id)
    for user in (admin, operator, finance):
        response = quote(client, user, {"offer_id": str(offer_id)})
        assert response.status_code == 403, user.roles
    assert client.post("/v1/quotes", json={"offer_id": str(offer_id)}).status_code == 401


def test_an_approver_may_ask_for_a_quote(
    client: FlaskClient, db: Database, approver: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.01"})
    assert ok_quote(client, approver, offer_id, hours=10)["total"] == "0.10"


def test_a_malformed_quote_request_is_refused(
    client: FlaskClient, db: Database, buyer: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.01"})
    for body in [
        {"quantity": 0},
        {"quantity": 1001},
        {"quantity": 1.5},
        {"quantity": "2"},
        {"hours": 0},
        {"hours": 8785},
        {"hours": True},
        {"colour": "blue"},
    ]:
        response = quote(client, buyer, {"offer_id": str(offer_id), **body})
        assert response.status_code == 422, (body, response.get_data(as_text=True))
        assert set(response.json["errors"]) == set(body), body
    response = quote(client, buyer, {"quantity": 1})
    assert response.status_code == 422
    assert "offer_id" in response.json["errors"]


# --- the agency's policy ---------------------------------------------------------------------


@pytest.fixture
def maple(db: Database, operator: ApiUser) -> uuid.UUID:
    """A Canadian operator with a US parent: exposed to the US CLOUD Act."""
    return add_provider(
        db,
        operator.organization_id,
        name="Maple Sky Inc.",
        country="CA",
        exposure=("US_CLOUD_ACT",),
        evidence=(("iso27001", NOW - 10 * DAY, NOW + 300 * DAY),),
    )


@pytest.fixture
def sovereign(db: Database, operator: ApiUser) -> uuid.UUID:
    """A French operator holding SecNumCloud until NOW + 10 days, and HDS."""
    return add_provider(
        db,
        operator.organization_id,
        name="Nuage Souverain SAS",
        evidence=(
            ("secnumcloud", NOW - 300 * DAY, NOW + 10 * DAY),
            ("hds", NOW - 300 * DAY, NOW + 300 * DAY),
        ),
    )


def reason_codes(body: dict[str, Any]) -> list[str]:
    for reason in body["reasons"]:
        assert reason["detail"], reason
    return [reason["code"] for reason in body["reasons"]]


def test_a_compliant_offer_is_allowed(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, sovereign: uuid.UUID
) -> None:
    set_policy(
        client,
        approver,
        monthly_budget="5000",
        sovereignty={
            "required_certifications": ["secnumcloud", "hds"],
            "allowed_countries": ["FR", "DE"],
            "forbid_extraterritorial": True,
        },
    )
    offer_id = add_offer(db, sovereign, {"instance_hour": "0.01"}, claims=("secnumcloud", "hds"))
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is True
    assert body["reasons"] == []


def test_a_missing_certification_is_a_reason(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, sovereign: uuid.UUID
) -> None:
    set_policy(client, approver, sovereignty={"required_certifications": ["secnumcloud"]})
    # The provider holds SecNumCloud, but this offer does not claim it.
    offer_id = add_offer(db, sovereign, {"instance_hour": "0.01"}, claims=("hds",))
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is False
    assert reason_codes(body) == ["certification_missing"]
    assert "secnumcloud" in body["reasons"][0]["detail"]


def test_a_country_outside_the_allowed_list_is_a_reason(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, sovereign: uuid.UUID
) -> None:
    set_policy(client, approver, sovereignty={"allowed_countries": ["DE", "BE"]})
    offer_id = add_offer(db, sovereign, {"instance_hour": "0.01"}, region=("fr-par-1", "FR"))
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is False
    assert reason_codes(body) == ["country_not_allowed"]


def test_extraterritorial_exposure_is_a_reason_when_forbidden(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, maple: uuid.UUID
) -> None:
    offer_id = add_offer(db, maple, {"instance_hour": "0.01"}, region=("fr-par-1", "FR"))
    assert ok_quote(client, buyer, offer_id)["allowed"] is True  # no policy yet

    set_policy(client, approver, sovereignty={"forbid_extraterritorial": True})
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is False
    assert reason_codes(body) == ["extraterritorial_exposure"]
    assert "US_CLOUD_ACT" in body["reasons"][0]["detail"]


def test_a_budget_in_another_currency_is_a_reason(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, sovereign: uuid.UUID
) -> None:
    set_policy(client, approver, currency="EUR", monthly_budget="1000.00")
    cad = add_offer(db, sovereign, {"instance_hour": "0.01"}, currency="CAD")
    eur = add_offer(db, sovereign, {"instance_hour": "0.01"}, currency="EUR")
    body = ok_quote(client, buyer, cad)
    assert body["allowed"] is False
    assert reason_codes(body) == ["currency_mismatch"]
    assert body["currency"] == "CAD"
    assert ok_quote(client, buyer, eur)["reasons"] == []


def test_every_broken_rule_is_listed_at_once(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, maple: uuid.UUID
) -> None:
    set_policy(
        client,
        approver,
        currency="EUR",
        monthly_budget="1000",
        sovereignty={
            "required_certifications": ["secnumcloud", "hds"],
            "allowed_countries": ["FR", "DE"],
            "forbid_extraterritorial": True,
        },
    )
    offer_id = add_offer(
        db,
        maple,
        {"instance_hour": "0.01"},
        currency="CAD",
        region=("ca-mtl-1", "CA"),
        claims=("iso27001",),
    )
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is False
    assert sorted(reason_codes(body)) == [
        "certification_missing",
        "certification_missing",
        "country_not_allowed",
        "currency_mismatch",
        "extraterritorial_exposure",
    ]
    missing = [r["detail"] for r in body["reasons"] if r["code"] == "certification_missing"]
    assert any("secnumcloud" in d for d in missing) and any("hds" in d for d in missing)
    # The money is still quoted.
    assert body["total"] == "7.30"


def test_an_expired_certification_counts_as_missing(
    app: Flask,
    client: FlaskClient,
    db: Database,
    buyer: ApiUser,
    approver: ApiUser,
    sovereign: uuid.UUID,
) -> None:
    set_policy(client, approver, sovereignty={"required_certifications": ["secnumcloud"]})
    offer_id = add_offer(db, sovereign, {"instance_hour": "0.01"}, claims=("secnumcloud",))

    app.config["CLOCK"] = lambda: NOW + 10 * DAY - timedelta(seconds=1)
    assert ok_quote(client, buyer, offer_id)["allowed"] is True

    app.config["CLOCK"] = lambda: NOW + 10 * DAY + timedelta(seconds=1)
    body = ok_quote(client, buyer, offer_id)
    assert body["allowed"] is False
    assert reason_codes(body) == ["certification_missing"]


def test_evidence_not_yet_valid_counts_as_missing(
    app: Flask,
    client: FlaskClient,
    db: Database,
    buyer: ApiUser,
    approver: ApiUser,
    operator: ApiUser,
) -> None:
    starts = NOW + 5 * DAY
    provider = add_provider(
        db, operator.organization_id, evidence=(("bsi-c5", starts, NOW + 400 * DAY),)
    )
    set_policy(client, approver, sovereignty={"required_certifications": ["bsi-c5"]})
    offer_id = add_offer(db, provider, {"instance_hour": "0.01"}, claims=("bsi-c5",))
    assert reason_codes(ok_quote(client, buyer, offer_id)) == ["certification_missing"]
    app.config["CLOCK"] = lambda: starts + timedelta(seconds=1)
    assert ok_quote(client, buyer, offer_id)["allowed"] is True


# --- approval and budget, as ordering would judge them -----------------------------------------


def place_order(client: FlaskClient, buyer: ApiUser, offer_id: uuid.UUID, quantity: int) -> Any:
    return client.post(
        "/v1/orders",
        json={"offer_id": str(offer_id), "quantity": quantity, "name": "web"},
        headers={**buyer.headers, "Idempotency-Key": str(uuid.uuid4())},
    )


def test_a_quote_says_whether_the_order_would_wait_for_an_approver_as_orders_do(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.10"})  # 73.00 EUR a month
    assert ok_quote(client, buyer, offer_id, quantity=5)["approval_required"] is False  # no policy

    set_policy(client, approver, approval_threshold="146")
    for quantity, waits in ((1, False), (2, False), (3, True)):  # 73, 146 (not over), 219
        body = ok_quote(client, buyer, offer_id, quantity=quantity)
        assert (body["approval_required"], body["allowed"]) == (waits, True), quantity
        # Judged by the monthly cost of the machines, whatever `hours` the quote is for.
        assert (
            ok_quote(client, buyer, offer_id, quantity=quantity, hours=1)["approval_required"]
            is waits
        )
        placed = place_order(client, buyer, offer_id, quantity)
        assert placed.status_code == 201, placed.get_data(as_text=True)
        assert placed.json["state"] == ("pending_approval" if waits else "approved"), quantity


def test_a_quote_says_what_is_left_of_the_budget_and_whether_the_order_fits(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, provider_id: uuid.UUID
) -> None:
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.10"})  # 73.00 EUR a month
    body = ok_quote(client, buyer, offer_id)
    assert (body["budget_remaining"], body["budget_currency"]) == (None, None)  # no budget

    set_policy(client, approver, monthly_budget="500")
    body = ok_quote(client, buyer, offer_id, quantity=2)
    assert (body["budget_remaining"], body["budget_currency"]) == ("500.00", "EUR")
    assert place_order(client, buyer, offer_id, 2).json["state"] == "approved"
    # 500 − 146 committed (machines being made count, before this order)
    assert ok_quote(client, buyer, offer_id)["budget_remaining"] == "354.00"

    set_policy(client, approver, monthly_budget="500", approval_threshold="100")
    assert place_order(client, buyer, offer_id, 2).json["state"] == "pending_approval"
    # Orders awaiting approval count too, as they do when an order is placed.
    fits = ok_quote(client, buyer, offer_id, quantity=2)  # 146 of the 208 left
    assert fits["budget_remaining"] == "208.00"
    assert (fits["allowed"], fits["approval_required"], fits["reasons"]) == (True, True, [])

    over = ok_quote(client, buyer, offer_id, quantity=3)  # 219 > 208
    assert over["budget_remaining"] == "208.00"
    assert over["allowed"] is False
    assert reason_codes(over) == ["budget_exceeded"]
    assert over["reasons"][0]["detail"] == (
        "219.00 EUR a month on top of 292.00 committed exceeds the monthly budget of 500.00 EUR."
    )
    refused = place_order(client, buyer, offer_id, 3)  # the order says the same
    assert refused.status_code == 422, refused.get_data(as_text=True)
    assert refused.json["code"] == "budget_exceeded"
    assert refused.json["detail"] == over["reasons"][0]["detail"]

    # A budget lowered under what is committed leaves nothing (never a negative amount).
    set_policy(client, approver, monthly_budget="250")
    body = ok_quote(client, buyer, offer_id)
    assert (body["budget_remaining"], body["allowed"]) == ("0.00", False)


def test_the_budget_left_is_written_in_the_budgets_currency(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, provider_id: uuid.UUID
) -> None:
    set_policy(client, approver, currency="JPY", monthly_budget="150000")
    offer_id = add_offer(db, provider_id, {"instance_hour": "0.10"})  # EUR
    body = ok_quote(client, buyer, offer_id)
    assert (body["budget_remaining"], body["budget_currency"]) == ("150000", "JPY")
    assert body["currency"] == "EUR"
    # Amounts in two currencies do not compare: the mismatch is the one reason given.
    assert reason_codes(body) == ["currency_mismatch"]


def test_a_refused_order_reads_as_sentences(
    client: FlaskClient, db: Database, buyer: ApiUser, approver: ApiUser, maple: uuid.UUID
) -> None:
    """Each reason is a sentence; the problem's detail puts them one after another (never
    "requires.; The data…")."""
    offer_id = add_offer(db, maple, {"instance_hour": "0.10"}, region=("ca-mtl-1", "CA"))
    set_policy(client, approver, approval_threshold="10")
    pending = place_order(client, buyer, offer_id, 1)
    assert pending.json["state"] == "pending_approval"
    set_policy(
        client,
        approver,
        sovereignty={"allowed_countries": ["FR"], "forbid_extraterritorial": True},
    )
    quoted = ok_quote(client, buyer, offer_id)
    details = [reason["detail"] for reason in quoted["reasons"]]
    assert len(details) == 2 and all(detail.endswith(".") for detail in details)

    refused = place_order(client, buyer, offer_id, 1)
    assert refused.status_code == 422 and refused.json["code"] == "policy_violation"
    assert refused.json["detail"] == (
        "The data would sit in CA; your policy allows FR. The operator is exposed to foreign "
        "law (US_CLOUD_ACT); your policy forbids it."
    )
    assert [reason["detail"] for reason in refused.json["reasons"]] == details

    approving = client.post(f"/v1/orders/{pending.json['id']}/approve", headers=approver.headers)
    assert approving.status_code == 422 and approving.json["code"] == "policy_violation"
    assert approving.json["detail"] == "This order no longer complies: " + " ".join(details)
