"""The RSA key that signs access tokens, and its public JWKS.

The key comes from configuration (`BROKER_SIGNING_KEY` as PEM, or `BROKER_SIGNING_KEY_FILE`);
when the file does not exist yet it is generated there on first use with mode 0600. Several
API hosts must share one key: configure it explicitly in production.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey


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
        if self._path.exists():
            return self._path.read_bytes()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: when two processes start at once, one writes and the other reads its key.
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._path.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        return pem


def session_secret(configured: str | None, path: str) -> str:
    """The key that signs the browser's cookie of a sign-in under way (`BROKER_SECRET_KEY`, or
    generated once into `path`, mode 0600, and shared by every worker)."""
    if configured:
        return configured
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
    for _ in range(50):  # another process may be writing it this instant
        if text := file.read_text().strip():
            return text
        time.sleep(0.01)
    raise RuntimeError(f"{file} is empty")
