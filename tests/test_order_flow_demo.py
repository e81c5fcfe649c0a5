"""The demo, end to end: an agency of the seeded consortium orders machines, has the big order
approved, and stops then terminates a machine, all through the HTTP API.

Only seeding (`seed_demo`) and running the worker's jobs (`run_pending`, as the worker does)
happen outside HTTP. Everyone logs in with the credentials the seed wrote, through
`POST /oauth/token`. The demo's simulated clouds take 5 seconds to boot a machine; the
consortium's admin sets that to 0 for the provider used (`PATCH /v1/providers/{id}`), so each
job run finishes what it starts.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.seed import DEMO_POLICIES, seed_demo
from tests.conftest import ApiUser
from tests.helpers import all_pages, problem

HEALTH_AGENCY = "Agence nationale des données de santé"
CITY = "Ville de Québec"
CONSORTIUM = "Sovereign Cloud Consortium"
SKU = "hc-std-m-par"  # Hexagone Cloud, Standard M — Paris: 4 vCPU, 16 GiB, 100 GiB
# 730 hours at Hexagone's rates:
#   instance_hour      0.004  × 730        =   2.92
#   vcpu_hour          0.0165 × 4 × 730    =  48.18
#   ram_gib_hour       0.0055 × 16 × 730   =  64.24
#   storage_gib_month  0.06   × 100        =   6.00
#                                   total  = 121.34 EUR a month
UNIT = Decimal("121.34")


def login(client: FlaskClient, credentials: list[dict[str, Any]], org: str, role: str) -> ApiUser:
    """Log in as the demo client of `org` with `role`, as someone trying the demo would."""
    [mine] = [c for c in credentials if c["organization"] == org and c["roles"] == [role]]
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(mine["client_id"], mine["client_secret"]),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["token_type"].lower() == "bearer"
    return ApiUser(
        mine["client_id"],
        mine["client_secret"],
        mine["organization_id"],
        mine["roles"],
        response.json["access_token"],
    )


def run_jobs(app: Flask, db: Database) -> int:
    return run_pending(JobContext(db, app.config), HANDLERS, on_dead=ON_DEAD)


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    return dict(response.json)


def order(client: FlaskClient, buyer: ApiUser, offer_id: str, quantity: int, key: str) -> Any:
    return client.post(
        "/v1/orders",
        json={"offer_id": offer_id, "quantity": quantity, "name": "dossier-patient"},
        headers={**buyer.headers, "Idempotency-Key": key},
    )


def machines(client: FlaskClient, user: ApiUser, order_id: str) -> list[dict[str, Any]]:
    return all_pages(client, user, f"/v1/resources?order_id={order_id}")


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def credentials(db: Database, tmp_path: Path) -> list[dict[str, Any]]:
    written = tmp_path / "demo-instance" / "demo-credentials.json"
    seed_demo(db, written)
    loaded: list[dict[str, Any]] = json.loads(written.read_text())
    return loaded


def test_an_agency_orders_has_the_big_order_approved_and_runs_its_machines(
    app: Flask, db: Database, client: FlaskClient, credentials: list[dict[str, Any]]
) -> None:
    assert DEMO_POLICIES[HEALTH_AGENCY] == ("EUR", "20000", "1000")
    buyer = login(client, credentials, HEALTH_AGENCY, "buyer")
    approver = login(client, credentials, HEALTH_AGENCY, "approver")
    city_approver = login(client, credentials, CITY, "approver")
    admin = login(client, credentials, CONSORTIUM, "admin")

    # The buyer looks for a sovereign, SecNumCloud-qualified machine under 1000 EUR a month.
    found = all_pages(
        client,
        buyer,
        "/v1/offers?currency=EUR&certification=secnumcloud&sovereign_only=true"
        "&max_monthly_price=1000",
    )
    assert found and {offer["provider_name"] for offer in found} == {"Hexagone Cloud"}
    [offer] = [offer for offer in found if offer["sku"] == SKU]
    assert (offer["monthly_price"], offer["currency"], offer["state"]) == (
        "121.34",
        "EUR",
        "published",
    )

    # The consortium makes this provider's simulated cloud boot machines at once.
    path = f"/v1/providers/{offer['provider_id']}"
    provider = client.get(path, headers=admin.headers)
    assert provider.status_code == 200, provider.get_data(as_text=True)
    config = provider.json["adapter_config"]
    assert config["provision_delay_seconds"] == 5
    patched = client.patch(
        path,
        json={"adapter_config": {**config, "provision_delay_seconds": 0}},
        headers={**admin.headers, "If-Match": provider.headers["ETag"]},
    )
    assert ok(patched)["adapter_config"]["provision_delay_seconds"] == 0

    # One machine: under the approval threshold, approved at once and made by the worker.
    small = ok(order(client, buyer, offer["id"], 1, "demo-order-1"), 201)
    assert (small["state"], small["monthly_cost"]) == ("approved", "121.34")
    assert small["prices"] == offer["prices"]
    assert [m["state"] for m in machines(client, buyer, small["id"])] == ["provisioning"]
    assert run_jobs(app, db) == 1
    assert ok(client.get(f"/v1/orders/{small['id']}", headers=buyer.headers))["state"] == (
        "completed"
    )
    [machine] = machines(client, buyer, small["id"])
    assert machine["state"] == "active"
    assert machine["provider_ref"] and machine["addresses"] and machine["activated_at"]

    # Nine machines: 1092.06 EUR a month, over the 1000 threshold but well within the budget.
    quantity = 9
    assert quantity * UNIT == Decimal("1092.06") and UNIT + quantity * UNIT <= 20000
    big = ok(order(client, buyer, offer["id"], quantity, "demo-order-2"), 201)
    assert (big["state"], big["monthly_cost"]) == ("pending_approval", "1092.06")
    assert big["state_reason"]
    assert machines(client, buyer, big["id"]) == []
    assert run_jobs(app, db) == 0

    # The city's approver cannot see it, let alone approve it.
    problem(
        client.post(f"/v1/orders/{big['id']}/approve", headers=city_approver.headers),
        404,
        "not_found",
    )
    problem(client.get(f"/v1/orders/{big['id']}", headers=city_approver.headers), 404)
    assert all_pages(client, city_approver, "/v1/orders") == []

    # The agency's approver approves it; the worker makes the nine machines.
    approved = ok(client.post(f"/v1/orders/{big['id']}/approve", headers=approver.headers))
    assert (approved["state"], approved["decided_by"]) == ("approved", approver.client_id)
    assert run_jobs(app, db) == 1
    done = ok(client.get(f"/v1/orders/{big['id']}", headers=buyer.headers))
    assert done["state"] == "completed" and done["completed_at"]
    made = machines(client, buyer, big["id"])
    assert sorted(m["name"] for m in made) == [f"dossier-patient-{n}" for n in range(1, 10)]
    assert {m["state"] for m in made} == {"active"}
    assert len({m["provider_ref"] for m in made}) == quantity
    listed = all_pages(client, approver, "/v1/orders")
    assert [(o["id"], o["state"]) for o in listed] == [
        (big["id"], "completed"),
        (small["id"], "completed"),
    ]

    # Day 2: stop the first machine, once.
    resource = f"/v1/resources/{machine['id']}"
    stop = client.post(f"{resource}/actions", json={"action": "stop"}, headers=buyer.headers)
    job = ok(stop, 202)
    assert stop.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert (job["kind"], job["state"]) == ("resource.action", "queued")
    assert ok(client.get(resource, headers=buyer.headers))["state"] == "stopping"
    assert run_jobs(app, db) == 1
    assert ok(client.get(stop.headers["Location"], headers=buyer.headers))["state"] == "succeeded"
    assert ok(client.get(resource, headers=buyer.headers))["state"] == "stopped"
    again = client.post(f"{resource}/actions", json={"action": "stop"}, headers=buyer.headers)
    problem(again, 409, "action_not_allowed")

    # Then terminate it.
    terminate = client.post(
        f"{resource}/actions", json={"action": "terminate"}, headers=buyer.headers
    )
    ok(terminate, 202)
    assert run_jobs(app, db) == 1
    final = ok(client.get(resource, headers=buyer.headers))
    assert final["state"] == "terminated"
    assert final["terminated_at"] is not None
    steps = [(event["from_state"], event["to_state"]) for event in final["events"]]
    assert steps == [
        (None, "provisioning"),
        ("provisioning", "active"),
        ("active", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "terminating"),
        ("terminating", "terminated"),
    ]
    moments = [stamp(event["at"]) for event in final["events"]]
    assert moments == sorted(moments)
    assert moments[0] <= stamp(final["activated_at"]) == moments[1]
    assert stamp(final["terminated_at"]) == moments[-1]
    # The other machines are untouched.
    assert {m["state"] for m in made} == {m["state"] for m in machines(client, buyer, big["id"])}
