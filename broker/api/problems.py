"""RFC 9457 problem details: the one shape of every error the API returns.

`type`, `title`, `status`, `detail`, plus `code` (a stable slug clients can switch on),
`errors` (field → messages, for validation) and `request_id` (to find the log line).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import marshmallow as ma
from flask import Flask, Response, g, json
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from broker.errors import BrokerError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:cloud-broker:problem:"

log = logging.getLogger("broker.errors")


class ProblemSchema(ma.Schema):
    """RFC 9457 problem details (documentation only; errors are built by `problem`)."""

    class Meta:
        unknown = ma.INCLUDE

    type = ma.fields.String(required=True, metadata={"description": "URI naming the problem"})
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String()
    code = ma.fields.String(required=True, metadata={"description": "Stable machine slug"})
    errors = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.List(ma.fields.String()),
        metadata={"description": "Field → messages, for validation errors"},
    )
    request_id = ma.fields.String()


# Codes for errors raised by Werkzeug/Flask itself (routing, body size, methods).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_failed",
    428: "precondition_required",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
}


# One title per status, whatever answers it (a domain error, Werkzeug, webargs, the rate
# limiter, gunicorn): the title is the kind of failure a person reads, the same wording every
# time; `code` names the precise problem and `detail` says what to do about it.
TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Authentication required",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict with the current state",
    410: "No longer available",
    412: "The resource has changed",
    413: "The request body is too large",
    414: "The URL is too long",
    415: "Unsupported media type",
    422: "The request is not valid",
    428: "Precondition required",
    429: "Too many requests",
    431: "The request headers are too large",
    500: "Internal error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def title_for(status: int) -> str:
    """The title of every problem answered with `status`."""
    if status in TITLES:
        return TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem(
    status: int,
    code: str,
    detail: str | None = None,
    *,
    errors: Mapping[str, Sequence[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Build a problem+json response (its title is the status's: `TITLES`)."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title_for(status),
        "status": status,
        "code": code,
    }
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = {field: list(messages) for field, messages in errors.items()}
    if extra:
        body.update(extra)
    request_id = g.get("request_id") if g else None
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow/webargs nested messages into `{"a.b.0.c": ["..."]}`."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(flatten_errors(value, name))
    elif isinstance(messages, list | tuple) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_schema"] = [str(m) for m in messages]
    elif isinstance(messages, list | tuple):
        for index, value in enumerate(messages):
            flat.update(flatten_errors(value, f"{prefix}.{index}" if prefix else str(index)))
    else:
        flat[prefix or "_schema"] = [str(messages)]
    return flat


def _webargs_errors(data: Mapping[str, Any]) -> dict[str, list[str]]:
    messages = data.get("messages") or data.get("errors") or {}
    # webargs keys errors by location (json, query, …); clients know where each field goes,
    # and services report fields the same bare way, so the location is dropped.
    flat: dict[str, list[str]] = {}
    for fields in messages.values():
        flat.update(flatten_errors(fields))
    return flat


def http_exception_problem(error: HTTPException) -> Response:
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    headers = dict(data.get("headers") or {})
    valid_methods = getattr(error, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(sorted(valid_methods))
    code = _HTTP_CODES.get(status, "http_error")
    detail = data.get("message") or error.description
    errors = _webargs_errors(data) if ("messages" in data or "errors" in data) else None
    if errors and status == 422:
        detail = "Some fields are missing or invalid; see `errors`."
    elif errors and status == 400:
        # webargs answers 400 only when the body cannot be parsed at all.
        code, detail, errors = "malformed_body", "The body is missing or not valid JSON.", None
    return problem(status, code, detail=detail, errors=errors, headers=headers)


def write_server_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """What gunicorn answers a request it refuses before the app sees it (a request line or
    headers over its limits, a malformed request): problem+json like every other error,
    instead of its HTML page. Installed by `gunicorn.conf.py` over `gunicorn.util.write_error`.
    """
    from gunicorn.util import write_nonblock

    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + _HTTP_CODES.get(status_int, "bad_request"),
        "title": title_for(status_int),
        "status": status_int,
        "code": _HTTP_CODES.get(status_int, "bad_request"),
    }
    if mesg:
        body["detail"] = mesg[:300]
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + payload)


def register_error_handlers(app: Flask) -> None:
    """Map every exception class to a problem response, in one place."""

    @app.errorhandler(BrokerError)
    def _broker_error(error: BrokerError) -> Response:
        # A domain error's class `title` is its default sentence: it becomes the detail when
        # none was given (the problem's title is the status's, as for every other error).
        return problem(
            error.status,
            error.code,
            error.detail or error.title,
            errors=error.errors,
            headers=error.headers,
            extra=error.extra,
        )

    @app.errorhandler(IntegrityError)
    def _integrity_error(error: IntegrityError) -> Response:
        # Services check what they can; a unique constraint is the last guard under races.
        log.info("integrity error turned into 409: %s", error.orig)
        return problem(409, "conflict", detail="The change conflicts with existing data.")

    @app.errorhandler(DataError)
    def _data_error(error: DataError) -> Response:
        # Input checks should catch these first; a value the database cannot store is still
        # the client's input, never a server error.
        log.warning("database refused a value: %s", error.orig)
        return problem(422, "validation_failed", detail="A value cannot be stored as given.")

    @app.errorhandler(StaleDataError)
    def _stale(error: StaleDataError) -> Response:
        return problem(
            412,
            "precondition_failed",
            "Someone changed this resource while you did; read it again and retry.",
        )

    @app.errorhandler(OperationalError)
    def _operational_error(error: OperationalError) -> Response:
        log.exception("database unavailable")
        return problem(
            503,
            "unavailable",
            detail="The database is busy or unreachable; retry shortly.",
            headers={"Retry-After": "1"},
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        if error.code == 500:
            log.error(
                "unhandled error", exc_info=getattr(error, "original_exception", None) or error
            )
            return problem(500, "internal_error", detail="An unexpected error occurred.")
        return http_exception_problem(error)
