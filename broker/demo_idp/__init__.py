"""A small OpenID provider with demo people, served under `/demo-idp` for the embedded demo.

The broker signs people in through it exactly as through any external identity provider
(ProConnect, Keycloak): authorization code flow with PKCE, RS256 ID tokens, a signed userinfo
JWT carrying `email`, `given_name`, `usual_name` and `siret`, and RP-initiated logout. It is
an external provider that happens to share the process: it uses none of the broker's
database, models or auth, and registers nothing on the app (no `before_request`).

Several gunicorn workers serve it: its codes and access tokens live in a SQLite file of its
own and its signing key in a file, both in `state_dir`, shared by every worker.

Mount: `app.register_blueprint(create_blueprint(settings))`; the blueprint carries its own
prefix (`URL_PREFIX`), which must end the issuer URL.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, jsonify, render_template_string, request, url_for
from markupsafe import Markup

from broker.demo_idp.keys import load_or_create_signing_key
from broker.demo_idp.people import DemoPerson, People
from broker.demo_idp.server import (
    ALGORITHM,
    AUTH_METHODS,
    SCOPES,
    DemoAuthorizationServer,
    DemoClient,
    Provider,
)
from broker.demo_idp.store import CodeAndTokenStore

__all__ = ["URL_PREFIX", "DemoIdpSettings", "DemoPerson", "create_blueprint"]

URL_PREFIX = "/demo-idp"
BLUEPRINT_NAME = "demo_idp"
# The fields of the sign-in form, kept out of the authorization request it carries on.
_FORM_FIELDS = frozenset({"email", "password"})


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DemoIdpSettings:
    """Who the provider is and whom it knows.

    `clients` maps a client id to its secret and the redirect URIs it may use;
    `post_logout_redirect_uris` (client id → URIs) adds where logout may send the browser
    besides those. `now` is the provider's clock (tests move it; the broker may pass its
    own `utcnow`)."""

    issuer: str
    state_dir: Path
    clients: Mapping[str, tuple[str, Sequence[str]]]
    people: Sequence[DemoPerson]
    post_logout_redirect_uris: Mapping[str, Sequence[str]] = field(default_factory=dict)
    now: Callable[[], datetime] = system_clock

    def __post_init__(self) -> None:
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"The demo provider's issuer must be an http(s) URL: {self.issuer}")
        if not parts.path.endswith(URL_PREFIX) or parts.query or parts.fragment:
            raise ValueError(
                f"The demo provider's issuer must end with {URL_PREFIX}, where it is mounted "
                f"(no trailing slash): {self.issuer}"
            )


def create_blueprint(settings: DemoIdpSettings) -> Blueprint:
    """The provider's endpoints, on a blueprint with its own authorization server (none is
    shared between apps). Creates the signing key and the store in `state_dir` if absent."""
    provider = _provider(settings)
    server = DemoAuthorizationServer(provider)
    blueprint = Blueprint(BLUEPRINT_NAME, __name__, url_prefix=URL_PREFIX)

    @blueprint.get("/.well-known/openid-configuration")
    def discovery() -> Response:
        """OpenID Provider metadata (OpenID Connect Discovery 1.0)."""
        return jsonify(provider_metadata(settings.issuer))

    @blueprint.get("/jwks")
    def jwks() -> Response:
        """The public key that signs ID tokens and userinfo."""
        return jsonify(provider.public_jwks())

    @blueprint.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        """The sign-in form (GET), and the password check that sends the browser back to the
        client with a code (POST)."""
        try:
            grant = server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            return _refusal(server, error)
        client_id = grant.client.client_id
        if "password" not in request.form:
            return _sign_in_page(client_id, email="", error=None)
        email = request.form.get("email", "")
        person = provider.people.authenticate(email, request.form["password"])
        if person is None:
            return _sign_in_page(client_id, email=email, error="wrong")
        response: Response = server.create_authorization_response(grant=grant, grant_user=person)
        return response

    @blueprint.post("/token")
    def token() -> Response:
        """Authorization code → access token and ID token (RFC 6749 §4.1.3, PKCE)."""
        response: Response = server.create_token_response()
        return response

    @blueprint.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Response:
        """The person's claims as a signed JWT, for a bearer access token."""
        response: Response = server.create_endpoint_response("userinfo")
        return response

    @blueprint.route("/logout", methods=["GET", "POST"])
    def logout() -> Response:
        """RP-initiated logout: back to the client when it named a URI registered for it,
        otherwise a "signed out" page."""
        try:
            ask = server.validate_endpoint_request("end_session")
        except OAuth2Error as error:
            return _page(SIGNED_OUT, 400, problem=error.description or error.error)
        redirect = server.create_endpoint_response("end_session", ask)
        return redirect if redirect is not None else _page(SIGNED_OUT, 200, problem=None)

    blueprint.after_request(_page_headers)
    return blueprint


def provider_metadata(issuer: str) -> dict[str, Any]:
    """The discovery document: endpoints are named from the issuer, not from the request's
    Host, so they stay right behind a proxy."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "end_session_endpoint": f"{issuer}/logout",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["public"],
        "scopes_supported": list(SCOPES),
        "claims_supported": ["sub", "email", "given_name", "usual_name", "siret"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "userinfo_signing_alg_values_supported": [ALGORITHM],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
    }


def _provider(settings: DemoIdpSettings) -> Provider:
    def clock() -> float:
        return settings.now().timestamp()

    clients = {
        client_id: DemoClient(
            client_id,
            secret,
            redirect_uris,
            settings.post_logout_redirect_uris.get(client_id, ()),
        )
        for client_id, (secret, redirect_uris) in settings.clients.items()
    }
    return Provider(
        issuer=settings.issuer,
        key=load_or_create_signing_key(settings.state_dir),
        store=CodeAndTokenStore(settings.state_dir, clock),
        clients=clients,
        people=People(settings.people),
        clock=clock,
    )


def _refusal(server: DemoAuthorizationServer, error: OAuth2Error) -> Response:
    """An authorization request that cannot go on: back to the client with the error when its
    redirect URI was verified (RFC 6749 §4.1.2.1), otherwise a page, never a redirect."""
    if error.redirect_uri:
        response: Response = server.handle_error_response(None, error)
        return response
    return _page(REFUSED, 400, error=error.error, problem=error.description)


def _sign_in_page(client_id: str, email: str, error: str | None) -> Response:
    # The form posts back the authorization request it was shown for.
    carried = [
        (name, value)
        for name, value in request.values.items(multi=True)
        if name not in _FORM_FIELDS
    ]
    action = f"{url_for('.authorize')}?{urlencode(carried)}"
    return _page(SIGN_IN, 200, client_id=client_id, email=email, error=error, action=action)


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem;"
    "line-height:1.5}label{display:block;margin-top:1rem;font-weight:600}"
    "input{display:block;width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}"
    "button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem}"
    ".error{color:#a4001d;border:2px solid #a4001d;padding:.5rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_LAYOUT = (
    '<!doctype html><html lang="{{ lang }}"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>{{ title }} – {{ w.provider }}</title><style>{{ style }}</style></head>"
    "<body><main>{{ content }}</main></body></html>"
)
# The provider's few words, in the language the browser prefers (French or English).
WORDS = {
    "en": {
        "provider": "demo identity provider",
        "sign_in": "Sign in",
        "asks": "Demo identity provider. <strong>{}</strong> asks who you are.",
        "email": "E-mail",
        "password": "Password",
        "wrong": "Wrong e-mail or password.",
        "refused": "Sign-in request refused",
        "refused_why": "The application sent a sign-in request this provider cannot accept, "
        "so you were not sent back to it.",
        "signed_out": "Signed out",
        "signed_out_here": "You are signed out of the demo identity provider.",
        "bad_logout": "The application's logout request was not valid, so you were not sent "
        "back to it:",
    },
    "fr": {
        "provider": "fournisseur d’identité de démonstration",
        "sign_in": "Connexion",
        "asks": "Fournisseur d’identité de démonstration. <strong>{}</strong> demande qui "
        "vous êtes.",
        "email": "Courriel",
        "password": "Mot de passe",
        "wrong": "Courriel ou mot de passe incorrect.",
        "refused": "Demande de connexion refusée",
        "refused_why": "L’application a envoyé une demande de connexion que ce fournisseur ne "
        "peut pas accepter ; vous n’y avez donc pas été renvoyé·e.",
        "signed_out": "Déconnecté",
        "signed_out_here": "Vous êtes déconnecté·e du fournisseur d’identité de démonstration.",
        "bad_logout": "La demande de déconnexion de l’application n’était pas valide ; vous n’y "
        "avez donc pas été renvoyé·e :",
    },
}
SIGN_IN = (
    "sign_in",
    "<h1>{{ w.sign_in }}</h1><p>{{ w.asks|safe|replace('{}', client_id|e) }}</p>"
    '{% if error %}<p class="error" role="alert" id="error">{{ w[error] }}</p>{% endif %}'
    '<form method="post" action="{{ action }}">'
    '<label for="email">{{ w.email }}</label><input id="email" name="email" type="email" '
    'autocomplete="username" required value="{{ email }}"'
    '{% if error %} aria-describedby="error"{% endif %}>'
    '<label for="password">{{ w.password }}</label><input id="password" name="password" '
    'type="password" autocomplete="current-password" required>'
    '<button type="submit">{{ w.sign_in }}</button></form>',
)
REFUSED = (
    "refused",
    "<h1>{{ w.refused }}</h1><p>{{ w.refused_why }}</p>"
    "<p>{{ problem }} (<code>{{ error }}</code>)</p>",
)
SIGNED_OUT = (
    "signed_out",
    "<h1>{{ w.signed_out }}</h1><p>{{ w.signed_out_here }}</p>"
    "{% if problem %}<p>{{ w.bad_logout }} {{ problem }}</p>{% endif %}",
)


def _page(template: tuple[str, str], status: int, **context: Any) -> Response:
    title, body = template
    lang = request.accept_languages.best_match(tuple(WORDS), default="en")
    words = WORDS[lang]
    content = Markup(render_template_string(body, w=words, **context))
    html = render_template_string(
        _LAYOUT, lang=lang, w=words, title=words[title], style=Markup(_STYLE), content=content
    )
    return Response(html, status=status, mimetype="text/html")


def _page_headers(response: Response) -> Response:
    """Pages are never cached, framed or given a referrer (their URL carries the request),
    and run no script: the one inline style is allowed by its hash."""
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response
