"""The demo provider's RS256 signing key: generated once into its state directory, then read
by every worker.

Not `broker.auth.keys`: the demo provider must stand apart from the broker's own auth, and
its creation has to be race-free when several gunicorn workers start at once. The key is
written whole to a private temporary file and then hard-linked into place, which either
succeeds or finds the file already there: no worker can read a half-written key, and the
loser of a race reads the winner's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from joserfc.jwk import RSAKey

KEY_FILE = "signing-key.pem"
KEY_SIZE = 2048


def load_or_create_signing_key(state_dir: Path) -> RSAKey:
    """The key in `state_dir`, created there (mode 0600) on first use."""
    path = state_dir / KEY_FILE
    if not path.exists():
        _create_atomically(path)
    key = RSAKey.import_key(path.read_bytes())
    key.ensure_kid()  # the RFC 7638 thumbprint: the same `kid` in every worker
    return key


def _create_atomically(path: Path) -> None:
    pem = RSAKey.generate_key(KEY_SIZE, private=True).as_pem(private=True)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp creates the file with mode 0600.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another worker got there first: its key is the one
    finally:
        os.unlink(temporary)
