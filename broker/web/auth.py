"""Signing people in and out: `/auth/login` → the identity provider → `/auth/callback` → a
session cookie; `POST /auth/logout` ends it (and, when the provider offers it, its own session).

What the round trip must bring back (state, nonce, PKCE verifier) waits in Flask's signed
cookie; the session itself is a server-side record (broker/services/people.py) whose token is
the `broker_session` cookie: HttpOnly, SameSite=Lax, Secure when the broker is reached over
https. A refused sign-in shows a page saying why, and stores nothing.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
)
from flask_babel import gettext as _
from sqlalchemy import select

from broker.api.base import database, provider_runtime
from broker.auth.oidc import OidcClient, PendingSignIn, ProviderConfig, SignInFailed
from broker.errors import BrokerError
from broker.models import IdentityProvider, Organization
from broker.models.base import utcnow
from broker.services import identity_providers, invitations, people
from broker.web.i18n import language_of_request
from broker.web.pages import problem_of, role_label

bp = Blueprint("auth", __name__, url_prefix="/auth", template_folder="templates")
# The link an invitation e-mail carries (`/invitations/<token>`).
invitation_pages = Blueprint("invitation_pages", __name__, template_folder="templates")

SESSION_COOKIE, CSRF_HEADER, CSRF_FIELD = (
    people.SESSION_COOKIE,
    people.CSRF_HEADER,
    people.CSRF_FIELD,
)
_PENDING = "signin"


def oidc() -> OidcClient:
    client: OidcClient = current_app.extensions["broker.oidc"]
    return client


def _base_url() -> str:
    return str(current_app.config["OAUTH_ISSUER"]).rstrip("/")


def _redirect_uri() -> str:
    return f"{_base_url()}/auth/callback"


def _page(title: str, message: str = "", status: int = 200, **context: Any) -> Response:
    response = make_response(
        render_template(
            "console/auth_message.html", title=title, message=message, status=status, **context
        ),
        status,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(value: str | None) -> str:
    """Only a path of this site (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return "/"
    parts = urlsplit(value)
    return value if not parts.netloc and not parts.scheme else "/"


def _config(provider: IdentityProvider) -> ProviderConfig:
    with database().session(read_only=True) as db_session:
        secret = identity_providers.client_secret(db_session, provider, provider_runtime().keyring)
    return ProviderConfig(provider.issuer, provider.client_id, secret, provider.scopes)


@bp.get("/login")
def login() -> Any:
    """Start signing in at an identity provider (the only one, or the one chosen)."""
    next_path = _safe_next(request.args.get("next"))
    with database().session(read_only=True) as db_session:
        enabled = list(
            db_session.scalars(
                select(IdentityProvider)
                .where(IdentityProvider.enabled.is_(True))
                .order_by(IdentityProvider.name)
            )
        )
    chosen = request.args.get("provider")
    if chosen:
        provider = next((p for p in enabled if str(p.id) == chosen), None)
        if provider is None:
            return _page(_("Sign in"), _("No such identity provider."), 404, retry=True)
    elif len(enabled) == 1:
        provider = enabled[0]
    elif not enabled:
        return _page(_("Sign in"), _("No identity provider is configured yet."), 503)
    else:
        return _page(_("Sign in"), _("Choose how to sign in:"), providers=enabled, next=next_path)
    try:
        url, pending = oidc().start(_config(provider), _redirect_uri())
    except SignInFailed as error:
        return _page(_("Sign-in failed"), str(error), 502, retry=True)
    session[_PENDING] = {
        "provider": str(provider.id),
        "state": pending.state,
        "nonce": pending.nonce,
        "verifier": pending.code_verifier,
        "next": next_path,
    }
    return redirect(url, 302)


@bp.get("/callback")
def callback() -> Any:
    """The identity provider's answer: check it, find the person, open a session."""
    pending = session.pop(_PENDING, None)
    if not isinstance(pending, dict):
        return _page(
            _("Sign-in failed"), _("This sign-in has expired; sign in again."), 400, retry=True
        )
    if request.args.get("error"):
        detail = request.args.get("error_description") or request.args["error"]
        return _page(
            _("Sign-in failed"),
            _("The identity provider said: %(detail)s", detail=detail),
            400,
            retry=True,
        )
    now = utcnow()
    with database().session(read_only=True) as db_session:
        provider = db_session.get(IdentityProvider, uuid.UUID(pending["provider"]))
    if provider is None or not provider.enabled:
        return _page(_("Sign-in failed"), _("This identity provider is no longer enabled."), 400)
    try:
        claims, id_token = oidc().finish(
            _config(provider),
            _redirect_uri(),
            PendingSignIn(pending["state"], pending["nonce"], pending["verifier"]),
            code=request.args.get("code", ""),
            state=request.args.get("state", ""),
        )
        with database().transaction() as db_session:
            provider = db_session.get_one(IdentityProvider, provider.id)
            signed_in = people.sign_in(
                db_session, provider, claims, now, language=language_of_request()
            )
            _row, token = people.open_session(
                db_session,
                signed_in,
                provider,
                id_token,
                now,
                absolute=people.lifetimes(current_app.config)[1],
            )
    except SignInFailed as error:
        return _page(_("Sign-in failed"), str(error), 400, retry=True)
    except BrokerError as error:
        return _page(_("Sign-in refused"), problem_of(error).message, error.status)
    response = redirect(pending["next"], 303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=_base_url().startswith("https://"),
        path="/",
    )
    return response


@bp.post("/logout")
def logout() -> Any:
    """End the session (CSRF-checked), then the identity provider's when it offers that."""
    token = request.cookies.get(SESSION_COOKIE)
    target = f"{_base_url()}/auth/signed-out"
    if token:
        now = utcnow()
        with database().transaction() as db_session:
            try:
                row = people.current_session(
                    db_session, token, now, people.lifetimes(current_app.config)[0]
                )
            except BrokerError:
                row = None
            if row is not None:
                sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                if sent != row.csrf_token:
                    return _page(_("Not signed out"), _("The form has expired; try again."), 403)
                people.end_session(db_session, row, now, "signed_out")
                provider = (
                    db_session.get(IdentityProvider, row.identity_provider_id)
                    if row.identity_provider_id
                    else None
                )
                id_token = row.id_token
            else:
                provider, id_token = None, None
        if provider is not None:
            try:
                discovery = oidc().discover(provider.issuer)
            except SignInFailed:
                discovery = None
            if discovery is not None and discovery.end_session_endpoint:
                query = {"post_logout_redirect_uri": target, "client_id": provider.client_id}
                if id_token:
                    query["id_token_hint"] = id_token
                target = f"{discovery.end_session_endpoint}?{urlencode(query)}"
    response = redirect(target, 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@bp.get("/signed-out")
def signed_out() -> Response:
    return _page(_("Signed out"), _("You are signed out."), retry=True)


@invitation_pages.get("/invitations/<token>")
def invitation(token: str) -> Response:
    """What an invitation offers, and the way to accept it: signing in with the invited
    address applies its roles (broker/services/people.py). Used or expired: said so."""
    with database().session(read_only=True) as db_session:
        try:
            invited = invitations.by_token(db_session, token, utcnow())
        except BrokerError as error:
            return _page(_("Invitation"), problem_of(error).message, error.status)
        organization = db_session.get_one(Organization, invited.organization_id)
        roles = ", ".join(role_label(role) for role in invited.roles) or _("none yet")
        message = _(
            "You are invited to join %(organization)s (%(roles)s). Sign in with your identity "
            "provider as %(email)s to accept.",
            organization=organization.name,
            roles=roles,
            email=invited.email,
        )
    return _page("Invitation", message, retry=True)
