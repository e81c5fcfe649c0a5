"""`Idempotency-Key` on `POST /v1/organizations` (optional there), end to end.

A retry with the same key and body replays the first response byte for byte and creates
nothing; the same key with another body is refused; keys are scoped per organization; failed
requests do not consume their key; concurrent duplicates wait for the first; an in-flight
key answers 409 until its lease runs out; expired keys are free again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from broker import create_app
from broker.db import Database
from broker.models import IdempotencyRecord, Organization
from broker.models.base import utcnow
from broker.services import idempotency
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, run_concurrently

PATH = "/v1/organizations"
PROBLEM = "application/problem+json"
REPLAYED = "Idempotent-Replayed"


def _body(name: str, kind: str = "agency") -> bytes:
    return json.dumps({"name": name, "kind": kind}).encode()


def _post(
    client: FlaskClient, user: ApiUser, body: bytes, key: str | None
) -> Any:
    headers = dict(user.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(PATH, data=body, content_type="application/json", headers=headers)


def _organizations_named(client: FlaskClient, admin: ApiUser, name: str) -> list[dict[str, Any]]:
    return [o for o in all_pages(client, admin, PATH) if o["name"] == name]


def _created_events_named(client: FlaskClient, admin: ApiUser, name: str) -> list[dict[str, Any]]:
    return [
        event
        for event in all_pages(client, admin, "/v1/audit-events?object_type=organization")
        if event["action"] == "organization.created" and event["after"]["name"] == name
    ]


def _count_named(db: Database, name: str) -> int:
    with db.transaction() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(Organization).where(Organization.name == name)
            )
            or 0
        )


def _records(db: Database, organization_id: str) -> list[IdempotencyRecord]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.organization_id == uuid.UUID(organization_id)
                )
            )
        )


def _assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.json
    assert body["code"] == code
    assert body["status"] == status
    return body


def test_replay_is_byte_for_byte_identical(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    key = str(uuid.uuid4())
    body = _body("Replay Agency")
    first = _post(client, admin, body, key)
    assert first.status_code == 201, first.get_data(as_text=True)
    assert REPLAYED not in first.headers
    created_id = first.json["id"]
    assert first.headers["Location"].endswith(f"{PATH}/{created_id}")

    for _ in range(2):
        replay = _post(client, admin, body, key)
        assert replay.status_code == 201
        assert replay.get_data() == first.get_data()
        assert replay.headers["Location"] == first.headers["Location"]
        assert replay.headers["ETag"] == first.headers["ETag"]
        assert replay.headers["Content-Type"] == first.headers["Content-Type"]
        assert replay.headers[REPLAYED] == "true"

    named = _organizations_named(client, admin, "Replay Agency")
    assert [o["id"] for o in named] == [created_id]
    events = _created_events_named(client, admin, "Replay Agency")
    assert [e["object_id"] for e in events] == [created_id]
    assert _count_named(db, "Replay Agency") == 1

    records = _records(db, admin.organization_id)
    assert [(r.key, r.state, r.response_status) for r in records] == [
        (key, idempotency.COMPLETED, 201)
    ]


def test_without_key_each_post_is_a_new_request(client: FlaskClient, admin: ApiUser) -> None:
    first = _post(client, admin, _body("Keyless"), None)
    assert first.status_code == 201
    assert REPLAYED not in first.headers
    second = _post(client, admin, _body("Keyless"), None)
    _assert_problem(second, 409, "name_taken")
    assert REPLAYED not in second.headers


def test_same_key_with_another_body_is_refused(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    key = "order-42"
    first = _post(client, admin, _body("First Body"), key)
    assert first.status_code == 201

    for other in (_body("Second Body"), _body("First Body", "provider")):
        response = _post(client, admin, other, key)
        _assert_problem(response, 422, "idempotency_key_reused")
        assert REPLAYED not in response.headers

    assert _count_named(db, "Second Body") == 0
    assert _organizations_named(client, admin, "Second Body") == []
    assert _created_events_named(client, admin, "Second Body") == []
    assert len(_organizations_named(client, admin, "First Body")) == 1

    # The original request still replays afterwards.
    replay = _post(client, admin, _body("First Body"), key)
    assert replay.status_code == 201
    assert replay.get_data() == first.get_data()


def test_keys_are_scoped_per_organization(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    other_admin = make_user("consortium", ["admin"])
    key = "shared-key"
    first = _post(client, admin, _body("Scoped One"), key)
    assert first.status_code == 201

    # Another organization's admin with the same key and another body: a fresh request.
    second = _post(client, other_admin, _body("Scoped Two"), key)
    assert second.status_code == 201, second.get_data(as_text=True)
    assert REPLAYED not in second.headers
    assert second.json["id"] != first.json["id"]
    assert second.json["name"] == "Scoped Two"

    assert len(_organizations_named(client, admin, "Scoped One")) == 1
    assert len(_organizations_named(client, admin, "Scoped Two")) == 1
    assert [r.key for r in _records(db, other_admin.organization_id)] == [key]
    assert [r.key for r in _records(db, admin.organization_id)] == [key]

    # Each organization replays its own response.
    assert _post(client, admin, _body("Scoped One"), key).get_data() == first.get_data()
    assert _post(client, other_admin, _body("Scoped Two"), key).get_data() == second.get_data()


def test_same_key_and_body_from_another_organization_is_not_a_replay(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    other_admin = make_user("consortium", ["admin"])
    key = "identical"
    first = _post(client, admin, _body("Identical"), key)
    assert first.status_code == 201
    second = _post(client, other_admin, _body("Identical"), key)
    _assert_problem(second, 409, "name_taken")
    assert REPLAYED not in second.headers


def test_conflict_does_not_consume_the_key(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    assert _post(client, admin, _body("Taken Name"), None).status_code == 201
    key = "retry-after-conflict"

    failed = _post(client, admin, _body("Taken Name"), key)
    _assert_problem(failed, 409, "name_taken")
    assert REPLAYED not in failed.headers
    assert _records(db, admin.organization_id) == []

    fixed = _post(client, admin, _body("Fresh Name"), key)
    assert fixed.status_code == 201, fixed.get_data(as_text=True)
    assert REPLAYED not in fixed.headers
    assert fixed.json["name"] == "Fresh Name"
    assert len(_organizations_named(client, admin, "Fresh Name")) == 1

    # Now the key is used: the failed body is another request.
    again = _post(client, admin, _body("Taken Name"), key)
    _assert_problem(again, 422, "idempotency_key_reused")


@pytest.mark.parametrize(
    "invalid",
    [
        b'{"name": "", "kind": "agency"}',
        b'{"name": "Valid", "kind": "nonsense"}',
        b'{"name": "Valid", "kind": "agency", "extra": 1}',
        b'{"name": "Valid"',
    ],
    ids=["empty-name", "bad-kind", "unknown-field", "malformed-json"],
)
def test_invalid_body_does_not_consume_the_key(
    client: FlaskClient, admin: ApiUser, db: Database, invalid: bytes
) -> None:
    key = "retry-after-validation"
    failed = _post(client, admin, invalid, key)
    assert failed.status_code in (400, 422), failed.get_data(as_text=True)
    assert failed.mimetype == PROBLEM
    assert REPLAYED not in failed.headers
    assert _records(db, admin.organization_id) == []
    assert _count_named(db, "Valid") == 0

    fixed = _post(client, admin, _body("Valid"), key)
    assert fixed.status_code == 201, fixed.get_data(as_text=True)
    assert REPLAYED not in fixed.headers
    replay = _post(client, admin, _body("Valid"), key)
    assert replay.headers[REPLAYED] == "true"
    assert replay.get_data() == fixed.get_data()
    assert _count_named(db, "Valid") == 1


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "", "   ", "tab\there", "bell\x07", "del\x7f"],
    ids=["256-chars", "empty", "blank", "tab", "bell", "delete"],
)
def test_invalid_keys_are_refused(
    client: FlaskClient, admin: ApiUser, db: Database, key: str
) -> None:
    response = _post(client, admin, _body("Bad Key Agency"), key)
    body = _assert_problem(response, 422, "validation_failed")
    assert "Idempotency-Key" in body["errors"]
    assert _count_named(db, "Bad Key Agency") == 0
    assert _records(db, admin.organization_id) == []


def test_key_of_255_chars_is_accepted(client: FlaskClient, admin: ApiUser, db: Database) -> None:
    key = "k" * 255
    first = _post(client, admin, _body("Long Key Agency"), key)
    assert first.status_code == 201, first.get_data(as_text=True)
    replay = _post(client, admin, _body("Long Key Agency"), key)
    assert replay.headers[REPLAYED] == "true"
    assert replay.get_data() == first.get_data()
    assert _count_named(db, "Long Key Agency") == 1


def test_concurrent_duplicates_create_one_organization(
    app: Flask, client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    threads_count = 20
    key = str(uuid.uuid4())
    body = _body("Concurrent Agency")

    def post(_index: int) -> tuple[int, bytes, dict[str, str]]:
        response = _post(app.test_client(), admin, body, key)
        return response.status_code, response.get_data(), dict(response.headers)

    done = run_concurrently(threads_count, post)

    statuses = [status for status, _, _ in done]
    assert statuses == [201] * threads_count, [
        (status, data[:200]) for status, data, _ in done if status != 201
    ]
    bodies = {data for _, data, _ in done}
    assert len(bodies) == 1
    originals = [headers for _, _, headers in done if REPLAYED not in headers]
    replays = [headers for _, _, headers in done if REPLAYED in headers]
    assert len(originals) == 1
    assert len(replays) == threads_count - 1
    assert all(h[REPLAYED] == "true" for h in replays)
    assert {h["Location"] for _, _, h in done} == {originals[0]["Location"]}
    assert {h["ETag"] for _, _, h in done} == {originals[0]["ETag"]}

    created_id = json.loads(bodies.pop())["id"]
    assert _count_named(db, "Concurrent Agency") == 1
    assert [o["id"] for o in _organizations_named(client, admin, "Concurrent Agency")] == [
        created_id
    ]
    assert [e["object_id"] for e in _created_events_named(client, admin, "Concurrent Agency")] == [
        created_id
    ]


@pytest.fixture
def impatient_app(app_config: dict[str, Any]) -> Iterator[Flask]:
    """An app whose duplicates do not wait for the first request at all."""
    application = create_app({**app_config, "IDEMPOTENCY_WAIT_SECONDS": 0.0})
    yield application
    application.extensions["broker.db"].dispose()


def _insert_record(
    db: Database,
    organization_id: str,
    key: str,
    fingerprint: str,
    *,
    state: str = idempotency.IN_PROGRESS,
    locked_until_in: timedelta | None = timedelta(minutes=2),
    expires_in: timedelta = timedelta(hours=24),
    response: idempotency.StoredResponse | None = None,
) -> uuid.UUID:
    now = utcnow()
    record_id = uuid.uuid4()
    with db.transaction() as session:
        session.add(
            IdempotencyRecord(
                id=record_id,
                organization_id=uuid.UUID(organization_id),
                key=key,
                request_hash=fingerprint,
                state=state,
                locked_until=None if locked_until_in is None else now + locked_until_in,
                expires_at=now + expires_in,
                response_status=response.status if response else None,
                response_headers=response.headers if response else None,
                response_body=response.body if response else None,
            )
        )
    return record_id


def test_in_flight_key_answers_409_with_retry_after(
    impatient_app: Flask, admin: ApiUser, db: Database
) -> None:
    client = impatient_app.test_client()
    key = "in-flight"
    body = _body("In Flight Agency")
    _insert_record(
        db, admin.organization_id, key, idempotency.request_fingerprint("POST", PATH, body)
    )

    response = _post(client, admin, body, key)
    _assert_problem(response, 409, "idempotency_in_flight")
    assert response.headers["Retry-After"].isdigit()
    assert REPLAYED not in response.headers
    assert _count_named(db, "In Flight Agency") == 0
    [record] = _records(db, admin.organization_id)
    assert record.state == idempotency.IN_PROGRESS

    # A different body under the in-flight key is still a misuse of the key.
    other = _post(client, admin, _body("Something Else"), key)
    _assert_problem(other, 422, "idempotency_key_reused")


def test_abandoned_claim_is_taken_over(
    impatient_app: Flask, admin: ApiUser, db: Database
) -> None:
    client = impatient_app.test_client()
    key = "abandoned"
    body = _body("Abandoned Agency")
    record_id = _insert_record(
        db,
        admin.organization_id,
        key,
        idempotency.request_fingerprint("POST", PATH, body),
        locked_until_in=-timedelta(seconds=1),
    )

    response = _post(client, admin, body, key)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert REPLAYED not in response.headers
    assert _count_named(db, "Abandoned Agency") == 1

    [record] = _records(db, admin.organization_id)
    assert record.id == record_id
    assert record.state == idempotency.COMPLETED
    assert record.locked_until is None
    assert record.response_body == response.get_data()

    replay = _post(client, admin, body, key)
    assert replay.status_code == 201
    assert replay.headers[REPLAYED] == "true"
    assert replay.get_data() == response.get_data()
    assert _count_named(db, "Abandoned Agency") == 1


@pytest.mark.parametrize("state", [idempotency.COMPLETED, idempotency.IN_PROGRESS])
def test_expired_key_does_not_block_a_new_request(
    impatient_app: Flask, admin: ApiUser, db: Database, state: str
) -> None:
    client = impatient_app.test_client()
    key = "expired"
    old_body = _body("Old Request")
    stored = idempotency.StoredResponse(
        201, {"Content-Type": "application/json"}, b'{"stale": true}'
    )
    completed = state == idempotency.COMPLETED
    _insert_record(
        db,
        admin.organization_id,
        key,
        idempotency.request_fingerprint("POST", PATH, old_body),
        state=state,
        locked_until_in=None if completed else timedelta(minutes=2),
        expires_in=-timedelta(seconds=1),
        response=stored if completed else None,
    )

    body = _body("New Request")
    response = _post(client, admin, body, key)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert REPLAYED not in response.headers
    assert response.json["name"] == "New Request"
    assert _count_named(db, "New Request") == 1

    [record] = _records(db, admin.organization_id)
    assert record.state == idempotency.COMPLETED
    assert record.request_hash == idempotency.request_fingerprint("POST", PATH, body)
    assert record.expires_at > utcnow() + timedelta(hours=23)
    assert record.response_body == response.get_data()

    # The key now belongs to the new request: the old body is a different request.
    old = _post(client, admin, old_body, key)
    _assert_problem(old, 422, "idempotency_key_reused")


def test_purge_expired_deletes_only_expired_rows(db: Database) -> None:
    organization_id = str(uuid.uuid4())
    fingerprint = idempotency.request_fingerprint("POST", PATH, b"{}")
    expired = {
        _insert_record(db, organization_id, "expired-1", fingerprint,
                       expires_in=-timedelta(hours=1)),
        _insert_record(db, organization_id, "expired-2", fingerprint,
                       state=idempotency.COMPLETED, locked_until_in=None,
                       expires_in=-timedelta(seconds=5)),
    }
    kept = {
        _insert_record(db, organization_id, "live-1", fingerprint,
                       expires_in=timedelta(hours=1)),
        _insert_record(db, organization_id, "live-2", fingerprint,
                       state=idempotency.COMPLETED, locked_until_in=None,
                       expires_in=timedelta(hours=23)),
        # An in-flight claim whose lease ran out is not expired: only `expires_at` counts.
        _insert_record(db, organization_id, "live-3", fingerprint,
                       locked_until_in=-timedelta(hours=1), expires_in=timedelta(minutes=1)),
    }

    with db.transaction() as session:
        deleted = idempotency.purge_expired(session)
    assert deleted == len(expired)
    assert {r.id for r in _records(db, organization_id)} == kept

    with db.transaction() as session:
        assert idempotency.purge_expired(session) == 0
    assert {r.id for r in _records(db, organization_id)} == kept

    # With an explicit `now` in the future, the rest expire too.
    with db.transaction() as session:
        deleted = idempotency.purge_expired(session, utcnow() + timedelta(days=2))
    assert deleted == len(kept)
    assert _records(db, organization_id) == []
