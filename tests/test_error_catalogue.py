"""The error catalogue: every error message says what to do.

- Every pattern of every request schema under `broker/api` says in words what matches (never
  marshmallow's "String does not match expected pattern."), and every list of allowed values
  is named in full: each field is fed a value its validator refuses and the message is read.
- The complaints of the issue, through the real endpoints: `certification=SECNUMCLOUD`, a
  webhook URL with an IP address, a lowercase country, a bad ssh key, a `/reject` without a
  body, a JSON body at `POST /oauth/token`.
- Every 403 of a role check names the roles needed (every operation of the live spec, called
  by a client holding a role it does not admit).
- One title per status, whoever answers: domain errors, Werkzeug, webargs, the rate limiter,
  the gunicorn writer.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import marshmallow as ma
import pytest
from flask import Flask
from flask.testing import FlaskClient

import broker
import broker.api
from broker import create_app
from broker.api.problems import TITLES, write_server_problem
from broker.api.schemas import Matches
from broker.errors import BrokerError
from broker.models import Role
from broker.models.organizations import ROLES_BY_KIND
from tests.conftest import ApiUser, MakeUser
from tests.helpers import PROBLEM, problem

MARSHMALLOW_DEFAULT = ma.validate.Regexp.default_message
# Values one of which every pattern of the API refuses (the first refused is used).
NON_MATCHING = ("", "!", " x ", "\x01", "SECNUMCLOUD", "https://203.0.113.7/hook", "x" * 600)
NOT_A_CHOICE = "not-one-of-them-☃"


# --- the schemas: every pattern and every choice in words --------------------------------


def _api_schemas() -> Iterator[type[ma.Schema]]:
    """Every marshmallow schema class defined in a module of `broker/api`."""
    for module_info in pkgutil.iter_modules(broker.api.__path__):
        module = importlib.import_module(f"broker.api.{module_info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, ma.Schema)
                and value.__module__ == module.__name__
            ):
                yield value


def _fields(schema: ma.Schema, path: str) -> Iterator[tuple[str, ma.fields.Field]]:
    """Every field of `schema`, nested schemas, list items and dict keys/values included."""
    for name, field in schema.fields.items():
        yield from _field_and_inner(field, f"{path}.{name}")


def _field_and_inner(field: ma.fields.Field, path: str) -> Iterator[tuple[str, ma.fields.Field]]:
    yield path, field
    if isinstance(field, ma.fields.List):
        yield from _field_and_inner(field.inner, f"{path}[]")
    elif isinstance(field, ma.fields.Dict):
        for part, inner in (("key", field.key_field), ("value", field.value_field)):
            if inner is not None:
                yield from _field_and_inner(inner, f"{path}{{{part}}}")
    elif isinstance(field, ma.fields.Nested):
        yield from _fields(field.schema, path)


def _validated_fields() -> list[Any]:
    """(path, field, validator) for every pattern or choice validator of the API's schemas."""
    found: dict[str, Any] = {}
    for schema_class in _api_schemas():
        for path, field in _fields(schema_class(), schema_class.__qualname__):
            for validator in field.validators:
                if isinstance(validator, ma.validate.Regexp | ma.validate.OneOf):
                    found[f"{path} {type(validator).__name__}"] = (field, validator)
            if isinstance(field, ma.fields.Enum):
                found[f"{path} Enum"] = (field, None)
    return [pytest.param(*value, id=key) for key, value in sorted(found.items())]


VALIDATED = _validated_fields()


def _messages(field: ma.fields.Field, value: Any) -> list[str]:
    """What the field (all its validators) answers `value`."""
    with pytest.raises(ma.ValidationError) as refused:
        field.deserialize(value)
    messages = refused.value.messages
    assert isinstance(messages, list), messages
    return [str(message) for message in messages]


def test_the_catalogue_is_not_empty() -> None:
    assert len(VALIDATED) > 40
    assert any("ssh_public_key" in param.id for param in VALIDATED)
    assert any("SearchArgs.certification" in param.id for param in VALIDATED)


@pytest.mark.parametrize(("field", "validator"), VALIDATED)
def test_every_pattern_and_choice_says_what_matches(
    field: ma.fields.Field, validator: ma.validate.Validator | None
) -> None:
    if isinstance(validator, ma.validate.Regexp):
        assert isinstance(validator, Matches), "a pattern without words: use schemas.Matches"
        value = next(v for v in NON_MATCHING if validator.regex.match(v) is None)  # type: ignore[arg-type]
        messages = _messages(field, value)
        assert MARSHMALLOW_DEFAULT not in messages
        assert any(m.startswith(f"Expected {validator.expected}") for m in messages), messages
        assert all("does not match expected pattern" not in m for m in messages)
        return
    if isinstance(validator, ma.validate.OneOf):
        names = [str(choice) for choice in validator.choices]
    else:
        enum_field: Any = field
        names = [m.value if enum_field.by_value else m.name for m in enum_field.enum]
    message = " ".join(_messages(field, NOT_A_CHOICE))
    assert all(str(name) in message for name in names), message


@pytest.mark.parametrize(
    ("validator", "value", "suggestion"),
    [
        (Matches(r"^[A-Z]{2}$", "a country", suggest=True), "fr", "FR"),
        (Matches(r"^[a-z0-9-]+$", "a slug", suggest=True), "SECNUMCLOUD", "secnumcloud"),
        (Matches(r"^[a-z0-9-]+$", "a slug", suggest=True), " bsi-c5 ", "bsi-c5"),
        (Matches(r"^[A-Z0-9]{2,30}$", "a VAT", suggest=True), "FR 40 303 265", "FR40303265"),
        (Matches(r"^[a-z0-9-]+$", "a slug", suggest=True), "web server", "web-server"),
        (Matches(r"^[a-z0-9-]+$", "a slug", suggest=True), "x.y", None),
        (Matches(r"^[a-z]+$", "letters", suggest=True), "A" * 101, None),  # long: no echo
        (Matches(r"^[^\x00-\x1f]*$", "free text"), "a\tb", None),  # free text: no guess
    ],
)
def test_a_fix_of_case_or_spaces_is_suggested(
    validator: Matches, value: str, suggestion: str | None
) -> None:
    with pytest.raises(ma.ValidationError) as refused:
        validator(value)
    message = str(refused.value.messages[0])  # type: ignore[index]
    assert message.startswith(f"Expected {validator.expected}.")
    if suggestion is None:
        assert "Did you mean" not in message
    else:
        assert message.endswith(f"Did you mean `{suggestion}`?")


# --- the messages of the issue, through the real endpoints --------------------------------


def _field_messages(response: Any, field: str) -> str:
    body = problem(response, 422, "validation_failed")
    assert body["title"] == TITLES[422]
    return " ".join(body["errors"][field])


def test_an_uppercase_certification_filter_says_lowercase_slug(
    client: FlaskClient, buyer: ApiUser
) -> None:
    response = client.get("/v1/offers?certification=SECNUMCLOUD", headers=buyer.headers)
    message = _field_messages(response, "certification")
    assert "lowercase slug such as `secnumcloud`" in message
    assert "a–z, 0–9 and hyphens" in message
    assert message.endswith("Did you mean `secnumcloud`?")


def test_a_webhook_url_with_an_ip_address_says_a_public_host_name(
    client: FlaskClient, make_user: MakeUser
) -> None:
    approver = make_user("agency", ["approver"])
    response = client.post(
        "/v1/webhooks", json={"url": "https://203.0.113.7/hook"}, headers=approver.headers
    )
    message = _field_messages(response, "url")
    assert "an https URL with a public host name (not an IP address)" in message
    assert "https://hooks.example.org/broker" in message
    listed = client.get("/v1/webhooks", headers=approver.headers).json
    assert listed["items"] == []


def test_a_lowercase_country_says_capitals_and_suggests_them(
    client: FlaskClient, admin: ApiUser
) -> None:
    response = client.post(
        f"/v1/providers/{uuid.uuid4()}/evidence",
        json={"kind": "jurisdiction", "operator_country": "fr"},
        headers=admin.headers,
    )
    message = _field_messages(response, "operator_country")
    assert "ISO 3166-1 alpha-2 country code in capitals, such as `FR`" in message
    assert message.endswith("Did you mean `FR`?")


def test_a_bad_ssh_key_says_what_an_openssh_key_line_is(
    client: FlaskClient, buyer: ApiUser
) -> None:
    response = client.post(
        "/v1/orders",
        json={
            "offer_id": str(uuid.uuid4()),
            "name": "web-01",
            "parameters": {"ssh_public_key": "AAAAC3NzaC1lZDI1NTE5AAAAIGx me@laptop"},
        },
        headers={**buyer.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    message = _field_messages(response, "parameters.ssh_public_key")
    assert "an OpenSSH public key line such as `ssh-ed25519 AAAA" in message
    assert "ssh-rsa" in message and "ecdsa-sha2-nistp256" in message


@pytest.mark.parametrize(
    "path", ["/v1/providers/{id}/evidence/{id}/reject", "/v1/orders/{id}/reject"]
)
def test_a_reject_without_a_body_says_reason_is_required(
    client: FlaskClient, make_user: MakeUser, path: str
) -> None:
    role = "approver" if path.startswith("/v1/orders") else "assessor"
    decider = make_user(KIND_OF[role], [role])
    response = client.post(path.replace("{id}", str(uuid.uuid4())), headers=decider.headers)
    body = problem(response, 400, "malformed_body")
    assert body["title"] == TITLES[400]
    assert body["detail"] == 'A JSON body is required, with the field reason: {"reason": "…"}.'


def test_a_claim_without_a_body_says_what_a_claim_is(client: FlaskClient, admin: ApiUser) -> None:
    response = client.post(f"/v1/providers/{uuid.uuid4()}/evidence", headers=admin.headers)
    detail = problem(response, 400, "malformed_body")["detail"]
    assert "`kind` is certification, jurisdiction or region" in detail
    assert '{"kind": "jurisdiction", "operator_country": "FR"}' in detail


def test_a_body_without_required_fields_names_the_fields_it_takes() -> None:
    from broker.api.base import body_required
    from broker.api.offers import OfferPatchSchema

    assert body_required(OfferPatchSchema()) == (
        "A JSON body is required: an object with any of name, region, specs, prices or compliance."
    )


def _token_answer(client: FlaskClient, **request: Any) -> tuple[int, dict[str, Any], str]:
    response = client.post("/oauth/token", **request)
    assert response.mimetype == "application/json"
    return response.status_code, response.json, response.headers.get("WWW-Authenticate", "")


def test_a_json_token_request_is_told_to_send_a_form(client: FlaskClient, buyer: ApiUser) -> None:
    status, body, _ = _token_answer(
        client,
        json={
            "grant_type": "client_credentials",
            "client_id": buyer.client_id,
            "client_secret": buyer.client_secret,
        },
    )
    assert status == 400
    assert body["error"] == "invalid_request"
    assert (
        "form-encoded (Content-Type: application/x-www-form-urlencoded)"
        in (body["error_description"])
    )
    assert "rather than JSON" in body["error_description"]
    assert not {"type", "title", "status", "code"} & set(body)
    # The same body form-encoded gets a token.
    status, body, _ = _token_answer(
        client,
        data={
            "grant_type": "client_credentials",
            "client_id": buyer.client_id,
            "client_secret": buyer.client_secret,
        },
    )
    assert status == 200 and body["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("request_", "error", "says"),
    [
        (
            {"data": "grant_type=client_credentials", "content_type": "text/plain"},
            "invalid_request",
            "form-encoded",
        ),
        ({"data": {}}, "invalid_request", "grant_type is missing"),
        (
            {"data": {"grant_type": "password"}},
            "unsupported_grant_type",
            "Only grant_type=client_credentials",
        ),
    ],
    ids=["text-plain", "no-grant-type", "password-grant"],
)
def test_a_token_request_of_the_wrong_shape_says_what_to_send(
    client: FlaskClient, buyer: ApiUser, request_: dict[str, Any], error: str, says: str
) -> None:
    status, body, _ = _token_answer(client, auth=(buyer.client_id, buyer.client_secret), **request_)
    assert (status, body["error"]) == (400, error)
    assert says in body["error_description"]


def test_unknown_client_and_wrong_secret_still_get_the_same_answer(
    client: FlaskClient, buyer: ApiUser
) -> None:
    form = {"grant_type": "client_credentials"}
    unknown = _token_answer(client, data=form, auth=("cb_no-such-client", buyer.client_secret))
    wrong = _token_answer(client, data=form, auth=(buyer.client_id, "not-the-secret"))
    assert unknown == wrong
    assert unknown[0] == 401 and unknown[1]["error"] == "invalid_client"
    # A JSON body is refused for its shape alone, whoever sends it.
    as_json = {"json": form}
    assert _token_answer(client, auth=("cb_no-such-client", "x"), **as_json) == _token_answer(
        client, auth=(buyer.client_id, buyer.client_secret), **as_json
    )


def test_role_not_allowed_for_an_agency_reads_well(client: FlaskClient, admin: ApiUser) -> None:
    agency = client.post(
        "/v1/organizations", json={"name": "Agence X", "kind": "agency"}, headers=admin.headers
    ).json
    response = client.post(
        f"/v1/organizations/{agency['id']}/clients",
        json={"name": "ops", "roles": ["buyer", "admin"]},
        headers=admin.headers,
    )
    body = problem(response, 422, "role_not_allowed")
    assert body["title"] == TITLES[422]  # a service's 422 is titled like webargs' 422
    assert body["errors"]["roles"] == ["Not allowed for an agency: admin."]
    assert body["detail"] == "The clients of an agency may hold only these roles: approver, buyer."


# --- every 403 names the roles -----------------------------------------------------------


KIND_OF = {role.value: kind.value for kind, roles in ROLES_BY_KIND.items() for role in roles}


def _live_spec(app: Flask) -> dict[str, Any]:
    spec: dict[str, Any] = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()
    return spec


def test_every_role_check_names_the_roles_needed(
    app: Flask, client: FlaskClient, make_user: MakeUser
) -> None:
    users = {role.value: make_user(KIND_OF[role.value], [role.value]) for role in Role}
    checked = 0
    for path, item in _live_spec(app)["paths"].items():
        for method, operation in item.items():
            needed = operation.get("x-roles") if isinstance(operation, dict) else None
            if not needed or needed == ["any"]:
                continue
            held = next((role for role in users if role not in needed), None)
            if held is None:
                continue
            url = "".join(
                str(uuid.uuid4()) if part.startswith("{") else part for part in _split_path(path)
            )
            headers = {**users[held].headers, "Idempotency-Key": str(uuid.uuid4())}
            response = client.open(url, method=method.upper(), headers=headers, json={})
            body = problem(response, 403, "forbidden")
            assert body["title"] == TITLES[403]
            assert body["required_roles"] == needed, (method, path)
            assert body["your_roles"] == [held]
            wanted = (
                needed[0] if len(needed) == 1 else " or ".join([", ".join(needed[:-1]), needed[-1]])
            )
            assert body["detail"] == (
                f"This needs the role {wanted}; your access token has the role {held}."
            ), (method, path)
            challenge = response.headers["WWW-Authenticate"]
            assert 'error="insufficient_scope"' in challenge
            assert f'scope="{" ".join(needed)}"' in challenge
            checked += 1
    assert checked > 50


def _split_path(path: str) -> list[str]:
    """`/v1/orders/{order_id}/reject` → `["/v1/orders/", "{order_id}", "/reject"]`."""
    parts: list[str] = []
    for chunk in path.replace("{", "\x00{").replace("}", "}\x00").split("\x00"):
        if chunk:
            parts.append(chunk)
    return parts


def test_a_role_refusal_reads_well_with_several_roles_or_none() -> None:
    from broker.auth.identity import missing_role_message

    assert missing_role_message((Role.ASSESSOR, Role.ADMIN), (Role.BUYER, Role.APPROVER)) == (
        "This needs the role assessor or admin; your access token has the roles approver and buyer."
    )
    assert missing_role_message((Role.ADMIN,), ()) == (
        "This needs the role admin; your access token has no role."
    )


# --- one title per status ------------------------------------------------------------------


def _every_broker_error() -> list[type[BrokerError]]:
    """Every domain error class of the code base (its modules imported first)."""
    for module_info in pkgutil.walk_packages(broker.__path__, "broker."):
        if module_info.name != "broker.wsgi":  # an entry point: it builds an app on import
            importlib.import_module(module_info.name)
    found: list[type[BrokerError]] = []
    pending = [BrokerError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("error_class", _every_broker_error(), ids=lambda cls: cls.__qualname__)
def test_every_domain_error_has_its_status_title(
    app: Flask, error_class: type[BrokerError]
) -> None:
    with app.test_request_context("/v1/anything"):
        try:
            error = error_class()
        except TypeError:  # a constructor with required arguments: build it bare
            error = error_class.__new__(error_class)
            BrokerError.__init__(error)
        response = app.handle_user_exception(error)
    body = json.loads(response.get_data())
    assert body["title"] == TITLES[error_class.status]
    assert body["detail"]  # the class's own sentence, when no detail was given


def test_one_title_per_status_whoever_answers(
    app_config: dict[str, Any], client: FlaskClient, admin: ApiUser, buyer: ApiUser
) -> None:
    answers = [
        client.get("/v1/no-such-thing"),  # Werkzeug routing
        client.delete("/v1/organizations", headers=admin.headers),  # 405
        client.get("/v1/organizations"),  # 401
        client.post("/v1/organizations", json={}, headers=buyer.headers),  # 403
        client.post(
            "/v1/organizations", data="x", content_type="text/plain", headers=admin.headers
        ),
        client.post("/v1/organizations", json={"kind": "nope"}, headers=admin.headers),  # webargs
        client.post(
            "/v1/organizations", data="{", content_type="application/json", headers=admin.headers
        ),  # 400
        client.get(f"/v1/organizations/{uuid.uuid4()}", headers=admin.headers),  # NotFound
        client.post(
            "/v1/organizations",
            data=b"[" + b" " * (1024 * 1024) + b"]",
            content_type="application/json",
            headers=admin.headers,
        ),  # 413
    ]
    limited = create_app({**app_config, "RATE_LIMIT_TOKEN": "1 per minute"})
    try:
        with limited.test_client() as other:
            for _ in range(2):
                last = other.post("/oauth/token", data={"grant_type": "client_credentials"})
            answers.append(last)  # 429 from the limiter
    finally:
        limited.extensions["broker.db"].dispose()
    titles: dict[int, set[str]] = {}
    for response in answers:
        assert response.mimetype == PROBLEM, response.get_data(as_text=True)
        titles.setdefault(response.status_code, set()).add(response.json["title"])
    assert set(titles) == {400, 401, 403, 404, 405, 413, 415, 422, 429}
    assert titles == {status: {TITLES[status]} for status in titles}


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "Bad Request"), (414, "Request-URI Too Large"), (431, "")]
)
def test_the_gunicorn_writer_uses_the_same_titles(status: int, reason: str) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_server_problem(ours, status, reason, "too long")
        ours.shutdown(socket.SHUT_WR)
        raw = b"".join(iter(lambda: theirs.recv(65536), b""))
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    body = json.loads(payload)
    assert (body["status"], body["title"]) == (status, TITLES[status])
