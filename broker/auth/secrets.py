"""API client secrets: generated with 256 bits of entropy, stored only as a hash.

A secret this long cannot be guessed, so a slow password hash buys nothing and would cost
every token request tens of milliseconds; SHA-256 with a per-secret salt is the right tool
(as for API tokens at large hosting services). Comparison is constant-time.

The token endpoint must not tell an unknown client id from a wrong secret, by its answer or
by its time: an unknown id is checked against `UNMATCHABLE_HASH`, so it costs the same hash
and comparison as a wrong secret of a known client.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_SCHEME = "sha256"


def new_client_id() -> str:
    return "cb_" + secrets.token_urlsafe(16)


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.sha256((salt + secret).encode()).hexdigest()
    return f"{_SCHEME}${salt}${digest}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != _SCHEME:
        return False
    candidate = hashlib.sha256((salt + secret).encode()).hexdigest()
    return hmac.compare_digest(candidate, digest)


# The hash of a secret thrown away at start-up: no secret matches it.
UNMATCHABLE_HASH = hash_secret(new_client_secret())
