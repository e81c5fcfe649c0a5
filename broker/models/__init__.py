"""SQLAlchemy models. Importing this package registers every table on `Base.metadata`."""

from broker.models.audit import AuditChainHead, AuditEvent
from broker.models.base import Base
from broker.models.billing import (
    BillingProfile,
    BillingRun,
    BillingRunState,
    CreditNote,
    CreditNoteLine,
    DocumentNumberSeries,
    Invoice,
    InvoiceLine,
    InvoiceState,
    MeterCursor,
    PaymentState,
    StripeCustomer,
    StripeEvent,
    UsageRecord,
    UsageSource,
)
from broker.models.catalogue import (
    Certification,
    Offer,
    OfferCompliance,
    OfferState,
    Provider,
    ProviderCredentials,
    ProviderState,
)
from broker.models.idempotency import IdempotencyRecord
from broker.models.jobs import Job, JobState
from broker.models.orders import (
    LIVE_STATES,
    Order,
    OrderState,
    Resource,
    ResourceEvent,
    ResourceState,
    WebhookEndpoint,
)
from broker.models.organizations import ApiClient, Organization, OrganizationKind, Role
from broker.models.policies import AgencyPolicy

__all__ = [
    "BillingProfile",
    "BillingRun",
    "BillingRunState",
    "Invoice",
    "InvoiceLine",
    "CreditNote",
    "CreditNoteLine",
    "DocumentNumberSeries",
    "PaymentState",
    "StripeCustomer",
    "StripeEvent",
    "InvoiceState",
    "MeterCursor",
    "UsageRecord",
    "UsageSource",
    "AgencyPolicy",
    "ApiClient",
    "Certification",
    "Offer",
    "OfferCompliance",
    "OfferState",
    "Provider",
    "ProviderCredentials",
    "ProviderState",
    "Job",
    "JobState",
    "LIVE_STATES",
    "Order",
    "OrderState",
    "Resource",
    "ResourceEvent",
    "ResourceState",
    "WebhookEndpoint",
    "AuditChainHead",
    "AuditEvent",
    "Base",
    "IdempotencyRecord",
    "Organization",
    "OrganizationKind",
    "Role",
]
