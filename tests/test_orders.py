"""Orders (`/v1/orders`): placing, policy checks, budget, approval, cancellation, tenancy and
idempotency, end to end through the API.

Providers are made through the API (`tests/catalogue_fixtures.py`) with the `simulated`
adapter, whose cloud sells the offer's SKU and boots machines at once, so the provisioning job
really makes machines; what the cloud holds is read from its database. Policies are set by
the agency's approver. Every amount is worked out by hand in the test, never by the code under
test; stored state (orders, resources, jobs, idempotency keys) is read from the database.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.models import IdempotencyRecord, Job, JobState, Order, Resource
from broker.services.orders import PROVISION_JOB
from providers.simulated import SimulatedCloud
from tests.catalogue_fixtures import (
    EXPIRED_FROM,
    EXPIRED_UNTIL,
    OFFER_MONTHLY_PRICE,
    ProviderSetup,
    create_offer,
    default_compliance,
    make_provider,
    price,
    published_offer,
    retire_offer,
)
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, problem, run_concurrently

UNIT = Decimal(OFFER_MONTHLY_PRICE)  # 58.94 EUR a month for one machine of `offer_body`
REPLAYED = "Idempotent-Replayed"
AMOUNT = re.compile(r"^[0-9]+(\.[0-9]+)?$")  # a plain decimal, as problem figures are written
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHq2v0b2Qx3m9Yt7C1a4N5o6P8r9S0t1U2v3W4x5Y6z7"


# --- agencies, offers, policies ---------------------------------------------------------------


@dataclass
class Agency:
    buyer: ApiUser
    approver: ApiUser

    @property
    def id(self) -> str:
        return self.buyer.organization_id


def make_agency(make_user: MakeUser) -> Agency:
    buyer = make_user("agency", ["buyer"])
    return Agency(buyer, make_user("agency", ["approver"], organization_id=buyer.organization_id))


@pytest.fixture
def agency(make_user: MakeUser) -> Agency:
    return make_agency(make_user)


@pytest.fixture
def other_agency(make_user: MakeUser) -> Agency:
    return make_agency(make_user)


@dataclass
class Shop:
    """A provider whose simulated cloud sells `offer` (published), and that offer."""

    provider: ProviderSetup
    offer: dict[str, Any]

    @property
    def offer_id(self) -> str:
        return str(self.offer["id"])


def make_shop(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    offer: dict[str, Any] | None = None,
    **provider: Any,
) -> Shop:
    sku = f"vm-{uuid.uuid4().hex[:8]}"
    flavor = {"sku": sku, "vcpu": 2, "ram_gib": "4", "disk_gib": 50, "region": "fr-par-1"}
    setup = make_provider(
        client,
        admin,
        make_user,
        adapter="simulated",
        adapter_config={"flavors": [flavor]},
        **provider,
    )
    published, _ = published_offer(client, setup.operator, setup.id, sku=sku, **(offer or {}))
    assert published["state"] == "published"
    return Shop(setup, published)


@pytest.fixture
def shop(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> Shop:
    made = make_shop(client, admin, make_user)
    assert made.offer["monthly_price"] == OFFER_MONTHLY_PRICE
    return made


def set_policy(
    client: FlaskClient,
    agency: Agency,
    *,
    budget: str | None = None,
    threshold: str | None = None,
    currency: str = "EUR",
    **sovereignty: Any,
) -> None:
    path = f"/v1/organizations/{agency.id}/policy"
    current = client.get(path, headers=agency.approver.headers)
    assert current.status_code == 200, current.get_data(as_text=True)
    body = {
        "currency": currency,
        "monthly_budget": budget,
        "approval_threshold": threshold,
        "sovereignty": sovereignty,
    }
    response = client.put(
        path, json=body, headers={**agency.approver.headers, "If-Match": current.headers["ETag"]}
    )
    assert response.status_code == 200, response.get_data(as_text=True)


# --- requests --------------------------------------------------------------------------------


def order_body(offer_id: str, quantity: int = 1, name: str = "web", **extra: Any) -> bytes:
    return json.dumps({"offer_id": offer_id, "quantity": quantity, "name": name, **extra}).encode()


def post_order(
    client: FlaskClient, user: ApiUser, body: bytes | dict[str, Any], key: str | None = "new"
) -> Any:
    headers = dict(user.headers)
    if key is not None:
        headers["Idempotency-Key"] = str(uuid.uuid4()) if key == "new" else key
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/orders", data=data, content_type="application/json", headers=headers)


def place(
    client: FlaskClient, user: ApiUser, offer_id: str, quantity: int = 1, name: str = "web"
) -> dict[str, Any]:
    response = post_order(client, user, order_body(offer_id, quantity, name))
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


def act(client: FlaskClient, user: ApiUser, order_id: str, action: str, **body: Any) -> Any:
    return client.post(f"/v1/orders/{order_id}/{action}", json=body or None, headers=user.headers)


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    return dict(response.json)


def get_order(client: FlaskClient, user: ApiUser, order_id: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/orders/{order_id}", headers=user.headers))


def resources_of(client: FlaskClient, user: ApiUser, order_id: str) -> list[dict[str, Any]]:
    found = all_pages(client, user, f"/v1/resources?order_id={order_id}")
    return sorted(found, key=lambda resource: resource["name"])


# --- stored state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    orders: int
    resources: int
    provision_jobs: int
    keys: int


def stored(db: Database, organization_id: str) -> Stored:
    organization = uuid.UUID(organization_id)

    def count(model: Any, *where: Any) -> int:
        with db.session(read_only=True) as session:
            return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    return Stored(
        count(Order, Order.organization_id == organization),
        count(Resource, Resource.organization_id == organization),
        count(Job, Job.kind == PROVISION_JOB, Job.organization_id == organization),
        count(IdempotencyRecord, IdempotencyRecord.organization_id == organization),
    )


NOTHING = Stored(0, 0, 0, 0)


def provision_jobs(db: Database, order_id: str) -> list[Job]:
    with db.session(read_only=True) as session:
        return [
            job
            for job in session.scalars(select(Job).where(Job.kind == PROVISION_JOB))
            if job.payload == {"order_id": order_id}
        ]


def run_jobs(app: Flask, db: Database) -> int:
    return run_pending(JobContext(db, app.config), HANDLERS, on_dead=ON_DEAD)


def cloud(app: Flask, provider_id: str) -> SimulatedCloud:
    """The simulated cloud of a provider, as its adapter keeps it."""
    return SimulatedCloud(
        Path(app.config["PROVIDER_STATE_DIR"]) / f"simulated-{provider_id}.sqlite3"
    )


def tokens(order_id: str, quantity: int) -> list[str]:
    return [f"broker-order-{order_id}-{index}" for index in range(quantity)]


def budget_problem(response: Any) -> dict[str, str]:
    body = problem(response, 422, "budget_exceeded")
    figures = {name: body[name] for name in ("committed", "order_monthly_cost", "monthly_budget")}
    assert all(AMOUNT.match(value) for value in figures.values()), figures
    return figures


def money(figures: dict[str, str]) -> dict[str, Decimal]:
    return {name: Decimal(value) for name, value in figures.items()}


# --- placing ---------------------------------------------------------------------------------


def test_an_order_under_the_threshold_is_approved_at_the_offers_prices(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="1000", threshold="200")
    response = post_order(client, agency.buyer, order_body(shop.offer_id, quantity=3))
    order = ok(response, 201)
    assert response.headers["Location"] == f"/v1/orders/{order['id']}"
    assert REPLAYED not in response.headers
    assert order["state"] == "approved"
    assert order["state_reason"] is None
    assert order["unit_monthly_cost"] == "58.94"
    assert order["monthly_cost"] == "176.82"  # 3 × 58.94
    assert order["currency"] == "EUR"
    assert order["prices"] == shop.offer["prices"]
    assert order["offer_id"] == shop.offer_id
    assert order["provider_id"] == shop.provider.id
    assert order["organization_id"] == agency.id
    assert order["created_by"] == agency.buyer.client_id
    assert (order["quantity"], order["name"], order["parameters"]) == (3, "web", {})
    assert order["decided_by"] is None and order["completed_at"] is None
    assert get_order(client, agency.buyer, order["id"]) == order

    machines = resources_of(client, agency.buyer, order["id"])
    assert [(r["name"], r["state"]) for r in machines] == [
        ("web-1", "provisioning"),
        ("web-2", "provisioning"),
        ("web-3", "provisioning"),
    ]
    assert {(r["unit_monthly_cost"], r["currency"], r["offer_id"]) for r in machines} == {
        ("58.94", "EUR", shop.offer_id)
    }
    assert [job.state for job in provision_jobs(db, order["id"])] == [JobState.QUEUED]
    assert stored(db, agency.id) == Stored(1, 3, 1, 1)


def test_the_monthly_cost_is_the_unit_price_rounded_to_the_cent_times_the_quantity(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, agency: Agency
) -> None:
    # 730 hours of 2 vCPU, 4 GiB, 50 GiB, each line rounded half-up to the cent:
    #   instance_hour      0.01234 × 730          =  9.0082 →  9.01
    #   vcpu_hour          0.00567 × 2 × 730      =  8.2782 →  8.28
    #   ram_gib_hour       0.00111 × 4 × 730      =  3.2412 →  3.24
    #   storage_gib_month  0.033   × 50           =  1.65   →  1.65
    #                                       unit = 22.18 (unrounded 22.1776)
    # 7 machines: 7 × 22.18 = 155.26 (not 7 × 22.1776 = 155.2432 → 155.24).
    prices = [
        price("instance_hour", "0.01234"),
        price("vcpu_hour", "0.00567"),
        price("ram_gib_hour", "0.00111"),
        price("storage_gib_month", "0.033"),
    ]
    odd = make_shop(client, admin, make_user, offer={"prices": prices})
    assert odd.offer["monthly_price"] == "22.18"
    order = place(client, agency.buyer, odd.offer_id, quantity=7)
    assert (order["unit_monthly_cost"], order["monthly_cost"]) == ("22.18", "155.26")
    assert order["prices"] == odd.offer["prices"]
    assert [p["unit_price"] for p in order["prices"]] == ["0.01234", "0.00567", "0.00111", "0.033"]


def test_an_order_keeps_the_prices_of_the_version_it_was_placed_on(
    client: FlaskClient, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, threshold="100")
    waiting = place(client, agency.buyer, shop.offer_id, quantity=2)
    assert waiting["state"] == "pending_approval"

    # The operator doubles the instance price: a new version replaces the one ordered.
    operator = shop.provider.operator
    current = client.get(f"/v1/offers/{shop.offer_id}", headers=operator.headers)
    prices = [
        price(p["metric"], "0.10" if p["metric"] == "instance_hour" else p["unit_price"])
        for p in shop.offer["prices"]
    ]
    edited = client.patch(
        f"/v1/offers/{shop.offer_id}",
        json={"prices": prices},
        headers={**operator.headers, "If-Match": current.headers["ETag"]},
    )
    successor = ok(edited, 201)
    assert successor["monthly_price"] == "95.44"  # 36.50 more: 0.05 × 730
    ok(client.post(f"/v1/offers/{successor['id']}/publish", headers=operator.headers))
    assert get_order(client, agency.buyer, waiting["id"]) == waiting

    approved = ok(act(client, agency.approver, waiting["id"], "approve"))
    assert approved["offer_id"] == shop.offer_id
    assert approved["prices"] == shop.offer["prices"]
    assert (approved["unit_monthly_cost"], approved["monthly_cost"]) == ("58.94", "117.88")
    machines = resources_of(client, agency.buyer, waiting["id"])
    assert [r["unit_monthly_cost"] for r in machines] == ["58.94", "58.94"]
    # The new version is ordered at its own price.
    newer = place(client, agency.buyer, successor["id"])
    assert (newer["unit_monthly_cost"], newer["monthly_cost"]) == ("95.44", "95.44")


def test_an_order_over_the_threshold_waits_for_an_approver(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="1000", threshold="100")
    order = place(client, agency.buyer, shop.offer_id, quantity=2)
    assert order["state"] == "pending_approval"
    assert order["monthly_cost"] == "117.88"
    assert order["state_reason"].startswith(
        "117.88 EUR a month is over the approval threshold of 100"
    )
    assert order["decided_by"] is None and order["decided_at"] is None
    assert resources_of(client, agency.buyer, order["id"]) == []
    assert stored(db, agency.id) == Stored(1, 0, 0, 1)


def test_policy_figures_are_written_like_every_other_amount(
    client: FlaskClient, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="100", threshold="50")
    refused = post_order(client, agency.buyer, order_body(shop.offer_id, 2))
    assert budget_problem(refused) == {
        "committed": "0.00",
        "order_monthly_cost": "117.88",
        "monthly_budget": "100.00",
    }
    assert refused.json["detail"] == (
        "117.88 EUR a month on top of 0.00 committed exceeds the monthly budget of 100.00 EUR."
    )
    waiting = place(client, agency.buyer, shop.offer_id)
    assert waiting["state_reason"] == "58.94 EUR a month is over the approval threshold of 50.00."


def test_an_order_costing_exactly_the_threshold_needs_no_approval(
    client: FlaskClient, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, threshold="117.88")
    assert place(client, agency.buyer, shop.offer_id, quantity=2)["state"] == "approved"
    assert place(client, agency.buyer, shop.offer_id, quantity=3)["state"] == "pending_approval"


def test_without_a_policy_every_order_is_approved(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    order = place(client, agency.buyer, shop.offer_id, quantity=20)
    assert order["state"] == "approved"
    assert order["monthly_cost"] == "1178.80"
    assert stored(db, agency.id) == Stored(1, 20, 1, 1)


# --- sovereignty -----------------------------------------------------------------------------

EXPOSED = {
    "operator_country": "IE",
    "parent_country": "US",
    "extraterritorial_exposure": ["US_CLOUD_ACT"],
}


def expired_secnumcloud() -> list[dict[str, Any]]:
    return [
        dict(claim, valid_from=EXPIRED_FROM, valid_until=EXPIRED_UNTIL)
        if claim["scheme"] == "secnumcloud"
        else claim
        for claim in default_compliance()
    ]


@pytest.mark.parametrize(
    ("policy", "provider", "offer", "codes"),
    [
        pytest.param(
            {"required_certifications": ["bsi-c5", "secnumcloud"]},
            {},
            {},
            ["certification_missing"],
            id="certification-missing",
        ),
        pytest.param(
            {"required_certifications": ["secnumcloud"]},
            {"compliance": expired_secnumcloud()},
            {},
            ["certification_missing"],
            id="certification-expired",
        ),
        pytest.param(
            {"required_certifications": ["secnumcloud"]},
            {},
            {"compliance": ["hds"]},
            ["certification_missing"],
            id="certification-not-claimed-by-the-offer",
        ),
        pytest.param(
            {"allowed_countries": ["DE", "IE"]}, {}, {}, ["country_not_allowed"], id="country"
        ),
        pytest.param(
            {"forbid_extraterritorial": True},
            {"jurisdiction": EXPOSED},
            {},
            ["extraterritorial_exposure"],
            id="extraterritorial",
        ),
        pytest.param(
            {
                "required_certifications": ["bsi-c5", "eucs"],
                "allowed_countries": ["DE"],
                "forbid_extraterritorial": True,
            },
            {"jurisdiction": EXPOSED},
            {},
            [
                "certification_missing",
                "certification_missing",
                "country_not_allowed",
                "extraterritorial_exposure",
            ],
            id="every-rule",
        ),
    ],
)
def test_an_order_the_policy_forbids_is_refused_with_every_reason(
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    agency: Agency,
    policy: dict[str, Any],
    provider: dict[str, Any],
    offer: dict[str, Any],
    codes: list[str],
) -> None:
    forbidden = make_shop(client, admin, make_user, offer=offer, **provider)
    set_policy(client, agency, budget="10000", **policy)
    response = post_order(client, agency.buyer, order_body(forbidden.offer_id))
    body = problem(response, 422, "policy_violation")
    assert [reason["code"] for reason in body["reasons"]] == codes
    assert all(reason["detail"] for reason in body["reasons"])
    assert body["detail"] == " ".join(reason["detail"] for reason in body["reasons"])
    assert stored(db, agency.id) == NOTHING
    # The offer itself is orderable: the policy alone refused it.
    set_policy(client, agency, budget="10000")
    assert place(client, agency.buyer, forbidden.offer_id)["state"] == "approved"


def test_a_budget_in_another_currency_is_a_policy_violation(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(
        client,
        agency,
        budget="10000",
        currency="CAD",
        required_certifications=["bsi-c5"],
        allowed_countries=["CA"],
    )
    body = problem(post_order(client, agency.buyer, order_body(shop.offer_id)), 422)
    assert body["code"] == "policy_violation"
    assert [reason["code"] for reason in body["reasons"]] == [
        "certification_missing",
        "country_not_allowed",
        "currency_mismatch",
    ]
    assert "EUR" in body["reasons"][2]["detail"] and "CAD" in body["reasons"][2]["detail"]
    assert stored(db, agency.id) == NOTHING


# --- budget ----------------------------------------------------------------------------------


def test_an_order_costing_more_than_the_whole_budget_is_refused(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="117.87")
    figures = problem(post_order(client, agency.buyer, order_body(shop.offer_id, 2)), 422)
    assert figures["code"] == "budget_exceeded"
    assert Decimal(figures["order_monthly_cost"]) == Decimal("117.88")
    assert Decimal(figures["monthly_budget"]) == Decimal("117.87")
    assert Decimal(figures["committed"]) == 0
    assert stored(db, agency.id) == NOTHING
    # Exactly the budget is allowed.
    set_policy(client, agency, budget="117.88")
    assert place(client, agency.buyer, shop.offer_id, quantity=2)["state"] == "approved"


def test_orders_awaiting_approval_count_until_rejected_or_cancelled(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="200", threshold="100")
    first = place(client, agency.buyer, shop.offer_id, quantity=2)  # 117.88, pending
    assert first["state"] == "pending_approval"

    refused = post_order(client, agency.buyer, order_body(shop.offer_id, 2))
    assert money(budget_problem(refused)) == {
        "committed": Decimal("117.88"),
        "order_monthly_cost": Decimal("117.88"),
        "monthly_budget": Decimal("200"),
    }
    assert stored(db, agency.id) == Stored(1, 0, 0, 1)

    ok(act(client, agency.approver, first["id"], "reject", reason="Too big for this year."))
    second = place(client, agency.buyer, shop.offer_id, quantity=2)
    assert second["state"] == "pending_approval"
    refused = post_order(client, agency.buyer, order_body(shop.offer_id, 2))
    assert Decimal(budget_problem(refused)["committed"]) == Decimal("117.88")

    ok(act(client, agency.buyer, second["id"], "cancel"))
    third = place(client, agency.buyer, shop.offer_id, quantity=3)  # 176.82 of 200
    assert third["state"] == "pending_approval"
    refused = post_order(client, agency.buyer, order_body(shop.offer_id, 1))
    assert money(budget_problem(refused))["committed"] == Decimal("176.82")


def test_machines_count_until_terminated_or_failed(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget="200")
    first = place(client, agency.buyer, shop.offer_id, quantity=3)  # 176.82, provisioning
    assert first["state"] == "approved"

    def refused_with(committed: str) -> None:
        response = post_order(client, agency.buyer, order_body(shop.offer_id, 1))
        assert money(budget_problem(response)) == {
            "committed": Decimal(committed),
            "order_monthly_cost": UNIT,
            "monthly_budget": Decimal("200"),
        }

    refused_with("176.82")
    run_jobs(app, db)
    machines = resources_of(client, agency.buyer, first["id"])
    assert {r["state"] for r in machines} == {"active"}
    refused_with("176.82")

    # Terminating one machine frees its 58.94.
    response = client.post(
        f"/v1/resources/{machines[0]['id']}/actions",
        json={"action": "terminate"},
        headers=agency.buyer.headers,
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    refused_with("176.82")  # still terminating: still billed
    run_jobs(app, db)
    assert resources_of(client, agency.buyer, first["id"])[0]["state"] == "terminated"
    second = place(client, agency.buyer, shop.offer_id)  # 117.88 + 58.94 = 176.82
    assert second["state"] == "approved"
    refused_with("176.82")

    # Cancelling it before it starts fails its machine, which frees its 58.94 again.
    ok(act(client, agency.buyer, second["id"], "cancel"))
    assert [r["state"] for r in resources_of(client, agency.buyer, second["id"])] == ["failed"]
    assert place(client, agency.buyer, shop.offer_id)["state"] == "approved"
    refused_with("176.82")


CONCURRENT_ORDERS = 20
RACE_BUDGET = Decimal("500")  # room for floor(500 / 58.94) = 8 machines: 471.52


def race(app: Flask, agency: Agency, shop: Shop) -> list[tuple[int, dict[str, Any]]]:
    """Twenty buyers' orders of one machine each, with different keys, at the same moment."""

    def one(_index: int) -> tuple[int, dict[str, Any]]:
        response = post_order(app.test_client(), agency.buyer, order_body(shop.offer_id))
        return response.status_code, dict(response.json or {})

    return run_concurrently(CONCURRENT_ORDERS, one)


def test_concurrent_orders_are_each_answered_without_a_server_error(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget=str(RACE_BUDGET))
    results = race(app, agency, shop)
    assert all(status in (201, 422) for status, _ in results), results
    refused = [body for status, body in results if status == 422]
    assert {body["code"] for body in refused} <= {"budget_exceeded"}
    accepted = [body for status, body in results if status == 201]
    assert {body["state"] for body in accepted} <= {"approved"}
    assert len({body["id"] for body in accepted}) == len(accepted)
    count = len(accepted)
    assert stored(db, agency.id) == Stored(count, count, count, count)


def test_concurrent_orders_never_spend_past_the_budget(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, budget=str(RACE_BUDGET))
    results = race(app, agency, shop)
    statuses = sorted(status for status, _ in results)
    allowed = int(RACE_BUDGET // UNIT)
    assert allowed == 8
    assert statuses == [201] * allowed + [422] * (CONCURRENT_ORDERS - allowed)
    # Each refusal saw all eight machines committed (anything less would have fitted).
    for status, body in results:
        if status == 422:
            assert body["code"] == "budget_exceeded"
            assert Decimal(body["committed"]) == Decimal("471.52")
    assert stored(db, agency.id) == Stored(allowed, allowed, allowed, allowed)


# --- approval and cancellation ---------------------------------------------------------------


@pytest.fixture
def waiting(client: FlaskClient, agency: Agency, shop: Shop) -> dict[str, Any]:
    """An order of two machines (117.88 EUR) awaiting approval."""
    set_policy(client, agency, budget="1000", threshold="100")
    order = place(client, agency.buyer, shop.offer_id, quantity=2)
    assert order["state"] == "pending_approval"
    return order


def test_an_approver_of_the_agency_approves_and_the_machines_are_made(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop, waiting: dict
) -> None:
    approved = ok(act(client, agency.approver, waiting["id"], "approve"))
    assert approved["state"] == "approved"
    assert approved["state_reason"] is None
    assert approved["decided_by"] == agency.approver.client_id
    assert approved["decided_at"] is not None
    decision = ("state", "state_reason", "decided_by", "decided_at")
    assert {k: v for k, v in approved.items() if k not in decision} == {
        k: v for k, v in waiting.items() if k not in decision
    }
    machines = resources_of(client, agency.buyer, waiting["id"])
    assert [(r["name"], r["state"], r["provider_ref"]) for r in machines] == [
        ("web-1", "provisioning", None),
        ("web-2", "provisioning", None),
    ]
    jobs = provision_jobs(db, waiting["id"])
    assert [job.state for job in jobs] == [JobState.QUEUED]

    assert run_jobs(app, db) == 1
    assert [job.state for job in provision_jobs(db, waiting["id"])] == [JobState.SUCCEEDED]
    done = get_order(client, agency.buyer, waiting["id"])
    assert done["state"] == "completed"
    assert done["completed_at"] is not None and done["state_reason"] is None
    machines = resources_of(client, agency.approver, waiting["id"])
    assert [r["state"] for r in machines] == ["active", "active"]
    assert all(r["provider_ref"] and r["addresses"] and r["activated_at"] for r in machines)
    at_provider = cloud(app, shop.provider.id).instances()
    assert sorted(vm["token"] for vm in at_provider.values()) == tokens(waiting["id"], 2)
    assert sorted(at_provider) == sorted(r["provider_ref"] for r in machines)
    assert {vm["sku"] for vm in at_provider.values()} == {shop.offer["sku"]}
    assert stored(db, agency.id) == Stored(1, 2, 1, 1)


def test_a_rejected_order_makes_nothing(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, waiting: dict
) -> None:
    path = f"/v1/orders/{waiting['id']}/reject"
    problem(client.post(path, headers=agency.approver.headers), 400, "malformed_body")
    errors = problem(client.post(path, json={}, headers=agency.approver.headers), 422)["errors"]
    assert list(errors) == ["reason"]
    problem(act(client, agency.approver, waiting["id"], "reject", reason=""), 422)
    rejected = ok(act(client, agency.approver, waiting["id"], "reject", reason="Not this year."))
    assert rejected["state"] == "rejected"
    assert rejected["state_reason"] == "Not this year."
    assert rejected["decided_by"] == agency.approver.client_id
    assert rejected["decided_at"] is not None
    assert get_order(client, agency.buyer, waiting["id"]) == rejected
    assert run_jobs(app, db) == 0
    assert resources_of(client, agency.buyer, waiting["id"]) == []
    assert stored(db, agency.id) == Stored(1, 0, 0, 1)


def test_only_an_approver_of_the_agency_decides(
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    agency: Agency,
    other_agency: Agency,
    waiting: dict,
) -> None:
    order_id = waiting["id"]
    for action, body in (("approve", {}), ("reject", {"reason": "No."})):
        problem(act(client, agency.buyer, order_id, action, **body), 403, "forbidden")
        problem(act(client, admin, order_id, action, **body), 403, "forbidden")
        problem(act(client, other_agency.approver, order_id, action, **body), 404, "not_found")
    problem(act(client, agency.approver, str(uuid.uuid4()), "approve"), 404, "not_found")
    assert get_order(client, agency.buyer, order_id) == waiting
    assert stored(db, agency.id) == Stored(1, 0, 0, 1)


def test_an_order_is_decided_once(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop, waiting: dict
) -> None:
    approved = ok(act(client, agency.approver, waiting["id"], "approve"))
    problem(act(client, agency.approver, waiting["id"], "approve"), 409, "not_pending_approval")
    problem(
        act(client, agency.approver, waiting["id"], "reject", reason="Too late."),
        409,
        "not_pending_approval",
    )
    assert get_order(client, agency.buyer, waiting["id"]) == approved
    assert len(resources_of(client, agency.buyer, waiting["id"])) == 2
    assert len(provision_jobs(db, waiting["id"])) == 1

    other = place(client, agency.buyer, shop.offer_id, quantity=2, name="db")
    ok(act(client, agency.approver, other["id"], "reject", reason="No."))
    problem(act(client, agency.approver, other["id"], "approve"), 409, "not_pending_approval")
    assert resources_of(client, agency.buyer, other["id"]) == []


def test_an_order_awaiting_approval_can_be_cancelled(
    client: FlaskClient, db: Database, agency: Agency, other_agency: Agency, waiting: dict
) -> None:
    problem(act(client, other_agency.buyer, waiting["id"], "cancel"), 404, "not_found")
    cancelled = ok(act(client, agency.buyer, waiting["id"], "cancel"))
    assert cancelled["state"] == "cancelled"
    assert cancelled["state_reason"] == f"Cancelled by {agency.buyer.client_id}."
    problem(act(client, agency.approver, waiting["id"], "approve"), 409, "not_pending_approval")
    problem(act(client, agency.buyer, waiting["id"], "cancel"), 409, "not_cancellable")
    assert get_order(client, agency.buyer, waiting["id"]) == cancelled
    assert stored(db, agency.id) == Stored(1, 0, 0, 1)


def test_cancelling_an_approved_order_before_it_starts_makes_no_machine(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    order = place(client, agency.buyer, shop.offer_id, quantity=2)
    assert order["state"] == "approved"
    cancelled = ok(act(client, agency.approver, order["id"], "cancel"))
    assert cancelled["state"] == "cancelled"
    machines = resources_of(client, agency.buyer, order["id"])
    assert [(r["state"], r["state_reason"]) for r in machines] == [
        ("failed", "The order was cancelled."),
        ("failed", "The order was cancelled."),
    ]

    assert run_jobs(app, db) == 1
    [job] = provision_jobs(db, order["id"])
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"skipped": "the order is cancelled"}
    assert cloud(app, shop.provider.id).instances() == {}
    assert get_order(client, agency.buyer, order["id"]) == cancelled
    assert [r["state"] for r in resources_of(client, agency.buyer, order["id"])] == [
        "failed",
        "failed",
    ]


def test_a_completed_order_cannot_be_cancelled(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    order = place(client, agency.buyer, shop.offer_id)
    run_jobs(app, db)
    completed = get_order(client, agency.buyer, order["id"])
    assert completed["state"] == "completed"
    problem(act(client, agency.buyer, order["id"], "cancel"), 409, "not_cancellable")
    assert get_order(client, agency.buyer, order["id"]) == completed
    assert [r["state"] for r in resources_of(client, agency.buyer, order["id"])] == ["active"]
    assert len(cloud(app, shop.provider.id).instances()) == 1


# --- validation ------------------------------------------------------------------------------


def test_an_order_needs_an_idempotency_key(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    response = post_order(client, agency.buyer, order_body(shop.offer_id), key=None)
    problem(response, 400, "idempotency_key_required")
    problem(post_order(client, agency.buyer, order_body(shop.offer_id), key="é"), 422)
    assert stored(db, agency.id) == NOTHING


def test_only_buyers_place_orders(
    client: FlaskClient, db: Database, admin: ApiUser, agency: Agency, shop: Shop
) -> None:
    for user in (agency.approver, admin, shop.provider.operator):
        problem(post_order(client, user, order_body(shop.offer_id)), 403, "forbidden")
    assert stored(db, agency.id) == NOTHING


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": 21}, "quantity"),
        ({"quantity": 2.5}, "quantity"),
        ({"quantity": "2"}, "quantity"),
        ({"quantity": True}, "quantity"),
        ({"name": "Web"}, "name"),
        ({"name": "-web"}, "name"),
        ({"name": "web_1"}, "name"),
        ({"name": "a" * 51}, "name"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"offer_id": "not-a-uuid"}, "offer_id"),
        ({"colour": "blue"}, "colour"),
        ({"parameters": {"flavour": "x"}}, "parameters.flavour"),
        ({"parameters": {"ssh_public_key": "ssh-ed25519 short"}}, "parameters.ssh_public_key"),
        ({"parameters": {"ssh_public_key": "ssh-dss " + "A" * 40}}, "parameters.ssh_public_key"),
        (
            {"parameters": {"ssh_public_key": SSH_KEY + "\nssh-ed25519 " + "B" * 40}},
            "parameters.ssh_public_key",
        ),
        ({"parameters": {"image": "debian\n12"}}, "parameters.image"),
    ],
)
def test_an_invalid_order_is_refused_and_stores_nothing(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop, change: dict, field: str
) -> None:
    body = {"offer_id": shop.offer_id, "quantity": 1, "name": "web", **change}
    response = post_order(client, agency.buyer, body)
    errors = problem(response, 422, "validation_failed")["errors"]
    assert list(errors) == [field]
    assert stored(db, agency.id) == NOTHING


def test_missing_fields_are_named(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    errors = problem(post_order(client, agency.buyer, {}), 422, "validation_failed")["errors"]
    assert sorted(errors) == ["name", "offer_id"]
    assert stored(db, agency.id) == NOTHING


def test_the_largest_valid_order_is_accepted_with_its_parameters(
    client: FlaskClient, agency: Agency, shop: Shop
) -> None:
    name = "a" + "-b" * 24 + "9"
    assert len(name) == 50
    parameters = {"image": "debian-12", "ssh_public_key": SSH_KEY + " ops@agency"}
    body = {"offer_id": shop.offer_id, "quantity": 20, "name": name, "parameters": parameters}
    order = ok(post_order(client, agency.buyer, body), 201)
    assert (order["quantity"], order["name"], order["parameters"]) == (20, name, parameters)
    assert order["monthly_cost"] == "1178.80"
    names = [r["name"] for r in resources_of(client, agency.buyer, order["id"])]
    assert sorted(names) == sorted(f"{name}-{n}" for n in range(1, 21))


def test_an_offer_that_cannot_be_ordered_is_refused(
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    agency: Agency,
    shop: Shop,
) -> None:
    operator = shop.provider.operator
    problem(post_order(client, agency.buyer, order_body(str(uuid.uuid4()))), 404, "not_found")
    # A draft is not in the catalogue: a buyer cannot see it at all (as for quotes).
    draft, _ = create_offer(client, operator, shop.provider.id)
    problem(post_order(client, agency.buyer, order_body(str(draft["id"]))), 404, "not_found")
    # A retired offer was in the catalogue: it is visible but not orderable.
    retired = make_shop(client, admin, make_user)
    retire_offer(client, retired.provider.operator, retired.offer_id)
    response = post_order(client, agency.buyer, order_body(retired.offer_id))
    problem(response, 409, "not_orderable")
    # An offer of a suspended provider neither.
    suspended = client.patch(
        f"/v1/providers/{shop.provider.id}",
        json={"state": "suspended"},
        headers={**admin.headers, "If-Match": shop.provider.etag},
    )
    assert suspended.status_code == 200, suspended.get_data(as_text=True)
    problem(post_order(client, agency.buyer, order_body(shop.offer_id)), 409, "not_orderable")
    assert stored(db, agency.id) == NOTHING


# --- tenancy and listing ---------------------------------------------------------------------


def test_an_agency_sees_its_own_orders_only(
    client: FlaskClient,
    admin: ApiUser,
    agency: Agency,
    other_agency: Agency,
    shop: Shop,
) -> None:
    mine = place(client, agency.buyer, shop.offer_id, name="mine")
    theirs = place(client, other_agency.buyer, shop.offer_id, name="theirs")
    for outsider in (other_agency.buyer, other_agency.approver):
        problem(client.get(f"/v1/orders/{mine['id']}", headers=outsider.headers), 404, "not_found")
        assert resources_of(client, outsider, mine["id"]) == []
    problem(client.get(f"/v1/orders/{uuid.uuid4()}", headers=agency.buyer.headers), 404)
    assert [o["id"] for o in all_pages(client, agency.buyer, "/v1/orders")] == [mine["id"]]
    assert [o["id"] for o in all_pages(client, agency.approver, "/v1/orders")] == [mine["id"]]
    assert [o["id"] for o in all_pages(client, other_agency.buyer, "/v1/orders")] == [theirs["id"]]
    assert get_order(client, agency.approver, mine["id"]) == mine
    assert get_order(client, admin, theirs["id"]) == theirs
    everything = [o["id"] for o in all_pages(client, admin, "/v1/orders")]
    assert everything == [theirs["id"], mine["id"]]
    problem(client.get("/v1/orders", headers=shop.provider.operator.headers), 403, "forbidden")
    problem(client.get(f"/v1/orders/{mine['id']}", headers=shop.provider.operator.headers), 403)


def test_the_list_is_newest_first_paginated_and_filtered_by_state(
    client: FlaskClient, agency: Agency, shop: Shop
) -> None:
    set_policy(client, agency, threshold="100")
    placed = [
        place(client, agency.buyer, shop.offer_id, quantity=quantity, name=f"m{n}")
        for n, quantity in enumerate([1, 2, 1, 2, 1, 1, 2])
    ]
    newest_first = [order["id"] for order in reversed(placed)]
    for limit in (1, 2, 3, 7, 100):
        listed = all_pages(client, agency.buyer, "/v1/orders", limit=limit)
        assert [order["id"] for order in listed] == newest_first, limit
    first_page = client.get("/v1/orders?limit=3", headers=agency.buyer.headers).json
    assert len(first_page["items"]) == 3 and first_page["next_cursor"]
    assert first_page["items"][0] == get_order(client, agency.buyer, newest_first[0])

    pending = all_pages(client, agency.buyer, "/v1/orders?state=pending_approval", limit=2)
    assert [o["id"] for o in pending] == [o["id"] for o in reversed(placed) if o["quantity"] == 2]
    assert {o["state"] for o in pending} == {"pending_approval"}
    approved = all_pages(client, agency.buyer, "/v1/orders?state=approved", limit=2)
    assert [o["id"] for o in approved] == [o["id"] for o in reversed(placed) if o["quantity"] == 1]
    assert all_pages(client, agency.buyer, "/v1/orders?state=completed") == []
    problem(client.get("/v1/orders?state=lost", headers=agency.buyer.headers), 422)
    problem(client.get("/v1/orders?limit=0", headers=agency.buyer.headers), 422)


# --- idempotency ------------------------------------------------------------------------------


def test_fifty_concurrent_identical_orders_make_one_order_and_its_machines_once(
    app: Flask, client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    key, body, count = str(uuid.uuid4()), order_body(shop.offer_id, quantity=2), 50

    def post(_index: int) -> tuple[int, bytes, dict[str, str]]:
        response = post_order(app.test_client(), agency.buyer, body, key=key)
        return response.status_code, response.get_data(), dict(response.headers)

    done = run_concurrently(count, post)
    assert [status for status, _, _ in done] == [201] * count, [
        (status, data[:300]) for status, data, _ in done if status != 201
    ]
    assert len({data for _, data, _ in done}) == 1
    order = json.loads(done[0][1])
    assert order["state"] == "approved" and order["monthly_cost"] == "117.88"
    originals = [headers for _, _, headers in done if REPLAYED not in headers]
    replays = [headers for _, _, headers in done if REPLAYED in headers]
    assert len(originals) == 1 and len(replays) == count - 1
    assert {headers[REPLAYED] for headers in replays} == {"true"}
    assert {headers["Location"] for _, _, headers in done} == {f"/v1/orders/{order['id']}"}
    assert stored(db, agency.id) == Stored(1, 2, 1, 1)

    run_jobs(app, db)
    assert get_order(client, agency.buyer, order["id"])["state"] == "completed"
    machines = resources_of(client, agency.buyer, order["id"])
    assert [r["state"] for r in machines] == ["active", "active"]
    at_provider = cloud(app, shop.provider.id).instances()
    assert sorted(vm["token"] for vm in at_provider.values()) == tokens(order["id"], 2)
    # A retry after it all replays the same answer and makes nothing more.
    again = post_order(client, agency.buyer, body, key=key)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.get_data() == done[0][1]
    run_jobs(app, db)
    assert len(cloud(app, shop.provider.id).instances()) == 2
    assert stored(db, agency.id) == Stored(1, 2, 1, 1)


def test_the_same_key_with_another_order_is_refused(
    client: FlaskClient, db: Database, agency: Agency, shop: Shop
) -> None:
    key = str(uuid.uuid4())
    first = ok(post_order(client, agency.buyer, order_body(shop.offer_id, 2), key=key), 201)
    for other in (
        order_body(shop.offer_id, 3),
        order_body(shop.offer_id, 2, name="db"),
        order_body(shop.offer_id, 2, parameters={"image": "debian-12"}),
    ):
        response = post_order(client, agency.buyer, other, key=key)
        problem(response, 422, "idempotency_key_reused")
    replay = post_order(client, agency.buyer, order_body(shop.offer_id, 2), key=key)
    assert replay.status_code == 201 and replay.headers[REPLAYED] == "true"
    assert replay.json == first
    assert stored(db, agency.id) == Stored(1, 2, 1, 1)


def test_a_refused_order_leaves_its_key_free_and_keys_are_per_agency(
    client: FlaskClient, db: Database, agency: Agency, other_agency: Agency, shop: Shop
) -> None:
    key, body = "order-2027-0001", order_body(shop.offer_id, 2)
    set_policy(client, agency, allowed_countries=["DE"])
    problem(post_order(client, agency.buyer, body, key=key), 422, "policy_violation")
    assert stored(db, agency.id) == NOTHING
    set_policy(client, agency, allowed_countries=["FR"])
    response = post_order(client, agency.buyer, body, key=key)
    assert response.status_code == 201 and REPLAYED not in response.headers
    # Another agency's identical key is another request.
    theirs = post_order(client, other_agency.buyer, body, key=key)
    assert theirs.status_code == 201 and REPLAYED not in theirs.headers
    assert theirs.json["id"] != response.json["id"]
    assert theirs.json["organization_id"] == other_agency.id
    assert stored(db, agency.id) == stored(db, other_agency.id) == Stored(1, 2, 1, 1)


def test_concurrent_approvals_approve_once_and_answer_the_others_409(
    app: Flask,
    client: FlaskClient,
    db: Database,
    agency: Agency,
    waiting: dict,
) -> None:
    count = 20

    def approve(_index: int) -> tuple[int, str]:
        response = act(app.test_client(), agency.approver, waiting["id"], "approve")
        body = response.json or {}
        return response.status_code, str(body.get("code") or body.get("state"))

    results = sorted(run_concurrently(count, approve))
    assert results == [(200, "approved")] + [(409, "not_pending_approval")] * (count - 1)
    assert get_order(client, agency.buyer, waiting["id"])["state"] == "approved"
    assert stored(db, agency.id) == Stored(1, 2, 1, 1)
