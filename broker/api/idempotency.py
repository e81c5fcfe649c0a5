"""The `Idempotency-Key` header on POST endpoints (see `broker.services.idempotency`)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, cast

from flask import Response, current_app, make_response, request

from broker.api.base import current_caller, database, request_session
from broker.errors import IdempotencyKeyRequired, ValidationFailed
from broker.services import idempotency
from broker.services.people import CSRF_FIELD

F = TypeVar("F", bound=Callable[..., Any])

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Visible ASCII, 1 to 255 characters: a UUID or any opaque token fits.
KEY_PATTERN = re.compile(rf"^[!-~]{{1,{MAX_KEY_LENGTH}}}$")
# Response headers worth replaying; others (Date, request id) describe the new exchange.
_STORED_HEADERS = ("Content-Type", "Location", "ETag")


def _key_parameter(required: bool) -> dict[str, Any]:
    return {
        "name": HEADER,
        "in": "header",
        "required": required,
        "description": (
            "A unique key per intended operation (a UUID is fine). Retrying with the same key "
            "replays the first response with `Idempotent-Replayed: true`; the same key with a "
            "different body answers 422. Keys are kept 24 hours, per organization."
        ),
        "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
    }


def idempotent(*, required: bool, form_field: str | None = None) -> Callable[[F], F]:
    """Make a POST view idempotent per `Idempotency-Key` (apply under `@blp.auth`).

    With `form_field`, the key is that field of a posted form instead (a console form carries
    a new key each time it is shown, so that sending it twice does the thing once) and the
    request is told apart by its fields, the CSRF token left out."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = request.form.get(form_field) if form_field else request.headers.get(HEADER)
            if key is None:
                if required:
                    raise IdempotencyKeyRequired(f"Send a unique {HEADER} header with this POST.")
                return view(*args, **kwargs)
            if not KEY_PATTERN.match(key):
                raise ValidationFailed(
                    errors={HEADER: [f"1 to {MAX_KEY_LENGTH} visible ASCII characters."]}
                )
            config = current_app.config
            outcome = idempotency.claim(
                database(),
                current_caller().organization_id,
                key,
                idempotency.request_fingerprint(request.method, request.path, _body(form_field)),
                ttl=timedelta(hours=config["IDEMPOTENCY_TTL_HOURS"]),
                lease=timedelta(seconds=config["IDEMPOTENCY_LOCK_SECONDS"]),
                wait_seconds=config["IDEMPOTENCY_WAIT_SECONDS"],
            )
            if isinstance(outcome, idempotency.StoredResponse):
                return _replay(outcome)
            try:
                response = make_response(view(*args, **kwargs))
                if response.status_code >= 400:
                    raise _Failed(response)
                idempotency.complete(
                    request_session(),
                    outcome,
                    idempotency.StoredResponse(
                        response.status_code,
                        {h: response.headers[h] for h in _STORED_HEADERS if h in response.headers},
                        response.get_data(),
                    ),
                )
                request_session().commit()
            except _Failed as failed:
                _release(outcome)
                return failed.response
            except BaseException:
                _release(outcome)
                raise
            return response

        documented = functools.partial(_document, required=required)
        return cast(F, documented(wrapper))

    return decorator


def _body(form_field: str | None) -> bytes:
    if form_field is None:
        return request.get_data(cache=True)
    fields = sorted(
        (name, value)
        for name, value in request.form.items(multi=True)
        if name not in (form_field, CSRF_FIELD)
    )
    return json.dumps(fields).encode()


class _Failed(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _document(view: Callable[..., Any], *, required: bool) -> Callable[..., Any]:
    apidoc = getattr(view, "_apidoc", {})
    manual = apidoc.setdefault("manual_doc", {})
    manual.setdefault("parameters", []).append(_key_parameter(required))
    view._apidoc = apidoc  # type: ignore[attr-defined]
    return view


def _release(claimed: idempotency.Claim) -> None:
    # Give up the request's transaction first: on SQLite it holds the write lock.
    request_session().rollback()
    idempotency.release(database(), claimed)


def _replay(stored: idempotency.StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status)
    for name, value in stored.headers.items():
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response
