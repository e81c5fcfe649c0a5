"""Operations endpoints: liveness, readiness, Prometheus metrics, offline docs, the spec, and
request ids.

`/readyz` is what a load balancer or a deploy script polls: it must say 503 `not_ready`
(problem+json) both when the database is unreachable and when its schema is behind, and 200
only on a migrated database. `/docs` must work with no internet access (Swagger UI assets
served by the app itself).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from broker import create_app

_GENERATED_ID = re.compile(r"^[A-Za-z0-9._:\-]{8,100}$")


@pytest.fixture
def app_factory(app_config: dict[str, Any]) -> Iterator[Any]:
    """`app_factory(database_url)` → an app like the `app` fixture on another database."""
    made: list[Flask] = []

    def make(database_url: str) -> Flask:
        application = create_app({**app_config, "DATABASE_URL": database_url})
        made.append(application)
        return application

    yield make
    for application in made:
        application.extensions["broker.db"].dispose()


def _assert_not_ready(response: Any) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["code"] == "not_ready"
    assert body["status"] == 503
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]


# --- liveness and readiness ------------------------------------------------------------------


def test_healthz_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_readyz_is_ready_on_a_migrated_database(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json == {"status": "ready"}


def test_readyz_is_not_ready_on_an_unmigrated_database(app_factory: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    application = app_factory(f"sqlite:///{empty}")
    test_client = application.test_client()

    response = test_client.get("/readyz")
    _assert_not_ready(response)
    assert "migrat" in response.json["detail"]
    # Liveness does not depend on the database.
    assert test_client.get("/healthz").status_code == 200


def test_readyz_is_not_ready_when_the_database_is_unreachable(app_factory: Any) -> None:
    application = app_factory("postgresql+psycopg://x@127.0.0.1:1/x")
    test_client = application.test_client()

    response = test_client.get("/readyz")
    _assert_not_ready(response)
    assert "unreachable" in response.json["detail"]
    assert test_client.get("/healthz").status_code == 200


# --- metrics -----------------------------------------------------------------------------------


def _samples(text: str, name: str) -> list[Any]:
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_metrics_count_requests_per_route_in_prometheus_text(
    client: FlaskClient, admin: Any
) -> None:
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    org_id = admin.organization_id
    assert client.get(f"/v1/organizations/{org_id}", headers=admin.headers).status_code == 200
    assert client.get("/v1/organizations").status_code == 401

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "# TYPE broker_http_requests_total counter" in text

    counts = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in _samples(text, "broker_http_requests_total")
    }
    assert counts[("GET", "/healthz", "200")] == 3.0
    # Routes are labelled by their pattern, not the concrete path (bounded cardinality).
    assert counts[("GET", "/v1/organizations/<uuid:organization_id>", "200")] == 1.0
    assert counts[("GET", "/v1/organizations", "401")] == 1.0
    assert not [route for (_, route, _) in counts if org_id in route]

    latency = _samples(text, "broker_http_request_duration_seconds_count")
    assert any(s.labels["route"] == "/healthz" and s.value == 3.0 for s in latency)


# --- documentation -----------------------------------------------------------------------------


def test_docs_are_served_without_a_cdn(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "/docs/assets/" in html
    assert "/docs/assets/swagger-ui-bundle.js" in html
    assert "/docs/assets/swagger-ui.css" in html
    external = re.findall(r"""(?:src|href)=["'](https?:)?//""", html)
    assert not external, "the docs page loads something from another host"

    referenced = set(re.findall(r"""(?:src|href)=["'](/docs/assets/[^"']+)["']""", html))
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= referenced
    for path in referenced:
        asset = client.get(path)
        assert asset.status_code == 200, path
        assert len(asset.data) > 1000, path
    assert "javascript" in client.get("/docs/assets/swagger-ui-bundle.js").mimetype
    assert client.get("/docs/assets/swagger-ui.css").mimetype == "text/css"


def test_openapi_yaml_describes_the_api(client: FlaskClient) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert "yaml" in response.mimetype
    document = yaml.safe_load(response.get_data(as_text=True))
    assert str(document["openapi"]).startswith("3.1")
    assert "/v1/organizations" in document["paths"]
    assert "post" in document["paths"]["/v1/organizations"]
    assert document["info"]["title"]


def test_the_json_spec_the_docs_page_loads_is_served(client: FlaskClient) -> None:
    html = client.get("/docs").get_data(as_text=True)
    match = re.search(r"""url:\s*["']([^"']+)["']""", html)
    assert match, "the docs page names no spec URL"
    spec = client.get(match.group(1))
    assert spec.status_code == 200
    assert "/v1/organizations" in spec.json["paths"]


# --- request ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    ["abc-123", "trace.id:42_x", "0" * 100, "f47ac10b-58cc-4372-a567-0e02b2c3d479"],
)
def test_a_valid_request_id_is_echoed(client: FlaskClient, request_id: str) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] == request_id


def test_a_valid_request_id_appears_in_problem_bodies(client: FlaskClient) -> None:
    response = client.get("/v1/organizations", headers={"X-Request-Id": "trace-401"})
    assert response.status_code == 401
    assert response.headers["X-Request-Id"] == "trace-401"
    assert response.json["request_id"] == "trace-401"


@pytest.mark.parametrize(
    "request_id",
    [
        "has spaces in it",
        "x" * 200,
        "x" * 101,
        "semi;colon",
        "new\\nline",
        "<script>alert(1)</script>",
        "ünïcödé",
    ],
    ids=["spaces", "200-chars", "101-chars", "semicolon", "backslash", "html", "non-ascii"],
)
def test_an_invalid_request_id_is_replaced(client: FlaskClient, request_id: str) -> None:
    headers = {"X-Request-Id": request_id.encode("utf-8").decode("latin-1")}
    response = client.get("/healthz", headers=headers)
    assert response.status_code == 200
    generated = response.headers["X-Request-Id"]
    assert generated != request_id
    assert _GENERATED_ID.match(generated), generated


def test_a_request_id_is_generated_when_none_is_sent(client: FlaskClient) -> None:
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/healthz").headers["X-Request-Id"]
    assert _GENERATED_ID.match(first)
    assert _GENERATED_ID.match(second)
    assert first != second
