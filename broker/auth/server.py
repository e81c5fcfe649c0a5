"""OAuth 2.0 client-credentials authorization server and the API's resource protector.

Access tokens are RS256 JWTs per RFC 9068: `iss` names this server, `aud` names the API
(not the client, authlib's default), `sub` and `client_id` name the client, `scope` lists its
roles, `org` / `org_kind` name its organization, and `credential_version` names the version of
the client's secret it was issued under. The resource side accepts RS256 only, requires
`iss`, `aud`, `exp`, `iat`, `sub`, `client_id` and `jti`, and refuses the token of a client
since revoked or whose secret was rotated after the token was issued.

The token endpoint answers every failed client authentication (unknown client id, wrong
secret, revoked client, no credentials) with the same RFC 6749 `invalid_client` response,
after the same work (one query, one hash check), so neither the answer nor its time tells
which client ids exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749 import errors as rfc6749_errors
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError
from authlib.oauth2.rfc6750.errors import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator, JWTBearerTokenValidator
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from flask import Flask, current_app
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller, missing_role_message
from broker.auth.keys import SigningKeys
from broker.auth.secrets import UNMATCHABLE_HASH, verify_secret
from broker.db import Database
from broker.errors import Forbidden, Unauthorized
from broker.models import ApiClient, Organization, OrganizationKind, Role

ALGORITHM = "RS256"
REALM = "broker"
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
# The access-token claim naming the version of the client's credentials (its secret) the token
# was issued under.
CREDENTIAL_VERSION_CLAIM = "credential_version"
# What a token without the claim (issued before it existed) is taken to carry: the version
# every client had then, so such tokens keep working until a rotation or their expiry.
FIRST_CREDENTIAL_VERSION = 1
CLIENT_AUTHENTICATION_FAILED = "Client authentication failed."


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


class RefusedClient(ClientMixin):
    """Stands for an unknown or revoked client id at the token endpoint.

    authlib answers a client id it cannot find at once, with its own error text, while a
    wrong secret is answered later with another: the answer and its time told unknown ids
    from known ones. This client goes down the wrong-secret path instead: it hashes the
    secret offered (against the revoked client's own hash, or one no secret matches) and
    refuses it.
    """

    def __init__(self, secret_hash: str = UNMATCHABLE_HASH) -> None:
        self.secret_hash = secret_hash

    def get_client_id(self) -> str:
        return ""

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> None:
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        verify_secret(client_secret, self.secret_hash)
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return False


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPE = "client_credentials"


def token_request_refusal(
    content_type: str, has_body: bool, grant_type: str | None
) -> OAuth2Error | None:
    """What is wrong with the shape of a token request, before any client is looked up: a body
    that is not form-encoded (JSON, say: RFC 6749 §4.4.2 wants a form, and authlib, reading
    only forms, would answer `unsupported_grant_type`), no `grant_type`, or another grant than
    client credentials. Descriptions stay within RFC 6749's character set (no quotes)."""
    if has_body and content_type != FORM_CONTENT_TYPE:
        # The client's Content-Type is not echoed: it may hold characters RFC 6749 forbids.
        sent = " rather than JSON" if content_type.endswith(("/json", "+json")) else ""
        return InvalidRequestError(
            description=f"Send the token request form-encoded (Content-Type: "
            f"{FORM_CONTENT_TYPE}){sent}: grant_type={GRANT_TYPE}, with the client "
            "credentials in HTTP Basic authentication or as client_id and client_secret "
            "form fields."
        )
    if not grant_type:
        return InvalidRequestError(
            description=f"grant_type is missing: send grant_type={GRANT_TYPE}, form-encoded "
            f"({FORM_CONTENT_TYPE})."
        )
    if grant_type != GRANT_TYPE:
        return UnsupportedGrantTypeError(grant_type)
    return None


class UnsupportedGrantTypeError(rfc6749_errors.UnsupportedGrantTypeError):
    """authlib's, with a description saying which grant is supported."""

    def __init__(self, grant_type: str) -> None:
        super().__init__(grant_type)
        self.description = f"Only grant_type={GRANT_TYPE} is supported."


class BrokerAuthorizationServer(AuthorizationServer):
    """authlib's server, answering every failed client authentication in one way, and a
    token request of the wrong shape with what to send instead."""

    def create_token_response(self, request: Any = None) -> Any:
        oauth_request = self.create_oauth2_request(request)
        refusal = token_request_refusal(
            flask_request.mimetype,
            bool(flask_request.get_data(cache=True)),
            oauth_request.payload.grant_type,
        )
        if refusal is not None:
            return self.handle_error_response(oauth_request, refusal)
        return super().create_token_response(request)

    def authenticate_client(self, request: Any, methods: list[str], endpoint: str = "token") -> Any:
        try:
            return super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            # Same status, body and `WWW-Authenticate` whatever failed (RFC 6749 §5.2 allows
            # 401 for every method; a client that sent Basic credentials must get it).
            raise InvalidClientError(
                status_code=401, description=CLIENT_AUTHENTICATION_FAILED
            ) from error


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
            # The version whose hash the secret was just checked against (read in the same
            # query), so a token obtained with a secret rotated meanwhile is refused too.
            CREDENTIAL_VERSION_CLAIM: client.row.credential_version,
        }


class ClientCredentialsWithdrawn(InvalidTokenError):
    """A well-formed, unexpired token of a client since revoked, or issued under a secret
    since rotated."""

    description = "The client has been revoked, or its secret rotated since this token was issued."


class BrokerTokenValidator(JWTBearerTokenValidator):
    """RFC 9068 validation, pinned to RS256 (so `alg: none` and HS256 key confusion fail),
    and checked against the client's standing in the database on every request.

    Why a database read per request, and not a cache: revocation and rotation must take
    effect at once in every API process on every host, and a process-local cache cannot
    hear about a change made in another process. The read is one lookup by the unique index
    on `api_clients.client_id`, fetching two columns, in a short read-only transaction, and
    only for tokens whose signature and claims are already valid (so garbage tokens cost no
    query).

    Why a version number in the token, and not "refuse tokens issued before the rotation"
    (`iat` against a timestamp column): `iat` has whole seconds, so a token issued in the
    second of a rotation would be wrongly kept or wrongly refused; the clocks of several
    hosts differ; and a token request that checked the old secret just before a rotation
    committed is signed just after it, with an `iat` later than the rotation. The version is
    read in the same query as the hash the secret was checked against, so such a token
    carries the old version and is refused.
    """

    def __init__(self, keys: SigningKeys, issuer: str, audience: str, db: Database) -> None:
        super().__init__(issuer=issuer, resource_server=audience, realm=REALM)
        self.keys = keys
        self.db = db

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

    def validate_token(
        self,
        token: JWTAccessTokenClaims,
        scopes: Any,
        request: Any,
        session: Session | None = None,
        **kwargs: Any,
    ) -> None:
        """Claims first (expired, wrong audience: no query), then the client's standing (a
        revoked client is told 401 before any 403 for a missing role), then the scopes.

        `session` (passed through `acquire_token(session=…)`): a read-only session to read
        the standing in, the request's own (see `check_client_standing`)."""
        try:
            token.validate()
        except JoseError as exc:
            raise InvalidTokenError(realm=self.realm) from exc
        self.check_client_standing(token, session)
        super().validate_token(token, scopes, request, **kwargs)

    def check_client_standing(
        self, token: JWTAccessTokenClaims, session: Session | None = None
    ) -> None:
        """Refuse the token if its client is revoked (or gone) or its secret was rotated.

        Read in `session` when given: a read-only request reads its standing in its own
        transaction, rather than in one more before it (a transaction's begin, a pool
        checkout and a session were a tenth of a small request's time), and then sees the
        client as the rest of the request does. Without one, in a short read-only session:
        a change must not begin its write transaction (on SQLite, take the write lock)
        before its caller is known."""
        if session is None:
            with self.db.session(read_only=True) as own:
                self.check_client_standing(token, own)
            return
        standing = session.execute(
            select(ApiClient.revoked_at, ApiClient.credential_version).where(
                ApiClient.client_id == str(token["client_id"])
            )
        ).first()
        if (
            standing is None
            or standing.revoked_at is not None
            or token.get(CREDENTIAL_VERSION_CLAIM, FIRST_CREDENTIAL_VERSION)
            != standing.credential_version
        ):
            raise ClientCredentialsWithdrawn(realm=self.realm)


def missing_role(needed: Sequence[Role], held: Iterable[Role]) -> Forbidden:
    """The 403 of a valid token without any of the roles `needed`: it names them, and the
    roles the token has, in `detail` and as `required_roles` / `your_roles`; the challenge is
    RFC 6750's `insufficient_scope` with the `scope` that would do."""
    scope = " ".join(role.value for role in needed)
    return Forbidden(
        missing_role_message(needed, held),
        headers={
            "WWW-Authenticate": (
                f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
            )
        },
        required_roles=[role.value for role in needed],
        your_roles=sorted(role.value for role in held),
    )


class BrokerResourceProtector(ResourceProtector):
    """Turns authlib's 401/403 into our problem+json errors, keeping `WWW-Authenticate`.

    Roles are checked by `require_roles` (which can name them), not by authlib's scopes; an
    `insufficient_scope` from authlib is still answered, should a caller pass scopes."""

    def raise_error_response(self, error: OAuth2Error) -> None:
        if isinstance(error, InsufficientScopeError):
            raise Forbidden(
                "This operation needs a role your access token does not have.",
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
        if isinstance(error, ClientCredentialsWithdrawn):
            detail = str(error.description)
        raise Unauthorized(
            detail, headers={"WWW-Authenticate": challenge}, code=error.error or "invalid_token"
        )


def require_roles(caller: Caller, needed: Sequence[Role]) -> None:
    """403 unless the caller has one of `needed` (any role will do when none is named)."""
    if needed and not access.has_any_role(caller, *needed):
        raise missing_role(needed, caller.roles)


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

    def query_client(client_id: str) -> OAuthClient | RefusedClient:
        """The client, or a `RefusedClient` that costs the same hash check and fails it."""
        if not client_id or len(client_id) > 64 or "\x00" in client_id:
            return RefusedClient()  # no client has such an id: nothing to look up
        with db.session(read_only=True) as session:
            # One query whether the client exists or not (its organization's kind joined in).
            found = session.execute(
                select(ApiClient, Organization.kind)
                .join(ApiClient.organization)
                .where(ApiClient.client_id == client_id)
            ).first()
        if found is None:
            return RefusedClient()
        row, kind = found
        if row.revoked_at is not None:
            return RefusedClient(row.secret_hash)
        return OAuthClient(row, kind.value)

    def save_token(token: dict[str, Any], request: Any) -> None:
        """Access tokens are self-contained JWTs; nothing is stored."""

    server = BrokerAuthorizationServer(app, query_client=query_client, save_token=save_token)
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
        BrokerTokenValidator(keys, app.config["OAUTH_ISSUER"], app.config["OAUTH_AUDIENCE"], db)
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
