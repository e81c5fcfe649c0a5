"""The `broker` command line and the demo seed.

Each command runs through click's own runner, with an environment naming the test's database
(`DATABASE_URL`) and a private instance directory, as an operator runs it: the same parsing,
output and exit code, in this process (a child process costs a second of imports a command;
`test_the_console_script_runs_as_a_process_of_its_own` runs one for real, and the README's
test and tests/test_serve.py run `broker` as people do). What the commands print is what the
user reads: JSON on success, a one-line message (never a traceback) and a non-zero exit on
failure. Credentials printed by `broker clients create` and returned by `seed_demo` must get
real tokens at `/oauth/token`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import traceback
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from broker.cli import main
from broker.db import Database
from broker.models import ApiClient, AuditEvent, Organization, OrganizationKind, Provider, Role
from broker.seed import DemoCredential, seed_demo
from broker.services import organizations
from broker.services.audit import verify_chain
from broker.services.webhooks import SIGNATURE_HEADER, sign
from tests.conftest import fetch_token
from tests.serving import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent

Run = Callable[..., subprocess.CompletedProcess[str]]


def _run(database_url: str, instance: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`broker ARGS` against this database and instance. An unexpected exception leaves its
    traceback in stderr, as it would in a terminal (so "no traceback" checks mean something)."""
    env = {"DATABASE_URL": database_url, "BROKER_INSTANCE_PATH": str(instance)}
    result = CliRunner().invoke(main, list(args), env=env)
    stderr = result.stderr
    if result.exc_info is not None and not isinstance(result.exc_info[1], SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["broker", *args], result.exit_code, result.stdout, stderr)


def _run_process(
    database_url: str, instance: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`python -m broker.cli ARGS` in a child process, as the console script runs."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BROKER_INSTANCE_PATH": str(instance),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        cwd=instance.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def instance(tmp_path: Path) -> Path:
    path = tmp_path / "cli-instance"
    path.mkdir()
    return path


@pytest.fixture
def cli(database_url: str, instance: Path) -> Run:
    """`cli(*args)` runs the command against this test's database."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(database_url, instance, *args)

    return run


def _ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    """A failure the user can read: non-zero exit, a message, no traceback."""
    assert result.returncode != 0, result.stdout
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.stderr.strip(), "no message on stderr"
    return output


def _make_org(db: Database, name: str, kind: str = "agency") -> str:
    """Set-up through the service layer (faster than a subprocess; not what is under test)."""
    with db.transaction() as session:
        organization = organizations.create_organization(
            session, None, name=name, kind=OrganizationKind(kind)
        )
        return str(organization.id)


# --- organizations ---------------------------------------------------------------------------


def test_orgs_create_prints_the_organization(cli: Run, db: Database) -> None:
    printed = _ok_json(cli("orgs", "create", "--name", "Ville de Lyon", "--kind", "agency"))
    assert printed["name"] == "Ville de Lyon"
    assert printed["kind"] == "agency"
    org_id = uuid.UUID(printed["id"])

    with db.session(read_only=True) as session:
        stored = session.get(Organization, org_id)
        assert stored is not None
        assert stored.name == "Ville de Lyon"
        assert stored.kind.value == "agency"


def test_orgs_create_is_visible_to_the_api(cli: Run, client: FlaskClient, admin: Any) -> None:
    printed = _ok_json(cli("orgs", "create", "--name", "Hexagone Test", "--kind", "provider"))
    response = client.get(f"/v1/organizations/{printed['id']}", headers=admin.headers)
    assert response.status_code == 200
    assert response.json["name"] == "Hexagone Test"
    assert response.json["kind"] == "provider"


def test_orgs_create_with_a_taken_name_fails_with_a_message(cli: Run, db: Database) -> None:
    _make_org(db, "Ville de Lyon")
    output = _refused(cli("orgs", "create", "--name", "Ville de Lyon", "--kind", "provider"))
    assert "Ville de Lyon" in output
    assert "exists" in output
    with db.session(read_only=True) as session:
        names = list(session.scalars(select(Organization.name)))
    assert names == ["Ville de Lyon"]


def test_orgs_create_with_an_unknown_kind_is_refused(cli: Run) -> None:
    output = _refused(cli("orgs", "create", "--name", "X", "--kind", "ministry"))
    assert "ministry" in output


# --- clients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["name", "id"])
def test_clients_create_prints_credentials_that_get_a_token(
    cli: Run, client: FlaskClient, db: Database, by: str
) -> None:
    org = {"id": _make_org(db, "Ville de Québec"), "name": "Ville de Québec"}
    reference = org["name"] if by == "name" else org["id"]

    issued = _ok_json(cli("clients", "create", "--org", reference, "--role", "buyer"))
    assert issued["client_id"]
    assert issued["client_secret"]
    assert issued["organization_id"] == org["id"]
    assert issued["roles"] == ["buyer"]

    token = fetch_token(client, issued["client_id"], issued["client_secret"])
    response = client.get("/v1/organizations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert [o["id"] for o in response.json["items"]] == [org["id"]]

    with db.session(read_only=True) as session:
        stored = session.scalars(
            select(ApiClient).where(ApiClient.client_id == issued["client_id"])
        ).one()
        assert stored.secret_hash != issued["client_secret"]
        assert issued["client_secret"] not in stored.secret_hash


def test_clients_create_with_several_roles(cli: Run, client: FlaskClient, db: Database) -> None:
    _make_org(db, "Agence")
    issued = _ok_json(
        cli("clients", "create", "--org", "Agence", "--role", "buyer", "--role", "approver")
    )
    assert sorted(issued["roles"]) == ["approver", "buyer"]
    fetch_token(client, issued["client_id"], issued["client_secret"])


def test_clients_create_refuses_a_role_the_kind_cannot_hold(cli: Run, db: Database) -> None:
    _make_org(db, "Agence")
    output = _refused(cli("clients", "create", "--org", "Agence", "--role", "admin"))
    assert "agency" in output
    with db.session(read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(ApiClient)) == 0


def test_clients_create_for_an_unknown_organization_fails_with_a_message(cli: Run) -> None:
    output = _refused(cli("clients", "create", "--org", "Nobody", "--role", "buyer"))
    assert "Nobody" in output
    output = _refused(cli("clients", "create", "--org", str(uuid.uuid4()), "--role", "buyer"))
    assert "No organization" in output


def _issue(db: Database, organization_id: str, role: str = "buyer") -> tuple[str, str]:
    with db.transaction() as session:
        issued = organizations.create_client(
            session, None, uuid.UUID(organization_id), name="cli test", roles=[Role(role)]
        )
        return issued.client.client_id, issued.secret


def test_clients_list_shows_revoked_at_and_never_a_secret(cli: Run, db: Database) -> None:
    lyon, nantes = _make_org(db, "Lyon"), _make_org(db, "Nantes")
    first, first_secret = _issue(db, lyon)
    second, second_secret = _issue(db, lyon, "approver")
    other, _ = _issue(db, nantes)
    _ok_json(cli("clients", "revoke", first))

    everything = _ok_json(cli("clients", "list"))
    assert [c["client_id"] for c in everything] == [first, second, other]
    by_id = {c["client_id"]: c for c in everything}
    assert by_id[first]["revoked_at"] is not None
    assert by_id[second]["revoked_at"] is None
    assert by_id[second]["roles"] == ["approver"]
    assert by_id[other]["organization_id"] == nantes
    for listed in everything:
        assert "client_secret" not in listed and "secret_hash" not in listed

    for reference in ("Lyon", lyon):
        listed = _ok_json(cli("clients", "list", "--org", reference))
        assert [c["client_id"] for c in listed] == [first, second]
    active = _ok_json(cli("clients", "list", "--org", "Lyon", "--active"))
    assert [c["client_id"] for c in active] == [second]

    result = cli("clients", "list")
    with db.session(read_only=True) as session:
        hashes = list(session.scalars(select(ApiClient.secret_hash)))
    for secret in [first_secret, second_secret, *hashes]:
        assert secret not in result.stdout
    assert "Nobody" in _refused(cli("clients", "list", "--org", "Nobody"))


def test_clients_revoke_refuses_the_client_its_tokens_and_a_second_revocation(
    cli: Run, client: FlaskClient, db: Database
) -> None:
    client_id, secret = _issue(db, _make_org(db, "Lyon"))
    token = fetch_token(client, client_id, secret)

    revoked = _ok_json(cli("clients", "revoke", client_id))
    assert revoked["client_id"] == client_id
    assert revoked["revoked_at"]

    response = client.get("/v1/organizations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    refused = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert refused.status_code == 401
    assert refused.json["error"] == "invalid_client"

    output = _refused(cli("clients", "revoke", client_id))
    assert "revoked" in output
    with db.session(read_only=True) as session:
        actions = list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))
    assert actions.count("api_client.revoked") == 1


def test_clients_rotate_prints_a_working_secret_and_retires_the_old_one(
    cli: Run, client: FlaskClient, db: Database
) -> None:
    organization_id = _make_org(db, "Lyon")
    client_id, old_secret = _issue(db, organization_id)
    old_token = fetch_token(client, client_id, old_secret)

    rotated = _ok_json(cli("clients", "rotate", client_id))
    assert rotated["client_id"] == client_id
    assert rotated["organization_id"] == organization_id
    assert rotated["credential_version"] == 2
    assert rotated["client_secret"] not in ("", old_secret)

    new_token = fetch_token(client, client_id, rotated["client_secret"])
    ok = client.get("/v1/organizations", headers={"Authorization": f"Bearer {new_token}"})
    assert ok.status_code == 200
    stale = client.get("/v1/organizations", headers={"Authorization": f"Bearer {old_token}"})
    assert stale.status_code == 401
    refused = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, old_secret)
    )
    assert refused.status_code == 401

    with db.session(read_only=True) as session:
        stored = session.scalars(select(ApiClient).where(ApiClient.client_id == client_id)).one()
        assert rotated["client_secret"] not in stored.secret_hash
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "api_client.secret_rotated")
        ).one()
        assert event.object_id == str(stored.id)
        assert event.actor_client_id is None  # the operator, at the console


def test_clients_rotate_by_id_and_refused_when_revoked(cli: Run, db: Database) -> None:
    client_id, _ = _issue(db, _make_org(db, "Lyon"))
    listed = _ok_json(cli("clients", "list"))
    row_id = listed[0]["id"]
    assert _ok_json(cli("clients", "rotate", row_id))["client_id"] == client_id
    _ok_json(cli("clients", "revoke", row_id))
    output = _refused(cli("clients", "rotate", client_id))
    assert "revoked" in output


@pytest.mark.parametrize("command", ["revoke", "rotate"])
def test_clients_revoke_or_rotate_an_unknown_client_fails_with_a_message(
    cli: Run, command: str
) -> None:
    for reference in ("cb_nobody", str(uuid.uuid4())):
        output = _refused(cli("clients", command, reference))
        assert reference in output


# --- audit verify ----------------------------------------------------------------------------


def test_audit_verify_passes_on_an_intact_chain_and_names_the_tampered_event(
    cli: Run, db: Database
) -> None:
    _make_org(db, "Agence")
    _ok_json(cli("clients", "create", "--org", "Agence", "--role", "buyer"))
    _make_org(db, "Fournisseur", "provider")

    report = _ok_json(cli("audit", "verify"))
    assert report["ok"] is True
    assert report["events_checked"] == 3
    assert report["broken_at_seq"] is None

    with db.engine.begin() as connection:
        changed = connection.execute(
            text("UPDATE audit_events SET action = 'organization.deleted' WHERE seq = 2")
        )
        assert changed.rowcount == 1

    result = cli("audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["broken_at_seq"] == 2
    assert report["reason"]


def test_audit_verify_reports_a_deleted_event(cli: Run, db: Database) -> None:
    for name in ("A", "B", "C"):
        _make_org(db, name)
    with db.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    result = cli("audit", "verify")
    assert result.returncode == 1
    assert json.loads(result.stdout)["broken_at_seq"] == 2


# --- migrations ------------------------------------------------------------------------------


def test_db_upgrade_migrates_an_empty_sqlite_file(tmp_path: Path, instance: Path) -> None:
    path = tmp_path / "fresh.db"
    path.touch()
    url = f"sqlite:///{path}"

    refused = _refused(_run(url, instance, "orgs", "create", "--name", "Early", "--kind", "agency"))
    assert "broker db upgrade" in refused

    upgraded = _run(url, instance, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Traceback" not in upgraded.stderr

    org = _ok_json(_run(url, instance, "orgs", "create", "--name", "Lyon", "--kind", "agency"))
    assert org["name"] == "Lyon"

    # Upgrading again is harmless: the data is kept.
    again = _run(url, instance, "db", "upgrade")
    assert again.returncode == 0, again.stderr
    database = Database(url)
    try:
        with database.session(read_only=True) as session:
            assert list(session.scalars(select(Organization.name))) == ["Lyon"]
            assert session.scalar(select(func.count()).select_from(AuditEvent)) == 1
    finally:
        database.dispose()


@pytest.mark.parametrize(
    "args",
    [
        ("orgs", "create", "--name", "Lyon", "--kind", "agency"),
        ("clients", "create", "--org", "Lyon", "--role", "buyer"),
        ("clients", "list"),
        ("clients", "revoke", "cb_someone"),
        ("clients", "rotate", "cb_someone"),
        ("audit", "verify"),
    ],
    ids=[
        "orgs-create",
        "clients-create",
        "clients-list",
        "clients-revoke",
        "clients-rotate",
        "audit-verify",
    ],
)
def test_commands_on_an_unmigrated_database_say_to_run_db_upgrade(
    tmp_path: Path, instance: Path, args: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    result = _run(url, instance, *args)
    output = _refused(result)
    assert "broker db upgrade" in output
    # 2: could not do the work (1 is kept for "the audit chain is broken").
    assert result.returncode == 2


def test_the_console_script_runs_as_a_process_of_its_own(tmp_path: Path, instance: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    refused = _run_process(url, instance, "clients", "list")
    assert refused.returncode == 2 and "broker db upgrade" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _run_process(url, instance, "db", "upgrade").returncode == 0
    assert json.loads(_run_process(url, instance, "clients", "list").stdout) == []


def test_an_unreachable_database_gives_a_message_not_a_traceback(instance: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    output = _refused(_run(url, instance, "orgs", "create", "--name", "X", "--kind", "agency"))
    assert "127.0.0.1" in output or "database" in output.lower()


# --- the demo seed ---------------------------------------------------------------------------

EXPECTED_KINDS = Counter({"consortium": 1, "agency": 2, "provider": 3})
EXPECTED_ROLES = Counter(
    {
        ("admin",): 1,
        ("finance",): 1,
        ("assessor",): 1,
        ("buyer",): 2,
        ("approver",): 2,
        ("provider",): 3,
    }
)


def _counts(db: Database) -> tuple[Counter[str], int, int]:
    with db.session(read_only=True) as session:
        kinds = Counter(kind.value for kind in session.scalars(select(Organization.kind)))
        clients = session.scalar(select(func.count()).select_from(ApiClient)) or 0
        events = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    return kinds, clients, events


def _check_credentials(
    db: Database, client: FlaskClient, credentials: list[DemoCredential]
) -> None:
    with db.session(read_only=True) as session:
        org_ids = {o.name: str(o.id) for o in session.scalars(select(Organization))}
    for credential in credentials:
        assert credential.organization_id == org_ids[credential.organization]
        token = fetch_token(client, credential.client_id, credential.client_secret)
        me = client.get(
            f"/v1/organizations/{credential.organization_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert me.status_code == 200, (credential, me.get_data(as_text=True))
        assert me.json["kind"] == credential.kind


def test_seed_demo_creates_the_consortium_and_writes_private_credentials(
    db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "seed-instance" / "demo-credentials.json"
    credentials = seed_demo(db, credentials_file)

    kinds, client_count, _ = _counts(db)
    assert kinds == EXPECTED_KINDS
    assert client_count == 10
    assert len(credentials) == 10
    assert Counter(tuple(c.roles) for c in credentials) == EXPECTED_ROLES
    assert len({c.client_id for c in credentials}) == 10
    assert Counter(c.kind for c in credentials) == Counter(
        {"consortium": 3, "agency": 4, "provider": 3}
    )

    assert credentials_file.exists()
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    written = json.loads(credentials_file.read_text())
    assert [DemoCredential(**item) for item in written] == credentials

    _check_credentials(db, client, credentials)
    with db.session(read_only=True) as session:
        assert verify_chain(session).ok


def test_seed_demo_again_creates_nothing_and_returns_the_same_credentials(
    db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "demo-credentials.json"
    first = seed_demo(db, credentials_file)
    counts_after_first = _counts(db)
    content_after_first = credentials_file.read_text()

    second = seed_demo(db, credentials_file)
    assert second == first
    assert _counts(db) == counts_after_first
    assert credentials_file.read_text() == content_after_first
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    _check_credentials(db, client, second)


def test_seed_demo_forgets_a_remembered_secret_that_was_rotated(
    db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "demo-credentials.json"
    first = seed_demo(db, credentials_file)
    finance = next(c for c in first if c.roles == ["finance"])
    with db.transaction() as session:
        organizations.rotate_client_secret(
            session,
            None,
            uuid.UUID(finance.organization_id),
            finance.client_id,
            datetime.now(UTC),
        )
    again = seed_demo(db, credentials_file)
    # The dead secret is neither printed nor kept: a fresh finance client replaces it.
    assert finance.client_id not in {c.client_id for c in again}
    assert len(again) == 10
    assert Counter(tuple(c.roles) for c in again) == EXPECTED_ROLES
    _check_credentials(db, client, again)


def test_seed_demo_without_its_credentials_file_issues_fresh_clients(
    db: Database, client: FlaskClient, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "demo-credentials.json"
    first = seed_demo(db, credentials_file)
    first_org_ids = {c.organization: c.organization_id for c in first}
    credentials_file.unlink()

    fresh = seed_demo(db, credentials_file)
    kinds, client_count, _ = _counts(db)
    assert kinds == EXPECTED_KINDS  # organizations are completed, never duplicated
    assert client_count == 20
    assert len(fresh) == 10
    assert Counter(tuple(c.roles) for c in fresh) == EXPECTED_ROLES
    assert not {c.client_id for c in fresh} & {c.client_id for c in first}
    assert {c.organization: c.organization_id for c in fresh} == first_org_ids
    assert credentials_file.exists()
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    assert [DemoCredential(**item) for item in json.loads(credentials_file.read_text())] == fresh
    _check_credentials(db, client, fresh)


# --- the demo and webhooks, for newcomers -----------------------------------------------------


def test_demo_env_prints_the_demo_clients_and_ids_as_shell_variables(
    cli: Run, db: Database, instance: Path
) -> None:
    credentials = seed_demo(db, instance / "demo-credentials.json")
    result = cli("demo", "env")
    assert result.returncode == 0, result.stderr

    script = result.stdout + "\nenv\n"
    shown = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={}, check=True
    ).stdout
    variables = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    admin = next(c for c in credentials if c.roles == ["admin"])
    buyer = next(
        c
        for c in credentials
        if c.roles == ["buyer"] and c.organization == "Agence nationale des données de santé"
    )
    assert (variables["ADMIN_ID"], variables["ADMIN_SECRET"]) == (
        admin.client_id,
        admin.client_secret,
    )
    assert (variables["BUYER_ID"], variables["AGENCY_ID"]) == (
        buyer.client_id,
        buyer.organization_id,
    )
    assert variables["BROKER"] == "http://127.0.0.1:8000"
    with db.session(read_only=True) as session:
        hexagone = session.scalars(select(Provider).where(Provider.name == "Hexagone Cloud")).one()
    assert variables["PROVIDER_ID"] == str(hexagone.id)


def test_demo_env_without_a_demo_says_how_to_get_one(cli: Run) -> None:
    assert "make run" in _refused(cli("demo", "env"))


def test_webhooks_listen_prints_deliveries_and_checks_their_signature(instance: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "BROKER_INSTANCE_PATH": str(instance)}
    listener = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "webhooks", "listen", "--port", str(port)],
        env={**env, "BROKER_WEBHOOK_SECRET": "s3cret"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert "Listening on" in listener.stdout.readline()
        event = {"id": str(uuid.uuid4()), "type": "order.state_changed", "data": {"to": "approved"}}
        body = json.dumps(event).encode()
        timestamp = int(datetime.now(UTC).timestamp())
        signed = {SIGNATURE_HEADER: sign("s3cret", body, timestamp)}
        forged = {SIGNATURE_HEADER: sign("not-the-secret", body, timestamp)}
        assert _post(port, body, signed) == 204
        assert _post(port, body, forged) == 401
    finally:
        listener.terminate()
        out, err = listener.communicate(timeout=10)
    assert f"valid signature: order.state_changed {event['id']}" in out
    assert f"INVALID signature: order.state_changed {event['id']}" in out
    assert '"to": "approved"' in out
    assert "Traceback" not in err


def _post(port: int, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/hooks", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
