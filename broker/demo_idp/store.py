"""Authorization codes and access tokens of the demo provider, in a small SQLite file of its
own.

Several gunicorn workers serve the provider: a code issued by one is redeemed at another, and
an access token issued by one is presented to the userinfo endpoint of another, so neither
can live in process memory. Each operation opens a connection, runs one short `BEGIN
IMMEDIATE` transaction and closes it (safe across forks and threads). Only SHA-256 digests of
codes and tokens are stored: a copy of the file gives nothing to present.

A code is single-use: redeeming it deletes it and returns it in one statement (`DELETE …
RETURNING`), so of two concurrent redemptions exactly one gets it. Expired rows are purged
whenever a new one is written.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

STORE_FILE = "demo-idp.sqlite3"
BUSY_TIMEOUT_S = 5.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS codes (
        code_digest TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        scope TEXT NOT NULL,
        sub TEXT NOT NULL,
        nonce TEXT,
        code_challenge TEXT,
        code_challenge_method TEXT,
        auth_time INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS codes_by_nonce ON codes (client_id, nonce)",
    """CREATE TABLE IF NOT EXISTS access_tokens (
        token_digest TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        sub TEXT NOT NULL,
        scope TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
)


@dataclass(frozen=True)
class IssuedCode:
    """What an authorization code stands for. Its getters are those authlib's code grant,
    `OpenIDCode` and `CodeChallenge` call."""

    client_id: str
    redirect_uri: str
    scope: str
    sub: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass(frozen=True)
class IssuedAccessToken:
    """What an access token (good only at the userinfo endpoint) stands for."""

    client_id: str
    sub: str
    scope: str
    expires_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _columns(kind: type[IssuedCode] | type[IssuedAccessToken]) -> list[str]:
    return [item.name for item in fields(kind)]


class CodeAndTokenStore:
    """The SQLite file in the provider's state directory, shared by every worker."""

    def __init__(self, state_dir: Path, now: Callable[[], float]) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / STORE_FILE
        self.now = now
        with self._transaction() as connection:
            for statement in _SCHEMA:
                connection.execute(statement)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # kept in the file

    def save_code(self, code: str, issued: IssuedCode) -> None:
        columns = _columns(IssuedCode)
        values = [getattr(issued, name) for name in columns]
        with self._transaction() as connection:
            self._purge(connection)
            connection.execute(
                f"INSERT INTO codes (code_digest, {', '.join(columns)}) "
                f"VALUES (?{', ?' * len(columns)})",
                [_digest(code), *values],
            )

    def redeem_code(self, code: str) -> IssuedCode | None:
        """The code's grant, once: the row is deleted as it is read. None when unknown, already
        redeemed or expired (an expired code is deleted all the same)."""
        columns = _columns(IssuedCode)
        with self._transaction() as connection:
            row = connection.execute(
                f"DELETE FROM codes WHERE code_digest = ? RETURNING {', '.join(columns)}",
                [_digest(code)],
            ).fetchone()
        if row is None:
            return None
        issued = IssuedCode(*row)
        return issued if issued.expires_at > self.now() else None

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        """Whether a live code of `client_id` already carries `nonce` (a replayed request)."""
        with self._connect() as connection:
            row = connection.execute(
                "SELECT 1 FROM codes WHERE client_id = ? AND nonce = ? AND expires_at > ?",
                [client_id, nonce, self.now()],
            ).fetchone()
        return row is not None

    def save_access_token(self, token: str, issued: IssuedAccessToken) -> None:
        columns = _columns(IssuedAccessToken)
        values = [getattr(issued, name) for name in columns]
        with self._transaction() as connection:
            self._purge(connection)
            connection.execute(
                f"INSERT INTO access_tokens (token_digest, {', '.join(columns)}) "
                f"VALUES (?{', ?' * len(columns)})",
                [_digest(token), *values],
            )

    def find_access_token(self, token: str) -> IssuedAccessToken | None:
        """The token's grant while it lives."""
        columns = _columns(IssuedAccessToken)
        with self._connect() as connection:
            row = connection.execute(
                f"SELECT {', '.join(columns)} FROM access_tokens "
                "WHERE token_digest = ? AND expires_at > ?",
                [_digest(token), self.now()],
            ).fetchone()
        return None if row is None else IssuedAccessToken(*row)

    def _purge(self, connection: sqlite3.Connection) -> None:
        now = self.now()
        connection.execute("DELETE FROM codes WHERE expires_at <= ?", [now])
        connection.execute("DELETE FROM access_tokens WHERE expires_at <= ?", [now])

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Autocommit mode: transactions are begun explicitly, below.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taking the write lock at once (no read-then-write
        upgrade that could fail with SQLITE_BUSY halfway)."""
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
