"""What every console page shares: signing in first, the language (the person's preference,
else the browser's), money and dates per locale, the security headers, the CSRF check, and
errors as pages in the person's language."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.models import User
from broker.services.invitations import email_key
from broker.web import i18n
from tests.console_support import BUYER, QC_BUYER, copy_demo, sign_in, text_of


def language_of(app: Flask, email: str) -> str:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        user = session.scalar(select(User).where(User.email_key == email_key(email)))
        assert user is not None
        return user.language


def test_someone_not_signed_in_is_sent_to_sign_in_and_back(demo_app: Flask) -> None:
    answer = demo_app.test_client().get("/catalogue?country=FR")
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/auth/login?next=")
    assert "catalogue" in answer.headers["Location"]


def test_pages_carry_the_security_headers(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER)
    for path in ("/catalogue", "/account", "/auth/signed-out"):
        headers = browser.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy, path
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "same-origin", path


def test_the_persons_language_then_the_browsers(demo_app: Flask) -> None:
    french = sign_in(demo_app, BUYER, "fr")
    page = french.get("/catalogue", headers={"Accept-Language": "en"})
    assert '<html lang="fr">' in page.get_data(as_text=True)
    assert "Se déconnecter" in text_of(page) and "Afficher les offres" in text_of(page)
    anonymous = demo_app.test_client()
    assert "You are signed out." in text_of(
        anonymous.get("/auth/signed-out", headers={"Accept-Language": "en-GB,en;q=0.9"})
    )
    assert "Vous êtes déconnecté·e." in text_of(
        anonymous.get("/auth/signed-out", headers={"Accept-Language": "fr-CA,fr;q=0.9"})
    )


def test_the_switch_remembers_the_language_and_needs_the_csrf_token(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "fr")
    forged = browser.client.post("/language", data={"language": "en", "next": "/catalogue"})
    assert forged.status_code == 403
    assert "Ce formulaire a expiré" in text_of(forged)
    assert language_of(demo_app, BUYER) == "fr"

    switched = browser.post("/language", {"language": "en", "next": "/catalogue"})
    assert switched.status_code == 303 and switched.headers["Location"] == "/catalogue"
    assert language_of(demo_app, BUYER) == "en"
    assert "Sign out" in text_of(browser.get("/catalogue"))

    elsewhere = browser.post("/language", {"language": "fr", "next": "https://evil.example/"})
    assert elsewhere.headers["Location"] == "/"


def test_money_and_numbers_follow_the_locale(demo_app: Flask) -> None:
    with demo_app.test_request_context(headers={"Accept-Language": "fr"}):
        assert i18n.money(Decimal("1234.56"), "EUR") == "1\u202f234,56\xa0€"
        assert i18n.money(Decimal("1234.56"), "CAD") == "1\u202f234,56\xa0$CA"
        assert i18n.number(Decimal("2.5")) == "2,5"
    with demo_app.test_request_context(headers={"Accept-Language": "en"}):
        assert i18n.money(Decimal("1234.56"), "EUR") == "€1,234.56"
        assert i18n.money(Decimal("1234.56"), "CAD") == "CA$1,234.56"


def test_a_bad_filter_is_said_by_its_field_and_an_unknown_page_is_a_page(
    demo_app: Flask,
) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    bad = browser.get("/catalogue?min_vcpu=many&country=France")
    assert bad.status_code == 422
    words = text_of(bad)
    assert "There is a problem" in words and "Enter a whole number." in words
    assert 'aria-invalid="true"' in bad.get_data(as_text=True)
    missing = browser.get("/catalogue/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "This page does not exist" in text_of(missing)


def test_a_mistyped_address_is_a_page_for_people_and_a_problem_for_programs(
    demo_app: Flask,
) -> None:
    anonymous = demo_app.test_client()
    page = anonymous.get("/catalog", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    assert "This page does not exist" in text_of(page) or "Cette page n’existe pas" in text_of(page)
    api = anonymous.get("/v1/nope", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    program = anonymous.get("/catalog")
    assert program.mimetype == "application/problem+json"


def test_a_person_searching_too_fast_is_told_to_wait_and_the_api_counts_the_same(
    demo_template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    # A day's window: the sliding window weighs the last one's count down (and rounds it) as
    # a new one starts, so three searches straddling a minute's end could all pass.
    app = copy_demo(demo_template, tmp_path / "demo", RATE_LIMIT_EXPENSIVE="2 per day")
    browser = sign_in(app, BUYER, "en")
    assert browser.get("/catalogue").status_code == 200
    assert browser.get("/compare?offer=x").status_code == 422  # counted: it searches too
    refused = browser.get("/catalogue?country=FR")
    assert refused.status_code == 429 and refused.mimetype == "text/html"
    assert "Too many requests; wait a moment and try again." in text_of(refused)
    assert "Retry-After" in refused.headers
    # The allowance is the person's, whichever way they come: the API refuses them too.
    api = browser.get("/v1/offers")
    assert api.status_code == 429
    # Another person is not slowed down.
    assert sign_in(app, QC_BUYER, "en").get("/catalogue").status_code == 200
    app.extensions["broker.db"].dispose()
