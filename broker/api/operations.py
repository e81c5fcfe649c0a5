"""Operations endpoints: liveness, readiness, metrics, interactive docs, the spec as YAML."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
import swagger_ui_bundle
import yaml
from flask import Response, current_app, send_from_directory
from sqlalchemy.exc import SQLAlchemyError

from broker.api.base import Blueprint, database
from broker.errors import NotReady
from broker.migrate import is_at_head

blp = Blueprint("operations", __name__, description="Operations")


class HealthSchema(ma.Schema):
    status = ma.fields.String(required=True)


@blp.route("/healthz", methods=["GET"])
@blp.response(200, HealthSchema)
def healthz() -> dict[str, Any]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@blp.route("/readyz", methods=["GET"])
@blp.response(200, HealthSchema)
def readyz() -> dict[str, Any]:
    """Readiness: the database answers and its schema is at the latest migration."""
    try:
        at_head = is_at_head(database().engine)
    except SQLAlchemyError as exc:
        raise NotReady("The database is unreachable.") from exc
    if not at_head:
        raise NotReady("The database schema is not at the latest migration; run migrations.")
    return {"status": "ready"}


@blp.route("/metrics", methods=["GET"])
@blp.response(200, content_type="text/plain")
def metrics() -> Response:
    """Prometheus metrics (text exposition format)."""
    metrics_registry = current_app.extensions["broker.metrics"]
    response: Response = metrics_registry.exposition()
    return response


@blp.route("/openapi.yaml", methods=["GET"])
@blp.response(200, content_type="application/yaml")
def openapi_yaml() -> Response:
    """This API's OpenAPI document."""
    spec = current_app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
    # The same rendering as `make openapi` (flask openapi write --format=yaml).
    return Response(yaml.dump(spec.to_dict()), content_type="application/yaml")


def docs_assets(filename: str) -> Response:
    """Swagger UI files, shipped in a Python package so the docs work with no internet."""
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)
