"""Every error the API returns is an RFC 9457 problem (`application/problem+json`).

Each class of failure is provoked the way a client would run into it (routing, body size,
media type, JSON syntax, validation, conflicts, preconditions, crashes) and checked for the
shape clients rely on: `type`, `title`, `status` (equal to the HTTP status), a stable `code`
slug and the `request_id` also sent back in `X-Request-Id`. The token endpoint is the one
exception: OAuth client libraries expect RFC 6749's `{"error": ...}` there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from broker import create_app
from tests.conftest import ApiUser

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:cloud-broker:problem:"
ONE_MIB = 1024 * 1024


def assert_problem(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The common problem shape; returns the body for further checks."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == PROBLEM_JSON
    body: dict[str, Any] = response.json
    assert body["type"] == PROBLEM_TYPE_BASE + code
    assert isinstance(body["title"], str) and body["title"]
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def organization_names(client: FlaskClient, admin: ApiUser) -> list[str]:
    response = client.get("/v1/organizations", headers=admin.headers, query_string={"limit": 200})
    assert response.status_code == 200
    return [item["name"] for item in response.json["items"]]


def create_organization(client: FlaskClient, admin: ApiUser, name: str) -> TestResponse:
    response = client.post(
        "/v1/organizations", json={"name": name, "kind": "agency"}, headers=admin.headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return response


# --- routing and transport -----------------------------------------------------------------


def test_unknown_route_is_404(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/no-such-thing"), 404, "not_found")


def test_unknown_organization_is_404(client: FlaskClient, admin: ApiUser) -> None:
    response = client.get(
        "/v1/organizations/00000000-0000-4000-8000-000000000000", headers=admin.headers
    )
    assert_problem(response, 404, "not_found")


def test_wrong_method_is_405_with_allow(client: FlaskClient, admin: ApiUser) -> None:
    response = client.delete("/v1/organizations", headers=admin.headers)
    assert_problem(response, 405, "method_not_allowed")
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed


def test_body_over_one_mib_is_413(client: FlaskClient, admin: ApiUser) -> None:
    prefix, suffix = b'{"kind": "agency", "name": "', b'"}'
    body = prefix + b"x" * (ONE_MIB + 1 - len(prefix) - len(suffix)) + suffix
    assert len(body) == ONE_MIB + 1
    json.loads(body)  # valid JSON: only its size is wrong
    response = client.post(
        "/v1/organizations", data=body, content_type="application/json", headers=admin.headers
    )
    assert_problem(response, 413, "payload_too_large")
    assert organization_names(client, admin) == ["Test Consortium"]


def test_body_of_exactly_one_mib_is_read(client: FlaskClient, admin: ApiUser) -> None:
    """Boundary control: at the limit the body is parsed (and then fails validation)."""
    prefix, suffix = b'{"kind": "agency", "name": "', b'"}'
    body = prefix + b"x" * (ONE_MIB - len(prefix) - len(suffix)) + suffix
    response = client.post(
        "/v1/organizations", data=body, content_type="application/json", headers=admin.headers
    )
    problem = assert_problem(response, 422, "validation_failed")
    assert set(problem["errors"]) == {"name"}


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("text/plain", "name=Acme&kind=agency"),
        ("application/x-www-form-urlencoded", "name=Acme&kind=agency"),
        ("text/plain", '{"name": "Acme", "kind": "agency"}'),
    ],
)
def test_non_json_body_is_415(
    client: FlaskClient, admin: ApiUser, content_type: str, data: str
) -> None:
    response = client.post(
        "/v1/organizations", data=data, content_type=content_type, headers=admin.headers
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert "Acme" not in organization_names(client, admin)


def test_malformed_json_is_400(client: FlaskClient, admin: ApiUser) -> None:
    response = client.post(
        "/v1/organizations",
        data='{"name": "Acme", "kind": ',
        content_type="application/json",
        headers=admin.headers,
    )
    body = assert_problem(response, 400, "malformed_body")
    assert "errors" not in body


# --- validation ----------------------------------------------------------------------------


def _post_organization(client: FlaskClient, admin: ApiUser, payload: Any) -> TestResponse:
    return client.post("/v1/organizations", json=payload, headers=admin.headers)


def _assert_field_errors(body: dict[str, Any], fields: set[str]) -> None:
    assert set(body["errors"]) == fields
    for messages in body["errors"].values():
        assert isinstance(messages, list) and messages
        assert all(isinstance(message, str) and message for message in messages)


def test_missing_field_is_422(client: FlaskClient, admin: ApiUser) -> None:
    body = assert_problem(
        _post_organization(client, admin, {"kind": "agency"}), 422, "validation_failed"
    )
    _assert_field_errors(body, {"name"})


def test_wrong_enum_value_is_422(client: FlaskClient, admin: ApiUser) -> None:
    response = _post_organization(client, admin, {"name": "Acme", "kind": "martian"})
    body = assert_problem(response, 422, "validation_failed")
    _assert_field_errors(body, {"kind"})
    assert "agency" in body["errors"]["kind"][0]
    assert "Acme" not in organization_names(client, admin)


def test_unknown_field_is_422(client: FlaskClient, admin: ApiUser) -> None:
    response = _post_organization(
        client, admin, {"name": "Acme", "kind": "agency", "is_admin": True}
    )
    body = assert_problem(response, 422, "validation_failed")
    _assert_field_errors(body, {"is_admin"})
    assert "Acme" not in organization_names(client, admin)


def test_every_invalid_field_is_reported_at_once(client: FlaskClient, admin: ApiUser) -> None:
    response = _post_organization(client, admin, {"kind": "martian", "extra": 1})
    body = assert_problem(response, 422, "validation_failed")
    _assert_field_errors(body, {"name", "kind", "extra"})


def test_json_list_body_is_422(client: FlaskClient, admin: ApiUser) -> None:
    response = _post_organization(client, admin, [{"name": "Acme", "kind": "agency"}])
    body = assert_problem(response, 422, "validation_failed")
    _assert_field_errors(body, {"_schema"})
    assert "Acme" not in organization_names(client, admin)


@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1"])
def test_invalid_limit_is_422(client: FlaskClient, admin: ApiUser, limit: str) -> None:
    response = client.get("/v1/organizations", query_string={"limit": limit}, headers=admin.headers)
    body = assert_problem(response, 422, "validation_failed")
    # Query parameters are reported under their bare name, like body fields.
    _assert_field_errors(body, {"limit"})


@pytest.mark.parametrize("limit", ["1", "200"])
def test_limit_at_the_bounds_is_accepted(client: FlaskClient, admin: ApiUser, limit: str) -> None:
    response = client.get("/v1/organizations", query_string={"limit": limit}, headers=admin.headers)
    assert response.status_code == 200
    assert [item["name"] for item in response.json["items"]] == ["Test Consortium"]


# --- conflicts and preconditions -----------------------------------------------------------


def test_duplicate_organization_name_is_409(client: FlaskClient, admin: ApiUser) -> None:
    create_organization(client, admin, "Ministry of Examples")
    response = _post_organization(client, admin, {"name": "Ministry of Examples", "kind": "agency"})
    body = assert_problem(response, 409, "name_taken")
    assert "Ministry of Examples" in body["detail"]
    assert organization_names(client, admin).count("Ministry of Examples") == 1


def test_patch_without_if_match_is_428(client: FlaskClient, admin: ApiUser) -> None:
    location = create_organization(client, admin, "Old Name").headers["Location"]
    response = client.patch(location, json={"name": "New Name"}, headers=admin.headers)
    assert_problem(response, 428, "precondition_required")
    assert client.get(location, headers=admin.headers).json["name"] == "Old Name"


def test_patch_with_stale_if_match_is_412(client: FlaskClient, admin: ApiUser) -> None:
    created = create_organization(client, admin, "Old Name")
    location, first_etag = created.headers["Location"], created.headers["ETag"]
    renamed = client.patch(
        location, json={"name": "Second Name"}, headers={**admin.headers, "If-Match": first_etag}
    )
    assert renamed.status_code == 200
    # A second writer still holding the first ETag loses.
    response = client.patch(
        location, json={"name": "Third Name"}, headers={**admin.headers, "If-Match": first_etag}
    )
    assert_problem(response, 412, "precondition_failed")
    current = client.get(location, headers=admin.headers)
    assert current.json["name"] == "Second Name"
    assert current.headers["ETag"] == renamed.headers["ETag"]


def test_patch_with_current_if_match_succeeds(client: FlaskClient, admin: ApiUser) -> None:
    created = create_organization(client, admin, "Old Name")
    location, etag = created.headers["Location"], created.headers["ETag"]
    assert client.get(location, headers=admin.headers).headers["ETag"] == etag
    response = client.patch(
        location, json={"name": "New Name"}, headers={**admin.headers, "If-Match": etag}
    )
    assert response.status_code == 200
    assert response.json["name"] == "New Name"
    assert response.headers["ETag"] and response.headers["ETag"] != etag
    current = client.get(location, headers=admin.headers)
    assert current.json["name"] == "New Name"
    assert current.headers["ETag"] == response.headers["ETag"]


# --- unexpected errors ---------------------------------------------------------------------


@pytest.fixture
def crashing_client(app_config: dict[str, Any]) -> Iterator[FlaskClient]:
    """An app of our own with one route that crashes (added before its first request).

    `PROPAGATE_EXCEPTIONS` is off as in production, so the error handlers answer instead of
    the exception reaching the test client.
    """
    application: Flask = create_app({**app_config, "PROPAGATE_EXCEPTIONS": False})

    @application.get("/v1/test-crash")
    def _crash() -> None:
        raise RuntimeError("secret detail")

    yield application.test_client()
    application.extensions["broker.db"].dispose()


def test_unexpected_exception_is_500_without_details(
    crashing_client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = crashing_client.get("/v1/test-crash", headers={"X-Request-Id": "crash-1"})
    assert_problem(response, 500, "internal_error")
    # Logged once, with its traceback and the request id.
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1
    assert logged[0].request_id == "crash-1"  # type: ignore[attr-defined]
    text = response.get_data(as_text=True)
    assert "secret detail" not in text
    assert "RuntimeError" not in text
    assert "Traceback" not in text


# --- the token endpoint's own error form ---------------------------------------------------


def _assert_rfc6749_error(response: TestResponse, status: int, error: str) -> None:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.json
    assert body["error"] == error
    assert not {"type", "title", "status", "code"} & set(body)


def test_token_endpoint_bad_client_is_rfc6749_error(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(buyer.client_id, "wrong-secret"),
    )
    _assert_rfc6749_error(response, 401, "invalid_client")


def test_token_endpoint_bad_grant_is_rfc6749_error(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "authorization_code", "code": "x"},
        auth=(buyer.client_id, buyer.client_secret),
    )
    _assert_rfc6749_error(response, 400, "unsupported_grant_type")


def test_token_endpoint_accepts_form_bodies(client: FlaskClient, buyer: ApiUser) -> None:
    """The JSON-only rule (415) does not apply to the token endpoint's form body."""
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": buyer.client_id,
            "client_secret": buyer.client_secret,
        },
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert response.json["token_type"] == "Bearer"


# --- request ids ---------------------------------------------------------------------------


def test_client_request_id_is_echoed_in_header_and_problem(client: FlaskClient) -> None:
    response = client.get("/v1/no-such-thing", headers={"X-Request-Id": "req-2026.abc_42"})
    assert response.headers["X-Request-Id"] == "req-2026.abc_42"
    body = assert_problem(response, 404, "not_found")
    assert body["request_id"] == "req-2026.abc_42"


def test_request_id_is_echoed_on_validation_problems(client: FlaskClient, admin: ApiUser) -> None:
    response = client.post(
        "/v1/organizations",
        json={"kind": "agency"},
        headers={**admin.headers, "X-Request-Id": "retry-7"},
    )
    body = assert_problem(response, 422, "validation_failed")
    assert body["request_id"] == "retry-7"


@pytest.mark.parametrize("unsafe", ["has spaces", "x" * 101, "semi;colon"])
def test_unsafe_request_id_is_replaced(client: FlaskClient, unsafe: str) -> None:
    response = client.get("/v1/no-such-thing", headers={"X-Request-Id": unsafe})
    body = assert_problem(response, 404, "not_found")
    assert response.headers["X-Request-Id"] != unsafe
    assert body["request_id"] == response.headers["X-Request-Id"]
