"""The admin's pages: organizations, providers, API clients (a new secret shown once, on the
page answering the change), identity providers and the audit log with its chain's status."""

from __future__ import annotations

from flask import Flask

from broker.db import Database
from broker.models import ApiClient, Role
from broker.services import organizations
from tests.console_support import ADMIN, BUYER, organization_id, sign_in, text_of

CITY = "Ville de Québec"


def _client(app: Flask) -> tuple[ApiClient, str]:
    """A new API client of the city, and its secret."""
    database: Database = app.extensions["broker.db"]
    with database.transaction() as session:
        issued = organizations.create_client(
            session, None, organization_id(app, CITY), name="Export comptable", roles=[Role.BUYER]
        )
        return issued.client, issued.secret


def _token(app: Flask, client_id: str, secret: str) -> str:
    answer = app.test_client().post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return str(answer.json["access_token"])  # type: ignore[index]


def _me(app: Flask, token: str) -> int:
    return app.test_client().get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_an_admin_revokes_a_client_and_its_token_is_refused(demo_app: Flask) -> None:
    client, secret = _client(demo_app)
    token = _token(demo_app, client.client_id, secret)
    assert _me(demo_app, token) == 200
    browser = sign_in(demo_app, ADMIN, "en")
    city = organization_id(demo_app, CITY)
    listed = browser.get(f"/admin/clients?organization={city}")
    assert listed.status_code == 200
    assert "Export comptable" in text_of(listed) and browser.csrf_token in listed.get_data(
        as_text=True
    )

    revoked = browser.post(f"/admin/clients/{city}/{client.client_id}/revoke")
    assert revoked.status_code == 303 and secret not in (revoked.location or "")
    assert "The API client Export comptable is revoked." in text_of(browser.get(revoked.location))
    database: Database = demo_app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        assert session.get_one(ApiClient, client.id).revoked_at is not None
    assert _me(demo_app, token) == 401


def test_a_rotated_secret_is_shown_once_in_the_page(demo_app: Flask) -> None:
    client, old_secret = _client(demo_app)
    browser = sign_in(demo_app, ADMIN, "en")
    city = organization_id(demo_app, CITY)
    rotated = browser.post(f"/admin/clients/{city}/{client.client_id}/rotate")
    assert rotated.status_code == 200
    body = rotated.get_data(as_text=True)
    assert 'class="secret"' in body and "it will not be shown again" in text_of(rotated)
    secret = body.split("Client secret")[1].split("<code>")[1].split("</code>")[0]
    assert secret and secret != old_secret
    assert _me(demo_app, _token(demo_app, client.client_id, secret)) == 200
    again = browser.get(f"/admin/clients?organization={city}").get_data(as_text=True)
    assert secret not in again

    issued = browser.post(
        "/admin/clients", {"organization": str(city), "name": "Tableau de bord", "roles": ["buyer"]}
    )
    assert issued.status_code == 201 and 'class="secret"' in issued.get_data(as_text=True)
    refused = browser.post(
        "/admin/clients", {"organization": str(city), "name": "Mauvais", "roles": ["finance"]}
    )
    assert refused.status_code == 422 and 'id="error-roles"' in refused.get_data(as_text=True)


def test_the_audit_log_says_its_chain_is_verified(demo_app: Flask) -> None:
    browser = sign_in(demo_app, ADMIN, "en")
    log = browser.get("/admin/audit")
    assert log.status_code == 200
    words = text_of(log)
    assert "Chain verified" in words and "Newest first" in words
    filtered = text_of(browser.get("/admin/audit?object_type=api_client"))
    assert "api_client.created" in filtered and "order.placed" not in filtered


def test_the_other_admin_pages(demo_app: Flask) -> None:
    browser = sign_in(demo_app, ADMIN, "en")
    assert "Ville de Québec" in text_of(browser.get("/admin/organizations"))
    providers = text_of(browser.get("/admin/providers"))
    assert "Hexagone Cloud" in providers and "Evidence verified" in providers
    identity = browser.get("/admin/identity-providers")
    assert identity.status_code == 200 and "Add an identity provider" in text_of(identity)
    created = browser.post("/admin/organizations", {"name": "Mairie de Lyon", "kind": "agency"})
    assert created.status_code == 303
    assert "Mairie de Lyon is registered." in text_of(browser.get(created.location))
    empty = browser.post("/admin/organizations", {"name": "", "kind": "agency"})
    assert empty.status_code == 422 and 'id="error-name"' in empty.get_data(as_text=True)


def test_a_buyer_is_refused_and_a_post_needs_the_csrf_token(demo_app: Flask) -> None:
    client, _secret = _client(demo_app)
    city = organization_id(demo_app, CITY)
    buyer = sign_in(demo_app, BUYER, "en")
    assert buyer.get("/admin/clients").status_code == 403
    assert buyer.post(f"/admin/clients/{city}/{client.client_id}/revoke").status_code == 403
    admin = sign_in(demo_app, ADMIN, "en")
    forged = admin.client.post(f"/admin/clients/{city}/{client.client_id}/revoke")
    assert forged.status_code == 403
    database: Database = demo_app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        assert session.get_one(ApiClient, client.id).revoked_at is None
