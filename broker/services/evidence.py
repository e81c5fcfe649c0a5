"""Sovereignty evidence: who may claim, who vouches, and what counts.

Every sovereignty claim of a provider — a certification, its jurisdiction (operator and parent
countries, foreign-law exposure), each region's country and datacenter tier — is an `Evidence`
record: `pending` → `verified` | `rejected` (or `withdrawn` by its provider, `superseded` by
newer verified evidence of the same subject). The claimant never vouches for itself:

- a provider's operators submit and withdraw claims; they stay `pending`, and the verified
  values they would replace keep counting until an assessor decides;
- the consortium (an `assessor` or `admin`) verifies or rejects them, never for a provider
  whose organization it belongs to; evidence the consortium enters itself is verified at once;
- a certification may carry a statement signed by a trusted issuer (`broker/statements.py`),
  which verifies itself — and stops counting when it expires or the issuer's key is removed.

Only verified evidence counts, and a certification only while `valid_from <= now <
valid_until`: `counts` / `counting` say so for Python and SQL alike, and every reader (search,
offers, quotes, policy checks, orders and approvals) goes through them or through the
provider's columns `recount` derives from them. One exception leans the safe way: a pending
jurisdiction that *adds* a foreign-law exposure counts at once, since admitting a weakness
needs nobody's word.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, Result, Row, and_, or_, select, update
from sqlalchemy.orm import Session

from broker import access
from broker.auth.identity import Caller
from broker.errors import Conflict, Forbidden, NotFound, ValidationFailed
from broker.models import (
    Evidence,
    EvidenceKind,
    EvidenceState,
    Offer,
    Organization,
    Provider,
    Role,
    TrustedIssuer,
)
from broker.services import audit
from broker.services.pagination import Page, paginate
from broker.statements import StatementRejected, TrustedKeys, verify_statement

CERTIFICATION_FIELDS = (
    "scheme",
    "level",
    "valid_from",
    "valid_until",
    "issuer",
    "evidence_url",
    "document_sha256",
)
JURISDICTION_FIELDS = ("operator_country", "parent_country", "extraterritorial_exposure")
REGION_FIELDS = ("region_code", "country", "city", "datacenter_tier")
FIELDS = {
    EvidenceKind.CERTIFICATION: CERTIFICATION_FIELDS,
    EvidenceKind.JURISDICTION: JURISDICTION_FIELDS,
    EvidenceKind.REGION: REGION_FIELDS,
}
LIVE = (EvidenceState.PENDING, EvidenceState.VERIFIED)


# --- what counts ------------------------------------------------------------------------------


C = TypeVar("C", bound="Certification")


class Certification(Protocol):
    """What `counts` and `best_of` read of evidence: an `Evidence`, or a row of its columns
    (`live_certifications`), so a catalogue page can rank claims without loading providers."""

    @property
    def state(self) -> EvidenceState: ...
    @property
    def scheme(self) -> str | None: ...
    @property
    def valid_from(self) -> datetime | None: ...
    @property
    def valid_until(self) -> datetime | None: ...


def counts(item: Certification, now: datetime) -> bool:
    """Verified, and (for a certification) within its validity at `now`."""
    if item.state is not EvidenceState.VERIFIED:
        return False
    if item.valid_from is not None and now < item.valid_from:
        return False
    return item.valid_until is None or now < item.valid_until


def counting(now: datetime) -> ColumnElement[bool]:
    """`counts` as a SQL condition on `Evidence`."""
    return and_(
        Evidence.state == EvidenceState.VERIFIED,
        or_(Evidence.valid_from.is_(None), Evidence.valid_from <= now),
        or_(Evidence.valid_until.is_(None), Evidence.valid_until > now),
    )


def certified(scheme: str, now: datetime) -> ColumnElement[bool]:
    """SQL: the offer's provider holds counting evidence for `scheme` (the offer claiming it
    is checked by the caller)."""
    return (
        select(Evidence.id)
        .where(
            Evidence.provider_id == Offer.provider_id,
            Evidence.kind == EvidenceKind.CERTIFICATION,
            Evidence.scheme == scheme,
            counting(now),
        )
        .exists()
    )


def _of(provider: Provider, kind: EvidenceKind, *states: EvidenceState) -> list[Evidence]:
    return [e for e in provider.evidence if e.kind is kind and (not states or e.state in states)]


def valid_schemes(provider: Provider, now: datetime) -> frozenset[str]:
    """Schemes for which the provider holds counting evidence at `now`."""
    return frozenset(
        str(e.scheme) for e in _of(provider, EvidenceKind.CERTIFICATION) if counts(e, now)
    )


def claimable_schemes(provider: Provider) -> frozenset[str]:
    """Schemes an offer may name: evidence pending or verified (claims show, only counting
    evidence counts)."""
    return frozenset(str(e.scheme) for e in _of(provider, EvidenceKind.CERTIFICATION, *LIVE))


def best_certification(provider: Provider, scheme: str, now: datetime) -> Evidence | None:
    """The evidence to show for a scheme: counting (longest-lived) first, then the latest
    verified, then a pending claim."""
    return best_of(_of(provider, EvidenceKind.CERTIFICATION, *LIVE), scheme, now)


def best_of(candidates: Iterable[C], scheme: str, now: datetime) -> C | None:
    """`best_certification` among `candidates` (a provider's live certifications, in the
    order they were submitted: of equals, the latest submitted wins)."""
    ranked = sorted(
        (e for e in candidates if e.scheme == scheme),
        key=lambda e: (
            counts(e, now),
            e.state is EvidenceState.VERIFIED,
            e.valid_until or datetime.max.replace(tzinfo=now.tzinfo),
        ),
    )
    return ranked[-1] if ranked else None


# The columns of a certification a catalogue shows (`broker/api/offers.py`, `_claim`).
SHOWN_CERTIFICATION_COLUMNS = (
    Evidence.id,
    Evidence.provider_id,
    Evidence.state,
    Evidence.scheme,
    Evidence.level,
    Evidence.valid_from,
    Evidence.valid_until,
    Evidence.issuer,
    Evidence.evidence_url,
    Evidence.document_sha256,
    Evidence.statement,
    Evidence.decided_by,
    Evidence.decided_at,
)


def live_certifications(
    session: Session, provider_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, list[Row[Any]]]:
    """The live (pending or verified) certifications of each of `provider_ids`, as rows of
    `SHOWN_CERTIFICATION_COLUMNS` in the order `Provider.evidence` holds them: what
    `best_of` ranks for a page of offers, in one statement and without loading providers."""
    found: dict[uuid.UUID, list[Row[Any]]] = {provider_id: [] for provider_id in provider_ids}
    if not found:
        return found
    rows: Result[Any] = session.execute(
        select(*SHOWN_CERTIFICATION_COLUMNS)
        .where(
            Evidence.provider_id.in_(found),
            Evidence.kind == EvidenceKind.CERTIFICATION,
            Evidence.state.in_(LIVE),
        )
        .order_by(Evidence.submitted_at)
    )
    for row in rows:
        found[row.provider_id].append(row)
    return found


def verified_jurisdiction(provider: Provider) -> Evidence | None:
    verified = _of(provider, EvidenceKind.JURISDICTION, EvidenceState.VERIFIED)
    return max(verified, key=lambda e: e.decided_at or e.submitted_at) if verified else None


def recount(session: Session, provider: Provider) -> None:
    """Derive the provider's counting columns from its evidence, and carry changed region
    facts onto its offers (their region is the provider's, not part of the offer's text)."""
    jurisdiction = verified_jurisdiction(provider)
    disclosed = {
        exposure
        for e in _of(provider, EvidenceKind.JURISDICTION, EvidenceState.PENDING)
        for exposure in e.extraterritorial_exposure or []
    }
    if jurisdiction is not None:
        provider.operator_country = str(jurisdiction.operator_country)
        provider.parent_country = jurisdiction.parent_country
        exposure = set(jurisdiction.extraterritorial_exposure or []) | disclosed
        provider.exposed = bool(exposure)
    else:  # nobody vouched for its jurisdiction yet: it counts as exposed
        exposure = disclosed
        provider.exposed = True
    provider.extraterritorial_exposure = sorted(exposure)

    before = {region["code"]: region for region in provider.regions or []}
    verified = {
        str(e.region_code): {
            "code": e.region_code,
            "country": e.country,
            "city": e.city,
            "datacenter_tier": e.datacenter_tier,
        }
        for e in _of(provider, EvidenceKind.REGION, EvidenceState.VERIFIED)
    }
    # Regions keep their place; new ones come after, in the order they were vouched for.
    order = [code for code in before if code in verified]
    order += [code for code in verified if code not in before]
    regions = [verified[code] for code in order]
    provider.regions = regions
    for region in regions:
        if before.get(str(region["code"])) not in (None, region):
            session.execute(
                update(Offer)
                .where(Offer.provider_id == provider.id, Offer.region_code == region["code"])
                .values(
                    region_country=region["country"],
                    region_city=region["city"],
                    datacenter_tier=region["datacenter_tier"],
                    revision=Offer.revision + 1,
                )
                .execution_options(synchronize_session="fetch")
            )


# --- who vouches (the rule: `access.vouches`) ----------------------------------------------


def _name(caller: Caller | None) -> str:
    return caller.client_id if caller is not None else "consortium"


def _facts(item: Evidence) -> tuple[Any, ...]:
    return tuple(getattr(item, name) for name in FIELDS[item.kind])


def _same(item: Evidence, other: Evidence) -> bool:
    return item.kind is other.kind and _facts(item) == _facts(other)


def _new(
    caller: Caller | None,
    provider: Provider,
    kind: EvidenceKind,
    facts: dict[str, Any],
    now: datetime,
) -> Evidence:
    return Evidence(
        id=uuid.uuid4(),
        provider_id=provider.id,
        kind=kind,
        state=EvidenceState.PENDING,
        submitted_by=_name(caller),
        submitted_at=now,
        **facts,
    )


def _snapshot(item: Evidence) -> dict[str, Any]:
    return audit.snapshot(item, exclude=frozenset({"statement"}))


def _record(
    session: Session,
    caller: Caller | None,
    action: str,
    item: Evidence,
    provider: Provider,
    before: dict[str, Any] | None = None,
) -> None:
    session.flush()
    audit.record(
        session,
        caller,
        f"evidence.{action}",
        "evidence",
        item.id,
        organization_id=provider.organization_id,
        before=before,
        after=_snapshot(item),
    )


def _decide(
    session: Session,
    caller: Caller | None,
    item: Evidence,
    provider: Provider,
    state: EvidenceState,
    now: datetime,
    *,
    by: str | None = None,
    reason: str | None = None,
) -> None:
    before = _snapshot(item)
    if state is EvidenceState.VERIFIED:
        for older in _of(provider, item.kind, EvidenceState.VERIFIED):
            if older is not item and _replaces(item, older):
                _decide(
                    session,
                    caller,
                    older,
                    provider,
                    EvidenceState.SUPERSEDED,
                    now,
                    reason=f"Replaced by evidence {item.id}.",
                )
    item.state, item.reason = state, reason
    item.decided_by = by or _name(caller)
    item.decided_by_organization_id = caller.organization_id if caller is not None else None
    item.decided_at = now
    _record(session, caller, state.value, item, provider, before)


def _replaces(item: Evidence, older: Evidence) -> bool:
    """One verified jurisdiction, one verified record per region code; certifications of a
    scheme may overlap (a renewal verified before the old one runs out)."""
    if item.kind is EvidenceKind.JURISDICTION:
        return True
    return item.kind is EvidenceKind.REGION and item.region_code == older.region_code


def _claim(
    session: Session,
    caller: Caller | None,
    provider: Provider,
    item: Evidence,
    now: datetime,
) -> Evidence:
    """Add a claim: verified at once when the consortium vouches, pending otherwise."""
    provider.evidence.append(item)
    _record(session, caller, "submitted", item, provider)
    if access.vouches(caller, provider):
        _decide(session, caller, item, provider, EvidenceState.VERIFIED, now)
    return item


# --- claims from a provider document (POST/PATCH /v1/providers) -------------------------------


def _certification_facts(data: dict[str, Any]) -> dict[str, Any]:
    return {name: data.get(name) for name in CERTIFICATION_FIELDS}


def _jurisdiction_facts(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "operator_country": data["operator_country"],
        "parent_country": data.get("parent_country"),
        "extraterritorial_exposure": sorted(set(data.get("extraterritorial_exposure", []))),
    }


def _region_facts(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "region_code": data["code"],
        "country": data["country"],
        "city": data.get("city"),
        "datacenter_tier": data.get("datacenter_tier"),
    }


def _check_validity(facts: dict[str, Any], field: str = "valid_until") -> None:
    if facts["valid_until"] <= facts["valid_from"]:
        raise ValidationFailed(errors={field: ["Must be after valid_from."]})


def record_claims(
    session: Session, caller: Caller | None, provider: Provider, data: dict[str, Any], now: datetime
) -> None:
    """The sovereignty fields of a provider document as evidence.

    From the consortium, the document is the truth: what differs is verified, and verified
    evidence it leaves out (certifications without a signed statement, regions) is
    superseded. From anyone else, what differs from the counting and pending evidence becomes
    a pending claim and nothing else changes.
    """
    wanted: list[Evidence] = []
    if "compliance" in data:
        for index, item in enumerate(data["compliance"]):
            facts = _certification_facts(item)
            _check_validity(facts, f"compliance.{index}.valid_until")
            wanted.append(_new(caller, provider, EvidenceKind.CERTIFICATION, facts, now))
    if "jurisdiction" in data:
        facts = _jurisdiction_facts(data["jurisdiction"])
        wanted.append(_new(caller, provider, EvidenceKind.JURISDICTION, facts, now))
    if "regions" in data:
        codes = [region["code"] for region in data["regions"]]
        if len(set(codes)) != len(codes):
            raise ValidationFailed(errors={"regions": ["Region codes must be unique."]})
        for region in data["regions"]:
            wanted.append(_new(caller, provider, EvidenceKind.REGION, _region_facts(region), now))

    authoritative = access.vouches(caller, provider)
    live = EvidenceState.VERIFIED if authoritative else None
    for item in wanted:
        known = [
            e
            for e in _of(provider, item.kind, *LIVE)
            if live is None or e.state is live  # the consortium re-verifies a pending twin
        ]
        if not any(_same(item, existing) for existing in known):
            _claim(session, caller, provider, item, now)
    if authoritative:
        stale: list[Evidence] = []
        if "compliance" in data:
            stale += [
                e
                for e in _of(provider, EvidenceKind.CERTIFICATION, EvidenceState.VERIFIED)
                if e.statement is None and not any(_same(e, k) for k in wanted)
            ]
        if "regions" in data:
            stale += [
                e
                for e in _of(provider, EvidenceKind.REGION, EvidenceState.VERIFIED)
                if not any(_same(e, k) for k in wanted)
            ]
        for item in stale:
            _decide(
                session,
                caller,
                item,
                provider,
                EvidenceState.SUPERSEDED,
                now,
                reason="Left out of the provider's document by the consortium.",
            )
    recount(session, provider)


# --- claims one at a time (/v1/providers/{id}/evidence) ---------------------------------------


def _provider(session: Session, provider_id: uuid.UUID) -> Provider:
    provider = session.get(Provider, provider_id)
    if provider is None:
        raise NotFound("No such provider.")
    return provider


def trusted_keys(session: Session) -> list[TrustedKeys]:
    return [
        TrustedKeys(issuer=row.issuer, name=row.name, jwks=row.jwks)
        for row in session.scalars(select(TrustedIssuer))
    ]


def submit(
    session: Session, caller: Caller, provider_id: uuid.UUID, data: dict[str, Any], now: datetime
) -> Evidence:
    """One claim from a provider's operators (pending), or from the consortium (verified); a
    signed statement from a trusted issuer is verified by its signature."""
    provider = _provider(session, provider_id)
    if not access.sees_all_evidence(caller, provider):
        raise NotFound("No such provider among those you operate.")
    kind = EvidenceKind(data["kind"])
    if kind is EvidenceKind.CERTIFICATION and data.get("statement"):
        return _submit_statement(session, caller, provider, data["statement"], now)
    if kind is EvidenceKind.CERTIFICATION:
        facts = _certification_facts(data)
        _check_validity(facts)
    elif kind is EvidenceKind.JURISDICTION:
        facts = _jurisdiction_facts(data)
    else:  # a region claim names its code `region_code` (a provider document: `code`)
        facts = {name: data.get(name) for name in REGION_FIELDS}
    item = _new(caller, provider, kind, facts, now)
    duplicate = next((e for e in _of(provider, kind, *LIVE) if _same(item, e)), None)
    if duplicate is not None:
        raise Conflict(
            f"The same claim is {duplicate.state} already (evidence {duplicate.id}).",
            code="duplicate_evidence",
            evidence_id=str(duplicate.id),
        )
    _claim(session, caller, provider, item, now)
    recount(session, provider)
    _touch(provider)
    return item


def _submit_statement(
    session: Session, caller: Caller, provider: Provider, token: str, now: datetime
) -> Evidence:
    try:
        statement = verify_statement(
            token, trusted_keys(session), subject=str(provider.id), now=now
        )
    except StatementRejected as rejected:
        raise ValidationFailed(
            rejected.detail,
            code="statement_rejected",
            errors={"statement": [rejected.detail]},
            reason=rejected.code,
        ) from None
    issuer = session.scalars(
        select(TrustedIssuer).where(TrustedIssuer.issuer == statement.issuer)
    ).one()
    if any(e.statement == token for e in _of(provider, EvidenceKind.CERTIFICATION, *LIVE)):
        raise Conflict("This statement was submitted already.", code="duplicate_evidence")
    item = _new(
        caller,
        provider,
        EvidenceKind.CERTIFICATION,
        {
            "scheme": statement.scheme,
            "level": statement.level,
            "valid_from": statement.valid_from,
            "valid_until": statement.valid_until,
            "issuer": issuer.name,
            "document_sha256": statement.document_sha256,
            "statement": token,
            "trusted_issuer_id": issuer.id,
            "key_id": statement.key_id,
        },
        now,
    )
    provider.evidence.append(item)
    _record(session, caller, "submitted", item, provider)
    _settle(session, None, item, provider, EvidenceState.VERIFIED, now, by=issuer.name)
    return item


def _touch(provider: Provider) -> None:
    """The provider's document shows its evidence: a change is a new ETag."""
    provider.version += 1


def _settle(
    session: Session,
    caller: Caller | None,
    item: Evidence,
    provider: Provider,
    state: EvidenceState,
    now: datetime,
    *,
    by: str | None = None,
    reason: str | None = None,
) -> None:
    """Decide one claim, then bring what counts (and the provider's ETag) up to date."""
    _decide(session, caller, item, provider, state, now, by=by, reason=reason)
    recount(session, provider)
    _touch(provider)


def _evidence(session: Session, provider: Provider, evidence_id: uuid.UUID) -> Evidence:
    item = session.get(Evidence, evidence_id)
    if item is None or item.provider_id != provider.id:
        raise NotFound("No such evidence for this provider.")
    return item


def get(
    session: Session, caller: Caller, provider_id: uuid.UUID, evidence_id: uuid.UUID
) -> Evidence:
    provider = _provider(session, provider_id)
    item = _evidence(session, provider, evidence_id)
    if item.state is not EvidenceState.VERIFIED and not access.sees_all_evidence(caller, provider):
        raise NotFound("No such evidence for this provider.")
    return item


def _assessable(
    session: Session, caller: Caller, provider_id: uuid.UUID, evidence_id: uuid.UUID
) -> tuple[Provider, Evidence]:
    provider = _provider(session, provider_id)
    item = _evidence(session, provider, evidence_id)
    if caller.belongs_to(provider.organization_id):
        raise Forbidden(
            "You belong to this provider's organization: another assessor must decide.",
            code="own_organization",
        )
    return provider, item


def verify(
    session: Session, caller: Caller, provider_id: uuid.UUID, evidence_id: uuid.UUID, now: datetime
) -> Evidence:
    """An assessor vouches for a pending claim: from now on it counts (until it expires)."""
    provider, item = _assessable(session, caller, provider_id, evidence_id)
    if item.state is not EvidenceState.PENDING:
        raise Conflict(
            f"Only pending evidence can be verified; this is {item.state}.", code="not_pending"
        )
    if (
        item.kind is EvidenceKind.CERTIFICATION
        and item.valid_until is not None
        and item.valid_until <= now
    ):
        raise Conflict("This certificate has expired: it cannot be verified.", code="expired")
    _settle(session, caller, item, provider, EvidenceState.VERIFIED, now)
    return item


def reject(
    session: Session,
    caller: Caller,
    provider_id: uuid.UUID,
    evidence_id: uuid.UUID,
    reason: str,
    now: datetime,
) -> Evidence:
    """An assessor refuses a pending claim, or revokes a verified certification (say, its
    certificate was suspended). A verified jurisdiction or region is replaced, not revoked."""
    provider, item = _assessable(session, caller, provider_id, evidence_id)
    revocable = item.state is EvidenceState.VERIFIED and item.kind is EvidenceKind.CERTIFICATION
    if item.state is not EvidenceState.PENDING and not revocable:
        raise Conflict(
            f"This evidence is {item.state}: only pending claims and verified certifications "
            "can be rejected (a verified jurisdiction or region is replaced by verifying "
            "another).",
            code="not_rejectable",
        )
    _settle(session, caller, item, provider, EvidenceState.REJECTED, now, reason=reason)
    return item


def withdrawable(item: Evidence) -> bool:
    """What its operators may take back: a pending claim, or a verified certification."""
    return item.state is EvidenceState.PENDING or (
        item.state is EvidenceState.VERIFIED and item.kind is EvidenceKind.CERTIFICATION
    )


def withdraw(
    session: Session, caller: Caller, provider_id: uuid.UUID, evidence_id: uuid.UUID, now: datetime
) -> Evidence:
    """A provider's operators take back a pending claim or a verified certification (giving
    up a claim needs nobody's word); its jurisdiction and regions change only by new claims."""
    provider = _provider(session, provider_id)
    if not access.operates(caller, provider):
        raise NotFound("No such provider among those you operate.")
    item = _evidence(session, provider, evidence_id)
    if not withdrawable(item):
        raise Conflict(
            f"This evidence is {item.state}: only pending claims and verified certifications "
            "can be withdrawn.",
            code="not_withdrawable",
        )
    _settle(session, caller, item, provider, EvidenceState.WITHDRAWN, now)
    return item


def list_evidence(
    session: Session,
    caller: Caller,
    *,
    provider_id: uuid.UUID | None = None,
    state: EvidenceState | None = None,
    kind: EvidenceKind | None = None,
    limit: int,
    cursor: str | None,
) -> Page[Evidence]:
    """A provider's evidence (others than its operators and the consortium see the verified
    records only), or — for the consortium, without a provider — the assessors' queue."""
    statement = select(Evidence)
    if provider_id is not None:
        provider = _provider(session, provider_id)
        statement = statement.where(Evidence.provider_id == provider.id)
        if not access.sees_all_evidence(caller, provider):
            statement = statement.where(Evidence.state == EvidenceState.VERIFIED)
    elif not access.is_assessor_or_admin(caller):
        raise Forbidden(
            "The evidence queue is the consortium's. "
            + access.missing_roles(caller, Role.ASSESSOR, Role.ADMIN)
        )
    if state is not None:
        statement = statement.where(Evidence.state == state)
    if kind is not None:
        statement = statement.where(Evidence.kind == kind)
    return paginate(
        session,
        statement,
        [Evidence.submitted_at, Evidence.id],
        limit=limit,
        cursor=cursor,
        scope=f"{provider_id}:{state}:{kind}",
    )


def decided_by_organization(session: Session, item: Evidence) -> str | None:
    """The name of the organization whose member vouched (None: the system or a signature)."""
    if item.decided_by_organization_id is None:
        return None
    organization = session.get(Organization, item.decided_by_organization_id)
    return organization.name if organization is not None else None


# --- trusted issuers' keys --------------------------------------------------------------------


def revoke_statements(
    session: Session,
    issuer: TrustedIssuer,
    kept_key_ids: Iterable[str],
    actor: Caller,
    now: datetime,
) -> None:
    """Statements signed with a key no longer trusted stop counting (rejected, with why)."""
    kept = set(kept_key_ids)
    signed = session.scalars(
        select(Evidence).where(
            Evidence.trusted_issuer_id == issuer.id, Evidence.state == EvidenceState.VERIFIED
        )
    ).all()
    for item in signed:
        if item.key_id in kept:
            continue
        provider = _provider(session, item.provider_id)
        reason = f"The key {item.key_id!r} of {issuer.name} is no longer trusted."
        _settle(session, actor, item, provider, EvidenceState.REJECTED, now, reason=reason)
