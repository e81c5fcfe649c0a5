"""What every console page shares: the `console` blueprint, signing in, the CSRF check, the
unit of work, the security headers, and errors rendered as pages in the person's language.

A console view is a view like the API's: it parses, authorizes through the same access rules
(broker/access.py), calls one service function and renders a template instead of JSON. It
reads `request_session()` and `current_caller()` exactly as the API does; a change (POST)
must carry the session's CSRF token in the `csrf_token` field, checked by the same function
that checks the API's `X-CSRF-Token` (broker/services/people.py), and its transaction is
committed when the view answers below 400, rolled back otherwise.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import marshmallow as ma
from flask import (
    Blueprint,
    Flask,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext
from flask_babel import lazy_gettext as _l
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wrappers import Response as BaseResponse

from broker import access
from broker.api.base import current_caller, person_of_the_session, unit_of_work
from broker.api.limits import count_the_client
from broker.api.schemas import ListArgs
from broker.auth.identity import Caller
from broker.errors import BrokerError, Unauthorized
from broker.models import Role
from broker.services import people
from broker.services.preconditions import IfMatch
from broker.web.words import (
    FIELD_WORDS,
    PROBLEM_WORDS,
    TEMPLATE_GLOBALS,
    role_label,
)

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint(
    "console",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/assets",
)

# Every console page: no script or style but the site's own files, never framed. (No
# `form-action`: signing out posts here and is then sent on to the identity provider's own
# logout, which browsers would block as a form's redirect elsewhere.)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# The field of a form that must do its work once however often it is sent (the API's
# Idempotency-Key, one per form shown: `once` in the templates, `idempotent` on the view).
ONCE_FIELD = "idempotency_key"
# Pages (as opposed to the API's JSON) that get the headers: the console, sign-in pages.
PAGE_BLUEPRINTS = frozenset({"console", "auth", "invitation_pages"})


@dataclass
class Problem:
    """What went wrong, for a person: one sentence, and messages by form field."""

    message: str
    fields: dict[str, list[str]] = field(default_factory=dict)
    status: int = 422
    # The API's own sentence, when it says more than `message` (it is in English).
    detail: str | None = None


def problem_of(error: BrokerError | ma.ValidationError) -> Problem:
    """A domain or validation error in the person's words: a sentence in their language
    (by the problem's code), the API's own detail beside it, messages by field."""
    if isinstance(error, ma.ValidationError):
        messages = error.messages if isinstance(error.messages, dict) else {"": error.messages}
        return Problem(str(PROBLEM_WORDS["validation_failed"]), _field_messages(messages))
    words = PROBLEM_WORDS.get(error.code)
    detail = str(error.detail or error.title)
    if words is None:
        return Problem(detail, _field_messages(error.errors or {}), error.status)
    shown_detail = None if error.code in ("validation_failed", "csrf_failed") else detail
    return Problem(str(words), _field_messages(error.errors or {}), error.status, shown_detail)


def _field_messages(messages: Mapping[str, Any], prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages flattened to `field.sub` → sentences, translated."""
    flat: dict[str, list[str]] = {}
    for name, value in messages.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, Mapping):
            flat.update(_field_messages(value, key))
        else:
            items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
            flat[key] = [str(FIELD_WORDS.get(str(m), gettext(str(m)))) for m in items]
    return flat


# --- what forms send ----------------------------------------------------------------------------


def precondition(revision: str) -> IfMatch:
    """The `If-Match` of a form that edits a versioned record: the version its page showed (a
    hidden `revision`, `str(version)`). Anything else is sent as it is, so that the service's
    check says what is wrong (nothing: 428; not a version: 412)."""
    revision = revision.strip()
    return IfMatch.of(int(revision)) if revision.isdigit() else IfMatch(revision or None)


def query_args() -> dict[str, Any]:
    """The query string without the fields a GET form sends empty."""
    return {name: value for name, value in request.args.items() if value.strip() != ""}


def filters(schema: type[ma.Schema], args: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """A list page's query string loaded by the API's schema, and the problem to show (None);
    bad filters show the first page unfiltered, with what was wrong said by the field."""
    try:
        return dict(schema().load(args)), None
    except ma.ValidationError as error:
        return dict(schema().load({})), problem_of(error)


def cursor_arg() -> str:
    """The page asked for in the query string (a cursor that is not one: the first page)."""
    try:
        return str(ListArgs().load({"cursor": request.args.get("cursor", "")})["cursor"])
    except ma.ValidationError:
        return ""


def whole_number(value: str | None) -> Any:
    """A whole number typed in a form as the API's schemas take it, in JSON (else the text as
    typed, for the schema to say what is wrong)."""
    text = (value or "").strip()
    return int(text) if re.fullmatch(r"-?\d{1,12}", text) else text


def _login_redirect() -> BaseResponse:
    return redirect(url_for("auth.login", next=_safe_path(request.full_path)), 303)


def _safe_path(value: str) -> str:
    """Only a path of this site (no open redirect)."""
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(value)
    return "/" if parts.scheme or parts.netloc else value.rstrip("?")


def page(*roles: Role) -> Callable[[F], F]:
    """A console page for a signed-in person holding one of `roles` (any role when none).

    Someone not signed in is sent to sign in, and back here after; a person without the role
    gets a page saying which role is needed. Changes are CSRF-checked (see the module)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                caller = person_of_the_session()
            except Unauthorized:
                caller = None
            if caller is None:
                response = _login_redirect()
                response.delete_cookie(people.SESSION_COOKIE, path="/")
                return response
            g.caller = caller
            count_the_client(caller.client_id)  # the API's allowance, shared with the API
            if roles and not access.has_any_role(caller, *roles):
                return error_page(
                    Problem(
                        gettext(
                            "This page needs the role %(roles)s.",
                            roles=", ".join(role_label(r.value) for r in roles),
                        ),
                        status=403,
                    )
                )
            return view(*args, **kwargs)

        return cast(F, unit_of_work(wrapper))

    return decorator


def caller() -> Caller:
    """The signed-in person acting on this page."""
    return current_caller()


def render(template: str, status: int = 200, **context: Any) -> Response:
    """A page: the template with the person, their CSRF token and the navigation."""
    return Response(render_template(template, **context), status=status, mimetype="text/html")


def form_page(
    template: str, problem: Problem | BrokerError | ma.ValidationError, **context: Any
) -> Response:
    """A form shown again with what went wrong, by the field and at the top (status kept)."""
    shown = problem if isinstance(problem, Problem) else problem_of(problem)
    return render(template, shown.status, problem=shown, **context)


def error_page(problem: Problem) -> Response:
    return render("console/error.html", problem.status, problem=problem)


def done(endpoint: str, message: str | None = None, **values: Any) -> BaseResponse:
    """After a change: back to a page (303, so a reload does not post again), with a notice
    shown once there."""
    if message:
        flash(message)
    return redirect(url_for(endpoint, **values), 303)


def _template_context() -> dict[str, Any]:
    person = g.get("caller")
    return {
        "person": person,
        "csrf_token": g.get("csrf_token"),
        "navigation": navigation(person) if person is not None else [],
    }


# The console's sections, in the order they are used, and the roles that open each.
SECTIONS: tuple[tuple[tuple[Role, ...], str, Any], ...] = (
    ((Role.BUYER, Role.APPROVER), "console.catalogue", _l("Catalogue")),
    ((Role.BUYER, Role.APPROVER), "console.orders", _l("Orders")),
    ((Role.BUYER, Role.APPROVER), "console.machines", _l("Resources")),
    ((Role.BUYER, Role.APPROVER), "console.usage", _l("Usage")),
    ((Role.APPROVER,), "console.approvals", _l("Approvals")),
    ((Role.APPROVER,), "console.agency", _l("Agency")),
    ((Role.PROVIDER,), "console.provider_home", _l("My provider")),
    ((Role.PROVIDER,), "console.provider_offers", _l("Offers")),
    ((Role.PROVIDER,), "console.provider_machines", _l("Resources on your cloud")),
    ((Role.PROVIDER,), "console.provider_usage", _l("Usage reported")),
    ((Role.FINANCE, Role.ADMIN), "console.invoices", _l("Invoices")),
    ((Role.FINANCE,), "console.billing_runs", _l("Billing runs")),
    ((Role.FINANCE, Role.ADMIN, Role.PROVIDER), "console.settlements", _l("Settlements")),
    ((Role.ASSESSOR, Role.ADMIN), "console.evidence_queue", _l("Evidence")),
    ((Role.ADMIN,), "console.organizations", _l("Organizations")),
    ((Role.ADMIN,), "console.providers", _l("Providers")),
    ((Role.ADMIN,), "console.identity_providers", _l("Identity providers")),
    ((Role.ADMIN,), "console.api_clients", _l("API clients")),
    ((Role.ADMIN,), "console.audit", _l("Audit log")),
)


def navigation(person: Caller) -> list[tuple[str, Any]]:
    """The sections this person's roles open: (endpoint, label)."""
    return [
        (endpoint, label)
        for roles, endpoint, label in SECTIONS
        if access.has_any_role(person, *roles)
    ]


def _security_headers(response: Response) -> Response:
    if request.blueprint in PAGE_BLUEPRINTS or (
        request.blueprint is None and response.mimetype == "text/html"
    ):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
    return response


@bp.errorhandler(BrokerError)
def _domain_error(error: BrokerError) -> Response:
    response = error_page(problem_of(error))
    response.headers.update(error.headers)  # Retry-After, WWW-Authenticate…
    return response


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    words = {404: "not_found", 403: "forbidden", 429: "rate_limited", 412: "precondition_failed"}
    code = words.get(status, "internal_error" if status >= 500 else "validation_failed")
    if status >= 500:
        from broker.api.problems import log

        log.error("unhandled error", exc_info=getattr(error, "original_exception", None) or error)
    return error_page(Problem(str(PROBLEM_WORDS[code]), status=status))


# Paths of machines, not people: their errors stay problem+json whatever the client accepts.
MACHINE_PATHS = ("/v1/", "/oauth/", "/demo-idp/", "/.well-known/", "/openapi", "/docs", "/metrics")


def _unknown_path(error: NotFound) -> Response:
    """A mistyped address in a browser gets a page; an API client gets problem+json."""
    from broker.api.problems import http_exception_problem

    wanted = request.accept_mimetypes
    if request.path.startswith(MACHINE_PATHS) or wanted.best != "text/html":
        return http_exception_problem(error)
    return error_page(Problem(str(PROBLEM_WORDS["not_found"]), status=404))


def init_pages(app: Flask) -> None:
    """Register the console's template context, the security headers and the pages for
    unknown addresses."""
    from broker.web import i18n

    i18n.init_i18n(app)
    app.context_processor(_template_context)
    # What the macros need, whether or not a template imports them `with context`.
    app.jinja_env.globals.update(
        CSRF_FIELD=people.CSRF_FIELD,
        ONCE_FIELD=ONCE_FIELD,
        csrf_value=lambda: g.get("csrf_token") or "",
        new_key=lambda: str(uuid.uuid4()),
        **TEMPLATE_GLOBALS,
    )
    app.after_request(_security_headers)
    app.register_error_handler(NotFound, _unknown_path)


@bp.get("/")
@page()
def home() -> BaseResponse:
    """The start page: the first section the person's roles open."""
    sections = navigation(caller())
    return redirect(url_for(sections[0][0]) if sections else url_for("console.account"), 303)


@bp.get("/account")
@page()
def account() -> Response:
    """Who is signed in, for which organization, with which roles."""
    from broker.api.base import request_session

    me = people.describe(request_session(), caller())
    return render("console/account.html", me=me)


@bp.post("/language")
def choose_language() -> BaseResponse:
    """The language switch: remembered as the person's preference when signed in (a change,
    so CSRF-checked), else in a cookie."""
    from broker.web.i18n import LANGUAGE_COOKIE, LANGUAGES

    chosen = request.form.get("language")
    if chosen not in LANGUAGES:
        return error_page(Problem(str(PROBLEM_WORDS["validation_failed"]), status=400))
    try:
        person = person_of_the_session()
    except Unauthorized:
        person = None
    if person is not None and person.user_id is not None:
        from broker.api.base import database

        with database().transaction() as session:
            people.set_language(session, person.user_id, chosen)
    response = redirect(_safe_path(request.form.get("next") or "/"), 303)
    response.set_cookie(
        LANGUAGE_COOKIE, chosen, max_age=365 * 24 * 3600, samesite="Lax", httponly=True
    )
    return response
