"""Trusted issuers: the certification bodies whose signed statements verify themselves.

Admins keep the list and each issuer's public keys (a JWK set). Taking a key out of the set,
or the issuer off the list, makes every statement it signed stop counting, in the same
transaction (see `broker.services.evidence.revoke_statements`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import TrustedIssuer
from broker.services import audit, evidence
from broker.services.naming import unique_name_key
from broker.services.pagination import Page, paginate
from broker.services.preconditions import IfMatch
from broker.statements import check_jwks


def _key_ids(jwks: dict[str, Any]) -> set[str]:
    return {str(key["kid"]) for key in jwks.get("keys", [])}


def _check(session: Session, data: dict[str, Any], exclude: uuid.UUID | None = None) -> None:
    if "jwks" in data:
        problems = check_jwks(data["jwks"])
        if problems:
            raise ValidationFailed(errors={"jwks": problems})
    if "issuer" in data:
        statement = select(TrustedIssuer.id).where(TrustedIssuer.issuer == data["issuer"])
        if exclude is not None:
            statement = statement.where(TrustedIssuer.id != exclude)
        if session.scalar(statement) is not None:
            raise Conflict(
                f"The issuer {data['issuer']!r} is on the list already.", code="issuer_taken"
            )


def _audit(
    session: Session,
    caller: Caller,
    action: str,
    row: TrustedIssuer,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        caller,
        f"trusted_issuer.{action}",
        "trusted_issuer",
        row.id,
        organization_id=caller.organization_id,
        before=before,
        after=after,
    )


def create(session: Session, caller: Caller, data: dict[str, Any]) -> TrustedIssuer:
    """Add an issuer whose statements (signed by one of `jwks`' keys) verify themselves."""
    _check(session, data)
    key = unique_name_key(session, TrustedIssuer, data["name"])
    row = TrustedIssuer(
        id=uuid.uuid4(), name=data["name"], name_key=key, issuer=data["issuer"], jwks=data["jwks"]
    )
    session.add(row)
    session.flush()
    _audit(session, caller, "created", row, after=audit.snapshot(row))
    return row


def get(session: Session, issuer_id: uuid.UUID) -> TrustedIssuer:
    """Trusted issuers and their public keys are public within the broker: anyone may check
    a statement themselves."""
    row = session.get(TrustedIssuer, issuer_id)
    if row is None:
        raise NotFound("No such trusted issuer.")
    return row


def list_issuers(session: Session, *, limit: int, cursor: str | None) -> Page[TrustedIssuer]:
    return paginate(
        session,
        select(TrustedIssuer),
        [TrustedIssuer.created_at, TrustedIssuer.id],
        limit=limit,
        cursor=cursor,
    )


def update(
    session: Session,
    caller: Caller,
    issuer_id: uuid.UUID,
    *,
    if_match: IfMatch,
    changes: dict[str, Any],
    now: datetime,
) -> TrustedIssuer:
    """Rename an issuer or replace its keys; statements signed by a removed key stop
    counting."""
    row = get(session, issuer_id)
    if_match.check(row.version, "issuer")
    _check(session, changes, exclude=row.id)
    before = audit.snapshot(row)
    if "name" in changes:
        row.name_key = unique_name_key(session, TrustedIssuer, changes["name"], exclude=row.id)
    for name in ("name", "issuer", "jwks"):
        if name in changes:
            setattr(row, name, changes[name])
    session.flush()
    _audit(session, caller, "updated", row, before=before, after=audit.snapshot(row))
    kept = _key_ids(row.jwks) if "issuer" not in changes else set()
    evidence.revoke_statements(session, row, kept, caller, now)
    return row


def delete(session: Session, caller: Caller, issuer_id: uuid.UUID, now: datetime) -> None:
    """Take an issuer off the list: every statement it signed stops counting."""
    row = get(session, issuer_id)
    evidence.revoke_statements(session, row, set(), caller, now)
    before = audit.snapshot(row)
    _audit(session, caller, "deleted", row, before=before)
    session.delete(row)
    session.flush()
