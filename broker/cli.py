"""The `broker` command: serve, worker, migrations, organizations, clients, audit, keys,
provider adapters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import click
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broker.config import PROJECT_ROOT, load_config, require_seller
from broker.db import Database
from broker.models import (
    ApiClient,
    Job,
    JobState,
    Organization,
    OrganizationKind,
    Provider,
    Role,
)


def _database() -> Database:
    return Database(load_config()["DATABASE_URL"])


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class OperationalProblem(click.ClickException):
    """The command could not do its work (exit 2; exit 1 stays for a negative answer)."""

    exit_code = 2


def _require_migrated(db: Database) -> None:
    from broker.migrate import is_at_head

    try:
        at_head = is_at_head(db.engine)
    except OperationalError as exc:
        raise OperationalProblem(f"Cannot reach the database: {exc.orig}") from exc
    if not at_head:
        raise OperationalProblem("The database is not migrated: run `broker db upgrade`.")


@click.group()
def main() -> None:
    """Sovereign cloud broker."""


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database named by DATABASE_URL to the latest schema."""
    from broker.migrate import upgrade

    upgrade(load_config()["DATABASE_URL"])
    click.echo("database at the latest migration")


@main.group()
def orgs() -> None:
    """Organizations."""


@orgs.command("create")
@click.option("--name", required=True)
@click.option("--kind", required=True, type=click.Choice([k.value for k in OrganizationKind]))
def orgs_create(name: str, kind: str) -> None:
    """Register an organization and print it as JSON."""
    from broker.errors import BrokerError
    from broker.services import organizations

    database = _database()
    _require_migrated(database)
    try:
        with database.transaction() as session:
            organization = organizations.create_organization(
                session, None, name=name, kind=OrganizationKind(kind)
            )
            _echo_json(
                {
                    "id": organization.id,
                    "name": organization.name,
                    "kind": organization.kind.value,
                    "created_at": organization.created_at.isoformat(),
                }
            )
    except BrokerError as error:
        raise click.ClickException(str(error.detail)) from error


@main.group()
def clients() -> None:
    """API clients."""


@clients.command("create")
@click.option("--org", "org", required=True, help="Organization id or exact name.")
@click.option(
    "--role", "roles", required=True, multiple=True, type=click.Choice([r.value for r in Role])
)
@click.option("--name", default=None, help="A label for the client.")
def clients_create(org: str, roles: tuple[str, ...], name: str | None) -> None:
    """Issue an API client and print its credentials as JSON (the secret is shown once)."""
    from broker.errors import BrokerError
    from broker.services import organizations

    database = _database()
    _require_migrated(database)
    try:
        with database.transaction() as session:
            organization = _find_organization(session, org)
            issued = organizations.create_client(
                session,
                None,
                organization.id,
                name=name or f"{organization.name} {'/'.join(roles)}",
                roles=[Role(r) for r in roles],
            )
            _echo_json(
                {
                    "client_id": issued.client.client_id,
                    "client_secret": issued.secret,
                    "organization_id": organization.id,
                    "roles": issued.client.roles,
                }
            )
    except BrokerError as error:
        raise click.ClickException(str(error.detail)) from error


def _find_organization(session: Any, reference: str) -> Organization:
    """An organization by its id or its exact name."""
    try:
        condition = Organization.id == uuid.UUID(reference)
    except ValueError:
        condition = Organization.name == reference
    organization = session.scalar(select(Organization).where(condition))
    if organization is None:
        raise click.ClickException(f"No organization {reference!r}.")
    return cast(Organization, organization)


def _client_json(client: ApiClient) -> dict[str, Any]:
    """A client as `broker clients list` prints it: never its secret nor the secret's hash."""
    return {
        "id": str(client.id),
        "client_id": client.client_id,
        "name": client.name,
        "organization_id": str(client.organization_id),
        "roles": client.roles,
        "created_at": client.created_at.isoformat(),
        "revoked_at": client.revoked_at.isoformat() if client.revoked_at else None,
        "credential_version": client.credential_version,
        "rotated_at": (client.rotated_at.isoformat() if client.rotated_at else None),
    }


def _find_client(session: Any, reference: str) -> ApiClient:
    """A client by its `client_id` (or its `id`), in any organization."""
    if len(reference) > 64 or "\x00" in reference:  # no client has such an id
        raise click.ClickException(f"No API client {reference!r}.")
    try:
        condition = ApiClient.id == uuid.UUID(reference)
    except ValueError:
        condition = ApiClient.client_id == reference
    client = session.scalar(select(ApiClient).where(condition))
    if client is None:
        raise click.ClickException(f"No API client {reference!r}.")
    return client


@clients.command("list")
@click.option("--org", "org", default=None, help="Only this organization (id or exact name).")
@click.option("--active", is_flag=True, help="Leave revoked clients out.")
def clients_list(org: str | None, active: bool) -> None:
    """Print API clients as JSON, oldest first, with `revoked_at` (never a secret)."""
    database = _database()
    _require_migrated(database)
    statement = select(ApiClient).order_by(ApiClient.created_at, ApiClient.id)
    if active:
        statement = statement.where(ApiClient.revoked_at.is_(None))
    with database.session(read_only=True) as session:
        if org is not None:
            organization = _find_organization(session, org)
            statement = statement.where(ApiClient.organization_id == organization.id)
        _echo_json([_client_json(client) for client in session.scalars(statement)])


@clients.command("revoke")
@click.argument("client_ref", metavar="CLIENT_ID")
def clients_revoke(client_ref: str) -> None:
    """Revoke an API client (by client_id or id): it gets no new token, and the tokens it
    holds are refused from its next request on. Prints the client as JSON."""
    from broker.errors import BrokerError
    from broker.models.base import utcnow
    from broker.services import organizations

    database = _database()
    _require_migrated(database)
    try:
        with database.transaction() as session:
            found = _find_client(session, client_ref)
            client = organizations.revoke_client(
                session, None, found.organization_id, found.client_id, utcnow()
            )
            printed = _client_json(client)
    except BrokerError as error:
        raise click.ClickException(str(error.detail)) from error
    _echo_json(printed)  # once committed


@clients.command("rotate")
@click.argument("client_ref", metavar="CLIENT_ID")
def clients_rotate(client_ref: str) -> None:
    """Give an API client (by client_id or id) a new secret and print it as JSON (shown once).
    The old secret and every token issued before stop working at once."""
    from broker.errors import BrokerError
    from broker.models.base import utcnow
    from broker.services import organizations

    database = _database()
    _require_migrated(database)
    try:
        with database.transaction() as session:
            found = _find_client(session, client_ref)
            issued = organizations.rotate_client_secret(
                session, None, found.organization_id, found.client_id, utcnow()
            )
            printed = {
                "client_id": issued.client.client_id,
                "client_secret": issued.secret,
                "organization_id": str(issued.client.organization_id),
                "roles": issued.client.roles,
                "credential_version": issued.client.credential_version,
            }
    except BrokerError as error:
        raise click.ClickException(str(error.detail)) from error
    # Printed once committed: a secret printed by a rotation that then failed would not work.
    _echo_json(printed)


@main.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
def audit_verify() -> None:
    """Check every link of the audit chain; exit 1 and name the first broken one."""
    from broker.services.audit import verify_chain

    database = _database()
    _require_migrated(database)
    with database.session(read_only=True) as session:
        report = verify_chain(session)
    _echo_json(
        {
            "ok": report.ok,
            "events_checked": report.events_checked,
            "broken_at_seq": report.broken_at_seq,
            "reason": report.reason,
        }
    )
    if not report.ok:
        sys.exit(1)


@main.group()
def keys() -> None:
    """Keys encrypting provider credentials (newest first)."""


def _keyring() -> Any:
    from broker.services.credentials import Keyring, KeyringError

    try:
        return Keyring.from_config(load_config())
    except KeyringError as exc:
        raise OperationalProblem(str(exc)) from exc


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key (to put first in BROKER_CREDENTIAL_KEYS)."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@keys.command("rotate")
@click.option("--new-key", is_flag=True, help="First add a new key to the instance key file.")
def keys_rotate(new_key: bool) -> None:
    """Re-encrypt every provider's credentials, and identity providers' client secrets, under
    the first key.

    Rotation: put a new key first (`--new-key` with the key file, or in BROKER_CREDENTIAL_KEYS),
    run this, then remove the old keys (`broker keys drop-old`, or from the variable).
    """
    from broker.services import identity_providers
    from broker.services.credentials import CredentialsUnreadable, KeyringError, rotate_all

    keyring = _keyring()
    database = _database()
    _require_migrated(database)
    if new_key:
        try:
            keyring = keyring.add_key()
        except KeyringError as exc:
            raise OperationalProblem(str(exc)) from exc
    try:
        with database.transaction() as session:
            count = rotate_all(session, keyring)
            count += identity_providers.rotate_secrets(session, keyring)
    except CredentialsUnreadable as exc:
        raise OperationalProblem(f"Nothing rotated: {exc}") from exc
    _echo_json({"rotated": count, "keys": len(keyring.keys)})


@keys.command("drop-old")
def keys_drop_old() -> None:
    """Keep only the first key in the key file, once every row decrypts under it."""
    from broker.services import identity_providers
    from broker.services.credentials import CredentialsUnreadable, KeyringError, rotate_all

    keyring = _keyring()
    database = _database()
    _require_migrated(database)
    try:
        # Proves every row reads under the first key alone (and changes nothing else).
        with database.transaction() as session:
            rotate_all(session, keyring.primary_only())
            identity_providers.rotate_secrets(session, keyring.primary_only())
        keyring = keyring.drop_old_keys()
    except (CredentialsUnreadable, KeyringError) as exc:
        raise OperationalProblem(f"{exc} Run `broker keys rotate` first.") from exc
    _echo_json({"keys": len(keyring.keys)})


@main.group()
def providers() -> None:
    """Provider adapter plugins."""


@providers.command("list")
def providers_list() -> None:
    """The installed adapters (entry points `cloud_broker.providers`), checked."""
    from providers import registry

    rows = []
    for info in registry.available():
        row: dict[str, Any] = {"name": info.name, "target": info.target}
        row["distribution"] = info.distribution
        try:
            adapter = registry.load(info.name)
        except registry.AdapterUnavailable as exc:
            row.update(ok=False, error=str(exc))
        else:
            row.update(ok=True, features=sorted(adapter.features))
        rows.append(row)
    _echo_json(rows)


@main.group()
def jobs() -> None:
    """The job queue."""


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--kind", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50)
def jobs_list(state: str | None, kind: str | None, limit: int) -> None:
    """The newest jobs (with their state, attempts and last error)."""
    database = _database()
    _require_migrated(database)
    statement = select(Job).order_by(Job.created_at.desc()).limit(limit)
    if state is not None:
        statement = statement.where(Job.state == JobState(state))
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    with database.session(read_only=True) as session:
        rows = session.scalars(statement).all()
        _echo_json(
            [
                {
                    "id": str(job.id),
                    "kind": job.kind,
                    "state": job.state.value,
                    "attempts": job.attempts,
                    "max_attempts": job.max_attempts,
                    "run_after": job.run_after.isoformat(),
                    "last_error": job.last_error,
                }
                for job in rows
            ]
        )


@jobs.command("retry")
@click.argument("job_id", type=click.UUID)
def jobs_retry(job_id: uuid.UUID) -> None:
    """Queue a dead or failed job again, attempts reset."""
    from broker.jobs.queue import retry
    from broker.models.base import utcnow

    database = _database()
    _require_migrated(database)
    try:
        job = retry(database, job_id, utcnow())
    except (LookupError, ValueError) as exc:
        raise OperationalProblem(str(exc)) from exc
    _echo_json({"id": str(job.id), "state": job.state.value})


def _lanes_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    from broker.jobs.lanes import parse_lanes

    try:
        return parse_lanes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option(
    "--lanes",
    default=None,
    callback=_lanes_option,
    help="Comma-separated lanes to claim jobs from (provisioning, billing, catalogue, other, "
    "webhooks); default: all of them, webhook deliveries last.",
)
def worker(lanes: tuple[str, ...]) -> None:
    """Run a background worker until SIGTERM/SIGINT."""
    from broker.jobs.worker import install_signal_handlers, run_worker
    from broker.observability import configure_logging

    config = load_config()
    configure_logging(config["LOG_LEVEL"], config["JSON_LOGS"])
    stop = threading.Event()
    install_signal_handlers(stop)
    run_worker(_database(), stop, config, lanes=lanes)


@main.group()
def demo() -> None:
    """The demo consortium that `make run` seeds."""


# The demo clients the README's examples use: (shell name, organization, role).
DEMO_CLIENTS = [
    ("ADMIN", "Sovereign Cloud Consortium", "admin"),
    ("FINANCE", "Sovereign Cloud Consortium", "finance"),
    ("ASSESSOR", "Sovereign Cloud Consortium", "assessor"),
    ("BUYER", "Agence nationale des données de santé", "buyer"),
    ("APPROVER", "Agence nationale des données de santé", "approver"),
    ("OPERATOR", "Hexagone Cloud", "provider"),
    ("CITY_BUYER", "Ville de Québec", "buyer"),
]


@demo.command("env")
def demo_env() -> None:
    """Print the demo's clients and ids as shell variables, for `eval "$(broker demo env)"`:
    BROKER (its URL), <NAME>_ID and <NAME>_SECRET for ADMIN, FINANCE, ASSESSOR, BUYER and
    APPROVER (of the first demo agency), OPERATOR (of Hexagone Cloud) and CITY_BUYER (of the
    city of Québec, which buys in CAD), AGENCY_ID and PROVIDER_ID."""
    import shlex

    config = load_config()
    path = Path(config["INSTANCE_PATH"]) / "demo-credentials.json"
    if not path.exists():
        raise OperationalProblem("No demo here: start it once with `make run`.")
    credentials = json.loads(path.read_text())
    lines = {"BROKER": config["OAUTH_ISSUER"]}
    for name, organization, role in DEMO_CLIENTS:
        found = next(
            (c for c in credentials if c["organization"] == organization and role in c["roles"]),
            None,
        )
        if found is None:
            raise OperationalProblem(f"The demo has no {role} client of {organization}.")
        lines[f"{name}_ID"], lines[f"{name}_SECRET"] = found["client_id"], found["client_secret"]
    organizations = {c["organization"]: c["organization_id"] for c in credentials}
    lines["AGENCY_ID"] = organizations[DEMO_CLIENTS[3][1]]
    with _database().session(read_only=True) as session:
        provider = session.scalars(
            select(Provider.id).where(
                Provider.organization_id == uuid.UUID(organizations["Hexagone Cloud"])
            )
        ).first()
    if provider is None:
        raise OperationalProblem("The demo has no Hexagone Cloud provider.")
    lines["PROVIDER_ID"] = str(provider)
    for key, value in lines.items():
        click.echo(f"export {key}={shlex.quote(value)}")


@main.group()
def webhooks() -> None:
    """Webhook helpers for development."""


@webhooks.command("listen")
@click.option("--port", default=9000, show_default=True, help="Port to listen on (127.0.0.1).")
@click.option(
    "--secret",
    envvar="BROKER_WEBHOOK_SECRET",
    required=True,
    help="The endpoint's signing secret (shown once when it was registered).",
)
def webhooks_listen(port: int, secret: str) -> None:
    """Receive webhook deliveries on http://127.0.0.1:PORT/ and print each one with whether
    its `Broker-Signature` is valid (answered 204) or not (401). The broker only delivers to
    such a local address with BROKER_ALLOW_PRIVATE_WEBHOOKS=true (development only)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from broker.services.webhooks import SIGNATURE_HEADER, verify_signature

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            valid = verify_signature(secret, self.headers.get(SIGNATURE_HEADER), body)
            try:
                event = json.loads(body)
                what = f"{event.get('type')} {event.get('id')}"
            except ValueError:
                event, what = None, "(not JSON)"
            click.echo(f"{'valid' if valid else 'INVALID'} signature: {what}")
            if event is not None:
                click.echo(json.dumps(event, indent=2, ensure_ascii=False))
            self.send_response(204 if valid else 401)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Quiet: the deliveries are printed above."""

    def _stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Set, not inherited: a process started in the background may have SIGINT ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    click.echo(f"Listening on http://127.0.0.1:{server.server_port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# How long `serve` waits for its children once asked to stop (Ctrl-C, SIGTERM) before it kills
# them: a little more than gunicorn's `graceful_timeout`.
STOP_TIMEOUT = 9.0


@main.command()
@click.option("--demo/--no-demo", default=True, help="Seed and print the demo consortium.")
def serve(demo: bool) -> None:
    """Migrate, seed the demo consortium, then run gunicorn and a worker until stopped."""
    from broker.auth.keys import SigningKeys
    from broker.demo import DEMO_SELLER_ENV, seed_people
    from broker.migrate import upgrade
    from broker.seed import seed_demo

    if demo:  # the demo consortium's identity, where the environment gives none
        for variable, value in DEMO_SELLER_ENV.items():
            os.environ.setdefault(variable, value)
    config = load_config()
    require_seller(config)
    upgrade(config["DATABASE_URL"])
    # Create the signing key once, before several processes would race to create it.
    _ = SigningKeys(config["SIGNING_KEY"], config["SIGNING_KEY_FILE"]).private_key
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    database = _database()
    if demo:
        credentials = seed_demo(
            database, Path(config["INSTANCE_PATH"]) / "demo-credentials.json", config
        )
        people = seed_people(database, config)
        _print_demo(credentials, config["OAUTH_ISSUER"])
        _print_people(people, config["OAUTH_ISSUER"])
    database.refresh_statistics()
    database.dispose()

    env = {**os.environ, "HOST": host, "PORT": port}
    if demo:  # people sign in through the demo's own OpenID provider
        env["BROKER_DEMO_IDP"] = "true"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir(config))
    # Each child in a process group of its own: Ctrl-C in the terminal reaches this process
    # only, which then stops them gracefully (SIGTERM). Sent to gunicorn directly, SIGINT is a
    # "quick" shutdown that waits out `graceful_timeout` on idle keep-alive connections and
    # then SIGKILLs the workers.
    children = [
        subprocess.Popen([sys.executable, "-m", "broker.cli", "worker"], env=env, process_group=0),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(PROJECT_ROOT / "gunicorn.conf.py"),
                "broker.wsgi:app",
            ],
            env=env,
            process_group=0,
        ),
    ]
    stopping = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _stop)  # the terminal closed: its children must not outlive it
    # Run until asked to stop or until either child exits; then stop the other one too.
    while not stopping.is_set() and all(child.poll() is None for child in children):
        stopping.wait(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    # gunicorn gives in-flight requests `graceful_timeout` (gunicorn.conf.py); a job cut
    # short is taken over by another worker when its lease ends (broker/jobs/queue.py).
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    click.echo("broker stopped")
    if any(child.returncode not in (0, -signal.SIGTERM) for child in children):
        sys.exit(1)


def _metrics_dir(config: dict[str, Any]) -> Path:
    """Where gunicorn's workers write their Prometheus metrics so that `/metrics` adds them up
    (prometheus_client's multiprocess mode): `PROMETHEUS_MULTIPROC_DIR`, or a directory of the
    instance; emptied on every start, as the mode requires."""
    path = Path(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or Path(config["INSTANCE_PATH"]) / "metrics"
    )
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path


def _print_people(people: list[Any], base_url: str) -> None:
    click.echo(
        "Demo people (they sign in to the console through the demo identity provider; also in "
        "instance/demo-people.json):\n"
    )
    click.echo(f"  {'organization':<40} {'roles':<10} {'e-mail':<36} password")
    for person in people:
        click.echo(
            f"  {person.organization:<40} {','.join(person.roles):<10} {person.email:<36} "
            f"{person.password}"
        )
    click.echo(f"\nConsole (French or English): {base_url}/\n")


def _print_demo(credentials: list[Any], base_url: str) -> None:
    click.echo("\nDemo consortium credentials (also in instance/demo-credentials.json):\n")
    click.echo(f"  {'organization':<40} {'roles':<10} {'client_id':<28} client_secret")
    for c in credentials:
        click.echo(
            f"  {c.organization:<40} {','.join(c.roles):<10} {c.client_id:<28} {c.client_secret}"
        )
    admin = next((c for c in credentials if "admin" in c.roles), None)
    if admin is not None:
        click.echo("\nGet an admin token, then list the organizations:\n")
        click.echo(
            f"  TOKEN=$(curl -s -u '{admin.client_id}:{admin.client_secret}' "
            f"-d grant_type=client_credentials {base_url}/oauth/token "
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
        )
        click.echo(f'  curl -s -H "Authorization: Bearer $TOKEN" {base_url}/v1/organizations')
    click.echo(
        "\nThe README's examples, in another terminal of this directory, start with:\n\n"
        '  eval "$(.venv/bin/broker demo env)"'
    )
    click.echo(f"\nInteractive docs: {base_url}/docs (Authorize: a client id and secret)\n")


if __name__ == "__main__":
    main()
