"""Request ids, JSON logs and Prometheus metrics."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from pythonjsonlogger.json import JsonFormatter

from broker.context import correlation_id

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,100}$")

access_log = logging.getLogger("broker.access")


class RequestIdFilter(logging.Filter):
    """Adds the current request id (if any) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = correlation_id.get()
        return True


def configure_logging(level: str, json_logs: bool) -> None:
    """JSON lines on stderr (one object per event), configured once per process."""
    root = logging.getLogger()
    if any(getattr(h, "_broker", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._broker = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    formatter: logging.Formatter
    if json_logs:
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%SZ",
        )
    else:
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ"
        )
    formatter.converter = time.gmtime  # log times in UTC, whatever the host's zone
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


class Metrics:
    """HTTP request counters and latency per route, on a registry of this app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "broker_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "broker_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )

    def exposition(self) -> Response:
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Several gunicorn workers: aggregate what every process wrote.
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def init_observability(app: Flask) -> None:
    metrics = Metrics()
    app.extensions["broker.metrics"] = metrics

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        correlation_id.set(g.request_id)
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = g.get("request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = request_id
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(request.method, route).observe(elapsed)
        caller = g.get("caller")
        access_log.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                "client_id": caller.client_id if caller else None,
            },
        )
        return response
