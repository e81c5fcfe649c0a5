"""The demo provider's RS256 signing key: generated once into its state directory, then read
by every worker.

Not `broker.auth.keys`: the demo provider must stand apart from the broker's own auth. Its
creation is race-free when several gunicorn workers start at once
(`broker.instance_files.read_or_create`): no worker reads a half-written key, and the loser of
a race reads the winner's.
"""

from __future__ import annotations

from pathlib import Path

from joserfc.jwk import RSAKey

from broker.instance_files import read_or_create

KEY_FILE = "signing-key.pem"
KEY_SIZE = 2048


def load_or_create_signing_key(state_dir: Path) -> RSAKey:
    """The key in `state_dir`, created there (mode 0600) on first use."""
    key = RSAKey.import_key(read_or_create(state_dir / KEY_FILE, _new_key))
    key.ensure_kid()  # the RFC 7638 thumbprint: the same `kid` in every worker
    return key


def _new_key() -> bytes:
    return RSAKey.generate_key(KEY_SIZE, private=True).as_pem(private=True)
