"""API client lifecycle: listing, revocation and secret rotation, over HTTP.

What an admin does after a leak, seen from both sides:

* the admin's side: `POST …/clients/{client_id}/revoke` and `…/rotate-secret` (admins only,
  another organization's client is a 404, a revoked client is a 409 `client_revoked`),
  the list showing `revoked_at` and never a secret, and every change audited under the
  admin's name;
* the client's side: a revoked client's token is refused from its very next request, and so
  is a token issued before a rotation; a rotated secret gets tokens, the old one does not;
* the token endpoint: an unknown client id, a wrong secret and a revoked client get the same
  answer, byte for byte, after the same hash check.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from broker.db import Database
from broker.models import ApiClient, AuditEvent, Organization
from tests.conftest import ApiUser, MakeUser, fetch_token
from tests.helpers import all_pages, problem, run_concurrently

TOKEN_URL = "/oauth/token"
# Headers that differ between any two responses whatever they answer (the request id, and
# the rate limiter's counters, which count per address, never per client id).
PER_REQUEST_HEADERS = {"X-Request-Id", "Date", "RateLimit-Remaining", "RateLimit-Reset"}


# --- helpers -------------------------------------------------------------------------------


def _clients_path(organization_id: str) -> str:
    return f"/v1/organizations/{organization_id}/clients"


def _revoke(client: FlaskClient, admin: ApiUser, user: ApiUser, ref: str | None = None) -> Any:
    path = f"{_clients_path(user.organization_id)}/{ref or user.client_id}/revoke"
    return client.post(path, headers=admin.headers)


def _rotate(client: FlaskClient, admin: ApiUser, user: ApiUser, ref: str | None = None) -> Any:
    path = f"{_clients_path(user.organization_id)}/{ref or user.client_id}/rotate-secret"
    return client.post(path, headers=admin.headers)


def _token_by_basic(client: FlaskClient, client_id: str, secret: str) -> TestResponse:
    return client.post(
        TOKEN_URL, data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )


def _token_by_post(client: FlaskClient, client_id: str, secret: str) -> TestResponse:
    return client.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )


def _answer(response: TestResponse) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Everything a caller sees in a response, but what changes with every request."""
    headers = sorted((k, v) for k, v in response.headers.items() if k not in PER_REQUEST_HEADERS)
    return response.status_code, response.get_data(), headers


def _get_own_org(client: FlaskClient, user: ApiUser, token: str | None = None) -> TestResponse:
    return client.get(
        f"/v1/organizations/{user.organization_id}",
        headers={"Authorization": f"Bearer {token or user.token}"},
    )


def _assert_token_refused(response: TestResponse) -> dict[str, Any]:
    """401 problem+json with a Bearer `invalid_token` challenge, like every other 401."""
    body = problem(response, 401, "invalid_token")
    challenge = response.headers.get("WWW-Authenticate", "")
    assert challenge.startswith('Bearer realm="broker"'), challenge
    assert 'error="invalid_token"' in challenge
    return body


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def _audit(client: FlaskClient, admin: ApiUser, object_id: str) -> list[dict[str, Any]]:
    return all_pages(
        client, admin, f"/v1/audit-events?object_type=api_client&object_id={object_id}"
    )


def _row(db: Database, client_id: str) -> ApiClient:
    with db.session(read_only=True) as session:
        row = session.scalars(select(ApiClient).where(ApiClient.client_id == client_id)).one()
        session.expunge(row)
        return row


@pytest.fixture
def second_admin(make_user: MakeUser, admin: ApiUser) -> ApiUser:
    """Another admin client of the consortium: one whose writes would succeed."""
    return make_user("consortium", ["admin"], organization_id=admin.organization_id)


# --- revocation: the client's side -----------------------------------------------------------


def test_a_revoked_clients_token_is_refused_on_its_next_request(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    assert _get_own_org(client, buyer).status_code == 200

    revoked = _revoke(client, admin, buyer)
    assert revoked.status_code == 200, revoked.get_data(as_text=True)
    assert revoked.json["client_id"] == buyer.client_id
    assert revoked.json["revoked_at"] is not None

    body = _assert_token_refused(_get_own_org(client, buyer))
    assert "revoked" in body["detail"]
    # Every later request too, not only the first.
    _assert_token_refused(client.get("/v1/organizations", headers=buyer.headers))


def test_a_revoked_clients_token_cannot_write(
    client: FlaskClient, db: Database, admin: ApiUser, second_admin: ApiUser
) -> None:
    made = client.post(
        "/v1/organizations", json={"name": "Before", "kind": "agency"}, headers=second_admin.headers
    )
    assert made.status_code == 201, made.get_data(as_text=True)

    assert _revoke(client, admin, second_admin).status_code == 200
    refused = client.post(
        "/v1/organizations", json={"name": "After", "kind": "agency"}, headers=second_admin.headers
    )
    _assert_token_refused(refused)
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).where(Organization.name == "After")) == 0
    names = {o["name"] for o in all_pages(client, admin, "/v1/organizations")}
    assert "Before" in names and "After" not in names


def test_a_revoked_client_is_told_401_before_403(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    """Its role does not matter any more: the token is what is refused."""
    assert _revoke(client, admin, buyer).status_code == 200
    _assert_token_refused(
        client.post(
            "/v1/organizations", json={"name": "X", "kind": "agency"}, headers=buyer.headers
        )
    )


def test_a_revoked_client_cannot_get_a_new_token(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    assert _revoke(client, admin, buyer).status_code == 200
    for request_token in (_token_by_basic, _token_by_post):
        response = request_token(client, buyer.client_id, buyer.client_secret)
        assert response.status_code == 401
        assert response.json["error"] == "invalid_client"
        assert "access_token" not in response.json


def test_revoking_leaves_the_organizations_other_clients_alone(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, buyer: ApiUser
) -> None:
    colleague = make_user("agency", ["approver"], organization_id=buyer.organization_id)
    assert _revoke(client, admin, buyer).status_code == 200
    assert _get_own_org(client, colleague).status_code == 200
    fetch_token(client, colleague.client_id, colleague.client_secret)


# --- rotation: the client's side -------------------------------------------------------------


def test_a_rotated_secret_gets_tokens_and_the_old_one_does_not(
    client: FlaskClient, db: Database, admin: ApiUser, buyer: ApiUser
) -> None:
    rotated = _rotate(client, admin, buyer)
    assert rotated.status_code == 200, rotated.get_data(as_text=True)
    assert rotated.headers["Cache-Control"] == "no-store"
    issued = rotated.json
    assert issued["client_id"] == buyer.client_id
    assert issued["organization_id"] == buyer.organization_id
    assert issued["roles"] == ["buyer"]
    assert issued["credential_version"] == 2
    new_secret = issued["client_secret"]
    assert new_secret and new_secret != buyer.client_secret

    # The new secret works, by both methods, and its token works.
    token = fetch_token(client, buyer.client_id, new_secret)
    assert _claims(token)["credential_version"] == 2
    assert _token_by_post(client, buyer.client_id, new_secret).status_code == 200
    assert _get_own_org(client, buyer, token).status_code == 200

    # The old one is answered exactly like a client id nobody ever had.
    for request_token in (_token_by_basic, _token_by_post):
        old = request_token(client, buyer.client_id, buyer.client_secret)
        unknown = request_token(client, "cb_" + uuid.uuid4().hex[:22], buyer.client_secret)
        assert old.status_code == 401
        assert _answer(old) == _answer(unknown)

    # Only the new secret's hash is stored.
    row = _row(db, buyer.client_id)
    assert new_secret not in row.secret_hash
    assert row.credential_version == 2
    assert row.rotated_at is not None
    assert row.revoked_at is None


def test_a_token_issued_before_a_rotation_is_refused(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    before = buyer.token
    assert _get_own_org(client, buyer, before).status_code == 200
    new_secret = _rotate(client, admin, buyer).json["client_secret"]
    after = fetch_token(client, buyer.client_id, new_secret)

    _assert_token_refused(_get_own_org(client, buyer, before))
    assert _get_own_org(client, buyer, after).status_code == 200

    # A second rotation retires the tokens of the first one in turn.
    newest = _rotate(client, admin, buyer).json
    assert newest["credential_version"] == 3
    _assert_token_refused(_get_own_org(client, buyer, after))
    token = fetch_token(client, buyer.client_id, newest["client_secret"])
    assert _get_own_org(client, buyer, token).status_code == 200


def test_rotating_then_revoking_refuses_every_token(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    new_secret = _rotate(client, admin, buyer).json["client_secret"]
    token = fetch_token(client, buyer.client_id, new_secret)
    assert _revoke(client, admin, buyer).status_code == 200
    _assert_token_refused(_get_own_org(client, buyer, token))
    assert _token_by_basic(client, buyer.client_id, new_secret).status_code == 401


# --- the token endpoint: one answer for every failure ------------------------------------------


@pytest.mark.parametrize("request_token", [_token_by_basic, _token_by_post], ids=["basic", "post"])
def test_unknown_client_wrong_secret_and_revoked_client_get_identical_answers(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, request_token: Any
) -> None:
    known = make_user("agency", ["buyer"])
    revoked = make_user("agency", ["buyer"])
    assert _revoke(client, admin, revoked).status_code == 200

    answers = {
        "unknown client id": _answer(
            request_token(client, "cb_" + uuid.uuid4().hex[:22], known.client_secret)
        ),
        "wrong secret": _answer(request_token(client, known.client_id, known.client_secret + "x")),
        "another client's secret": _answer(
            request_token(client, known.client_id, admin.client_secret)
        ),
        "revoked client, right secret": _answer(
            request_token(client, revoked.client_id, revoked.client_secret)
        ),
        "malformed client id": _answer(request_token(client, "x" * 300, known.client_secret)),
    }
    status, body, headers = answers["unknown client id"]
    assert status == 401
    assert json.loads(body) == {
        "error": "invalid_client",
        "error_description": "Client authentication failed.",
    }
    assert ("Cache-Control", "no-store") in headers
    assert any(name == "WWW-Authenticate" and value.startswith("Basic ") for name, value in headers)
    for name, answer in answers.items():
        assert answer == answers["unknown client id"], name


def test_missing_credentials_get_the_same_answer_too(client: FlaskClient, buyer: ApiUser) -> None:
    missing = client.post(TOKEN_URL, data={"grant_type": "client_credentials"})
    wrong = _token_by_basic(client, buyer.client_id, "wrong")
    assert _answer(missing) == _answer(wrong)


def test_every_failure_costs_one_hash_check(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timing must not tell an unknown id from a known one: each failure hashes the secret
    offered once, against a real client's hash or one no secret matches."""
    from broker.auth import server

    known = make_user("agency", ["buyer"])
    revoked = make_user("agency", ["buyer"])
    assert _revoke(client, admin, revoked).status_code == 200

    checked: list[str] = []
    real_verify = server.verify_secret

    def counting_verify(secret: str, stored: str) -> bool:
        checked.append(stored)
        return real_verify(secret, stored)

    monkeypatch.setattr(server, "verify_secret", counting_verify)
    attempts = {
        "unknown": ("cb_" + uuid.uuid4().hex[:22], "whatever"),
        "wrong secret": (known.client_id, "whatever"),
        "revoked": (revoked.client_id, revoked.client_secret),
        "right secret": (known.client_id, known.client_secret),
    }
    for name, (client_id, secret) in attempts.items():
        checked.clear()
        response = _token_by_basic(client, client_id, secret)
        assert response.status_code == (200 if name == "right secret" else 401), name
        assert len(checked) == 1, name
        assert checked[0].startswith("sha256$"), name


# --- the admin's side: authorization, 404, 409 -------------------------------------------------


@pytest.mark.parametrize("action", ["revoke", "rotate-secret"])
@pytest.mark.parametrize(
    ("kind", "roles"),
    [("agency", ["buyer", "approver"]), ("consortium", ["finance"]), ("consortium", ["assessor"])],
)
def test_only_admins_may_revoke_or_rotate(
    client: FlaskClient,
    make_user: MakeUser,
    buyer: ApiUser,
    action: str,
    kind: str,
    roles: list[str],
) -> None:
    # Even on its own organization's clients (its own client included).
    caller = make_user(
        kind, roles, organization_id=buyer.organization_id if kind == "agency" else None
    )
    for target in (buyer, caller):
        path = f"{_clients_path(target.organization_id)}/{target.client_id}/{action}"
        problem(client.post(path, headers=caller.headers), 403, "forbidden")
    assert _get_own_org(client, buyer).status_code == 200
    fetch_token(client, buyer.client_id, buyer.client_secret)


def test_non_admins_may_not_list_clients(client: FlaskClient, buyer: ApiUser) -> None:
    problem(client.get(_clients_path(buyer.organization_id), headers=buyer.headers), 403)


@pytest.mark.parametrize("action", ["revoke", "rotate-secret"])
def test_another_organizations_client_is_not_found(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, action: str
) -> None:
    mine = make_user("agency", ["buyer"])
    theirs = make_user("agency", ["buyer"])
    for ref in (theirs.client_id, _row_id(client, admin, theirs)):
        path = f"{_clients_path(mine.organization_id)}/{ref}/{action}"
        problem(client.post(path, headers=admin.headers), 404, "not_found")
    # Nothing happened to it.
    assert _get_own_org(client, theirs).status_code == 200
    fetch_token(client, theirs.client_id, theirs.client_secret)


@pytest.mark.parametrize("action", ["revoke", "rotate-secret"])
@pytest.mark.parametrize(
    "ref",
    ["cb_no-such-client", str(uuid.uuid4()), "x" * 64, "%00"],
    ids=["id", "uuid", "64", "nul"],
)
def test_an_unknown_client_is_not_found(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser, action: str, ref: str
) -> None:
    path = f"{_clients_path(buyer.organization_id)}/{ref}/{action}"
    problem(client.post(path, headers=admin.headers), 404)


@pytest.mark.parametrize("action", ["revoke", "rotate-secret"])
def test_a_client_of_an_unknown_organization_is_not_found(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser, action: str
) -> None:
    path = f"{_clients_path(str(uuid.uuid4()))}/{buyer.client_id}/{action}"
    problem(client.post(path, headers=admin.headers), 404)


def _row_id(client: FlaskClient, admin: ApiUser, user: ApiUser) -> str:
    listed = all_pages(client, admin, _clients_path(user.organization_id))
    return next(item["id"] for item in listed if item["client_id"] == user.client_id)


def test_a_client_is_named_by_its_client_id_or_its_id(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    row_id = _row_id(client, admin, buyer)
    rotated = _rotate(client, admin, buyer, ref=row_id)
    assert rotated.status_code == 200
    assert rotated.json["id"] == row_id
    revoked = _revoke(client, admin, buyer, ref=row_id)
    assert revoked.status_code == 200
    assert revoked.json["client_id"] == buyer.client_id


def test_revoking_twice_is_a_conflict(client: FlaskClient, admin: ApiUser, buyer: ApiUser) -> None:
    first = _revoke(client, admin, buyer)
    assert first.status_code == 200
    again = problem(_revoke(client, admin, buyer), 409, "client_revoked")
    assert buyer.client_id in again["detail"]
    # The first revocation's time stands.
    listed = all_pages(client, admin, _clients_path(buyer.organization_id))
    assert listed[0]["revoked_at"] == first.json["revoked_at"]


def test_rotating_a_revoked_client_is_a_conflict(
    client: FlaskClient, db: Database, admin: ApiUser, buyer: ApiUser
) -> None:
    assert _revoke(client, admin, buyer).status_code == 200
    hash_before = _row(db, buyer.client_id).secret_hash
    body = problem(_rotate(client, admin, buyer), 409, "client_revoked")
    assert "client_secret" not in body
    row = _row(db, buyer.client_id)
    assert row.secret_hash == hash_before
    assert row.credential_version == 1


def test_concurrent_revocations_revoke_once(
    app: Flask, db: Database, admin: ApiUser, buyer: ApiUser
) -> None:
    def revoke(_: int) -> int:
        return int(_revoke(app.test_client(), admin, buyer).status_code)

    statuses = run_concurrently(6, revoke)
    assert sorted(statuses) == [200] + [409] * 5
    with db.session(read_only=True) as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action == "api_client.revoked")
        ).all()
    assert actions == ["api_client.revoked"]


# --- the list ------------------------------------------------------------------------------


def test_the_list_shows_revoked_at_and_never_a_secret(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser, buyer: ApiUser
) -> None:
    colleague = make_user("agency", ["approver"], organization_id=buyer.organization_id)
    assert _revoke(client, admin, buyer).status_code == 200
    rotated = _rotate(client, admin, colleague).json

    response = client.get(_clients_path(buyer.organization_id), headers=admin.headers)
    assert response.status_code == 200
    items = {item["client_id"]: item for item in response.json["items"]}
    assert set(items) == {buyer.client_id, colleague.client_id}
    assert items[buyer.client_id]["revoked_at"].endswith("Z")
    assert items[buyer.client_id]["credential_version"] == 1
    assert items[buyer.client_id]["rotated_at"] is None
    assert items[colleague.client_id]["revoked_at"] is None
    assert items[colleague.client_id]["credential_version"] == 2
    assert items[colleague.client_id]["rotated_at"].endswith("Z")

    text = response.get_data(as_text=True)
    for item in items.values():
        assert "client_secret" not in item and "secret_hash" not in item
    for secret in (buyer.client_secret, colleague.client_secret, rotated["client_secret"]):
        assert secret not in text
    for client_id in items:
        assert _row(db, client_id).secret_hash not in text


# --- audit ---------------------------------------------------------------------------------


def test_revocation_and_rotation_are_audited_under_the_admins_name(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    row_id = _row_id(client, admin, buyer)
    new_secret = _rotate(client, admin, buyer).json["client_secret"]
    assert _revoke(client, admin, buyer).status_code == 200
    # Refused attempts change nothing and record nothing.
    assert _revoke(client, admin, buyer).status_code == 409
    assert _rotate(client, admin, buyer).status_code == 409

    events = _audit(client, admin, row_id)
    assert [e["action"] for e in events] == [
        "api_client.created",
        "api_client.secret_rotated",
        "api_client.revoked",
    ]
    created, rotated, revoked = events
    for event in (rotated, revoked):
        assert event["actor_client_id"] == admin.client_id
        assert event["actor_organization_id"] == admin.organization_id
        assert event["organization_id"] == buyer.organization_id
        assert event["object_type"] == "api_client"
        assert event["request_id"]
    assert rotated["before"]["credential_version"] == 1
    assert rotated["after"]["credential_version"] == 2
    assert rotated["before"]["rotated_at"] is None
    assert rotated["after"]["rotated_at"] is not None
    assert revoked["before"]["revoked_at"] is None
    assert revoked["after"]["revoked_at"] is not None

    text = json.dumps(events)
    assert "secret_hash" not in text
    for secret in (buyer.client_secret, new_secret):
        assert secret not in text
