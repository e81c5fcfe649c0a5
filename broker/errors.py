"""Domain errors. Each carries its HTTP status and a stable machine `code`; the API turns
them into RFC 9457 problem details in one place (`broker.api.problems`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def joined(words: Sequence[str], conjunction: str = "and") -> str:
    """Words in a sentence: `a`, `a and b`, `a, b and c` (or with `or`)."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


class BrokerError(Exception):
    """A failure the client can act on.

    `title` is the sentence shown as the problem's `detail` when none is given; the problem's
    own `title` is the status's (`broker.api.problems.TITLES`), the same for every error.
    """

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Mapping[str, Sequence[str]] | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        if code:
            self.code = code
        self.extra = extra


class Unauthorized(BrokerError):
    status, code, title = 401, "unauthorized", "Authentication required"


class Forbidden(BrokerError):
    status, code, title = 403, "forbidden", "Not allowed for your role"


class NotFound(BrokerError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(BrokerError):
    status, code, title = 409, "conflict", "Conflict with the current state"


class PreconditionFailed(BrokerError):
    status, code, title = 412, "precondition_failed", "The resource has changed"


class PreconditionRequired(BrokerError):
    status, code, title = 428, "precondition_required", "If-Match header required"


class UnsupportedMediaType(BrokerError):
    status, code, title = 415, "unsupported_media_type", "Send JSON"


class NotReady(BrokerError):
    status, code, title = 503, "not_ready", "Not ready to serve"


class ValidationFailed(BrokerError):
    status, code, title = 422, "validation_failed", "The request is not valid"


class IdempotencyKeyRequired(BrokerError):
    status, code, title = 400, "idempotency_key_required", "Idempotency-Key header required"


class IdempotencyKeyReused(BrokerError):
    status, code, title = (
        422,
        "idempotency_key_reused",
        "Idempotency-Key already used with a different request",
    )


class IdempotencyInFlight(BrokerError):
    status, code, title = (
        409,
        "idempotency_in_flight",
        "A request with this Idempotency-Key is still being processed",
    )
