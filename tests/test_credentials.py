"""Provider credentials, as an auditor checks them: write-only, encrypted, bound, rotatable.

`PUT /v1/providers/{id}/credentials` stores an adapter's secrets encrypted (Fernet, see
broker/services/credentials.py); nothing ever gives them back: not the API (field names
only), not the audit log, not a log line, not a dump of the database. A ciphertext copied to
another provider's row does not decrypt there. `broker keys rotate [--new-key]` re-encrypts
every row under a new key and `broker keys drop-old` forgets the old one, refusing while a
row still needs it. The CLI runs in-process (Click's runner) against the test's database with
the environment an operator would give it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, make_url, select, text, update

import broker.cli as cli_module
from broker import create_app
from broker.db import Database
from broker.models import AuditEvent, ProviderCredentials
from broker.services import credentials
from broker.services.credentials import CredentialsUnreadable, Keyring, KeyringError
from tests.catalogue_fixtures import ProviderSetup, make_provider
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _url(provider_id: str) -> str:
    return f"/v1/providers/{provider_id}/credentials"


def _put(client: FlaskClient, user: ApiUser, provider_id: str, creds: dict[str, Any]) -> Any:
    return client.put(_url(provider_id), json={"credentials": creds}, headers=user.headers)


def _password_creds() -> dict[str, str]:
    """OpenStack password credentials with values found nowhere else."""
    return {
        "username": f"svc-user-{uuid.uuid4().hex}",
        "password": f"Pw-{uuid.uuid4().hex}-{uuid.uuid4().hex}",
    }


def _row(db: Database, provider_id: str) -> ProviderCredentials | None:
    with db.session(read_only=True) as session:
        return session.get(ProviderCredentials, uuid.UUID(provider_id))


def _ciphertexts(db: Database) -> dict[str, str]:
    with db.session(read_only=True) as session:
        rows = session.scalars(select(ProviderCredentials)).all()
        return {str(row.provider_id): row.ciphertext for row in rows}


def _credential_events(db: Database) -> list[AuditEvent]:
    with db.session(read_only=True) as session:
        statement = (
            select(AuditEvent)
            .where(AuditEvent.action.like("provider.credentials%"))
            .order_by(AuditEvent.seq)
        )
        return list(session.scalars(statement))


@pytest.fixture
def provider(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    return make_provider(client, admin, make_user)


@pytest.fixture
def other(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    return make_provider(client, admin, make_user)


# --- write-only: field names out, values nowhere ----------------------------------------------


def test_operator_sets_credentials_and_only_field_names_ever_come_back(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    provider: ProviderSetup,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything logged during the requests, SQL statements and their parameters included.
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy", "werkzeug", "broker", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    creds = _password_creds()
    secret, username = creds["password"], creds["username"]
    operator = provider.operator

    put = _put(client, operator, provider.id, creds)
    assert put.status_code == 200, put.get_data(as_text=True)
    assert set(put.json) == {"fields", "updated_at"}
    assert put.json["fields"] == ["password", "username"]

    got = client.get(_url(provider.id), headers=operator.headers)
    assert got.status_code == 200
    assert got.json == put.json
    by_admin = client.get(_url(provider.id), headers=admin.headers)
    assert by_admin.status_code == 200
    assert by_admin.json["fields"] == ["password", "username"]

    records = list(caplog.records)  # the requests' log, before the test's own queries
    bodies = [put, got, by_admin]
    bodies.append(client.get(f"/v1/providers/{provider.id}", headers=operator.headers))
    bodies.append(client.get("/v1/providers", headers=admin.headers))
    audit_pages = [
        client.get(f"/v1/audit-events?object_id={provider.id}", headers=user.headers)
        for user in (admin, operator)
    ]
    bodies.extend(audit_pages)
    for response in bodies:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert secret not in body
        assert username not in body

    # The audit log records the change with the field names only.
    events = [e for e in audit_pages[0].json["items"] if e["action"].startswith("provider.cred")]
    assert [(e["action"], e["before"], e["after"]) for e in events] == [
        ("provider.credentials_set", None, {"fields": ["password", "username"]})
    ]
    assert events[0]["actor_client_id"] == operator.client_id
    with db.session(read_only=True) as session:
        for event in session.scalars(select(AuditEvent)):
            stored = json.dumps([event.before, event.after, event.object_id], default=str)
            assert secret not in stored
            assert username not in stored

    # The capture worked (access log and SQL parameters are in it) and holds no value.
    ciphertext = _ciphertexts(db)[provider.id]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in records)
    assert any(getattr(r, "path", None) == _url(provider.id) for r in records)
    # SQLAlchemy shortens long parameters: the ciphertext's start is what it logs.
    assert ciphertext[:60] in logged, "SQL parameters were not logged: the check proves nothing"
    assert secret not in logged
    assert username not in logged
    assert secret not in caplog.text


def _dump(database_url: str, db: Database) -> str:
    """Every stored byte of every table, the way an operator's backup would hold it."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        with sqlite3.connect(url.database) as connection:
            dump = "\n".join(connection.iterdump())
        raw = b"".join(
            Path(url.database + suffix).read_bytes()
            for suffix in ("", "-wal", "-journal")
            if Path(url.database + suffix).exists()
        )
        return dump + "\n" + raw.decode("latin-1")
    with db.engine.connect() as connection:
        tables = connection.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ).scalars()
        rows = [
            str(value)
            for table in list(tables)
            for value in connection.execute(text(f'SELECT CAST(t AS text) FROM "{table}" AS t'))
            .scalars()
            .all()
        ]
    dump = "\n".join(rows)
    pg_dump = shutil.which("pg_dump")
    if pg_dump is not None:
        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        result = subprocess.run(
            [pg_dump, "--no-owner", plain], capture_output=True, text=True, timeout=60
        )
        if "version mismatch" not in result.stderr:
            assert result.returncode == 0, result.stderr
            assert "provider_credentials" in result.stdout
            dump += "\n" + result.stdout
    return dump


def test_a_database_dump_holds_the_ciphertext_and_no_secret_in_clear(
    client: FlaskClient,
    db: Database,
    database_url: str,
    provider: ProviderSetup,
    other: ProviderSetup,
) -> None:
    first, second = (
        _password_creds(),
        {
            "application_credential_id": f"appcred-{uuid.uuid4().hex}",
            "application_credential_secret": f"AppSecret-{uuid.uuid4().hex}",
        },
    )
    assert _put(client, provider.operator, provider.id, first).status_code == 200
    assert _put(client, other.operator, other.id, second).status_code == 200
    stored = _ciphertexts(db)
    assert set(stored) == {provider.id, other.id}

    dump = _dump(database_url, db)

    for ciphertext in stored.values():
        assert ciphertext in dump
    assert "provider_credentials" in dump
    for value in [*first.values(), *second.values()]:
        assert value not in dump, "a provider secret is stored in clear"
    # Each ciphertext is a Fernet token that reads back as exactly what was sent.
    keyring = Keyring.from_config(client.application.config)
    assert keyring.decrypt(uuid.UUID(provider.id), stored[provider.id]) == first
    assert keyring.decrypt(uuid.UUID(other.id), stored[other.id]) == second


# --- validation ---------------------------------------------------------------------------------

_VALID = {"username": "svc", "password": "Refused-Secret-0f3a9c"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"credentials": {**_VALID, "token": "t"}}, "credentials.token", id="unknown"),
        pytest.param(
            {"credentials": {"username": "svc"}}, "credentials.password", id="username-only"
        ),
        pytest.param(
            {"credentials": {"password": _VALID["password"]}},
            "credentials.username",
            id="password-only",
        ),
        pytest.param(
            {"credentials": {"application_credential_id": "app-id"}},
            "credentials.application_credential_secret",
            id="app-id-only",
        ),
        pytest.param(
            {
                "credentials": {
                    **_VALID,
                    "application_credential_id": "i",
                    "application_credential_secret": "s",
                }
            },
            "credentials",
            id="both-kinds",
        ),
        pytest.param(
            {"credentials": {"username": 42, "password": _VALID["password"]}},
            "credentials.username.value",
            id="number",
        ),
        pytest.param(
            {"credentials": {"username": None, "password": _VALID["password"]}},
            "credentials.username.value",
            id="null",
        ),
        pytest.param(
            {"credentials": {"username": ["svc"], "password": _VALID["password"]}},
            "credentials.username.value",
            id="list-value",
        ),
        pytest.param(
            {"credentials": {"username": "", "password": _VALID["password"]}},
            "credentials.username.value",
            id="empty-string",
        ),
        pytest.param({"credentials": {}}, "credentials", id="empty-object"),
        pytest.param({}, "credentials", id="missing"),
        pytest.param({"credentials": ["username", "password"]}, "credentials", id="list"),
        pytest.param({"credentials": "username=svc"}, "credentials", id="string"),
        pytest.param({"credentials": _VALID, "adapter": "simulated"}, "adapter", id="extra-key"),
    ],
)
def test_invalid_credentials_are_422_naming_the_field_and_store_nothing(
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    provider: ProviderSetup,
    body: dict[str, Any],
    field: str,
) -> None:
    response = client.put(_url(provider.id), json=body, headers=provider.operator.headers)
    refusal = problem(response, 422)
    assert refusal["code"] == "validation_failed"
    assert field in refusal["errors"], refusal
    assert _VALID["password"] not in response.get_data(as_text=True)

    assert client.get(_url(provider.id), headers=admin.headers).status_code == 404
    assert _row(db, provider.id) is None
    assert _credential_events(db) == []


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        pytest.param(
            "username=svc&password=pw",
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
            id="form",
        ),
        pytest.param(
            '{"credentials": {"username": "svc"',
            "application/json",
            400,
            "malformed_body",
            id="truncated-json",
        ),
        pytest.param("null", "application/json", 422, "validation_failed", id="json-null"),
        pytest.param('["svc", "pw"]', "application/json", 422, "validation_failed", id="array"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_problem_and_stores_nothing(
    client: FlaskClient,
    db: Database,
    provider: ProviderSetup,
    data: str,
    content_type: str,
    status: int,
    code: str,
) -> None:
    response = client.put(
        _url(provider.id),
        data=data,
        content_type=content_type,
        headers=provider.operator.headers,
    )
    assert problem(response, status)["code"] == code
    assert _row(db, provider.id) is None
    assert _credential_events(db) == []


def test_a_refused_put_leaves_the_stored_credentials_untouched(
    app: Flask, client: FlaskClient, db: Database, provider: ProviderSetup
) -> None:
    creds = _password_creds()
    first = _put(client, provider.operator, provider.id, creds)
    assert first.status_code == 200
    before = _row(db, provider.id)
    assert before is not None

    refused = _put(client, provider.operator, provider.id, {"username": "someone-else"})
    assert problem(refused, 422)["errors"].keys() == {"credentials.password"}

    after = _row(db, provider.id)
    assert after is not None
    assert (after.ciphertext, after.fields, after.updated_at) == (
        before.ciphertext,
        before.fields,
        before.updated_at,
    )
    with db.session(read_only=True) as session:
        keyring = app.extensions["broker.providers"].keyring
        assert credentials.load(session, uuid.UUID(provider.id), keyring) == creds
    assert len(_credential_events(db)) == 1


def test_a_provider_on_the_simulated_adapter_takes_no_credentials(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    simulated = make_provider(client, admin, make_user, adapter="simulated", adapter_config={})
    response = _put(client, simulated.operator, simulated.id, {"token": "x"})
    assert "credentials.token" in problem(response, 422)["errors"]
    assert _row(db, simulated.id) is None


def _outscale(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    return make_provider(
        client,
        admin,
        make_user,
        adapter="outscale",
        adapter_config={"region": "eu-west-2", "endpoint": "https://145.239.0.10/api/v1"},
    )


def test_outscale_takes_an_access_key_and_secret_key_and_nothing_else(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    outscale = _outscale(client, admin, make_user)
    refused = _put(client, outscale.operator, outscale.id, {"access_key": "AK", "password": "p"})
    assert "credentials.password" in problem(refused, 422)["errors"]
    assert _row(db, outscale.id) is None

    creds = {"access_key": f"AK{uuid.uuid4().hex}", "secret_key": f"SK{uuid.uuid4().hex}"}
    accepted = _put(client, outscale.operator, outscale.id, creds)
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    assert accepted.json["fields"] == ["access_key", "secret_key"]
    assert creds["secret_key"] not in accepted.get_data(as_text=True)


def test_incomplete_outscale_credentials_are_refused_when_set(
    client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    outscale = _outscale(client, admin, make_user)
    response = _put(client, outscale.operator, outscale.id, {"access_key": "AK-only"})
    assert "credentials.secret_key" in problem(response, 422)["errors"]
    assert _row(db, outscale.id) is None


# --- who may set, read and clear them -----------------------------------------------------------


def test_buyers_are_403_and_change_nothing(
    client: FlaskClient, db: Database, buyer: ApiUser, provider: ProviderSetup
) -> None:
    creds = _password_creds()
    assert _put(client, provider.operator, provider.id, creds).status_code == 200
    stored = _ciphertexts(db)

    assert problem(_put(client, buyer, provider.id, _password_creds()), 403)["code"] == (
        "forbidden"
    )
    assert problem(client.get(_url(provider.id), headers=buyer.headers), 403)
    assert problem(client.delete(_url(provider.id), headers=buyer.headers), 403)
    assert _ciphertexts(db) == stored


def test_another_providers_operator_gets_404_and_changes_nothing(
    client: FlaskClient, db: Database, provider: ProviderSetup, other: ProviderSetup
) -> None:
    creds = _password_creds()
    assert _put(client, provider.operator, provider.id, creds).status_code == 200
    stored = _ciphertexts(db)
    stranger = other.operator

    put = _put(client, stranger, provider.id, _password_creds())
    assert problem(put, 404)["code"] == "not_found"
    assert problem(client.get(_url(provider.id), headers=stranger.headers), 404)
    assert problem(client.delete(_url(provider.id), headers=stranger.headers), 404)
    assert _ciphertexts(db) == stored
    assert [e.action for e in _credential_events(db)] == ["provider.credentials_set"]


def test_without_a_token_it_is_401_and_unknown_providers_are_404(
    client: FlaskClient, admin: ApiUser, provider: ProviderSetup
) -> None:
    assert client.put(_url(provider.id), json={"credentials": _VALID}).status_code == 401
    assert client.get(_url(provider.id)).status_code == 401
    assert client.delete(_url(provider.id)).status_code == 401
    unknown = str(uuid.uuid4())
    assert problem(_put(client, admin, unknown, _password_creds()), 404)
    assert problem(client.get(_url(unknown), headers=admin.headers), 404)


def test_admins_set_replace_and_clear_any_providers_credentials(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, provider: ProviderSetup
) -> None:
    keyring = app.extensions["broker.providers"].keyring
    first = _password_creds()
    put = _put(client, admin, provider.id, first)
    assert put.status_code == 200
    assert put.json["fields"] == ["password", "username"]

    second = {"application_credential_id": "app-1", "application_credential_secret": "s3cr3t"}
    replaced = _put(client, admin, provider.id, second)
    assert replaced.status_code == 200
    assert replaced.json["fields"] == ["application_credential_id", "application_credential_secret"]
    read = client.get(_url(provider.id), headers=provider.operator.headers)
    assert read.json["fields"] == replaced.json["fields"]
    with db.session(read_only=True) as session:
        assert credentials.load(session, uuid.UUID(provider.id), keyring) == second

    deleted = client.delete(_url(provider.id), headers=admin.headers)
    assert deleted.status_code == 204
    assert deleted.get_data() == b""
    assert problem(client.get(_url(provider.id), headers=admin.headers), 404)
    assert problem(client.delete(_url(provider.id), headers=admin.headers), 404)
    assert _row(db, provider.id) is None
    with db.session(read_only=True) as session:
        assert credentials.load(session, uuid.UUID(provider.id), keyring) == {}

    events = [(e.action, e.before, e.after) for e in _credential_events(db)]
    assert events == [
        ("provider.credentials_set", None, {"fields": ["password", "username"]}),
        (
            "provider.credentials_set",
            {"fields": ["password", "username"]},
            {"fields": ["application_credential_id", "application_credential_secret"]},
        ),
        (
            "provider.credentials_cleared",
            {"fields": ["application_credential_id", "application_credential_secret"]},
            None,
        ),
    ]


def test_the_operator_clears_its_credentials_once(
    client: FlaskClient, db: Database, provider: ProviderSetup
) -> None:
    operator = provider.operator
    assert problem(client.get(_url(provider.id), headers=operator.headers), 404)
    assert problem(client.delete(_url(provider.id), headers=operator.headers), 404)
    assert _put(client, operator, provider.id, _password_creds()).status_code == 200

    assert client.delete(_url(provider.id), headers=operator.headers).status_code == 204
    assert problem(client.get(_url(provider.id), headers=operator.headers), 404)
    assert problem(client.delete(_url(provider.id), headers=operator.headers), 404)
    assert _row(db, provider.id) is None
    assert [e.action for e in _credential_events(db)] == [
        "provider.credentials_set",
        "provider.credentials_cleared",
    ]


# --- the `broker keys` command, run in-process ----------------------------------------------------

KeysCli = Callable[..., Result]


@pytest.fixture
def keys_cli(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeysCli]:
    """`keys_cli(*args, env={...})` runs `broker …` against this test's database."""
    opened: list[Database] = []

    class TrackedDatabase(Database):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(cli_module, "Database", TrackedDatabase)
    instance = tmp_path / "cli-instance"

    def run(*args: str, env: dict[str, str | None]) -> Result:
        base: dict[str, str | None] = {
            "DATABASE_URL": database_url,
            "BROKER_INSTANCE_PATH": str(instance),
            "BROKER_CREDENTIAL_KEYS": None,
            "BROKER_CREDENTIAL_KEYS_FILE": None,
        }
        try:
            return CliRunner().invoke(cli_module.main, list(args), env={**base, **env})
        finally:
            while opened:
                opened.pop().dispose()

    yield run


def _cli_ok(result: Result) -> Any:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return json.loads(result.stdout)


def _cli_refused(result: Result) -> bool:
    """Exit 2 with a one-line message on stderr, not an exception."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return True


# --- a ciphertext is bound to its provider ------------------------------------------------------


def test_a_ciphertext_copied_to_another_provider_does_not_decrypt_there(
    app: Flask,
    client: FlaskClient,
    db: Database,
    provider: ProviderSetup,
    other: ProviderSetup,
    keys_cli: KeysCli,
    credential_key: str,
) -> None:
    keyring = app.extensions["broker.providers"].keyring
    mine, theirs = _password_creds(), _password_creds()
    assert _put(client, provider.operator, provider.id, mine).status_code == 200
    assert _put(client, other.operator, other.id, theirs).status_code == 200
    a, b = uuid.UUID(provider.id), uuid.UUID(other.id)

    with db.transaction() as session:
        copied = session.execute(
            update(ProviderCredentials)
            .where(ProviderCredentials.provider_id == b)
            .values(
                ciphertext=select(ProviderCredentials.ciphertext)
                .where(ProviderCredentials.provider_id == a)
                .scalar_subquery()
            )
        )
        assert copied.rowcount == 1
    stored = _ciphertexts(db)
    assert stored[other.id] == stored[provider.id]

    with db.session(read_only=True) as session:
        with pytest.raises(CredentialsUnreadable, match="another provider"):
            credentials.load(session, b, keyring)
        assert credentials.load(session, a, keyring) == mine

    # Rotation refuses to launder the copy under the new key, and rotates nothing.
    new_key = Fernet.generate_key().decode()
    result = keys_cli(
        "keys", "rotate", env={"BROKER_CREDENTIAL_KEYS": f"{new_key},{credential_key}"}
    )
    assert _cli_refused(result) and "Nothing rotated" in result.stderr
    assert _ciphertexts(db) == stored


# --- rotation ---------------------------------------------------------------------------------


def _file_config(key_file: Path) -> dict[str, Any]:
    return {"CREDENTIAL_KEYS": None, "CREDENTIAL_KEYS_FILE": str(key_file)}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "credential-keys"


@pytest.fixture
def file_app(app_config: dict[str, Any], key_file: Path) -> Iterator[Flask]:
    """The app with its keys in a key file (generated on start), as on one host."""
    application = create_app({**app_config, **_file_config(key_file)})
    yield application
    application.extensions["broker.db"].dispose()


def _keys_in(path: Path) -> list[str]:
    return path.read_text().split()


def test_rotate_with_a_new_key_then_drop_old_with_the_key_file(
    file_app: Flask,
    db: Database,
    key_file: Path,
    provider: ProviderSetup,
    other: ProviderSetup,
    keys_cli: KeysCli,
) -> None:
    first_key = _keys_in(key_file)
    assert len(first_key) == 1
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    web = file_app.test_client()
    creds = {provider.id: _password_creds(), other.id: _password_creds()}
    for setup in (provider, other):
        assert _put(web, setup.operator, setup.id, creds[setup.id]).status_code == 200
    old = _ciphertexts(db)
    for provider_id, ciphertext in old.items():
        assert Keyring(first_key).decrypt(uuid.UUID(provider_id), ciphertext) == creds[provider_id]
    env: dict[str, str | None] = {"BROKER_CREDENTIAL_KEYS_FILE": str(key_file)}

    assert _cli_ok(keys_cli("keys", "rotate", "--new-key", env=env)) == {"rotated": 2, "keys": 2}

    keys = _keys_in(key_file)
    assert len(keys) == 2
    assert keys[1:] == first_key
    new_only, old_only = Keyring(keys[:1]), Keyring(first_key)
    rotated = _ciphertexts(db)
    assert rotated.keys() == old.keys()
    for provider_id, ciphertext in rotated.items():
        assert ciphertext != old[provider_id]
        assert new_only.decrypt(uuid.UUID(provider_id), ciphertext) == creds[provider_id]
        with pytest.raises(CredentialsUnreadable):
            old_only.decrypt(uuid.UUID(provider_id), ciphertext)
    # Until drop-old, the file's two keys still read what the old key wrote.
    both = Keyring.from_config(_file_config(key_file))
    assert both.keys == keys
    assert both.decrypt(uuid.UUID(provider.id), old[provider.id]) == creds[provider.id]

    assert _cli_ok(keys_cli("keys", "drop-old", env=env)) == {"keys": 1}

    assert _keys_in(key_file) == keys[:1]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    remaining = Keyring.from_config(_file_config(key_file))
    assert remaining.keys == keys[:1]
    for provider_id, ciphertext in old.items():
        with pytest.raises(CredentialsUnreadable):
            remaining.decrypt(uuid.UUID(provider_id), ciphertext)
    with db.session(read_only=True) as session:
        for provider_id, expected in creds.items():
            assert credentials.load(session, uuid.UUID(provider_id), remaining) == expected


def test_drop_old_before_rotating_refuses_and_changes_nothing(
    file_app: Flask,
    db: Database,
    key_file: Path,
    provider: ProviderSetup,
    keys_cli: KeysCli,
) -> None:
    web = file_app.test_client()
    creds = _password_creds()
    assert _put(web, provider.operator, provider.id, creds).status_code == 200
    old_key = _keys_in(key_file)
    # A new key put first by hand, the rows not rotated yet.
    key_file.write_text(f"{Fernet.generate_key().decode()}\n{old_key[0]}\n")
    content = key_file.read_bytes()
    stored = _ciphertexts(db)
    env: dict[str, str | None] = {"BROKER_CREDENTIAL_KEYS_FILE": str(key_file)}

    result = keys_cli("keys", "drop-old", env=env)

    assert _cli_refused(result)
    assert "broker keys rotate" in result.stderr
    assert key_file.read_bytes() == content
    assert _ciphertexts(db) == stored
    with db.session(read_only=True) as session:
        ring = Keyring.from_config(_file_config(key_file))
        assert credentials.load(session, uuid.UUID(provider.id), ring) == creds


def test_rotate_with_keys_from_the_environment(
    client: FlaskClient,
    db: Database,
    credential_key: str,
    provider: ProviderSetup,
    other: ProviderSetup,
    keys_cli: KeysCli,
    tmp_path: Path,
) -> None:
    creds = {provider.id: _password_creds(), other.id: _password_creds()}
    for setup in (provider, other):
        assert _put(client, setup.operator, setup.id, creds[setup.id]).status_code == 200
    old = _ciphertexts(db)
    new_key = Fernet.generate_key().decode()
    env: dict[str, str | None] = {"BROKER_CREDENTIAL_KEYS": f"{new_key},{credential_key}"}

    # With keys in the environment there is no file to add a key to.
    refused = keys_cli("keys", "rotate", "--new-key", env=env)
    assert _cli_refused(refused) and "BROKER_CREDENTIAL_KEYS" in refused.stderr
    assert _ciphertexts(db) == old

    assert _cli_ok(keys_cli("keys", "rotate", env=env)) == {"rotated": 2, "keys": 2}
    rotated = _ciphertexts(db)
    for provider_id, ciphertext in rotated.items():
        assert ciphertext != old[provider_id]
        assert Keyring([new_key]).decrypt(uuid.UUID(provider_id), ciphertext) == creds[provider_id]
        with pytest.raises(CredentialsUnreadable):
            Keyring([credential_key]).decrypt(uuid.UUID(provider_id), ciphertext)

    dropped = keys_cli("keys", "drop-old", env=env)
    assert _cli_refused(dropped)
    assert "BROKER_CREDENTIAL_KEYS" in dropped.stderr
    assert not list((tmp_path / "cli-instance").glob("credential-keys*"))
    for provider_id, ciphertext in _ciphertexts(db).items():
        assert Keyring([new_key]).decrypt(uuid.UUID(provider_id), ciphertext) == creds[provider_id]


def test_keys_generate_prints_a_fresh_fernet_key(keys_cli: KeysCli) -> None:
    printed = [keys_cli("keys", "generate", env={}) for _ in range(2)]
    keys = [result.stdout.strip() for result in printed]
    assert all(result.exit_code == 0 for result in printed)
    assert keys[0] != keys[1]
    token = Fernet(keys[0].encode()).encrypt(b"x")
    assert Fernet(keys[0].encode()).decrypt(token) == b"x"


# --- malformed keys stop the start -------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        pytest.param("not-a-fernet-key", "not a valid Fernet key", id="garbage"),
        pytest.param("GOOD,c2hvcnQ=", "not a valid Fernet key", id="good-then-short"),
        pytest.param(" , ", "No credential key", id="only-commas"),
    ],
)
def test_malformed_credential_keys_stop_the_app_from_starting(
    app_config: dict[str, Any],
    credential_key: str,
    monkeypatch: pytest.MonkeyPatch,
    keys: str,
    message: str,
) -> None:
    keys = keys.replace("GOOD", credential_key)
    with pytest.raises(KeyringError, match=message) as raised:
        create_app({**app_config, "CREDENTIAL_KEYS": keys})
    assert "c2hvcnQ" not in str(raised.value) and "not-a-fernet" not in str(raised.value)

    # The same through the environment, as production sets it.
    monkeypatch.setenv("BROKER_CREDENTIAL_KEYS", keys)
    from_env = {k: v for k, v in app_config.items() if k != "CREDENTIAL_KEYS"}
    with pytest.raises(KeyringError, match=message):
        create_app(from_env)


@pytest.mark.parametrize("command", [["keys", "rotate"], ["keys", "drop-old"]])
def test_malformed_credential_keys_make_the_cli_exit_2(
    keys_cli: KeysCli, db: Database, command: list[str]
) -> None:
    result = keys_cli(*command, env={"BROKER_CREDENTIAL_KEYS": "not-a-fernet-key"})
    assert _cli_refused(result)
    assert "not a valid Fernet key" in result.stderr
    assert "not-a-fernet-key" not in result.output
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(ProviderCredentials)) == 0


def test_malformed_credential_keys_as_a_real_process(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CREDENTIAL_KEYS_FILE"}
    env.update(
        DATABASE_URL=database_url,
        BROKER_INSTANCE_PATH=str(tmp_path / "instance"),
        BROKER_CREDENTIAL_KEYS="not-a-fernet-key",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "keys", "rotate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "Error: A credential key is not a valid Fernet key."


def test_a_running_process_reads_a_key_added_to_the_key_file_meanwhile(tmp_path: Path) -> None:
    """After `broker keys rotate --new-key`, a server started before it still decrypts the
    rows re-encrypted under the new key (it reads the file again), without a restart."""
    config = {"CREDENTIAL_KEYS": None, "CREDENTIAL_KEYS_FILE": str(tmp_path / "keys")}
    running = Keyring.from_config(config)
    provider_id = uuid.uuid4()
    rotated = Keyring.from_config(config).add_key()
    ciphertext = rotated.primary_only().encrypt(provider_id, {"password": "s3cret"})
    assert running.decrypt(provider_id, ciphertext) == {"password": "s3cret"}
    assert running.keys == rotated.keys
    # A keyring from configuration (not a file) has nothing to read again.
    fixed = Keyring([Fernet.generate_key().decode()])
    with pytest.raises(CredentialsUnreadable):
        fixed.decrypt(provider_id, ciphertext)
