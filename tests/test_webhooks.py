"""Agency webhooks: registered by approvers, signed, retried, and never a way into our network.

Done when: an approver registers an https endpoint and gets its signing secret once (never in
a later read, listing or the audit log; stored only encrypted, bound to the endpoint); URLs
that are not https or that resolve to loopback, private or link-local addresses are 422 on
`url`; other agencies' endpoints are 404 and buyers are 403. `notify` queues one delivery
job per active, subscribed endpoint of the organization, in the caller's transaction, with
the event frozen there. A delivery POSTs exactly the frozen event, signed so that
`verify_signature` accepts it and rejects a changed body or an old timestamp; any answer but
2xx (a redirect included, which is not followed), a timeout or a refused connection is a
failed attempt retried later; an endpoint whose name now resolves to 127.0.0.1 makes the job
dead without sending a byte.

Names are resolved through a fake `socket.getaddrinfo` (names under `.example.test`), as in
tests/test_endpoint_safety.py. Receivers are local HTTP servers on 127.0.0.1; jobs run
in-process with `run_pending` and a fixed clock; deliveries to the local receivers use the
app's configuration with `PROVIDER_ALLOW_PRIVATE_ENDPOINTS` (what the tests' fake clouds use).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from broker.auth.identity import Caller
from broker.db import Database
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, run_pending
from broker.models import (
    AuditEvent,
    Job,
    JobState,
    OrganizationKind,
    Role,
    WebhookEndpoint,
)
from broker.models.base import use_clock
from broker.services import webhooks
from broker.services.credentials import CredentialsUnreadable, Keyring
from providers.http import HttpPolicy
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, fake_getaddrinfo, problem

PUBLIC_IP = "145.239.0.10"
HOOK_URL = "https://hooks.example.test/broker"

# Fake DNS: name → the addresses it resolves to.
FAKE_DNS: dict[str, list[str]] = {
    "hooks.example.test": [PUBLIC_IP],
    "other-hooks.example.test": [PUBLIC_IP],
    "loopback.example.test": ["127.0.0.1"],
    "private.example.test": ["10.0.0.5"],
    "metadata.example.test": ["169.254.169.254"],
    "v6-loopback.example.test": ["::1"],
    "half-public.example.test": [PUBLIC_IP, "192.168.1.10"],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(FAKE_DNS))
    names = set(FAKE_DNS)
    yield FAKE_DNS
    for name in set(FAKE_DNS) - names:
        del FAKE_DNS[name]


# --- users and helpers ---------------------------------------------------------------------


@dataclass
class Agency:
    approver: ApiUser
    buyer: ApiUser

    @property
    def id(self) -> str:
        return self.approver.organization_id


def _agency(make_user: MakeUser) -> Agency:
    approver = make_user("agency", ["approver"])
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    return Agency(approver, buyer)


@pytest.fixture
def agency(make_user: MakeUser) -> Agency:
    return _agency(make_user)


@pytest.fixture
def other_agency(make_user: MakeUser) -> Agency:
    return _agency(make_user)


def _register(client: FlaskClient, user: ApiUser, url: str = HOOK_URL, **body: Any) -> Any:
    return client.post("/v1/webhooks", json={"url": url, **body}, headers=user.headers)


def _created(client: FlaskClient, user: ApiUser, **body: Any) -> dict[str, Any]:
    response = _register(client, user, **body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


def _approver_caller(organization_id: str) -> Caller:
    return Caller(
        client_id="test-approver",
        organization_id=uuid.UUID(organization_id),
        organization_kind=OrganizationKind.AGENCY,
        roles=frozenset({Role.APPROVER}),
    )


def _keyring(app: Flask) -> Keyring:
    keyring: Keyring = app.extensions["broker.providers"].keyring
    return keyring


def _endpoint_row(db: Database, endpoint_id: str | uuid.UUID) -> WebhookEndpoint | None:
    with db.session(read_only=True) as session:
        return session.get(WebhookEndpoint, uuid.UUID(str(endpoint_id)))


def _jobs(db: Database) -> list[Job]:
    with db.session(read_only=True) as session:
        statement = select(Job).where(Job.kind == webhooks.JOB_KIND).order_by(Job.created_at)
        return list(session.scalars(statement))


def _job(db: Database, job_id: uuid.UUID) -> Job:
    with db.session(read_only=True) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


# --- registration through the API -------------------------------------------------------------


def test_approver_registers_an_endpoint_and_sees_its_secret_once(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, agency: Agency
) -> None:
    response = _register(client, agency.approver, events=[webhooks.ORDER_STATE_CHANGED])
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.json
    assert set(body) == {
        "id",
        "organization_id",
        "url",
        "events",
        "active",
        "state",
        "consecutive_failures",
        "last_error",
        "last_failure_at",
        "last_delivered_at",
        "disabled_at",
        "disabled_reason",
        "created_at",
        "secret",
    }
    assert body["url"] == HOOK_URL
    assert body["events"] == ["order.state_changed"]
    assert (body["active"], body["state"], body["consecutive_failures"]) == (True, "active", 0)
    for never_yet in ("last_error", "last_failure_at", "last_delivered_at", "disabled_at"):
        assert body[never_yet] is None
    assert body["disabled_reason"] is None
    assert body["organization_id"] == agency.id
    assert body["created_at"].endswith("Z")
    assert response.headers["Location"].endswith(f"/v1/webhooks/{body['id']}")
    assert "no-store" in response.headers["Cache-Control"]
    secret = body["secret"]
    assert len(secret) >= 43  # 32 random bytes, base64url
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

    # Never again: not in a read, a listing (of the agency or the admin), or the audit log.
    read = client.get(f"/v1/webhooks/{body['id']}", headers=agency.approver.headers)
    assert read.status_code == 200
    assert read.json == {k: v for k, v in body.items() if k != "secret"}
    listed = all_pages(client, agency.approver, "/v1/webhooks")
    assert [item["id"] for item in listed] == [body["id"]]
    assert "secret" not in listed[0]
    audit_page = client.get(f"/v1/audit-events?object_id={body['id']}", headers=admin.headers)
    assert audit_page.status_code == 200
    events = audit_page.json["items"]
    assert [e["action"] for e in events] == ["webhook.created"]
    assert events[0]["actor_client_id"] == agency.approver.client_id
    assert events[0]["after"]["url"] == HOOK_URL
    assert "secret_ciphertext" not in events[0]["after"]
    for page in (read, client.get("/v1/webhooks", headers=admin.headers), audit_page):
        assert secret not in page.get_data(as_text=True)

    # Stored encrypted (not the secret, not containing it), bound to this endpoint.
    row = _endpoint_row(db, body["id"])
    assert row is not None
    assert secret not in row.secret_ciphertext
    with db.session(read_only=True) as session:
        for event in session.scalars(select(AuditEvent)):
            dumped = json.dumps([event.before, event.after])
            assert secret not in dumped
            assert row.secret_ciphertext not in dumped
    keyring = _keyring(app)
    assert keyring.decrypt(row.id, row.secret_ciphertext) == {"secret": secret}
    with pytest.raises(CredentialsUnreadable):
        keyring.decrypt(uuid.uuid4(), row.secret_ciphertext)


def test_each_endpoint_gets_its_own_secret_and_no_events_means_all(
    client: FlaskClient, agency: Agency
) -> None:
    first = _created(client, agency.approver)
    second = _created(
        client,
        agency.approver,
        url="https://other-hooks.example.test/in",
        events=[
            webhooks.RESOURCE_STATE_CHANGED,
            webhooks.ORDER_STATE_CHANGED,
            webhooks.RESOURCE_STATE_CHANGED,
        ],
    )
    assert first["secret"] != second["secret"]
    assert first["events"] == []
    assert second["events"] == ["order.state_changed", "resource.state_changed"]


UNSAFE_URLS = [
    "http://hooks.example.test/broker",  # public, but not https
    "ftp://hooks.example.test/broker",
    "https://127.0.0.1/hook",
    "https://10.0.0.5/hook",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/hook",
    "https://localhost/hook",
    "https://user:pw@hooks.example.test/hook",
    "https://loopback.example.test/hook",
    "https://private.example.test/hook",
    "https://metadata.example.test/latest/meta-data/",
    "https://v6-loopback.example.test/hook",
    "https://half-public.example.test/hook",
    "https://hooks.example.test:70000/hook",
    "not a url",
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_unsafe_urls_are_refused_on_url(
    client: FlaskClient, db: Database, agency: Agency, url: str
) -> None:
    body = problem(_register(client, agency.approver, url=url), 422, "validation_failed")
    assert list(body["errors"]) == ["url"], body
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0


def test_the_same_names_pass_when_they_resolve_to_public_addresses(
    client: FlaskClient, agency: Agency, fake_dns: dict[str, list[str]]
) -> None:
    # The refusals above come from the addresses, not from the names' shape.
    fake_dns["loopback.example.test"] = [PUBLIC_IP]
    try:
        _created(client, agency.approver, url="https://loopback.example.test/hook")
    finally:
        fake_dns["loopback.example.test"] = ["127.0.0.1"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": HOOK_URL, "events": ["order.created"]},
        {"url": HOOK_URL, "events": "order.state_changed"},
        {"url": HOOK_URL, "secret": "mine"},
        {"events": []},
    ],
)
def test_invalid_bodies_are_422(client: FlaskClient, agency: Agency, body: dict) -> None:
    response = client.post("/v1/webhooks", json=body, headers=agency.approver.headers)
    problem(response, 422)


def test_buyers_cannot_manage_endpoints(client: FlaskClient, agency: Agency) -> None:
    made = _created(client, agency.approver)
    buyer = agency.buyer
    problem(_register(client, buyer), 403, "forbidden")
    problem(client.get("/v1/webhooks", headers=buyer.headers), 403, "forbidden")
    problem(client.get(f"/v1/webhooks/{made['id']}", headers=buyer.headers), 403, "forbidden")
    problem(client.delete(f"/v1/webhooks/{made['id']}", headers=buyer.headers), 403, "forbidden")


def test_other_agencies_endpoints_are_404(
    client: FlaskClient, agency: Agency, other_agency: Agency
) -> None:
    made = _created(client, agency.approver)
    stranger = other_agency.approver
    unknown = problem(
        client.get(f"/v1/webhooks/{uuid.uuid4()}", headers=stranger.headers), 404, "not_found"
    )
    foreign = problem(
        client.get(f"/v1/webhooks/{made['id']}", headers=stranger.headers), 404, "not_found"
    )
    assert foreign["detail"] == unknown["detail"]
    problem(client.delete(f"/v1/webhooks/{made['id']}", headers=stranger.headers), 404)
    assert all_pages(client, stranger, "/v1/webhooks") == []
    filtered = f"/v1/webhooks?organization_id={agency.id}"
    assert all_pages(client, stranger, filtered) == []
    # Nor can an approver register an endpoint for another agency.
    problem(_register(client, stranger, organization_id=agency.id), 404, "not_found")
    assert [item["id"] for item in all_pages(client, agency.approver, "/v1/webhooks")] == [
        made["id"]
    ]


def test_admins_manage_any_agencys_endpoints(
    client: FlaskClient, admin: ApiUser, agency: Agency, other_agency: Agency
) -> None:
    mine = _created(client, agency.approver)
    made = _created(client, admin, organization_id=agency.id)
    assert made["organization_id"] == agency.id
    theirs = _created(client, other_agency.approver)
    listed = [item["id"] for item in all_pages(client, agency.approver, "/v1/webhooks")]
    assert sorted(listed) == sorted([mine["id"], made["id"]])
    everything = [item["id"] for item in all_pages(client, admin, "/v1/webhooks")]
    assert sorted(everything) == sorted([mine["id"], made["id"], theirs["id"]])
    filtered = all_pages(client, admin, f"/v1/webhooks?organization_id={other_agency.id}")
    assert [item["id"] for item in filtered] == [theirs["id"]]
    assert client.get(f"/v1/webhooks/{theirs['id']}", headers=admin.headers).status_code == 200
    problem(_register(client, admin, organization_id=str(uuid.uuid4())), 404, "not_found")
    deleted = client.delete(f"/v1/webhooks/{theirs['id']}", headers=admin.headers)
    assert deleted.status_code == 204


def test_listing_pages_with_a_cursor(client: FlaskClient, agency: Agency) -> None:
    made = [_created(client, agency.approver)["id"] for _ in range(3)]
    first = client.get("/v1/webhooks?limit=2", headers=agency.approver.headers)
    assert first.status_code == 200
    assert len(first.json["items"]) == 2
    assert first.json["next_cursor"]
    listed = [item["id"] for item in all_pages(client, agency.approver, "/v1/webhooks", limit=2)]
    assert sorted(listed) == sorted(made)
    assert len(listed) == 3


def test_delete_then_404_and_audited_without_the_secret(
    client: FlaskClient, db: Database, admin: ApiUser, agency: Agency
) -> None:
    made = _created(client, agency.approver)
    path = f"/v1/webhooks/{made['id']}"
    response = client.delete(path, headers=agency.approver.headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    problem(client.get(path, headers=agency.approver.headers), 404, "not_found")
    problem(client.delete(path, headers=agency.approver.headers), 404, "not_found")
    assert all_pages(client, agency.approver, "/v1/webhooks") == []
    assert _endpoint_row(db, made["id"]) is None
    audit_page = client.get(f"/v1/audit-events?object_id={made['id']}", headers=admin.headers)
    events = audit_page.json["items"]
    assert [e["action"] for e in events] == ["webhook.created", "webhook.deleted"]
    assert events[1]["before"]["url"] == HOOK_URL
    assert "secret_ciphertext" not in events[1]["before"]
    assert made["secret"] not in audit_page.get_data(as_text=True)


# --- notify: one job per matching endpoint, in the caller's transaction ----------------------


def _endpoint(
    app: Flask,
    db: Database,
    organization_id: str,
    url: str,
    events: list[str] | None = None,
    *,
    active: bool = True,
) -> tuple[uuid.UUID, str]:
    """An endpoint registered through the service (the API only takes public https URLs)."""
    with db.transaction() as session:
        endpoint, secret = webhooks.register(
            session,
            _approver_caller(organization_id),
            url,
            events or [],
            _keyring(app),
            HttpPolicy(allow_private=True),
        )
        endpoint.active = active
        return endpoint.id, secret


def _notify(
    db: Database, organization_id: str, event_type: str, data: dict[str, Any], **kw: Any
) -> int:
    with db.transaction() as session:
        return webhooks.notify(session, uuid.UUID(organization_id), event_type, data, **kw)


def test_notify_queues_one_job_per_active_subscribed_endpoint(
    app: Flask, db: Database, agency: Agency, other_agency: Agency
) -> None:
    everything, _ = _endpoint(app, db, agency.id, HOOK_URL)
    orders, _ = _endpoint(app, db, agency.id, HOOK_URL, [webhooks.ORDER_STATE_CHANGED])
    resources, _ = _endpoint(app, db, agency.id, HOOK_URL, [webhooks.RESOURCE_STATE_CHANGED])
    _endpoint(app, db, agency.id, HOOK_URL, active=False)
    _endpoint(app, db, other_agency.id, HOOK_URL)

    order_id = uuid.uuid4()
    occurred = datetime(2026, 11, 22, 13, 37, 0, tzinfo=UTC)
    data = {"order_id": order_id, "from": "pending_approval", "to": "approved"}
    queued = _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, data, occurred_at=occurred)
    assert queued == 2
    jobs = _jobs(db)
    assert len(jobs) == 2
    assert {job.payload["endpoint_id"] for job in jobs} == {str(everything), str(orders)}
    events = [job.payload["event"] for job in jobs]
    assert events[0] == events[1]  # one event, delivered to each endpoint
    event = events[0]
    assert set(event) == {"id", "type", "occurred_at", "data"}
    uuid.UUID(event["id"])
    assert event["type"] == "order.state_changed"
    assert event["occurred_at"] == "2026-11-22T13:37:00Z"
    assert event["data"] == {
        "order_id": str(order_id),
        "from": "pending_approval",
        "to": "approved",
    }
    for job in jobs:
        assert job.kind == "webhook.deliver"
        assert job.organization_id == uuid.UUID(agency.id)
        assert job.max_attempts == 10
        assert job.state is JobState.QUEUED

    assert _notify(db, agency.id, webhooks.RESOURCE_STATE_CHANGED, {"to": "active"}) == 2
    newest = _jobs(db)[2:]
    assert {job.payload["endpoint_id"] for job in newest} == {str(everything), str(resources)}
    assert newest[0].payload["event"]["occurred_at"].endswith("Z")

    # Nobody subscribed in an organization without endpoints.
    lonely = uuid.uuid4()
    with db.transaction() as session:
        assert webhooks.notify(session, lonely, webhooks.ORDER_STATE_CHANGED, {}) == 0
    assert len(_jobs(db)) == 4
    with db.transaction() as session, pytest.raises(ValueError, match="event type"):
        webhooks.notify(session, uuid.UUID(agency.id), "order.created", {})


def test_notify_queues_nothing_when_the_callers_transaction_rolls_back(
    app: Flask, db: Database, agency: Agency
) -> None:
    _endpoint(app, db, agency.id, HOOK_URL)
    with pytest.raises(RuntimeError), db.transaction() as session:
        assert webhooks.notify(session, uuid.UUID(agency.id), webhooks.ORDER_STATE_CHANGED, {})
        raise RuntimeError("the order change failed")
    assert _jobs(db) == []


# --- delivery ----------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server recording each connection and each POST it gets; it answers with
    `answers` in turn (then 200), each a status or a (status, headers) pair."""

    answers: list[Any] = field(default_factory=list)
    delay: float = 0.0
    connections: int = 0
    received: list[Received] = field(default_factory=list)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(Received(self.path, dict(self.headers), body))
                if receiver.delay:
                    time.sleep(receiver.delay)
                answer = receiver.answers.pop(0) if receiver.answers else 200
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                receiver.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(*answers: Any, delay: float = 0.0) -> Receiver:
        receiver = Receiver(list(answers), delay).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.close()


@pytest.fixture
def t0(app: Flask) -> Iterator[datetime]:
    """The broker's clock for the test, in its requests and in what it writes directly."""
    moment = datetime(2031, 5, 4, 9, 0, tzinfo=UTC)
    app.config["CLOCK"] = lambda: moment
    with use_clock(lambda: moment):
        yield moment


def _run(app: Flask, db: Database, now: datetime, *, strict: bool = False, **config: Any) -> int:
    """Run the jobs ready at `now`, with the local receivers allowed (unless `strict`)."""
    settings = {**app.config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": not strict, **config}
    return run_pending(JobContext(db, settings, now=lambda: now), HANDLERS)


def _header(received: Received, name: str) -> str:
    lowered = {key.lower(): value for key, value in received.headers.items()}
    return lowered[name.lower()]


ORDER_DATA = {
    "order_id": "0b0f3cde-56b6-4a38-9f5c-8d1e2f3a4b5c",
    "from": "pending_approval",
    "to": "approved",
    "estimated_monthly_cost": Decimal("58.94"),
    "currency": "EUR",
    "changed_at": datetime(2026, 11, 22, 13, 37, 1, 250000, tzinfo=UTC),
    "name": "déploiement ✓",
}


def test_a_delivery_carries_the_exact_event_signed(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = receivers()
    endpoint_id, secret = _endpoint(app, db, agency.id, f"{receiver.url}/hooks?source=broker")
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, ORDER_DATA) == 1
    (job,) = _jobs(db)
    event = job.payload["event"]

    assert _run(app, db, t0) == 1
    done = _job(db, job.id)
    assert done.state is JobState.SUCCEEDED, done.last_error
    assert done.result == {"status": 200}
    assert done.attempts == 1

    (got,) = receiver.received
    assert got.path == "/hooks?source=broker"
    document = json.loads(got.body)
    assert document == event
    assert document["type"] == "order.state_changed"
    assert document["data"] == {
        "order_id": "0b0f3cde-56b6-4a38-9f5c-8d1e2f3a4b5c",
        "from": "pending_approval",
        "to": "approved",
        "estimated_monthly_cost": "58.94",
        "currency": "EUR",
        "changed_at": "2026-11-22T13:37:01.250000Z",
        "name": "déploiement ✓",
    }
    assert _header(got, "Content-Type") == "application/json"
    assert _header(got, "Broker-Event") == "order.state_changed"
    assert _header(got, "Broker-Delivery") == event["id"]
    signature = _header(got, "Broker-Signature")
    timestamp = int(t0.timestamp())
    assert signature.startswith(f"t={timestamp},v1=")

    # The receiver's check: exactly these bytes, this secret, a recent timestamp.
    assert webhooks.verify_signature(secret, signature, got.body, now=t0)
    assert webhooks.verify_signature(secret, signature, got.body.decode(), now=t0)
    assert webhooks.verify_signature(secret, signature, got.body, now=t0 + timedelta(seconds=299))
    tampered = got.body.replace(b"approved", b"rejected")
    assert tampered != got.body
    assert not webhooks.verify_signature(secret, signature, tampered, now=t0)
    assert not webhooks.verify_signature(secret, signature, got.body + b" ", now=t0)
    assert not webhooks.verify_signature("another secret", signature, got.body, now=t0)
    old = t0 + timedelta(seconds=301)
    assert not webhooks.verify_signature(secret, signature, got.body, now=old)
    early = t0 - timedelta(seconds=301)
    assert not webhooks.verify_signature(secret, signature, got.body, now=early)
    assert webhooks.verify_signature(secret, signature, got.body, tolerance=600, now=old)
    # A signature moved to another timestamp does not verify either.
    moved = signature.replace(f"t={timestamp}", f"t={timestamp + 60}")
    assert not webhooks.verify_signature(secret, moved, got.body, now=t0)
    for malformed in ("", "v1=abc", f"t={timestamp}", "t=soon,v1=abc", None):
        assert not webhooks.verify_signature(secret, malformed, got.body, now=t0)

    assert secret not in caplog.text
    assert _endpoint_row(db, endpoint_id) is not None


def test_a_failed_answer_is_retried_later_and_then_succeeds(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers(500, 200)
    _, secret = _endpoint(app, db, agency.id, f"{receiver.url}/hooks")
    _notify(db, agency.id, webhooks.RESOURCE_STATE_CHANGED, {"to": "active"})
    (job,) = _jobs(db)

    assert _run(app, db, t0) == 1
    failed = _job(db, job.id)
    assert failed.state is JobState.FAILED
    assert failed.attempts == 1
    assert failed.last_error is not None
    assert "500" in failed.last_error
    assert secret not in failed.last_error
    assert failed.run_after > t0
    assert len(receiver.received) == 1

    # Not before its backoff is over.
    assert _run(app, db, failed.run_after - timedelta(milliseconds=1)) == 0
    assert _run(app, db, failed.run_after) == 1
    done = _job(db, job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"status": 200}
    assert done.attempts == 2

    first, second = receiver.received
    assert first.body == second.body  # the same event, byte for byte
    assert _header(first, "Broker-Delivery") == _header(second, "Broker-Delivery")
    assert webhooks.verify_signature(
        secret, _header(second, "Broker-Signature"), second.body, now=failed.run_after
    )


def test_a_redirect_is_not_followed_and_counts_as_a_failure(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    target = receivers()
    origin = receivers((302, {"Location": f"{target.url}/stolen"}))
    _endpoint(app, db, agency.id, f"{origin.url}/hooks")
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {"to": "approved"})
    (job,) = _jobs(db)

    assert _run(app, db, t0) == 1
    failed = _job(db, job.id)
    assert failed.state is JobState.FAILED
    assert failed.last_error is not None and "302" in failed.last_error
    assert len(origin.received) == 1
    assert target.received == []
    assert target.connections == 0


@pytest.mark.parametrize("status", [301, 400, 404, 410, 502])
def test_any_answer_but_2xx_is_a_failed_attempt(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
    status: int,
) -> None:
    receiver = receivers(status)
    _endpoint(app, db, agency.id, f"{receiver.url}/hooks")
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {})
    (job,) = _jobs(db)
    _run(app, db, t0)
    failed = _job(db, job.id)
    assert failed.state is JobState.FAILED
    assert str(status) in (failed.last_error or "")
    assert len(receiver.received) == 1


def test_a_throttled_answer_is_retried_when_the_receiver_asks(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers((429, {"Retry-After": "120"}))
    _endpoint(app, db, agency.id, f"{receiver.url}/hooks")
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {})
    (job,) = _jobs(db)
    _run(app, db, t0)
    failed = _job(db, job.id)
    assert failed.state is JobState.FAILED
    assert failed.run_after == t0 + timedelta(seconds=120)


def test_timeouts_and_refused_connections_are_failed_attempts(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    slow = receivers(delay=1.5)
    gone = receivers()
    gone.close()  # nothing listens on its port any more
    _endpoint(app, db, agency.id, f"{slow.url}/hooks")
    _endpoint(app, db, agency.id, f"{gone.url}/hooks")
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {})
    jobs = _jobs(db)
    assert len(jobs) == 2

    assert _run(app, db, t0, PROVIDER_TIMEOUT=0.3) == 2
    for job in jobs:
        failed = _job(db, job.id)
        assert failed.state is JobState.FAILED, failed.last_error
        assert failed.last_error is not None
        assert "127.0.0.1" not in failed.last_error  # no URL in the message
    errors = sorted(_job(db, job.id).last_error or "" for job in jobs)
    assert any("did not answer" in error for error in errors), errors
    assert any("could not be reached" in error for error in errors), errors
    assert len(slow.received) == 1


def test_an_endpoint_that_now_resolves_to_loopback_gets_nothing(
    app: Flask,
    client: FlaskClient,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    fake_dns: dict[str, list[str]],
    t0: datetime,
) -> None:
    receiver = receivers()
    name = f"rebind-{uuid.uuid4().hex[:8]}.example.test"
    fake_dns[name] = [PUBLIC_IP]  # public when the approver registers it
    made = _created(client, agency.approver, url=f"https://{name}:{receiver.port}/hooks")
    fake_dns[name] = ["127.0.0.1"]  # the local receiver when the delivery runs
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {"to": "approved"})
    (job,) = _jobs(db)
    assert job.payload["endpoint_id"] == made["id"]

    assert _run(app, db, t0, strict=True) == 1
    dead = _job(db, job.id)
    assert dead.state is JobState.DEAD
    assert dead.attempts == 1
    assert dead.last_error is not None and "127.0.0.1" in dead.last_error
    assert made["secret"] not in dead.last_error
    assert receiver.connections == 0
    assert receiver.received == []


def test_a_secret_copied_to_another_endpoint_does_not_sign_there(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers()
    first, _ = _endpoint(app, db, agency.id, f"{receiver.url}/first")
    second, _ = _endpoint(app, db, agency.id, f"{receiver.url}/second")
    with db.transaction() as session:
        source = session.get(WebhookEndpoint, first)
        target = session.get(WebhookEndpoint, second)
        assert source is not None and target is not None
        target.secret_ciphertext = source.secret_ciphertext
    _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {})
    _run(app, db, t0)
    states = {job.payload["endpoint_id"]: job.state for job in _jobs(db)}
    assert states == {str(first): JobState.SUCCEEDED, str(second): JobState.DEAD}
    assert [r.path for r in receiver.received] == ["/first"]


def test_deliveries_to_deleted_or_deactivated_endpoints_are_skipped(
    app: Flask,
    client: FlaskClient,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers()
    deleted, _ = _endpoint(app, db, agency.id, f"{receiver.url}/deleted")
    paused, _ = _endpoint(app, db, agency.id, f"{receiver.url}/paused")
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, {}) == 2
    response = client.delete(f"/v1/webhooks/{deleted}", headers=agency.approver.headers)
    assert response.status_code == 204
    with db.transaction() as session:
        row = session.get(WebhookEndpoint, paused)
        assert row is not None
        row.active = False

    assert _run(app, db, t0) == 2
    results = {job.payload["endpoint_id"]: (job.state, job.result) for job in _jobs(db)}
    assert results[str(deleted)][0] is JobState.SUCCEEDED
    assert "skipped" in (results[str(deleted)][1] or {})
    assert results[str(paused)][0] is JobState.SUCCEEDED
    assert "skipped" in (results[str(paused)][1] or {})
    assert receiver.received == []


def test_jobs_deliver_the_event_frozen_at_notify_time(
    app: Flask,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers()
    _endpoint(app, db, agency.id, f"{receiver.url}/hooks")
    data: dict[str, Any] = {"order_id": "o-1", "to": "approved", "tags": ["a"]}
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, data) == 1
    # The caller's objects change afterwards, and a later change is notified too.
    data["to"] = "provisioning"
    data["tags"].append("b")
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, data) == 1
    data["to"] = "completed"

    assert _run(app, db, t0) == 2
    delivered = sorted(
        (json.loads(r.body) for r in receiver.received), key=lambda e: e["data"]["to"]
    )
    assert [(e["data"]["to"], e["data"]["tags"]) for e in delivered] == [
        ("approved", ["a"]),
        ("provisioning", ["a", "b"]),
    ]
    assert delivered[0]["id"] != delivered[1]["id"]
    queued = {job.payload["event"]["id"]: job.payload["event"] for job in _jobs(db)}
    assert {e["id"]: e for e in delivered} == queued


def test_the_development_switch_lets_a_local_receiver_take_deliveries(
    app: Flask,
    client: FlaskClient,
    db: Database,
    agency: Agency,
    receivers: Callable[..., Receiver],
    t0: datetime,
) -> None:
    receiver = receivers()
    local = f"{receiver.url}/hooks"  # http on 127.0.0.1
    app.config["PROVIDER_ALLOW_PRIVATE_ENDPOINTS"] = False  # as in production
    # Off (the default): refused, saying what is expected.
    refused = problem(_register(client, agency.approver, local), 422, "validation_failed")
    assert "https URL with a public host name" in refused["errors"]["url"][0]

    app.config["WEBHOOKS_ALLOW_PRIVATE"] = True  # BROKER_ALLOW_PRIVATE_WEBHOOKS=true
    created = _created(client, agency.approver, url=local)
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, ORDER_DATA) == 1
    assert _run(app, db, t0, strict=True) == 1  # providers stay strict; webhooks may be local
    (got,) = receiver.received
    signature = _header(got, webhooks.SIGNATURE_HEADER)
    assert webhooks.verify_signature(created["secret"], signature, got.body, now=t0)

    # Switched off again, the queued delivery of a local endpoint is dead, unsent.
    app.config["WEBHOOKS_ALLOW_PRIVATE"] = False
    assert _notify(db, agency.id, webhooks.ORDER_STATE_CHANGED, ORDER_DATA) == 1
    assert _run(app, db, t0, strict=True) == 1
    assert len(receiver.received) == 1
    assert sorted(job.state.value for job in _jobs(db)) == ["dead", "succeeded"]
