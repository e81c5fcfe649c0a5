"""Test fixtures: a real database per test, real apps, real tokens.

`pytest` runs on SQLite (a migrated template copied per test). `pytest --db=postgresql`
starts a throwaway PostgreSQL cluster (see tests/pgcluster.py), migrates one database and
empties its tables after each test; `BROKER_TEST_POSTGRES_URL` points at an existing server
instead. No test bypasses authentication: callers get tokens from `POST /oauth/token`.

Every test gets its own app (`create_app`) and its own empty database. Only what cannot
differ between tests is shared by the session: the signing key (its PEM, and the key parsed
from it, which OpenSSL takes tens of milliseconds to check) and, on PostgreSQL, the
connection that empties the tables.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from joserfc.jwk import RSAKey
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from werkzeug.routing import Rule

from broker import create_app
from broker.db import Database
from broker.migrate import upgrade
from broker.models import Base, OrganizationKind, Role
from broker.services import organizations
from broker.services.audit import GENESIS_HASH
from tests.pgcluster import PostgresCluster
from tests.serving import serve_environment

# Fixtures of the console tests (a seeded demo, people signed in): tests/console_support.py.
pytest_plugins = ["tests.console_support"]

if TYPE_CHECKING:
    from tests.billing_fixtures import Ledger


def _share_url_builders() -> None:
    """Every test builds its own app, and werkzeug compiles each of its ~170 routes' URL
    builders anew (Python code generated through `ast`): three quarters of `create_app`'s
    ~55 ms, some 300 CPU-seconds of `make test`. A builder is a pure function of the rule's
    text, its parsed parts and defaults (the rule itself is an argument when it is called), so
    the tests share one per distinct rule. Left alone if werkzeug's private method changes."""
    original = getattr(Rule, "_compile_builder", None)
    if original is None or getattr(original, "shared", False):
        return
    built: dict[tuple[Any, ...], Any] = {}

    def shared(self: Rule, append_unknown: bool = True) -> Any:
        key = (
            self.rule,
            tuple(self._trace),
            repr(sorted((self.defaults or {}).items())),
            append_unknown,
        )
        if key not in built:
            built[key] = original(self, append_unknown)
        return built[key]

    shared.shared = True  # type: ignore[attr-defined]
    Rule._compile_builder = shared  # type: ignore[method-assign]


_share_url_builders()

hypothesis_settings.register_profile("broker", derandomize=True, deadline=None)
hypothesis_settings.load_profile("broker")

_cluster: PostgresCluster | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="Database to run the suite on (postgresql starts a throwaway cluster).",
    )


# Suites that never touch the database: the PostgreSQL run skips them (the SQLite run has them).
DATABASE_FREE = (
    "tests/adapters/",
    "tests/billing/",
    "tests/test_demo_idp.py",
    "tests/test_layering.py",
    "tests/test_names.py",
    "tests/test_statements.py",
    "tests/test_translations.py",
)


# Run once, by the SQLite run: what a newcomer runs on `make run`'s embedded database (the
# README, `broker serve`, the command line, the demo), and the console's pages, whose database
# work is the services', which the API tests run on both databases.
EMBEDDED_ONLY = (
    "tests/test_readme.py",
    "tests/test_serve.py",
    "tests/test_cli.py",
    "tests/test_console",
    # The demo consortium, its history and its catalogue: what `make run` seeds there.
    "tests/test_demo_history.py",
    "tests/test_seed_catalogue.py",
    "tests/test_order_flow_demo.py",
    "tests/test_demo_vault.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--db") != "postgresql":
        return
    skip = pytest.mark.skip(reason="no database involved: run by the SQLite run")
    embedded = pytest.mark.skip(reason="run once, by the SQLite run (see EMBEDDED_ONLY)")
    for item in items:
        if item.nodeid.startswith(DATABASE_FREE):
            item.add_marker(skip)
        elif item.nodeid.startswith(EMBEDDED_ONLY):
            item.add_marker(embedded)


def pytest_configure(config: pytest.Config) -> None:
    global _cluster
    if config.getoption("--db") != "postgresql" or hasattr(config, "workerinput"):
        return
    external = os.environ.get("BROKER_TEST_POSTGRES_URL")
    if external:
        config.broker_pg_url = external  # type: ignore[attr-defined]
        config.broker_pg_note = "existing server from BROKER_TEST_POSTGRES_URL"  # type: ignore[attr-defined]
    else:
        _cluster = PostgresCluster()
        _cluster.start()
        print(
            f"throwaway PostgreSQL cluster started on 127.0.0.1:{_cluster.port} "
            f"(initdb + pg_ctl in {_cluster.root})",
            file=sys.stderr,
        )
        config.broker_pg_url = _cluster.create_database("broker_test")  # type: ignore[attr-defined]
        config.broker_pg_note = (  # type: ignore[attr-defined]
            f"throwaway PostgreSQL cluster started on 127.0.0.1:{_cluster.port}"
        )
    upgrade(config.broker_pg_url)  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("--db") == "postgresql":
        return f"database: PostgreSQL — {config.broker_pg_note}"  # type: ignore[attr-defined]
    return "database: SQLite (migrated template, copied per test)"


def pytest_unconfigure(config: pytest.Config) -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        print(f"\nthrowaway PostgreSQL cluster on port {_cluster.port} stopped", file=sys.stderr)
        _cluster = None


@pytest.fixture(scope="session")
def db_kind(pytestconfig: pytest.Config) -> str:
    return str(pytestconfig.getoption("--db"))


@pytest.fixture(scope="session")
def signing_key_pem() -> Iterator[str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.MonkeyPatch.context() as patch:
        _parse_pem_once(patch, pem, key)
        yield pem.decode()


def _parse_pem_once(patch: pytest.MonkeyPatch, pem: bytes, key: rsa.RSAPrivateKey) -> None:
    """Every app imports the session's signing key (`RSAKey.import_key(pem)`), and loading an
    RSA private key from PEM makes OpenSSL check it (~50 ms, more than a token request).
    Answer that one PEM with the key it was made from: each app still builds its own
    `RSAKey` around it. Any other PEM (key files, foreign keys of the tests) is parsed for
    real."""
    binding = RSAKey.binding
    parse = binding.import_from_bytes

    def import_from_bytes(value: bytes, password: str | bytes | None = None) -> Any:
        if password is None and value == pem:
            return key
        return parse(value, password)

    patch.setattr(binding, "import_from_bytes", import_from_bytes)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "broker.db"
    upgrade(f"sqlite:///{path}")
    return path


class PostgresEmptier:
    """Empties every table of `Base.metadata` (tables added later included) and resets the
    audit chain's head, over one connection kept for the whole session.

    `DELETE`, children before parents, in one transaction: on tables holding a test's few
    rows it costs next to nothing, where `TRUNCATE` of every table recreated each table's
    files (~0.1 s a test). Should the deletes fail (say, a future cycle of foreign keys), the
    former `TRUNCATE … CASCADE` of every table empties them instead.
    """

    def __init__(self, url: str) -> None:
        self.database = Database(url)

    def _tables(self) -> list[str]:
        quote = self.database.engine.dialect.identifier_preparer.format_table
        return [quote(t) for t in Base.metadata.sorted_tables if t.name != "audit_chain_head"]

    def empty(self) -> None:
        tables = self._tables()
        deletes = "".join(f"DELETE FROM {table}; " for table in reversed(tables))
        try:
            with self.database.engine.begin() as connection:
                connection.execute(text(f"DO $$ BEGIN {deletes}END $$"))
                self._reset_audit_head(connection)
        except DBAPIError:
            with self.database.engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
                self._reset_audit_head(connection)

    @staticmethod
    def _reset_audit_head(connection: Connection) -> None:
        connection.execute(
            text("UPDATE audit_chain_head SET seq = 0, hash = :genesis"),
            {"genesis": GENESIS_HASH},
        )

    def dispose(self) -> None:
        self.database.dispose()


@pytest.fixture(scope="session")
def postgres_emptier(pytestconfig: pytest.Config) -> Iterator[PostgresEmptier]:
    emptier = PostgresEmptier(pytestconfig.broker_pg_url)  # type: ignore[attr-defined]
    yield emptier
    emptier.dispose()


@pytest.fixture
def database_url(
    db_kind: str, tmp_path: Path, pytestconfig: pytest.Config, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A migrated, empty database for this test."""
    if db_kind == "postgresql":
        url: str = pytestconfig.broker_pg_url  # type: ignore[attr-defined]
        emptier: PostgresEmptier = request.getfixturevalue("postgres_emptier")
        yield url
        emptier.empty()
    else:
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "broker.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"


# The consortium as the tests' invoices name it (its identity is required configuration).
TEST_SELLER = {
    "name": "Sovereign Cloud Consortium",
    "legal_id": "12345678900017",
    "legal_id_scheme": "0002",
    "vat_id": "FR32123456789",
    "address": "12 rue de l'Arsenal",
    "post_code": "75004",
    "city": "Paris",
    "country": "FR",
}


@pytest.fixture
def app_config(
    database_url: str, tmp_path: Path, signing_key_pem: str, credential_key: str
) -> dict[str, Any]:
    return {
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SIGNING_KEY": signing_key_pem,
        "CREDENTIAL_KEYS": credential_key,
        "SECRET_KEY": "the tests' cookie key",
        "PROVIDER_STATE_DIR": str(tmp_path / "providers"),
        "PROVIDER_TIMEOUT": 2.0,
        "TESTING": True,
        "SELLER": TEST_SELLER,
        "JSON_LOGS": False,
        "LOG_LEVEL": "WARNING",
        "IDEMPOTENCY_WAIT_SECONDS": 30.0,
        # Counted, but far beyond what any test sends (tests/test_rate_limits.py sets its own).
        "RATE_LIMIT_PER_CLIENT": "1000000 per minute",
        "RATE_LIMIT_PER_ADDRESS": "1000000 per minute",
        "RATE_LIMIT_TOKEN": "1000000 per minute",
        "RATE_LIMIT_EXPENSIVE": "1000000 per minute",
    }


@pytest.fixture(scope="session")
def credential_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(app_config)
    yield application
    application.extensions["broker.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Database:
    database: Database = app.extensions["broker.db"]
    return database


@dataclass
class ApiUser:
    """A real API client of a real organization, holding a real access token."""

    client_id: str
    client_secret: str
    organization_id: str
    roles: list[str]
    token: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **self.extra_headers}


def fetch_token(client: FlaskClient, client_id: str, secret: str) -> str:
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    token: str = response.json["access_token"]  # type: ignore[index]
    return token


MakeUser = Callable[..., ApiUser]


@pytest.fixture
def make_user(db: Database, client: FlaskClient) -> MakeUser:
    """`make_user(kind, roles, organization_id=None)` → an `ApiUser` with a fresh token."""

    def make(
        kind: str = "agency",
        roles: tuple[str, ...] | list[str] = ("buyer",),
        organization_id: str | None = None,
        name: str | None = None,
    ) -> ApiUser:
        with db.transaction() as session:
            if organization_id is None:
                organization = organizations.create_organization(
                    session,
                    None,
                    name=name or f"{kind} {uuid.uuid4().hex[:8]}",
                    kind=OrganizationKind(kind),
                )
                organization_id = str(organization.id)
            issued = organizations.create_client(
                session,
                None,
                uuid.UUID(organization_id),
                name="test client",
                roles=[Role(role) for role in roles],
            )
            client_id, secret = issued.client.client_id, issued.secret
        return ApiUser(
            client_id, secret, organization_id, list(roles), fetch_token(client, client_id, secret)
        )

    return make


@pytest.fixture
def admin(make_user: MakeUser) -> ApiUser:
    return make_user("consortium", ["admin"], name="Test Consortium")


@pytest.fixture
def buyer(make_user: MakeUser) -> ApiUser:
    return make_user("agency", ["buyer"])


@pytest.fixture
def ledger(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> Ledger:
    """A market on a clock the test moves, with its provider's operator and finance."""
    from tests.billing_fixtures import make_ledger  # it builds on this module's fixtures

    return make_ledger(app, client, db, admin, make_user)


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.collect()
    gc.freeze()


@pytest.fixture
def serve_env(
    db_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """The environment of a real `broker serve` (tests/serving.py) on this test's own
    instance directory, database and free port."""
    instance = tmp_path / "instance"
    if db_kind == "postgresql":
        database_url: str = request.getfixturevalue("database_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = serve_environment(database_url, instance, tmp_path)
    yield env
