"""The demo people and their passwords, kept only as keyed hashes.

A password is checked by hashing the one offered (HMAC-SHA256 under a key drawn when the
provider starts) and comparing hashes in constant time; an unknown e-mail is checked against a
throw-away hash, so the answer's time does not tell which e-mails exist. Not a slow password
hash: the demo's passwords are printed by `make run` and written to a file, so scrypt would
protect nothing and cost every process that mounts the provider a second at start.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

# The namespace of the people's `sub`: a UUID derived from the e-mail, so a person keeps the
# same `sub` across restarts, workers and hosts.
SUBJECT_NAMESPACE = uuid.UUID("6f1e4b0c-3d52-5c8e-9a57-2f0d6c1b8e44")


@dataclass(frozen=True)
class DemoPerson:
    """A person who can sign in at the demo provider. `siret` names the establishment they
    work for (a French public agency's 14-digit number), as ProConnect gives it."""

    email: str
    password: str = field(repr=False)  # stays out of logs and tracebacks
    given_name: str
    usual_name: str
    siret: str | None = None

    @property
    def sub(self) -> str:
        return str(uuid.uuid5(SUBJECT_NAMESPACE, normalized_email(self.email)))


def normalized_email(email: str) -> str:
    return email.strip().casefold()


class People:
    """Who may sign in, by e-mail and by `sub`."""

    def __init__(self, people: Iterable[DemoPerson]) -> None:
        self._key = secrets.token_bytes(32)
        self._by_email: dict[str, tuple[DemoPerson, bytes]] = {}
        self._by_sub: dict[str, DemoPerson] = {}
        for person in people:
            self._by_email[normalized_email(person.email)] = (person, self._hash(person.password))
            self._by_sub[person.sub] = person
        self._unmatchable = self._hash(secrets.token_urlsafe(32))

    def _hash(self, password: str) -> bytes:
        encoded = password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, encoded, hashlib.sha256).digest()

    def authenticate(self, email: str, password: str) -> DemoPerson | None:
        """The person with this e-mail and password, or None (after the same work)."""
        person, stored = self._by_email.get(normalized_email(email), (None, self._unmatchable))
        matches = hmac.compare_digest(stored, self._hash(password))
        return person if matches and person is not None else None

    def by_sub(self, sub: str) -> DemoPerson | None:
        return self._by_sub.get(sub)
