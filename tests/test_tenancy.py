"""Tenant isolation: what one organization's clients may see of other organizations.

Non-admin callers (agency buyers and approvers, provider operators) see their own
organization and its audit events only; other organizations answer 404 exactly like an id
that does not exist, so existence does not leak. Consortium admins see everything. Client
listings never carry secrets or their hashes.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import Database
from broker.models import ApiClient, AuditEvent
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages

PROBLEM = "application/problem+json"


def _problem_without_request_id(response: Any) -> dict[str, Any]:
    assert response.mimetype == PROBLEM, response.get_data(as_text=True)
    body = dict(response.json)
    body.pop("request_id", None)
    return body


def _create_org(client: FlaskClient, admin: ApiUser, name: str, kind: str) -> dict[str, Any]:
    response = client.post(
        "/v1/organizations", json={"name": name, "kind": kind}, headers=admin.headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json)


@pytest.fixture
def world(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> dict[str, Any]:
    """Several organizations with clients, so that other tenants' data and events exist.

    Clients are issued through the services module (as `make_user` does), so that these
    tests do not depend on `POST /v1/organizations/{id}/clients`, tested on its own below.
    """
    buyer = make_user("agency", ["buyer"])
    approver = make_user("agency", ["approver"])
    provider = make_user("provider", ["provider"])
    other_agency = _create_org(client, admin, "Other Agency", "agency")
    other_provider = _create_org(client, admin, "Other Provider", "provider")
    make_user("agency", ["buyer"], organization_id=other_agency["id"])
    make_user("provider", ["provider"], organization_id=other_provider["id"])
    # An admin action on the buyer's own organization: the buyer may read that event.
    response = client.patch(
        f"/v1/organizations/{buyer.organization_id}",
        json={"name": "Renamed Agency"},
        headers={**admin.headers, "If-Match": '"v1"'},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return {
        "buyer": buyer,
        "approver": approver,
        "provider": provider,
        "other_agency": other_agency,
        "other_provider": other_provider,
    }


NON_ADMINS = ["buyer", "approver", "provider"]


@pytest.mark.parametrize("who", NON_ADMINS)
def test_other_organization_is_404_like_an_unknown_id(
    client: FlaskClient, admin: ApiUser, world: dict[str, Any], who: str
) -> None:
    user: ApiUser = world[who]
    unknown = client.get(f"/v1/organizations/{uuid.uuid4()}", headers=user.headers)
    assert unknown.status_code == 404
    unknown_body = _problem_without_request_id(unknown)
    assert unknown_body["code"] == "not_found"

    others = [world["other_agency"]["id"], world["other_provider"]["id"], admin.organization_id]
    others += [world[name].organization_id for name in NON_ADMINS if name != who]
    for other_id in others:
        response = client.get(f"/v1/organizations/{other_id}", headers=user.headers)
        assert response.status_code == 404
        assert "ETag" not in response.headers
        body = _problem_without_request_id(response)
        assert body == unknown_body
        assert other_id not in response.get_data(as_text=True)


@pytest.mark.parametrize("who", NON_ADMINS)
def test_own_organization_is_readable(client: FlaskClient, world: dict[str, Any], who: str) -> None:
    user: ApiUser = world[who]
    response = client.get(f"/v1/organizations/{user.organization_id}", headers=user.headers)
    assert response.status_code == 200
    assert response.json["id"] == user.organization_id
    assert response.headers["ETag"].startswith('"v')


@pytest.mark.parametrize("who", NON_ADMINS)
def test_listing_shows_only_own_organization(
    client: FlaskClient, world: dict[str, Any], who: str
) -> None:
    user: ApiUser = world[who]
    items = all_pages(client, user, "/v1/organizations")
    assert [item["id"] for item in items] == [user.organization_id]

    # Filtering by another kind cannot reveal anything either.
    for kind in ("agency", "provider", "consortium"):
        filtered = all_pages(client, user, f"/v1/organizations?kind={kind}")
        expected = [user.organization_id] if items[0]["kind"] == kind else []
        assert [item["id"] for item in filtered] == expected


def test_admin_lists_and_reads_every_organization(
    client: FlaskClient, admin: ApiUser, world: dict[str, Any]
) -> None:
    expected = {
        admin.organization_id,
        world["other_agency"]["id"],
        world["other_provider"]["id"],
        *(world[name].organization_id for name in NON_ADMINS),
    }
    items = all_pages(client, admin, "/v1/organizations")
    assert {item["id"] for item in items} == expected
    assert len(items) == len(expected)
    for organization_id in expected:
        response = client.get(f"/v1/organizations/{organization_id}", headers=admin.headers)
        assert response.status_code == 200
        assert response.json["id"] == organization_id


@pytest.mark.parametrize("who", NON_ADMINS)
def test_audit_events_are_limited_to_own_organization(
    client: FlaskClient, admin: ApiUser, db: Database, world: dict[str, Any], who: str
) -> None:
    user: ApiUser = world[who]
    everything = all_pages(client, admin, "/v1/audit-events")
    own_expected = [e for e in everything if e["organization_id"] == user.organization_id]
    assert len(own_expected) < len(everything), "other tenants' events must exist"

    mine = all_pages(client, user, "/v1/audit-events")
    assert mine, "the caller's own organization has events"
    assert all(event["organization_id"] == user.organization_id for event in mine)
    assert [e["id"] for e in mine] == [e["id"] for e in own_expected]
    assert {"organization.created", "api_client.created"} <= {e["action"] for e in mine}

    # Page by page with a small limit, the cursor does not leak other tenants' events.
    paged = all_pages(client, user, "/v1/audit-events", limit=1)
    assert [e["id"] for e in paged] == [e["id"] for e in mine]

    # Asking for another organization's object by id finds nothing.
    other_id = world["other_agency"]["id"]
    response = client.get(
        f"/v1/audit-events?object_type=organization&object_id={other_id}", headers=user.headers
    )
    assert response.status_code == 200
    assert response.json == {"items": [], "next_cursor": None}


def test_buyer_sees_admin_actions_on_its_own_organization(
    client: FlaskClient, admin: ApiUser, world: dict[str, Any]
) -> None:
    buyer: ApiUser = world["buyer"]
    mine = all_pages(client, buyer, "/v1/audit-events")
    by_admin = [e for e in mine if e["actor_client_id"] == admin.client_id]
    assert [e["action"] for e in by_admin] == ["organization.updated"]
    assert by_admin[0]["after"]["name"] == "Renamed Agency"


def test_admin_sees_every_audit_event(
    client: FlaskClient, admin: ApiUser, db: Database, world: dict[str, Any]
) -> None:
    events = all_pages(client, admin, "/v1/audit-events")
    with db.transaction() as session:
        stored = list(session.scalars(select(AuditEvent.id).order_by(AuditEvent.seq)))
    assert [e["id"] for e in events] == [str(i) for i in stored]
    organizations = {e["organization_id"] for e in events}
    assert {
        admin.organization_id,
        world["other_agency"]["id"],
        world["other_provider"]["id"],
        world["buyer"].organization_id,
    } <= organizations


def _stored_secret_hashes(db: Database, organization_id: str) -> list[str]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(ApiClient.secret_hash).where(
                    ApiClient.organization_id == uuid.UUID(organization_id)
                )
            )
        )


def _assert_no_secrets(text: str, secrets: list[str], hashes: list[str]) -> None:
    assert "secret" not in text.lower()
    for secret in secrets:
        assert secret not in text
    for stored in hashes:
        salt, digest = stored.split("$")[1:]
        assert stored not in text
        assert digest not in text
        assert salt not in text


def test_client_listing_never_returns_secrets(
    client: FlaskClient,
    admin: ApiUser,
    db: Database,
    make_user: MakeUser,
    world: dict[str, Any],
) -> None:
    organization_id = world["other_agency"]["id"]
    issued = [
        make_user("agency", ["buyer"], organization_id=organization_id),
        make_user("agency", ["buyer", "approver"], organization_id=organization_id),
    ]
    secrets = [user.client_secret for user in issued]
    hashes = _stored_secret_hashes(db, organization_id)
    assert len(hashes) == 3  # one from the fixture, two here

    response = client.get(f"/v1/organizations/{organization_id}/clients", headers=admin.headers)
    assert response.status_code == 200
    items = response.json["items"]
    assert len(items) == 3
    assert {user.client_id for user in issued} <= {item["client_id"] for item in items}
    for item in items:
        assert set(item) == {
            "id",
            "client_id",
            "name",
            "organization_id",
            "roles",
            "created_at",
            "revoked_at",
            "credential_version",
            "rotated_at",
        }
    _assert_no_secrets(response.get_data(as_text=True), secrets, hashes)

    # The admin's own organization (holding the admin's client) likewise.
    response = client.get(
        f"/v1/organizations/{admin.organization_id}/clients", headers=admin.headers
    )
    assert response.status_code == 200
    assert [item["client_id"] for item in response.json["items"]] == [admin.client_id]
    _assert_no_secrets(
        response.get_data(as_text=True),
        [admin.client_secret],
        _stored_secret_hashes(db, admin.organization_id),
    )


def test_audit_log_never_holds_client_secrets(
    client: FlaskClient, admin: ApiUser, db: Database, world: dict[str, Any]
) -> None:
    events = all_pages(client, admin, "/v1/audit-events?object_type=api_client")
    assert len(events) >= 5
    users = [admin, *(world[name] for name in NON_ADMINS)]
    hashes = [h for user in users for h in _stored_secret_hashes(db, user.organization_id)]
    for event in events:
        assert event["action"] == "api_client.created"
        assert set(event["after"]) >= {"client_id", "roles"}
        response = client.get(
            f"/v1/audit-events?object_type=api_client&object_id={event['object_id']}",
            headers=admin.headers,
        )
        _assert_no_secrets(
            response.get_data(as_text=True),
            [user.client_secret for user in users],
            hashes,
        )


def test_issued_client_secret_is_shown_once_then_never(
    client: FlaskClient, admin: ApiUser, db: Database, world: dict[str, Any]
) -> None:
    organization_id = world["other_agency"]["id"]
    response = client.post(
        f"/v1/organizations/{organization_id}/clients",
        json={"name": "new buyer", "roles": ["buyer"]},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    issued = response.json
    assert issued["client_secret"]
    assert issued["organization_id"] == organization_id
    assert issued["created_at"].endswith("Z")

    listing = client.get(f"/v1/organizations/{organization_id}/clients", headers=admin.headers)
    assert listing.status_code == 200
    assert issued["client_id"] in {item["client_id"] for item in listing.json["items"]}
    _assert_no_secrets(
        listing.get_data(as_text=True),
        [issued["client_secret"]],
        _stored_secret_hashes(db, organization_id),
    )


@pytest.mark.parametrize("who", NON_ADMINS)
def test_non_admin_cannot_list_clients(
    client: FlaskClient, world: dict[str, Any], who: str
) -> None:
    user: ApiUser = world[who]
    for organization_id in (user.organization_id, world["other_agency"]["id"]):
        response = client.get(f"/v1/organizations/{organization_id}/clients", headers=user.headers)
        assert response.status_code == 403
        assert response.mimetype == PROBLEM
        assert "secret" not in response.get_data(as_text=True).lower()


# --- visibility before preconditions ---------------------------------------------------------

IF_MATCH_CASES = [
    pytest.param({}, 428, id="no If-Match"),
    pytest.param({"If-Match": "abc"}, 412, id="not a version"),
    pytest.param({"If-Match": '"v999"'}, 412, id="stale"),
]


@pytest.mark.parametrize(("headers", "own_status"), IF_MATCH_CASES)
def test_a_foreign_id_is_404_whatever_the_if_match(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    headers: dict[str, str],
    own_status: int,
) -> None:
    """Preconditions are judged only once the resource is found and visible: another
    tenant's object answers exactly as a missing one, whatever headers come with it."""
    from tests.catalogue_fixtures import create_offer, make_provider

    mine, theirs = make_provider(client, admin, make_user), make_provider(client, admin, make_user)
    draft, _ = create_offer(client, theirs.operator, theirs.id)
    agency = make_user("agency", ["approver"])
    other_agency = make_user("agency", ["approver"])
    cases = [
        ("PATCH", f"/v1/offers/{draft['id']}", mine.operator, {"name": "x"}),
        ("PATCH", f"/v1/providers/{theirs.id}", mine.operator, {"name": "x"}),
        (
            "PUT",
            f"/v1/organizations/{other_agency.organization_id}/policy",
            agency,
            {
                "currency": "EUR",
                "monthly_budget": None,
                "approval_threshold": None,
                "sovereignty": {},
            },
        ),
    ]
    for method, path, user, body in cases:
        response = client.open(path, method=method, json=body, headers={**user.headers, **headers})
        assert response.status_code == 404, (path, response.get_data(as_text=True))
        missing = path.replace(path.split("/")[3], str(uuid.uuid4()))
        absent = client.open(missing, method=method, json=body, headers={**user.headers, **headers})
        assert absent.status_code == 404
        assert absent.json["detail"] == response.json["detail"]
    # The owner meets the precondition itself.
    own = client.patch(
        f"/v1/offers/{draft['id']}",
        json={"name": "x"},
        headers={**theirs.operator.headers, **headers},
    )
    assert own.status_code == own_status, own.get_data(as_text=True)
