"""A minimal OpenID provider for tests, independent of the demo's: its own issuer and keys,
and ID tokens the test can spoil on purpose (a foreign signature, another audience, another
nonce or issuer, an expired one) to see the broker refuse them.

`authorize` sends the browser straight back with a code (the person is `FakeOidc.person`); the
token endpoint checks the PKCE verifier and answers with an ID token made as `FakeOidc.spoil`
says; `userinfo` answers plain JSON.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import make_server

from tests.serving import free_port


@dataclass
class FakeOidc:
    issuer: str
    client_id: str = "broker"
    client_secret: str = "fake-secret"
    person: dict[str, Any] = field(default_factory=dict)
    # None, or one of: "signature", "audience", "nonce", "issuer", "expired"
    spoil: str | None = None
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "f1"}))
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def app(self) -> Flask:
        app = Flask("fake_oidc")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(
                issuer=self.issuer,
                authorization_endpoint=f"{self.issuer}/authorize",
                token_endpoint=f"{self.issuer}/token",
                jwks_uri=f"{self.issuer}/jwks",
                userinfo_endpoint=f"{self.issuer}/userinfo",
            )

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(keys=[self.key.as_dict(private=False)])

        @app.get("/authorize")
        def authorize() -> Any:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "nonce": request.args["nonce"],
                "challenge": request.args["code_challenge"],
            }
            query = urlencode({"code": code, "state": request.args["state"]})
            return redirect(f"{request.args['redirect_uri']}?{query}")

        @app.post("/token")
        def token() -> Any:
            grant = self.codes.pop(request.form["code"], None)
            verifier = request.form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if grant is None or challenge != grant["challenge"]:
                return jsonify(error="invalid_grant"), 400
            return jsonify(
                access_token="at-" + secrets.token_urlsafe(8),
                token_type="Bearer",
                id_token=self._id_token(grant["nonce"]),
            )

        @app.get("/userinfo")
        def userinfo() -> Any:
            return jsonify(self.person)

        return app

    def _id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            **self.person,
        }
        key = self.key
        if self.spoil == "signature":
            key = RSAKey.generate_key(2048, parameters={"kid": "f1"})
        elif self.spoil == "audience":
            claims["aud"] = "someone-else"
        elif self.spoil == "nonce":
            claims["nonce"] = "an-old-nonce"
        elif self.spoil == "issuer":
            claims["iss"] = "https://unknown.example"
        elif self.spoil == "expired":
            claims["iat"], claims["exp"] = now - 600, now - 300
        return jwt.encode({"alg": "RS256", "kid": "f1"}, claims, key)


@contextmanager
def serving(person: dict[str, Any]) -> Iterator[FakeOidc]:
    port = free_port()
    fake = FakeOidc(issuer=f"http://127.0.0.1:{port}", person=person)
    server = make_server("127.0.0.1", port, fake.app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()


