"""What each kind of resource is at its cloud: machines, block volumes and buckets.

The provisioning job, the action job and the reconciliation are written once for every kind:
they ask this module to make a resource, look it up, carry out an action on it or delete it,
and it calls the adapter's driver for that kind (`ProviderAdapter` itself for machines,
`volumes()`, `object_storage()`). Every create goes through the driver's `ensure_*`, which looks
the token up first: exactly once, whatever failed before.

A bucket comes with a key pair the provider issues for it. Its secret is stored encrypted (like
provider credentials, bound to the resource) until the agency has been shown it once
(`reveal_secret`); a rotation (`rotate_key` action) issues a new pair, revokes the old one and
keeps the new secret, encrypted, until it is shown. No secret is ever logged, audited, exported
or kept in a job.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.db import Database
from broker.errors import Conflict, NotFound
from broker.models import BucketAccess, Offer, Order, Provider, Resource
from broker.services import adapters, audit
from broker.services.credentials import Keyring
from providers.base import (
    AccessKey,
    BucketRequest,
    InstanceState,
    Kind,
    ProviderAdapter,
    ProviderError,
    ProvisionRequest,
    Retained,
    VolumeRequest,
)


@dataclass(frozen=True)
class Made:
    """What the cloud says of a resource it made (or is making)."""

    ref: str
    state: InstanceState
    addresses: tuple[str, ...] = ()
    endpoint: str | None = None  # a bucket's


@dataclass(frozen=True)
class Plan:
    """What making one resource of an order needs, read from its order and offer (so the
    cloud is called after the database session is closed)."""

    order_id: uuid.UUID
    kind: str
    sku: str
    region: str
    parameters: Mapping[str, Any]
    size_gib: int | None = None
    iops: int | None = None
    encrypted: bool = False
    versioning: bool = False

    @classmethod
    def of(cls, order: Order, offer: Offer) -> Plan:
        return cls(
            order.id,
            offer.kind,
            offer.sku,
            offer.region_code,
            dict(order.parameters),
            offer.size_gib,
            offer.iops,
            offer.encrypted,
            offer.versioning,
        )


def make(
    adapter: ProviderAdapter,
    plan: Plan,
    *,
    index: int,
    name: str,
    token: str,
    retention_days: int | None,
) -> Made:
    """Create the resource `index` of the order unless its token finds it already."""
    if plan.kind == Kind.VOLUME:
        volume = adapter.volumes().ensure_volume(
            VolumeRequest(
                order_id=plan.order_id,
                sku=plan.sku,
                region=plan.region,
                name=name,
                size_gib=plan.size_gib or 1,
                encrypted=plan.encrypted,
                iops=plan.iops,
                index=index,
            )
        )
        return Made(volume.ref, volume.state)
    if plan.kind == Kind.OBJECT_STORAGE:
        bucket = adapter.object_storage().ensure_bucket(
            BucketRequest(
                order_id=plan.order_id,
                sku=plan.sku,
                region=plan.region,
                name=token,  # DNS-safe and unique: `broker-order-<uuid>-<n>`
                encrypted=plan.encrypted,
                versioning=plan.versioning,
                retention_days=retention_days,
                index=index,
            )
        )
        return Made(bucket.ref, bucket.state, endpoint=bucket.endpoint)
    instance = adapter.ensure_provisioned(
        ProvisionRequest(
            order_id=plan.order_id,
            sku=plan.sku,
            region=plan.region,
            name=name,
            image=plan.parameters.get("image"),
            index=index,
            extra={k: v for k, v in plan.parameters.items() if k != "image"},
        )
    )
    return Made(instance.ref, instance.state, tuple(instance.addresses))


def look(adapter: ProviderAdapter, kind: str, ref: str) -> InstanceState | None:
    """The state the cloud reports of the resource `ref`, or None when it is gone."""
    if kind == Kind.VOLUME:
        volume = adapter.volumes().get_volume(ref)
        return volume.state if volume is not None else None
    if kind == Kind.OBJECT_STORAGE:
        bucket = adapter.object_storage().get_bucket(ref)
        return bucket.state if bucket is not None else None
    instance = adapter.get(ref)
    return instance.state if instance is not None else None


def find(adapter: ProviderAdapter, kind: str, token: str) -> str | None:
    """The ref of the live resource carrying `token`, if the cloud made it."""
    found: Any
    if kind == Kind.VOLUME:
        found = adapter.volumes().find_volume(token)
    elif kind == Kind.OBJECT_STORAGE:
        found = adapter.object_storage().find_bucket(token)
    else:
        found = adapter.find_by_token(token)
    return found.ref if found is not None else None


def delete(adapter: ProviderAdapter, kind: str, ref: str) -> None:
    """Delete the resource at the cloud (gone already counts as deleted). An attached volume
    is detached first; a bucket holding objects under retention is refused by the cloud
    (`Permanent(code="under_retention")`)."""
    if kind == Kind.VOLUME:
        volumes = adapter.volumes()
        found = volumes.get_volume(ref)
        if found is not None and found.attached_to:
            volumes.detach_volume(ref)
        volumes.delete_volume(ref)
    elif kind == Kind.OBJECT_STORAGE:
        adapter.object_storage().delete_bucket(ref)
    else:
        adapter.deprovision(ref)


def retained(
    db: Database, caller: Caller, resource_id: uuid.UUID, runtime: adapters.ProviderRuntime
) -> Retained | None:
    """How many objects the caller's bucket holds under retention now, asked of its cloud
    after the database session is closed (no transaction waits on the call); None when it is
    not a bucket the caller sees, has no retention, or the cloud cannot tell now."""
    with db.session(read_only=True) as session:
        resource = session.get(Resource, resource_id)
        if (
            resource is None
            or resource.kind != Kind.OBJECT_STORAGE
            or not resource.retention_days
            or resource.provider_ref is None
            or not access.sees_organization(caller, resource.organization_id)
        ):
            return None
        ref = resource.provider_ref
        provider = session.get_one(Provider, resource.provider_id)
        adapter = adapters.adapter_or_none(session, provider, runtime)
    if adapter is None:
        return None
    try:
        found: Retained = adapter.object_storage().retained(ref)
    except (ProviderError, OSError):
        return None
    return found


# Bucket access -------------------------------------------------------------------------------


def keep_key(
    session: Session,
    keyring: Keyring,
    resource: Resource,
    key: AccessKey,
    *,
    endpoint: str,
    region: str,
    now: datetime,
) -> None:
    """Record how to reach a bucket just made, with the key pair issued for it: its secret
    encrypted and not shown yet."""
    assert resource.provider_ref is not None
    session.add(
        BucketAccess(
            resource_id=resource.id,
            endpoint=endpoint,
            bucket=resource.provider_ref,
            region=region,
            access_key_id=key.key_id,
            secret_ciphertext=_sealed(keyring, resource, key),
            issued_at=now,
            shown_at=None,
        )
    )


def replace_key(
    session: Session, keyring: Keyring, resource: Resource, key: AccessKey, now: datetime
) -> None:
    """A rotation's new key pair in place of the old one (revoked at the cloud already): its
    secret encrypted and not shown yet."""
    held = session.get_one(BucketAccess, resource.id)
    held.access_key_id, held.secret_ciphertext = key.key_id, _sealed(keyring, resource, key)
    held.issued_at, held.shown_at = now, None


def _sealed(keyring: Keyring, resource: Resource, key: AccessKey) -> str:
    """The secret, encrypted like provider credentials and bound to the bucket's resource."""
    return keyring.encrypt(resource.id, {"secret_access_key": key.secret})


@dataclass(frozen=True)
class Connection:
    """How to reach a bucket: what `GET /v1/resources/{id}` shows, and the secret once."""

    endpoint: str
    bucket: str
    region: str
    access_key_id: str
    issued_at: datetime
    shown_at: datetime | None
    secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, held: BucketAccess, secret: str | None = None) -> Connection:
        return cls(
            held.endpoint,
            held.bucket,
            held.region,
            held.access_key_id,
            held.issued_at,
            held.shown_at,
            secret,
        )


def connection(session: Session, resource: Resource) -> Connection | None:
    """The bucket's connection details, without the secret."""
    held = session.get(BucketAccess, resource.id) if resource.kind == Kind.OBJECT_STORAGE else None
    return Connection.of(held) if held is not None else None


def reveal_secret(
    session: Session,
    caller: Caller,
    resource_id: uuid.UUID,
    keyring: Keyring,
    now: datetime,
) -> Connection:
    """The bucket's connection details with its secret key, once (the agency's buyers and
    approvers): the secret is then erased. Shown already: 409, rotate the key for a new one."""
    resource = session.get(Resource, resource_id, with_for_update=True)
    if (
        resource is None
        or resource.organization_id != caller.organization_id
        or resource.kind != Kind.OBJECT_STORAGE
    ):
        raise NotFound("No such bucket.")
    held = session.get(BucketAccess, resource.id, with_for_update=True)
    if held is None:
        raise Conflict(
            "The bucket has no key yet: it is still being made.", code="bucket_not_ready"
        )
    if held.secret_ciphertext is None:
        raise Conflict(
            "The secret key of this bucket was shown once already "
            f"({held.shown_at:%Y-%m-%d %H:%M} UTC) and is not kept: rotate the key "
            "(action `rotate_key`) to get a new pair.",
            code="secret_already_shown",
        )
    secret = keyring.decrypt(resource.id, held.secret_ciphertext)["secret_access_key"]
    held.secret_ciphertext, held.shown_at = None, now
    audit.record(
        session,
        caller,
        "bucket.secret_shown",
        "resource",
        resource.id,
        organization_id=resource.organization_id,
        after={"access_key_id": held.access_key_id},
    )
    return Connection.of(held, secret)


def region_of(session: Session, resource: Resource) -> str:
    offer = session.get_one(Offer, resource.offer_id)
    return offer.region_code
