"""Optimistic concurrency as services see it: the version a caller says it read (`If-Match`).

The header is only judged by the service, once it has found the resource and knows the caller
may see it, so a foreign or hidden id answers 404 whatever the headers (missing: 428; not a
version of ours, or a stale one: 412).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.errors import PreconditionFailed, PreconditionRequired

_TAG = re.compile(r'^(?:W/)?"v(\d{1,18})"$')


def etag(version: int) -> str:
    """The `ETag` of a resource at `version` (its version column)."""
    return f'"v{version}"'


@dataclass(frozen=True)
class IfMatch:
    """What a caller sent as `If-Match` (None: nothing)."""

    header: str | None

    @classmethod
    def of(cls, version: int) -> IfMatch:
        """The precondition of a caller that read `version` (the seed, the command line)."""
        return cls(etag(version))

    def check(self, current: int, what: str) -> None:
        """Go ahead only if the caller read the `current` version of the `what`."""
        header = (self.header or "").strip()
        if not header:
            raise PreconditionRequired(
                "Read the resource first and send its ETag in If-Match to change it."
            )
        match = _TAG.match(header)
        if match is None:
            raise PreconditionFailed("If-Match does not name a version of this resource.")
        if int(match.group(1)) != current:
            raise PreconditionFailed(f"The {what} changed since you read it; read it again.")
