"""SQLAlchemy models. Importing this package registers every table on `Base.metadata`."""

from broker.models.audit import AuditChainHead, AuditEvent
from broker.models.base import Base
from broker.models.idempotency import IdempotencyRecord
from broker.models.organizations import ApiClient, Organization, OrganizationKind, Role

__all__ = [
    "ApiClient",
    "AuditChainHead",
    "AuditEvent",
    "Base",
    "IdempotencyRecord",
    "Organization",
    "OrganizationKind",
    "Role",
]
