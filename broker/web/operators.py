"""The provider operator's pages: their provider and its evidence, their offers (drafts,
versions, publishing, sync from the cloud), the machines running on their cloud and the usage
recorded for them.

An operator acts for their provider organization: every page lists the providers that
organization operates (`providers.operated_by`), and every change goes through the same
services (and access rules) as the API's. The offer form hides the ETag: it carries the
offer's revision in a hidden field, sent back as the `If-Match` the service checks.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import marshmallow as ma
from flask import Response, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from billing.invoicing import STANDARD, TAX_CATEGORIES
from billing.metering import shown
from billing.rating import KIND_METRICS, METRICS, STORED_GIB_BASIS
from broker import access
from broker.api.base import database, now, provider_runtime, request_session
from broker.api.evidence import EvidenceClaimSchema
from broker.api.offers import OfferCreateSchema, OfferPatchSchema, load_specs
from broker.api.schemas import ListArgs
from broker.errors import BrokerError, NotFound
from broker.models import EvidenceState, Offer, OfferState, Provider, Role
from broker.services import adapters, offer_sync
from broker.services import evidence as evidence_service
from broker.services import offers as offers_service
from broker.services import providers as providers_service
from broker.services import resources as resources_service
from broker.services import usage as usage_service
from broker.web.i18n import decimal_text
from broker.web.pages import (
    Problem,
    bp,
    caller,
    cursor_arg,
    done,
    filters,
    form_page,
    page,
    precondition,
    problem_of,
    query_args,
    render,
    whole_number,
)
from broker.web.words import KIND_LABELS, TAX_LABELS, metric_label, state_label

OPERATOR = (Role.PROVIDER,)
PAGE_SIZE = 50

# The evidence of a provider, in the order a person looks for it.
EVIDENCE_GROUPS = (
    EvidenceState.PENDING,
    EvidenceState.VERIFIED,
    EvidenceState.REJECTED,
    EvidenceState.WITHDRAWN,
)


def _operated() -> list[Provider]:
    return providers_service.operated_by(request_session(), caller())


# --- their provider and its evidence -------------------------------------------------------


def _evidence_by_state(provider: Provider) -> dict[EvidenceState, list[Any]]:
    grouped: dict[EvidenceState, list[Any]] = {state: [] for state in EVIDENCE_GROUPS}
    for item in sorted(provider.evidence, key=lambda e: e.submitted_at, reverse=True):
        grouped.setdefault(item.state, []).append(item)
    return grouped


def _home(problem: Problem | None = None, form: Mapping[str, str] | None = None) -> Response:
    providers = _operated()
    return render(
        "console/provider/home.html",
        200 if problem is None else problem.status,
        providers=providers,
        evidence={p.id: _evidence_by_state(p) for p in providers},
        groups=EVIDENCE_GROUPS,
        form=form or {},
        problem=problem,
        withdrawable=evidence_service.withdrawable,
    )


@bp.get("/provider")
@page(*OPERATOR)
def provider_home() -> Response:
    """Their provider: where it is, which law reaches it, and its evidence by state."""
    return _home()


# The fields of each kind of claim, as the form names them.
CLAIM_FIELDS: Mapping[str, tuple[str, ...]] = {
    "certification": evidence_service.CERTIFICATION_FIELDS,
    "statement": ("statement",),
    "jurisdiction": evidence_service.JURISDICTION_FIELDS,
    "region": evidence_service.REGION_FIELDS,
}


def _instant(value: str) -> str:
    """A date from a date field as the start of that day (UTC); anything else as typed."""
    return f"{value}T00:00:00Z" if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else value


def _claim(form: Mapping[str, str]) -> dict[str, Any]:
    """The claim the form describes, as the API's evidence schema reads it. Fields left
    empty are not sent (the optional ones are then null)."""
    form_kind = form.get("kind", "")
    names = CLAIM_FIELDS.get(form_kind)
    if names is None:
        raise ma.ValidationError({"kind": ["One of: certification, jurisdiction, region."]})
    claim: dict[str, Any] = {"kind": "certification" if form_kind == "statement" else form_kind}
    for name in names:
        value = (form.get(name) or "").strip()
        if not value:
            continue
        if name in ("valid_from", "valid_until"):
            claim[name] = _instant(value)
        elif name in ("operator_country", "parent_country", "country"):
            claim[name] = value.upper()
        elif name == "document_sha256":
            claim[name] = value.lower()
        elif name == "extraterritorial_exposure":
            claim[name] = [code.upper() for code in re.split(r"[\s,;]+", value) if code]
        elif name == "datacenter_tier":
            claim[name] = whole_number(value)
        else:
            claim[name] = value
    return claim


@bp.post("/provider/evidence")
@page(*OPERATOR)
def submit_evidence() -> BaseResponse:
    """Claim a certification, a jurisdiction or a region: pending until an assessor decides
    (a signed statement from a trusted issuer is verified by its signature)."""
    form = request.form.to_dict()
    try:
        provider_id = uuid.UUID(form.get("provider_id", ""))
    except ValueError:
        raise NotFound("No such provider among those you operate.") from None
    try:
        claim = EvidenceClaimSchema().load(_claim(form))
        item = evidence_service.submit(request_session(), caller(), provider_id, claim, now())
    except NotFound:
        raise
    except (ma.ValidationError, BrokerError) as error:
        return _home(problem_of(error), form)
    if item.state is EvidenceState.VERIFIED:
        return done("console.provider_home", gettext("The signed statement was verified."))
    return done(
        "console.provider_home", gettext("Your claim was submitted: an assessor will decide.")
    )


@bp.post("/provider/evidence/<uuid:provider_id>/<uuid:evidence_id>/withdraw")
@page(*OPERATOR)
def withdraw_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> BaseResponse:
    """Take back a pending claim or a verified certification."""
    try:
        evidence_service.withdraw(request_session(), caller(), provider_id, evidence_id, now())
    except NotFound:
        raise
    except BrokerError as error:
        return _home(problem_of(error))
    return done("console.provider_home", gettext("The evidence was withdrawn."))


# --- offers -----------------------------------------------------------------------------------


class OfferListArgs(ListArgs):
    state = ma.fields.Enum(OfferState, by_value=True, load_default=None)


@bp.get("/provider/offers")
@page(*OPERATOR)
def provider_offers() -> Response:
    """Every version of their offers, the latest sync from their cloud and its result."""
    args = query_args()
    loaded, problem = filters(OfferListArgs, args)
    session = request_session()
    providers = _operated()
    found = offers_service.provider_offers(
        session,
        caller(),
        state=loaded["state"],
        limit=loaded["limit"],
        cursor=loaded["cursor"],
    )
    return render(
        "console/provider/offers.html",
        200 if problem is None else 422,
        providers=providers,
        page=found,
        args=args,
        syncs={p.id: offer_sync.latest_sync(session, p.id) for p in providers},
        states=[(s.value, state_label(s)) for s in OfferState],
        problem=problem,
    )


@bp.post("/provider/offers/sync")
@page(*OPERATOR)
def sync_offers() -> BaseResponse:
    """Ask for the cloud's machine types to be imported as drafts (in the background)."""
    try:
        provider_id = uuid.UUID(request.form.get("provider_id", ""))
    except ValueError:
        raise NotFound("No such provider among those you operate.") from None
    offer_sync.request_sync(request_session(), caller(), provider_id)
    return done(
        "console.provider_offers",
        gettext("Sync requested: the cloud's machine types appear here as drafts once it has run."),
    )


def _values_of(offer: Offer) -> dict[str, Any]:
    """What the offer form shows for an offer as stored."""
    prices = {
        item["metric"]: {
            "unit_price": item["unit_price"],
            "tax_category": item.get("tax_category", STANDARD),
            "tiers": json.dumps(item["tiers"]) if item.get("tiers") else "",
        }
        for item in offer.prices or []
    }
    return {
        "provider_id": str(offer.provider_id),
        "kind": offer.kind,
        "sku": offer.sku,
        "name": offer.name,
        "region": offer.region_code,
        "specs.vcpu": offer.vcpu,
        "specs.ram_gib": offers_service.gib(offer.ram_gib).normalize(),
        "specs.disk_gib": offer.disk_gib,
        "specs.gpu": offer.gpu,
        "specs.size_gib": offer.size_gib or "",
        "specs.performance": offer.performance or "",
        "specs.iops": offer.iops or "",
        "specs.encrypted": offer.encrypted,
        "specs.versioning": offer.versioning,
        "specs.immutability_days": offer.immutability_days or "",
        "currency": offer.currency,
        "prices": prices,
        "compliance": set(offer.compliance_schemes),
    }


# The specs fields of the form (`specs.<name>`), and those that are ticked boxes.
SPEC_FIELDS = tuple(
    dict.fromkeys(name for names in offers_service.KIND_SPECS.values() for name in names)
)
SPEC_BOXES = ("encrypted", "versioning")


def _kind_of(value: str | None) -> str:
    """The kind of offer a form names (a machine unless it names another kind)."""
    return value if value in offers_service.KIND_SPECS else "vm"


def _values_from_form() -> dict[str, Any]:
    """What the person typed, to show the form again."""
    form = request.form
    values: dict[str, Any] = {
        name: form.get(name, "")
        for name in ("provider_id", "sku", "name", "region", "currency")
        + tuple(f"specs.{spec}" for spec in SPEC_FIELDS if spec not in SPEC_BOXES)
    }
    values["kind"] = _kind_of(form.get("kind"))
    values.update({f"specs.{box}": form.get(f"specs.{box}") == "true" for box in SPEC_BOXES})
    values["prices"] = {
        metric: {
            "unit_price": form.get(f"prices.{metric}.unit_price", ""),
            "tax_category": form.get(f"prices.{metric}.tax_category", STANDARD),
            "tiers": form.get(f"prices.{metric}.tiers", ""),
        }
        for metric in METRICS
    }
    values["compliance"] = set(form.getlist("compliance"))
    return values


def _specs(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The specs of `kind` the form describes, as the API's specs schema of that kind reads
    them (optional fields left empty are not sent: they take their defaults)."""
    if kind == "volume":
        specs: dict[str, Any] = {
            "size_gib": whole_number(str(values["specs.size_gib"])),
            "encrypted": bool(values["specs.encrypted"]),
        }
        if str(values["specs.performance"]).strip():
            specs["performance"] = str(values["specs.performance"]).strip()
        if str(values["specs.iops"]).strip():
            specs["iops"] = whole_number(str(values["specs.iops"]))
        return specs
    if kind == "object_storage":
        specs = {
            "encrypted": bool(values["specs.encrypted"]),
            "versioning": bool(values["specs.versioning"]),
        }
        if str(values["specs.immutability_days"]).strip():
            specs["immutability_days"] = whole_number(str(values["specs.immutability_days"]))
        return specs
    return {
        "vcpu": whole_number(str(values["specs.vcpu"])),
        "ram_gib": decimal_text(str(values["specs.ram_gib"])),
        "disk_gib": whole_number(str(values["specs.disk_gib"]) or "0"),
        "gpu": whole_number(str(values["specs.gpu"]) or "0"),
    }


def _document(values: Mapping[str, Any], *, creating: bool) -> tuple[dict[str, Any], list[str]]:
    """The offer document the form describes, as the API's schema reads it, and the metrics
    of its prices in order (to put the schema's messages back by the right row). Only the
    metrics the offer's kind is priced by are read."""
    kind = _kind_of(values.get("kind"))
    data: dict[str, Any] = {}
    if creating:
        data["provider_id"] = values["provider_id"]
        data["sku"] = values["sku"].strip()
        data["kind"] = kind
    data["name"] = values["name"].strip()
    data["region"] = values["region"]
    data["specs"] = _specs(kind, values)
    prices, metrics = [], []
    for metric in KIND_METRICS[kind]:
        row = values["prices"].get(metric) or {}
        unit_price = decimal_text(row.get("unit_price"))
        if not unit_price:
            continue
        price: dict[str, Any] = {
            "metric": metric,
            "unit_price": unit_price,
            "currency": values["currency"],
            "tax_category": row.get("tax_category") or STANDARD,
        }
        try:
            tiers = json.loads(row.get("tiers") or "null")
        except ValueError:
            tiers = None
        if isinstance(tiers, list) and tiers:
            price["tiers"] = tiers
        prices.append(price)
        metrics.append(metric)
    data["prices"] = prices
    data["compliance"] = sorted(values["compliance"])
    return data, metrics


def _by_row(problem: Problem, metrics: list[str]) -> Problem:
    """The schema names a price by its place in the list; the form by its metric."""
    fields: dict[str, list[str]] = {}
    for name, messages in problem.fields.items():
        match = re.fullmatch(r"prices\.(\d+)(?:\.(\w+))?", name)
        if match and int(match.group(1)) < len(metrics):
            part = match.group(2)
            metric = metrics[int(match.group(1))]
            name = "currency" if part == "currency" else f"prices.{metric}.unit_price"
            if part == "tax_category":
                name = f"prices.{metric}.tax_category"
        fields.setdefault(name, []).extend(messages)
    problem.fields = fields
    return problem


def _choices(provider: Provider, offer: Offer | None, kind: str = "vm") -> dict[str, Any]:
    regions = [
        (
            region["code"],
            f"{region['code']} — {region.get('city') or ''} ({region['country']})",
        )
        for region in provider.regions
    ]
    schemes = set(evidence_service.claimable_schemes(provider))
    if offer is not None:
        schemes |= set(offer.compliance_schemes)
    return {
        "regions": regions,
        "schemes": sorted(schemes),
        "metrics": list(KIND_METRICS[offer.kind if offer is not None else kind]),
        "units_of": METRICS,
        "stored_basis": STORED_GIB_BASIS,
        "kind": offer.kind if offer is not None else kind,
        "kinds": [(name, KIND_LABELS[name]) for name in offers_service.KIND_SPECS],
        "taxes": [(code, TAX_LABELS.get(code, code)) for code in TAX_CATEGORIES],
        "currencies": [("EUR", "EUR"), ("CAD", "CAD")],
    }


def _new_offer_page(values: dict[str, Any], problem: Problem | None = None) -> Response:
    providers = _operated()
    if not providers:
        raise NotFound("No such provider among those you operate.")
    chosen = next((p for p in providers if str(p.id) == values.get("provider_id")), providers[0])
    context = dict(
        providers=providers,
        provider_choices=[(str(p.id), p.name) for p in providers],
        provider=chosen,
        offer=None,
        values=values,
        **_choices(chosen, None, _kind_of(values.get("kind"))),
    )
    if problem is not None:
        return form_page("console/provider/new_offer.html", problem, **context)
    return render("console/provider/new_offer.html", **context)


@bp.route("/provider/offers/new", methods=["GET", "POST"])
@page(*OPERATOR)
def new_offer() -> BaseResponse:
    """A new offer of a kind (`?kind=`: a machine, a volume, object storage), made as a
    draft: the form asks for that kind's specs and its metrics' prices."""
    if request.method == "GET":
        providers = _operated()
        provider_id = request.args.get("provider") or (str(providers[0].id) if providers else "")
        chosen = next((p for p in providers if str(p.id) == provider_id), None)
        currency = "CAD" if chosen is not None and chosen.operator_country == "CA" else "EUR"
        values: dict[str, Any] = {
            "provider_id": provider_id,
            "kind": _kind_of(request.args.get("kind")),
            "sku": "",
            "name": "",
            "region": "",
            "specs.vcpu": "",
            "specs.ram_gib": "",
            "specs.disk_gib": "0",
            "specs.gpu": "0",
            "specs.size_gib": "",
            "specs.performance": "standard",
            "specs.iops": "",
            "specs.encrypted": True,
            "specs.versioning": False,
            "specs.immutability_days": "",
            "currency": currency,
            "prices": {},
            "compliance": None,  # none chosen yet: every scheme held is ticked
        }
        return _new_offer_page(values)
    values = _values_from_form()
    data, metrics = _document(values, creating=True)
    try:
        offer = offers_service.create_offer(
            request_session(), caller(), OfferCreateSchema().load(data)
        )
    except (ma.ValidationError, BrokerError) as error:
        if isinstance(error, NotFound):
            raise
        return _new_offer_page(values, _by_row(problem_of(error), metrics))
    return done(
        "console.provider_offer",
        gettext("Offer %(sku)s created as a draft.", sku=offer.sku),
        offer_id=offer.id,
    )


def _own_offer(offer_id: uuid.UUID) -> Offer:
    offer = offers_service.get_offer(request_session(), caller(), offer_id)
    if not access.operates(caller(), offer.provider):
        raise NotFound("No such offer.")
    return offer


def _offer_page(
    offer: Offer, values: dict[str, Any] | None = None, problem: Problem | None = None
) -> Response:
    context = dict(
        offer=offer,
        provider=offer.provider,
        values=values if values is not None else _values_of(offer),
        versions=offers_service.versions(request_session(), offer),
        **_choices(offer.provider, offer),
    )
    if problem is not None:
        return form_page("console/provider/offer.html", problem, **context)
    return render("console/provider/offer.html", **context)


@bp.route("/provider/offers/<uuid:offer_id>", methods=["GET", "POST"])
@page(*OPERATOR)
def provider_offer(offer_id: uuid.UUID) -> BaseResponse:
    """One version of an offer: its form (a draft is edited in place; a published version
    gets its next version as a draft), its versions, publish and retire."""
    offer = _own_offer(offer_id)
    if request.method == "GET":
        return _offer_page(offer)
    values = {**_values_from_form(), "kind": offer.kind}
    data, metrics = _document(values, creating=False)
    revision = request.form.get("revision", "")
    if_match = precondition(revision)
    try:
        changes = OfferPatchSchema().load(data)
        changes["specs"] = load_specs(offer.kind, changes["specs"])  # as the API checks them
        edit = offers_service.edit_offer(
            request_session(),
            caller(),
            offer_id,
            if_match=if_match,
            changes=changes,
        )
    except ma.ValidationError as error:
        return _offer_page(offer, values, _by_row(problem_of(error), metrics))
    except BrokerError as error:
        if error.code in ("precondition_failed", "precondition_required"):
            # Someone changed it meanwhile: the form shows what is stored now.
            return _offer_page(offer, None, problem_of(error))
        return _offer_page(offer, values, _by_row(problem_of(error), metrics))
    if edit.created:
        return done(
            "console.provider_offer",
            gettext("Version %(version)s created as a draft.", version=edit.offer.version),
            offer_id=edit.offer.id,
        )
    return done("console.provider_offer", gettext("Your changes were saved."), offer_id=offer_id)


@bp.post("/provider/offers/<uuid:offer_id>/publish")
@page(*OPERATOR)
def publish_offer(offer_id: uuid.UUID) -> BaseResponse:
    """Put a draft in the catalogue; the version it replaces is retired. A SKU the cloud does
    not sell (when its adapter can tell) is refused."""
    offer = _own_offer(offer_id)
    sold = adapters.machine_types(database(), offer_id, provider_runtime())
    try:
        offers_service.publish_offer(request_session(), caller(), offer_id, sold=sold)
    except NotFound:
        raise
    except BrokerError as error:
        return _offer_page(offer, None, problem_of(error))
    return done(
        "console.provider_offer",
        gettext("Version %(version)s is published.", version=offer.version),
        offer_id=offer_id,
    )


@bp.post("/provider/offers/<uuid:offer_id>/retire")
@page(*OPERATOR)
def retire_offer(offer_id: uuid.UUID) -> BaseResponse:
    """Take an offer out of the catalogue (orders already placed keep their version)."""
    offer = _own_offer(offer_id)
    try:
        offers_service.retire_offer(request_session(), caller(), offer_id)
    except NotFound:
        raise
    except BrokerError as error:
        return _offer_page(offer, None, problem_of(error))
    return done(
        "console.provider_offer",
        gettext("Version %(version)s is retired.", version=offer.version),
        offer_id=offer_id,
    )


# --- machines and usage ------------------------------------------------------------------------


@bp.get("/provider/machines")
@page(*OPERATOR)
def provider_machines() -> Response:
    """The machines running on their cloud, every agency's, newest first."""
    session = request_session()
    found = resources_service.provider_machines(
        session, caller(), limit=PAGE_SIZE, cursor=cursor_arg()
    )
    agencies, offers = resources_service.machine_labels(session, found.items)
    return render(
        "console/provider/machines.html",
        page=found,
        agencies=agencies,
        offers=offers,
        providers={p.id: p for p in _operated()},
    )


@bp.get("/provider/usage")
@page(*OPERATOR)
def provider_usage() -> Response:
    """The usage recorded for machines on their cloud, newest first: pushed by them, read from
    the cloud, or metered by the broker."""
    metric = request.args.get("metric") or None
    if metric is not None and metric not in METRICS:
        metric = None
    found = usage_service.list_usage(
        request_session(), caller(), limit=PAGE_SIZE, cursor=cursor_arg(), metric=metric
    )
    return render(
        "console/provider/usage.html",
        page=found,
        metric=metric or "",
        metrics=[(m, metric_label(m)) for m in METRICS],
        quantities={record.id: shown(record.quantity) for record in found.items},
    )
