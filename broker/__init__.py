"""Sovereign cloud broker: the Flask application factory."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Flask, g, request

from broker.config import load_config
from broker.errors import UnsupportedMediaType

__all__ = ["create_app"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Endpoints whose body is not JSON by protocol.
_NON_JSON_ENDPOINTS = frozenset(
    {
        "oauth.issue_token",
        "auth.logout",  # a form
        # The demo OpenID provider's forms and OAuth endpoints.
        "demo_idp.authorize",
        "demo_idp.token",
        "demo_idp.userinfo",
        "demo_idp.logout",
    }
)


class BrokerFlask(Flask):
    """Flask, except that an unexpected error is logged once: by the 500 handler
    (`broker.api.problems`), with the request id, instead of a second traceback of Flask's."""

    def log_exception(self, exc_info: Any) -> None:
        return None


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the API application. `config` overrides settings read from the environment."""
    from broker.api import (
        audit,
        billing,
        evidence,
        identity_providers,
        invitations,
        invoice_payments,
        jobs,
        me,
        members,
        oauth,
        offers,
        operations,
        orders,
        organizations,
        payments,
        policies,
        providers,
        quotes,
        resources,
        settlements,
        trusted_issuers,
        usage,
        webhooks,
    )
    from broker.api.base import Api, close_request_session
    from broker.api.limits import init_rate_limits
    from broker.api.problems import register_error_handlers
    from broker.auth.keys import session_secret
    from broker.auth.oidc import OidcClient
    from broker.auth.server import init_auth
    from broker.db import Database
    from broker.demo import mount_demo_idp
    from broker.models.base import reset_clock, set_clock
    from broker.observability import configure_logging, init_observability
    from broker.services.adapters import ProviderRuntime
    from broker.web import auth, console

    settings = load_config()
    settings.update(config or {})
    app = BrokerFlask(__name__, instance_path=settings["INSTANCE_PATH"], static_folder=None)
    app.config.update(settings)
    configure_logging(app.config["LOG_LEVEL"], app.config["JSON_LOGS"])

    db = Database(app.config["DATABASE_URL"])
    app.extensions["broker.db"] = db
    # Built now so that malformed credential keys stop the start, not a request.
    app.extensions["broker.providers"] = ProviderRuntime.from_config(app.config)
    app.teardown_appcontext(close_request_session)

    if app.config["WEBHOOKS_ALLOW_PRIVATE"]:
        app.logger.warning(
            "BROKER_ALLOW_PRIVATE_WEBHOOKS is on: webhooks may point at http and private "
            "addresses. For development only."
        )
    # The signed cookie of a sign-in under way (people's sessions are server-side records).
    app.config["SECRET_KEY"] = session_secret(
        app.config["SECRET_KEY"], app.config["SECRET_KEY_FILE"]
    )
    app.config.update(
        SESSION_COOKIE_NAME="broker_signin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=str(app.config["OAUTH_ISSUER"]).startswith("https://"),
    )
    # Identity providers are called like clouds (public https only), except that with the
    # demo on, its own provider answers on this very (local, maybe http) address.
    oidc_http = app.extensions["broker.providers"].http
    if app.config["DEMO_IDP"]:
        oidc_http = dataclasses.replace(oidc_http, allow_private=True)
    app.extensions["broker.oidc"] = OidcClient(oidc_http)
    init_observability(app)
    register_error_handlers(app)
    init_rate_limits(app)
    init_auth(app, db)

    @app.before_request
    def _read_the_apps_clock() -> None:
        # Every timestamp a request writes comes from the app's clock (`CLOCK`, set by tests).
        if app.config.get("CLOCK") is not None:
            g.clock_token = set_clock(app.config["CLOCK"])

    @app.teardown_request
    def _put_the_clock_back(_error: BaseException | None = None) -> None:
        token = g.pop("clock_token", None)
        if token is not None:
            reset_clock(token)

    @app.before_request
    def _require_json_body() -> None:
        if (
            request.routing_exception is not None  # 404/405 answer first
            or request.method not in _BODY_METHODS
            or request.endpoint in _NON_JSON_ENDPOINTS
            or request.blueprint == "console"  # the console's pages post forms
        ):
            return
        has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
            "Transfer-Encoding", ""
        )
        if has_body and not request.is_json:
            raise UnsupportedMediaType(
                "Request bodies must be JSON (Content-Type: application/json)."
            )

    console.init_console(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(auth.invitation_pages)
    if app.config["DEMO_IDP"]:
        mount_demo_idp(app)

    api = Api(app)
    for blueprint in (
        oauth.blp,
        operations.blp,
        organizations.blp,
        invitations.blp,
        policies.blp,
        providers.blp,
        evidence.blp,
        trusted_issuers.blp,
        identity_providers.blp,
        members.blp,
        members.users,
        offers.blp,
        quotes.blp,
        orders.blp,
        resources.blp,
        usage.blp,
        billing.profiles,
        billing.runs,
        billing.invoices,
        billing.credit_notes,
        invoice_payments.blp,
        settlements.blp,
        jobs.blp,
        webhooks.blp,
        me.blp,
        payments.blp,
        audit.blp,
    ):
        api.register_blueprint(blueprint)
    app.add_url_rule("/docs/assets/<path:filename>", view_func=operations.docs_assets)
    return app
