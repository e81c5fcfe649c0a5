"""Provider credentials, encrypted at rest and bound to their provider.

Fernet authenticates what it encrypts but carries no associated data, so a ciphertext copied
from one provider's row to another's would decrypt there. The plaintext therefore holds the
provider id next to the secrets, and decryption refuses a ciphertext whose id is not the
row's. `MultiFernet` gives rotation: new secrets are encrypted under the first key, old
ciphertexts decrypt under any listed key until `rotate` re-encrypts them all and the old key
is dropped from the list.

Credentials go in through the API and out only to an adapter: never in a response, the audit
log (which records the field names only) or a log line.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import Caller
from broker.errors import NotFound
from broker.instance_files import read_or_create
from broker.models import Provider, ProviderCredentials
from broker.models.base import utcnow
from broker.services import audit


class CredentialsUnreadable(Exception):
    """Stored credentials that the configured keys cannot (or must not) decrypt."""


class KeyringError(Exception):
    """The keys are missing, malformed, or cannot be changed from here."""


class Keyring:
    """The Fernet keys, newest first: from configuration, or a file of the instance."""

    def __init__(self, keys: list[str], path: Path | None = None) -> None:
        self.path = path
        self._use(keys)

    def _use(self, keys: list[str]) -> None:
        if not keys:
            raise KeyringError("No credential key configured.")
        try:
            fernets = [Fernet(key.encode()) for key in keys]
        except (ValueError, TypeError):
            raise KeyringError("A credential key is not a valid Fernet key.") from None
        self.keys = keys
        self._multi = MultiFernet(fernets)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Keyring:
        configured = config.get("CREDENTIAL_KEYS")
        if configured:
            return cls([key.strip() for key in configured.split(",") if key.strip()])
        path = Path(config["CREDENTIAL_KEYS_FILE"])
        return cls(_read_or_create(path), path)

    def encrypt(self, provider_id: uuid.UUID, credentials: Mapping[str, str]) -> str:
        plaintext = json.dumps({"provider_id": str(provider_id), "credentials": dict(credentials)})
        return self._multi.encrypt(plaintext.encode()).decode()

    def decrypt(self, provider_id: uuid.UUID, ciphertext: str) -> dict[str, str]:
        try:
            document = json.loads(self._decrypt(ciphertext))
        except InvalidToken:
            raise CredentialsUnreadable(
                "The provider's credentials were encrypted under a key that is no longer "
                "configured; set them again."
            ) from None
        if document.get("provider_id") != str(provider_id):
            raise CredentialsUnreadable(
                "These credentials belong to another provider: refusing to use them."
            )
        credentials: dict[str, str] = document["credentials"]
        return credentials

    def _decrypt(self, ciphertext: str) -> bytes:
        try:
            return self._multi.decrypt(ciphertext.encode())
        except InvalidToken:
            if self.path is None:
                raise
        # `broker keys rotate --new-key` may have changed the key file under a running
        # process: read it again rather than fail until a restart.
        self._use(_read_or_create(self.path))
        return self._multi.decrypt(ciphertext.encode())

    def rotate(self, provider_id: uuid.UUID, ciphertext: str) -> str:
        """Re-encrypt under the first key (after checking the binding)."""
        self.decrypt(provider_id, ciphertext)
        return self._multi.rotate(ciphertext.encode()).decode()

    def primary_only(self) -> Keyring:
        """The first key alone, detached from the key file (so it never reloads others)."""
        return Keyring(self.keys[:1])

    # The key file ---------------------------------------------------------------------

    def add_key(self) -> Keyring:
        """A new first key, written to the key file (older keys still decrypt)."""
        self._require_file()
        return self._write([Fernet.generate_key().decode(), *self.keys])

    def drop_old_keys(self) -> Keyring:
        """Keep the first key only. Run `rotate` first: older ciphertexts stop decrypting."""
        self._require_file()
        return self._write(self.keys[:1])

    def _require_file(self) -> None:
        if self.path is None:
            raise KeyringError(
                "Keys come from BROKER_CREDENTIAL_KEYS: change that variable instead "
                "(new key first), then run `broker keys rotate`."
            )

    def _write(self, keys: list[str]) -> Keyring:
        assert self.path is not None
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{key}\n" for key in keys))
        temporary.replace(self.path)
        return Keyring(keys, self.path)


def _read_or_create(path: Path) -> list[str]:
    text = read_or_create(path, lambda: Fernet.generate_key() + b"\n").decode()
    return [line.strip() for line in text.splitlines() if line.strip()]


# Stored credentials ----------------------------------------------------------------------


def set_credentials(
    session: Session,
    actor: Caller | None,
    provider: Provider,
    credentials: Mapping[str, str],
    keyring: Keyring,
) -> ProviderCredentials:
    row = session.get(ProviderCredentials, provider.id)
    before = {"fields": row.fields} if row else None
    if row is None:
        row = ProviderCredentials(provider_id=provider.id)
        session.add(row)
    row.ciphertext = keyring.encrypt(provider.id, credentials)
    row.fields = sorted(credentials)
    row.updated_at = utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "provider.credentials_set",
        "provider",
        provider.id,
        organization_id=provider.organization_id,
        before=before,
        after={"fields": row.fields},
    )
    return row


def clear_credentials(session: Session, actor: Caller | None, provider: Provider) -> None:
    row = stored(session, provider.id)
    session.delete(row)
    audit.record(
        session,
        actor,
        "provider.credentials_cleared",
        "provider",
        provider.id,
        organization_id=provider.organization_id,
        before={"fields": row.fields},
    )


def stored(session: Session, provider_id: uuid.UUID) -> ProviderCredentials:
    """The stored row (its field names and date are what callers may see), or 404."""
    row = session.get(ProviderCredentials, provider_id)
    if row is None:
        raise NotFound("No credentials are set for this provider.")
    return row


def load(session: Session, provider_id: uuid.UUID, keyring: Keyring) -> dict[str, str]:
    """The decrypted credentials (empty when none are set), for an adapter only."""
    row = session.get(ProviderCredentials, provider_id)
    return {} if row is None else keyring.decrypt(provider_id, row.ciphertext)


def rotate_all(session: Session, keyring: Keyring) -> int:
    """Re-encrypt every stored credential under the first key; the count of rows."""
    rows = session.scalars(
        select(ProviderCredentials).order_by(ProviderCredentials.provider_id).with_for_update()
    ).all()
    for row in rows:
        row.ciphertext = keyring.rotate(row.provider_id, row.ciphertext)
    return len(rows)
