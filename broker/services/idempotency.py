"""Idempotency-Key storage: claim a key, store the response, replay it.

The first request with a key *claims* it in a short transaction of its own (a row in
`in_progress`, with a lease). Its business effect and the stored response are then committed
together in the request's transaction, so a crash can never leave an effect without its
stored response. A duplicate waits for the first to finish and gets the stored response; after
the wait it gets 409. A claim whose lease ran out (its process died before committing) can be
taken over: nothing of it was committed, so running the request again is safe. A request that
fails releases its claim, so the key can be used again once the input is fixed.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.db import Database
from broker.errors import IdempotencyInFlight, IdempotencyKeyReused
from broker.models import IdempotencyRecord
from broker.models.base import utcnow

IN_PROGRESS = "in_progress"
COMPLETED = "completed"
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Claim:
    record_id: uuid.UUID


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


def claim(
    db: Database,
    organization_id: uuid.UUID,
    key: str,
    fingerprint: str,
    *,
    ttl: timedelta,
    lease: timedelta,
    wait_seconds: float,
) -> Claim | StoredResponse:
    """Claim `key` for this request, or return the response stored by the first one."""
    deadline = time.monotonic() + wait_seconds
    while True:
        outcome = _try_claim(db, organization_id, key, fingerprint, ttl=ttl, lease=lease)
        if outcome is not None:
            return outcome
        if time.monotonic() >= deadline:
            raise IdempotencyInFlight(
                "The first request with this key has not finished; retry later.",
                headers={"Retry-After": "1"},
            )
        time.sleep(POLL_SECONDS)


def _try_claim(
    db: Database,
    organization_id: uuid.UUID,
    key: str,
    fingerprint: str,
    *,
    ttl: timedelta,
    lease: timedelta,
) -> Claim | StoredResponse | None:
    """One attempt: a `Claim`, the stored response, or None while the first is in flight."""
    now = utcnow()
    record_id = uuid.uuid4()
    try:
        with db.transaction() as session:
            session.add(
                IdempotencyRecord(
                    id=record_id,
                    organization_id=organization_id,
                    key=key,
                    request_hash=fingerprint,
                    state=IN_PROGRESS,
                    locked_until=now + lease,
                    expires_at=now + ttl,
                )
            )
        return Claim(record_id)
    except IntegrityError:
        pass  # the key exists: look at it below

    with db.transaction() as session:
        record = session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.organization_id == organization_id,
                IdempotencyRecord.key == key,
            )
        )
        if record is None:  # released meanwhile: try again at once
            return _try_claim(db, organization_id, key, fingerprint, ttl=ttl, lease=lease)
        if record.expires_at <= now:
            # An expired key is a new key: take the row over for this request.
            return _take_over(session, record, fingerprint, now, ttl=ttl, lease=lease)
        if record.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with another request; use a new key."
            )
        if record.state == COMPLETED:
            return StoredResponse(
                record.response_status or 200,
                dict(record.response_headers or {}),
                record.response_body or b"",
            )
        if record.locked_until is not None and record.locked_until <= now:
            return _take_over(session, record, fingerprint, now, ttl=ttl, lease=lease)
        return None


def _take_over(
    session: Session,
    record: IdempotencyRecord,
    fingerprint: str,
    now: datetime,
    *,
    ttl: timedelta,
    lease: timedelta,
) -> Claim | None:
    """Compare-and-swap on the lease so only one of several waiting requests takes over."""
    taken = session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.id == record.id,
            IdempotencyRecord.state == record.state,
            IdempotencyRecord.locked_until == record.locked_until,
        )
        .values(
            request_hash=fingerprint,
            state=IN_PROGRESS,
            locked_until=now + lease,
            expires_at=now + ttl,
            response_status=None,
            response_headers=None,
            response_body=None,
        )
        .execution_options(synchronize_session=False)
    )
    return Claim(record.id) if getattr(taken, "rowcount", 0) == 1 else None


def complete(session: Session, claimed: Claim, response: StoredResponse) -> None:
    """Store the response in the caller's transaction, beside the effect it describes."""
    session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == claimed.record_id)
        .values(
            state=COMPLETED,
            locked_until=None,
            response_status=response.status,
            response_headers=response.headers,
            response_body=response.body,
        )
        .execution_options(synchronize_session=False)
    )


def release(db: Database, claimed: Claim) -> None:
    """Forget a claim whose request failed: nothing was committed under it."""
    with db.transaction() as session:
        session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.id == claimed.record_id,
                IdempotencyRecord.state == IN_PROGRESS,
            )
        )


def purge_expired(session: Session, now: datetime | None = None) -> int:
    """Delete records past their retention (a periodic job calls this)."""
    result = session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0) or 0)
