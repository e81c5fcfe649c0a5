"""Offer sync: `POST /v1/providers/{id}/sync` queues a job that imports the adapter's machine
types as draft offers (broker/services/offer_sync.py).

The provider under test uses the `simulated` adapter, whose machine types are its
`adapter_config.flavors`; changing that list is how a test changes "the cloud". Jobs are run
in-process with `run_pending`, sometimes with a fixed clock so that `run_after` is exact.
Faults come from the simulated cloud's database (`SimulatedCloud.inject`); broken
providers are made by editing the database directly, as the API refuses to store them. The
last tests sync through the OpenStack adapter against the fake Keystone + Nova server.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient

from broker import create_app
from broker.db import Database
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, enqueue, run_pending
from broker.models import Job, JobState, Offer, Provider, ProviderCredentials
from broker.models.base import utcnow
from broker.services import offer_sync
from broker.services.credentials import Keyring
from providers.simulated import SimulatedCloud
from tests.adapters.fake_openstack import PASSWORD, USERNAME, FakeOpenStack
from tests.adapters.harness import serve_wsgi
from tests.catalogue_fixtures import (
    OFFER_MONTHLY_PRICE,
    ProviderSetup,
    default_prices,
    make_provider,
)
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, problem

KIND = "provider.sync_offers"

GP = {
    "sku": "gp-2-4",
    "name": "General purpose 2 vCPU / 4 GiB",
    "vcpu": 2,
    "ram_gib": "4",
    "disk_gib": 50,
    "region": "fr-par-1",
}
MEM = {
    "sku": "mem-4-32",
    "name": "Memory 4 vCPU / 32 GiB",
    "vcpu": 4,
    "ram_gib": "32",
    "disk_gib": 100,
    "region": "fr-lyo-1",
}
# No region: it lands in the provider's first region (fr-par-1).
GPU = {
    "sku": "gpu-8-64",
    "name": "GPU 8 vCPU / 64 GiB",
    "vcpu": 8,
    "ram_gib": "64.5",
    "disk_gib": 200,
    "gpu": 1,
}
FLAVORS = [GP, MEM, GPU]

PARIS = {"code": "fr-par-1", "country": "FR", "city": "Paris"}
LYON = {"code": "fr-lyo-1", "country": "FR", "city": "Lyon"}


def _empty_report(**changes: Any) -> dict[str, Any]:
    return {
        "created": [],
        "updated": [],
        "versioned": [],
        "unchanged": [],
        "skipped": [],
        **changes,
    }


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def setup(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    """A provider on the simulated adapter selling `FLAVORS`, with its operator."""
    return make_provider(
        client,
        admin,
        make_user,
        name="Souverain Simulé",
        adapter="simulated",
        adapter_config={"flavors": FLAVORS, "faults": {"retry_after_seconds": 45}},
    )


@pytest.fixture
def t0(app: Flask) -> datetime:
    """A fixed now: the broker's clock in the test's requests, and the jobs' below."""
    moment = datetime(2031, 5, 4, 9, 0, tzinfo=UTC)
    app.config["CLOCK"] = lambda: moment
    return moment


def _run_jobs(db: Database, app: Flask, now: datetime | None = None) -> int:
    context = (
        JobContext(db, app.config) if now is None else JobContext(db, app.config, now=lambda: now)
    )
    return run_pending(context, HANDLERS)


def _request_sync(client: FlaskClient, user: ApiUser, provider_id: str) -> dict[str, Any]:
    response = client.post(f"/v1/providers/{provider_id}/sync", headers=user.headers)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["Location"] == f"/v1/jobs/{response.json['id']}"
    return dict(response.json)


def _get_job(client: FlaskClient, user: ApiUser, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json)


def _sync(client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup) -> dict[str, Any]:
    """Request a sync, run it, expect it to succeed; the finished job."""
    job = _request_sync(client, setup.operator, setup.id)
    assert _run_jobs(db, app) == 1
    done = _get_job(client, setup.operator, job["id"])
    assert done["state"] == "succeeded", done
    return done


def _offers(client: FlaskClient, user: ApiUser, provider_id: str) -> list[dict[str, Any]]:
    """Every offer of the provider `user` sees (operators: their drafts too), by SKU and
    version."""
    items = all_pages(client, user, f"/v1/offers?provider={provider_id}")
    return sorted(items, key=lambda offer: (offer["sku"], offer["version"]))


def _by_sku(offers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest version of each SKU."""
    return {offer["sku"]: offer for offer in offers}


def _get_offer(client: FlaskClient, user: ApiUser, offer_id: str) -> tuple[dict[str, Any], str]:
    response = client.get(f"/v1/offers/{offer_id}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json), response.headers["ETag"]


def _price_and_publish(
    client: FlaskClient, operator: ApiUser, offer_id: str
) -> tuple[dict[str, Any], str]:
    _, etag = _get_offer(client, operator, offer_id)
    priced = client.patch(
        f"/v1/offers/{offer_id}",
        json={"prices": default_prices()},
        headers={**operator.headers, "If-Match": etag},
    )
    assert priced.status_code == 200, priced.get_data(as_text=True)
    published = client.post(f"/v1/offers/{offer_id}/publish", headers=operator.headers)
    assert published.status_code == 200, published.get_data(as_text=True)
    return dict(published.json), published.headers["ETag"]


def _set_flavors(client: FlaskClient, setup: ProviderSetup, flavors: list[dict[str, Any]]) -> None:
    """The operator changes what their (simulated) cloud sells."""
    current = client.get(f"/v1/providers/{setup.id}", headers=setup.operator.headers)
    response = client.patch(
        f"/v1/providers/{setup.id}",
        json={"adapter_config": {**current.json["adapter_config"], "flavors": flavors}},
        headers={**setup.operator.headers, "If-Match": current.headers["ETag"]},
    )
    assert response.status_code == 200, response.get_data(as_text=True)


def _offer_rows(db: Database) -> list[tuple[str, int, str]]:
    with db.transaction() as session:
        return sorted((o.sku, o.version, o.state.value) for o in session.query(Offer).all())


def _job_row(db: Database, job_id: str) -> Job:
    with db.transaction() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def _edit_provider(db: Database, provider_id: str, **fields: Any) -> None:
    with db.transaction() as session:
        provider = session.get(Provider, uuid.UUID(provider_id))
        assert provider is not None
        for name, value in fields.items():
            setattr(provider, name, value)
        provider.version += 1


# --- the happy path ---------------------------------------------------------------------------


def test_sync_imports_flavors_as_unpriced_drafts(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup, buyer: ApiUser
) -> None:
    response = client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)

    assert response.status_code == 202, response.get_data(as_text=True)
    job = response.json
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert {k: job[k] for k in ("kind", "state", "attempts", "max_attempts")} == {
        "kind": KIND,
        "state": "queued",
        "attempts": 0,
        "max_attempts": 8,
    }
    assert (job["result"], job["last_error"], job["finished_at"]) == (None, None, None)
    assert _get_job(client, setup.operator, job["id"]) == job
    assert _offers(client, setup.operator, setup.id) == []  # nothing before the worker runs

    assert _run_jobs(db, app) == 1

    done = _get_job(client, setup.operator, job["id"])
    assert (done["state"], done["attempts"], done["last_error"]) == ("succeeded", 1, None)
    assert done["result"] == _empty_report(created=["gp-2-4", "mem-4-32", "gpu-8-64"])
    assert done["finished_at"] is not None

    offers = _offers(client, setup.operator, setup.id)
    summary = [
        (o["sku"], o["name"], o["region"], o["specs"], o["state"], o["version"]) for o in offers
    ]
    assert summary == [
        (
            "gp-2-4",
            "General purpose 2 vCPU / 4 GiB",
            PARIS,
            {"vcpu": 2, "ram_gib": 4.0, "disk_gib": 50, "gpu": 0},
            "draft",
            1,
        ),
        (
            "gpu-8-64",
            "GPU 8 vCPU / 64 GiB",
            PARIS,
            {"vcpu": 8, "ram_gib": 64.5, "disk_gib": 200, "gpu": 1},
            "draft",
            1,
        ),
        (
            "mem-4-32",
            "Memory 4 vCPU / 32 GiB",
            LYON,
            {"vcpu": 4, "ram_gib": 32.0, "disk_gib": 100, "gpu": 0},
            "draft",
            1,
        ),
    ]
    for offer in offers:
        assert (offer["prices"], offer["currency"], offer["kind"]) == ([], "EUR", "vm")
        assert Decimal(offer["monthly_price"]) == 0
        assert (offer["published_at"], offer["provider_id"]) == (None, setup.id)
        assert [c["scheme"] for c in offer["compliance"]] == ["hds", "secnumcloud"]
    # Drafts are the operator's own: a buyer sees none of them.
    assert all_pages(client, buyer, f"/v1/offers?provider={setup.id}") == []


def test_a_synced_draft_needs_prices_before_it_is_published(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup, buyer: ApiUser
) -> None:
    _sync(client, db, app, setup)
    draft = _by_sku(_offers(client, setup.operator, setup.id))["gp-2-4"]

    refused = client.post(f"/v1/offers/{draft['id']}/publish", headers=setup.operator.headers)

    body = problem(refused, 422, "validation_failed")
    assert list(body["errors"]) == ["prices"]
    offer, etag = _get_offer(client, setup.operator, draft["id"])
    assert (offer["state"], etag) == ("draft", '"v1"')

    priced = client.patch(
        f"/v1/offers/{draft['id']}",
        json={"prices": default_prices()},
        headers={**setup.operator.headers, "If-Match": etag},
    )
    assert priced.status_code == 200, priced.get_data(as_text=True)
    assert priced.json["monthly_price"] == OFFER_MONTHLY_PRICE  # 2 vCPU, 4 GiB, 50 GiB
    published = client.post(f"/v1/offers/{draft['id']}/publish", headers=setup.operator.headers)
    assert published.status_code == 200, published.get_data(as_text=True)
    assert (published.json["state"], published.json["version"]) == ("published", 1)
    assert [o["id"] for o in all_pages(client, buyer, f"/v1/offers?provider={setup.id}")] == [
        draft["id"]
    ]


# --- re-syncing -------------------------------------------------------------------------------


def test_resync_updates_drafts_versions_published_offers_and_skips_foreign_regions(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    _sync(client, db, app, setup)
    first = _by_sku(_offers(client, setup.operator, setup.id))
    published, published_etag = _price_and_publish(client, setup.operator, first["gp-2-4"]["id"])
    mem_before, mem_etag = _get_offer(client, setup.operator, first["mem-4-32"]["id"])
    gpu_before, gpu_etag = _get_offer(client, setup.operator, first["gpu-8-64"]["id"])
    assert (mem_etag, gpu_etag) == ('"v1"', '"v1"')

    _set_flavors(
        client,
        setup,
        [
            {**GP, "vcpu": 4},  # published → a new version
            {**MEM, "disk_gib": 150, "name": "Memory 4 vCPU / 32 GiB / 150 GiB"},  # draft
            GPU,  # same → unchanged
            {"sku": "de-2-8", "vcpu": 2, "ram_gib": 8, "disk_gib": 40, "region": "de-fra-1"},
            {"sku": "new-1-2", "vcpu": 1, "ram_gib": 2, "disk_gib": 20, "region": "fr-lyo-1"},
        ],
    )
    done = _sync(client, db, app, setup)

    assert done["result"] == _empty_report(
        created=["new-1-2"],
        updated=["mem-4-32"],
        versioned=["gp-2-4"],
        unchanged=["gpu-8-64"],
        skipped=[{"sku": "de-2-8", "reason": "region 'de-fra-1' is not one of the provider's"}],
    )
    offers = _offers(client, setup.operator, setup.id)
    assert [(o["sku"], o["version"], o["state"]) for o in offers] == [
        ("gp-2-4", 1, "published"),
        ("gp-2-4", 2, "draft"),
        ("gpu-8-64", 1, "draft"),
        ("mem-4-32", 1, "draft"),
        ("new-1-2", 1, "draft"),
    ]
    # The published version never changes.
    assert _get_offer(client, setup.operator, published["id"]) == (published, published_etag)
    # Its next version carries its prices over, with the new specs (and their price).
    successor = offers[1]
    assert successor["id"] != published["id"]
    assert successor["specs"] == {"vcpu": 4, "ram_gib": 4.0, "disk_gib": 50, "gpu": 0}
    assert successor["prices"] == published["prices"]
    assert successor["name"] == published["name"]
    # 36.50 + 0.01 × 4 × 730 + 5.84 + 2.00
    assert successor["monthly_price"] == "73.54"
    # The draft is updated in place, and its ETag moves on.
    mem_after, mem_etag_after = _get_offer(client, setup.operator, mem_before["id"])
    assert mem_etag_after == '"v2"'
    assert mem_after["specs"] == {"vcpu": 4, "ram_gib": 32.0, "disk_gib": 150, "gpu": 0}
    assert mem_after["name"] == "Memory 4 vCPU / 32 GiB / 150 GiB"
    assert {**mem_after, "specs": None, "name": None} == {
        **mem_before,
        "specs": None,
        "name": None,
    }
    # Unchanged is untouched.
    assert _get_offer(client, setup.operator, gpu_before["id"]) == (gpu_before, '"v1"')
    # The new one lands in its region.
    assert offers[4]["region"] == LYON
    assert offers[4]["name"] == "new-1-2"  # a flavor without a name is named by its SKU


def test_running_the_same_sync_again_changes_nothing(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    done = _sync(client, db, app, setup)
    _price_and_publish(
        client, setup.operator, _by_sku(_offers(client, setup.operator, setup.id))["gp-2-4"]["id"]
    )
    _set_flavors(client, setup, [{**GP, "vcpu": 4}, MEM, GPU])
    _sync(client, db, app, setup)
    before = [
        (o["id"], o["version"], o["state"]) for o in _offers(client, setup.operator, setup.id)
    ]
    etags = [_get_offer(client, setup.operator, offer_id)[1] for offer_id, _, _ in before]

    # The handler again, on the first job (a worker that crashed before recording it) …
    again = offer_sync.run_sync_job(JobContext(db, app.config), _job_row(db, done["id"]))
    assert again == _empty_report(unchanged=["gp-2-4", "mem-4-32", "gpu-8-64"])
    # … and the job itself run a second time after being put back in the queue.
    with db.transaction() as session:
        job = session.get(Job, uuid.UUID(done["id"]))
        assert job is not None
        job.state, job.finished_at, job.run_after = JobState.QUEUED, None, utcnow()
    assert _run_jobs(db, app) == 1
    rerun = _get_job(client, setup.operator, done["id"])
    assert (rerun["state"], rerun["attempts"]) == ("succeeded", 2)
    assert rerun["result"] == _empty_report(unchanged=["gp-2-4", "mem-4-32", "gpu-8-64"])

    after = [(o["id"], o["version"], o["state"]) for o in _offers(client, setup.operator, setup.id)]
    assert after == before
    assert [_get_offer(client, setup.operator, offer_id)[1] for offer_id, _, _ in after] == etags
    assert len(_offer_rows(db)) == 4


def test_a_pending_draft_version_is_updated_not_versioned_again(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    _sync(client, db, app, setup)
    gp_id = _by_sku(_offers(client, setup.operator, setup.id))["gp-2-4"]["id"]
    _price_and_publish(client, setup.operator, gp_id)
    _set_flavors(client, setup, [{**GP, "vcpu": 4}, MEM, GPU])
    _sync(client, db, app, setup)
    _set_flavors(client, setup, [{**GP, "vcpu": 6}, MEM, GPU])

    done = _sync(client, db, app, setup)

    assert done["result"] == _empty_report(updated=["gp-2-4"], unchanged=["mem-4-32", "gpu-8-64"])
    versions = [o for o in _offers(client, setup.operator, setup.id) if o["sku"] == "gp-2-4"]
    assert [(o["version"], o["state"], o["specs"]["vcpu"]) for o in versions] == [
        (1, "published", 2),
        (2, "draft", 6),
    ]


def test_a_retired_offer_is_left_alone(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    _sync(client, db, app, setup)
    gp_id = _by_sku(_offers(client, setup.operator, setup.id))["gp-2-4"]["id"]
    _price_and_publish(client, setup.operator, gp_id)
    retired = client.post(f"/v1/offers/{gp_id}/retire", headers=setup.operator.headers)
    assert retired.status_code == 200, retired.get_data(as_text=True)
    _set_flavors(client, setup, [{**GP, "vcpu": 4}, MEM, GPU])

    done = _sync(client, db, app, setup)

    assert done["result"] == _empty_report(unchanged=["gp-2-4", "mem-4-32", "gpu-8-64"])
    assert ("gp-2-4", 1, "retired") in _offer_rows(db)
    assert [row for row in _offer_rows(db) if row[0] == "gp-2-4"] == [("gp-2-4", 1, "retired")]


# --- dedupe -----------------------------------------------------------------------------------


def test_a_waiting_sync_is_reused_and_a_finished_one_is_not(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup, admin: ApiUser
) -> None:
    first = _request_sync(client, setup.operator, setup.id)
    second = _request_sync(client, setup.operator, setup.id)
    by_admin = _request_sync(client, admin, setup.id)

    assert second["id"] == first["id"] == by_admin["id"]
    assert second["state"] == "queued"
    assert _run_jobs(db, app) == 1
    assert _get_job(client, setup.operator, first["id"])["state"] == "succeeded"

    third = _request_sync(client, setup.operator, setup.id)

    assert third["id"] != first["id"]
    assert (third["state"], third["attempts"]) == ("queued", 0)
    assert _run_jobs(db, app) == 1
    assert _get_job(client, setup.operator, third["id"])["result"] == _empty_report(
        unchanged=["gp-2-4", "mem-4-32", "gpu-8-64"]
    )


def test_syncs_of_two_providers_are_two_jobs(
    client: FlaskClient,
    db: Database,
    app: Flask,
    setup: ProviderSetup,
    admin: ApiUser,
    make_user: MakeUser,
) -> None:
    other = make_provider(
        client, admin, make_user, adapter="simulated", adapter_config={"flavors": [MEM]}
    )
    mine = _request_sync(client, setup.operator, setup.id)
    theirs = _request_sync(client, other.operator, other.id)
    assert mine["id"] != theirs["id"]
    assert _run_jobs(db, app) == 2
    assert [o["sku"] for o in _offers(client, other.operator, other.id)] == ["mem-4-32"]
    assert len(_offers(client, setup.operator, setup.id)) == 3


def test_a_sync_requested_while_another_transaction_queues_one_joins_it(
    client: FlaskClient,
    db: Database,
    setup: ProviderSetup,
) -> None:
    """Two sync requests at the same instant get the same job (deterministically: the test
    holds a transaction that has queued the sync while the request runs)."""
    answers: list[Any] = []
    with db.transaction() as session:
        held = enqueue(
            session,
            KIND,
            {"provider_id": setup.id, "requested_by": "test"},
            dedupe_key=f"{KIND}:{setup.id}",
        )
        thread = threading.Thread(
            target=lambda: answers.append(
                client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)
            )
        )
        thread.start()
        thread.join(timeout=1.0)  # the request now waits on the held transaction
        held_id = str(held.id)
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert answers[0].status_code == 202, answers[0].get_data(as_text=True)
    assert answers[0].json["id"] == held_id


# --- who may sync, who may read the job -------------------------------------------------------


def test_only_admins_and_the_providers_operators_may_sync(
    client: FlaskClient,
    db: Database,
    setup: ProviderSetup,
    admin: ApiUser,
    buyer: ApiUser,
    make_user: MakeUser,
) -> None:
    other = make_provider(client, admin, make_user, adapter="simulated", adapter_config={})
    url = f"/v1/providers/{setup.id}/sync"

    problem(client.post(url), 401)
    problem(client.post(url, headers=buyer.headers), 403, "forbidden")
    problem(client.post(url, headers=other.operator.headers), 404, "not_found")
    problem(
        client.post(f"/v1/providers/{uuid.uuid4()}/sync", headers=admin.headers), 404, "not_found"
    )
    with db.transaction() as session:
        assert session.query(Job).count() == 0

    job = _request_sync(client, admin, setup.id)
    row = _job_row(db, job["id"])
    assert str(row.organization_id) == setup.organization_id
    assert row.payload == {"provider_id": setup.id, "requested_by": admin.client_id}


def test_a_job_is_read_by_admins_and_its_organization_only(
    client: FlaskClient,
    setup: ProviderSetup,
    admin: ApiUser,
    buyer: ApiUser,
    make_user: MakeUser,
) -> None:
    job = _request_sync(client, setup.operator, setup.id)
    colleague = make_user("provider", ["provider"], organization_id=setup.organization_id)
    other = make_provider(client, admin, make_user, adapter="simulated", adapter_config={})

    assert _get_job(client, admin, job["id"]) == job
    assert _get_job(client, colleague, job["id"]) == job
    for outsider in (buyer, other.operator):
        problem(client.get(f"/v1/jobs/{job['id']}", headers=outsider.headers), 404, "not_found")
    problem(client.get(f"/v1/jobs/{uuid.uuid4()}", headers=admin.headers), 404, "not_found")
    problem(client.get(f"/v1/jobs/{job['id']}"), 401)


# --- failures ---------------------------------------------------------------------------------


def _cloud(app: Flask, setup: ProviderSetup) -> SimulatedCloud:
    """The simulated cloud behind the provider, as the adapter finds it."""
    return SimulatedCloud(Path(app.config["PROVIDER_STATE_DIR"]) / f"simulated-{setup.id}.sqlite3")


def test_a_throttled_sync_waits_retry_after_and_writes_nothing(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup, t0: datetime
) -> None:
    _cloud(app, setup).inject("list_offers", "throttled")
    job = _request_sync(client, setup.operator, setup.id)

    assert _run_jobs(db, app, now=t0) == 1

    failed = _get_job(client, setup.operator, job["id"])
    assert (failed["state"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"] == "Throttled: 429 Too Many Requests"
    assert failed["finished_at"] is None
    row = _job_row(db, job["id"])
    assert row.run_after == t0 + timedelta(seconds=45)  # the cloud's Retry-After
    assert _offer_rows(db) == []
    # Still waiting: a new request joins it.
    assert _request_sync(client, setup.operator, setup.id)["id"] == job["id"]

    # Not before its time; then the cloud answers and the drafts arrive.
    assert _run_jobs(db, app, now=t0 + timedelta(seconds=44)) == 0
    assert _run_jobs(db, app, now=t0 + timedelta(seconds=45)) == 1
    done = _get_job(client, setup.operator, job["id"])
    assert (done["state"], done["attempts"], done["last_error"]) == ("succeeded", 2, None)
    assert [row[0] for row in _offer_rows(db)] == ["gp-2-4", "gpu-8-64", "mem-4-32"]


def test_a_cloud_error_is_retried_with_backoff(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup, t0: datetime
) -> None:
    _cloud(app, setup).inject("list_offers", "server_error")
    job = _request_sync(client, setup.operator, setup.id)

    _run_jobs(db, app, now=t0)

    row = _job_row(db, job["id"])
    assert (row.state, row.attempts, row.last_error) == (
        JobState.FAILED,
        1,
        "Retryable: 503 Service Unavailable",
    )
    assert t0 + timedelta(seconds=1) <= row.run_after <= t0 + timedelta(seconds=4)
    assert _offer_rows(db) == []


@pytest.mark.parametrize(
    ("breakage", "last_error"),
    [
        (
            {"adapter_config": {"flavors": FLAVORS, "colour": "blue"}},
            "JobFailed: Unknown setting 'colour'.",
        ),
        (
            {"adapter_config": {"flavors": [{"sku": "half"}]}},
            "JobFailed: flavors[0] is incomplete or malformed: 'vcpu'.",
        ),
        ({"adapter": "nocloud"}, "JobFailed: No provider adapter named 'nocloud' is installed."),
    ],
    ids=["unknown-setting", "malformed-flavor", "adapter-gone"],
)
def test_a_provider_whose_settings_broke_since_makes_the_job_dead(
    client: FlaskClient,
    db: Database,
    app: Flask,
    setup: ProviderSetup,
    t0: datetime,
    breakage: dict[str, Any],
    last_error: str,
) -> None:
    _edit_provider(db, setup.id, **breakage)
    job = _request_sync(client, setup.operator, setup.id)

    assert _run_jobs(db, app, now=t0) == 1

    dead = _get_job(client, setup.operator, job["id"])
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 1, last_error)
    assert dead["finished_at"] is not None
    assert _offer_rows(db) == []
    # Nothing left to retry; a new request is a new job.
    assert _run_jobs(db, app, now=t0 + timedelta(days=1)) == 0
    assert _request_sync(client, setup.operator, setup.id)["id"] != job["id"]


@pytest.mark.parametrize(
    "how",
    ["another-key", "another-provider"],
)
def test_unreadable_credentials_make_the_job_dead(
    client: FlaskClient,
    db: Database,
    app: Flask,
    setup: ProviderSetup,
    t0: datetime,
    how: str,
) -> None:
    if how == "another-key":
        ciphertext = Keyring([Fernet.generate_key().decode()]).encrypt(uuid.UUID(setup.id), {})
        expected = (
            "JobFailed: The provider's credentials were encrypted under a key that is no "
            "longer configured; set them again."
        )
    else:
        keyring = Keyring.from_config(app.config)
        ciphertext = keyring.encrypt(uuid.uuid4(), {})
        expected = "JobFailed: These credentials belong to another provider: refusing to use them."
    with db.transaction() as session:
        session.add(
            ProviderCredentials(
                provider_id=uuid.UUID(setup.id), ciphertext=ciphertext, fields=[], updated_at=t0
            )
        )
    job = _request_sync(client, setup.operator, setup.id)

    _run_jobs(db, app, now=t0)

    dead = _get_job(client, setup.operator, job["id"])
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 1, expected)
    assert _offer_rows(db) == []


def test_a_provider_deleted_before_its_sync_ran_makes_the_job_dead(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    job = _request_sync(client, setup.operator, setup.id)
    with db.transaction() as session:
        provider = session.get(Provider, uuid.UUID(setup.id))
        session.delete(provider)

    _run_jobs(db, app)

    dead = _get_job(client, setup.operator, job["id"])
    assert (dead["state"], dead["last_error"]) == (
        "dead",
        "JobFailed: The provider no longer exists.",
    )


# --- through the OpenStack adapter ------------------------------------------------------------


class TestOpenStackSync:
    """The same sync through openstacksdk against the fake Keystone + Nova on 127.0.0.1."""

    @pytest.fixture
    def app(self, app_config: dict[str, Any]) -> Iterator[Flask]:
        application = create_app({**app_config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True})
        yield application
        application.extensions["broker.db"].dispose()

    @pytest.fixture
    def cloud(self) -> Iterator[tuple[FakeOpenStack, str]]:
        fake = FakeOpenStack(region="fr-par-1")
        with serve_wsgi(fake.app) as base_url:
            yield fake, base_url

    def _provider(
        self,
        client: FlaskClient,
        admin: ApiUser,
        make_user: MakeUser,
        cloud: tuple[FakeOpenStack, str],
        password: str = PASSWORD,
    ) -> ProviderSetup:
        fake, base_url = cloud
        setup = make_provider(
            client,
            admin,
            make_user,
            adapter="openstack",
            adapter_config=fake.adapter_settings(base_url),
        )
        response = client.put(
            f"/v1/providers/{setup.id}/credentials",
            json={"credentials": {"username": USERNAME, "password": password}},
            headers=setup.operator.headers,
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return setup

    def test_flavors_become_drafts(
        self,
        client: FlaskClient,
        db: Database,
        app: Flask,
        admin: ApiUser,
        make_user: MakeUser,
        cloud: tuple[FakeOpenStack, str],
    ) -> None:
        setup = self._provider(client, admin, make_user, cloud)

        done = _sync(client, db, app, setup)

        assert done["result"] == _empty_report(
            created=["SCS-1V-2", "SCS-2V-4-20s", "SCS-4V-16-100s"]
        )
        offers = _offers(client, setup.operator, setup.id)
        assert [(o["sku"], o["name"], o["specs"], o["region"], o["state"]) for o in offers] == [
            (
                "SCS-1V-2",
                "SCS-1V-2",
                {"vcpu": 1, "ram_gib": 2.0, "disk_gib": 0, "gpu": 0},
                PARIS,
                "draft",
            ),
            (
                "SCS-2V-4-20s",
                "SCS-2V-4-20s",
                {"vcpu": 2, "ram_gib": 4.0, "disk_gib": 20, "gpu": 0},
                PARIS,
                "draft",
            ),
            (
                "SCS-4V-16-100s",
                "SCS-4V-16-100s",
                {"vcpu": 4, "ram_gib": 16.0, "disk_gib": 100, "gpu": 0},
                PARIS,
                "draft",
            ),
        ]
        assert all(o["prices"] == [] for o in offers)
        assert cloud[0].errors == []  # the fake answered every request it got
        # Again: nothing changes.
        assert _sync(client, db, app, setup)["result"] == _empty_report(
            unchanged=["SCS-1V-2", "SCS-2V-4-20s", "SCS-4V-16-100s"]
        )

    def test_a_region_the_provider_does_not_declare_is_skipped(
        self,
        client: FlaskClient,
        db: Database,
        app: Flask,
        admin: ApiUser,
        make_user: MakeUser,
    ) -> None:
        fake = FakeOpenStack(region="RegionOne")
        with serve_wsgi(fake.app) as base_url:
            setup = self._provider(client, admin, make_user, (fake, base_url))
            done = _sync(client, db, app, setup)
        reason = "region 'RegionOne' is not one of the provider's"
        assert done["result"] == _empty_report(
            skipped=[
                {"sku": sku, "reason": reason}
                for sku in ("SCS-1V-2", "SCS-2V-4-20s", "SCS-4V-16-100s")
            ]
        )
        assert _offer_rows(db) == []

    def test_wrong_credentials_make_the_job_dead_without_leaking_them(
        self,
        client: FlaskClient,
        db: Database,
        app: Flask,
        admin: ApiUser,
        make_user: MakeUser,
        cloud: tuple[FakeOpenStack, str],
    ) -> None:
        setup = self._provider(client, admin, make_user, cloud, password="not-the-password-42")
        job = _request_sync(client, setup.operator, setup.id)

        assert _run_jobs(db, app) == 1

        dead = _get_job(client, setup.operator, job["id"])
        assert (dead["state"], dead["attempts"]) == ("dead", 1)
        assert dead["last_error"].startswith("Permanent: ")
        assert "not-the-password-42" not in dead["last_error"]
        assert _offer_rows(db) == []


def test_machine_types_the_catalogue_cannot_hold_are_skipped_and_reported(
    client: FlaskClient, db: Database, app: Flask, setup: ProviderSetup
) -> None:
    """A cloud's odd flavors are held to the same rules as offers made through the API."""
    odd = [
        {**GP, "sku": "bad sku!"},
        {**GP, "sku": "zero-cpu", "vcpu": 0},
        {**GP, "sku": "tiny-ram", "ram_gib": "0.125"},
        {**GP, "sku": "many-gpus", "gpu": 65},
    ]
    _set_flavors(client, setup, [GP, *odd])
    done = _sync(client, db, app, setup)
    assert done["result"] == _empty_report(
        created=["gp-2-4"],
        skipped=[
            {"sku": "bad sku!", "reason": "its name is not a valid SKU"},
            {"sku": "zero-cpu", "reason": "vcpu 0 is outside [1, 1024]"},
            {"sku": "tiny-ram", "reason": "ram_gib 0.125 is outside [0.25, 65536]"},
            {"sku": "many-gpus", "reason": "gpu 65 is outside [0, 64]"},
        ],
    )
    assert [offer["sku"] for offer in _offers(client, setup.operator, setup.id)] == ["gp-2-4"]
