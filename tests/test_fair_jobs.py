"""Lanes, fair turns across organizations, and webhook endpoints that cannot stall anyone.

Issue 14: an approver registered 60 webhook endpoints on names that do not resolve and placed
one order; the worker spent itself on failing deliveries in the same queue as provisioning,
and another agency's order waited minutes. Everything here is measured in claims (jobs a
worker runs), never in seconds.

Done when: with agency A's 60 failing endpoints and their deliveries ready (retrying), agency
B's order completes after exactly as many claims as without them (the first claim), and B's
one delivery is the first claim of a webhooks worker too; a worker of `webhooks` never runs
provisioning and one of `provisioning` never runs deliveries (the `run_worker` loop, and the
real `broker worker --lanes …` process); organizations take turns in a lane; an organization
has at most `MAX_ENDPOINTS` endpoints (409 `webhook_endpoint_limit`); an endpoint is disabled
after `DISABLE_AFTER_FAILURES` failed attempts in a row, says why, and can be enabled again.

Names ending in `.invalid` do not resolve (tests/helpers.py's fake `getaddrinfo`): a delivery
to one fails at once, with no network. Jobs run in-process (`run_next`, `run_pending`) with a
clock the test moves by hand, except for the `broker worker` processes.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import Database
from broker.jobs import lanes, queue
from broker.jobs.handlers import HANDLERS, ON_DEAD, PERIODIC
from broker.jobs.lanes import LANE_BUDGET, LANES, LaneSchedule, lane_of, parse_lanes
from broker.jobs.queue import Handler, JobContext, claim, enqueue, run_next, run_pending
from broker.jobs.worker import PeriodicTask, run_worker
from broker.models import Job, JobState, OrderState, OrganizationKind, WebhookEndpoint
from broker.models.base import use_clock
from broker.services import organizations, webhooks
from broker.services.orders import PROVISION_JOB
from providers.http import HttpPolicy
from tests.conftest import ApiUser, MakeUser
from tests.helpers import fake_getaddrinfo, problem, run_concurrently
from tests.test_provisioning import Market, make_market, order_row, place_order
from tests.test_webhooks import Receiver, _approver_caller, _keyring

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KIND = "test.fair"  # a kind no lane names: the `other` lane


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo({}))


class Clock:
    """A clock the test moves by hand (the API reads it too)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(app: Flask) -> Iterator[Clock]:
    """The broker's clock for the test, in its requests and in what it writes directly."""
    clock = Clock(datetime(2031, 5, 4, 9, 0, tzinfo=UTC))
    app.config["CLOCK"] = clock
    with use_clock(clock):
        yield clock


def _organization(db: Database, name: str) -> uuid.UUID:
    with db.transaction() as session:
        organization = organizations.create_organization(
            session, None, name=f"{name} {uuid.uuid4().hex[:6]}", kind=OrganizationKind.AGENCY
        )
        return organization.id


def _enqueue_many(
    db: Database,
    jobs: list[tuple[str, uuid.UUID | None]],
    start: datetime,
) -> list[uuid.UUID]:
    """Queue `(kind, organization)` jobs, ready one second apart from `start` in this order
    (so that "oldest first" is exact)."""
    ids = []
    with db.transaction() as session:
        for n, (kind, organization) in enumerate(jobs):
            job = enqueue(session, kind, {"n": n}, organization_id=organization)
            job.run_after = start + timedelta(seconds=n)
            ids.append(job.id)
    return ids


def _recording(into: list[Job]) -> Handler:
    def handler(_context: JobContext, job: Job) -> dict[str, Any]:
        into.append(job)
        return {}

    return handler


def _job(db: Database, job_id: uuid.UUID) -> Job:
    with db.session(read_only=True) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# --- lanes ------------------------------------------------------------------------------------


def test_every_kind_of_job_has_its_lane() -> None:
    assert set(HANDLERS) == set(lanes.LANE_OF_KIND)
    by_lane: dict[str, set[str]] = {}
    for kind in HANDLERS:
        by_lane.setdefault(lane_of(kind), set()).add(kind)
    assert by_lane == {
        "provisioning": {"order.provision", "resource.action", "resources.reconcile"},
        "billing": {
            "usage.meter",
            "usage.poll",
            "billing.run",
            "payments.stripe_sync",
            "payments.stripe_void",
            "payments.stripe_paid_outside",
            "payments.stripe_credit",
        },
        "catalogue": {"provider.sync_offers"},
        "webhooks": {"webhook.deliver", "invitation.email"},
    }
    assert lane_of("anything.else") == "other"
    assert LANES == ("provisioning", "billing", "catalogue", "other", "webhooks")


def test_lanes_are_named_in_priority_order_and_unknown_ones_refused() -> None:
    assert parse_lanes(None) == LANES
    assert parse_lanes("") == LANES
    assert parse_lanes("webhooks, provisioning") == ("provisioning", "webhooks")
    assert parse_lanes(["billing", "billing"]) == ("billing",)
    with pytest.raises(ValueError, match="Unknown lane.*hooks.*The lanes are"):
        parse_lanes("provisioning,hooks")


def test_jobs_are_queued_in_the_lane_of_their_kind(db: Database, clock: Clock) -> None:
    kinds = [*HANDLERS, KIND]
    ids = _enqueue_many(db, [(kind, None) for kind in kinds], clock.now)
    assert [_job(db, job_id).lane for job_id in ids] == [lane_of(kind) for kind in kinds]
    assert queue.schedule_periodic(db, PERIODIC, clock.now) == len(PERIODIC)
    with db.session(read_only=True) as session:
        periodic = session.scalars(select(Job).where(Job.schedule_key.is_not(None))).all()
    assert {(job.kind, job.lane) for job in periodic} == {
        ("resources.reconcile", "provisioning"),
        ("usage.meter", "billing"),
        ("usage.poll", "billing"),
    }


def test_a_worker_of_every_lane_takes_them_in_priority_order(db: Database, clock: Clock) -> None:
    # Queued oldest first: deliveries, then the others, provisioning last of all.
    kinds = ["webhook.deliver", KIND, "provider.sync_offers", "billing.run", "order.provision"]
    _enqueue_many(db, [(kind, None) for kind in kinds for _ in range(2)], clock.now)

    claimed = []
    while (job := claim(db, "worker-1", clock.now + timedelta(minutes=1))) is not None:
        claimed.append(job.kind)

    assert claimed == [kind for kind in reversed(kinds) for _ in range(2)]


def test_the_lane_schedule_gives_lanes_kept_waiting_one_turn() -> None:
    schedule = LaneSchedule(budget=3)
    assert schedule.order() == list(LANES)
    for _ in range(3):  # provisioning always has work
        order = schedule.order()
        assert order[0] == "provisioning"
        schedule.record(order, "provisioning")
    # Every other lane has waited 3 claims: they go first, in priority order, once.
    order = schedule.order()
    assert order == ["billing", "catalogue", "other", "webhooks", "provisioning"]
    schedule.record(order, "other")  # billing and catalogue were empty
    assert schedule.waited == {
        "provisioning": 1,
        "billing": 0,
        "catalogue": 0,
        "other": 0,
        "webhooks": 4,
    }
    order = schedule.order()
    assert order == ["webhooks", "provisioning", "billing", "catalogue", "other"]
    schedule.record(order, None)  # nothing anywhere: nobody is waiting any more
    assert schedule.waited == dict.fromkeys(LANES, 0)
    assert schedule.order() == list(LANES)

    only = LaneSchedule(["webhooks", "billing"])
    assert only.lanes == ("billing", "webhooks")


def test_deliveries_still_move_while_provisioning_is_never_empty(
    db: Database, app: Flask, clock: Clock
) -> None:
    """Priority is not starvation: with provisioning always busy, webhooks get one claim in
    `LANE_BUDGET + 1`."""
    claims = 3 * (LANE_BUDGET + 1)
    _enqueue_many(
        db, [("webhook.deliver", None)] * 3 + [("order.provision", None)] * claims, clock.now
    )
    ran: list[Job] = []
    context = JobContext(db, app.config, now=lambda: clock.now + timedelta(hours=1))
    schedule = LaneSchedule()
    handlers = {"webhook.deliver": _recording(ran), "order.provision": _recording(ran)}
    for _ in range(claims):
        assert run_next(context, handlers, "worker-1", schedule) is not None
    assert Counter(job.lane for job in ran) == {"provisioning": claims - 3, "webhooks": 3}
    assert [n for n, job in enumerate(ran) if job.lane == "webhooks"] == [
        LANE_BUDGET,
        2 * LANE_BUDGET + 1,
        3 * LANE_BUDGET + 2,
    ]


# --- fair turns in a lane -----------------------------------------------------------------------


def test_organizations_take_turns_in_a_lane(db: Database, app: Flask, clock: Clock) -> None:
    a, b = _organization(db, "A"), _organization(db, "B")
    # A queued five first, then B three, then two of the broker's own (no organization).
    _enqueue_many(db, [(KIND, a)] * 5 + [(KIND, b)] * 3 + [(KIND, None)] * 2, clock.now)
    ran: list[Job] = []

    context = JobContext(db, app.config, now=lambda: clock.now + timedelta(minutes=1))
    assert run_pending(context, {KIND: _recording(ran)}) == 10

    names = {a: "A", b: "B", None: "broker"}
    assert [names[job.organization_id] for job in ran] == [
        "A", "B", "broker", "A", "B", "broker", "A", "B", "A", "A",
    ]  # fmt: skip
    # Within an organization, oldest first.
    assert [job.payload["n"] for job in ran if job.organization_id == a] == [0, 1, 2, 3, 4]


def test_a_thousand_ready_jobs_of_one_organization_do_not_push_back_anothers_one(
    db: Database, app: Flask, clock: Clock
) -> None:
    a, b = _organization(db, "A"), _organization(db, "B")
    _enqueue_many(db, [(KIND, a)] * 1000, clock.now)
    (lonely,) = _enqueue_many(db, [(KIND, b)], clock.now + timedelta(hours=1))
    ready_at = clock.now + timedelta(hours=2)

    first, second = claim(db, "worker-1", ready_at), claim(db, "worker-1", ready_at)

    assert first is not None and first.organization_id == a  # oldest, nobody served yet
    assert second is not None and second.id == lonely
    # A is served again and again once B has nothing left.
    third = claim(db, "worker-1", ready_at)
    assert third is not None and third.organization_id == a


def test_turns_are_per_lane(db: Database, app: Flask, clock: Clock) -> None:
    a, b = _organization(db, "A"), _organization(db, "B")
    # A was just served in the webhooks lane; in provisioning it has not been yet.
    _enqueue_many(db, [("webhook.deliver", a), ("webhook.deliver", b)], clock.now)
    ready_at = clock.now + timedelta(hours=1)
    served = claim(db, "worker-1", ready_at, lanes=["webhooks"])
    assert served is not None and served.organization_id == a
    _enqueue_many(db, [("order.provision", a), ("order.provision", b)], clock.now)
    first = claim(db, "worker-1", ready_at, lanes=["provisioning"])
    assert first is not None and first.organization_id == a


def test_expired_leases_and_crashes_keep_their_meaning_with_turns(
    db: Database, app: Flask, clock: Clock
) -> None:
    a, b = _organization(db, "A"), _organization(db, "B")
    job_a, job_b = _enqueue_many(db, [(KIND, a), (KIND, b)], clock.now)
    t = clock.now + timedelta(minutes=1)
    assert (taken := claim(db, "worker-1", t)) is not None and taken.id == job_a
    # worker-1 dies holding A's job; B's runs; after the lease A's job is ready again.
    assert (other := claim(db, "worker-2", t)) is not None and other.id == job_b
    assert claim(db, "worker-2", t + queue.LEASE) is None
    later = t + queue.LEASE + timedelta(seconds=1)
    retaken = claim(db, "worker-2", later)
    assert retaken is not None and retaken.id == job_a
    assert (retaken.attempts, retaken.worker, retaken.state) == (2, "worker-2", JobState.RUNNING)


@pytest.mark.parametrize("threads", [4])
def test_concurrent_workers_over_lanes_and_organizations_run_each_job_once(
    db: Database, app: Flask, clock: Clock, threads: int
) -> None:
    orgs = [_organization(db, name) for name in "ABC"]
    kinds = ["webhook.deliver", "order.provision", KIND]
    plan = [(kinds[n % 3], orgs[n % len(orgs)] if n % 4 else None) for n in range(60)]
    ids = _enqueue_many(db, plan, clock.now - timedelta(minutes=5))
    runs: Counter[uuid.UUID] = Counter()
    lock = threading.Lock()

    def handler(_context: JobContext, job: Job) -> dict[str, Any]:
        with lock:
            runs[job.id] += 1
        time.sleep(0.002)  # let the other threads claim meanwhile
        return {}

    context = JobContext(db, app.config, now=clock)
    handlers = dict.fromkeys(kinds, handler)

    def work(index: int) -> int:
        return run_pending(context, handlers, f"worker-{index}")

    done = run_concurrently(threads, work)

    assert sum(done) == len(ids)
    assert runs == Counter(dict.fromkeys(ids, 1))
    with db.session(read_only=True) as session:
        states = Counter(job.state for job in session.scalars(select(Job)))
    assert states == {JobState.SUCCEEDED: len(ids)}


# --- workers for some lanes only ------------------------------------------------------------


@pytest.mark.parametrize(
    ("only", "runs", "never"),
    [
        (["webhooks"], "webhook.deliver", "order.provision"),
        (["provisioning"], "order.provision", "webhook.deliver"),
    ],
    ids=["webhooks", "provisioning"],
)
def test_a_worker_of_some_lanes_runs_nothing_else(
    db: Database,
    app: Flask,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    only: list[str],
    runs: str,
    never: str,
) -> None:
    """The worker's own loop (`run_worker`), in a thread, with recording handlers."""
    ran: list[Job] = []
    for kind in ("webhook.deliver", "order.provision"):
        monkeypatch.setitem(HANDLERS, kind, _recording(ran))
    # A worker of every lane would run both before it next went idle.
    other_id, own_id = _enqueue_many(
        db, [(never, None), (runs, None)], datetime.now(UTC) - timedelta(minutes=1)
    )
    idle = threading.Event()

    def probe(_db: Database) -> int:
        # Tasks run when a pass over the worker's lanes found nothing more to claim.
        if _job(db, own_id).state is JobState.SUCCEEDED:
            idle.set()
        return 0

    stop = threading.Event()
    thread = threading.Thread(
        target=run_worker,
        args=(db, stop, app.config),
        kwargs={"tasks": [PeriodicTask("probe", 0, probe)], "poll_seconds": 0.05, "lanes": only},
    )
    thread.start()
    try:
        assert idle.wait(timeout=30), "the worker never ran its own job"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

    assert [job.kind for job in ran] == [runs]
    untouched = _job(db, other_id)
    assert (untouched.state, untouched.attempts, untouched.worker) == (JobState.QUEUED, 0, None)
    # It queued the periodic jobs of its own lanes only.
    with db.session(read_only=True) as session:
        periodic = {
            job.lane for job in session.scalars(select(Job).where(Job.schedule_key.is_not(None)))
        }
    assert periodic <= set(only)


def test_broker_worker_lanes_option_runs_those_lanes_only(
    app_config: dict[str, Any], db: Database, tmp_path: Path
) -> None:
    """The real `broker worker --lanes …`, as operators run it."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BROKER_HANG")},
        "DATABASE_URL": app_config["DATABASE_URL"],
        "BROKER_INSTANCE_PATH": app_config["INSTANCE_PATH"],
        "BROKER_PROVIDER_STATE_DIR": app_config["PROVIDER_STATE_DIR"],
        "BROKER_CREDENTIAL_KEYS": app_config["CREDENTIAL_KEYS"],
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(PROJECT_ROOT),
    }

    def queue_pair() -> tuple[uuid.UUID, uuid.UUID]:
        # A delivery to an endpoint that is gone, a provisioning of an order that is gone:
        # each is done at once (skipped) by whoever runs it. Provisioning is older.
        with db.transaction() as session:
            provision = enqueue(session, PROVISION_JOB, {"order_id": str(uuid.uuid4())})
            delivery = enqueue(
                session,
                webhooks.JOB_KIND,
                {"endpoint_id": str(uuid.uuid4()), "event": {"id": "e", "type": "t"}},
            )
            provision.run_after -= timedelta(seconds=5)
            return provision.id, delivery.id

    def run_until(lanes_option: str, done: uuid.UUID) -> None:
        log = tmp_path / f"worker-{lanes_option}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "broker.cli", "worker", "--lanes", lanes_option],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            deadline = time.monotonic() + 60
            while _job(db, done).state is not JobState.SUCCEEDED:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    provision, delivery = queue_pair()
    run_until("webhooks", delivery)
    assert (_job(db, provision).state, _job(db, provision).attempts) == (JobState.QUEUED, 0)
    with db.session(read_only=True) as session:  # no periodic job of another lane either
        assert session.scalars(select(Job).where(Job.schedule_key.is_not(None))).all() == []

    provision2, delivery2 = queue_pair()
    run_until("provisioning", provision2)  # the newest provisioning job: the older one first
    assert _job(db, provision).state is JobState.SUCCEEDED
    assert (_job(db, delivery2).state, _job(db, delivery2).attempts) == (JobState.QUEUED, 0)

    refused = subprocess.run(
        [sys.executable, "-m", "broker.cli", "worker", "--lanes", "provisioning,hooks"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "Unknown lane(s): hooks" in refused.stderr
    assert "Traceback" not in refused.stderr


# --- done when: agency A's 60 failing endpoints do not slow agency B down ---------------------


@dataclasses.dataclass
class Agency:
    approver: ApiUser
    market: Market

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(self.approver.organization_id)


def _agency(make_user: MakeUser, market: Market) -> Agency:
    approver = make_user("agency", ["approver"])
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    return Agency(approver, dataclasses.replace(market, buyer=buyer))


def _register_directly(app: Flask, db: Database, organization_id: Any, url: str) -> uuid.UUID:
    """Through the service, as `POST /v1/webhooks` does (names that do not resolve pass)."""
    with db.transaction() as session:
        endpoint, _ = webhooks.register(
            session, _approver_caller(str(organization_id)), url, [], _keyring(app), HttpPolicy()
        )
        return endpoint.id


@dataclasses.dataclass
class Measured:
    provisioning_claims: int  # claims of a worker of every lane until B's order completed
    webhook_claims: int  # claims of a webhooks worker until B's first delivery was tried
    fifo_ahead: int  # ready jobs queued before B's provisioning job (what FIFO ran first)
    kinds_before_b: list[str]


def _measure(
    app: Flask,
    client: FlaskClient,
    db: Database,
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
    market: Market,
    clock: Clock,
    *,
    flood: bool,
) -> Measured:
    a, b = _agency(make_user, market), _agency(make_user, market)
    b_endpoint = _register_directly(app, db, b.id, "https://hooks.agency-b.invalid/in")
    if flood:  # registered before the cap existed: 60 names that do not resolve
        with monkeypatch.context() as patch:
            patch.setattr(webhooks, "MAX_ENDPOINTS", 60)
            for n in range(60):
                _register_directly(app, db, a.id, f"https://hook-{n}.agency-a.invalid/events")
    context = JobContext(db, app.config, now=clock)

    # A's first order, run with everything it notifies: every delivery fails once.
    first = place_order(client, a.market)
    run_pending(context, HANDLERS, on_dead=ON_DEAD)
    assert order_row(db, first).state is OrderState.COMPLETED
    # Later: A's failed deliveries are all due for their retry, A orders again, then B.
    clock.now += timedelta(minutes=1)
    with db.transaction() as session:
        session.execute(
            sa.update(Job)
            .where(Job.kind == webhooks.JOB_KIND, Job.state == JobState.FAILED)
            .values(run_after=clock.now - timedelta(seconds=1))
        )
    place_order(client, a.market, name="again")
    clock.now += timedelta(seconds=1)
    b_order = place_order(client, b.market)
    clock.now += timedelta(minutes=1)  # everything queued is ready
    with db.session(read_only=True) as session:
        jobs = session.scalars(
            select(Job).where(Job.state.in_([JobState.QUEUED, JobState.FAILED]))
        ).all()
        b_job = next(
            j for j in jobs if j.kind == PROVISION_JOB and j.payload["order_id"] == b_order
        )
        fifo_ahead = sum(1 for j in jobs if (j.run_after, j.id) < (b_job.run_after, b_job.id))

    # A worker of every lane, as `broker worker` runs.
    schedule, kinds = LaneSchedule(), []
    while order_row(db, b_order).state is not OrderState.COMPLETED:
        job = run_next(context, HANDLERS, "worker-all", schedule, on_dead=ON_DEAD)
        assert job is not None, "nothing left to run and B's order is not completed"
        kinds.append(f"{job.kind}@{'B' if job.organization_id == b.id else 'A'}")
        assert len(kinds) < 500
    provisioning_claims = len(kinds)

    # A worker of the webhooks lane only: B's deliveries against A's hundreds.
    hooks, webhook_claims = LaneSchedule(["webhooks"]), 0
    while True:
        job = run_next(context, HANDLERS, "worker-hooks", hooks, on_dead=ON_DEAD)
        assert job is not None
        webhook_claims += 1
        if job.payload["endpoint_id"] == str(b_endpoint):
            break
        assert webhook_claims < 1000
    return Measured(provisioning_claims, webhook_claims, fifo_ahead, kinds)


def test_sixty_failing_endpoints_of_one_agency_do_not_delay_another_agencys_order(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
) -> None:
    market = make_market(app, client, admin, make_user)

    quiet = _measure(app, client, db, make_user, monkeypatch, market, clock, flood=False)
    flooded = _measure(app, client, db, make_user, monkeypatch, market, clock, flood=True)

    # The flood was real: FIFO would have run hundreds of failing deliveries before B.
    with db.session(read_only=True) as session:
        deliveries = session.scalars(select(Job).where(Job.kind == webhooks.JOB_KIND)).all()
    assert flooded.fifo_ahead >= 60 * 3, flooded.fifo_ahead
    assert quiet.fifo_ahead <= 2
    assert sum(1 for job in deliveries if job.attempts >= 1 and job.last_error) >= 60 * 3

    # Done when: B's order completes after as many claims with the flood as without it.
    assert flooded.provisioning_claims == quiet.provisioning_claims == 1, flooded.kinds_before_b
    assert flooded.kinds_before_b == [f"{PROVISION_JOB}@B"]
    # And B's first delivery is a webhooks worker's first claim, flood or not.
    assert flooded.webhook_claims == quiet.webhook_claims == 1


# --- endpoint cap -------------------------------------------------------------------------------


def _register(client: FlaskClient, user: ApiUser, url: str, **body: Any) -> Any:
    return client.post("/v1/webhooks", json={"url": url, **body}, headers=user.headers)


def test_an_organization_has_at_most_max_endpoints(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    approver = make_user("agency", ["approver"])
    other = make_user("agency", ["approver"])
    made = []
    for n in range(webhooks.MAX_ENDPOINTS):
        response = _register(client, approver, f"https://hook-{n}.example.invalid/in")
        assert response.status_code == 201, response.get_data(as_text=True)
        made.append(response.json["id"])
    assert webhooks.MAX_ENDPOINTS == 10

    body = problem(_register(client, approver, "https://one-more.example.invalid/in"), 409)
    assert body["code"] == "webhook_endpoint_limit"
    assert "10" in body["detail"]
    # Nor through an admin, for that organization; another organization is not affected.
    problem(
        _register(
            client, admin, "https://x.example.invalid/", organization_id=approver.organization_id
        ),
        409,
        "webhook_endpoint_limit",
    )
    assert _register(client, other, "https://theirs.example.invalid/in").status_code == 201
    with db.session(read_only=True) as session:
        mine = session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.organization_id == uuid.UUID(approver.organization_id)
            )
        ).all()
    assert len(mine) == 10

    # A disabled endpoint still counts; a deleted one makes room.
    disabled = client.post(f"/v1/webhooks/{made[0]}/disable", headers=approver.headers)
    assert disabled.status_code == 200
    problem(_register(client, approver, "https://one-more.example.invalid/in"), 409)
    assert client.delete(f"/v1/webhooks/{made[0]}", headers=approver.headers).status_code == 204
    assert _register(client, approver, "https://one-more.example.invalid/in").status_code == 201


def test_registrations_at_once_do_not_pass_the_cap(
    app: Flask, db: Database, make_user: MakeUser
) -> None:
    approver = make_user("agency", ["approver"])
    organization_id = approver.organization_id
    for n in range(webhooks.MAX_ENDPOINTS - 2):
        _register_directly(app, db, organization_id, f"https://h{n}.example.invalid/")

    def register(n: int) -> str:
        try:
            _register_directly(app, db, organization_id, f"https://race{n}.example.invalid/")
        except webhooks.EndpointLimitReached:
            return "refused"
        return "registered"

    outcomes = Counter(run_concurrently(6, register))

    assert outcomes == {"registered": 2, "refused": 4}


# --- disabled after N failures, enabled again ------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver([500] * (webhooks.DISABLE_AFTER_FAILURES + 5)).start()
    yield receiver
    receiver.close()


def _local_endpoint(app: Flask, db: Database, organization_id: str, url: str) -> uuid.UUID:
    with db.transaction() as session:
        endpoint, _ = webhooks.register(
            session,
            _approver_caller(organization_id),
            url,
            [],
            _keyring(app),
            HttpPolicy(allow_private=True),
        )
        return endpoint.id


def _notify(db: Database, organization_id: str, count: int) -> None:
    with db.transaction() as session:
        for n in range(count):
            webhooks.notify(
                session, uuid.UUID(organization_id), webhooks.ORDER_STATE_CHANGED, {"n": n}
            )


def _deliver(app: Flask, db: Database, now: datetime) -> int:
    settings = {**app.config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True}
    return run_pending(JobContext(db, settings, now=lambda: now), HANDLERS, lanes=["webhooks"])


def test_an_endpoint_failing_n_times_in_a_row_is_disabled_and_enabled_again(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    receiver: Receiver,
    clock: Clock,
) -> None:
    n = webhooks.DISABLE_AFTER_FAILURES
    assert n == 20
    approver = make_user("agency", ["approver"])
    endpoint_id = _local_endpoint(app, db, approver.organization_id, f"{receiver.url}/hooks")
    path = f"/v1/webhooks/{endpoint_id}"
    _notify(db, approver.organization_id, n + 5)

    assert _deliver(app, db, clock.now) == n + 5

    # Twenty POSTs answered 500, then it was disabled: the last five were not even sent.
    assert len(receiver.received) == n
    read = client.get(path, headers=approver.headers)
    assert read.status_code == 200
    body = read.json
    assert (body["state"], body["active"], body["consecutive_failures"]) == ("disabled", False, n)
    assert body["disabled_reason"].startswith(f"{n} failed delivery attempts in a row")
    assert "500" in body["disabled_reason"]
    assert body["last_error"] == "The endpoint answered 500."
    assert body["disabled_at"].endswith("Z") and body["last_failure_at"].endswith("Z")
    with db.session(read_only=True) as session:
        jobs = session.scalars(
            select(Job).where(Job.kind == webhooks.JOB_KIND).order_by(Job.created_at)
        ).all()
    states = Counter(job.state for job in jobs)
    # 19 wait for their retry, the 20th (which disabled it) is dead, the rest were skipped.
    assert states == {JobState.FAILED: n - 1, JobState.DEAD: 1, JobState.SUCCEEDED: 5}
    (dead,) = [job for job in jobs if job.state is JobState.DEAD]
    assert "now disabled" in (dead.last_error or "")
    assert all(job.result == {"skipped": "The endpoint is disabled."} for job in jobs if job.result)
    # The retries are skipped too, and new events are not queued for it.
    assert _deliver(app, db, clock.now + timedelta(days=1)) == n - 1
    assert len(receiver.received) == n
    _notify(db, approver.organization_id, 1)
    with db.session(read_only=True) as session:
        assert len(session.scalars(select(Job).where(Job.kind == webhooks.JOB_KIND)).all()) == len(
            jobs
        )
    # The broker disabled it, on the record.
    audit = client.get(f"/v1/audit-events?object_id={endpoint_id}", headers=admin.headers).json
    disabled = [e for e in audit["items"] if e["action"] == "webhook.disabled"]
    assert len(disabled) == 1 and disabled[0]["actor_client_id"] is None
    assert disabled[0]["before"]["active"] is True and disabled[0]["after"]["active"] is False

    # Others cannot enable it; its owner can.
    stranger = make_user("agency", ["approver"])
    problem(client.post(f"{path}/enable", headers=stranger.headers), 404, "not_found")
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    problem(client.post(f"{path}/enable", headers=buyer.headers), 403, "forbidden")
    enabled = client.post(f"{path}/enable", headers=approver.headers)
    assert enabled.status_code == 200, enabled.get_data(as_text=True)
    assert (enabled.json["state"], enabled.json["consecutive_failures"]) == ("active", 0)
    assert enabled.json["disabled_reason"] is None and enabled.json["disabled_at"] is None
    assert enabled.json["last_error"] == "The endpoint answered 500."  # history stays
    again = client.post(f"{path}/enable", headers=approver.headers)  # nothing more to do
    assert again.status_code == 200 and again.json == enabled.json
    audit = client.get(f"/v1/audit-events?object_id={endpoint_id}", headers=admin.headers).json
    enabling = [e for e in audit["items"] if e["action"] == "webhook.enabled"]
    assert len(enabling) == 1 and enabling[0]["actor_client_id"] == approver.client_id

    # New events are delivered again (the receiver now answers 200).
    receiver.answers.clear()
    _notify(db, approver.organization_id, 1)
    assert _deliver(app, db, clock.now + timedelta(days=2)) == 1
    assert len(receiver.received) == n + 1
    body = client.get(path, headers=approver.headers).json
    assert (body["state"], body["consecutive_failures"]) == ("active", 0)
    assert body["last_delivered_at"] is not None


def test_a_success_resets_the_count_of_failures(
    app: Flask, client: FlaskClient, db: Database, make_user: MakeUser, clock: Clock
) -> None:
    n = webhooks.DISABLE_AFTER_FAILURES
    receiver = Receiver([500] * (n - 1) + [200] + [500] * (n - 1)).start()
    try:
        approver = make_user("agency", ["approver"])
        endpoint_id = _local_endpoint(app, db, approver.organization_id, f"{receiver.url}/x")
        _notify(db, approver.organization_id, 2 * n - 1)
        assert _deliver(app, db, clock.now) == 2 * n - 1
    finally:
        receiver.close()
    body = client.get(f"/v1/webhooks/{endpoint_id}", headers=approver.headers).json
    assert (body["state"], body["consecutive_failures"]) == ("active", n - 1)


def test_disabling_by_hand_pauses_deliveries(
    app: Flask, client: FlaskClient, db: Database, make_user: MakeUser, clock: Clock
) -> None:
    approver = make_user("agency", ["approver"])
    endpoint_id = _register_directly(
        app, db, approver.organization_id, "https://paused.example.invalid/"
    )
    response = client.post(f"/v1/webhooks/{endpoint_id}/disable", headers=approver.headers)
    assert response.status_code == 200
    assert response.json["state"] == "disabled"
    assert response.json["disabled_reason"] == f"Disabled by {approver.client_id}."
    with db.transaction() as session:
        assert (
            webhooks.notify(
                session, uuid.UUID(approver.organization_id), webhooks.ORDER_STATE_CHANGED, {}
            )
            == 0
        )
