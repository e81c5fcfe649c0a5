"""Optimistic concurrency over HTTP: `ETag` from a version column, `If-Match` to change."""

from __future__ import annotations

import re

from flask import Response, request

from broker.errors import PreconditionFailed, PreconditionRequired

_TAG = re.compile(r'^(?:W/)?"v(\d{1,18})"$')

IF_MATCH_PARAMETER = {
    "name": "If-Match",
    "in": "header",
    "required": True,
    "description": "The `ETag` you read. Missing answers 428; stale answers 412.",
    "schema": {"type": "string", "minLength": 1},
}


def etag(version: int) -> str:
    return f'"v{version}"'


def with_etag(response: Response, version: int) -> Response:
    response.headers["ETag"] = etag(version)
    return response


def if_match_version() -> int:
    """The version named by `If-Match` (428 when absent, 412 when it names none)."""
    header = request.headers.get("If-Match", "").strip()
    if not header:
        raise PreconditionRequired(
            "Read the resource first and send its ETag in If-Match to change it."
        )
    match = _TAG.match(header)
    if match is None:
        raise PreconditionFailed("If-Match does not name a version of this resource.")
    return int(match.group(1))
