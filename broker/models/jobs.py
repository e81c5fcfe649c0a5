"""The durable job queue (and outbox): a job is inserted in the transaction that needs it."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.jobs.lanes import lane_of
from broker.models.base import Base, IdMixin, TimestampMixin, enum_column, utcnow

# Whose turn it is in a lane is kept per organization; the broker's own work (reconciliation,
# metering, billing runs: jobs without an organization) takes its turns under this id.
BROKER_TENANT = uuid.UUID(int=0)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # will be retried at `run_after`
    DEAD = "dead"  # gave up: a permanent error, or out of attempts


def _lane_of_row(context: Any) -> str:
    return lane_of(context.get_current_parameters()["kind"])


class Job(IdMixin, TimestampMixin, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_ready", "state", "run_after"),
        Index("ix_jobs_lane_ready", "lane", "state", "run_after"),
    )

    kind: Mapped[str] = mapped_column(String(50))
    # Which jobs it competes with for a worker (broker/jobs/lanes.py), from its kind.
    lane: Mapped[str] = mapped_column(String(20), default=_lane_of_row)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[JobState] = mapped_column(enum_column(JobState), default=JobState.QUEUED)
    # Who may read the job (besides the consortium); None for the broker's own work.
    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), index=True
    )
    # While set, enqueueing the same key returns this job instead of a second one.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # A periodic job's time slot (`<kind>:<slot number>`), kept forever: one run per slot.
    schedule_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=8)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(String(1000))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]


class LaneTurn(Base):
    """When an organization was last served in a lane: the next claim in the lane goes to
    the organization with ready jobs served longest ago (`served_seq`, increasing per lane).
    `organization_id` is `BROKER_TENANT` for jobs without an organization."""

    __tablename__ = "job_lane_turns"

    lane: Mapped[str] = mapped_column(String(20), primary_key=True)
    # No foreign key: the broker's own turns use an id no organization has.
    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    served_seq: Mapped[int] = mapped_column(BigInteger)
    served_at: Mapped[datetime]
