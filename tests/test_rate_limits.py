"""Rate limits: a burst gets 429 problem+json with `Retry-After`, per client, per address,
stricter on the token endpoint and on expensive operations; with Redis, every process counts
against one allowance.

The Redis test starts a real `redis-server` (Debian's package, installed by `make test` when
missing); outside CI it is skipped when the binary is absent, under `CI=true` it fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from broker import create_app
from tests.conftest import ApiUser, MakeUser
from tests.helpers import problem

LIMITS = {
    "RATE_LIMIT_PER_CLIENT": "5 per minute",
    "RATE_LIMIT_PER_ADDRESS": "8 per minute",
    "RATE_LIMIT_TOKEN": "3 per minute",
    "RATE_LIMIT_EXPENSIVE": "2 per minute",
}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **LIMITS}


def _from(address: str) -> dict[str, Any]:
    return {"environ_base": {"REMOTE_ADDR": address}}


def _me(client: FlaskClient, user: ApiUser, address: str) -> Any:
    return client.get(
        f"/v1/organizations/{user.organization_id}", headers=user.headers, **_from(address)
    )


def _refused(response: Any) -> dict[str, Any]:
    body = problem(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Remaining"] == "0"
    return body


def test_a_client_gets_its_allowance_then_429_and_others_are_untouched(
    client: FlaskClient, make_user: MakeUser
) -> None:
    greedy, patient = make_user("agency", ["buyer"]), make_user("agency", ["buyer"])
    remaining = []
    for _ in range(5):
        response = _me(client, greedy, "198.51.100.1")
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "5"
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]
    refused = _refused(_me(client, greedy, "198.51.100.2"))  # another address: the same client
    assert "this client" in refused["detail"]
    assert _me(client, patient, "198.51.100.3").status_code == 200


def test_an_address_gets_its_allowance_whatever_the_tokens(
    client: FlaskClient, make_user: MakeUser
) -> None:
    users = [make_user("agency", ["buyer"]) for _ in range(3)]
    statuses = [_me(client, users[n % 3], "198.51.100.9").status_code for n in range(8)]
    assert statuses == [200] * 8
    refused = _refused(_me(client, users[0], "198.51.100.9"))
    assert "this address" in refused["detail"]
    # Forged tokens count against the address too, not against anyone's client allowance.
    forged = {"Authorization": "Bearer not-a-token"}
    assert client.get("/v1/offers", headers=forged, **_from("198.51.100.10")).status_code == 401
    assert _me(client, users[1], "198.51.100.11").status_code == 200


def test_the_token_endpoint_is_stricter(client: FlaskClient, buyer: ApiUser) -> None:
    def token() -> Any:
        return client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(buyer.client_id, buyer.client_secret),
            **_from("198.51.100.20"),
        )

    assert [token().status_code for _ in range(3)] == [200, 200, 200]
    _refused(token())


def test_expensive_operations_have_their_own_allowance(client: FlaskClient, buyer: ApiUser) -> None:
    def search() -> Any:
        return client.get("/v1/offers", headers=buyer.headers, **_from("198.51.100.30"))

    assert [search().status_code for _ in range(2)] == [200, 200]
    refused = _refused(search())
    assert "expensive" in refused["detail"]
    assert _me(client, buyer, "198.51.100.30").status_code == 200  # the rest still works


def test_health_checks_are_never_limited(client: FlaskClient) -> None:
    statuses = {client.get("/healthz", **_from("198.51.100.40")).status_code for _ in range(20)}
    assert statuses == {200}


# --- Redis: one allowance for every process ----------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing: `make test` installs Debian's redis-server")
        pytest.skip("redis-server is not installed (make test installs it)")
    port = _free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_with_redis_every_process_shares_one_allowance(
    app_config: dict[str, Any], redis_url: str, make_user: MakeUser
) -> None:
    buyer = make_user("agency", ["buyer"])
    # Two apps stand for two gunicorn processes (or hosts) counting in one Redis.
    apps: list[Flask] = [
        create_app({**app_config, "RATE_LIMIT_STORAGE_URI": redis_url}) for _ in range(2)
    ]
    try:
        clients = [application.test_client() for application in apps]
        statuses = [
            _me(clients[n % 2], buyer, f"198.51.100.{50 + n}").status_code for n in range(5)
        ]
        assert statuses == [200] * 5
        _refused(_me(clients[1], buyer, "198.51.100.60"))
        _refused(_me(clients[0], buyer, "198.51.100.61"))
    finally:
        for application in apps:
            application.extensions["broker.db"].dispose()


def test_when_the_storage_fails_requests_are_served_and_it_is_logged(
    app_config: dict[str, Any], make_user: MakeUser, caplog: pytest.LogCaptureFixture
) -> None:
    buyer = make_user("agency", ["buyer"])
    # Nothing listens there: every count fails.
    application = create_app(
        {**app_config, "RATE_LIMIT_STORAGE_URI": f"redis://127.0.0.1:{_free_port()}/0"}
    )
    try:
        client = application.test_client()
        statuses = [_me(client, buyer, "198.51.100.70").status_code for _ in range(7)]
        assert statuses == [200] * 7
        assert "rate limits not counted" in caplog.text
    finally:
        application.extensions["broker.db"].dispose()
