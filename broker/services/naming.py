"""Unique names that no one can imitate: organizations, providers and trusted issuers.

Two names clash when their confusable skeletons (`broker.names.name_key`) are equal, so
`Нexagone Cloud` (Cyrillic Н) or `hexagone  cloud` cannot be registered beside
`Hexagone Cloud`. The skeleton is stored in a unique `name_key` column: that constraint is the
real guard under concurrency; this check turns the common case into a clear 409.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.errors import Conflict, ValidationFailed
from broker.names import check_name, name_key


def unique_name_key(
    session: Session, model: Any, name: str, *, exclude: uuid.UUID | None = None
) -> str:
    """The key of `name` for a row of `model`, after checking that the name is acceptable
    (422) and that no other row's name looks the same (409, naming it)."""
    problems = check_name(name)
    if problems:
        raise ValidationFailed(errors={"name": problems})
    key = name_key(name)
    statement = select(model.name).where(model.name_key == key)
    if exclude is not None:
        statement = statement.where(model.id != exclude)
    existing = session.scalar(statement)
    if existing is not None:
        what = model.__name__.lower().replace("trustedissuer", "trusted issuer")
        same = "" if existing == name else f" and {name!r} looks the same"
        raise Conflict(f"A {what} named {existing!r} exists already{same}.", code="name_taken")
    return key
