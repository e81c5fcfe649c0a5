"""Orders and the resources they deliver, with every lifecycle transition timestamped."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from broker.models.base import Base, IdMixin, TimestampMixin, enum_column, utcnow
from broker.models.catalogue import Micros


class OrderState(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    PROVISIONING = "provisioning"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Order(IdMixin, TimestampMixin, Base):
    """An agency's order of `quantity` machines of one offer version, at its prices."""

    __tablename__ = "orders"
    __table_args__ = (Index("ix_orders_listing", "organization_id", "created_at", "id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    created_by: Mapped[str] = mapped_column(String(100))  # the client id of the buyer
    offer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("offers.id", ondelete="RESTRICT"))
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(63))
    quantity: Mapped[int]
    # The public buyer's references its usage is invoiced under: the service code (BT-10) and
    # the commitment / purchase order number (BT-13); the billing profile's when not given.
    buyer_reference: Mapped[str | None] = mapped_column(String(100))
    purchase_order_reference: Mapped[str | None] = mapped_column(String(100))
    # image, ssh_public_key, … as the buyer gave them (passed to the adapter).
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The prices of the pinned offer version, copied: what the agency agreed to pay.
    prices: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    currency: Mapped[str] = mapped_column(String(3))
    unit_monthly_cost: Mapped[Decimal] = mapped_column(Micros())
    monthly_cost: Mapped[Decimal] = mapped_column(Micros())
    state: Mapped[OrderState] = mapped_column(enum_column(OrderState), index=True)
    state_reason: Mapped[str | None] = mapped_column(String(500))
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}


class ResourceState(enum.StrEnum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STARTING = "starting"
    REBOOTING = "rebooting"
    UPDATING = "updating"  # a volume resized, attached or detached; a bucket's retention set
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    ERROR = "error"
    FAILED = "failed"  # never made: its order failed


# States in which the machine exists at the provider (and is metered).
LIVE_STATES = frozenset(
    {
        ResourceState.ACTIVE,
        ResourceState.STOPPING,
        ResourceState.STOPPED,
        ResourceState.STARTING,
        ResourceState.REBOOTING,
        ResourceState.UPDATING,
        ResourceState.TERMINATING,
        ResourceState.ERROR,
    }
)


class Resource(IdMixin, TimestampMixin, Base):
    """One thing an order made at its provider: a machine, a volume or a bucket (`kind`)."""

    __tablename__ = "resources"
    __table_args__ = (
        UniqueConstraint("order_id", "index"),
        Index("ix_resources_listing", "organization_id", "created_at", "id"),
        Index("ix_resources_provider_state", "provider_id", "state"),
    )

    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"))
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("providers.id", ondelete="RESTRICT"))
    offer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("offers.id", ondelete="RESTRICT"))
    index: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20), default="vm", server_default="vm")
    name: Mapped[str] = mapped_column(String(80))
    # The token the cloud knows the machine by (tag or client token): `broker-order-<order>-<n>`.
    token: Mapped[str] = mapped_column(String(80), unique=True)
    provider_ref: Mapped[str | None] = mapped_column(String(200))
    addresses: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[ResourceState] = mapped_column(enum_column(ResourceState))
    state_reason: Mapped[str | None] = mapped_column(String(500))
    unit_monthly_cost: Mapped[Decimal] = mapped_column(Micros())
    currency: Mapped[str] = mapped_column(String(3))
    activated_at: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # How many state changes it has had: the `seq` of its latest event.
    events_recorded: Mapped[int] = mapped_column(default=0, server_default="0")
    # A volume: its provisioned size now (its events keep each size and since when), and the
    # machine it is attached to. A bucket: its default retention in days (a vault), if any.
    size_gib: Mapped[int | None]
    attached_to_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("resources.id", ondelete="SET NULL"), index=True
    )
    retention_days: Mapped[int | None]

    # Loaded only when read (a resource's detail): lists never touch it.
    events: Mapped[list[ResourceEvent]] = relationship(order_by="ResourceEvent.seq", viewonly=True)


class ResourceEvent(IdMixin, Base):
    """A state transition of a resource, when it happened (metering reads these). `seq`
    orders a resource's events even when two share a timestamp."""

    __tablename__ = "resource_events"
    __table_args__ = (
        Index("ix_resource_events_resource", "resource_id", "at"),
        UniqueConstraint("resource_id", "seq"),
    )

    resource_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(default=0, server_default="0")
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(20))
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(500))
    # A volume's provisioned size from this event on (set when it is made and on a resize).
    size_gib: Mapped[int | None]


class BucketAccess(Base):
    """How an agency reaches a bucket it bought: the endpoint, the bucket and region, and the
    key pair the provider issued for it. The secret is encrypted like provider credentials
    (bound to the resource) and kept only until the agency has been shown it once; a rotation
    issues a new pair, shown once again. Kept out of the resource row so no listing loads it."""

    __tablename__ = "bucket_access"

    resource_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("resources.id", ondelete="CASCADE"), primary_key=True
    )
    endpoint: Mapped[str] = mapped_column(String(500))
    bucket: Mapped[str] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(50))
    access_key_id: Mapped[str] = mapped_column(String(200))
    secret_ciphertext: Mapped[str | None] = mapped_column(String(1000))
    issued_at: Mapped[datetime]
    shown_at: Mapped[datetime | None]


class WebhookEndpointState(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # by its owner, or after too many failed deliveries in a row


class WebhookEndpoint(IdMixin, TimestampMixin, Base):
    """Where an agency wants order and resource state changes delivered (signed)."""

    __tablename__ = "webhook_endpoints"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(500))
    # The HMAC signing secret, encrypted like provider credentials (bound to this row).
    secret_ciphertext: Mapped[str] = mapped_column(String(1000))
    # Event types delivered (empty: all).
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    # False: disabled (`state`), nothing is delivered to it until it is enabled again.
    active: Mapped[bool] = mapped_column(default=True)
    # Failed delivery attempts since the last one that succeeded (or since it was enabled).
    consecutive_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(String(1000))
    last_failure_at: Mapped[datetime | None]
    last_delivered_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(1000))

    @property
    def state(self) -> WebhookEndpointState:
        return WebhookEndpointState.ACTIVE if self.active else WebhookEndpointState.DISABLED
