"""Signing people in through an OpenID Connect provider: the authorization code flow with PKCE,
`state` and `nonce`, as a confidential client.

authlib's OAuth client builds the authorization request (PKCE S256) and redeems the code;
joserfc checks the ID token (signature against the provider's JWKS, `iss`, `aud`, `exp`,
`nonce`) and a userinfo answer signed as a JWT (ProConnect signs it). Every call out (the
discovery document, the JWKS, the token and userinfo endpoints) goes through the broker's
SSRF-safe HTTP policy; discovery documents and key sets are cached for a few minutes, and a key
set is fetched again once when a token names a key it does not hold (key rotation).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2 import OAuth2Error
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.models.base import utcnow
from providers.http import HttpPolicy, UnsafeEndpoint

CACHE_SECONDS = 300.0
ALGORITHMS = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]


class SignInFailed(Exception):
    """The sign-in cannot go on; the message says why, in words a person can act on."""


@dataclass(frozen=True)
class ProviderConfig:
    """What signing in at one identity provider needs."""

    issuer: str
    client_id: str
    client_secret: str
    scopes: str


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None


@dataclass(frozen=True)
class PendingSignIn:
    """What the browser's round trip must bring back: kept in the signed session cookie."""

    state: str
    nonce: str
    code_verifier: str


class OidcClient:
    """One per application; thread-safe caches."""

    def __init__(self, http: HttpPolicy) -> None:
        self.http = http
        self._lock = threading.Lock()
        self._discovery: dict[str, tuple[float, Discovery]] = {}
        self._keys: dict[str, tuple[float, KeySet]] = {}

    # --- the two legs ------------------------------------------------------------------------

    def start(self, provider: ProviderConfig, redirect_uri: str) -> tuple[str, PendingSignIn]:
        """The URL to send the browser to, and what to keep until it comes back."""
        discovery = self.discover(provider.issuer)
        client = self._client(provider, redirect_uri)
        verifier, nonce = generate_token(64), generate_token(32)
        url, state = client.create_authorization_url(
            discovery.authorization_endpoint, code_verifier=verifier, nonce=nonce
        )
        return url, PendingSignIn(state=state, nonce=nonce, code_verifier=verifier)

    def finish(
        self,
        provider: ProviderConfig,
        redirect_uri: str,
        pending: PendingSignIn,
        *,
        code: str,
        state: str,
    ) -> tuple[dict[str, Any], str]:
        """Redeem the code; the person's verified claims (ID token, plus a signed userinfo
        when the provider has one) and the raw ID token (for sign-out)."""
        if not state or state != pending.state:
            raise SignInFailed("This sign-in link is not the one we started; sign in again.")
        discovery = self.discover(provider.issuer)
        client = self._client(provider, redirect_uri)
        try:
            token = client.fetch_token(
                discovery.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=pending.code_verifier,
                timeout=self.http.timeout,
            )
        except (OAuth2Error, requests.RequestException, UnsafeEndpoint, ValueError) as error:
            raise SignInFailed(f"The identity provider refused the sign-in: {error}") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed("The identity provider sent no ID token.")
        claims = self.verify(discovery, id_token, audience=provider.client_id)
        if claims.get("nonce") != pending.nonce:
            raise SignInFailed("The ID token is not the answer to this sign-in (nonce).")
        access_token = token.get("access_token")
        if discovery.userinfo_endpoint and isinstance(access_token, str):
            info = self._userinfo(discovery, access_token, audience=provider.client_id)
            if info.get("sub") != claims["sub"]:
                raise SignInFailed("The identity provider's userinfo names another person.")
            claims = {**info, **claims}
        return claims, id_token

    # --- checks ------------------------------------------------------------------------------

    def verify(
        self, discovery: Discovery, token: str, *, audience: str, nonce: bool = True
    ) -> dict[str, Any]:
        """A JWT of the provider checked: signature (keys fetched again once for an unknown
        key), `iss`, `aud`, `exp` (and that a `nonce` is present, for ID tokens)."""
        try:
            decoded = self._decode(discovery, token, refresh=False)
        except JoseError:
            try:  # keys rotated since they were cached?
                decoded = self._decode(discovery, token, refresh=True)
            except JoseError as error:
                raise SignInFailed(
                    f"The identity provider's token is not signed by its keys: {error}"
                ) from None
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": discovery.issuer},
            "aud": {"essential": True, "value": audience},
            "sub": {"essential": True},
        }
        if nonce:
            options["exp"] = {"essential": True}
            options["nonce"] = {"essential": True}
        try:
            jwt.JWTClaimsRegistry(now=int(utcnow().timestamp()), **options).validate(decoded.claims)
        except JoseError as error:
            raise SignInFailed(f"The identity provider's token does not hold: {error}") from None
        return dict(decoded.claims)

    def _decode(self, discovery: Discovery, token: str, *, refresh: bool) -> jwt.Token:
        keys = self.keys(discovery, refresh=refresh)
        try:
            return jwt.decode(token, keys, algorithms=ALGORITHMS)
        except JoseError:
            raise
        except ValueError as error:
            raise SignInFailed(f"The identity provider's token cannot be read: {error}") from None

    # --- documents, cached -------------------------------------------------------------------

    def discover(self, issuer: str) -> Discovery:
        with self._lock:
            cached = self._discovery.get(issuer)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        document = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != issuer:
            raise SignInFailed("The identity provider's discovery document names another issuer.")
        try:
            discovery = Discovery(
                issuer=issuer,
                authorization_endpoint=str(document["authorization_endpoint"]),
                token_endpoint=str(document["token_endpoint"]),
                jwks_uri=str(document["jwks_uri"]),
                userinfo_endpoint=document.get("userinfo_endpoint"),
                end_session_endpoint=document.get("end_session_endpoint"),
            )
        except KeyError as missing:
            raise SignInFailed(f"The identity provider's discovery lacks {missing}.") from None
        with self._lock:
            self._discovery[issuer] = (time.monotonic() + CACHE_SECONDS, discovery)
        return discovery

    def keys(self, discovery: Discovery, *, refresh: bool = False) -> KeySet:
        with self._lock:
            cached = self._keys.get(discovery.jwks_uri)
        if cached and cached[0] > time.monotonic() and not refresh:
            return cached[1]
        try:
            keys = KeySet.import_key_set(self._get_json(discovery.jwks_uri))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError) as error:
            raise SignInFailed(f"The identity provider's keys cannot be read: {error}") from None
        with self._lock:
            self._keys[discovery.jwks_uri] = (time.monotonic() + CACHE_SECONDS, keys)
        return keys

    def _userinfo(
        self, discovery: Discovery, access_token: str, *, audience: str
    ) -> dict[str, Any]:
        assert discovery.userinfo_endpoint is not None
        response = self._get(
            discovery.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
        )
        if response.headers.get("Content-Type", "").split(";")[0].strip() == "application/jwt":
            return self.verify(discovery, response.text.strip(), audience=audience, nonce=False)
        try:
            info = response.json()
        except ValueError:
            raise SignInFailed("The identity provider's userinfo is not JSON.") from None
        if not isinstance(info, dict):
            raise SignInFailed("The identity provider's userinfo is not an object.")
        return info

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            document = self._get(url).json()
        except ValueError:
            raise SignInFailed(f"The identity provider answered {url} with no JSON.") from None
        if not isinstance(document, dict):
            raise SignInFailed(f"The identity provider answered {url} with no JSON object.")
        return document

    def _get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        try:
            self.http.check_url(url)
            with self.http.session() as session:
                response = session.get(url, headers=headers, timeout=self.http.timeout)
        except (requests.RequestException, UnsafeEndpoint, ValueError) as error:
            raise SignInFailed(f"The identity provider cannot be reached: {error}") from None
        if response.status_code != 200:
            raise SignInFailed(f"The identity provider answered {response.status_code}.")
        return response

    def _client(self, provider: ProviderConfig, redirect_uri: str) -> OAuth2Session:
        client = OAuth2Session(
            provider.client_id,
            provider.client_secret,
            scope=provider.scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
        )
        return self.http.harden(client)
