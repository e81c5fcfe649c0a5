"""Optimistic concurrency over HTTP: `ETag` from a version column, `If-Match` to change."""

from __future__ import annotations

from flask import Response, request

from broker.services.preconditions import IfMatch, etag

IF_MATCH_PARAMETER = {
    "name": "If-Match",
    "in": "header",
    "required": True,
    "description": "The `ETag` you read. Missing answers 428; stale answers 412.",
    "schema": {"type": "string", "minLength": 1},
}


def with_etag(response: Response, version: int) -> Response:
    response.headers["ETag"] = etag(version)
    return response


def if_match() -> IfMatch:
    """The request's `If-Match`, for the service to judge once it found the resource."""
    return IfMatch(request.headers.get("If-Match"))
