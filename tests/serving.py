"""Driving the real `broker serve` (what `make run` runs) from tests: a process tree over real
HTTP, started on a test's own instance and database (the `serve_env` fixture of conftest.py),
stopped as an operator would (SIGTERM, or Ctrl-C to the process group), with nothing left
behind. Used by tests/test_serve.py, tests/test_demo_history.py and tests/test_readme.py."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def descendants(root: int) -> dict[int, str]:
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


def running(pid: int, cmdline: str) -> bool:
    """Still running (a zombie waiting to be reaped is not), and not a reused pid."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return _cmdline(pid) == cmdline


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


def serve_environment(database_url: str, instance: Path, home: Path) -> dict[str, str]:
    """The environment of a `broker serve` on its own instance directory, database and free
    port: this process's, without any broker, gunicorn or Prometheus setting of its own."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("BROKER_", "GUNICORN_", "PROMETHEUS_"))
    }
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "BROKER_INSTANCE_PATH": str(instance),
            "DATABASE_URL": database_url,
            "WEB_CONCURRENCY": "2",
            "PYTHONPATH": str(PROJECT_ROOT),
            # gunicorn keeps its control socket under ~/.gunicorn: give each run its own.
            "HOME": str(home),
        }
    )
    return env


def start(env: dict[str, str], logs: Path, run: int, base_url: str) -> Server:
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


def http_call(
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


def wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"serve exited with {server.process.returncode}\n{server.diagnostics()}")
        try:
            status, body = http_call("GET", f"{server.base_url}/healthz")
            if status == 200 and body == {"status": "ok"}:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    pytest.fail(f"/healthz did not answer within {START_TIMEOUT}s\n{server.diagnostics()}")


def token_as_curl_does(base_url: str, client_id: str, secret: str) -> str:
    """`curl -s -u 'id:secret' -d grant_type=client_credentials <base>/oauth/token`."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    status, body = http_call(
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


def stop(server: Server, how: str, timeout: float = STOP_TIMEOUT) -> int:
    """Stop like an operator would; return the exit code (fails if it does not exit)."""
    if how == "SIGTERM":
        server.process.send_signal(signal.SIGTERM)
    else:  # Ctrl-C in a terminal: SIGINT to the whole foreground process group
        os.killpg(server.process.pid, signal.SIGINT)
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within {timeout}s of {how}\n{server.diagnostics()}")


def kill_leftovers(server: Server) -> None:
    """Whatever a test left running: the processes recorded, and those the server still has
    (gunicorn and the worker run in process groups of their own, out of reach of `killpg`)."""
    alive = descendants(server.process.pid) if server.process.poll() is None else {}
    for pid, cmdline in {**server.children, **alive}.items():
        if running(pid, cmdline):
            os.kill(pid, signal.SIGKILL)
    if server.process.poll() is None:
        try:
            os.killpg(server.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.process.wait(timeout=10)


def credential_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if re.search(r"\bcb_\S+\s+\S+$", line)]
