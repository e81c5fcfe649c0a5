"""Webhooks: an agency's endpoints, and signed delivery of order and resource state changes.

- `register` stores an endpoint with a new signing secret (32 random bytes, url-safe), shown
  to the caller once: it is kept only encrypted (the credential keyring, bound to the
  endpoint's id, so a ciphertext copied to another row does not decrypt there) and appears in
  no response, audit event or log line afterwards.
- `notify` is called by the orders and resources services in their own transaction: it
  freezes the event document and queues one delivery job per active endpoint of the
  organization subscribed to the event type (an empty subscription means every type). A
  rolled-back change therefore notifies nobody, and a committed one is delivered even when
  the receiver is down at that moment.
- `run_delivery_job` POSTs the frozen event, serialized once, with
  `Broker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`. Any
  answer but 2xx (redirects are never followed), a timeout or a connection error fails the
  attempt and the queue retries it with backoff, up to `MAX_ATTEMPTS`. An endpoint whose URL
  is no longer safe (not https, or a name now resolving to a private address) makes the job
  dead without sending anything. Receivers check deliveries with `verify_signature`, and
  deduplicate them by `Broker-Delivery` (the event id): a retry sends the same event again.
  Each attempt has the outbound timeout of every call out (`BROKER_PROVIDER_TIMEOUT`), and
  deliveries run in their own lane, after every other kind of job, with the organizations
  taking turns (broker/jobs/lanes.py): an agency's failing endpoints delay nobody else.
- An organization has at most `MAX_ENDPOINTS` endpoints (one more is 409
  `webhook_endpoint_limit`). An endpoint counts its failed attempts in a row (any answer but
  2xx, a timeout, a refused connection, an unsafe address); at `DISABLE_AFTER_FAILURES` it is
  disabled (`state: disabled`, with `disabled_reason` and the last error), the delivery that
  tipped it over is dead, deliveries still queued for it are skipped, and new events are not
  queued for it. Its owner sees why (`GET /v1/webhooks/{id}`) and enables it again
  (`POST …/enable`, which starts the count from zero); `POST …/disable` pauses it by hand.
  Every change of state is audited (`webhook.disabled` with no actor when the broker did it).

Tenancy: an agency's approvers manage their own organization's endpoints; the consortium's
admins manage any organization's (their own by default). Other organizations' endpoints
answer 404.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.jobs.queue import JobContext, JobFailed, enqueue
from broker.models import Job, Organization, WebhookEndpoint
from broker.models.base import utcnow
from broker.services import audit
from broker.services.adapters import ProviderRuntime
from broker.services.credentials import CredentialsUnreadable, Keyring
from broker.services.pagination import Page, paginate
from providers.base import Throttled
from providers.http import HttpPolicy, UnsafeEndpoint, parse_retry_after

JOB_KIND = "webhook.deliver"
MAX_ATTEMPTS = 10
# Endpoints an organization may have (disabled ones count: delete one to make room).
MAX_ENDPOINTS = 10
# Failed delivery attempts in a row (over all its deliveries) that disable an endpoint.
DISABLE_AFTER_FAILURES = 20

ORDER_STATE_CHANGED = "order.state_changed"
RESOURCE_STATE_CHANGED = "resource.state_changed"
EVENT_TYPES: tuple[str, ...] = (ORDER_STATE_CHANGED, RESOURCE_STATE_CHANGED)

SIGNATURE_HEADER = "Broker-Signature"
EVENT_HEADER = "Broker-Event"
DELIVERY_HEADER = "Broker-Delivery"
SIGNATURE_TOLERANCE_SECONDS = 300

_AUDIT_EXCLUDE = frozenset({"secret_ciphertext"})


class DeliveryFailed(Exception):
    """One delivery attempt failed in a way a later attempt may not (the job is retried)."""


class EndpointLimitReached(Conflict):
    code, title = "webhook_endpoint_limit", "Your organization has all the endpoints it may have"


# Endpoints ------------------------------------------------------------------------------


def http_policy(config: Mapping[str, Any]) -> HttpPolicy:
    """How deliveries call out: public https only, unless the development switch
    `BROKER_ALLOW_PRIVATE_WEBHOOKS` lets them reach http and private addresses (a receiver on
    the developer's machine)."""
    policy = ProviderRuntime.from_config(config).http
    if config.get("WEBHOOKS_ALLOW_PRIVATE"):
        return dataclasses.replace(policy, allow_private=True)
    return policy


def _check_url(url: str, http: HttpPolicy) -> None:
    try:
        http.check_url(url)
    except UnsafeEndpoint as error:
        raise ValidationFailed(errors={"url": [str(error)]}) from None
    except ValueError:  # e.g. a port out of range
        raise ValidationFailed(
            errors={
                "url": [
                    "Not a valid URL: expected an https URL with a public host name, an "
                    "optional port (1–65535) and path, such as `https://hooks.example.org/broker`."
                ]
            }
        ) from None


def _events(events: list[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise ValidationFailed(
            errors={
                "events": [
                    f"Unknown event types: {', '.join(unknown)}. "
                    f"Expected any of: {', '.join(EVENT_TYPES)}."
                ]
            }
        )
    return sorted(set(events))


def register(
    session: Session,
    caller: Caller,
    url: str,
    events: list[str],
    keyring: Keyring,
    http: HttpPolicy,
    *,
    organization_id: uuid.UUID | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint of `organization_id` (default: the caller's organization); the
    endpoint and its signing secret, which is never given out again."""
    owner = caller.organization_id if organization_id is None else organization_id
    if not access.may_manage_agency(caller, owner):
        raise NotFound("No such organization.")
    # The organization's row is held until the end of the transaction, so that two
    # registrations at once cannot both take the last place.
    if session.get(Organization, owner, with_for_update=True) is None:
        raise NotFound("No such organization.")
    _check_url(url, http)
    subscribed = _events(events)
    registered = session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.organization_id == owner)
    )
    if (registered or 0) >= MAX_ENDPOINTS:
        raise EndpointLimitReached(
            f"An organization may have {MAX_ENDPOINTS} webhook endpoints; it has {registered}. "
            "Delete one (a disabled one, say) first."
        )
    secret = secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(), organization_id=owner, url=url, events=subscribed, active=True
    )
    endpoint.secret_ciphertext = keyring.encrypt(endpoint.id, {"secret": secret})
    session.add(endpoint)
    session.flush()
    audit.record(
        session,
        caller,
        "webhook.created",
        "webhook_endpoint",
        endpoint.id,
        organization_id=owner,
        after=audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE),
    )
    return endpoint, secret


def get_endpoint(session: Session, caller: Caller, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """An endpoint the caller may manage (others are 404, like unknown ids)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not access.may_manage_agency(caller, endpoint.organization_id):
        raise NotFound("No such webhook endpoint.")
    return endpoint


def list_endpoints(
    session: Session,
    caller: Caller,
    *,
    organization_id: uuid.UUID | None = None,
    limit: int,
    cursor: str | None,
) -> Page[WebhookEndpoint]:
    """Admins list every organization's endpoints (or one's); approvers their own."""
    statement = select(WebhookEndpoint)
    if not access.is_admin(caller):
        if not access.is_approver(caller):
            return Page([], None)
        statement = statement.where(WebhookEndpoint.organization_id == caller.organization_id)
    if organization_id is not None:
        statement = statement.where(WebhookEndpoint.organization_id == organization_id)
    return paginate(
        session,
        statement,
        [WebhookEndpoint.created_at, WebhookEndpoint.id],
        limit=limit,
        cursor=cursor,
        scope=f"webhooks:{organization_id or ''}",
    )


def enable_endpoint(session: Session, caller: Caller, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """Deliver to a disabled endpoint again, its failures counted from zero (new events only:
    what happened while it was disabled is not sent). Enabling an active endpoint changes
    nothing."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    if endpoint.active:
        return endpoint
    before = audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE)
    endpoint.active, endpoint.consecutive_failures = True, 0
    endpoint.disabled_at = endpoint.disabled_reason = None
    session.flush()
    audit.record(
        session,
        caller,
        "webhook.enabled",
        "webhook_endpoint",
        endpoint.id,
        organization_id=endpoint.organization_id,
        before=before,
        after=audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE),
    )
    return endpoint


def disable_endpoint(session: Session, caller: Caller, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """Stop delivering to an endpoint until it is enabled again (deliveries queued for it are
    skipped). Disabling a disabled endpoint changes nothing."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    if not endpoint.active:
        return endpoint
    _disable(session, caller, endpoint, f"Disabled by {caller.client_id}.", utcnow())
    return endpoint


def _disable(
    session: Session,
    caller: Caller | None,
    endpoint: WebhookEndpoint,
    reason: str,
    now: datetime,
) -> None:
    before = audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE)
    endpoint.active, endpoint.disabled_at, endpoint.disabled_reason = False, now, reason[:1000]
    session.flush()
    audit.record(
        session,
        caller,
        "webhook.disabled",
        "webhook_endpoint",
        endpoint.id,
        organization_id=endpoint.organization_id,
        before=before,
        after=audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE),
    )


def delete_endpoint(session: Session, caller: Caller, endpoint_id: uuid.UUID) -> None:
    """Forget an endpoint; deliveries still queued for it are skipped."""
    endpoint = get_endpoint(session, caller, endpoint_id)
    before = audit.snapshot(endpoint, exclude=_AUDIT_EXCLUDE)
    session.delete(endpoint)
    session.flush()
    audit.record(
        session,
        caller,
        "webhook.deleted",
        "webhook_endpoint",
        endpoint_id,
        organization_id=endpoint.organization_id,
        before=before,
    )


# Events ---------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """`data` as plain JSON (instants in UTC with Z, ids and amounts as strings)."""
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"{type(value).__name__} cannot go into a webhook event.")


def _subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return not endpoint.events or event_type in endpoint.events


def notify(
    session: Session,
    organization_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    *,
    occurred_at: datetime | None = None,
) -> int:
    """Queue, in the caller's transaction, the delivery of one event to every active endpoint
    of `organization_id` subscribed to `event_type`; the number of deliveries queued.

    The event document is frozen now: a delivery (and every retry of it) sends exactly this.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"Unknown webhook event type {event_type!r}.")
    endpoints = session.scalars(
        select(WebhookEndpoint)
        .where(
            WebhookEndpoint.organization_id == organization_id,
            WebhookEndpoint.active.is_(True),
        )
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    ).all()
    targets = [endpoint for endpoint in endpoints if _subscribed(endpoint, event_type)]
    if not targets:
        return 0
    event = {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": _timestamp(occurred_at or utcnow()),
        "data": _jsonable(data),
    }
    for endpoint in targets:
        enqueue(
            session,
            JOB_KIND,
            {"endpoint_id": str(endpoint.id), "event": event},
            organization_id=organization_id,
            max_attempts=MAX_ATTEMPTS,
        )
    return len(targets)


# Delivery -------------------------------------------------------------------------------


def serialize(event: dict[str, Any]) -> bytes:
    """The body sent for `event`: compact, keys sorted, so every attempt sends the same bytes."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `Broker-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
    now: datetime | None = None,
) -> bool:
    """Whether `header` (a `Broker-Signature`) signs exactly `body` with `secret`, at a time
    within `tolerance` seconds of `now` (a replayed old delivery fails). For receivers."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = (now or utcnow()).timestamp()
    if abs(current - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = _mac(secret, timestamp, raw)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def run_delivery_job(context: JobContext, job: Job) -> dict[str, Any]:
    """The job handler: send one frozen event to one endpoint, signed, and keep the
    endpoint's count of failures in a row (which may disable it)."""
    endpoint_id = uuid.UUID(job.payload["endpoint_id"])
    with context.db.session(read_only=True) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None:
            return {"skipped": "The endpoint was deleted."}
        if not endpoint.active:
            return {"skipped": "The endpoint is disabled."}
        url, ciphertext = endpoint.url, endpoint.secret_ciphertext
    try:
        status = _deliver(context, endpoint_id, url, ciphertext, job.payload["event"])
    except (DeliveryFailed, JobFailed, Throttled) as error:
        if _record_failure(context, endpoint_id, str(error)):
            raise JobFailed(
                f"{error} The endpoint is now disabled, after {DISABLE_AFTER_FAILURES} failed "
                "attempts in a row."
            ) from None
        raise
    with context.db.transaction() as session:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(consecutive_failures=0, last_delivered_at=context.now())
        )
    return {"status": status}


def _record_failure(context: JobContext, endpoint_id: uuid.UUID, message: str) -> bool:
    """Count a failed attempt against the endpoint; whether that disabled it."""
    now = context.now()
    with context.db.transaction() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
        if endpoint is None:
            return False
        endpoint.consecutive_failures += 1
        endpoint.last_error, endpoint.last_failure_at = message[:1000], now
        if not endpoint.active or endpoint.consecutive_failures < DISABLE_AFTER_FAILURES:
            return False
        reason = (
            f"{endpoint.consecutive_failures} failed delivery attempts in a row; "
            f"the last: {message}"
        )
        _disable(session, None, endpoint, reason, now)
        return True


def _deliver(
    context: JobContext,
    endpoint_id: uuid.UUID,
    url: str,
    ciphertext: str,
    event: dict[str, Any],
) -> int:
    """POST `event` to `url`, signed with the endpoint's secret; the 2xx status, or the error
    of a failed attempt (`JobFailed` when retrying cannot help)."""
    runtime = ProviderRuntime.from_config(context.config)
    http = http_policy(context.config)
    try:
        secret = runtime.keyring.decrypt(endpoint_id, ciphertext)["secret"]
    except (CredentialsUnreadable, KeyError):
        raise JobFailed(
            "The endpoint's signing secret cannot be read; register the endpoint again."
        ) from None
    try:
        http.check_url(url)
    except ValueError as error:
        raise JobFailed(f"The endpoint URL is no longer safe to call: {error}") from None

    body = serialize(event)
    timestamp = int(context.now().timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "cloud-broker-webhooks",
        EVENT_HEADER: str(event["type"]),
        DELIVERY_HEADER: str(event["id"]),
        SIGNATURE_HEADER: sign(secret, body, timestamp),
    }
    try:
        with http.session() as client:
            response = client.post(
                url, data=body, headers=headers, timeout=http.timeout, stream=True
            )
            response.close()  # the receiver's answer body is of no interest
    except UnsafeEndpoint as error:  # the name changed between the check and the connection
        raise JobFailed(f"The endpoint URL is no longer safe to call: {error}") from None
    except requests.Timeout:
        raise DeliveryFailed(f"The endpoint did not answer within {http.timeout:g} s.") from None
    except requests.RequestException as error:
        # requests' messages carry the URL, which may hold the receiver's own token.
        raise DeliveryFailed(
            f"The endpoint could not be reached ({type(error).__name__})."
        ) from None
    status = response.status_code
    if 200 <= status < 300:
        return status
    if status in (429, 503) and "Retry-After" in response.headers:
        delay = parse_retry_after(response.headers.get("Retry-After"), default=60.0)
        raise Throttled(f"The endpoint answered {status}; retry in {delay:g} s.", delay)
    if 300 <= status < 400:
        raise DeliveryFailed(f"The endpoint answered {status}; redirects are not followed.")
    raise DeliveryFailed(f"The endpoint answered {status}.")
