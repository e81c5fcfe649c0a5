"""A second, independent OpenID provider (tests/fake_oidc.py: its own issuer and keys, a
`siret` claim), registered by an admin like ProConnect would be. A person whose `siret` matches
an agency joins it with no roles; an approver grants `buyer`; they can then order. ID tokens
that do not hold (a foreign signature, another audience, an old nonce, another issuer, expired)
are refused with a page saying why, and nothing is stored."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server

from broker.auth.identity import Caller
from broker.db import Database
from broker.models import BrowserSession, OrganizationKind, Role, User
from broker.models.base import use_clock
from broker.services import invitations
from tests.catalogue_fixtures import make_provider, published_offer
from tests.conftest import ApiUser, MakeUser
from tests.fake_oidc import FakeOidc, serving
from tests.serving import free_port
from tests.test_invitations import Inbox, run_jobs, smtp  # noqa: F401 - smtp is a fixture

SIRET = "13002526500013"
PERSON = {
    "sub": "agent-4242",
    "email": "camille.durand@agence.example.gouv.fr",
    "given_name": "Camille",
    "usual_name": "Durand",
    "siret": SIRET,
}


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def app_config(app_config: dict[str, Any], port: int) -> dict[str, Any]:
    """The broker as it will be reached (its issuer), allowed to call the local provider."""
    return {
        **app_config,
        "OAUTH_ISSUER": f"http://127.0.0.1:{port}",
        "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True,
    }


@pytest.fixture
def base_url(app: Flask, port: int) -> Iterator[str]:
    """The broker on a real port: the provider sends the browser back to it."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@pytest.fixture
def fake() -> Iterator[FakeOidc]:
    with serving(dict(PERSON)) as provider:
        yield provider


@pytest.fixture
def agency(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ApiUser:
    """An agency known by its siret, and its approver."""
    approver = make_user("agency", ["approver"])
    registered = client.post(
        f"/v1/organizations/{approver.organization_id}/identifiers",
        json={"scheme": "siret", "value": SIRET},
        headers=admin.headers,
    )
    assert registered.status_code == 201, registered.get_data(as_text=True)
    return approver


@pytest.fixture
def provider_id(client: FlaskClient, admin: ApiUser, fake: FakeOidc) -> str:
    created = client.post(
        "/v1/identity-providers",
        json={
            "name": "ProConnect (test)",
            "issuer": fake.issuer,
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "scopes": "openid email profile siret",
            "organization_claim": "siret",
            "match_email_domain": False,
        },
        headers=admin.headers,
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    return str(created.json["id"])


def browser_sign_in(base_url: str, provider_id: str) -> requests.Response:
    browser = requests.Session()
    browser.headers["Accept-Language"] = "en"  # the words asserted are English
    answer = browser.get(f"{base_url}/auth/login", params={"provider": provider_id}, timeout=10)
    answer.browser = browser  # type: ignore[attr-defined]
    return answer


def test_a_person_of_an_agency_by_siret_joins_without_roles_until_granted(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    agency: ApiUser,
    provider_id: str,
    base_url: str,
) -> None:
    answer = browser_sign_in(base_url, provider_id)
    assert answer.status_code == 200, answer.text
    browser: requests.Session = answer.browser  # type: ignore[attr-defined]
    me = browser.get(f"{base_url}/v1/me", timeout=10).json()
    assert (me["kind"], me["email"], me["name"]) == ("person", PERSON["email"], "Camille Durand")
    assert str(me["organization_id"]) == agency.organization_id
    assert me["roles"] == []
    # New to the broker: the console speaks the language their browser asked for.
    assert me["language"] == "en"

    setup = make_provider(client, admin, make_user)
    offer, _ = published_offer(client, setup.operator, setup.id)
    order = {"offer_id": offer["id"], "quantity": 1, "name": "poste-camille"}

    def place() -> requests.Response:
        return browser.post(
            f"{base_url}/v1/orders",
            json=order,
            headers={"Idempotency-Key": str(uuid.uuid4()), "X-CSRF-Token": me["csrf_token"]},
            timeout=10,
        )

    refused = place()
    assert refused.status_code == 403, refused.text
    assert refused.json()["required_roles"] == ["buyer"]

    granted = client.put(
        f"/v1/organizations/{agency.organization_id}/members/{me['id']}",
        json={"roles": ["buyer"]},
        headers=agency.headers,
    )
    assert granted.status_code == 200, granted.get_data(as_text=True)
    placed = place()
    assert placed.status_code == 201, placed.text
    assert placed.json()["created_by"] == f"person:{me['id']}"


@pytest.mark.parametrize("spoil", ["signature", "audience", "nonce", "issuer", "expired"])
def test_an_id_token_that_does_not_hold_is_refused_and_nothing_is_stored(
    spoil: str, db: Database, agency: ApiUser, provider_id: str, base_url: str, fake: FakeOidc
) -> None:
    fake.spoil = spoil
    answer = browser_sign_in(base_url, provider_id)
    assert answer.status_code == 400, answer.text
    assert "Sign-in failed" in answer.text
    assert "broker_session" not in answer.browser.cookies  # type: ignore[attr-defined]
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
        assert session.scalar(select(func.count()).select_from(BrowserSession)) == 0


# The pages' words these tests read are English (a browser's Accept-Language chooses).
EN = {"Accept-Language": "en"}


def test_an_unknown_provider_and_a_stale_callback_are_refused_with_a_page(
    base_url: str, provider_id: str
) -> None:
    unknown = requests.get(
        f"{base_url}/auth/login", params={"provider": str(uuid.uuid4())}, headers=EN, timeout=10
    )
    assert unknown.status_code == 404 and "No such identity provider" in unknown.text
    stale = requests.get(f"{base_url}/auth/callback?code=x&state=y", headers=EN, timeout=10)
    assert stale.status_code == 400 and "expired" in stale.text


def test_a_new_persons_language_is_their_providers_locale_before_their_browsers(
    base_url: str, provider_id: str, fake: FakeOidc, agency: ApiUser
) -> None:
    fake.person["locale"] = "fr-CA"
    answer = browser_sign_in(base_url, provider_id)  # the browser asks for English
    assert answer.status_code == 200, answer.text
    me = answer.browser.get(f"{base_url}/v1/me", timeout=10).json()  # type: ignore[attr-defined]
    assert me["language"] == "fr"


def test_a_person_whose_organization_is_unknown_is_told_to_ask_for_an_invitation(
    base_url: str, provider_id: str, fake: FakeOidc, db: Database
) -> None:
    fake.person["siret"] = "99999999999999"  # no agency has it
    answer = browser_sign_in(base_url, provider_id)
    assert answer.status_code == 403
    assert "not registered with the broker" in answer.text
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


# --- invitations ----------------------------------------------------------------------------


def test_an_emailed_invitation_lets_the_invitee_sign_in_with_its_roles_once(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    agency: ApiUser,
    provider_id: str,
    base_url: str,
    fake: FakeOidc,
    smtp: Inbox,  # noqa: F811 - the fixture imported above
) -> None:
    fake.person["siret"] = "99999999999999"  # the agency is not found by the claim: invited
    invited = client.post(
        f"/v1/organizations/{agency.organization_id}/invitations",
        json={"email": PERSON["email"], "roles": ["buyer"]},
        headers=agency.headers,
    )
    assert invited.status_code == 201 and invited.json["emailed"], invited.get_data(as_text=True)
    assert run_jobs(app, db) >= 1
    [(recipients, message)] = smtp.messages
    assert recipients == [PERSON["email"]]
    link = re.search(r"http://\S+/invitations/\S+", message.get_content())[0]  # type: ignore[index]

    landing = requests.get(link, headers=EN, timeout=10)
    assert landing.status_code == 200 and "Sign in with your identity provider" in landing.text

    answer = browser_sign_in(base_url, provider_id)
    assert answer.status_code == 200, answer.text
    me = answer.browser.get(f"{base_url}/v1/me", timeout=10).json()  # type: ignore[attr-defined]
    assert me["roles"] == ["buyer"]
    assert str(me["organization_id"]) == agency.organization_id
    # Used: the link says so.
    used = requests.get(link, timeout=10)
    assert used.status_code == 410


def test_an_expired_invitation_gives_nothing(
    app: Flask, db: Database, admin: ApiUser, agency: ApiUser, provider_id: str, base_url: str,
    fake: FakeOidc,
) -> None:  # fmt: skip
    fake.person["siret"] = "99999999999999"
    long_ago = datetime.now(UTC) - timedelta(days=30)
    with use_clock(lambda: long_ago), db.transaction() as session:
        invitations.invite(
            session,
            ADMIN_CALLER(admin),
            uuid.UUID(agency.organization_id),
            str(PERSON["email"]),
            ["buyer"],
            long_ago,
            timedelta(days=7),
        )
    answer = browser_sign_in(base_url, provider_id)
    assert answer.status_code == 403 and "not registered" in answer.text
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0


def ADMIN_CALLER(admin: ApiUser) -> Caller:  # noqa: N802 - reads as the caller it is
    return Caller(
        client_id=admin.client_id,
        organization_id=uuid.UUID(admin.organization_id),
        organization_kind=OrganizationKind.CONSORTIUM,
        roles=frozenset({Role.ADMIN}),
    )
