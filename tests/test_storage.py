"""Volumes and buckets through the API: ordered, used, refused when they must be, and billed.

Each test runs the market of `tests/billing_fixtures.py` (a simulated provider, a buyer of an
agency, the provider's operator, finance, a clock that moves only when the test says) with a
volume offer (100 GiB, 0.25 EUR a GiB-month) and a vault offer (object storage with a 30-day
retention) published beside the machine offer. The simulated cloud's database is read back to
see what really exists at the provider.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from broker.db import Database
from broker.jobs.queue import JobContext
from broker.models import AuditEvent, BucketAccess, Job, JobState
from broker.services import usage as usage_service
from tests.billing_fixtures import START, Ledger, money
from tests.catalogue_fixtures import make_provider, price, published_offer
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem
from tests.test_provisioning import FLAVORS, REGION

VOLUME_SKU = "sim-ssd"
VOLUME_PRICE = "0.25"  # EUR a GiB-month
VAULT_DAYS = 30


def volume_offer(
    ledger: Ledger, size_gib: int = 100, region: str = REGION, sku: str = VOLUME_SKU
) -> str:
    offer, _ = published_offer(
        ledger.client,
        ledger.operator,
        ledger.market.provider_id,
        sku=sku,
        name=f"SSD {size_gib} GiB",
        kind="volume",
        region=region,
        specs={"size_gib": size_gib, "encrypted": True},
        prices=[price("storage_gib_month", VOLUME_PRICE)],
    )
    return str(offer["id"])


def vault_offer(ledger: Ledger, days: int | None = VAULT_DAYS) -> str:
    offer, _ = published_offer(
        ledger.client,
        ledger.operator,
        ledger.market.provider_id,
        sku=f"sim-vault-{uuid.uuid4().hex[:6]}",
        name="Vault" if days else "Bucket",
        kind="object_storage",
        specs={"encrypted": True, "versioning": True, "immutability_days": days},
        prices=[
            price("storage_gib_month", "0.03"),
            price("requests", "0.000005"),
            price("egress_gib", "0.02"),
        ],
    )
    return str(offer["id"])


def order(ledger: Ledger, offer_id: str, name: str, buyer: ApiUser | None = None) -> dict[str, Any]:
    """Order one of `offer_id` now and run the jobs; the resource as the API shows it."""
    buyer = buyer or ledger.market.buyer
    response = ledger.client.post(
        "/v1/orders",
        json={"offer_id": offer_id, "name": name, "quantity": 1},
        headers={**buyer.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    ledger.run_jobs()
    listing = ledger.client.get(
        f"/v1/resources?order_id={response.json['id']}", headers=buyer.headers
    )
    (resource,) = listing.json["items"]
    return resource_of(ledger, str(resource["id"]), buyer)


def resource_of(ledger: Ledger, resource_id: str, buyer: ApiUser | None = None) -> dict[str, Any]:
    response = ledger.client.get(
        f"/v1/resources/{resource_id}", headers=(buyer or ledger.market.buyer).headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json)


def act(ledger: Ledger, resource_id: str, action: str, **values: Any) -> Any:
    return ledger.client.post(
        f"/v1/resources/{resource_id}/actions",
        json={"action": action, **values},
        headers=ledger.market.buyer.headers,
    )


def done(ledger: Ledger, resource_id: str, action: str, **values: Any) -> dict[str, Any]:
    """`action`, accepted and carried out: the resource after it."""
    response = act(ledger, resource_id, action, **values)
    assert response.status_code == 202, response.get_data(as_text=True)
    ledger.run_jobs()
    return resource_of(ledger, resource_id)


def line(invoice: dict[str, Any], resource_id: str, metric: str) -> dict[str, Any]:
    (found,) = [
        item
        for item in invoice["lines"]
        if item["resource_id"] == resource_id and item["metric"] == metric
    ]
    return dict(found)


# --- done when (2): a volume attached, resized, billed for the time at each size -------------


def test_a_volume_is_attached_resized_and_billed_for_the_time_at_each_size(
    ledger: Ledger,
) -> None:
    machine = ledger.start_machine(datetime(2030, 3, 30, 10, 0, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "archives")
    assert (volume["kind"], volume["state"], volume["size_gib"]) == ("volume", "active", 100)
    cloud = ledger.market.cloud
    assert [v["size_gib"] for v in cloud.volumes().values()] == [100]

    ledger.at(datetime(2030, 3, 30, 11, 0, tzinfo=START.tzinfo))
    attached = done(ledger, volume["id"], "attach", machine_id=machine)
    assert attached["attached_to_id"] == machine
    machine_ref = resource_of(ledger, machine)["provider_ref"]
    assert cloud.volumes()[volume["provider_ref"]]["attached_to"] == machine_ref

    ledger.at(datetime(2030, 3, 31, 12, 30, tzinfo=START.tzinfo))
    resized = done(ledger, volume["id"], "resize", size_gib=200)
    assert (resized["state"], resized["size_gib"]) == ("active", 200)
    assert resized["events"][-1]["size_gib"] == 200
    assert cloud.volumes()[volume["provider_ref"]]["size_gib"] == 200
    assert money(resized["unit_monthly_cost"]) == Decimal("50.00")  # 200 GiB × 0.25
    # Before the meter runs, its cost so far is estimated from its size over time: 26.5 h of
    # 100 GiB = 3.630137 GiB-months at 0.25 = 0.9075… → 0.91.
    [estimated] = resized["cost_this_period"]["lines"]
    assert (estimated["metric"], money(estimated["amount"])) == (
        "storage_gib_month",
        Decimal("0.91"),
    )

    ledger.meter(datetime(2030, 4, 2, 1, 0, tzinfo=START.tzinfo))
    ledger.bill("2030-03")
    invoice = ledger.invoice_of("2030-03")
    storage = line(invoice, volume["id"], "storage_gib_month")
    # 100 GiB from 30 March 10:00 to 31 March 12:30 (26.5 h), then 200 GiB until the month
    # ends (11.5 h): 2650 + 2300 GiB-hours = 6.780822 GiB-months, at 0.25 = 1.695… → 1.70.
    assert Decimal(storage["quantity"]) == Decimal("6.780822")
    assert money(storage["amount"]) == Decimal("1.70")
    assert storage["tax_category"] == "S"
    # April carries the 200 GiB on: the first day of it metered so far.
    ledger.bill("2030-04")
    april = line(ledger.invoice_of("2030-04"), volume["id"], "storage_gib_month")
    assert Decimal(april["quantity"]) == Decimal("6.575342")  # 200 × 24 / 730
    assert money(april["amount"]) == Decimal("1.64")


def test_a_volume_attaches_only_to_its_agencys_machines_in_its_region(
    ledger: Ledger, make_user: MakeUser, admin: ApiUser
) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "data")
    # Another agency's machine: not one this agency has.
    other_buyer = make_user("agency", ["buyer"])
    foreign = order(ledger, ledger.market.offer_id, "theirs", buyer=other_buyer)
    problem(act(ledger, volume["id"], "attach", machine_id=foreign["id"]), 404, "not_found")
    # The agency's own machine, at another provider.
    elsewhere = make_provider(
        ledger.client,
        admin,
        make_user,
        adapter="simulated",
        adapter_config={"provision_delay_seconds": 0, "flavors": FLAVORS},
    )
    offer, _ = published_offer(
        ledger.client, elsewhere.operator, elsewhere.id, sku=FLAVORS[0]["sku"]
    )
    remote = order(ledger, str(offer["id"]), "remote")
    refused = problem(
        act(ledger, volume["id"], "attach", machine_id=remote["id"]), 422, "machine_elsewhere"
    )
    assert "same provider and region" in refused["detail"]
    # A volume is no machine to attach to, and only grows.
    problem(act(ledger, volume["id"], "attach", machine_id=volume["id"]), 422, "not_a_machine")
    problem(act(ledger, volume["id"], "resize", size_gib=50), 422, "volume_shrink")
    problem(act(ledger, volume["id"], "stop"), 422, "action_not_for_kind")
    problem(act(ledger, volume["id"], "detach"), 409, "volume_not_attached")
    after = resource_of(ledger, volume["id"])
    assert (after["state"], after["size_gib"], after["attached_to_id"]) == ("active", 100, None)


def test_the_broker_meters_a_volumes_storage_so_a_push_of_it_is_refused(ledger: Ledger) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "data")
    ledger.at(datetime(2030, 3, 5, 3, tzinfo=START.tzinfo))
    refused = problem(
        ledger.push(
            [
                {
                    "record_id": "vol-1",
                    "resource_id": volume["id"],
                    "metric": "storage_gib_month",
                    "quantity": "0.1",
                    "start": "2030-03-05T00:00:00Z",
                    "end": "2030-03-05T01:00:00Z",
                }
            ]
        ),
        422,
        "metric_metered",
    )
    assert "meters storage_gib_month of a volume itself" in refused["detail"]


# --- done when (3): a vault's retention is never shortened, nor deleted under it -------------


def test_a_vault_refuses_a_shorter_retention_and_deletion_under_retention(ledger: Ledger) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    vault = order(ledger, vault_offer(ledger), "registres")
    assert (vault["kind"], vault["state"], vault["retention_days"]) == (
        "object_storage",
        "active",
        VAULT_DAYS,
    )
    refused = problem(
        act(ledger, vault["id"], "set_retention", retention_days=7), 422, "retention_shortened"
    )
    assert f"keeps every object {VAULT_DAYS} days" in refused["detail"]
    extended = done(ledger, vault["id"], "set_retention", retention_days=90)
    assert extended["retention_days"] == 90
    cloud = ledger.market.cloud
    assert cloud.buckets()[vault["provider_ref"]]["retention_days"] == 90

    cloud.put_object(vault["provider_ref"], "deliberation-2030-17.pdf", at=ledger.clock.now)
    refused = problem(act(ledger, vault["id"], "terminate"), 409, "under_retention")
    assert "1 object(s) under retention until 2030-06-03" in refused["detail"]
    assert resource_of(ledger, vault["id"])["state"] == "active"
    assert vault["provider_ref"] in cloud.buckets()

    # Once the object is older than the retention, the vault can go.
    ledger.at(datetime(2030, 6, 4, tzinfo=START.tzinfo))
    assert done(ledger, vault["id"], "terminate")["state"] == "terminated"
    assert vault["provider_ref"] not in cloud.buckets()


def test_a_bucket_without_object_lock_has_no_retention_to_set(ledger: Ledger) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    bucket = order(ledger, vault_offer(ledger, days=None), "partage")
    assert bucket["retention_days"] is None
    problem(act(ledger, bucket["id"], "set_retention", retention_days=30), 422, "not_a_vault")
    problem(act(ledger, bucket["id"], "resize", size_gib=30), 422, "action_not_for_kind")


# --- connection details: the secret once, rotatable, never stored in clear ------------------


def test_a_buckets_secret_is_shown_once_and_a_rotation_issues_a_new_pair(
    ledger: Ledger, db: Database
) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    vault = order(ledger, vault_offer(ledger), "registres")
    connection = vault["connection"]
    assert connection["bucket"] == vault["provider_ref"]
    assert connection["region"] == REGION
    assert connection["endpoint"].startswith("https://")
    assert connection["secret_shown_at"] is None
    assert "secret_access_key" not in connection

    url = f"/v1/resources/{vault['id']}/secret"
    shown = ledger.client.post(url, headers=ledger.market.buyer.headers)
    assert shown.status_code == 200, shown.get_data(as_text=True)
    assert shown.headers["Cache-Control"] == "no-store"
    secret = shown.json["secret_access_key"]
    keys = ledger.market.cloud.keys()
    assert keys[connection["access_key_id"]]["secret"] == secret
    problem(
        ledger.client.post(url, headers=ledger.market.buyer.headers), 409, "secret_already_shown"
    )
    assert resource_of(ledger, vault["id"])["connection"]["secret_shown_at"] is not None

    # Nothing keeps the secret in clear: not the access row, the audit log or the jobs.
    with db.session(read_only=True) as session:
        assert session.get(BucketAccess, uuid.UUID(vault["id"])).secret_ciphertext is None
        audit = json.dumps([(e.before, e.after) for e in session.scalars(select(AuditEvent))])
        jobs = json.dumps(
            [(j.payload, j.result) for j in session.scalars(select(Job))], default=str
        )
    assert secret not in audit and secret not in jobs

    rotated = done(ledger, vault["id"], "rotate_key")["connection"]
    assert rotated["access_key_id"] != connection["access_key_id"]
    assert rotated["secret_shown_at"] is None
    keys = ledger.market.cloud.keys()
    assert keys[connection["access_key_id"]]["revoked"] is True
    assert keys[rotated["access_key_id"]]["revoked"] is False
    again = ledger.client.post(url, headers=ledger.market.buyer.headers)
    assert again.status_code == 200
    assert again.json["secret_access_key"] == keys[rotated["access_key_id"]]["secret"]


def test_another_agency_cannot_see_a_buckets_secret(ledger: Ledger, make_user: MakeUser) -> None:
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    vault = order(ledger, vault_offer(ledger), "registres")
    stranger = make_user("agency", ["buyer"])
    problem(
        ledger.client.post(f"/v1/resources/{vault['id']}/secret", headers=stranger.headers),
        404,
        "not_found",
    )
    assert resource_of(ledger, vault["id"])["connection"]["secret_shown_at"] is None


# --- done when (4): volume and bucket lines on the invoice, with tax, and in settlements -----


def test_volume_and_bucket_lines_are_invoiced_with_tax_and_settled(ledger: Ledger) -> None:
    ledger.at(datetime(2030, 3, 10, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "data")
    vault = order(ledger, vault_offer(ledger), "registres")
    ledger.at(datetime(2030, 3, 11, 2, tzinfo=START.tzinfo))
    hour = {"start": "2030-03-10T12:00:00Z", "end": "2030-03-10T13:00:00Z"}
    pushed = ledger.push(
        [
            {
                "record_id": "b-1",
                "resource_id": vault["id"],
                "metric": "storage_gib_month",
                "quantity": "1.5",
                **hour,
            },  # 1,095 GiB held for that hour
            {
                "record_id": "b-2",
                "resource_id": vault["id"],
                "metric": "requests",
                "quantity": "200000",
                **hour,
            },
            {
                "record_id": "b-3",
                "resource_id": vault["id"],
                "metric": "egress_gib",
                "quantity": "40",
                **hour,
            },
        ]  # fmt: skip
    )
    assert pushed.status_code == 200, pushed.get_data(as_text=True)
    ledger.meter(datetime(2030, 4, 1, 1, tzinfo=START.tzinfo))
    ledger.bill("2030-03")
    invoice = ledger.invoice_of("2030-03")
    # The volume: 100 GiB from 10 March 00:00 to the end of the month, 528 h.
    volume_line = line(invoice, volume["id"], "storage_gib_month")
    assert Decimal(volume_line["quantity"]) == Decimal("72.328767")  # 100 × 528 / 730
    assert money(volume_line["amount"]) == Decimal("18.08")
    amounts = {
        metric: money(line(invoice, vault["id"], metric)["amount"])
        for metric in ("storage_gib_month", "requests", "egress_gib")
    }
    assert amounts == {
        "storage_gib_month": Decimal("0.05"),  # 1.5 × 0.03 = 0.045 → 0.05
        "requests": Decimal("1.00"),  # 200,000 × 0.000005
        "egress_gib": Decimal("0.80"),  # 40 × 0.02
    }
    subtotal = Decimal("18.08") + Decimal("0.05") + Decimal("1.00") + Decimal("0.80")
    assert money(invoice["subtotal"]) == subtotal
    assert money(invoice["tax"]) == (subtotal * Decimal("0.20")).quantize(Decimal("0.01"))

    assert ledger.finalize(invoice["id"]).status_code == 200
    settlements = ledger.client.get(
        "/v1/settlements?period=2030-03", headers=ledger.finance.headers
    ).json["items"]
    (ours,) = [s for s in settlements if s["provider_id"] == ledger.market.provider_id]
    assert money(ours["gross"]) == subtotal


# --- the catalogue and quotes by kind ------------------------------------------------------


def test_storage_offers_are_found_by_kind_size_encryption_and_immutability(
    ledger: Ledger,
) -> None:
    small, big = volume_offer(ledger, 100), volume_offer(ledger, 500, sku="sim-ssd-big")
    vault, bucket = vault_offer(ledger), vault_offer(ledger, days=None)

    def found(query: str) -> set[str]:
        response = ledger.client.get(f"/v1/offers?{query}", headers=ledger.market.buyer.headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return {offer["id"] for offer in response.json["items"]}

    assert found("kind=volume") == {small, big}
    assert found("kind=volume&min_size_gib=200") == {big}
    assert found("kind=object_storage&immutable=true") == {vault}
    assert found("kind=object_storage&immutable=false") == {bucket}
    assert found("encrypted=true") == {small, big, vault, bucket}
    assert found("kind=vm") == {ledger.market.offer_id}
    offer = ledger.client.get(f"/v1/offers/{vault}", headers=ledger.market.buyer.headers).json
    assert offer["specs"] == {"encrypted": True, "versioning": True, "immutability_days": 30}
    assert money(offer["monthly_price"]) == Decimal("30.00")  # 1,000 GiB a month at 0.03


def test_a_quote_rates_a_volume_by_its_size_and_a_bucket_by_what_it_will_store(
    ledger: Ledger,
) -> None:
    volume, vault = volume_offer(ledger, 100), vault_offer(ledger)

    def quote(**body: Any) -> dict[str, Any]:
        response = ledger.client.post("/v1/quotes", json=body, headers=ledger.market.buyer.headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return dict(response.json)

    two = quote(offer_id=volume, quantity=2, hours=730)
    assert [(item["metric"], money(item["amount"])) for item in two["lines"]] == [
        ("storage_gib_month", Decimal("50.00"))
    ]
    stored = quote(offer_id=vault, stored_gib=5000, hours=730)
    assert (stored["stored_gib"], money(stored["total"])) == (5000, Decimal("150.00"))
    assert stored["allowed"] is True
    problem(
        ledger.client.post(
            "/v1/quotes",
            json={"offer_id": volume, "stored_gib": 10},
            headers=ledger.market.buyer.headers,
        ),
        422,
        "validation_failed",
    )


def test_storage_offers_are_priced_by_their_kinds_metrics(ledger: Ledger) -> None:
    body = {
        "provider_id": ledger.market.provider_id,
        "sku": "sim-ssd-x",
        "name": "SSD",
        "kind": "volume",
        "region": REGION,
        "specs": {"size_gib": 100},
        "prices": [price("instance_hour", "0.01")],
    }
    refused = problem(
        ledger.client.post("/v1/offers", json=body, headers=ledger.operator.headers),
        422,
        "validation_failed",
    )
    assert "not priced by instance_hour" in refused["errors"]["prices"][0]
    body["specs"] = {"vcpu": 2, "ram_gib": 4}
    refused = problem(
        ledger.client.post("/v1/offers", json=body, headers=ledger.operator.headers),
        422,
        "validation_failed",
    )
    assert "specs" in json.dumps(refused["errors"])


def test_a_vault_needs_a_cloud_with_object_lock(
    ledger: Ledger, admin: ApiUser, make_user: MakeUser
) -> None:
    swift = make_provider(
        ledger.client,
        admin,
        make_user,
        adapter="openstack",
        adapter_config={"auth_url": "https://keystone.example/v3", "region": "RegionOne"},
    )
    offer, _ = create_vault_draft(ledger, swift.operator, swift.id)
    refused = problem(
        ledger.client.post(f"/v1/offers/{offer}/publish", headers=swift.operator.headers),
        422,
        "immutability_unsupported",
    )
    assert "cannot sell a vault" in refused["detail"]


def create_vault_draft(ledger: Ledger, operator: ApiUser, provider_id: str) -> tuple[str, Any]:
    response = ledger.client.post(
        "/v1/offers",
        json={
            "provider_id": provider_id,
            "sku": "swift-vault",
            "name": "Vault",
            "kind": "object_storage",
            "region": REGION,
            "specs": {"immutability_days": 30},
            "prices": [price("storage_gib_month", "0.03")],
        },
        headers=operator.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.json["id"]), response.headers["ETag"]


def test_an_attached_volume_is_detached_when_its_machine_is_terminated(ledger: Ledger) -> None:
    machine = ledger.start_machine(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "data")
    done(ledger, volume["id"], "attach", machine_id=machine)
    ledger.act(machine, "terminate", ledger.clock.now + timedelta(hours=1))
    assert resource_of(ledger, volume["id"])["attached_to_id"] is None
    assert done(ledger, volume["id"], "terminate")["state"] == "terminated"
    assert ledger.market.cloud.volumes()[volume["provider_ref"]]["state"] == "deleted"


def test_a_volume_and_a_bucket_are_made_once_through_lost_and_refused_calls(
    ledger: Ledger, db: Database
) -> None:
    """The provisioning job's exactly-once contract holds for every kind: creates that time
    out after the cloud did the work, 503s and 429s are retried, and the retry finds what
    the lost call made by the order's token."""
    cloud = ledger.market.cloud
    ledger.at(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    cloud.inject("provision", "timeout_after_commit", "server_error", "throttled")
    cloud.inject("find_by_token", "server_error")
    volume_id = _order_id(ledger, volume_offer(ledger))
    cloud.inject("provision", "timeout_after_commit", "throttled")
    vault_id = _order_id(ledger, vault_offer(ledger))
    for _ in range(20):  # run the retries as the worker would, moving the clock to each
        ledger.run_jobs()
        with db.session(read_only=True) as session:
            waiting = session.scalar(
                select(func.min(Job.run_after)).where(
                    Job.state.in_([JobState.QUEUED, JobState.FAILED])
                )
            )
        if waiting is None:
            break
        ledger.at(max(ledger.clock.now, waiting))
    for order_id in (volume_id, vault_id):
        order = ledger.client.get(f"/v1/orders/{order_id}", headers=ledger.market.buyer.headers)
        assert order.json["state"] == "completed", order.json
    volumes = [v for v in cloud.volumes().values() if v["state"] != "deleted"]
    assert [v["token"] for v in volumes] == [f"broker-order-{volume_id}-0"]
    assert list(cloud.buckets()) == [f"broker-order-{vault_id}-0"]
    assert len([k for k in cloud.keys().values() if not k["revoked"]]) == 1


def _order_id(ledger: Ledger, offer_id: str) -> str:
    response = ledger.client.post(
        "/v1/orders",
        json={"offer_id": offer_id, "name": "kept", "quantity": 1},
        headers={**ledger.market.buyer.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.json["id"])


def test_what_a_bucket_stores_is_polled_from_its_cloud_and_billed(ledger: Ledger) -> None:
    ledger.at(datetime(2030, 3, 5, 9, tzinfo=START.tzinfo))
    vault = order(ledger, vault_offer(ledger), "registres")
    ledger.market.cloud.put_object(
        vault["provider_ref"], "scans.tar", at=ledger.clock.now, size_bytes=73 * 2**30
    )
    ledger.at(datetime(2030, 3, 5, 19, 10, tzinfo=START.tzinfo))
    polled = usage_service.run_poll_job(
        JobContext(ledger.db, ledger.app.config, ledger.clock), None
    )
    assert polled["records"] == 10, polled  # 73 GiB for each of ten hours
    ledger.meter(datetime(2030, 4, 1, 1, tzinfo=START.tzinfo))
    ledger.bill("2030-03")
    stored = line(ledger.invoice_of("2030-03"), vault["id"], "storage_gib_month")
    # 73 GiB × 10 h = 730 GiB-hours: one GiB-month, at 0.03.
    assert (Decimal(stored["quantity"]), money(stored["amount"])) == (Decimal(1), Decimal("0.03"))


def test_a_volume_stays_when_the_machine_it_was_to_attach_to_is_gone(ledger: Ledger) -> None:
    machine = ledger.start_machine(datetime(2030, 3, 5, tzinfo=START.tzinfo))
    volume = order(ledger, volume_offer(ledger), "data")
    response = act(ledger, volume["id"], "attach", machine_id=machine)
    assert response.status_code == 202, response.get_data(as_text=True)
    ledger.market.cloud.delete(resource_of(ledger, machine)["provider_ref"])  # out of band
    ledger.run_jobs()
    after = resource_of(ledger, volume["id"])
    assert (after["state"], after["attached_to_id"]) == ("active", None)
    assert after["state_reason"] == "Not attached: the machine no longer exists at the provider."
    assert ledger.market.cloud.volumes()[volume["provider_ref"]]["state"] != "deleted"
