"""People sign in through an OpenID provider — here the demo's own, served by the broker
itself as `make run` serves it — and then act as themselves.

The broker runs on a real HTTP server (a thread), because signing in is a round trip between
the browser, the broker and the identity provider: the broker redeems the code at the
provider's token endpoint over HTTP, as it would at ProConnect. The test is the browser
(`requests`, cookies kept): authorization code flow with PKCE and a nonce, a session cookie,
`GET /v1/me`, an order placed as the person, audited under their name.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import make_server

from broker import create_app
from broker.db import Database
from broker.demo import seed_people
from broker.models import AuditEvent
from broker.seed import seed_demo
from tests.serving import free_port

BUYER = "acheteur@ands.example.fr"


@dataclass
class Live:
    app: Flask
    base_url: str
    people: dict[str, str]  # e-mail → password


@pytest.fixture
def live(app_config: dict[str, Any], tmp_path: Path) -> Iterator[Live]:
    """The demo consortium and its people, and the broker serving them on a free port."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = {**app_config, "OAUTH_ISSUER": base_url, "DEMO_IDP": True}
    db = Database(config["DATABASE_URL"])
    seed_demo(db, Path(config["INSTANCE_PATH"]) / "demo-credentials.json")
    people = {p.email: p.password for p in seed_people(db, config)}
    db.dispose()
    app = create_app(config)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(app, base_url, people)
    finally:
        server.shutdown()
        app.extensions["broker.db"].dispose()


def sign_in(live: Live, email: str, password: str | None = None) -> requests.Session:
    """A browser signed in."""
    answer = sign_in_answer(live, email, password)
    assert answer.status_code == 200, answer.text
    return answer.browser  # type: ignore[attr-defined,no-any-return]


def test_a_person_signs_in_reads_who_they_are_and_orders_as_themselves(live: Live) -> None:
    browser = sign_in(live, BUYER)
    cookie = next(c for c in browser.cookies if c.name == "broker_session")
    assert cookie.has_nonstandard_attr("HttpOnly")

    me = browser.get(f"{live.base_url}/v1/me", timeout=10)
    assert me.status_code == 200, me.text
    who = me.json()
    assert (who["kind"], who["email"], who["name"]) == ("person", BUYER, "David Moreau")
    assert who["roles"] == ["buyer"]
    [membership] = who["memberships"]
    assert membership["organization_name"] == "Agence nationale des données de santé"
    assert who["csrf_token"]

    offers = browser.get(f"{live.base_url}/v1/offers?q=hc-std-s-par", timeout=10).json()
    body = {"offer_id": offers["items"][0]["id"], "quantity": 1, "name": "poste-david"}
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    # A change made with the session cookie must echo the session's CSRF token.
    refused = browser.post(f"{live.base_url}/v1/orders", json=body, headers=headers, timeout=10)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    placed = browser.post(
        f"{live.base_url}/v1/orders",
        json=body,
        headers={**headers, "X-CSRF-Token": who["csrf_token"]},
        timeout=10,
    )
    assert placed.status_code == 201, placed.text
    person = f"person:{who['id']}"
    assert placed.json()["created_by"] == person

    database: Database = live.app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        event = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "order.placed", AuditEvent.object_id == placed.json()["id"]
            )
        ).one()
    assert event.actor_client_id == person
    assert str(event.actor_organization_id) == membership["organization_id"]


def test_a_wrong_password_gives_no_session(live: Live) -> None:
    answer = sign_in_answer(live, BUYER, "wrong")
    browser: requests.Session = answer.browser  # type: ignore[attr-defined]
    assert "broker_session" not in browser.cookies
    assert answer.url.startswith(f"{live.base_url}/demo-idp/authorize")
    assert browser.get(f"{live.base_url}/v1/me", timeout=10).status_code == 401


def test_signing_out_ends_the_session(live: Live) -> None:
    browser = sign_in(live, BUYER)
    token = browser.cookies["broker_session"]
    csrf = browser.get(f"{live.base_url}/v1/me", timeout=10).json()["csrf_token"]
    # Without the CSRF token, the form is refused and the session lives on.
    kept = browser.post(f"{live.base_url}/auth/logout", timeout=10)
    assert kept.status_code == 403
    assert browser.get(f"{live.base_url}/v1/me", timeout=10).status_code == 200
    out = browser.post(f"{live.base_url}/auth/logout", data={"csrf_token": csrf}, timeout=10)
    assert out.status_code == 200 and "Signed out" in out.text
    # The old cookie no longer opens anything.
    stale = requests.get(f"{live.base_url}/v1/me", cookies={"broker_session": token}, timeout=10)
    assert stale.status_code == 401
    assert json.loads(stale.text)["detail"] == "Your session has ended; sign in again."


def test_disabling_a_person_ends_their_sessions_on_the_next_request(live: Live) -> None:
    buyer = sign_in(live, BUYER)
    buyer_id = buyer.get(f"{live.base_url}/v1/me", timeout=10).json()["id"]
    admin = sign_in(live, "admin@consortium.example")
    csrf = admin.get(f"{live.base_url}/v1/me", timeout=10).json()["csrf_token"]

    disabled = admin.post(
        f"{live.base_url}/v1/users/{buyer_id}/disable", headers={"X-CSRF-Token": csrf}, timeout=10
    )

    assert disabled.status_code == 200, disabled.text
    assert buyer.get(f"{live.base_url}/v1/me", timeout=10).status_code == 401
    # Nor can they sign in again.
    again = sign_in_answer(live, BUYER)
    assert again.status_code == 403 and "withdrawn" in again.text


def sign_in_answer(live: Live, email: str, password: str | None = None) -> requests.Response:
    """A browser signing in: the broker sends it to the provider, which shows its form; the
    answer after the password (the browser in `answer.browser`)."""
    browser = requests.Session()
    browser.headers["Accept-Language"] = "en"  # the words asserted are English
    form = browser.get(f"{live.base_url}/auth/login", timeout=10)
    assert form.status_code == 200, form.text
    assert urlsplit(form.url).path == "/demo-idp/authorize"
    query = parse_qs(urlsplit(form.url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["nonce"] and query["state"]
    action = unescape(re.search(r'<form method="post" action="([^"]+)"', form.text)[1])  # type: ignore[index]
    answer = browser.post(
        f"{live.base_url}{action}",
        data={"email": email, "password": password or live.people[email]},
        timeout=10,
    )
    answer.browser = browser  # type: ignore[attr-defined]
    return answer
