"""`openapi.yaml` is generated from the code, valid OpenAPI, and never drifts."""

from __future__ import annotations

from pathlib import Path

import yaml
from flask import Flask
from openapi_spec_validator import validate

from broker.models import Role

SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _generated(app: Flask) -> str:
    # Exactly what `make openapi` (flask openapi write --format=yaml) renders.
    spec = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
    return yaml.dump(spec.to_dict())


def test_committed_spec_matches_the_code(app: Flask) -> None:
    assert SPEC_FILE.read_text() == _generated(app), (
        "openapi.yaml is out of date: run `make openapi` and commit it"
    )


def test_spec_is_valid_openapi() -> None:
    spec = yaml.safe_load(SPEC_FILE.read_text())
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_served_spec_is_the_committed_one(client) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.data) == yaml.safe_load(SPEC_FILE.read_text())


def test_every_operation_documents_problem_errors_and_auth() -> None:
    spec = yaml.safe_load(SPEC_FILE.read_text())
    default = spec["components"]["responses"]["DEFAULT_ERROR"]
    assert list(default["content"]) == ["application/problem+json"]
    for path, method, operation in _operations(spec):
        assert "default" in operation["responses"], f"{method} {path}"
        if (method, path) == ("post", "/v1/webhooks/stripe"):
            assert operation["security"] == []  # Stripe signs its events instead
            assert "Stripe-Signature" in [p["name"] for p in operation["parameters"]]
        elif path.startswith("/v1/"):
            # A bearer token, or one Swagger UI's "Authorize" fetches by client credentials
            # (the operation's roles as scopes).
            roles = operation["x-roles"]
            assert roles, f"{method} {path}"
            scopes = [] if roles == ["any"] else roles
            assert operation["security"] == [
                {"bearerAuth": []},
                {"clientCredentials": scopes},
            ], f"{method} {path}"


def test_swagger_ui_can_get_a_token_by_itself() -> None:
    """The document names its server (relative: the broker serving it) and an OAuth2 client
    credentials flow whose token URL is the broker's token endpoint, offering every role."""
    spec = yaml.safe_load(SPEC_FILE.read_text())
    assert spec["servers"] == [{"url": "/", "description": "This broker"}]
    flow = spec["components"]["securitySchemes"]["clientCredentials"]["flows"]
    assert flow["clientCredentials"]["tokenUrl"] == "/oauth/token"
    assert set(flow["clientCredentials"]["scopes"]) == {role.value for role in Role}
    assert "/oauth/token" in spec["paths"]


def test_request_bodies_forbid_unknown_fields() -> None:
    spec = yaml.safe_load(SPEC_FILE.read_text())
    schemas = spec["components"]["schemas"]
    checked = 0
    for path, method, operation in _operations(spec):
        content = operation.get("requestBody", {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref")
        if ref:
            schema = schemas[ref.rsplit("/", 1)[-1]]
            assert schema.get("additionalProperties") is False, f"{method} {path}"
            checked += 1
    assert checked >= 3


def test_every_query_string_parameter_is_bounded() -> None:
    """No query parameter takes unbounded text: a request line stays far below the 8 KiB a
    server accepts (past that, 414)."""
    spec = yaml.safe_load(SPEC_FILE.read_text())
    unbounded = []
    for path, method, operation in _operations(spec):
        for parameter in operation.get("parameters", []):
            schema = parameter.get("schema", {})
            kinds = schema.get("type")
            textual = kinds == "string" or (isinstance(kinds, list) and "string" in kinds)
            if parameter["in"] == "query" and textual:
                if not {"maxLength", "enum", "format"} & set(schema):
                    unbounded.append(f"{method.upper()} {path} ?{parameter['name']}")
    assert unbounded == []
