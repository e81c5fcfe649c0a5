"""Secrets kept in files of the instance directory, generated on first use.

Several processes start at once (gunicorn's workers, the worker, a test run beside another), so
a file is never visible half-written: the secret is written to a temporary file of the same
directory, mode 0600, then hard-linked to its name. `link` fails when the name exists, and the
process that lost the race reads the winner's complete file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def read_or_create(path: Path, generate: Callable[[], bytes]) -> bytes:
    """The file's bytes; when it does not exist, `generate()`'s, written there once."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a new directory: private
    secret = generate()
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return path.read_bytes()
    finally:
        os.unlink(temporary)
    return secret
