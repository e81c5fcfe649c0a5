"""OAuth 2.0 client-credentials authorization server and the API's resource protector.

Access tokens are RS256 JWTs per RFC 9068: `iss` names this server, `aud` names the API
(not the client, authlib's default), `sub` and `client_id` name the client, `scope` lists its
roles, and `org` / `org_kind` name its organization. The resource side accepts RS256 only and
requires `iss`, `aud`, `exp`, `iat`, `sub`, `client_id` and `jti`.
"""

from __future__ import annotations

import uuid
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6750.errors import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator, JWTBearerTokenValidator
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from flask import Flask, current_app
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select

from broker.auth.identity import Caller
from broker.auth.keys import SigningKeys
from broker.auth.secrets import verify_secret
from broker.db import Database
from broker.errors import Forbidden, Unauthorized
from broker.models import ApiClient, OrganizationKind, Role

ALGORITHM = "RS256"
REALM = "broker"
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class OAuthClient(ClientMixin):
    """authlib's view of an `ApiClient` row (read once per token request)."""

    def __init__(self, row: ApiClient, organization_kind: str) -> None:
        self.row = row
        self.organization_kind = organization_kind

    def get_client_id(self) -> str:
        return self.row.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        roles = list(self.row.roles)
        if not scope:
            return " ".join(roles)
        requested = scope.split()
        # Asking for a role the client does not hold is an error, not a silent narrowing.
        if any(item not in roles for item in requested):
            return None
        return " ".join(item for item in roles if item in requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(client_secret, self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class BrokerTokenGenerator(JWTBearerTokenGenerator):
    def __init__(self, keys: SigningKeys, issuer: str, audience: str, ttl: int) -> None:
        super().__init__(issuer=issuer, alg=ALGORITHM, expires_generator=ttl)
        self.keys = keys
        self.audience = audience

    def get_jwks(self) -> KeySet:
        # A key set (not a bare key) makes joserfc write the key's `kid` into the header.
        return KeySet([self.keys.private_key])

    def get_audiences(self, client: OAuthClient, user: Any, scope: str) -> str:
        return self.audience

    def get_extra_claims(
        self, client: OAuthClient, grant_type: str, user: Any, scope: str
    ) -> dict[str, Any]:
        return {
            "org": str(client.row.organization_id),
            "org_kind": client.organization_kind,
        }


class BrokerTokenValidator(JWTBearerTokenValidator):
    """RFC 9068 validation, pinned to RS256 (so `alg: none` and HS256 key confusion fail)."""

    def __init__(self, keys: SigningKeys, issuer: str, audience: str) -> None:
        super().__init__(issuer=issuer, resource_server=audience, realm=REALM)
        self.keys = keys

    def get_jwks(self) -> RSAKey:
        return self.keys.private_key

    def authenticate_token(self, token_string: str) -> JWTAccessTokenClaims:
        try:
            token = jwt.decode(token_string, key=self.keys.private_key, algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise InvalidTokenError(realm=self.realm) from exc
        options = {
            "iss": {"essential": True, "validate": self.validate_iss},
            "exp": {"essential": True},
            "aud": {"essential": True, "value": self.resource_server},
            "sub": {"essential": True},
            "client_id": {"essential": True},
            "iat": {"essential": True},
            "jti": {"essential": True},
            "org": {"essential": True},
        }
        return JWTAccessTokenClaims(token.claims, token.header, options)


class BrokerResourceProtector(ResourceProtector):
    """Turns authlib's 401/403 into our problem+json errors, keeping `WWW-Authenticate`."""

    def raise_error_response(self, error: OAuth2Error) -> None:
        if isinstance(error, InsufficientScopeError):
            raise Forbidden(
                "This operation needs a role your client does not hold.",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope"'},
            )
        challenge = next(
            (value for name, value in error.get_headers() if name.lower() == "www-authenticate"),
            f'Bearer realm="{REALM}"',
        )
        # RFC 6750 spells the scheme "Bearer"; authlib writes it in lower case.
        challenge = "Bearer" + challenge[len("bearer") :]
        detail = {
            "missing_authorization": "Send an access token: 'Authorization: Bearer <token>'.",
            "unsupported_token_type": "Only Bearer access tokens are accepted.",
        }.get(error.error or "", "The access token is invalid or expired.")
        raise Unauthorized(
            detail, headers={"WWW-Authenticate": challenge}, code=error.error or "invalid_token"
        )


def caller_from_claims(claims: JWTAccessTokenClaims) -> Caller:
    known = {role.value for role in Role}
    roles = frozenset(Role(r) for r in str(claims.get("scope") or "").split() if r in known)
    try:
        organization_id = uuid.UUID(str(claims["org"]))
        kind = OrganizationKind(claims.get("org_kind"))
    except (KeyError, ValueError) as exc:
        raise Unauthorized("The access token lacks a valid organization.") from exc
    return Caller(str(claims["client_id"]), organization_id, kind, roles)


def init_auth(app: Flask, db: Database) -> None:
    """Create the authorization server and resource protector for this app instance."""
    keys = SigningKeys(app.config["SIGNING_KEY"], app.config["SIGNING_KEY_FILE"])

    def query_client(client_id: str) -> OAuthClient | None:
        if not client_id or len(client_id) > 64 or "\x00" in client_id:
            return None
        with db.session(read_only=True) as session:
            row = session.scalar(
                select(ApiClient).where(
                    ApiClient.client_id == client_id, ApiClient.revoked_at.is_(None)
                )
            )
            if row is None:
                return None
            return OAuthClient(row, row.organization.kind.value)

    def save_token(token: dict[str, Any], request: Any) -> None:
        """Access tokens are self-contained JWTs; nothing is stored."""

    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(ClientCredentialsGrant)
    server.register_token_generator(
        "default",
        BrokerTokenGenerator(
            keys,
            issuer=app.config["OAUTH_ISSUER"],
            audience=app.config["OAUTH_AUDIENCE"],
            ttl=app.config["ACCESS_TOKEN_TTL"],
        ),
    )
    protector = BrokerResourceProtector()
    protector.register_token_validator(
        BrokerTokenValidator(keys, app.config["OAUTH_ISSUER"], app.config["OAUTH_AUDIENCE"])
    )
    app.extensions["broker.signing_keys"] = keys
    app.extensions["broker.oauth_server"] = server
    app.extensions["broker.protector"] = protector


def authorization_server() -> AuthorizationServer:
    server: AuthorizationServer = current_app.extensions["broker.oauth_server"]
    return server


def signing_keys() -> SigningKeys:
    keys: SigningKeys = current_app.extensions["broker.signing_keys"]
    return keys


def protector() -> BrokerResourceProtector:
    guard: BrokerResourceProtector = current_app.extensions["broker.protector"]
    return guard
