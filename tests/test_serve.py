"""`broker serve` end to end, as `make run` runs it: a real process tree over real HTTP.

The command migrates the database, seeds the demo consortium, prints the demo credentials
and a copy-paste `curl` for an admin token, then runs gunicorn and a background worker. The
test uses the printed command's exact request (HTTP Basic, `grant_type=client_credentials`
form), lists the organizations, stops the server with SIGTERM (what systemd or `docker stop`
send) and checks that it exits 0 leaving no gunicorn or worker process behind. A second start
on the same instance keeps the database and prints the same credentials, and Ctrl-C (SIGINT
to the whole foreground process group) stops it as cleanly.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import re
import socket
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.seed import DEMO_ORGANIZATIONS
from tests.serving import (
    Server,
    credential_lines,
    descendants,
    http_call,
    kill_leftovers,
    running,
    start,
    stop,
    token_as_curl_does,
    wait_until_up,
)

pytestmark = pytest.mark.slow

# Ctrl-C must stop `make run` within 10 s (gunicorn's graceful timeout is 8 s).
CTRL_C_TIMEOUT = 10.0
HEALTH_CHECKS = 20
CURL_TOKEN = re.compile(
    r"curl -s -u '(?P<client_id>[^':]+):(?P<secret>[^']+)' -d grant_type=client_credentials "
    r"(?P<base>http://\S+)/oauth/token"
)
DEMO_NAMES = {name for name, _kind, _roles in DEMO_ORGANIZATIONS}


# --- processes, through /proc (psutil is not installed) ---------------------------------------


# --- the server under test --------------------------------------------------------------------


def _printed_admin(server: Server) -> re.Match[str]:
    match = CURL_TOKEN.search(server.stdout)
    assert match, f"no curl command for a token in the output\n{server.diagnostics()}"
    return match


def _organizations(base_url: str, token: str) -> list[dict[str, Any]]:
    status, body = http_call(
        "GET", f"{base_url}/v1/organizations", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def _healthz_count(exposition: str) -> float:
    """`broker_http_requests_total` of `GET /healthz` answered 200, over every worker."""
    pattern = re.compile(
        r'^broker_http_requests_total\{(?=[^}]*method="GET")(?=[^}]*route="/healthz")'
        r'(?=[^}]*status="200")[^}]*\} (\S+)$',
        re.MULTILINE,
    )
    return sum(float(value) for value in pattern.findall(exposition))


@contextlib.contextmanager
def _keep_alive_connections(port: int, count: int) -> Iterator[None]:
    """`count` clients that made a request each and keep their connection open, idle."""
    connections = []
    try:
        for _ in range(count):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connections.append(connection)
        yield
    finally:
        for connection in connections:
            connection.close()


def _record_children(server: Server) -> None:
    server.children = descendants(server.process.pid)
    commands = list(server.children.values())
    assert any("broker.cli worker" in c for c in commands), commands
    assert sum("gunicorn" in c for c in commands) >= 2, commands  # master and a worker


def _assert_stopped_cleanly(server: Server, code: int, how: str) -> None:
    assert code == 0, f"serve exited with {code} after {how}\n{server.diagnostics()}"
    left = {pid: c for pid, c in server.children.items() if running(pid, c)}
    assert not left, f"processes left running after {how}: {left}"
    assert "broker stopped" in server.stdout
    assert "Traceback" not in server.stderr, server.diagnostics()


# --- the test -----------------------------------------------------------------------------------


def _last_month_can_be_read_with_the_printed_credentials(server: Server) -> None:
    """The demo's closed month (broker/demo_history.py), with only what `make run` printed:
    an agency's finalized invoice in every format, its credit note, the month's settlements."""
    printed = {}
    for line in credential_lines(server.stdout):
        organization, roles, client_id, secret = line.rsplit(maxsplit=3)
        printed[(organization, roles)] = (client_id, secret)
    base_url = server.base_url
    finance = token_as_curl_does(base_url, *printed[("Sovereign Cloud Consortium", "finance")])
    buyer = token_as_curl_does(
        base_url, *printed[("Agence nationale des données de santé", "buyer")]
    )

    def get(path: str, token: str) -> Any:
        status, body = http_call(
            "GET", f"{base_url}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        assert status == 200, (path, body)
        return body

    period = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    [invoice] = get(f"/v1/invoices?period={period}", buyer)["items"]
    assert invoice["state"] == "finalized"
    path = f"/v1/invoices/{invoice['id']}/export?format="
    assert get(f"{path}json", buyer)["number"] == invoice["number"]
    assert invoice["number"] in get(f"{path}csv", buyer)
    assert invoice["number"] in get(f"{path}cii", buyer)
    assert get(f"{path}pdf", buyer).startswith("%PDF")
    [note] = get("/v1/credit-notes", buyer)["items"]
    assert note["invoice_id"] == invoice["id"]
    settlements = get(f"/v1/settlements?period={period}", finance)
    assert {item["provider_name"] for item in settlements["items"]} == {
        "Hexagone Cloud",
        "Nordet Nuagique",
    }


def _raw_request(port: int, request: str) -> tuple[str, str]:
    """Send `request` as it is (no client library would send it) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request.encode("latin-1"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    return head, body


def test_serve_seeds_serves_stops_and_restarts_on_the_same_instance(
    serve_env: dict[str, str], tmp_path: Path
) -> None:
    base_url = f"http://127.0.0.1:{serve_env['PORT']}"
    credentials_file = Path(serve_env["BROKER_INSTANCE_PATH"]) / "demo-credentials.json"
    servers: list[Server] = []
    try:
        # --- first start: migrate, seed, print, serve ------------------------------------
        first = start(serve_env, tmp_path, 1, base_url)
        servers.append(first)
        wait_until_up(first)

        assert credentials_file.exists()
        assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
        credentials = json.loads(credentials_file.read_text())
        assert len(credentials) == 10
        for credential in credentials:
            assert credential["client_id"] in first.stdout
            assert credential["client_secret"] in first.stdout
        admin = next(c for c in credentials if c["roles"] == ["admin"])

        printed = _printed_admin(first)
        assert printed["base"] == base_url
        assert (printed["client_id"], printed["secret"]) == (
            admin["client_id"],
            admin["client_secret"],
        )
        assert f'curl -s -H "Authorization: Bearer $TOKEN" {base_url}/v1/organizations' in (
            first.stdout
        )

        token = token_as_curl_does(printed["base"], printed["client_id"], printed["secret"])
        # The issuer is where it serves (PORT), in its tokens and its discovery document.
        assert _claims(token)["iss"] == base_url
        status, metadata = http_call("GET", f"{base_url}/.well-known/oauth-authorization-server")
        assert status == 200, metadata
        assert (metadata["issuer"], metadata["token_endpoint"], metadata["jwks_uri"]) == (
            base_url,
            f"{base_url}/oauth/token",
            f"{base_url}/.well-known/jwks.json",
        )
        organizations = _organizations(base_url, token)
        assert len(organizations) == 6
        _last_month_can_be_read_with_the_printed_credentials(first)
        assert {o["name"] for o in organizations} == DEMO_NAMES
        demo_ids = {o["name"]: o["id"] for o in organizations}

        # What gunicorn refuses before the app sees it is problem+json too.
        for status, request in (
            (414, f"GET /v1/offers?q={'x' * 9000} HTTP/1.1\r\nHost: a\r\n\r\n"),
            (431, f"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {'y' * 9000}\r\n\r\n"),
        ):
            head, body = _raw_request(int(serve_env["PORT"]), request)
            assert head.startswith(f"HTTP/1.1 {status} "), head
            assert "content-type: application/problem+json" in head.lower()
            assert json.loads(body)["status"] == status

        status, created = http_call(
            "POST",
            f"{base_url}/v1/organizations",
            data=json.dumps({"name": "Ville de Lyon", "kind": "agency"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert status == 201, created

        _record_children(first)
        code = stop(first, "SIGTERM")
        _assert_stopped_cleanly(first, code, "SIGTERM")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            http_call("GET", f"{base_url}/healthz")

        # --- second start on the same instance: nothing lost, same credentials ------------
        second = start(serve_env, tmp_path, 2, base_url)
        servers.append(second)
        wait_until_up(second)

        assert json.loads(credentials_file.read_text()) == credentials
        assert credential_lines(second.stdout) == credential_lines(first.stdout)
        assert len(credential_lines(second.stdout)) == 10
        again = _printed_admin(second)
        assert (again["client_id"], again["secret"]) == (admin["client_id"], admin["client_secret"])

        token = token_as_curl_does(again["base"], again["client_id"], again["secret"])
        organizations = _organizations(base_url, token)
        assert {o["name"]: o["id"] for o in organizations} == {
            **demo_ids,
            "Ville de Lyon": created["id"],
        }

        # /metrics adds up what every gunicorn worker counted (two of them here).
        for _ in range(HEALTH_CHECKS):
            assert http_call("GET", f"{base_url}/healthz")[0] == 200
        for _ in range(4):
            status, exposition = http_call("GET", f"{base_url}/metrics")
            assert status == 200
            assert _healthz_count(exposition) >= HEALTH_CHECKS, exposition

        # Ctrl-C while clients hold keep-alive connections open: a prompt, quiet stop.
        _record_children(second)
        with _keep_alive_connections(int(serve_env["PORT"]), 8):
            code = stop(second, "Ctrl-C", timeout=CTRL_C_TIMEOUT)
        _assert_stopped_cleanly(second, code, "Ctrl-C")
        assert "SIGKILL" not in second.stderr, second.diagnostics()
    finally:
        for server in servers:
            kill_leftovers(server)
