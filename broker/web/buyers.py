"""The buyer's pages: the catalogue, an offer, a comparison, the order form, orders,
resources (machines, volumes, buckets: the pages keep the `/machines` address) and usage.
Searches are GET forms whose filters live in the query string (bookmarkable, shareable,
working without JavaScript); changes are POST forms.

Every figure comes from the services the API calls: a comparison's prices and the order
form's verdict from `quotes.quote` (the rating code and the policy check an order runs), a
resource's cost from `resources.cost_this_period`, its days from `resources.cost_by_day`. A
bucket's secret key is shown once, on the page that answers the POST asking for it (never in a
redirect, a link or a flashed notice; console pages are never cached).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Response, current_app, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from billing.metering import parse_period, period_of
from billing.metering import shown as rounded_quantity
from billing.rating import STORED_GIB_BASIS, estimate
from broker import access
from broker.api.base import database, now, provider_runtime, request_session
from broker.api.idempotency import idempotent
from broker.api.limits import expensive
from broker.api.offers import SearchArgs
from broker.api.orders import OrderCreateSchema, OrderListArgs
from broker.api.resources import ActionSchema, ResourceListArgs
from broker.auth.identity import Caller
from broker.errors import BrokerError, NotFound, ValidationFailed
from broker.models import (
    Offer,
    OfferState,
    OrderState,
    ProviderState,
    Resource,
    ResourceState,
    Role,
)
from broker.services import billing_profiles, quotes, storage
from broker.services import offers as offers_service
from broker.services import orders as orders_service
from broker.services import resources as resources_service
from broker.web.pages import (
    ONCE_FIELD,
    Problem,
    bp,
    caller,
    done,
    filters,
    form_page,
    page,
    problem_of,
    query_args,
    render,
    whole_number,
)
from broker.web.words import KIND_CHOICES, action_done, state_label

BUYING = (Role.BUYER, Role.APPROVER)
# Who reads an agency's orders and machines (as the API: admins read every agency's).
READING = (Role.BUYER, Role.APPROVER, Role.ADMIN)
COMPARED = (2, 4)  # fewest and most offers side by side


# --- catalogue and offers --------------------------------------------------------------------


@bp.get("/catalogue")
@page()
@expensive
def catalogue() -> Response:
    """Search the catalogue with every filter of the API, sorted, a page at a time."""
    args = query_args()
    search, problem = filters(SearchArgs, args)
    limit, cursor = search.pop("limit"), search.pop("cursor")
    session = request_session()
    try:
        found = offers_service.search_offers(
            session,
            caller(),
            offers_service.Search(**search),
            now=now(),
            limit=limit,
            cursor=cursor,
        )
    except BrokerError as error:  # filters that cannot go together: said by the form
        problem = problem_of(error)
        found = offers_service.search_offers(
            session, caller(), offers_service.Search(), now=now(), limit=limit, cursor=""
        )
    return render(
        "console/catalogue.html",
        200 if problem is None else 422,
        page=found,
        args=args,
        claims={offer.id: offers_service.claims(offer, now()) for offer in found.items},
        schemes=[(scheme, scheme) for scheme in offers_service.claimed_schemes(session)],
        kinds=[(kind, KIND_CHOICES[kind]) for kind in offers_service.KIND_SPECS],
        sorts=list(offers_service.SORTS),
        stored_basis=STORED_GIB_BASIS,
        problem=problem,
    )


def _orderable(person: Caller, offer: Offer) -> bool:
    """Whether the page offers to order it: a buyer, a published offer, an active provider."""
    return (
        access.has_any_role(person, Role.BUYER)
        and offer.state is OfferState.PUBLISHED
        and offer.provider.state is ProviderState.ACTIVE
    )


@bp.get("/catalogue/<uuid:offer_id>")
@page()
def offer(offer_id: uuid.UUID) -> Response:
    """An offer: specs, place, provider and jurisdiction, prices, the evidence behind each
    scheme it claims, its versions, and the way to order it."""
    session, person = request_session(), caller()
    shown = offers_service.get_offer(session, person, offer_id)
    versions = [
        version
        for version in offers_service.versions(session, shown)
        if version.published_at is not None or access.operates(person, shown.provider)
    ]
    return render(
        "console/offer.html",
        offer=shown,
        claims=offers_service.claims(shown, now()),
        versions=versions,
        may_order=_orderable(person, shown),
        stored_basis=STORED_GIB_BASIS,
    )


class CompareArgs(ma.Schema):
    """The comparison's query string: the offers, and what to price (as the API's quotes;
    a bucket is priced for the 1,000 GiB a month its monthly price is for)."""

    offer = ma.fields.List(ma.fields.UUID(), load_default=list)
    quantity = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1, max=1000))
    hours = ma.fields.Integer(load_default=730, validate=ma.validate.Range(min=1, max=8784))


def _cost(offer: Offer, quantity: int, hours: int) -> Decimal | None:
    """What `quantity` units of `offer` (machines, volumes, buckets storing the comparison's
    1,000 GiB) for `hours` cost, as invoices charge them: each unit rated on its own (as
    `orders.order_monthly_cost` counts an order), times the quantity. None for a draft
    imported without prices."""
    if not offer.prices:
        return None
    prices, specs = offers_service.prices_of(offer), offers_service.specs_of(offer)
    return estimate(prices, specs, quantity=1, hours=Decimal(hours)).total * quantity


def _verdict(person: Caller, offer: Offer, quantity: int) -> quotes.Quote | None:
    """What the person's agency's policy says of ordering `quantity` machines of `offer`
    (None for someone who does not buy, or an offer that cannot be ordered)."""
    if not access.has_any_role(person, *BUYING) or offer.state is not OfferState.PUBLISHED:
        return None
    return _quote(offer, quantity)


@bp.get("/compare")
@page()
@expensive
def compare() -> Response:
    """Two to four offers of any kind side by side, each priced for the chosen quantity; a
    spec shows where it applies to the offer's kind."""
    raw: dict[str, Any] = {"offer": [i for i in request.args.getlist("offer") if i.strip()]}
    raw.update({k: request.args[k] for k in ("quantity", "hours") if request.args.get(k, "")})
    context: dict[str, Any] = {"args": raw, "columns": []}
    try:
        loaded = CompareArgs().load(raw)
    except ma.ValidationError as error:
        return form_page("console/compare.html", error, **context)
    ids = list(dict.fromkeys(loaded["offer"]))  # each offer once, in the order ticked
    if not COMPARED[0] <= len(ids) <= COMPARED[1]:
        words = gettext(
            "Choose between two and four offers to compare; you chose %(count)s.",
            count=len(ids),
        )
        return form_page("console/compare.html", Problem(words, {"offer": [words]}), **context)
    session, person = request_session(), caller()
    quantity, hours = loaded["quantity"], loaded["hours"]
    for offer_id in ids:
        shown = offers_service.get_offer(session, person, offer_id)
        quote = _verdict(person, shown, quantity)
        context["columns"].append(
            {
                "offer": shown,
                "claims": offers_service.claims(shown, now()),
                "cost": _cost(shown, quantity, hours),
                "quote": quote,
                "may_order": _orderable(person, shown) and (quote is None or quote.allowed),
            }
        )
    kinds = {column["offer"].kind for column in context["columns"]}
    return render(
        "console/compare.html",
        quantity=quantity,
        hours=hours,
        ids=ids,
        kinds=kinds,
        machines_only=kinds == {"vm"},
        stored_basis=STORED_GIB_BASIS,
        **context,
    )


# --- ordering --------------------------------------------------------------------------------

# The public buyer's references an order carries to its invoices (EN 16931 BT-10: the service
# code, BT-13: the commitment number). Left empty, the agency's billing profile's apply.
REFERENCE_FIELDS = ("buyer_reference", "purchase_order_reference")
ORDER_FIELDS = (
    "quantity",
    "name",
    "parameters.image",
    "parameters.ssh_public_key",
    "stored_gib",
    *REFERENCE_FIELDS,
)
# The parameters a machine's order takes; volumes and buckets take none.
MACHINE_PARAMETERS = ("parameters.image", "parameters.ssh_public_key")
MAX_QUANTITY = 20  # resources in one order, as the API's order schema allows
MAX_STORED_GIB = 1_048_576  # as the API's quote takes it


def _order_data(offer: Offer, values: Mapping[str, str]) -> dict[str, Any]:
    """The form's fields checked by the API's own order schema (a reference left empty is
    absent, as in the API: the billing profile's default applies)."""
    parameters = {
        name.removeprefix("parameters."): values[name].strip()
        for name in MACHINE_PARAMETERS
        if offer.kind == "vm" and values.get(name, "").strip()
    }
    body: dict[str, Any] = {
        "offer_id": str(offer.id),
        "quantity": whole_number(values.get("quantity", "")),
        "name": values.get("name", "").strip(),
        "parameters": parameters,
    }
    body.update(
        {name: values[name].strip() for name in REFERENCE_FIELDS if values.get(name, "").strip()}
    )
    return dict(OrderCreateSchema().load(body))


def _billing_profile() -> dict[str, Any]:
    """The person's agency's billing profile: the references it fills in and requires."""
    person = caller()
    return billing_profiles.get_profile(
        request_session(), person, person.organization_id, current_app.config
    )


def _order_problem(error: BrokerError | ma.ValidationError) -> Problem:
    """An order's refusal in the person's words; a reference the billing profile requires and
    the order lacks (`orders.invoice_references`, whose sentence is in English) said by its
    field in their language."""
    shown = problem_of(error)
    if isinstance(error, ValidationFailed):
        required = {
            "buyer_reference": gettext(
                "Your agency requires a service code on every order: enter one."
            ),
            "purchase_order_reference": gettext(
                "Your agency requires a commitment number on every order: enter one."
            ),
        }
        for name in required.keys() & shown.fields.keys():
            shown.fields[name] = [required[name]]
    return shown


def _stored_gib(offer: Offer, values: Mapping[str, str]) -> int | None:
    """The GiB a bucket is expected to store, as typed (None: the 1,000 GiB basis); a value
    that is not one is said by its field."""
    typed = whole_number(values.get("stored_gib", ""))
    if offer.kind != "object_storage" or typed == "":
        return None
    if not isinstance(typed, int) or not 1 <= typed <= MAX_STORED_GIB:
        words = gettext(
            "Enter a whole number of GiB from 1 to %(most)s.", most=f"{MAX_STORED_GIB:,}"
        )
        raise ma.ValidationError({"stored_gib": [words]})
    return typed


def _quote(offer: Offer, quantity: int, stored_gib: int | None = None) -> quotes.Quote | None:
    """What the policy says of `quantity` units of `offer` a month (None: not orderable); a
    bucket rated for `stored_gib` stored."""
    try:
        return quotes.quote(
            request_session(),
            caller(),
            offer.id,
            quantity=quantity,
            hours=Decimal(730),
            now=now(),
            stored_gib=stored_gib,
        )
    except BrokerError:
        return None


def _typed_quote(offer: Offer, values: Mapping[str, str]) -> quotes.Quote | None:
    """The policy's verdict for the quantity typed, when it is one an order may have (shown
    beside the form's other mistakes)."""
    quantity = whole_number(values["quantity"])
    fine = isinstance(quantity, int) and 1 <= quantity <= MAX_QUANTITY
    try:
        stored_gib = _stored_gib(offer, values)
    except ma.ValidationError:
        stored_gib = None
    return _quote(offer, quantity, stored_gib) if fine else None


def _order_page(
    offer: Offer,
    values: Mapping[str, str],
    problem: Problem | BrokerError | ma.ValidationError | None = None,
    quote: quotes.Quote | None = None,
) -> Response:
    """The order form, with a new idempotency key: each form shown places at most one order."""
    context: dict[str, Any] = {
        "offer": offer,
        "values": values,
        "quote": quote,
        # What the order would record and its budget be judged by (730 hours a unit; a bucket
        # storing the 1,000 GiB basis).
        "monthly_cost": orders_service.order_monthly_cost(offer, quote.quantity)[1]
        if quote is not None
        else None,
        "stored_basis": STORED_GIB_BASIS,
        "profile": _billing_profile(),
    }
    if isinstance(problem, BrokerError | ma.ValidationError):
        problem = _order_problem(problem)
    if problem is not None:
        return form_page("console/order_form.html", problem, **context)
    return render("console/order_form.html", **context)


@bp.route("/catalogue/<uuid:offer_id>/order", methods=["GET", "POST"])
@page(Role.BUYER)
def order_form(offer_id: uuid.UUID) -> Response | BaseResponse:
    """Order machines, volumes or buckets of an offer in two steps: `check` shows what the
    agency's policy says (changing nothing; a bucket quoted for the GiB it is expected to
    store) and a reference its billing profile requires that is missing, `place` places the
    order as the API does. The references are filled in with the billing profile's."""
    if request.method == "POST" and request.form.get("action") == "place":
        return _place(offer_id)
    offer = offers_service.get_offer(request_session(), caller(), offer_id)
    if request.method == "GET":
        profile = _billing_profile()
        defaults = {name: profile[name] or "" for name in REFERENCE_FIELDS}
        return _order_page(offer, {"quantity": "1", **defaults}, quote=_quote(offer, 1))
    values = {name: request.form.get(name, "") for name in ORDER_FIELDS}
    try:
        data = _order_data(offer, values)
        stored_gib = _stored_gib(offer, values)
        # A reference the billing profile requires and neither gives: said now, not on placing.
        orders_service.invoice_references(request_session(), caller().organization_id, data)
    except (BrokerError, ma.ValidationError) as error:
        return _order_page(offer, values, error, _typed_quote(offer, values))
    quote = _quote(offer, data["quantity"], stored_gib)
    if quote is None:
        words = gettext("This offer cannot be ordered now.")
        return _order_page(offer, values, Problem(words, status=409))
    return _order_page(offer, values, quote=quote)


@idempotent(required=True, form_field=ONCE_FIELD)
def _place(offer_id: uuid.UUID) -> Response | BaseResponse:
    """Place the order once per form shown: the form's key is claimed as the API claims an
    `Idempotency-Key`, so a second submit of the same form shows the first order."""
    person = caller()
    values = {name: request.form.get(name, "") for name in ORDER_FIELDS}
    offer = offers_service.get_offer(request_session(), person, offer_id)
    try:
        data = _order_data(offer, values)
        order = orders_service.place_order(request_session(), person, data, now())
    except (BrokerError, ma.ValidationError) as error:
        request_session().rollback()
        offer = offers_service.get_offer(request_session(), person, offer_id)
        return _order_page(offer, values, error, _typed_quote(offer, values))
    if order.state is OrderState.PENDING_APPROVAL:
        message = gettext("Your order is placed. It waits for an approver of your agency.")
    elif offer.kind == "vm":
        message = gettext("Your order is placed. Its machines are being made.")
    else:
        message = gettext("Your order is placed. What it ordered is being made.")
    return done("console.order", message, order_id=order.id)


# --- orders ----------------------------------------------------------------------------------


def _offers_of(ids: set[uuid.UUID]) -> dict[uuid.UUID, Offer]:
    """The offer versions some orders or machines pinned, by id."""
    session, person = request_session(), caller()
    return {offer_id: offers_service.get_offer(session, person, offer_id) for offer_id in ids}


@bp.get("/orders")
@page(*READING)
def orders() -> Response:
    """The agency's orders, newest first, by state, a page at a time."""
    args = query_args()
    loaded, problem = filters(OrderListArgs, args)
    found = orders_service.list_orders(request_session(), caller(), **loaded)
    return render(
        "console/orders.html",
        200 if problem is None else 422,
        page=found,
        args=args,
        offers=_offers_of({order.offer_id for order in found.items}),
        state_options=[(state.value, state_label(state)) for state in OrderState],
        problem=problem,
    )


@bp.get("/orders/<uuid:order_id>")
@page(*READING)
def order(order_id: uuid.UUID) -> Response:
    """An order: what was ordered at which prices, the policy's decision, its approval, and
    the machines made from it."""
    session, person = request_session(), caller()
    shown = orders_service.get_order(session, person, order_id)
    machines = resources_service.list_resources(
        session, person, limit=100, cursor=None, order_id=shown.id
    ).items
    may_cancel = shown.state in (
        OrderState.PENDING_APPROVAL,
        OrderState.APPROVED,
    ) and access.holds_role_in(person, shown.organization_id, *BUYING)
    return render(
        "console/order.html",
        order=shown,
        offer=_offers_of({shown.offer_id})[shown.offer_id],
        prices=shown.prices,
        machines=machines,
        may_cancel=may_cancel,
    )


@bp.post("/orders/<uuid:order_id>/cancel")
@page(*BUYING)
def cancel_order(order_id: uuid.UUID) -> BaseResponse:
    """Withdraw an order awaiting approval or not yet started."""
    orders_service.cancel(request_session(), caller(), order_id, now())
    return done("console.order", gettext("The order is cancelled."), order_id=order_id)


# --- resources (machines, volumes, buckets) and usage ----------------------------------------


@bp.get("/machines")
@page(*READING)
def machines() -> Response:
    """The agency's resources (machines, volumes, buckets) with their kind and state, newest
    first, a page at a time."""
    args = query_args()
    loaded, problem = filters(ResourceListArgs, args)
    found = resources_service.list_resources(request_session(), caller(), **loaded)
    return render(
        "console/machines.html",
        200 if problem is None else 422,
        page=found,
        args=args,
        offers=_offers_of({machine.offer_id for machine in found.items}),
        state_options=[(state.value, state_label(state)) for state in ResourceState],
        kind_options=[(kind, KIND_CHOICES[kind]) for kind in resources_service.KIND_ACTIONS],
        problem=problem,
    )


CHART_WIDTH, CHART_HEIGHT, CHART_BASE = 620, 150, 126  # the bars stand on y = CHART_BASE


def _chart(days: list[tuple[Any, Decimal]]) -> list[dict[str, Any]]:
    """Each day's bar: its place and height in the chart's coordinates."""
    highest = max((amount for _, amount in days), default=Decimal(0))
    slot = CHART_WIDTH / max(len(days), 1)
    bars = []
    for index, (day, amount) in enumerate(days):
        height = float(amount / highest) * (CHART_BASE - 10) if highest > 0 else 0.0
        bars.append(
            {
                "day": day.date(),
                "amount": amount,
                "x": round(index * slot + slot * 0.15, 1),
                "width": round(slot * 0.7, 1),
                "y": round(CHART_BASE - height, 1),
                "height": round(height, 1),
                "label_x": round(index * slot + slot / 2, 1),
            }
        )
    return bars


def _resource_page(
    resource_id: uuid.UUID,
    problem: Problem | None = None,
    values: Mapping[str, str] | None = None,
    revealed: storage.Connection | None = None,
) -> Response:
    """A resource's page (see `machine`), with what went wrong with an action by its field,
    or a bucket's secret key revealed once."""
    session, person, at = request_session(), caller(), now()
    shown = resources_service.get_resource(session, person, resource_id)
    actions: list[str] = []
    if access.holds_role_in(person, shown.organization_id, *BUYING):
        actions = [
            name
            for name in resources_service.KIND_ACTIONS.get(shown.kind, ())
            if shown.state in resources_service.ACTIONS[name][0]
        ]
    days = resources_service.cost_by_day(session, shown, at)
    attached = session.get(Resource, shown.attached_to_id) if shown.attached_to_id else None
    context: dict[str, Any] = {
        "machine": shown,
        "offer": _offers_of({shown.offer_id})[shown.offer_id],
        "events": shown.events,
        "cost": resources_service.cost_this_period(session, shown, at),
        "bars": _chart(days),
        "chart": {"width": CHART_WIDTH, "height": CHART_HEIGHT, "base": CHART_BASE},
        "actions": actions,
        "attached": attached,
        "machine_choices": _machine_choices(shown) if "attach" in actions else [],
        "connection": revealed or storage.connection(session, shown),
        "revealed": revealed,
        "may_reveal": access.holds_role_in(person, shown.organization_id, *BUYING),
        "values": values or {},
    }
    if problem is not None:
        return form_page("console/machine.html", problem, **context)
    return render("console/machine.html", **context)


def _machine_choices(volume: Resource) -> list[tuple[str, str]]:
    """The agency's machines a volume may be attached to, as (id, label): the live ones (the
    service says which of them are in the volume's region and provider)."""
    found = resources_service.list_resources(
        request_session(), caller(), kind="vm", limit=100, cursor=None
    )
    return [
        (str(machine.id), machine.name)
        for machine in found.items
        if machine.state in (ResourceState.ACTIVE, ResourceState.STOPPED)
        and machine.organization_id == volume.organization_id
    ]


@bp.get("/machines/<uuid:resource_id>")
@page(*READING)
def machine(resource_id: uuid.UUID) -> Response:
    """A resource: its state and every change of it, the actions its kind and state allow
    (a volume's size and attachment, a bucket's connection details and retention), and what
    it has cost so far this month, day by day."""
    return _resource_page(resource_id)


ACTION_FIELDS = ("size_gib", "machine_id", "retention_days")


@bp.post("/machines/<uuid:resource_id>/action")
@page(*BUYING)
def machine_action(resource_id: uuid.UUID) -> Response | BaseResponse:
    """An action of the resource's kind, carried out in the background: a machine's stop,
    start, restart; a volume's resize, attach, detach; a bucket's retention and key; delete.
    A refusal is shown on the resource's page, by the field it is about."""
    values = {name: request.form.get(name, "").strip() for name in ACTION_FIELDS}
    typed: dict[str, Any] = {"action": request.form.get("action", "")}
    typed.update(
        {
            name: value if name == "machine_id" else whole_number(value)
            for name, value in values.items()
            if value
        }
    )
    person = caller()
    try:
        data = ActionSchema().load(typed)
        action = data.pop("action")
        retained = None
        if action == "terminate":  # asked of the cloud before the transaction writes anything
            retained = storage.retained(database(), person, resource_id, provider_runtime())
        resources_service.request_action(
            request_session(), person, resource_id, action, now(), retained=retained, **data
        )
    except NotFound:
        raise
    except (BrokerError, ma.ValidationError) as error:
        request_session().rollback()
        return _resource_page(resource_id, problem_of(error), values)
    shown = resources_service.get_resource(request_session(), person, resource_id)
    return done("console.machine", action_done(shown.kind, action), resource_id=resource_id)


@bp.post("/machines/<uuid:resource_id>/secret")
@page(*BUYING)
def reveal_secret(resource_id: uuid.UUID) -> Response:
    """A bucket's secret key, shown once on this answer (never in a redirect or a notice):
    the broker erases it as it answers. Shown already: the page says to rotate the key."""
    try:
        revealed = storage.reveal_secret(
            request_session(), caller(), resource_id, provider_runtime().keyring, now()
        )
    except NotFound:
        raise
    except BrokerError as error:
        request_session().rollback()
        return _resource_page(resource_id, problem_of(error))
    return _resource_page(resource_id, revealed=revealed)


@bp.get("/usage")
@page(*BUYING)
def usage() -> Response:
    """The agency's usage of a month, by machine and metric, with its amount before tax."""
    at = now()
    period = request.args.get("period", "").strip() or period_of(at)
    problem: Problem | None = None
    try:
        parse_period(period)
    except ValueError:
        words = gettext("Choose a month, such as %(example)s.", example=period_of(at))
        problem, period = Problem(words, {"period": [words]}), period_of(at)
    rows = [
        (machine_row, metric, rounded_quantity(quantity), amount)
        for machine_row, metric, quantity, amount in resources_service.period_usage(
            request_session(), caller(), period
        )
    ]
    totals: dict[str, Decimal] = {}
    for machine_row, _, _, amount in rows:
        if amount is not None:
            totals[machine_row.currency] = totals.get(machine_row.currency, Decimal(0)) + amount
    return render(
        "console/usage.html",
        200 if problem is None else 422,
        period=period,
        rows=rows,
        totals=totals,
        problem=problem,
    )
