"""An agency's purchasing policy: budget, approval threshold and sovereignty rules."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from broker.models.base import Base, TimestampMixin
from broker.models.catalogue import Micros


class AgencyPolicy(TimestampMixin, Base):
    __tablename__ = "agency_policies"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(3))
    monthly_budget: Mapped[Decimal | None] = mapped_column(Micros())
    approval_threshold: Mapped[Decimal | None] = mapped_column(Micros())
    required_certifications: Mapped[list[str]] = mapped_column(JSON, default=list)
    allowed_countries: Mapped[list[str]] = mapped_column(JSON, default=list)
    forbid_extraterritorial: Mapped[bool] = mapped_column(default=False)
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}
