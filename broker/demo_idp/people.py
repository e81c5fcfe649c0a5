"""The demo people and their passwords, kept only as hashes.

A password is checked by hashing the one offered and comparing hashes in constant time
(werkzeug's scrypt hash and `hmac.compare_digest`); an unknown e-mail is checked against a
throw-away hash, so the answer's time does not tell which e-mails exist.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from werkzeug.security import check_password_hash, generate_password_hash

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
        self._by_email: dict[str, tuple[DemoPerson, str]] = {}
        self._by_sub: dict[str, DemoPerson] = {}
        for person in people:
            self._by_email[normalized_email(person.email)] = (
                person,
                generate_password_hash(person.password),
            )
            self._by_sub[person.sub] = person
        self._unmatchable = generate_password_hash(secrets.token_urlsafe(32))

    def authenticate(self, email: str, password: str) -> DemoPerson | None:
        """The person with this e-mail and password, or None (after the same work)."""
        person, stored = self._by_email.get(normalized_email(email), (None, self._unmatchable))
        matches = check_password_hash(stored, password)
        return person if matches else None

    def by_sub(self, sub: str) -> DemoPerson | None:
        return self._by_sub.get(sub)
