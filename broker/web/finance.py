"""Finance's pages: invoices by period and state, an invoice with its corrections (finalize,
void, credit note), the bank transfers that pay it, and downloads, the period CSV, agencies'
billing profiles, billing runs, and settlements (which a provider's operators also read, for
their own provider).

Each page mirrors its API view (broker/api/billing.py, broker/api/invoice_payments.py,
broker/api/settlements.py): the same schemas validate the forms, the same services and access
rules answer, and a download is the very file the API exports.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any

import marshmallow as ma
from flask import Response, abort, current_app, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from billing import exports
from billing.document import LANGUAGES as INVOICE_LANGUAGES
from billing.document import Document
from billing.metering import period_bounds, period_of, shown
from broker import access
from broker.api.base import now, request_session
from broker.api.billing import (
    BillingProfileSchema,
    BillingRunCreateSchema,
    CreditNoteCreateSchema,
    InvoiceListArgs,
    PeriodExportArgs,
    VoidSchema,
)
from broker.api.idempotency import idempotent
from broker.api.invoice_payments import InvoicePaymentCreateSchema
from broker.api.limits import expensive
from broker.api.schemas import ListArgs
from broker.api.settlements import SettlementArgs
from broker.auth.identity import Caller
from broker.errors import BrokerError, NotFound, PreconditionFailed
from broker.models import InvoiceState, Role
from broker.services import billing_profiles, corrections, transfers
from broker.services import billing_runs as run_service
from broker.services import invoices as billing_service
from broker.services import settlements as settlements_service
from broker.services.pagination import MAX_LIMIT
from broker.web.i18n import LANGUAGE_NAMES, decimal_text, money, typed_amount, when
from broker.web.pages import (
    ONCE_FIELD,
    Problem,
    bp,
    caller,
    done,
    error_page,
    page,
    precondition,
    problem_of,
    query_args,
    render,
)
from broker.web.words import FORMAT_LABELS, state_label

BOOKS = (Role.FINANCE, Role.ADMIN)  # who reads every agency's invoices
SETTLING = (Role.FINANCE, Role.ADMIN, Role.PROVIDER)  # who reads settlements
PROFILE_EDITORS = (Role.FINANCE, Role.ADMIN)  # who edits billing profiles, as the API's PUT


def keeps_the_books(person: Caller) -> bool:
    """Finance: runs billing, issues and corrects invoices (admins only read them)."""
    return access.has_any_role(person, Role.FINANCE)


def last_period() -> str:
    """The calendar month before this one: the one finance closes."""
    return period_of(period_bounds(period_of(now()))[0] - timedelta(days=1))


def download(content: bytes, media_type: str, name: str) -> Response:
    """A file as the API serves it: its media type, as an attachment named `name`."""
    response = Response(content, mimetype=media_type.split(";")[0])
    response.headers["Content-Type"] = media_type
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# Invoices ------------------------------------------------------------------------------------


@bp.get("/invoices")
@page(*BOOKS)
def invoices() -> Response:
    """Invoices of a period (by default the latest one invoiced), by state and agency."""
    session, person = request_session(), caller()
    periods = billing_service.invoiced_periods(session, person)
    args = query_args()
    args.setdefault("period", periods[0] if periods else last_period())
    problem: Problem | None = None
    try:
        search = InvoiceListArgs().load(args)
    except ma.ValidationError as error:
        problem = problem_of(error)
        search = InvoiceListArgs().load({"period": periods[0] if periods else last_period()})
    found = billing_service.list_invoices(session, person, **search)
    agencies = billing_service.agency_names(session, person)
    config = current_app.config
    return render(
        "console/finance/invoices.html",
        200 if problem is None else 422,
        page=found,
        args=args,
        period=search["period"],
        periods=periods,
        agencies=agencies,
        agency_options=[(str(agency_id), name) for agency_id, name in agencies.items()],
        flags={
            invoice.id: billing_service.outlier_flags(invoice, config) for invoice in found.items
        },
        states=[(state.value, state_label(state)) for state in InvoiceState],
        books=keeps_the_books(person),
        problem=problem,
    )


@bp.get("/invoices/period.csv")
@page(Role.FINANCE)
@expensive
def period_csv() -> Response:
    """Every line of a period's issued invoices in one CSV: the API's period export."""
    try:
        args = PeriodExportArgs().load({"period": request.args.get("period", "")})
    except ma.ValidationError as error:
        return error_page(problem_of(error))
    return download(*billing_service.export_period(request_session(), args["period"]))


def _invoice_page(
    invoice_id: uuid.UUID, problem: Problem | None = None, **context: Any
) -> dict[str, Any]:
    """What the invoice page shows: the invoice, who it bills, its corrections, what may be
    done with it (by this person, in its state)."""
    session, person = request_session(), caller()
    invoice = billing_service.get_invoice(session, person, invoice_id)
    if invoice.snapshot is not None:  # as issued
        document = Document.from_snapshot(invoice.snapshot)
        buyer, due = document.buyer, document.due_date
        names = {line.position: line.label for line in document.lines}
    else:  # as it would be issued now
        profile = billing_profiles.get_profile(
            session, person, invoice.organization_id, current_app.config
        )
        buyer = billing_service.buyer_party(
            billing_profiles.get_agency(session, invoice.organization_id), profile
        )
        due = None
        named = billing_service.line_names(session, {line.resource_id for line in invoice.lines})
        names = {line.position: named[line.resource_id].label for line in invoice.lines}
    notes = corrections.list_credit_notes(
        session, person, limit=100, cursor=None, invoice_id=invoice.id
    ).items
    issued = invoice.state in corrections.ISSUED
    creditable = corrections.creditable(session, invoice) if issued else {}
    # An invoice is paid by a few transfers at most: the first page is all of them.
    received, balance = transfers.list_payments(
        session, person, invoice.id, limit=MAX_LIMIT, cursor=None
    )
    books = keeps_the_books(person)
    unpaid = invoice.state is InvoiceState.FINALIZED
    return {
        "invoice": invoice,
        "agency": billing_service.agency_names(session, person).get(invoice.organization_id),
        "buyer": buyer,
        "due": due,
        "names": names,
        "notes": notes,
        "flags": billing_service.outlier_flags(invoice, current_app.config),
        "creditable": creditable,
        "formats": [(fmt, FORMAT_LABELS[fmt]) for fmt in exports.FORMATS],
        "shown": shown,
        "may_finalize": books and invoice.state is InvoiceState.DRAFT,
        # Void only what nobody paid, even in part, and nothing credited.
        "may_void": books and unpaid and not notes and not received.items,
        "may_credit": books and issued and any(amount > 0 for amount in creditable.values()),
        "payments": received.items,
        "balance": balance,
        "may_record_payment": books and unpaid and balance.amount_due > 0,
        # What the transfer form shows first: all that is owed, received today.
        "payment_form": {
            "amount": typed_amount(balance.amount_due),
            "received_on": now().date().isoformat(),
        },
        "problem": problem,
        **context,
    }


@bp.get("/invoices/<uuid:invoice_id>")
@page(*BOOKS)
def invoice(invoice_id: uuid.UUID) -> Response:
    """An invoice: who it bills, its lines and totals, its credit notes, its payment, and what
    finance may do with it in its state."""
    return render("console/finance/invoice.html", **_invoice_page(invoice_id))


@bp.post("/invoices/<uuid:invoice_id>/finalize")
@page(Role.FINANCE)
def finalize_invoice(invoice_id: uuid.UUID) -> BaseResponse:
    """Issue a draft: it gets its number and is frozen."""
    try:
        issued = billing_service.finalize(
            request_session(), caller(), invoice_id, now(), current_app.config
        )
    except NotFound:
        raise
    except BrokerError as error:
        return _invoice_again(invoice_id, error)
    return done(
        "console.invoice",
        gettext("Invoice %(number)s is issued.", number=issued.number),
        invoice_id=invoice_id,
    )


@bp.post("/invoices/<uuid:invoice_id>/void")
@page(Role.FINANCE)
def void_invoice(invoice_id: uuid.UUID) -> BaseResponse:
    """Cancel an issued invoice nobody paid nor credited, with a reason."""
    reason = request.form.get("reason", "").strip()
    try:
        data = VoidSchema().load({"reason": reason} if reason else {})
        voided = corrections.void(request_session(), caller(), invoice_id, data["reason"], now())
    except NotFound:
        raise
    except (ma.ValidationError, BrokerError) as error:
        return _invoice_again(invoice_id, error, reason=reason)
    return done(
        "console.invoice",
        gettext("Invoice %(number)s is void.", number=voided.number),
        invoice_id=invoice_id,
    )


@bp.post("/invoices/<uuid:invoice_id>/payments")
@page(Role.FINANCE)
def record_payment(invoice_id: uuid.UUID) -> BaseResponse:
    """Record a bank transfer received for an issued invoice: the one that pays all that is
    owed makes it paid."""
    return _record_payment(invoice_id)


@idempotent(required=True, form_field=ONCE_FIELD)
def _record_payment(invoice_id: uuid.UUID) -> BaseResponse:
    """Once per form shown, as the API's `Idempotency-Key`: sent twice, one payment."""
    form = {
        name: request.form.get(name, "").strip() for name in ("amount", "received_on", "reference")
    }
    body = {**form, "amount": decimal_text(form["amount"])}
    try:
        data = InvoicePaymentCreateSchema().load({k: v for k, v in body.items() if v})
        receipt = transfers.record_payment(
            request_session(), caller(), invoice_id, now=now(), **data
        )
    except NotFound:
        raise
    except (ma.ValidationError, BrokerError) as error:
        return _invoice_again(invoice_id, error, payment_form=form)
    payment = receipt.payment
    message = gettext(
        "A transfer of %(amount)s received on %(day)s is recorded.",
        amount=money(payment.amount, payment.currency),
        day=when(payment.received_on),
    )
    if receipt.amount_due == 0:
        message += " " + gettext("The invoice is paid.")
    return done("console.invoice", message, invoice_id=invoice_id)


def _invoice_again(
    invoice_id: uuid.UUID, error: BrokerError | ma.ValidationError, **context: Any
) -> Response:
    """The invoice page again, saying why the action was refused (nothing changed)."""
    request_session().rollback()
    shown_problem = problem_of(error)
    return render(
        "console/finance/invoice.html",
        shown_problem.status,
        **_invoice_page(invoice_id, shown_problem, **context),
    )


@bp.route("/invoices/<uuid:invoice_id>/credit", methods=["GET", "POST"])
@page(Role.FINANCE)
def credit_invoice(invoice_id: uuid.UUID) -> BaseResponse:
    """Issue a credit note: some of what remains of each line, or all of it."""
    if request.method == "GET":
        return render("console/finance/credit.html", form={}, **_invoice_page(invoice_id))
    return _issue_credit_note(invoice_id)


@idempotent(required=True, form_field=ONCE_FIELD)
def _issue_credit_note(invoice_id: uuid.UUID) -> BaseResponse:
    """Once per form shown, as the API's `Idempotency-Key`: sent twice, one credit note."""
    context = _invoice_page(invoice_id)
    form = {name: value.strip() for name, value in request.form.items()}
    asked: list[int] = []  # the line position of each credited line, in the order sent
    lines: list[dict[str, Any]] = []
    if form.get("everything") != "true":
        for position in sorted(context["creditable"]):
            amount = form.get(f"line-{position}", "")
            if amount:
                asked.append(position)
                lines.append({"position": position, "amount": amount})
    body: dict[str, Any] = {"reason": form["reason"]} if form.get("reason") else {}
    if form.get("everything") != "true":
        body["lines"] = lines
    try:
        data = CreditNoteCreateSchema().load(body)
        note = corrections.issue_credit_note(
            request_session(), caller(), invoice_id, data["reason"], data["lines"], now()
        )
    except NotFound:
        raise
    except (ma.ValidationError, BrokerError) as error:
        request_session().rollback()
        problem = _by_line(problem_of(error), asked)
        if problem.fields.pop("lines", None) is not None:
            problem.fields["everything"] = [
                gettext("Enter an amount for a line, or credit all that remains.")
            ]
        return render(
            "console/finance/credit.html",
            problem.status,
            form=form,
            **_invoice_page(invoice_id, problem),
        )
    return done(
        "console.invoice",
        gettext("Credit note %(number)s is issued.", number=note.number),
        invoice_id=invoice_id,
    )


def _by_line(problem: Problem, asked: list[int]) -> Problem:
    """The API names a credited line by its index in `lines`; the form by its position."""
    fields: dict[str, list[str]] = {}
    for name, messages in problem.fields.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "lines" and parts[1].isdigit():
            index = int(parts[1])
            if index < len(asked):
                name = f"line-{asked[index]}"
        fields[name] = messages
    problem.fields = fields
    return problem


@bp.get("/invoices/<uuid:invoice_id>/download/<fmt>")
@page(*BOOKS)
@expensive
def invoice_download(invoice_id: uuid.UUID, fmt: str) -> Response:
    """An issued invoice as the API exports it: pdf, csv, cii or json."""
    if fmt not in exports.FORMATS:
        abort(404)
    return download(*billing_service.export_invoice(request_session(), caller(), invoice_id, fmt))


@bp.get("/credit-notes/<uuid:note_id>/download/<fmt>")
@page(*BOOKS)
@expensive
def credit_note_download(note_id: uuid.UUID, fmt: str) -> Response:
    """A credit note as the API exports it: pdf, csv, cii or json."""
    if fmt not in exports.FORMATS:
        abort(404)
    return download(*corrections.export_credit_note(request_session(), caller(), note_id, fmt))


# Billing profiles ----------------------------------------------------------------------------

# The profile's yes/no fields (check boxes: absent from a posted form when unticked); the
# others are typed, and one left empty is absent from the API's body (none, or its default).
PROFILE_BOXES = ("requires_buyer_reference", "requires_purchase_order_reference")
PROFILE_TYPED = tuple(name for name in billing_profiles.PROFILE_FIELDS if name not in PROFILE_BOXES)


def _profile_form(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The form's values for a stored profile (or the consortium's defaults), with the version
    read (`revision`), sent back with the change as the API's `If-Match`."""
    values: dict[str, Any] = {
        name: "" if profile[name] is None else str(profile[name]) for name in PROFILE_TYPED
    }
    values["vat_rate"] = typed_amount(profile["vat_rate"])
    values.update({name: bool(profile[name]) for name in PROFILE_BOXES})
    values["revision"] = str(profile["version"])
    return values


def _street_lines(text: str) -> str:
    """Street lines typed in a text area as the API takes them, one per line feed: browsers
    send a text area's line breaks as CR LF, which the API refuses as control characters;
    blank lines and the spaces around a line carry nothing."""
    lines = (line.strip() for line in re.split(r"\r\n|\r|\n", text))
    return "\n".join(line for line in lines if line)


def _posted_profile() -> tuple[dict[str, Any], dict[str, Any]]:
    """The posted form: as typed (to show again) and as the API's billing profile body."""
    form = request.form
    typed: dict[str, Any] = {name: form.get(name, "").strip() for name in PROFILE_TYPED}
    typed["address"] = _street_lines(form.get("address", ""))
    typed.update({name: name in form for name in PROFILE_BOXES})
    typed["revision"] = form.get("revision", "").strip()
    body: dict[str, Any] = {name: typed[name] for name in PROFILE_TYPED if typed[name]}
    if "vat_rate" in body:
        body["vat_rate"] = decimal_text(body["vat_rate"])
    body.update({name: typed[name] for name in PROFILE_BOXES})
    return typed, body


def _profile_page(
    organization_id: uuid.UUID, values: Mapping[str, Any], problem: Problem | None = None
) -> Response:
    """The profile's form with `values` (as stored, or as typed when refused) and why it was
    refused; the languages are those invoices are written in, each named in itself."""
    agency = billing_profiles.get_agency(request_session(), organization_id)
    return render(
        "console/finance/billing_profile.html",
        200 if problem is None else problem.status,
        agency=agency,
        values=values,
        languages=[
            (code, name) for code, name in LANGUAGE_NAMES.items() if code in INVOICE_LANGUAGES
        ],
        problem=problem,
    )


@bp.route("/agencies/<uuid:organization_id>/billing-profile", methods=["GET", "POST"])
@page(*PROFILE_EDITORS)
def billing_profile(organization_id: uuid.UUID) -> BaseResponse:
    """How an agency is invoiced: its legal identity, address, VAT, the language of its
    invoices and the references its orders carry, as the API's billing profile. The version
    read travels in the form: if someone saved another meanwhile, theirs is shown, not
    overwritten."""
    session, person, config = request_session(), caller(), current_app.config
    current = billing_profiles.get_profile(session, person, organization_id, config)
    if request.method == "GET":
        return _profile_page(organization_id, _profile_form(current))
    typed, body = _posted_profile()
    revision = typed["revision"]
    try:
        data = BillingProfileSchema().load(body)
        billing_profiles.put_profile(
            session,
            person,
            organization_id,
            data,
            if_match=precondition(revision),
            config=config,
        )
    except PreconditionFailed as error:
        return _profile_page(organization_id, _profile_form(current), problem_of(error))
    except (ma.ValidationError, BrokerError) as error:
        return _profile_page(organization_id, typed, problem_of(error))
    return done(
        "console.billing_profile",
        gettext(
            "The billing profile of %(agency)s is saved.",
            agency=billing_profiles.get_agency(session, organization_id).name,
        ),
        organization_id=organization_id,
    )


# Billing runs --------------------------------------------------------------------------------


@bp.route("/billing-runs", methods=["GET", "POST"])
@page(Role.FINANCE)
def billing_runs() -> BaseResponse:
    """Billing runs, newest first, and the form that starts one for a period."""
    session = request_session()
    form: dict[str, str] = {}
    problem: Problem | None = None
    if request.method == "POST":
        form = {"period": request.form.get("period", "").strip()}
        try:
            data = BillingRunCreateSchema().load({k: v for k, v in form.items() if v})
            run = run_service.start_run(session, caller(), data["period"], now())
        except (ma.ValidationError, BrokerError) as error:
            session.rollback()
            problem = problem_of(error)
        else:
            return done(
                "console.billing_runs",
                gettext(
                    "The billing run for %(period)s has started: its drafts appear in the "
                    "invoices when it has succeeded.",
                    period=run.period,
                ),
            )
    try:
        listing = ListArgs().load(query_args())
    except ma.ValidationError:
        listing = ListArgs().load({})
    runs = run_service.list_runs(session, **listing)
    return render(
        "console/finance/billing_runs.html",
        200 if problem is None else problem.status,
        page=runs,
        form=form or {"period": last_period()},
        problem=problem,
    )


# Settlements ---------------------------------------------------------------------------------


def _settlements(period: str) -> dict[str, Any]:
    return settlements_service.for_period(request_session(), caller(), period, current_app.config)


def _period_arg() -> tuple[str, Problem | None]:
    """The `period` of the query string (last month by default), or why it is not one."""
    wanted = request.args.get("period", "").strip() or last_period()
    try:
        return SettlementArgs().load({"period": wanted})["period"], None
    except ma.ValidationError as error:
        return last_period(), problem_of(error)


@bp.get("/settlements")
@page(*SETTLING)
def settlements() -> Response:
    """What the consortium owes each provider for a period (an operator: their own)."""
    period, problem = _period_arg()
    return render(
        "console/finance/settlements.html",
        200 if problem is None else 422,
        report=_settlements(period),
        period=period,
        asked=request.args.get("period", period),
        problem=problem,
    )


@bp.get("/settlements/<uuid:settlement_id>")
@page(*SETTLING)
def settlement(settlement_id: uuid.UUID) -> Response:
    """One provider's settlement for a period (`settlement_id` is the provider's id): per
    currency, gross, credits, the consortium's fee and the net owed."""
    period, problem = _period_arg()
    if problem is not None:
        abort(404)
    report = _settlements(period)
    items = [item for item in report["items"] if item["provider_id"] == str(settlement_id)]
    if not items:
        raise NotFound("No such settlement.")
    return render(
        "console/finance/settlement.html",
        report=report,
        items=items,
        provider_name=items[0]["provider_name"],
        period=period,
        fee_rate=Decimal(report["fee_rate"]),
    )
