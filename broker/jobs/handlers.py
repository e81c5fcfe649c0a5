"""`dispatch`: which handler runs which kind of job, what happens when one dies, and which
kinds run periodically."""

from __future__ import annotations

from datetime import timedelta

from broker.jobs.queue import DeadHandler, Handler, Periodic
from broker.services import (
    billing_runs,
    invitations,
    offer_sync,
    orders,
    payments,
    provisioning,
    resources,
    usage,
    webhooks,
)

HANDLERS: dict[str, Handler] = {
    offer_sync.JOB_KIND: offer_sync.run_sync_job,
    webhooks.JOB_KIND: webhooks.run_delivery_job,
    invitations.JOB_KIND: invitations.run_email_job,
    orders.PROVISION_JOB: provisioning.run_provision_job,
    resources.ACTION_JOB: resources.run_action_job,
    resources.RECONCILE_JOB: resources.run_reconcile_job,
    usage.METER_JOB: usage.run_meter_job,
    usage.POLL_JOB: usage.run_poll_job,
    billing_runs.BILLING_JOB: billing_runs.run_billing_job,
    payments.SYNC_JOB: payments.run_sync_job,
    payments.VOID_JOB: payments.run_void_job,
    payments.PAID_OUTSIDE_JOB: payments.run_paid_outside_job,
    payments.CREDIT_JOB: payments.run_credit_job,
}

ON_DEAD: dict[str, DeadHandler] = {
    orders.PROVISION_JOB: provisioning.provision_job_dead,
    resources.ACTION_JOB: resources.action_job_dead,
    billing_runs.BILLING_JOB: billing_runs.billing_job_dead,
    payments.SYNC_JOB: payments.sync_job_dead,
}

PERIODIC: list[Periodic] = [
    Periodic(resources.RECONCILE_JOB, timedelta(minutes=1)),
    Periodic(usage.METER_JOB, timedelta(minutes=5)),
    Periodic(usage.POLL_JOB, timedelta(minutes=15)),
]
