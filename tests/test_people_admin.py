"""Admin and approver APIs for people: identity providers, organization identifiers, members,
disabling a person (broker/api/identity_providers.py, broker/api/members.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker import create_app
from broker.db import Database
from broker.models import (
    AuditEvent,
    BrowserSession,
    IdentityProvider,
    Membership,
    OrganizationIdentifier,
    User,
)
from broker.models.base import utcnow
from broker.services import identity_providers, members
from broker.services.credentials import CredentialsUnreadable, Keyring
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, fake_getaddrinfo, problem

SECRET = "s3cr3t-Of-The-Broker-At-The-IdP"
ISSUER = "https://auth.example.gouv.fr"
FAKE_DNS = {
    "auth.example.gouv.fr": ["145.239.0.10"],
    "other.example.gouv.fr": ["145.239.0.11"],
    "intranet.example.gouv.fr": ["10.1.2.3"],
}
IDPS = "/v1/identity-providers"


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(FAKE_DNS))


def idp_body(**changes: Any) -> dict[str, Any]:
    return {
        "name": "ProConnect",
        "issuer": ISSUER,
        "client_id": "broker-client",
        "client_secret": SECRET,
        "organization_claim": "siret",
        **changes,
    }


def create_idp(client: FlaskClient, admin: ApiUser, **changes: Any) -> Any:
    response = client.post(IDPS, json=idp_body(**changes), headers=admin.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response


def stored_idps(db: Database) -> list[IdentityProvider]:
    with db.session() as session:
        return list(session.scalars(select(IdentityProvider)))


def keyring_of(app: Flask) -> Keyring:
    keyring: Keyring = app.extensions["broker.providers"].keyring
    return keyring


def audit_events(db: Database, action_prefix: str) -> list[AuditEvent]:
    with db.session() as session:
        statement = select(AuditEvent).where(AuditEvent.action.startswith(action_prefix))
        return list(session.scalars(statement.order_by(AuditEvent.seq)))


# Identity providers ----------------------------------------------------------------------


def test_an_admin_registers_an_identity_provider_whose_secret_is_never_shown(
    client: FlaskClient, admin: ApiUser, db: Database, app: Flask
) -> None:
    response = create_idp(client, admin)
    body = response.json
    assert response.headers["ETag"] == '"v1"'
    assert response.headers["Location"].endswith(f"{IDPS}/{body['id']}")
    assert body == {
        "id": body["id"],
        "name": "ProConnect",
        "issuer": ISSUER,
        "client_id": "broker-client",
        "client_secret_set": True,
        "scopes": "openid email profile",
        "organization_claim": "siret",
        "match_email_domain": True,
        "enabled": True,
        "created_at": body["created_at"],
    }
    read = client.get(f"{IDPS}/{body['id']}", headers=admin.headers)
    assert read.status_code == 200 and read.json == body and read.headers["ETag"] == '"v1"'
    assert all_pages(client, admin, IDPS) == [body]
    for answer in (response, read, client.get(IDPS, headers=admin.headers)):
        assert SECRET not in answer.get_data(as_text=True)
    (row,) = stored_idps(db)
    assert row.client_secret_ciphertext and SECRET not in row.client_secret_ciphertext
    with db.session() as session:
        stored = session.get(IdentityProvider, row.id)
        assert stored is not None
        assert identity_providers.client_secret(session, stored, keyring_of(app)) == SECRET


def test_the_secret_appears_in_no_audit_event_nor_answer(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    created = create_idp(client, admin)
    replaced = client.patch(
        f"{IDPS}/{created.json['id']}",
        json={"client_secret": "an0ther-Secret"},
        headers={**admin.headers, "If-Match": created.headers["ETag"]},
    )
    assert replaced.status_code == 200, replaced.get_data(as_text=True)
    assert "an0ther-Secret" not in replaced.get_data(as_text=True)
    events = audit_events(db, "identity_provider.")
    assert [event.action for event in events] == [
        "identity_provider.created",
        "identity_provider.updated",
    ]
    assert events[0].after["client_secret_set"] is True
    assert events[1].after["client_secret_replaced"] is True
    (row,) = stored_idps(db)
    log = client.get("/v1/audit-events?limit=200", headers=admin.headers).get_data(as_text=True)
    for secret in (SECRET, "an0ther-Secret", row.client_secret_ciphertext or "-"):
        assert secret not in log
        assert all(secret not in str((e.before, e.after)) for e in events)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"issuer": "http://auth.example.gouv.fr"}, "issuer"),
        ({"issuer": "https://intranet.example.gouv.fr"}, "issuer"),
        ({"issuer": "https://auth.example.gouv.fr/?tenant=1"}, "issuer"),
        ({"issuer": "https://auth.example.gouv.fr#x"}, "issuer"),
        ({"issuer": "ftp://auth.example.gouv.fr"}, "issuer"),
        ({"issuer": "https://auth.example.gouv.fr:99999"}, "issuer"),
        ({"scopes": "email profile"}, "scopes"),
        ({"scopes": "openid  email"}, "scopes"),
        ({"scopes": ""}, "scopes"),
        ({"organization_claim": "has space"}, "organization_claim"),
        ({"match_email_domain": "yes"}, "match_email_domain"),
        ({"enabled": 1}, "enabled"),
        ({"client_secret": ""}, "client_secret"),
        ({"client_secret": None}, "client_secret"),
        ({"client_id": "with space"}, "client_id"),
        ({"name": ""}, "name"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_an_invalid_identity_provider_is_refused_and_nothing_is_stored(
    client: FlaskClient, admin: ApiUser, db: Database, changes: dict[str, Any], field: str
) -> None:
    body = problem(client.post(IDPS, json=idp_body(**changes), headers=admin.headers), 422)
    assert field in body["errors"], body
    assert stored_idps(db) == []


def test_a_missing_client_secret_is_refused(client: FlaskClient, admin: ApiUser) -> None:
    body = idp_body()
    del body["client_secret"]
    assert (
        "client_secret"
        in problem(client.post(IDPS, json=body, headers=admin.headers), 422)["errors"]
    )


def test_http_issuers_are_admitted_where_the_configuration_admits_private_endpoints(
    app_config: dict[str, Any], admin: ApiUser
) -> None:
    application = create_app({**app_config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True})
    try:
        response = application.test_client().post(
            IDPS, json=idp_body(issuer="http://127.0.0.1:8765"), headers=admin.headers
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.json["issuer"] == "http://127.0.0.1:8765"
    finally:
        application.extensions["broker.db"].dispose()


def test_a_name_or_issuer_taken_is_a_409(client: FlaskClient, admin: ApiUser, db: Database) -> None:
    create_idp(client, admin)
    same_name = client.post(
        IDPS, json=idp_body(issuer="https://other.example.gouv.fr"), headers=admin.headers
    )
    problem(same_name, 409, "identity_provider_name_taken")
    same_issuer = client.post(IDPS, json=idp_body(name="Another"), headers=admin.headers)
    problem(same_issuer, 409, "identity_provider_issuer_taken")
    assert len(stored_idps(db)) == 1


def test_patch_needs_if_match_and_replaces_settings_and_secret(
    client: FlaskClient, admin: ApiUser, db: Database, app: Flask
) -> None:
    created = create_idp(client, admin)
    url = f"{IDPS}/{created.json['id']}"
    change = {"enabled": False, "scopes": "openid email", "client_secret": "n3w-Secret"}
    problem(client.patch(url, json=change, headers=admin.headers), 428)
    stale = {**admin.headers, "If-Match": '"v7"'}
    problem(client.patch(url, json=change, headers=stale), 412)
    (row,) = stored_idps(db)
    assert row.enabled is True and row.version == 1

    fresh = {**admin.headers, "If-Match": created.headers["ETag"]}
    response = client.patch(url, json=change, headers=fresh)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v2"'
    assert response.json["enabled"] is False and response.json["scopes"] == "openid email"
    problem(client.patch(url, json={"enabled": True}, headers=fresh), 412)
    same = {**admin.headers, "If-Match": '"v2"'}
    unchanged = client.patch(url, json={"enabled": False}, headers=same)
    assert unchanged.status_code == 200 and unchanged.headers["ETag"] == '"v2"'
    assert len(audit_events(db, "identity_provider.updated")) == 1
    with db.session() as session:
        stored = session.get(IdentityProvider, uuid.UUID(created.json["id"]))
        assert stored is not None
        assert identity_providers.client_secret(session, stored, keyring_of(app)) == "n3w-Secret"


def test_patch_refuses_invalid_changes_and_keeps_the_row(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    first = create_idp(client, admin)
    create_idp(client, admin, name="Other", issuer="https://other.example.gouv.fr")
    url = f"{IDPS}/{first.json['id']}"
    headers = {**admin.headers, "If-Match": first.headers["ETag"]}
    problem(client.patch(url, json={"scopes": "email"}, headers=headers), 422)
    problem(client.patch(url, json={"name": "Other"}, headers=headers), 409)
    problem(client.patch(url, json={"name": None}, headers=headers), 422)
    problem(client.patch(url, data="", headers=headers, content_type="application/json"), 400)
    assert client.get(url, headers=admin.headers).json == first.json


def test_unknown_identity_providers_are_404(client: FlaskClient, admin: ApiUser) -> None:
    url = f"{IDPS}/{uuid.uuid4()}"
    problem(client.get(url, headers=admin.headers), 404)
    headers = {**admin.headers, "If-Match": '"v1"'}
    problem(client.patch(url, json={"enabled": False}, headers=headers), 404)


def test_identity_providers_are_for_admins_only(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    created = create_idp(client, admin)
    for role, kind in (("approver", "agency"), ("finance", "consortium")):
        other = make_user(kind, [role])
        problem(client.get(IDPS, headers=other.headers), 403)
        problem(client.get(f"{IDPS}/{created.json['id']}", headers=other.headers), 403)
        problem(client.post(IDPS, json=idp_body(name="X"), headers=other.headers), 403)
    problem(client.get(IDPS), 401)


def test_the_client_secret_is_bound_to_its_row_and_survives_key_rotation(
    client: FlaskClient, admin: ApiUser, db: Database, app: Flask, credential_key: str
) -> None:
    first = create_idp(client, admin).json
    second = create_idp(client, admin, name="Other", issuer="https://other.example.gouv.fr").json
    keyring = keyring_of(app)
    with db.transaction() as session:
        one = session.get(IdentityProvider, uuid.UUID(first["id"]))
        two = session.get(IdentityProvider, uuid.UUID(second["id"]))
        assert one is not None and two is not None
        two.client_secret_ciphertext = one.client_secret_ciphertext  # copied by an intruder
        with pytest.raises(CredentialsUnreadable, match="Other"):
            identity_providers.client_secret(session, two, keyring)
        two.client_secret_ciphertext = None
        with pytest.raises(identity_providers.ClientSecretMissing):
            identity_providers.client_secret(session, two, keyring)

    new_key = Fernet.generate_key().decode()
    with db.transaction() as session:
        assert identity_providers.rotate_secrets(session, Keyring([new_key, credential_key])) == 1
    with db.session() as session:
        one = session.get(IdentityProvider, uuid.UUID(first["id"]))
        assert one is not None
        assert identity_providers.client_secret(session, one, Keyring([new_key])) == SECRET


# Organization identifiers ----------------------------------------------------------------


def identifiers_url(organization_id: str) -> str:
    return f"/v1/organizations/{organization_id}/identifiers"


def test_an_admin_registers_identifiers_that_find_the_organization(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    agency = make_user("agency", ["approver"])
    url = identifiers_url(agency.organization_id)
    siret = client.post(
        url, json={"scheme": "siret", "value": "13002526500013"}, headers=admin.headers
    )
    assert siret.status_code == 201, siret.get_data(as_text=True)
    assert siret.json["organization_id"] == agency.organization_id
    domain = client.post(
        url, json={"scheme": "email_domain", "value": "interieur.gouv.fr"}, headers=admin.headers
    )
    other = client.post(
        url, json={"scheme": "fr-rna", "value": "W123456789"}, headers=admin.headers
    )
    assert domain.status_code == 201 and other.status_code == 201
    listed = all_pages(client, admin, url)
    assert [(i["scheme"], i["value"]) for i in listed] == [
        ("siret", "13002526500013"),
        ("email_domain", "interieur.gouv.fr"),
        ("fr-rna", "W123456789"),
    ]
    with db.session() as session:
        found = members.organization_for(session, "siret", "13002526500013")
        assert found is not None and str(found.id) == agency.organization_id
        by_domain = members.organization_for(session, "email_domain", "Interieur.Gouv.FR.")
        assert by_domain is not None and str(by_domain.id) == agency.organization_id
        assert members.organization_for(session, "email_domain", "dgfip.interieur.gouv.fr") is None
        assert members.organization_for(session, "siret", "13002526500014") is None
    actions = [e.action for e in audit_events(db, "organization_identifier.")]
    assert actions == ["organization_identifier.created"] * 3


@pytest.mark.parametrize(
    ("identifier", "field", "hint"),
    [
        ({"scheme": "siret", "value": "1300252650001"}, "value", None),
        ({"scheme": "siret", "value": "130 025 265 00013"}, "value", "13002526500013"),
        ({"scheme": "siret", "value": "1300252650001A"}, "value", None),
        ({"scheme": "email_domain", "value": "Interieur.gouv.fr"}, "value", "interieur.gouv.fr"),
        ({"scheme": "email_domain", "value": "@interieur.gouv.fr"}, "value", "interieur.gouv.fr"),
        ({"scheme": "email_domain", "value": "localhost"}, "value", None),
        ({"scheme": "email_domain", "value": "bad_domain.fr"}, "value", None),
        ({"scheme": "fr-rna", "value": " padded"}, "value", None),
        ({"scheme": "Bad Scheme", "value": "x"}, "scheme", None),
        ({"scheme": "siret", "value": ""}, "value", None),
        ({"scheme": "siret"}, "value", None),
        ({"scheme": "siret", "value": "13002526500013", "extra": 1}, "extra", None),
    ],
)
def test_invalid_identifiers_are_refused(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    db: Database,
    identifier: dict[str, Any],
    field: str,
    hint: str | None,
) -> None:
    agency = make_user("agency", ["approver"])
    response = client.post(
        identifiers_url(agency.organization_id), json=identifier, headers=admin.headers
    )
    body = problem(response, 422)
    assert field in body["errors"], body
    if hint:
        assert f"Did you mean {hint}?" in body["errors"][field][0]
    with db.session() as session:
        assert list(session.scalars(select(OrganizationIdentifier))) == []


def test_an_identifier_held_by_another_organization_is_a_409_naming_it(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    holder = make_user("agency", ["approver"], name="Ministère de l'Intérieur")
    other = make_user("agency", ["approver"])
    identifier = {"scheme": "email_domain", "value": "interieur.gouv.fr"}
    client.post(identifiers_url(holder.organization_id), json=identifier, headers=admin.headers)
    response = client.post(
        identifiers_url(other.organization_id), json=identifier, headers=admin.headers
    )
    body = problem(response, 409, "identifier_taken")
    assert "Ministère de l'Intérieur" in body["detail"]
    assert body["holder_organization_id"] == holder.organization_id
    again = client.post(
        identifiers_url(holder.organization_id), json=identifier, headers=admin.headers
    )
    assert "this organization" in problem(again, 409, "identifier_taken")["detail"]
    assert all_pages(client, admin, identifiers_url(other.organization_id)) == []


def test_an_identifier_is_deleted_from_its_own_organization_only(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    agency = make_user("agency", ["approver"])
    other = make_user("agency", ["approver"])
    created = client.post(
        identifiers_url(agency.organization_id),
        json={"scheme": "siret", "value": "13002526500013"},
        headers=admin.headers,
    ).json
    wrong = f"{identifiers_url(other.organization_id)}/{created['id']}"
    problem(client.delete(wrong, headers=admin.headers), 404)
    right = f"{identifiers_url(agency.organization_id)}/{created['id']}"
    assert client.delete(right, headers=admin.headers).status_code == 204
    problem(client.delete(right, headers=admin.headers), 404)
    with db.session() as session:
        assert members.organization_for(session, "siret", "13002526500013") is None
    deleted = audit_events(db, "organization_identifier.deleted")
    assert len(deleted) == 1 and deleted[0].before["value"] == "13002526500013"


def test_identifiers_are_for_admins_and_unknown_organizations_are_404(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    approver = make_user("agency", ["approver"])
    url = identifiers_url(approver.organization_id)
    body = {"scheme": "siret", "value": "13002526500013"}
    problem(client.get(url, headers=approver.headers), 403)
    problem(client.post(url, json=body, headers=approver.headers), 403)
    missing = identifiers_url(str(uuid.uuid4()))
    problem(client.post(missing, json=body, headers=admin.headers), 404)
    problem(client.get(missing, headers=admin.headers), 404)


# Members ---------------------------------------------------------------------------------


def make_person(
    db: Database, organization_id: str, roles: tuple[str, ...] = (), email: str | None = None
) -> str:
    """A person who signed in once and is a member of the organization; their id."""
    email = email or f"agent.{uuid.uuid4().hex[:6]}@interieur.gouv.fr"
    with db.transaction() as session:
        user = User(id=uuid.uuid4(), email=email, email_key=email.casefold(), display_name=email)
        session.add(user)
        session.flush()
        session.add(
            Membership(
                user_id=user.id, organization_id=uuid.UUID(organization_id), roles=list(roles)
            )
        )
        return str(user.id)


def members_url(organization_id: str, user_id: str | None = None) -> str:
    url = f"/v1/organizations/{organization_id}/members"
    return f"{url}/{user_id}" if user_id else url


def roles_of(db: Database, user_id: str, organization_id: str) -> list[str]:
    with db.session() as session:
        membership = session.scalar(
            select(Membership).where(
                Membership.user_id == uuid.UUID(user_id),
                Membership.organization_id == uuid.UUID(organization_id),
            )
        )
        assert membership is not None
        return list(membership.roles)


def test_approvers_and_admins_list_the_members_of_the_agency(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    approver = make_user("agency", ["approver"])
    alice = make_person(db, approver.organization_id, ("buyer",), email="Alice@Interieur.gouv.fr")
    bob = make_person(db, approver.organization_id)
    other_agency = make_user("agency", ["approver"])
    make_person(db, other_agency.organization_id)
    for reader in (approver, admin):
        listed = all_pages(client, reader, members_url(approver.organization_id))
        assert [(m["user_id"], m["roles"], m["disabled"]) for m in listed] == [
            (alice, ["buyer"], False),
            (bob, [], False),
        ]
        assert listed[0]["email"] == "Alice@Interieur.gouv.fr"
        assert listed[0]["display_name"] == "Alice@Interieur.gouv.fr"
        assert listed[0]["organization_id"] == approver.organization_id
    page = client.get(f"{members_url(approver.organization_id)}?limit=1", headers=admin.headers)
    assert len(page.json["items"]) == 1 and page.json["next_cursor"]


def test_another_agencys_approver_gets_404_and_a_buyer_403(
    client: FlaskClient, make_user: MakeUser, db: Database
) -> None:
    approver = make_user("agency", ["approver"])
    person = make_person(db, approver.organization_id)
    stranger = make_user("agency", ["approver"])
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    problem(client.get(members_url(approver.organization_id), headers=stranger.headers), 404)
    put = members_url(approver.organization_id, person)
    problem(client.put(put, json={"roles": ["buyer"]}, headers=stranger.headers), 404)
    problem(client.get(members_url(approver.organization_id), headers=buyer.headers), 403)
    problem(client.put(put, json={"roles": ["buyer"]}, headers=buyer.headers), 403)
    problem(client.get(members_url(str(uuid.uuid4())), headers=stranger.headers), 404)
    assert roles_of(db, person, approver.organization_id) == []


def test_an_approver_grants_buyer_and_approver_in_their_agency(
    client: FlaskClient, make_user: MakeUser, db: Database
) -> None:
    approver = make_user("agency", ["approver"])
    person = make_person(db, approver.organization_id)
    url = members_url(approver.organization_id, person)
    response = client.put(
        url, json={"roles": ["buyer", "approver", "buyer"]}, headers=approver.headers
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["roles"] == ["approver", "buyer"]
    assert response.json["user_id"] == person
    assert roles_of(db, person, approver.organization_id) == ["approver", "buyer"]
    (event,) = audit_events(db, "membership.")
    assert event.action == "membership.roles_changed"
    assert event.organization_id == uuid.UUID(approver.organization_id)
    assert event.actor_client_id == approver.client_id
    assert (event.before["roles"], event.after["roles"]) == ([], ["approver", "buyer"])

    cleared = client.put(url, json={"roles": []}, headers=approver.headers)
    assert cleared.status_code == 200 and cleared.json["roles"] == []
    assert roles_of(db, person, approver.organization_id) == []


A_ROLE_OF_KIND = {"agency": "approver", "provider": "provider", "consortium": "finance"}


@pytest.mark.parametrize(
    ("granter", "kind", "roles", "status"),
    [
        ("approver", "agency", ["admin"], 422),
        ("approver", "agency", ["finance"], 422),
        ("admin", "agency", ["finance"], 422),
        ("admin", "agency", ["provider"], 422),
        ("admin", "provider", ["buyer"], 422),
        ("admin", "consortium", ["admin", "finance"], 200),
        ("admin", "provider", ["provider"], 200),
        ("admin", "agency", ["approver"], 200),
    ],
)
def test_roles_must_fit_the_organizations_kind_and_the_granter(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    db: Database,
    granter: str,
    kind: str,
    roles: list[str],
    status: int,
) -> None:
    member_of = make_user(kind, [A_ROLE_OF_KIND[kind]])
    person = make_person(db, member_of.organization_id)
    headers = member_of.headers if granter == "approver" else admin.headers
    response = client.put(
        members_url(member_of.organization_id, person), json={"roles": roles}, headers=headers
    )
    if status == 422:
        body = problem(response, 422, "role_not_allowed")
        assert "roles" in body["errors"]
        assert roles_of(db, person, member_of.organization_id) == []
    else:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert roles_of(db, person, member_of.organization_id) == sorted(roles)


def test_setting_roles_of_a_non_member_or_with_a_bad_body_changes_nothing(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, db: Database
) -> None:
    approver = make_user("agency", ["approver"])
    outsider = make_person(db, make_user("agency", ["approver"]).organization_id)
    member = make_person(db, approver.organization_id)
    problem(
        client.put(
            members_url(approver.organization_id, outsider),
            json={"roles": ["buyer"]},
            headers=approver.headers,
        ),
        404,
    )
    problem(
        client.put(
            members_url(approver.organization_id, str(uuid.uuid4())),
            json={"roles": ["buyer"]},
            headers=admin.headers,
        ),
        404,
    )
    url = members_url(approver.organization_id, member)
    for body in ({"roles": ["chief"]}, {}, {"roles": "buyer"}, {"roles": ["buyer"], "x": 1}):
        problem(client.put(url, json=body, headers=approver.headers), 422)
    assert roles_of(db, member, approver.organization_id) == []
    assert audit_events(db, "membership.") == []


# Disabling people ------------------------------------------------------------------------


def open_session(db: Database, user_id: str, organization_id: str, ended: bool = False) -> str:
    """A browser session of the person (ended already, if `ended`); its id."""
    now = utcnow()
    with db.transaction() as session:
        row = BrowserSession(
            id=uuid.uuid4(),
            token_hash=uuid.uuid4().hex * 2,
            user_id=uuid.UUID(user_id),
            organization_id=uuid.UUID(organization_id),
            csrf_token=uuid.uuid4().hex,
            expires_at=now + timedelta(hours=8),
            ended_at=now if ended else None,
            end_reason="signed_out" if ended else None,
        )
        session.add(row)
        return str(row.id)


def sessions(db: Database) -> dict[str, tuple[bool, str | None]]:
    with db.session() as session:
        return {
            str(row.id): (row.ended_at is not None, row.end_reason)
            for row in session.scalars(select(BrowserSession))
        }


@pytest.fixture
def agency_with_people(make_user: MakeUser, db: Database) -> Iterator[tuple[str, str, str]]:
    """An agency, a person of it and another person: (organization id, person, other)."""
    organization_id = make_user("agency", ["approver"]).organization_id
    yield organization_id, make_person(db, organization_id), make_person(db, organization_id)


def test_disabling_a_person_ends_every_session_of_theirs(
    client: FlaskClient, admin: ApiUser, db: Database, agency_with_people: tuple[str, str, str]
) -> None:
    organization_id, person, other = agency_with_people
    first = open_session(db, person, organization_id)
    second = open_session(db, person, organization_id)
    signed_out = open_session(db, person, organization_id, ended=True)
    others = open_session(db, other, organization_id)

    response = client.post(f"/v1/users/{person}/disable", headers=admin.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["disabled"] is True and response.json["disabled_at"]
    assert response.json["memberships"] == [{"organization_id": organization_id, "roles": []}]
    assert sessions(db) == {
        first: (True, "disabled"),
        second: (True, "disabled"),
        signed_out: (True, "signed_out"),
        others: (False, None),
    }
    with db.session() as session:
        user = session.get(User, uuid.UUID(person))
        assert user is not None and user.disabled_at is not None and not user.active
    (event,) = audit_events(db, "user.")
    assert event.action == "user.disabled" and event.object_id == person
    assert event.after["sessions_ended"] == 2
    listed = all_pages(client, admin, members_url(organization_id))
    assert {m["user_id"]: m["disabled"] for m in listed} == {person: True, other: False}

    problem(client.post(f"/v1/users/{person}/disable", headers=admin.headers), 409, "user_disabled")
    assert len(audit_events(db, "user.")) == 1


def test_enabling_lets_a_person_back_without_reviving_sessions(
    client: FlaskClient, admin: ApiUser, db: Database, agency_with_people: tuple[str, str, str]
) -> None:
    organization_id, person, _other = agency_with_people
    ended = open_session(db, person, organization_id)
    problem(
        client.post(f"/v1/users/{person}/enable", headers=admin.headers), 409, "user_not_disabled"
    )
    client.post(f"/v1/users/{person}/disable", headers=admin.headers)
    response = client.post(f"/v1/users/{person}/enable", headers=admin.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["disabled"] is False and response.json["disabled_at"] is None
    assert sessions(db)[ended] == (True, "disabled")
    assert [e.action for e in audit_events(db, "user.")] == ["user.disabled", "user.enabled"]


def test_only_admins_disable_people_and_unknown_people_are_404(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    db: Database,
    agency_with_people: tuple[str, str, str],
) -> None:
    organization_id, person, _other = agency_with_people
    approver = make_user("agency", ["approver"], organization_id=organization_id)
    problem(client.post(f"/v1/users/{person}/disable", headers=approver.headers), 403)
    problem(client.post(f"/v1/users/{person}/enable", headers=approver.headers), 403)
    problem(client.post(f"/v1/users/{uuid.uuid4()}/disable", headers=admin.headers), 404)
    with db.session() as session:
        user = session.get(User, uuid.UUID(person))
        assert user is not None and user.disabled_at is None
