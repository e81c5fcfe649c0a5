"""The hash-chained audit log.

Every state change made through the API writes an audit event in the same transaction as the
change, naming the actor, the request id and the object's before/after state (never a
secret). Events form a SHA-256 chain that `broker.services.audit.verify_chain` walks; any
edit, deletion or relinking is reported at the exact sequence number where it happened, and
concurrent writers extend the chain one at a time without forking it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import JSON, bindparam, func, select, text

from broker.auth.identity import Caller
from broker.db import Database
from broker.models import AuditChainHead, AuditEvent, Organization, OrganizationKind, Role
from broker.services import audit as audit_service
from broker.services import organizations
from broker.services.audit import GENESIS_HASH, HEAD_ID, ChainReport, verify_chain
from tests.conftest import ApiUser
from tests.helpers import run_concurrently


def _events(db: Database) -> list[AuditEvent]:
    with db.session(read_only=True) as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _events_for(db: Database, object_id: str) -> list[AuditEvent]:
    return [event for event in _events(db) if event.object_id == object_id]


def _verify(db: Database) -> ChainReport:
    with db.session(read_only=True) as session:
        return verify_chain(session)


def _head(db: Database) -> tuple[int, str]:
    with db.session(read_only=True) as session:
        head = session.get(AuditChainHead, HEAD_ID)
        assert head is not None
        return head.seq, head.hash


def _create_org(
    client: FlaskClient, user: ApiUser, name: str, kind: str = "agency", **headers: str
) -> Any:
    return client.post(
        "/v1/organizations",
        json={"name": name, "kind": kind},
        headers={**user.headers, **headers},
    )


def _execute(db: Database, sql: str, **params: Any) -> None:
    statement = text(sql)
    if "after" in params:
        statement = statement.bindparams(bindparam("after", type_=JSON))
    with db.engine.begin() as connection:
        result = connection.execute(statement, params)
        assert result.rowcount == 1, f"tampering statement matched {result.rowcount} rows"


# --- what an event records ---------------------------------------------------------------


def test_creating_an_organization_records_who_what_and_the_request_id(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    response = client.post(
        "/v1/organizations",
        json={"name": "Ville de Lyon", "kind": "agency"},
        headers={**admin.headers, "X-Request-Id": "req-create-lyon-42"},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.json
    assert response.headers["X-Request-Id"] == "req-create-lyon-42"

    events = _events_for(db, body["id"])
    assert [e.action for e in events] == ["organization.created"]
    event = events[0]
    assert event.object_type == "organization"
    assert event.actor_client_id == admin.client_id
    assert str(event.actor_organization_id) == admin.organization_id
    assert str(event.organization_id) == body["id"]
    assert event.request_id == "req-create-lyon-42"
    assert event.before is None
    # `after` is the organization as created: every field the API returned, plus its version.
    assert event.after == {**body, "version": 1}


def test_an_event_carries_the_generated_request_id_when_none_was_sent(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    response = _create_org(client, admin, "Ville de Brest")
    assert response.status_code == 201
    generated = response.headers["X-Request-Id"]
    assert generated
    [event] = _events_for(db, response.json["id"])
    assert event.request_id == generated


def test_audit_events_are_readable_by_the_admin_over_the_api(
    client: FlaskClient, admin: ApiUser
) -> None:
    created = _create_org(client, admin, "Ville de Nantes", **{"X-Request-Id": "nantes-1"})
    assert created.status_code == 201

    response = client.get(
        "/v1/audit-events",
        query_string={"object_type": "organization", "object_id": created.json["id"]},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    items = response.json["items"]
    assert len(items) == 1
    assert items[0]["action"] == "organization.created"
    assert items[0]["actor_client_id"] == admin.client_id
    assert items[0]["request_id"] == "nantes-1"
    assert items[0]["after"]["name"] == "Ville de Nantes"


def test_renaming_records_before_and_after(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    created = _create_org(client, admin, "Old Name")
    assert created.status_code == 201
    org_id = created.json["id"]

    response = client.patch(
        f"/v1/organizations/{org_id}",
        json={"name": "New Name"},
        headers={
            **admin.headers,
            "If-Match": created.headers["ETag"],
            "X-Request-Id": "rename-7",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)

    events = _events_for(db, org_id)
    assert [e.action for e in events] == ["organization.created", "organization.updated"]
    update = events[1]
    assert update.actor_client_id == admin.client_id
    assert update.request_id == "rename-7"
    assert update.before is not None and update.after is not None
    assert update.before["name"] == "Old Name"
    assert update.after["name"] == "New Name"
    assert update.before["id"] == update.after["id"] == org_id
    assert update.after["version"] == update.before["version"] + 1


def test_creating_a_client_never_records_its_secret(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    created = _create_org(client, admin, "Secretive Agency")
    assert created.status_code == 201
    org_id = created.json["id"]

    response = client.post(
        f"/v1/organizations/{org_id}/clients",
        json={"name": "ops", "roles": ["buyer", "approver"]},
        headers={**admin.headers, "X-Request-Id": "issue-client-1"},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    issued = response.json
    secret = issued["client_secret"]
    assert secret

    events = _events_for(db, issued["id"])
    assert [e.action for e in events] == ["api_client.created"]
    event = events[0]
    assert event.object_type == "api_client"
    assert event.actor_client_id == admin.client_id
    assert str(event.organization_id) == org_id
    assert event.request_id == "issue-client-1"
    assert event.after is not None
    assert event.after["client_id"] == issued["client_id"]
    assert sorted(event.after["roles"]) == ["approver", "buyer"]
    for snapshot in (event.before, event.after):
        if snapshot is None:
            continue
        assert "secret_hash" not in snapshot
        assert "secret" not in snapshot
        assert "client_secret" not in snapshot
        assert secret not in repr(snapshot)

    # Nor does the audit API leak it anywhere.
    listing = client.get(
        "/v1/audit-events", query_string={"object_id": issued["id"]}, headers=admin.headers
    )
    assert listing.status_code == 200
    assert listing.json["items"]
    assert secret not in listing.get_data(as_text=True)
    assert "secret_hash" not in listing.get_data(as_text=True)


def test_issuing_a_client_through_the_service_records_no_secret(
    db: Database, admin: ApiUser
) -> None:
    """The same guarantee one layer down (as used by the CLI and the demo seed)."""
    caller = Caller(
        client_id=admin.client_id,
        organization_id=uuid.UUID(admin.organization_id),
        organization_kind=OrganizationKind.CONSORTIUM,
        roles=frozenset({Role.ADMIN}),
    )
    with db.transaction() as session:
        organization = organizations.create_organization(
            session, caller, name="Service Agency", kind=OrganizationKind.AGENCY
        )
        issued = organizations.create_client(
            session, caller, organization.id, name="ops", roles=[Role.BUYER]
        )
        secret, secret_hash = issued.secret, issued.client.secret_hash
        client_uuid, client_id = str(issued.client.id), issued.client.client_id

    events = _events_for(db, client_uuid)
    assert [e.action for e in events] == ["api_client.created"]
    event = events[0]
    assert event.actor_client_id == admin.client_id
    assert event.after is not None and event.after["client_id"] == client_id
    for snapshot in (event.before, event.after):
        text_of_snapshot = repr(snapshot)
        assert "secret" not in text_of_snapshot
        assert secret not in text_of_snapshot
        assert secret_hash not in text_of_snapshot


# --- the chain -------------------------------------------------------------------------------


def test_events_are_chained_from_genesis_with_consecutive_seq(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    for name in ("Agency A", "Agency B", "Agency C"):
        assert _create_org(client, admin, name).status_code == 201

    events = _events(db)
    assert len(events) >= 5  # the admin's organization and client, then three organizations
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    assert len({e.hash for e in events}) == len(events)
    assert _head(db) == (events[-1].seq, events[-1].hash)
    report = _verify(db)
    assert report.ok, report
    assert report.events_checked == len(events)
    assert report.broken_at_seq is None


def test_verify_chain_on_an_empty_log_is_ok(db: Database) -> None:
    report = _verify(db)
    assert report.ok
    assert report.events_checked == 0


# --- same transaction as the change ---------------------------------------------------------


def test_a_request_that_fails_leaves_no_event(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    assert _create_org(client, admin, "Taken Name").status_code == 201
    before = _events(db)
    head_before = _head(db)

    duplicate = _create_org(client, admin, "Taken Name", **{"X-Request-Id": "dup-409"})
    assert duplicate.status_code == 409
    assert duplicate.json["code"] == "name_taken"
    assert [e.seq for e in _events(db)] == [e.seq for e in before]
    assert _head(db) == head_before

    org_id = _create_org(client, admin, "Agency For Roles").json["id"]
    before = _events(db)
    head_before = _head(db)
    refused = client.post(
        f"/v1/organizations/{org_id}/clients",
        json={"name": "bad", "roles": ["admin"]},
        headers={**admin.headers, "X-Request-Id": "refused-422"},
    )
    assert refused.status_code == 422

    after = _events(db)
    assert [e.seq for e in after] == [e.seq for e in before]
    assert _head(db) == head_before
    assert not [e for e in after if e.request_id in ("dup-409", "refused-422")]
    assert _verify(db).ok


def test_a_rolled_back_change_takes_its_event_with_it(db: Database) -> None:
    """The event is written by the change's own transaction, not committed on its own."""

    class Abort(Exception):
        pass

    head_before = _head(db)
    with pytest.raises(Abort), db.transaction() as session:
        organizations.create_organization(
            session, None, name="Never Committed", kind=OrganizationKind.AGENCY
        )
        raise Abort

    with db.session(read_only=True) as session:
        assert session.scalar(
            select(Organization).where(Organization.name == "Never Committed")
        ) is None
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == head_before[0]
    assert _head(db) == head_before

    # The chain continues from where it was: the next event takes the very next seq.
    with db.transaction() as session:
        organizations.create_organization(
            session, None, name="Committed", kind=OrganizationKind.AGENCY
        )
    events = _events(db)
    assert events[-1].seq == head_before[0] + 1
    assert events[-1].prev_hash == head_before[1]
    assert _verify(db).ok


# --- tampering --------------------------------------------------------------------------------


@pytest.fixture
def chain(client: FlaskClient, admin: ApiUser, db: Database) -> list[AuditEvent]:
    """An intact chain of seven events (admin org + client, then five organizations)."""
    for index in range(5):
        assert _create_org(client, admin, f"Chained Agency {index}").status_code == 201
    events = _events(db)
    assert [e.seq for e in events] == list(range(1, 8))
    report = _verify(db)
    assert report.ok and report.events_checked == 7, report
    return events


def test_editing_an_events_after_is_detected_at_its_seq(
    db: Database, chain: list[AuditEvent]
) -> None:
    target = chain[3]
    assert target.after is not None
    forged = {**target.after, "name": "Forged Agency"}
    _execute(db, "UPDATE audit_events SET after = :after WHERE seq = :seq", after=forged, seq=4)

    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 4
    assert report.events_checked == 3


def test_editing_an_events_action_is_detected_at_its_seq(
    db: Database, chain: list[AuditEvent]
) -> None:
    _execute(
        db, "UPDATE audit_events SET action = 'organization.deleted' WHERE seq = :seq", seq=5
    )
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 5


def test_editing_the_first_event_is_detected(db: Database, chain: list[AuditEvent]) -> None:
    _execute(db, "UPDATE audit_events SET actor_client_id = 'intruder' WHERE seq = :seq", seq=1)
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 1
    assert report.events_checked == 0


def test_deleting_a_middle_event_is_detected_at_its_seq(
    db: Database, chain: list[AuditEvent]
) -> None:
    _execute(db, "DELETE FROM audit_events WHERE seq = :seq", seq=3)
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 3


def test_deleting_the_last_event_is_detected(db: Database, chain: list[AuditEvent]) -> None:
    _execute(db, "DELETE FROM audit_events WHERE seq = :seq", seq=7)
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 7


def test_relinking_prev_hash_is_detected_at_its_seq(
    db: Database, chain: list[AuditEvent]
) -> None:
    _execute(
        db,
        "UPDATE audit_events SET prev_hash = :prev WHERE seq = :seq",
        prev=chain[0].hash,
        seq=6,
    )
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 6


def test_rewriting_an_event_with_a_recomputed_hash_breaks_the_next_link(
    db: Database, chain: list[AuditEvent]
) -> None:
    """A forger who also recomputes the edited event's own hash is caught at the next event."""
    with db.session(read_only=True) as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.seq == 2)).one()
        session.expunge(event)
    event.action = "organization.forged"
    forged_hash = audit_service._event_hash(event)
    assert forged_hash != chain[1].hash
    _execute(
        db,
        "UPDATE audit_events SET action = :action, hash = :forged WHERE seq = :seq",
        action="organization.forged",
        forged=forged_hash,
        seq=2,
    )
    report = _verify(db)
    assert not report.ok
    assert report.broken_at_seq == 3
    assert report.events_checked == 2


# --- concurrency ------------------------------------------------------------------------------


def test_concurrent_audited_writes_do_not_fork_the_chain(
    app: Flask, admin: ApiUser, db: Database
) -> None:
    threads_count = 10
    names = [f"Concurrent Agency {i} {uuid.uuid4().hex[:6]}" for i in range(threads_count)]

    def create(index: int) -> int:
        response = _create_org(
            app.test_client(), admin, names[index], **{"X-Request-Id": f"concurrent-{index}"}
        )
        return response.status_code

    assert run_concurrently(threads_count, create) == [201] * threads_count

    events = _events(db)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert len(set(seqs)) == len(seqs)
    assert len({e.prev_hash for e in events}) == len(events), "two events share a parent"
    created = [e for e in events if (e.request_id or "").startswith("concurrent-")]
    assert sorted(e.request_id or "" for e in created) == sorted(
        f"concurrent-{i}" for i in range(threads_count)
    )
    assert sorted(e.after["name"] for e in created if e.after) == sorted(names)
    assert _head(db) == (events[-1].seq, events[-1].hash)
    report = _verify(db)
    assert report.ok, report
    assert report.events_checked == len(events)
