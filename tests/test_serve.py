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
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker.seed import DEMO_ORGANIZATIONS

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CURL_TOKEN = re.compile(
    r"curl -s -u '(?P<client_id>[^':]+):(?P<secret>[^']+)' -d grant_type=client_credentials "
    r"(?P<base>http://\S+)/oauth/token"
)
DEMO_NAMES = {name for name, _kind, _roles in DEMO_ORGANIZATIONS}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- processes, through /proc (psutil is not installed) ---------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ..." — comm may contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _descendants(root: int) -> dict[int, str]:
    """Every living descendant of `root`: pid → command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, str] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found[pid] = _cmdline(pid)
        pending.extend(children.get(pid, []))
    return found


def _running(pid: int, cmdline: str) -> bool:
    """Still running (a zombie waiting to be reaped is not), and not a reused pid."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return _cmdline(pid) == cmdline


# --- the server under test --------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    base_url: str
    children: dict[int, str] = field(default_factory=dict)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def diagnostics(self) -> str:
        return f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _start(env: dict[str, str], logs: Path, run: int, base_url: str) -> Server:
    stdout_path, stderr_path = logs / f"serve-{run}.out", logs / f"serve-{run}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve"],
            env=env,
            cwd=logs,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            # Its own process group, like a shell job: Ctrl-C can be simulated with killpg,
            # and the cleanup can reach every process it started.
            start_new_session=True,
        )
    return Server(process, stdout_path, stderr_path, base_url)


def _http(
    method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def _wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"serve exited with {server.process.returncode}\n{server.diagnostics()}")
        try:
            status, body = _http("GET", f"{server.base_url}/healthz")
            if status == 200 and body == {"status": "ok"}:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"/healthz did not answer within {START_TIMEOUT}s\n{server.diagnostics()}")


def _printed_admin(server: Server) -> re.Match[str]:
    match = CURL_TOKEN.search(server.stdout)
    assert match, f"no curl command for a token in the output\n{server.diagnostics()}"
    return match


def _token_as_curl_does(base_url: str, client_id: str, secret: str) -> str:
    """`curl -s -u 'id:secret' -d grant_type=client_credentials <base>/oauth/token`."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    status, body = _http(
        "POST",
        f"{base_url}/oauth/token",
        data=b"grant_type=client_credentials",
        headers={
            "Authorization": f"Basic {basic}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert status == 200, body
    assert body["token_type"].lower() == "bearer"
    token: str = body["access_token"]
    return token


def _organizations(base_url: str, token: str) -> list[dict[str, Any]]:
    status, body = _http(
        "GET", f"{base_url}/v1/organizations", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200, body
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


def _credential_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if re.search(r"\bcb_\S+\s+\S+$", line)]


def _stop(server: Server, how: str) -> int:
    """Stop like an operator would; return the exit code (fails if it does not exit)."""
    if how == "SIGTERM":
        server.process.send_signal(signal.SIGTERM)
    else:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        os.killpg(server.process.pid, signal.SIGINT)
    try:
        return server.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within {STOP_TIMEOUT}s of {how}\n{server.diagnostics()}")


def _kill_leftovers(server: Server) -> None:
    for pid, cmdline in server.children.items():
        if _running(pid, cmdline):
            os.kill(pid, signal.SIGKILL)
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.process.wait(timeout=10)


def _record_children(server: Server) -> None:
    server.children = _descendants(server.process.pid)
    commands = list(server.children.values())
    assert any("broker.cli worker" in c for c in commands), commands
    assert sum("gunicorn" in c for c in commands) >= 2, commands  # master and a worker


def _assert_stopped_cleanly(server: Server, code: int, how: str) -> None:
    assert code == 0, f"serve exited with {code} after {how}\n{server.diagnostics()}"
    left = {pid: c for pid, c in server.children.items() if _running(pid, c)}
    assert not left, f"processes left running after {how}: {left}"
    assert "broker stopped" in server.stdout
    assert "Traceback" not in server.stderr, server.diagnostics()


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture
def serve_env(
    db_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    instance = tmp_path / "instance"
    if db_kind == "postgresql":
        database_url: str = request.getfixturevalue("database_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BROKER_", "GUNICORN_", "PROMETHEUS_"))
    }
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(_free_port()),
            "BROKER_INSTANCE_PATH": str(instance),
            "DATABASE_URL": database_url,
            "WEB_CONCURRENCY": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
            # gunicorn keeps its control socket under ~/.gunicorn: give this run its own.
            "HOME": str(tmp_path),
        }
    )
    yield env


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
        first = _start(serve_env, tmp_path, 1, base_url)
        servers.append(first)
        _wait_until_up(first)

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

        token = _token_as_curl_does(printed["base"], printed["client_id"], printed["secret"])
        organizations = _organizations(base_url, token)
        assert len(organizations) == 6
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

        status, created = _http(
            "POST",
            f"{base_url}/v1/organizations",
            data=json.dumps({"name": "Ville de Lyon", "kind": "agency"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert status == 201, created

        _record_children(first)
        code = _stop(first, "SIGTERM")
        _assert_stopped_cleanly(first, code, "SIGTERM")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            _http("GET", f"{base_url}/healthz")

        # --- second start on the same instance: nothing lost, same credentials ------------
        second = _start(serve_env, tmp_path, 2, base_url)
        servers.append(second)
        _wait_until_up(second)

        assert json.loads(credentials_file.read_text()) == credentials
        assert _credential_lines(second.stdout) == _credential_lines(first.stdout)
        assert len(_credential_lines(second.stdout)) == 10
        again = _printed_admin(second)
        assert (again["client_id"], again["secret"]) == (admin["client_id"], admin["client_secret"])

        token = _token_as_curl_does(again["base"], again["client_id"], again["secret"])
        organizations = _organizations(base_url, token)
        assert {o["name"]: o["id"] for o in organizations} == {
            **demo_ids,
            "Ville de Lyon": created["id"],
        }

        _record_children(second)
        code = _stop(second, "Ctrl-C")
        _assert_stopped_cleanly(second, code, "Ctrl-C")
    finally:
        for server in servers:
            _kill_leftovers(server)
