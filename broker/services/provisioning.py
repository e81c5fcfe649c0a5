"""The provisioning job: make an approved order's machines, volumes or buckets at its provider,
exactly once (`broker/services/storage.py` says what each kind is at the cloud).

Each machine has its own token (`broker-order-<order id>-<n>`). The job asks the adapter to
`ensure_provisioned` it, which looks the token up before creating, so a retry after any failure
(a timeout after the cloud made the machine, a worker killed after the call, a crash before the
commit) finds the machine instead of making a second one. What the job learns is committed per
machine. Machines still booting make the job look again shortly (without spending an attempt).

A bucket's key pair is issued once the bucket exists, and kept (the secret encrypted) in the
same transaction that marks the bucket active: a crash in between issues the key again on the
retry, and the cloud keeps one key per bucket token.

A provider that refuses for good (quota, bad request) fails the order with the reason; the
machines already made are then terminated, as are those whose outcome is unknown when the job
runs out of attempts: an order that failed leaves no machine behind to bill.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, lazyload

from broker.jobs import crashpoints
from broker.jobs.queue import JobContext, Reschedule
from broker.models import Job, Offer, Order, OrderState, Resource, ResourceState
from broker.services import adapters, orders, resources, storage
from providers.base import InstanceState, Kind, Permanent

# How soon to look again at machines still booting, and how long they may take.
BOOT_POLL_SECONDS = 2.0
BOOT_TIMEOUT = timedelta(minutes=30)


def _fail(session: Session, order_id: uuid.UUID, reason: str, now: datetime) -> None:
    """Fail the order, unless it is settled already; undo what was (or may have been) made."""
    order = session.get(Order, order_id, with_for_update=True)
    if order is None or order.state not in (OrderState.APPROVED, OrderState.PROVISIONING):
        return
    for resource in session.scalars(select(Resource).where(Resource.order_id == order.id)):
        # Made, or maybe made by a call whose answer was lost: terminate it by ref or token.
        if resource.state in (ResourceState.PROVISIONING, ResourceState.ACTIVE):
            resources.begin_action(session, None, resource, "terminate", now)
    orders.finish(session, order, OrderState.FAILED, reason, now)


def run_provision_job(context: JobContext, job: Job) -> dict[str, Any]:
    order_id = uuid.UUID(job.payload["order_id"])
    with context.db.transaction() as session:
        order = session.get(Order, order_id)
        if order is None or order.state not in (OrderState.APPROVED, OrderState.PROVISIONING):
            return {"skipped": f"the order is {order.state if order else 'gone'}"}
        if order.state is OrderState.APPROVED:
            orders.mark_provisioning(session, order)
        # The offer and its provider in one statement: making machines needs neither the
        # offer's certifications nor the provider's evidence (the order was checked already).
        offer = session.get(
            Offer,
            order.offer_id,
            options=[lazyload(Offer.compliance), joinedload(Offer.provider).lazyload("*")],
        )
        assert offer is not None
        adapter = adapters.adapter_for_job(session, order.provider_id, context.config)
        keyring = adapters.ProviderRuntime.from_config(context.config).keyring
        plan = storage.Plan.of(order, offer)
        waiting = session.scalars(
            select(Resource)
            .where(Resource.order_id == order.id, Resource.state == ResourceState.PROVISIONING)
            .order_by(Resource.index)
        ).all()
        todo = [(r.id, r.index, r.name, r.token, r.retention_days) for r in waiting]
        since = min((r.created_at for r in waiting), default=context.now())

    booting, outcome = 0, None
    for position, (resource_id, index, name, token, retention_days) in enumerate(todo, 1):
        try:
            made = storage.make(
                adapter,
                plan,
                index=index,
                name=name,
                token=token,
                retention_days=retention_days,
            )
            key = (
                adapter.object_storage().issue_key(made.ref, token)
                if plan.kind == Kind.OBJECT_STORAGE and made.state is InstanceState.RUNNING
                else None
            )
        except Permanent as error:
            with context.db.transaction() as session:
                _fail(session, order_id, f"The provider refused: {error}", context.now())
            return {"order": OrderState.FAILED.value}
        crashpoints.reach("after_provider_call")
        with context.db.transaction() as session:
            resource = session.get(Resource, resource_id)
            assert resource is not None
            resource.provider_ref = made.ref
            resource.addresses = list(made.addresses)
            if key is not None:
                assert made.endpoint is not None  # a bucket always says where it is reached
                storage.keep_key(
                    session,
                    keyring,
                    resource,
                    key,
                    endpoint=made.endpoint,
                    region=plan.region,
                    now=context.now(),
                )
            if made.state is InstanceState.RUNNING:
                resources.transition(session, resource, ResourceState.ACTIVE, now=context.now())
            elif made.state in (InstanceState.ERROR, InstanceState.DELETED):
                _fail(
                    session,
                    order_id,
                    f"The provider reports {resource.name} as {made.state}.",
                    context.now(),
                )
                return {"order": OrderState.FAILED.value}
            else:
                booting += 1
            if position == len(todo) and not booting:
                # The last machine is up: the order completes in the same transaction (one
                # fewer per order; a crash before the commit redoes both, by the tokens).
                outcome = _complete(session, order_id, context.now())
            crashpoints.reach("before_commit")
    if booting and context.now() - since > BOOT_TIMEOUT:
        with context.db.transaction() as session:
            _fail(
                session,
                order_id,
                f"The provider did not start {booting} machine(s) within {BOOT_TIMEOUT}.",
                context.now(),
            )
        return {"order": OrderState.FAILED.value}
    if booting:
        raise Reschedule(BOOT_POLL_SECONDS, f"{booting} machine(s) still booting")
    if outcome is None:  # nothing was left to make (a retry after a crash, say)
        with context.db.transaction() as session:
            outcome = _complete(session, order_id, context.now())
    return {"order": outcome.value, "machines": len(todo)}


def _complete(session: Session, order_id: uuid.UUID, now: datetime) -> OrderState:
    """Every machine is made: the order is completed, unless it was settled meanwhile. Its
    state after."""
    order = session.get(Order, order_id)
    assert order is not None
    if order.state is OrderState.PROVISIONING:
        orders.finish(session, order, OrderState.COMPLETED, None, now)
    return order.state


def provision_job_dead(session: Session, job: Job, now: datetime) -> None:
    """Out of attempts (the provider kept failing): fail the order and clean up."""
    order_id = uuid.UUID(job.payload["order_id"])
    _fail(session, order_id, f"The provider kept failing: {job.last_error}", now)
