"""Our flask-smorest `Api` and `Blueprint`: every endpoint gets the same error shape,
transaction handling, authentication and documentation from here.

A request uses one database session. A view's work is committed when the view returns
successfully and rolled back when it raises, so services only add and flush.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

import flask_smorest
import marshmallow as ma
from authlib.oauth2 import OAuth2Error
from flask import Request, Response, current_app, g, json, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from webargs.flaskparser import FlaskParser

from broker.api.limits import count_the_client
from broker.api.problems import PROBLEM_CONTENT_TYPE, ProblemSchema
from broker.api.schemas import Money
from broker.auth.identity import Caller
from broker.auth.server import caller_from_claims, protector, require_roles
from broker.db import Database
from broker.errors import BrokerError, ValidationFailed, joined
from broker.models import Role
from broker.models.base import utcnow
from broker.services import people
from broker.services.adapters import ProviderRuntime

F = TypeVar("F", bound=Callable[..., Any])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER = "bearerAuth"
# The same tokens, as Swagger UI's "Authorize" gets them itself (client credentials).
OAUTH2 = "clientCredentials"
ROLE_SCOPES = {
    Role.BUYER: "An agency's buyer: search, quote, order, use machines",
    Role.APPROVER: "An agency's approver: approve orders, set the policy, webhooks",
    Role.PROVIDER: "A provider's operator: offers, evidence, usage",
    Role.FINANCE: "The consortium's finance: billing runs, invoices, settlements",
    Role.ASSESSOR: "The consortium's assessor: vouch for or reject evidence",
    Role.ADMIN: "The consortium's administration",
}


def database() -> Database:
    db: Database = current_app.extensions["broker.db"]
    return db


def provider_runtime() -> ProviderRuntime:
    """Keys, HTTP policy and state directory for building provider adapters."""
    runtime: ProviderRuntime = current_app.extensions["broker.providers"]
    return runtime


def request_session() -> Session:
    """The session of the current request (read-only for GET/HEAD/OPTIONS)."""
    session: Session | None = g.get("db_session")
    if session is None:
        session = database().session(read_only=request.method in SAFE_METHODS)
        g.db_session = session
    return session


def _read_only_request_session() -> Session | None:
    """The request's session when it is a read-only one (a GET, HEAD or OPTIONS)."""
    return request_session() if request.method in SAFE_METHODS else None


def close_request_session(_exc: BaseException | None = None) -> None:
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()  # rolls back whatever was not committed


def now() -> datetime:
    """The current instant, by the broker's one clock (tests move it by setting
    `app.config["CLOCK"]`, which every request of the app then reads: see `create_app`)."""
    return utcnow()


def created(response: Response, endpoint: str, **values: Any) -> Response:
    """Make `response` a 201 Created pointing (`Location`) at the new resource."""
    response.status_code = 201
    response.headers["Location"] = url_for(endpoint, **values)
    return response


def current_caller() -> Caller:
    caller: Caller = g.caller
    return caller


def unit_of_work(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        result = view(*args, **kwargs)
        session: Session | None = g.get("db_session")
        if session is not None and session.in_transaction():
            status = getattr(result, "status_code", 200)
            if status < 400:
                session.commit()
            else:
                session.rollback()
        return result

    return wrapper


class Api(flask_smorest.Api):
    """flask-smorest's Api with problem+json documented as every operation's default error,
    and its OpenAPI document built when first read rather than at start.

    Documenting a blueprint's views (schemas → OpenAPI) is two thirds of building the app;
    a worker that never serves `/openapi.json` need not pay it, and neither does each test's
    app. The document is the same: the blueprints are documented in their order of
    registration, once, when `spec` is first read."""

    ERROR_SCHEMA = ProblemSchema

    @property
    def spec(self) -> Any:
        pending = self.__dict__.get("_undocumented")
        if pending:
            with self.__dict__["_documenting"]:
                while self._undocumented:
                    blp, name, parameters = self._undocumented.pop(0)
                    blp.register_views_in_doc(
                        self, self._app, self._spec, name=name, parameters=parameters
                    )
                    self._spec.tag({"name": name, "description": blp.description})
        return self.__dict__.get("_spec")

    @spec.setter
    def spec(self, value: Any) -> None:
        self._spec = value

    def register_blueprint(
        self, blp: flask_smorest.Blueprint, *, parameters: Any = None, **options: Any
    ) -> None:
        """Register the blueprint now; document its views when the document is first read."""
        name = options.get("name", blp.name)
        self._app.extensions["flask-smorest"]["blp_name_to_api"][name] = self
        self._app.register_blueprint(blp, **options)
        self.__dict__.setdefault("_documenting", threading.Lock())
        self.__dict__.setdefault("_undocumented", []).append((blp, name, parameters))

    def _init_spec(self, *args: Any, **kwargs: Any) -> None:
        super()._init_spec(*args, **kwargs)
        # Money travels as a decimal string, never as a JSON number.
        self.register_field(Money, "string", "decimal")

    def _register_error_handlers(self) -> None:
        """Errors are handled by `broker.api.problems.register_error_handlers`."""

    def _register_responses(self) -> None:
        super()._register_responses()
        for response in self.spec.components.responses_lazy.values():
            content = response.get("content")
            if content:
                response["content"] = {PROBLEM_CONTENT_TYPE: next(iter(content.values()))}
        self.spec.components.security_scheme(
            BEARER,
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An RFC 9068 access token from `POST /oauth/token`.",
            },
        )
        self.spec.components.security_scheme(
            OAUTH2,
            {
                "type": "oauth2",
                "description": "Client credentials of an API client: its roles are its scopes "
                "(a token carries every role of the client).",
                "flows": {
                    "clientCredentials": {
                        "tokenUrl": "/oauth/token",
                        "scopes": {role.value: words for role, words in ROLE_SCOPES.items()},
                    }
                },
            },
        )
        self.spec.components.security_scheme(
            "basicAuth",
            {"type": "http", "scheme": "basic", "description": "client_id:client_secret"},
        )


class _Parser(FlaskParser):
    # webargs drops unknown query parameters by default; the schemas decide instead (and ours
    # reject unknown fields everywhere, so a typo like `?limt=5` is a 422, not ignored).
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": None,
        "querystring": None,
    }

    def load_json(self, req: Request, schema: ma.Schema) -> Any:
        # Only endpoints that take a body parse one, so an empty body is a malformed request
        # (webargs would read it as `{}` and an all-optional PATCH would pass).
        if not req.get_data(cache=True):
            raise BrokerError(body_required(schema), code="malformed_body")
        return super().load_json(req, schema)

    def _raw_load_json(self, req: Request) -> Any:
        try:
            document = super()._raw_load_json(req)
        except RecursionError:  # the JSON decoder's own stack, hundreds of levels down
            raise _too_deep() from None
        # A lone surrogate can only come as an escape (`\\ud800`): raw UTF-8 cannot carry one.
        check_json_document(document, texts=_SURROGATE_ESCAPE.search(req.get_data()) is not None)
        return document


def body_required(schema: ma.Schema) -> str:
    """What to send when the body is missing: the required fields, as a JSON example
    (`{"reason": "…"}`), or the fields to choose from when none is required."""
    hint: str | None = getattr(schema, "BODY_HINT", None)
    if hint:
        return f"A JSON body is required: {hint}"
    fields = {name: field for name, field in schema.load_fields.items() if not field.dump_only}
    required = {name: _placeholder(field) for name, field in fields.items() if field.required}
    if required:
        example = json.dumps(required, ensure_ascii=False)
        noun = "field" if len(required) == 1 else "fields"
        return f"A JSON body is required, with the {noun} {joined(list(required))}: {example}."
    if fields:
        return f"A JSON body is required: an object with any of {joined(list(fields), 'or')}."
    return "A JSON body is required: a JSON object."


def _placeholder(field: ma.fields.Field) -> Any:
    """A stand-in value of the field's JSON type, for an example body."""
    if isinstance(field, ma.fields.Boolean):
        return True
    if isinstance(field, ma.fields.Number) and not isinstance(field, ma.fields.Decimal):
        return 1
    if isinstance(field, ma.fields.List):
        return []
    if isinstance(field, ma.fields.Nested | ma.fields.Dict):
        return {}
    return "…"


# No request of this API nests deeper than a few levels; a limit keeps every later walk of the
# document (schemas, JSON columns) far from Python's recursion limit.
MAX_JSON_DEPTH = 32


def _too_deep() -> BrokerError:
    return BrokerError(f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def check_json_document(document: Any, *, texts: bool = True) -> None:
    """Refuse what JSON can say but nothing downstream can hold: nesting deeper than
    `MAX_JSON_DEPTH` (400), and strings with a lone UTF-16 surrogate such as `"\\ud800"`,
    which are not text (422, naming every field). Walks the document without recursion;
    `texts=False` (its source holds no surrogate escape) checks the depth alone, looking at
    the containers only (a thousand usage records are six thousand strings)."""
    if not texts:
        containers: list[tuple[Any, int]] = (
            [(document, 0)] if isinstance(document, dict | list) else []
        )
        while containers:
            value, depth = containers.pop()
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
            children = value.values() if isinstance(value, dict) else value
            containers.extend(
                (child, depth + 1) for child in children if isinstance(child, dict | list)
            )
        return
    refused: dict[str, list[str]] = {}
    pending: list[tuple[Any, str, int]] = [(document, "", 0)]
    while pending:
        value, path, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            if isinstance(value, str) and not _is_text(value):
                refused[path or "_schema"] = [
                    "Not valid text: it holds a lone UTF-16 surrogate (\\ud800–\\udfff)."
                ]
            continue
        for key, item in items:
            if isinstance(key, str) and not _is_text(key):
                refused[path or "_schema"] = ["A field name holds a lone UTF-16 surrogate."]
                continue
            pending.append((item, f"{path}.{key}" if path else str(key), depth + 1))
    if refused:
        raise ValidationFailed(errors=dict(sorted(refused.items())))


_FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def person_of_the_session() -> Caller | None:
    """A person signed in in a browser (the session cookie, when no bearer token is sent),
    resolved by reading; the session's last use is written, in a short transaction, at most
    once a minute. A change must echo the session's CSRF token, in the `X-CSRF-Token` header
    (API) or the `csrf_token` form field (console). Sets `g.csrf_token` and
    `g.person_language`."""
    token = request.cookies.get(people.SESSION_COOKIE)
    if not token or "Authorization" in request.headers:
        return None
    idle, _ = people.lifetimes(current_app.config)
    now = utcnow()
    unsafe = request.method not in SAFE_METHODS
    sent = request.headers.get(people.CSRF_HEADER)
    if unsafe and sent is None and request.mimetype in _FORM_TYPES:
        sent = request.form.get(people.CSRF_FIELD)
    with database().session(read_only=True) as session:
        signed_in = people.caller_of_session(session, token, now, idle, unsafe=unsafe, csrf=sent)
    g.csrf_token, g.person_language = signed_in.csrf_token, signed_in.language
    if signed_in.due_touch is not None:
        with database().transaction() as session:
            people.touch(session, signed_in.due_touch, now)
    return signed_in.caller


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _Parser()

    def add_url_rule(
        self,
        rule: str,
        endpoint: str | None = None,
        view_func: Any = None,
        provide_automatic_options: bool | None = None,
        **options: Any,
    ) -> None:
        if view_func is not None and not isinstance(view_func, type):
            view_func = unit_of_work(view_func)
        super().add_url_rule(rule, endpoint, view_func, provide_automatic_options, **options)

    def auth(self, *roles: Role) -> Callable[[F], F]:
        """Require a valid access token holding one of `roles` (any role when none given).

        The caller is then available as `current_caller()`; the roles are documented on the
        operation as `x-roles`.
        """

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                person = person_of_the_session()
                if person is not None:
                    g.caller = person
                else:
                    guard = protector()
                    try:
                        # The token's validity and its client's standing (401); the roles
                        # after, here, where the 403 can name the roles needed.
                        # A read (GET) checks the client's standing in the request's
                        # own read-only session; a change, in a short one of its own.
                        claims = guard.acquire_token(session=_read_only_request_session())
                    except OAuth2Error as error:
                        guard.raise_error_response(error)
                    g.caller = caller_from_claims(claims)
                require_roles(g.caller, roles)
                count_the_client(g.caller.client_id)
                return view(*args, **kwargs)

            documented = self.doc(
                security=[{BEARER: []}, {OAUTH2: [role.value for role in roles]}],
                **{"x-roles": [role.value for role in roles] or ["any"]},
            )
            return cast(F, documented(wrapper))

        return decorator
