"""Per-request (or per-job) context that services may read without knowing about Flask."""

from __future__ import annotations

from contextvars import ContextVar

# The id that ties log lines and audit events to one request or job run.
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
