"""`/v1/offers`: providers publish versioned offers; everyone searches the catalogue.

An operator of a provider creates an offer as a draft, edits it with `If-Match`, publishes
it. A published version never changes: editing it makes the next version as a draft (201
with its `Location`), and publishing that draft retires its predecessor. Drafts are visible
to their provider's operators only; other operators get 404, buyers 403 on every write.
`monthly_price` is 730 hours of one machine rated line by line (rounded half-up to the
currency's minor unit per line) — the expected figures here are computed by hand. Money is
always a JSON string.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.catalogue_fixtures import (
    EXPIRED_FROM,
    EXPIRED_UNTIL,
    OFFER_MONTHLY_PRICE,
    VALID_UNTIL,
    ProviderSetup,
    create_offer,
    default_compliance,
    default_prices,
    make_provider,
    offer_body,
    price,
    publish_offer,
    published_offer,
    retire_offer,
)
from tests.conftest import ApiUser, MakeUser
from tests.helpers import PROBLEM, all_pages, problem, run_concurrently

TIMESTAMP_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")

SECNUMCLOUD = {
    "scheme": "secnumcloud",
    "level": "3.2",
    "valid_until": VALID_UNTIL,
    "evidence_url": "https://cyber.gouv.fr/evidence/secnumcloud-42.pdf",
    "valid_now": True,
}
HDS = {
    "scheme": "hds",
    "level": None,
    "valid_until": VALID_UNTIL,
    "evidence_url": "https://esante.gouv.fr/evidence/hds-42.pdf",
    "valid_now": True,
}


@pytest.fixture
def setup(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    return make_provider(client, admin, make_user, name="Souverain Cloud")


@pytest.fixture
def other(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    """Another provider, with its own operator."""
    return make_provider(client, admin, make_user, name="Autre Cloud")


def _claims(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An offer's compliance claims, with the evidence fields these tests look at."""
    fields = ("scheme", "level", "valid_until", "evidence_url", "valid_now")
    return [{name: item[name] for name in fields} for item in items]


def _get(client: FlaskClient, user: ApiUser, offer_id: str) -> Any:
    response = client.get(f"/v1/offers/{offer_id}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def _patch(
    client: FlaskClient, user: ApiUser, offer_id: str, body: dict[str, Any], etag: str | None
) -> Any:
    headers = dict(user.headers)
    if etag is not None:
        headers["If-Match"] = etag
    return client.patch(f"/v1/offers/{offer_id}", json=body, headers=headers)


def _search_ids(client: FlaskClient, user: ApiUser, query: str = "") -> list[str]:
    return [item["id"] for item in all_pages(client, user, f"/v1/offers{query}")]


def _audit(client: FlaskClient, user: ApiUser, object_id: str) -> list[dict[str, Any]]:
    return all_pages(client, user, f"/v1/audit-events?object_id={object_id}")


def _assert_same_offer(read: dict[str, Any], written: dict[str, Any]) -> None:
    """`read` is `written`, comparing `monthly_price` as a number (its text is checked by the
    money tests, so that a formatting bug fails those and not every test)."""
    assert Decimal(read["monthly_price"]) == Decimal(written["monthly_price"])
    assert {**read, "monthly_price": None} == {**written, "monthly_price": None}


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every JSON number in `value`, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}.{index}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def _assert_money_is_text(offer: dict[str, Any]) -> None:
    """Money fields are strings; the only JSON numbers of an offer are sizes and counters."""
    assert isinstance(offer["monthly_price"], str)
    for document in offer["prices"]:
        assert isinstance(document["unit_price"], str)
        for tier in document.get("tiers", []):
            assert tier["up_to"] is None or isinstance(tier["up_to"], str)
            assert isinstance(tier["unit_price"], str)
    numbers = {path for path, _ in _numbers(offer)}
    assert numbers <= {
        ".version",
        ".datacenter_tier",
        ".specs.vcpu",
        ".specs.ram_gib",
        ".specs.disk_gib",
        ".specs.gpu",
    }, numbers


# --- creating and reading a draft -------------------------------------------------------------


def test_operator_creates_a_draft_offer(client: FlaskClient, setup: ProviderSetup) -> None:
    operator = setup.operator
    body = offer_body(setup.id, sku="gp-2-4")
    response = client.post("/v1/offers", json=body, headers=operator.headers)

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v1"'
    offer = response.json
    uuid.UUID(offer["id"])
    assert response.headers["Location"].endswith(f"/v1/offers/{offer['id']}")
    assert offer["provider_id"] == setup.id
    assert offer["provider_name"] == "Souverain Cloud"
    assert offer["sku"] == "gp-2-4"
    assert offer["name"] == "General purpose 2 vCPU / 4 GiB"
    assert offer["kind"] == "vm"
    assert offer["state"] == "draft"
    assert offer["version"] == 1
    assert offer["region"] == {"code": "fr-par-1", "country": "FR", "city": "Paris"}
    assert offer["datacenter_tier"] == 3
    assert offer["specs"] == {"vcpu": 2, "ram_gib": 4.0, "disk_gib": 50, "gpu": 0}
    assert offer["prices"] == [
        {
            "metric": "instance_hour",
            "unit": "hour",
            "unit_price": "0.05",
            "currency": "EUR",
            "tax_category": "S",
        },
        {
            "metric": "vcpu_hour",
            "unit": "vCPU-hour",
            "unit_price": "0.01",
            "currency": "EUR",
            "tax_category": "S",
        },
        {
            "metric": "ram_gib_hour",
            "unit": "GiB-hour",
            "unit_price": "0.002",
            "currency": "EUR",
            "tax_category": "S",
        },
        {
            "metric": "storage_gib_month",
            "unit": "GiB-month",
            "unit_price": "0.04",
            "currency": "EUR",
            "tax_category": "S",
        },
    ]
    assert offer["currency"] == "EUR"
    # 36.50 + 14.60 + 5.84 + 2.00 (see tests/catalogue_fixtures.py)
    assert offer["monthly_price"] == "58.94" == OFFER_MONTHLY_PRICE
    # No `compliance` in the body: the offer claims every scheme its provider has evidence for.
    assert _claims(offer["compliance"]) == [HDS, SECNUMCLOUD]
    assert offer["jurisdiction"] == {
        "operator_country": "FR",
        "parent_country": "FR",
        "extraterritorial_exposure": [],
    }
    assert offer["published_at"] is None
    assert offer["retired_at"] is None
    assert offer["superseded_by_id"] is None
    assert TIMESTAMP_Z.match(offer["created_at"]), offer["created_at"]
    _assert_money_is_text(offer)

    events = _audit(client, operator, offer["id"])
    assert [event["action"] for event in events] == ["offer.created"]
    assert events[0]["actor_client_id"] == operator.client_id
    assert events[0]["organization_id"] == setup.organization_id


def test_a_draft_reads_back_exactly_as_created(client: FlaskClient, setup: ProviderSetup) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id)
    read = _get(client, setup.operator, offer["id"])
    assert read.headers["ETag"] == etag == '"v1"'
    assert read.json["monthly_price"] == "58.94"
    assert read.json == offer
    _assert_money_is_text(read.json)
    # The operator's own drafts are in their search.
    assert _search_ids(client, setup.operator) == [offer["id"]]


# --- monthly price: 730 hours, each line rounded half-up to the minor unit, then summed -------


PRICE_CASES = [
    pytest.param(
        {"vcpu": 2, "ram_gib": 4, "disk_gib": 50},
        default_prices(),
        "EUR",
        "58.94",
        id="four-metrics",
    ),
    pytest.param(
        # instance 0.0005 × 730 = 0.365 → 0.37 (half-up, not half-even 0.36);
        # vcpu 0.000007 × 1 × 730 = 0.00511 → 0.01 (per line, so the total is 0.38 not 0.37).
        {"vcpu": 1, "ram_gib": 1, "disk_gib": 0},
        [price("instance_hour", "0.0005"), price("vcpu_hour", "0.000007")],
        "EUR",
        "0.38",
        id="half-up-per-line",
    ),
    pytest.param(
        # ram 4 GiB × 730 h = 2920 GiB-h: 1000 × 0.003 + 1000 × 0.002 + 920 × 0.001
        # = 3.00 + 2.00 + 0.92 = 5.92; with 36.50 + 14.60 + 2.00 → 59.02.
        {"vcpu": 2, "ram_gib": 4, "disk_gib": 50},
        [
            price("instance_hour", "0.05"),
            price("vcpu_hour", "0.01"),
            price(
                "ram_gib_hour",
                "0.003",
                tiers=[
                    {"up_to": "1000", "unit_price": "0.003"},
                    {"up_to": "2000", "unit_price": "0.002"},
                    {"up_to": None, "unit_price": "0.001"},
                ],
            ),
            price("storage_gib_month", "0.04"),
        ],
        "EUR",
        "59.02",
        id="graduated-tiers",
    ),
    pytest.param(
        # 0.5 GiB × 730 h × 0.01 = 3.65; 0.1 × 730 = 73.00; egress is not in a month's usage.
        {"vcpu": 1, "ram_gib": 0.5},
        [price("instance_hour", "0.1"), price("ram_gib_hour", "0.01"), price("egress_gib", "9")],
        "EUR",
        "76.65",
        id="half-a-gib-and-egress",
    ),
    pytest.param(
        # JPY has no minor unit: 7.5 × 730 = 5475; 0.0011 × 2 × 730 = 1.606 → 2; total 5477.
        {"vcpu": 2, "ram_gib": 4},
        [price("instance_hour", "7.5", "JPY"), price("vcpu_hour", "0.0011", "JPY")],
        "JPY",
        "5477",
        id="yen",
    ),
]


@pytest.mark.parametrize(("specs", "prices", "currency", "expected"), PRICE_CASES)
def test_monthly_price_is_730_hours_rated_to_the_cent(
    client: FlaskClient,
    buyer: ApiUser,
    setup: ProviderSetup,
    specs: dict[str, Any],
    prices: list[dict[str, Any]],
    currency: str,
    expected: str,
) -> None:
    offer, _ = create_offer(client, setup.operator, setup.id, specs=specs, prices=prices)
    assert offer["currency"] == currency
    assert offer["monthly_price"] == expected
    _assert_money_is_text(offer)

    # The stored figure is the same amount (its text is checked by the next test).
    published, _ = publish_offer(client, setup.operator, offer["id"])
    assert Decimal(published["monthly_price"]) == Decimal(expected)
    assert Decimal(_get(client, buyer, offer["id"]).json["monthly_price"]) == Decimal(expected)
    (listed,) = all_pages(client, buyer, "/v1/offers")
    assert Decimal(listed["monthly_price"]) == Decimal(expected)


@pytest.mark.parametrize(("specs", "prices", "currency", "expected"), PRICE_CASES)
def test_monthly_price_reads_back_in_the_currencys_minor_unit(
    client: FlaskClient,
    buyer: ApiUser,
    setup: ProviderSetup,
    specs: dict[str, Any],
    prices: list[dict[str, Any]],
    currency: str,
    expected: str,
) -> None:
    """The text of an amount is the same wherever it is read: `"58.94"`, not `"58.940000"`."""
    offer, etag = create_offer(client, setup.operator, setup.id, specs=specs, prices=prices)
    draft = _get(client, setup.operator, offer["id"])
    assert draft.headers["ETag"] == etag
    assert draft.json["monthly_price"] == expected

    published, _ = publish_offer(client, setup.operator, offer["id"])
    assert published["monthly_price"] == expected
    read = _get(client, buyer, offer["id"]).json
    assert read["monthly_price"] == expected
    _assert_money_is_text(read)
    (listed,) = all_pages(client, buyer, "/v1/offers")
    assert listed["monthly_price"] == expected
    _assert_money_is_text(listed)


def test_tiers_are_echoed_as_strings(client: FlaskClient, setup: ProviderSetup) -> None:
    prices = default_prices()
    prices[0]["tiers"] = [
        {"up_to": "100", "unit_price": "0.06"},
        {"up_to": "500.5", "unit_price": "0.055"},
        {"up_to": None, "unit_price": "0.05"},
    ]
    offer, _ = create_offer(client, setup.operator, setup.id, prices=prices)
    # 100 × 0.06 + 400.5 × 0.055 + 229.5 × 0.05 = 6.00 + 22.0275 + 11.475 = 39.5025 → 39.50;
    # + 14.60 + 5.84 + 2.00 = 61.94.
    assert offer["monthly_price"] == "61.94"
    assert offer["prices"][0] == {
        "metric": "instance_hour",
        "unit": "hour",
        "unit_price": "0.05",
        "currency": "EUR",
        "tax_category": "S",
        "tiers": [
            {"up_to": "100", "unit_price": "0.06"},
            {"up_to": "500.5", "unit_price": "0.055"},
            {"up_to": None, "unit_price": "0.05"},
        ],
    }
    assert _get(client, setup.operator, offer["id"]).json["prices"] == offer["prices"]


# --- price validation ---------------------------------------------------------------------------


BAD_PRICES = [
    pytest.param(
        [price("instance_hour", "0.05"), price("vcpu_hour", "0.01", "USD")],
        "prices",
        id="two-currencies",
    ),
    pytest.param(
        [price("instance_hour", "0.05"), price("instance_hour", "0.04")],
        "prices",
        id="duplicate-metric",
    ),
    pytest.param(
        [price("vcpu_hour", "0.01"), price("ram_gib_hour", "0.002")],
        "prices",
        id="no-instance-hour",
    ),
    pytest.param([price("instance_hour", "0.0500001")], "prices.0.unit_price", id="7-decimals"),
    pytest.param([price("instance_hour", 0.05)], "prices.0.unit_price", id="json-number"),
    pytest.param([price("instance_hour", "-0.05")], "prices.0.unit_price", id="negative"),
    pytest.param([price("instance_hour", "5e-2")], "prices.0.unit_price", id="exponent"),
    pytest.param([price("cpu_minute", "0.05")], "prices.0.metric", id="unknown-metric"),
    pytest.param([price("instance_hour", "0.05", "XXX")], "prices.0.currency", id="currency"),
    pytest.param(
        [
            price(
                "instance_hour",
                "0.05",
                tiers=[
                    {"up_to": "100", "unit_price": "0.06"},
                    {"up_to": "50", "unit_price": "0.05"},
                    {"up_to": None, "unit_price": "0.04"},
                ],
            )
        ],
        "prices.0.tiers",
        id="falling-bounds",
    ),
    pytest.param(
        [
            price(
                "instance_hour",
                "0.05",
                tiers=[
                    {"up_to": "100", "unit_price": "0.06"},
                    {"up_to": "100", "unit_price": "0.05"},
                    {"up_to": None, "unit_price": "0.04"},
                ],
            )
        ],
        "prices.0.tiers",
        id="equal-bounds",
    ),
    pytest.param(
        [
            price(
                "instance_hour",
                "0.05",
                tiers=[
                    {"up_to": "100", "unit_price": "0.06"},
                    {"up_to": "200", "unit_price": "0.05"},
                ],
            )
        ],
        "prices.0.tiers",
        id="bounded-last-tier",
    ),
    pytest.param(
        [
            price(
                "instance_hour",
                "0.05",
                tiers=[
                    {"up_to": None, "unit_price": "0.06"},
                    {"up_to": None, "unit_price": "0.05"},
                ],
            )
        ],
        "prices.0.tiers",
        id="unbounded-first-tier",
    ),
    pytest.param(
        [
            price(
                "instance_hour",
                "0.05",
                tiers=[
                    {"up_to": "0", "unit_price": "0.06"},
                    {"up_to": None, "unit_price": "0.05"},
                ],
            )
        ],
        "prices.0.tiers",
        id="zero-bound",
    ),
    pytest.param(
        [price("instance_hour", "0.05", tiers=[{"up_to": None, "unit_price": "0.0000001"}])],
        "prices.0.tiers.0.unit_price",
        id="tier-7-decimals",
    ),
    pytest.param([], "prices", id="empty"),
]


@pytest.mark.parametrize(("prices", "field"), BAD_PRICES)
def test_invalid_prices_are_422(
    client: FlaskClient,
    setup: ProviderSetup,
    prices: list[dict[str, Any]],
    field: str,
) -> None:
    response = client.post(
        "/v1/offers", json=offer_body(setup.id, prices=prices), headers=setup.operator.headers
    )
    body = problem(response, 422, "validation_failed")
    assert field in body["errors"], body["errors"]
    assert _search_ids(client, setup.operator) == []


@pytest.mark.parametrize(("prices", "field"), BAD_PRICES[:4])
def test_invalid_prices_do_not_change_a_draft(
    client: FlaskClient,
    setup: ProviderSetup,
    prices: list[dict[str, Any]],
    field: str,
) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id)
    before = _get(client, setup.operator, offer["id"]).json
    response = _patch(client, setup.operator, offer["id"], {"prices": prices}, etag)
    body = problem(response, 422, "validation_failed")
    assert field in body["errors"], body["errors"]
    read = _get(client, setup.operator, offer["id"])
    assert read.headers["ETag"] == etag
    assert read.json == before
    assert Decimal(read.json["monthly_price"]) == Decimal("58.94")


# --- region and compliance claims --------------------------------------------------------------


def test_region_must_be_one_of_the_providers(
    client: FlaskClient, setup: ProviderSetup, other: ProviderSetup
) -> None:
    other_region = {"code": "de-fra-1", "country": "DE", "city": "Frankfurt"}
    response = client.patch(
        f"/v1/providers/{other.id}",
        json={"regions": [other_region]},
        headers={**other.operator.headers, "If-Match": other.etag},
    )
    assert response.status_code == 200, response.get_data(as_text=True)

    refused = client.post(
        "/v1/offers",
        json=offer_body(setup.id, region="de-fra-1"),
        headers=setup.operator.headers,
    )
    body = problem(refused, 422, "validation_failed")
    assert list(body["errors"]) == ["region"]
    assert _search_ids(client, setup.operator) == []

    # The provider's other region is fine, and carries that region's data.
    offer, etag = create_offer(client, setup.operator, setup.id, region="fr-lyo-1")
    assert offer["region"] == {"code": "fr-lyo-1", "country": "FR", "city": "Lyon"}
    assert offer["datacenter_tier"] == 4
    moved = _patch(client, setup.operator, offer["id"], {"region": "de-fra-1"}, etag)
    assert list(problem(moved, 422, "validation_failed")["errors"]) == ["region"]
    assert _get(client, setup.operator, offer["id"]).json["region"]["code"] == "fr-lyo-1"


def test_claiming_a_scheme_without_evidence_is_422(
    client: FlaskClient, setup: ProviderSetup
) -> None:
    response = client.post(
        "/v1/offers",
        json=offer_body(setup.id, compliance=["secnumcloud", "bsi-c5"]),
        headers=setup.operator.headers,
    )
    body = problem(response, 422, "validation_failed")
    assert list(body["errors"]) == ["compliance"]
    assert "bsi-c5" in body["errors"]["compliance"][0]
    assert _search_ids(client, setup.operator) == []


def test_compliance_can_be_narrowed_to_a_subset(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, buyer: ApiUser
) -> None:
    compliance = [
        *default_compliance(),
        {
            "scheme": "iso-27001",
            "level": "2013",
            "valid_from": EXPIRED_FROM,
            "valid_until": EXPIRED_UNTIL,
            "evidence_url": "https://iso.example.org/cert-7.pdf",
        },
    ]
    setup = make_provider(client, admin, make_user, compliance=compliance)

    offer, etag = create_offer(client, setup.operator, setup.id, compliance=["secnumcloud"])
    assert _claims(offer["compliance"]) == [SECNUMCLOUD]

    # Expired evidence may be claimed, and is shown as not valid now.
    edited = _patch(client, setup.operator, offer["id"], {"compliance": ["iso-27001", "hds"]}, etag)
    assert edited.status_code == 200, edited.get_data(as_text=True)
    expected = [
        HDS,
        {
            "scheme": "iso-27001",
            "level": "2013",
            "valid_until": EXPIRED_UNTIL,
            "evidence_url": "https://iso.example.org/cert-7.pdf",
            "valid_now": False,
        },
    ]
    assert _claims(edited.json["compliance"]) == expected
    publish_offer(client, setup.operator, offer["id"])
    assert _claims(_get(client, buyer, offer["id"]).json["compliance"]) == expected
    assert _search_ids(client, buyer, "?certification=hds") == [offer["id"]]
    assert _search_ids(client, buyer, "?certification=secnumcloud") == []
    assert _search_ids(client, buyer, "?certification=iso-27001") == []


def test_a_compliance_only_edit_changes_the_etag(client: FlaskClient, setup: ProviderSetup) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id)
    edited = _patch(client, setup.operator, offer["id"], {"compliance": ["hds"]}, etag)
    assert edited.status_code == 200, edited.get_data(as_text=True)
    assert _claims(edited.json["compliance"]) == [HDS]
    # The representation changed, so its ETag must too; the old ETag is now stale.
    assert edited.headers["ETag"] != etag
    stale = _patch(client, setup.operator, offer["id"], {"compliance": ["secnumcloud"]}, etag)
    problem(stale, 412, "precondition_failed")
    assert _claims(_get(client, setup.operator, offer["id"]).json["compliance"]) == [HDS]


def test_claiming_nothing_survives_later_edits(client: FlaskClient, setup: ProviderSetup) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id, compliance=[])
    assert _claims(offer["compliance"]) == []
    renamed = _patch(client, setup.operator, offer["id"], {"name": "Renamed"}, etag)
    assert renamed.status_code == 200, renamed.get_data(as_text=True)
    assert renamed.json["name"] == "Renamed"
    assert _claims(renamed.json["compliance"]) == []
    assert _claims(_get(client, setup.operator, offer["id"]).json["compliance"]) == []

    # Nor does the next version start claiming what version 1 did not.
    published, etag = publish_offer(client, setup.operator, offer["id"])
    v2 = _patch(client, setup.operator, offer["id"], {"name": "Version two"}, etag)
    assert v2.status_code == 201, v2.get_data(as_text=True)
    assert _claims(v2.json["compliance"]) == []


# --- editing a draft ---------------------------------------------------------------------------


def test_operator_edits_a_draft_with_if_match(client: FlaskClient, setup: ProviderSetup) -> None:
    operator = setup.operator
    offer, etag = create_offer(client, operator, setup.id)

    response = _patch(
        client,
        operator,
        offer["id"],
        {"name": "General purpose 4 vCPU / 4 GiB", "specs": {"vcpu": 4, "ram_gib": 4}},
        etag,
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    assert "Location" not in response.headers
    edited = response.json
    assert edited["id"] == offer["id"]
    assert edited["version"] == 1
    assert edited["state"] == "draft"
    assert response.headers["ETag"] == '"v2"'
    assert edited["name"] == "General purpose 4 vCPU / 4 GiB"
    # `specs` is replaced whole: disk_gib falls back to 0.
    assert edited["specs"] == {"vcpu": 4, "ram_gib": 4.0, "disk_gib": 0, "gpu": 0}
    # 36.50 + 0.01 × 4 × 730 (29.20) + 5.84 + 0.04 × 0 = 71.54
    assert edited["monthly_price"] == "71.54"
    assert edited["prices"] == offer["prices"]

    read = _get(client, operator, offer["id"])
    assert read.headers["ETag"] == '"v2"'
    _assert_same_offer(read.json, edited)

    events = _audit(client, operator, offer["id"])
    assert [event["action"] for event in events] == ["offer.created", "offer.updated"]
    assert events[1]["actor_client_id"] == operator.client_id


def test_editing_without_if_match_is_428(client: FlaskClient, setup: ProviderSetup) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id)
    response = _patch(client, setup.operator, offer["id"], {"name": "Renamed"}, None)
    problem(response, 428, "precondition_required")
    read = _get(client, setup.operator, offer["id"])
    assert (read.headers["ETag"], read.json["name"]) == (etag, offer["name"])


def test_editing_with_a_stale_etag_is_412(client: FlaskClient, setup: ProviderSetup) -> None:
    offer, etag = create_offer(client, setup.operator, setup.id)
    first = _patch(client, setup.operator, offer["id"], {"name": "First"}, etag)
    assert first.status_code == 200, first.get_data(as_text=True)
    for stale in (etag, '"v9"', "garbage"):
        response = _patch(client, setup.operator, offer["id"], {"name": "Second"}, stale)
        problem(response, 412, "precondition_failed")
    read = _get(client, setup.operator, offer["id"])
    assert (read.headers["ETag"], read.json["name"]) == (first.headers["ETag"], "First")


def test_a_second_offer_with_the_same_sku_is_409(
    client: FlaskClient, setup: ProviderSetup, other: ProviderSetup
) -> None:
    offer, _ = create_offer(client, setup.operator, setup.id, sku="gp-2-4")
    response = client.post(
        "/v1/offers",
        json=offer_body(setup.id, sku="gp-2-4", name="Another"),
        headers=setup.operator.headers,
    )
    problem(response, 409, "sku_taken")
    assert _search_ids(client, setup.operator) == [offer["id"]]
    # SKUs are per provider.
    theirs, _ = create_offer(client, other.operator, other.id, sku="gp-2-4")
    assert theirs["sku"] == "gp-2-4"


# --- publishing, visibility ---------------------------------------------------------------------


def test_publishing_puts_the_offer_in_the_catalogue(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    operator = setup.operator
    offer, _ = create_offer(client, operator, setup.id)

    response = client.post(f"/v1/offers/{offer['id']}/publish", headers=operator.headers)

    assert response.status_code == 200, response.get_data(as_text=True)
    published = response.json
    assert published["state"] == "published"
    assert published["id"] == offer["id"]
    assert published["version"] == 1
    assert TIMESTAMP_Z.match(published["published_at"]), published["published_at"]
    assert published["retired_at"] is None
    assert Decimal(published["monthly_price"]) == Decimal("58.94")

    read = _get(client, buyer, offer["id"])
    _assert_same_offer(read.json, published)
    assert read.headers["ETag"] == response.headers["ETag"]
    (listed,) = all_pages(client, buyer, "/v1/offers")
    _assert_same_offer(listed, published)
    _assert_money_is_text(listed)

    events = _audit(client, operator, offer["id"])
    assert [event["action"] for event in events] == ["offer.created", "offer.published"]
    assert events[1]["actor_client_id"] == operator.client_id


def test_drafts_are_hidden_from_buyers_and_other_operators(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup, other: ProviderSetup
) -> None:
    draft, _ = create_offer(client, setup.operator, setup.id)
    public, _ = published_offer(client, setup.operator, setup.id)

    for user in (buyer, other.operator):
        problem(client.get(f"/v1/offers/{draft['id']}", headers=user.headers), 404, "not_found")
        assert _search_ids(client, user) == [public["id"]]
        assert _search_ids(client, user, f"?provider={setup.id}") == [public["id"]]
    assert sorted(_search_ids(client, setup.operator)) == sorted([draft["id"], public["id"]])


def test_another_providers_operator_cannot_touch_this_providers_offers(
    client: FlaskClient, setup: ProviderSetup, other: ProviderSetup
) -> None:
    draft, draft_etag = create_offer(client, setup.operator, setup.id)
    public, public_etag = published_offer(client, setup.operator, setup.id)
    intruder = other.operator

    for offer_id, etag in ((draft["id"], draft_etag), (public["id"], public_etag)):
        problem(_patch(client, intruder, offer_id, {"name": "Mine"}, etag), 404, "not_found")
        for action in ("publish", "retire"):
            response = client.post(f"/v1/offers/{offer_id}/{action}", headers=intruder.headers)
            problem(response, 404, "not_found")
        unchanged = _get(client, setup.operator, offer_id)
        assert unchanged.headers["ETag"] == etag
    _assert_same_offer(_get(client, setup.operator, draft["id"]).json, draft)
    _assert_same_offer(_get(client, setup.operator, public["id"]).json, public)
    # Nor create offers for a provider it does not operate.
    response = client.post("/v1/offers", json=offer_body(setup.id), headers=intruder.headers)
    problem(response, 404, "not_found")
    assert sorted(_search_ids(client, setup.operator)) == sorted([draft["id"], public["id"]])


@pytest.mark.parametrize("who", ["buyer", "admin"])
def test_non_operators_get_403_on_every_write(
    client: FlaskClient,
    admin: ApiUser,
    buyer: ApiUser,
    setup: ProviderSetup,
    who: str,
) -> None:
    user = {"buyer": buyer, "admin": admin}[who]
    draft, draft_etag = create_offer(client, setup.operator, setup.id)
    public, public_etag = published_offer(client, setup.operator, setup.id)

    assert (
        client.post("/v1/offers", json=offer_body(setup.id), headers=user.headers).status_code
        == 403
    )
    for offer_id, etag in ((draft["id"], draft_etag), (public["id"], public_etag)):
        assert _patch(client, user, offer_id, {"name": "X"}, etag).status_code == 403
        for action in ("publish", "retire"):
            response = client.post(f"/v1/offers/{offer_id}/{action}", headers=user.headers)
            assert response.status_code == 403, response.get_data(as_text=True)
            assert response.mimetype == PROBLEM
    _assert_same_offer(_get(client, setup.operator, draft["id"]).json, draft)
    _assert_same_offer(_get(client, setup.operator, public["id"]).json, public)
    assert sorted(_search_ids(client, setup.operator)) == sorted([draft["id"], public["id"]])


def test_reading_needs_a_token(client: FlaskClient, setup: ProviderSetup) -> None:
    public, _ = published_offer(client, setup.operator, setup.id)
    assert client.get("/v1/offers").status_code == 401
    assert client.get(f"/v1/offers/{public['id']}").status_code == 401


# --- versions ----------------------------------------------------------------------------------


def test_editing_a_published_offer_makes_the_next_version(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    operator = setup.operator
    v1, v1_etag = published_offer(client, operator, setup.id, sku="gp-2-4")
    v1_read = _get(client, buyer, v1["id"])

    response = _patch(
        client, operator, v1["id"], {"prices": [price("instance_hour", "0.06")]}, v1_etag
    )

    assert response.status_code == 201, response.get_data(as_text=True)
    v2 = response.json
    assert v2["id"] != v1["id"]
    assert response.headers["Location"].endswith(f"/v1/offers/{v2['id']}")
    assert response.headers["ETag"] == '"v1"'
    assert v2["version"] == 2
    assert v2["state"] == "draft"
    assert v2["sku"] == "gp-2-4"
    assert v2["published_at"] is None
    assert v2["prices"] == [
        {
            "metric": "instance_hour",
            "unit": "hour",
            "unit_price": "0.06",
            "currency": "EUR",
            "tax_category": "S",
        }
    ]
    assert v2["monthly_price"] == "43.80"  # 0.06 × 730
    # Everything not changed is carried over from version 1.
    for name in ("name", "kind", "region", "datacenter_tier", "specs", "compliance", "currency"):
        assert v2[name] == v1[name], name

    # Version 1 is untouched, still published and still what buyers find.
    again = _get(client, buyer, v1["id"])
    assert again.json == v1_read.json
    assert again.headers["ETag"] == v1_read.headers["ETag"] == v1_etag
    assert _search_ids(client, buyer) == [v1["id"]]
    problem(client.get(f"/v1/offers/{v2['id']}", headers=buyer.headers), 404, "not_found")
    _assert_same_offer(_get(client, operator, v2["id"]).json, v2)

    # Version 1 cannot be forked a second time.
    second = _patch(client, operator, v1["id"], {"name": "Fork"}, v1_etag)
    problem(second, 409, "newer_version_exists")
    assert sorted(_search_ids(client, operator)) == sorted([v1["id"], v2["id"]])

    events = _audit(client, operator, v2["id"])
    assert [event["action"] for event in events] == ["offer.versioned"]
    assert events[0]["actor_client_id"] == operator.client_id


def test_publishing_the_next_version_retires_the_previous_one(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    operator = setup.operator
    v1, v1_etag = published_offer(client, operator, setup.id)
    created = _patch(client, operator, v1["id"], {"name": "Version two"}, v1_etag)
    assert created.status_code == 201, created.get_data(as_text=True)
    v2_id = created.json["id"]

    published, _ = publish_offer(client, operator, v2_id)
    assert (published["state"], published["version"]) == ("published", 2)

    old = _get(client, buyer, v1["id"]).json
    assert old["state"] == "retired"
    assert old["superseded_by_id"] == v2_id
    assert TIMESTAMP_Z.match(old["retired_at"]), old["retired_at"]
    assert old["name"] == v1["name"]
    assert old["published_at"] == v1["published_at"]
    assert _search_ids(client, buyer) == [v2_id]
    assert _search_ids(client, operator) == [v2_id]

    # A retired version is history: no new version from it.
    retired_etag = _get(client, operator, v1["id"]).headers["ETag"]
    refused = _patch(client, operator, v1["id"], {"name": "Zombie"}, retired_etag)
    problem(refused, 409, "offer_retired")


def test_concurrent_edits_of_a_published_offer_make_one_next_version(
    app: Flask, client: FlaskClient, setup: ProviderSetup
) -> None:
    operator = setup.operator
    v1, v1_etag = published_offer(client, operator, setup.id)

    def edit(index: int) -> tuple[int, str]:
        response = _patch(app.test_client(), operator, v1["id"], {"name": f"V2 #{index}"}, v1_etag)
        return response.status_code, response.get_data(as_text=True)

    results = run_concurrently(5, edit)

    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 409, 409, 409, 409], results
    offers = all_pages(client, operator, "/v1/offers")
    assert sorted((o["version"], o["state"]) for o in offers) == [(1, "published"), (2, "draft")]


# --- retiring, and what cannot be done twice ---------------------------------------------------


def test_retiring_takes_an_offer_out_of_the_catalogue(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    operator = setup.operator
    offer, _ = published_offer(client, operator, setup.id)
    assert _search_ids(client, buyer) == [offer["id"]]

    retired, _ = retire_offer(client, operator, offer["id"])

    assert retired["state"] == "retired"
    assert TIMESTAMP_Z.match(retired["retired_at"]), retired["retired_at"]
    assert retired["superseded_by_id"] is None
    assert _search_ids(client, buyer) == []
    assert _search_ids(client, operator) == []
    read = _get(client, buyer, offer["id"])
    _assert_same_offer(read.json, retired)

    events = _audit(client, operator, offer["id"])
    actions = [event["action"] for event in events]
    assert actions == ["offer.created", "offer.published", "offer.retired"]
    assert {event["actor_client_id"] for event in events} == {operator.client_id}


def test_lifecycle_transitions_that_do_not_apply_are_409(
    client: FlaskClient, setup: ProviderSetup
) -> None:
    operator = setup.operator
    offer, _ = create_offer(client, operator, setup.id)
    publish_offer(client, operator, offer["id"])

    again = client.post(f"/v1/offers/{offer['id']}/publish", headers=operator.headers)
    problem(again, 409, "not_a_draft")

    retired, retired_etag = retire_offer(client, operator, offer["id"])
    for action, code in (("retire", "offer_retired"), ("publish", "not_a_draft")):
        response = client.post(f"/v1/offers/{offer['id']}/{action}", headers=operator.headers)
        problem(response, 409, code)
    read = _get(client, operator, offer["id"])
    _assert_same_offer(read.json, retired)
    assert read.headers["ETag"] == retired_etag
    actions = [event["action"] for event in _audit(client, operator, offer["id"])]
    assert actions == ["offer.created", "offer.published", "offer.retired"]


def test_unknown_offer_ids_are_404(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    unknown = uuid.uuid4()
    problem(client.get(f"/v1/offers/{unknown}", headers=buyer.headers), 404, "not_found")
    operator = setup.operator
    problem(_patch(client, operator, str(unknown), {"name": "X"}, '"v1"'), 404, "not_found")
    for action in ("publish", "retire"):
        response = client.post(f"/v1/offers/{unknown}/{action}", headers=operator.headers)
        problem(response, 404, "not_found")


# --- publishing checks what the cloud sells --------------------------------------------------


def test_publishing_refuses_a_sku_the_cloud_does_not_sell(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    flavors = [
        {"sku": "s-2-4", "vcpu": 2, "ram_gib": "4", "disk_gib": 50, "region": "fr-par-1"},
        {"sku": "m-4-16", "vcpu": 4, "ram_gib": "16", "disk_gib": 100},  # every region
    ]
    setup = make_provider(
        client, admin, make_user, adapter="simulated", adapter_config={"flavors": flavors}
    )
    drafts = {}
    for sku, region in (("unknown-1", "fr-par-1"), ("s-2-4", "fr-lyo-1")):
        draft, etag = create_offer(client, setup.operator, setup.id, sku=sku, region=region)
        refused = client.post(f"/v1/offers/{draft['id']}/publish", headers=setup.operator.headers)
        body = problem(refused, 422, "sku_not_sold")
        assert sku in body["detail"] and region in body["detail"]
        assert _get(client, setup.operator, draft["id"]).json["state"] == "draft"
        drafts[sku] = (draft["id"], etag)
    # Moved to the region where the cloud sells it, it is published.
    offer_id, etag = drafts["s-2-4"]
    assert _patch(client, setup.operator, offer_id, {"region": "fr-par-1"}, etag).status_code == 200
    assert publish_offer(client, setup.operator, offer_id)[0]["state"] == "published"
    anywhere, _ = create_offer(client, setup.operator, setup.id, sku="m-4-16", region="fr-lyo-1")
    assert publish_offer(client, setup.operator, anywhere["id"])[0]["state"] == "published"


def test_publishing_goes_ahead_when_the_adapter_cannot_tell(
    client: FlaskClient, setup: ProviderSetup
) -> None:
    # An OpenStack provider without credentials yet: its machine types are unknown.
    draft, _ = create_offer(client, setup.operator, setup.id, sku="anything-1")
    published, _ = publish_offer(client, setup.operator, draft["id"])
    assert published["state"] == "published"
    # Nor does a change of its settings then ask whether it strands the offer.
    provider = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
    changed = client.patch(
        f"/v1/providers/{setup.id}",
        json={"adapter_config": {**provider.json["adapter_config"], "region": "elsewhere"}},
        headers={**setup.operator.headers, "If-Match": provider.headers["ETag"]},
    )
    assert changed.status_code == 200, changed.get_data(as_text=True)


def test_a_change_of_adapter_settings_that_strands_published_offers_is_refused(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    flavors = [
        {"sku": "s-2-4", "vcpu": 2, "ram_gib": "4", "disk_gib": 50, "region": "fr-par-1"},
        {"sku": "m-4-16", "vcpu": 4, "ram_gib": "16", "disk_gib": 100},  # every region
    ]
    setup = make_provider(
        client, admin, make_user, adapter="simulated", adapter_config={"flavors": flavors}
    )
    small, _ = create_offer(client, setup.operator, setup.id, sku="s-2-4", region="fr-par-1")
    large, _ = create_offer(client, setup.operator, setup.id, sku="m-4-16", region="fr-lyo-1")
    for offer in (small, large):
        publish_offer(client, setup.operator, offer["id"])
    provider = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)

    def patch(adapter_config: dict[str, Any]) -> TestResponse:
        return client.patch(
            f"/v1/providers/{setup.id}",
            json={"adapter_config": adapter_config},
            headers={**setup.operator.headers, "If-Match": provider.headers["ETag"]},
        )

    # The cloud would sell the small flavor in Lyon only, and the large one no more.
    refused = patch({"flavors": [{**flavors[0], "region": "fr-lyo-1"}]})
    body = problem(refused, 422, "offers_stranded")
    assert "m-4-16 in fr-lyo-1, s-2-4 in fr-par-1" in body["detail"]
    assert body["errors"]["adapter_config"] == [
        f"Offer {large['id']} ({large['name']}) is for m-4-16 in fr-lyo-1.",
        f"Offer {small['id']} ({small['name']}) is for s-2-4 in fr-par-1.",
    ]
    # Nothing changed; a partial config (without the flavors) strands them all alike.
    unchanged = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
    assert unchanged.json["adapter_config"] == provider.json["adapter_config"]
    assert unchanged.headers["ETag"] == provider.headers["ETag"]
    problem(patch({"faults": {"retry_after_seconds": 5}}), 422, "offers_stranded")

    # Once the large offer is retired, dropping its flavor is fine.
    retired = client.post(f"/v1/offers/{large['id']}/retire", headers=setup.operator.headers)
    assert retired.status_code == 200
    changed = patch({"flavors": [flavors[0]]})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    assert changed.json["adapter_config"]["flavors"] == [flavors[0]]
