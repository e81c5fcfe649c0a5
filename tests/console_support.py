"""Console tests on the demo consortium, signed in as its people.

The demo (catalogue, agencies, providers, people and a closed month of history) is seeded
once per test session into a template directory (database and simulated clouds); each test
gets its own copy of it (`demo_app`), so tests change what they like. A person is signed in
by opening a real browser session for them (`people.open_session`) and giving its cookie to a
Flask test client (`Browser`); the page's forms post the session's CSRF token as a person's
browser would.

Console tests render pages: the SQLite run has them (the services under them are tested on
both databases by the API tests).
"""

from __future__ import annotations

import html
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from broker import create_app
from broker.db import Database
from broker.demo import seed_people
from broker.models import Membership, Organization, User
from broker.models.base import utcnow
from broker.seed import seed_demo
from broker.services import people
from broker.services.invitations import email_key
from tests.conftest import TEST_SELLER

# The demo people (broker/demo.py), by what they do.
BUYER = "acheteur@ands.example.fr"
APPROVER = "approbatrice@ands.example.fr"
QC_BUYER = "acheteuse@ville-quebec.example"
OPERATOR = "exploitation@hexagone-cloud.example"
ASSESSOR = "evaluatrice@consortium.example"
FINANCE = "finance@consortium.example"
ADMIN = "admin@consortium.example"


def _config(root: Path, base: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        "DATABASE_URL": f"sqlite:///{root / 'broker.db'}",
        "INSTANCE_PATH": str(root / "instance"),
        "PROVIDER_STATE_DIR": str(root / "providers"),
    }


@pytest.fixture(scope="session")
def demo_template(
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    signing_key_pem: str,
    credential_key: str,
) -> tuple[Path, dict[str, Any]]:
    """A seeded demo (database, instance, simulated clouds), made once."""
    root = tmp_path_factory.mktemp("demo-console")
    shutil.copyfile(sqlite_template, root / "broker.db")
    base = {
        "SIGNING_KEY": signing_key_pem,
        "CREDENTIAL_KEYS": credential_key,
        "SECRET_KEY": "the tests' cookie key",
        "PROVIDER_TIMEOUT": 2.0,
        "TESTING": True,
        "SELLER": TEST_SELLER,
        "JSON_LOGS": False,
        "LOG_LEVEL": "WARNING",
        # People are signed in here by opening their sessions (`sign_in`): the demo's identity
        # provider, which hashes every demo password when mounted, is not needed.
        "DEMO_IDP": False,
        "RATE_LIMIT_PER_CLIENT": "1000000 per minute",
        "RATE_LIMIT_PER_ADDRESS": "1000000 per minute",
        "RATE_LIMIT_TOKEN": "1000000 per minute",
        "RATE_LIMIT_EXPENSIVE": "1000000 per minute",
    }
    app = create_app(_config(root, base))
    database: Database = app.extensions["broker.db"]
    seed_demo(database, root / "instance" / "demo-credentials.json", app.config)
    seed_people(database, dict(app.config))
    database.dispose()
    return root, base


def copy_demo(
    demo_template: tuple[Path, dict[str, Any]], into: Path, **overrides: Any
) -> Flask:
    """An app on a copy of the seeded demo, with settings of its own."""
    root, base = demo_template
    shutil.copytree(root, into)
    return create_app({**_config(into, base), **overrides})


@pytest.fixture
def demo_app(demo_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> Iterator[Flask]:
    """This test's own copy of the seeded demo."""
    app = copy_demo(demo_template, tmp_path / "demo")
    yield app
    app.extensions["broker.db"].dispose()


@dataclass
class Browser:
    """A signed-in person's browser: a test client holding their session cookie."""

    client: FlaskClient
    csrf_token: str
    email: str

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> TestResponse:
        """Post a form as the page would: with the session's CSRF token."""
        form = {people.CSRF_FIELD: self.csrf_token, **(data or {})}
        return self.client.post(path, data=form, **kwargs)


def sign_in(app: Flask, email: str, language: str = "en") -> Browser:
    """A browser signed in as the demo person `email`, reading the console in `language`."""
    database: Database = app.extensions["broker.db"]
    with database.transaction() as session:
        user = session.scalar(select(User).where(User.email_key == email_key(email)))
        assert user is not None, email
        user.language = language
        membership = session.scalars(
            select(Membership).where(Membership.user_id == user.id)
        ).first()
        assert membership is not None
        organization = session.get_one(Organization, membership.organization_id)
        row, token = people.open_session(
            session, people.SignedIn(user, organization), None, None, utcnow()
        )
        csrf = row.csrf_token
    client = app.test_client()
    client.set_cookie(people.SESSION_COOKIE, token)
    return Browser(client, csrf, email)


def text_of(response: TestResponse) -> str:
    """A page's words, tags removed and spaces collapsed (what a person reads)."""
    body = response.get_data(as_text=True)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def organization_id(app: Flask, name: str) -> uuid.UUID:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        found = session.scalar(select(Organization.id).where(Organization.name == name))
    assert found is not None, name
    return found
