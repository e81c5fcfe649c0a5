"""The RSA key that signs access tokens, and its public JWKS.

The key comes from configuration (`BROKER_SIGNING_KEY` as PEM, or `BROKER_SIGNING_KEY_FILE`);
when the file does not exist yet it is generated there on first use with mode 0600. Several
API hosts must share one key: configure it explicitly in production.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey

from broker.instance_files import read_or_create


class SigningKeys:
    """Lazily loads (or creates) the signing key; safe to share between threads."""

    def __init__(self, pem: str | None, path: str | None) -> None:
        self._pem = pem
        self._path = Path(path) if path else None
        self._key: RSAKey | None = None
        self._lock = threading.Lock()

    @property
    def private_key(self) -> RSAKey:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load()
        return self._key

    @property
    def kid(self) -> str:
        return str(self.private_key.kid)

    def public_jwks(self) -> dict[str, Any]:
        public = self.private_key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}

    def _load(self) -> RSAKey:
        pem = self._pem.encode() if self._pem else self._read_or_create_file()
        key = RSAKey.import_key(pem)
        key.ensure_kid()
        return key

    def _read_or_create_file(self) -> bytes:
        if self._path is None:
            raise RuntimeError("no signing key configured")
        return read_or_create(self._path, _new_private_key_pem)


def _new_private_key_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def session_secret(configured: str | None, path: str) -> str:
    """The key that signs the browser's cookie of a sign-in under way (`BROKER_SECRET_KEY`, or
    generated once into `path`, mode 0600, and shared by every worker)."""
    if configured:
        return configured
    return read_or_create(Path(path), lambda: secrets.token_urlsafe(48).encode()).decode().strip()
