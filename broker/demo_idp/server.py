"""The demo provider's OpenID Connect server, built from authlib's classes: the authorization
code grant with `OpenIDCode` (ID tokens, nonce) and PKCE S256 required, a signed userinfo
endpoint and RP-initiated logout. Only storage, clients and people are ours.

Clients are confidential (a secret, `client_secret_basic` or `client_secret_post`) and must
name a registered redirect URI exactly. Every request must ask for the `openid` scope, send a
`nonce` and an S256 `code_challenge`; a missing or wrong `code_verifier` is `invalid_grant`
(the code is spent by then: a stolen code cannot be tried twice).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc.jwk import KeySet, RSAKey

from broker.demo_idp.people import DemoPerson, People
from broker.demo_idp.store import CodeAndTokenStore, IssuedAccessToken, IssuedCode

ALGORITHM = "RS256"
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
CODE_TTL_S = 60
ACCESS_TOKEN_TTL_S = 300
ID_TOKEN_TTL_S = 300
# Which claims each scope releases. `given_name` and `usual_name` are also scopes of their
# own, as at ProConnect, so a client set up for ProConnect works here unchanged.
CLAIMS_BY_SCOPE: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "email": ("email",),
    "profile": ("given_name", "usual_name"),
    "given_name": ("given_name",),
    "usual_name": ("usual_name",),
    "siret": ("siret",),
}
SCOPES = tuple(CLAIMS_BY_SCOPE)


def person_claims(person: DemoPerson, scope: str) -> dict[str, str]:
    """The claims about `person` that `scope` releases (a person without a SIRET has none)."""
    every = {
        "sub": person.sub,
        "email": person.email,
        "given_name": person.given_name,
        "usual_name": person.usual_name,
        "siret": person.siret,
    }
    released = {claim for item in scope.split() for claim in CLAIMS_BY_SCOPE.get(item, ())}
    return {name: value for name, value in every.items() if name in released and value}


def _secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class DemoClient(ClientMixin):
    """A relying party registered in the settings. Its secret is kept as a digest and
    compared in constant time."""

    def __init__(
        self,
        client_id: str,
        secret: str,
        redirect_uris: Sequence[str],
        post_logout_redirect_uris: Sequence[str] = (),
    ) -> None:
        self.client_id = client_id
        self._secret_digest = _secret_digest(secret)
        self.redirect_uris = tuple(redirect_uris)
        # Where logout may send the browser: any URI registered for the client.
        self.client_metadata = {
            "userinfo_signed_response_alg": ALGORITHM,
            "post_logout_redirect_uris": [*self.redirect_uris, *post_logout_redirect_uris],
        }

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # OpenID Connect: the request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The scopes understood here, in our order; unknown ones are ignored (OpenID Connect
        Core §3.1.2.1); without `openid` the request is refused (`invalid_scope`)."""
        requested = (scope or "").split()
        if "openid" not in requested:
            return None
        return " ".join(item for item in SCOPES if item in requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(_secret_digest(client_secret), self._secret_digest)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass(frozen=True)
class Provider:
    """What the server's parts share: who it is, its key, its store, clients and people."""

    issuer: str
    key: RSAKey
    store: CodeAndTokenStore
    clients: Mapping[str, DemoClient]
    people: People
    clock: Callable[[], float]  # seconds since the epoch

    def key_set(self) -> KeySet:
        # A key set, not a bare key: joserfc then writes the key's `kid` into the header.
        return KeySet([self.key])

    def public_jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": ALGORITHM}]}


class CodeGrant(grants.AuthorizationCodeGrant):
    """authlib's code grant over the shared SQLite store."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    server: DemoAuthorizationServer

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: DemoClient) -> str:
        # authlib's own check echoes the URI in its error description, and raises ValueError
        # (a 500) when the URI holds a character RFC 6749 forbids there, such as a quote.
        redirect_uri = request.payload.redirect_uri
        if not redirect_uri:
            raise InvalidRequestError("Missing redirect_uri in request.")
        if not client.check_redirect_uri(redirect_uri):
            raise InvalidRequestError("This redirect_uri is not registered for the client.")
        return str(redirect_uri)

    def save_authorization_code(self, code: str, request: Any) -> None:
        provider = self.server.provider
        data = request.payload.data
        now = provider.clock()
        provider.store.save_code(
            code,
            IssuedCode(
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                sub=request.user.sub,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                auth_time=int(now),  # the password was checked just now
                expires_at=now + CODE_TTL_S,
            ),
        )

    def query_authorization_code(self, code: str, client: DemoClient) -> IssuedCode | None:
        # Redeemed (deleted) here, before any other check: whatever fails next, the code is
        # spent, so a second use is `invalid_grant` in every worker.
        issued = self.server.provider.store.redeem_code(code)
        if issued is None or issued.client_id != client.client_id:
            return None
        return issued

    def delete_authorization_code(self, authorization_code: IssuedCode) -> None:
        """Already deleted when redeemed."""

    def authenticate_user(self, authorization_code: IssuedCode) -> DemoPerson | None:
        return self.server.provider.people.by_sub(authorization_code.sub)


class RequiredS256Challenge(CodeChallenge):
    """PKCE required of every client (authlib's `required=True` only binds public clients),
    with S256 only; a missing or wrong verifier is `invalid_grant`."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: CodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "PKCE is required: send code_challenge with code_challenge_method=S256."
            )
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: CodeGrant, result: Any) -> None:
        try:
            super().validate_code_verifier(grant, result)
        except InvalidRequestError as error:
            raise InvalidGrantError(description=error.description) from error


class DemoOpenIDCode(OpenIDCode):
    """ID tokens: RS256, `iss`, `aud` (the client id), `iat` and `exp` from the provider's
    clock, the request's `nonce` (required), and the person's claims."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(require_nonce=True)
        self.provider = provider

    def resolve_client_private_key(self, client: DemoClient) -> KeySet:
        return self.provider.key_set()

    def get_client_algorithm(self, client: DemoClient) -> str:
        return ALGORITHM

    def get_client_claims(self, client: DemoClient) -> dict[str, Any]:
        now = int(self.provider.clock())
        return {
            "iss": self.provider.issuer,
            "aud": client.client_id,
            "iat": now,
            "exp": now + ID_TOKEN_TTL_S,
        }

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.provider.store.nonce_in_use(request.payload.client_id, nonce)

    def generate_user_info(self, user: DemoPerson, scope: str) -> dict[str, str]:
        return person_claims(user, scope)


class UserinfoToken(TokenMixin):
    """An access token found in the store, with its client and person."""

    def __init__(
        self, issued: IssuedAccessToken, client: DemoClient, person: DemoPerson, now: float
    ) -> None:
        self.issued, self.client, self.person, self.now = issued, client, person, now

    def check_client(self, client: DemoClient) -> bool:
        return client.client_id == self.issued.client_id

    @property
    def scope(self) -> str:  # authlib's userinfo endpoint reads the attribute
        return self.issued.scope

    def get_scope(self) -> str:
        return self.issued.scope

    def get_expires_in(self) -> int:
        return max(0, int(self.issued.expires_at - self.now))

    def is_expired(self) -> bool:
        return self.issued.expires_at <= self.now

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> DemoPerson:
        return self.person

    def get_client(self) -> DemoClient:
        return self.client


class AccessTokenValidator(BearerTokenValidator):
    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def authenticate_token(self, token_string: str) -> UserinfoToken | None:
        provider = self.provider
        issued = provider.store.find_access_token(token_string)
        if issued is None:
            return None
        client = provider.clients.get(issued.client_id)
        person = provider.people.by_sub(issued.sub)
        if client is None or person is None:  # removed from the settings since
            return None
        return UserinfoToken(issued, client, person, provider.clock())


class SignedUserInfo(UserInfoEndpoint):
    """Userinfo as a JWT signed like the ID token (`application/jwt`), as ProConnect answers."""

    def __init__(self, provider: Provider) -> None:
        protector = ResourceProtector()
        protector.register_token_validator(AccessTokenValidator(provider))
        super().__init__(resource_protector=protector)
        self.provider = provider

    def get_issuer(self) -> str:
        return self.provider.issuer

    def get_supported_algorithms(self) -> list[str]:
        return [ALGORITHM]

    def resolve_private_key(self) -> KeySet:
        return self.provider.key_set()

    def generate_user_info(self, user: DemoPerson, scope: str) -> UserInfo:
        return UserInfo(person_claims(user, scope))


class Logout(EndSessionEndpoint):
    """RP-initiated logout. The provider keeps no session, so there is nothing to end; what
    matters is where the browser goes next: only to a URI registered for the client named
    (by `client_id` or by the `aud` of a valid `id_token_hint`)."""

    def __init__(self, provider: Provider) -> None:
        super().__init__()
        self.provider = provider

    def get_server_jwks(self) -> KeySet:
        return self.provider.key_set()

    def get_algorithms(self) -> list[str]:
        return [ALGORITHM]

    def is_post_logout_redirect_uri_legitimate(self, *args: Any, **kwargs: Any) -> bool:
        # Only called for a URI registered for the client: it cannot send the browser
        # anywhere the client did not choose.
        return True

    def end_session(self, end_session_request: Any) -> None:
        """No session is kept at the demo provider."""


class DemoAuthorizationServer(AuthorizationServer):
    def __init__(self, provider: Provider) -> None:
        super().__init__(query_client=provider.clients.get, save_token=self._save_token)
        self.provider = provider
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: ACCESS_TOKEN_TTL_S,
            ),
        )
        self.register_grant(CodeGrant, [RequiredS256Challenge(), DemoOpenIDCode(provider)])
        self.register_endpoint(SignedUserInfo(provider))
        self.register_endpoint(Logout(provider))

    def get_authorization_grant(self, request: Any) -> Any:
        try:
            return super().get_authorization_grant(request)
        except ValueError as error:
            # authlib echoes the response_type in its description and raises ValueError when
            # it holds a character RFC 6749 forbids there: still the client's error.
            raise UnsupportedResponseTypeError(
                "code", description="Only response_type=code is supported."
            ) from error

    def _save_token(self, token: dict[str, Any], request: Any) -> None:
        self.provider.store.save_access_token(
            token["access_token"],
            IssuedAccessToken(
                client_id=request.client.client_id,
                sub=request.user.sub,
                scope=token["scope"],
                expires_at=self.provider.clock() + token["expires_in"],
            ),
        )
