"""Billing: agencies' billing profiles, billing runs (`/v1/billing-runs`), invoices
(`/v1/invoices`) and their corrections (void, `/v1/credit-notes`)."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify, url_for

from billing import exports
from billing.document import LANGUAGES, SIRENE
from billing.money import trim_decimals
from broker.api.base import Blueprint, created, current_caller, now, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
from broker.api.idempotency import idempotent
from broker.api.limits import expensive
from broker.api.schemas import (
    BUYER_REFERENCE,
    NO_CONTROL_CHARACTERS,
    PURCHASE_ORDER_REFERENCE,
    ListArgs,
    Matches,
    Money,
    StrictSchema,
    Timestamp,
    agency_id_field,
    country_field,
    name_field,
    page_of,
    period_field,
    reason_field,
    reference_field,
)
from broker.api.usage import ExactQuantity
from broker.models import BillingRunState, InvoiceState, PaymentState, Role
from broker.services import billing_profiles, billing_runs, corrections, transfers
from broker.services import invoices as invoice_service

profiles = Blueprint(
    "billing_profiles", __name__, url_prefix="/v1/organizations", description="Billing profiles"
)
runs = Blueprint("billing_runs", __name__, url_prefix="/v1/billing-runs", description="Billing")
invoices = Blueprint("invoices", __name__, url_prefix="/v1/invoices", description="Invoices")
credit_notes = Blueprint(
    "credit_notes", __name__, url_prefix="/v1/credit-notes", description="Credit notes"
)

_ETAG = {"ETag": {"schema": {"type": "string"}}}


# Billing profiles ----------------------------------------------------------------------------


class BillingProfileSchema(StrictSchema):
    legal_name = name_field(required=True)
    address = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[
            ma.validate.Length(max=500),
            Matches(
                r"^[^\x00-\x1f\x7f]*(\n[^\x00-\x1f\x7f]*){0,2}$",
                "street lines, up to three, one per line: line breaks are allowed, other "
                "control characters (tabs and the like) are not",
            ),
        ],
        metadata={"description": "Street lines (up to three), one per line."},
    )
    post_code = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[ma.validate.Length(min=1, max=20), NO_CONTROL_CHARACTERS],
    )
    city = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=[ma.validate.Length(min=1, max=100), NO_CONTROL_CHARACTERS],
    )
    country = country_field(required=True)
    vat_id = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=Matches(
            r"^[A-Z0-9]{2,30}$",
            "a VAT identification number in capitals and digits without spaces, 2–30 "
            "characters, such as `FR40303265045`",
            suggest=True,
        ),
        metadata={"description": "VAT identification number, e.g. FR40303265045"},
    )
    vat_rate = Money(
        required=True,
        validate=ma.validate.Range(min=0, max=100),
        metadata={
            "pattern": r"^(100(\.0{1,6})?|[0-9]{1,2}(\.[0-9]{1,6})?)$",
            "description": 'Standard VAT rate in percent, 0–100, e.g. "20" or "14.975"',
        },
    )
    legal_id = ma.fields.String(
        load_default=None,
        allow_none=True,
        validate=Matches(
            r"^[A-Za-z0-9]{1,50}$",
            "a legal registration identifier in letters and digits without spaces, such as "
            "the 14 digits of a SIRET `13002526500013`",
            suggest=True,
        ),
        metadata={"description": "Legal registration identifier (EN 16931 BT-47), e.g. SIRET."},
    )
    legal_id_scheme = ma.fields.String(
        load_default=SIRENE,
        allow_none=True,
        validate=Matches(r"^[0-9]{4}$", "an ISO/IEC 6523 scheme code of 4 digits, such as 0002"),
        metadata={"description": "ISO/IEC 6523 scheme of `legal_id`: 0002 (SIRENE) by default."},
    )
    language = ma.fields.String(
        load_default=None,
        validate=ma.validate.OneOf(LANGUAGES),
        metadata={
            "description": "Language of its invoices (PDF, CSV headers, payment terms): "
            "English when not given."
        },
    )
    buyer_reference = reference_field(BUYER_REFERENCE + " Its orders' default.")
    purchase_order_reference = reference_field(PURCHASE_ORDER_REFERENCE + " Its orders' default.")
    requires_buyer_reference = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "An order without a buyer reference is refused (422)."},
    )
    requires_purchase_order_reference = ma.fields.Boolean(
        load_default=False,
        metadata={"description": "An order without a purchase order reference is refused."},
    )

    @ma.validates_schema
    def _sirene_number(self, data: dict[str, Any], **_: Any) -> None:
        """In the SIRENE register (scheme 0002) a legal id is a SIREN (9 digits, the company)
        or a SIRET (14 digits, one of its establishments)."""
        legal_id = data.get("legal_id")
        if legal_id and data.get("legal_id_scheme") == SIRENE:
            if not (legal_id.isascii() and legal_id.isdigit() and len(legal_id) in (9, 14)):
                raise ma.ValidationError(
                    "A SIRET of 14 digits or a SIREN of 9 (scheme 0002).", field_name="legal_id"
                )


class BillingProfileOutSchema(ma.Schema):
    organization_id = ma.fields.UUID()
    legal_name = ma.fields.String()
    address = ma.fields.String(allow_none=True)
    post_code = ma.fields.String(allow_none=True)
    city = ma.fields.String(allow_none=True)
    country = ma.fields.String()
    vat_id = ma.fields.String(allow_none=True)
    vat_rate = Money()
    legal_id = ma.fields.String(allow_none=True)
    legal_id_scheme = ma.fields.String(allow_none=True)
    language = ma.fields.String()
    buyer_reference = ma.fields.String(allow_none=True)
    purchase_order_reference = ma.fields.String(allow_none=True)
    requires_buyer_reference = ma.fields.Boolean()
    requires_purchase_order_reference = ma.fields.Boolean()


def _profile_response(profile: dict[str, Any]) -> Response:
    return with_etag(jsonify(BillingProfileOutSchema().dump(profile)), profile["version"])


@profiles.route("/<uuid:organization_id>/billing-profile", methods=["GET"])
@profiles.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@profiles.response(200, BillingProfileOutSchema, headers=_ETAG)
def get_billing_profile(organization_id: uuid.UUID) -> Response:
    """How an agency is invoiced (finance; the agency itself). Without a profile of its own,
    the consortium's defaults, with the ETag `"v0"`."""
    return _profile_response(
        billing_profiles.get_profile(
            request_session(), current_caller(), organization_id, current_app.config
        )
    )


@profiles.route("/<uuid:organization_id>/billing-profile", methods=["PUT"])
@profiles.auth(Role.FINANCE, Role.ADMIN)
@profiles.arguments(BillingProfileSchema)
@profiles.response(200, BillingProfileOutSchema, headers=_ETAG)
@profiles.doc(parameters=[IF_MATCH_PARAMETER])
def put_billing_profile(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Replace an agency's billing profile (needs `If-Match`). Drafts use it when rebuilt;
    finalized invoices keep the one they were issued with."""
    profile = billing_profiles.put_profile(
        request_session(),
        current_caller(),
        organization_id,
        data,
        if_match=if_match(),
        config=current_app.config,
    )
    return _profile_response(profile)


# Billing runs --------------------------------------------------------------------------------


class BillingRunCreateSchema(StrictSchema):
    period = period_field(required=True)


class BillingRunSchema(ma.Schema):
    id = ma.fields.UUID()
    period = ma.fields.String()
    state = ma.fields.Enum(BillingRunState, by_value=True)
    requested_by = ma.fields.String()
    job_id = ma.fields.UUID(allow_none=True)
    drafts = ma.fields.Integer(metadata={"description": "Draft invoices built"})
    finalized = ma.fields.Integer(
        metadata={"description": "Invoices of the period already finalized, left as they are"}
    )
    error = ma.fields.String(allow_none=True)
    created_at = Timestamp()
    finished_at = Timestamp(allow_none=True)


@runs.route("", methods=["POST"])
@runs.auth(Role.FINANCE)
@expensive
@idempotent(required=True)
@runs.arguments(BillingRunCreateSchema)
@runs.response(202, BillingRunSchema, headers={"Location": {"schema": {"type": "string"}}})
def start_billing_run(data: dict[str, Any]) -> Response:
    """Build (or rebuild) the draft invoices of a period `YYYY-MM` for every agency, in the
    background (`Idempotency-Key`). Running a period again rebuilds its drafts and leaves
    finalized invoices alone; it never makes a second invoice."""
    run = billing_runs.start_run(request_session(), current_caller(), data["period"], now())
    response = jsonify(BillingRunSchema().dump(run))
    response.status_code = 202
    response.headers["Location"] = url_for("billing_runs.get_billing_run", run_id=run.id)
    return response


@runs.route("", methods=["GET"])
@runs.auth(Role.FINANCE)
@runs.arguments(ListArgs, location="query")
@runs.response(200, page_of(BillingRunSchema))
def list_billing_runs(args: dict[str, Any]) -> Any:
    return billing_runs.list_runs(request_session(), **args)


class LineFlagSchema(ma.Schema):
    code = ma.fields.String(metadata={"description": "`line_outlier`"})
    invoice_id = ma.fields.UUID()
    position = ma.fields.Integer(metadata={"description": "The invoice line"})
    resource_id = ma.fields.UUID()
    metric = ma.fields.String()
    amount = Money(currency_from="currency")
    currency = ma.fields.String()
    share = ma.fields.Decimal(
        as_string=True,
        metadata={"type": "string", "description": 'Percent of the subtotal, e.g. "99.95"'},
    )
    detail = ma.fields.String()


_FLAGS = (
    "Lines finance should check before finalizing: each above `BROKER_BILLING_OUTLIER_SHARE` "
    "percent of its invoice's subtotal, when the subtotal is over "
    "`BROKER_BILLING_OUTLIER_MIN_SUBTOTAL`. Finalizing is still allowed."
)


class BillingRunDetailSchema(BillingRunSchema):
    flags = ma.fields.List(
        ma.fields.Nested(LineFlagSchema),
        metadata={"description": _FLAGS + " Of the invoices this run built."},
    )


@runs.route("/<uuid:run_id>", methods=["GET"])
@runs.auth(Role.FINANCE)
@runs.response(200, BillingRunDetailSchema)
def get_billing_run(run_id: uuid.UUID) -> Any:
    """A billing run, with the outlier lines of the invoices it built (`flags`)."""
    session = request_session()
    run = billing_runs.get_run(session, run_id)
    body = BillingRunSchema().dump(run)
    body["flags"] = LineFlagSchema(many=True).dump(
        invoice_service.run_flags(session, run, current_app.config)
    )
    return jsonify(body)


# Invoices ------------------------------------------------------------------------------------


class InvoiceListArgs(ListArgs):
    period = period_field()
    state = ma.fields.Enum(InvoiceState, by_value=True)
    agency_id = ma.fields.UUID(metadata={"description": "Finance: one agency's invoices"})


class InvoiceLineSchema(ma.Schema):
    position = ma.fields.Integer()
    kind = ma.fields.String(metadata={"description": "`usage`, or `adjustment` (late usage)"})
    period = ma.fields.String(metadata={"description": "The period the usage belongs to"})
    resource_id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    metric = ma.fields.String()
    quantity = ExactQuantity(metadata={"type": "string"})
    unit_price = Money()
    amount = Money(currency_from="invoice.currency")
    tax_category = ma.fields.String()
    tax_rate = ma.fields.Function(
        lambda line: str(trim_decimals(line.tax_rate, keep=0)),
        metadata={"type": "string", "description": 'VAT rate in percent, e.g. "20"'},
    )
    service_start = Timestamp()
    service_end = Timestamp()
    buyer_reference = ma.fields.String(
        allow_none=True, metadata={"description": "BT-10 of the order the resource was placed with"}
    )
    purchase_order_reference = ma.fields.String(
        allow_none=True, metadata={"description": "BT-13 of the order the resource was placed with"}
    )


class TaxSchema(ma.Schema):
    category = ma.fields.String()
    rate = ma.fields.String()
    base = ma.fields.String()
    amount = ma.fields.String()


class InvoiceSummarySchema(ma.Schema):
    id = ma.fields.UUID()
    number = ma.fields.String(allow_none=True)
    agency_id = agency_id_field()
    period = ma.fields.String()
    currency = ma.fields.String()
    state = ma.fields.Enum(InvoiceState, by_value=True)
    subtotal = Money(currency_from="currency")
    tax = Money(currency_from="currency")
    total = Money(currency_from="currency")
    taxes = ma.fields.List(ma.fields.Nested(TaxSchema))
    billing_run_id = ma.fields.UUID(allow_none=True)
    built_at = Timestamp()
    finalized_at = Timestamp(allow_none=True)
    snapshot_sha256 = ma.fields.String(allow_none=True)
    voided_at = Timestamp(allow_none=True)
    void_reason = ma.fields.String(allow_none=True)
    payment_state = ma.fields.Enum(
        PaymentState,
        by_value=True,
        allow_none=True,
        metadata={
            "description": "Once issued: `pending` (being sent to Stripe), `not_configured` "
            "(no payment processor), `sync_failed` (see `payment_error`), `open`, "
            "`payment_failed` (may still be paid), `paid`. It only moves forward."
        },
    )
    payment_error = ma.fields.String(allow_none=True)
    stripe_invoice_id = ma.fields.String(allow_none=True)
    payment_url = ma.fields.String(
        allow_none=True, metadata={"description": "Where the agency pays (Stripe)"}
    )
    paid_at = Timestamp(allow_none=True)
    created_at = Timestamp()


class OutlierFlags(ma.fields.List):
    """An invoice's outlier lines, computed from its lines as it is shown."""

    def __init__(self) -> None:
        super().__init__(
            ma.fields.Nested(LineFlagSchema), dump_only=True, metadata={"description": _FLAGS}
        )

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = None) -> Any:
        return invoice_service.outlier_flags(obj, current_app.config)


class AmountDue(Money):
    """What an issued invoice is still owed, computed as it is shown (`transfers.balance`)."""

    def __init__(self) -> None:
        super().__init__(
            currency_from="currency",
            dump_only=True,
            allow_none=True,
            metadata={
                "description": "Once issued: what is still owed — the total less its credit "
                "notes and the payments recorded by transfer (`/payments`); 0 once paid or "
                "void. Null for a draft."
            },
        )

    def get_value(self, obj: Any, attr: str, accessor: Any = None, default: Any = None) -> Any:
        if obj.state is InvoiceState.DRAFT:
            return None
        return transfers.amount_due(request_session(), obj)


class InvoiceSchema(InvoiceSummarySchema):
    lines = ma.fields.List(ma.fields.Nested(InvoiceLineSchema))
    flags = OutlierFlags()
    amount_due = AmountDue()
    snapshot = ma.fields.Dict(
        allow_none=True,
        metadata={
            "description": "Once finalized: the invoice as issued. `snapshot_sha256` is the "
            "SHA-256 of its canonical JSON (sorted keys, no spaces, UTF-8)."
        },
    )


@invoices.route("", methods=["GET"])
@invoices.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@invoices.arguments(InvoiceListArgs, location="query")
@invoices.response(200, page_of(InvoiceSummarySchema))
def list_invoices(args: dict[str, Any]) -> Any:
    """Invoices, newest first: your agency's, or (finance) every agency's."""
    return invoice_service.list_invoices(request_session(), current_caller(), **args)


@invoices.route("/<uuid:invoice_id>", methods=["GET"])
@invoices.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@invoices.response(200, InvoiceSchema)
def get_invoice(invoice_id: uuid.UUID) -> Any:
    """An invoice with its lines (a line per resource, metric and period)."""
    return invoice_service.get_invoice(request_session(), current_caller(), invoice_id)


@invoices.route("/<uuid:invoice_id>/finalize", methods=["POST"])
@invoices.auth(Role.FINANCE)
@invoices.response(200, InvoiceSchema)
def finalize_invoice(invoice_id: uuid.UUID) -> Any:
    """Issue a draft once its period has ended: it gets the next number of the year's gapless
    series and a snapshot with its SHA-256, and never changes again (409 afterwards). Usage
    arriving later for its period is billed on the next period's invoice as adjustments."""
    return invoice_service.finalize(
        request_session(), current_caller(), invoice_id, now(), current_app.config
    )


class ExportArgs(StrictSchema):
    format = ma.fields.String(load_default="json", validate=ma.validate.OneOf(exports.FORMATS))


class PeriodExportArgs(StrictSchema):
    period = period_field(required=True)
    format = ma.fields.String(load_default="csv", validate=ma.validate.OneOf(["csv"]))


def _file(content: bytes, media_type: str, name: str) -> Response:
    response = Response(content, mimetype=media_type.split(";")[0])
    response.headers["Content-Type"] = media_type
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@invoices.route("/<uuid:invoice_id>/export", methods=["GET"])
@invoices.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@expensive
@invoices.arguments(ExportArgs, location="query")
@invoices.response(200, content_type="application/octet-stream")
def export_invoice(args: dict[str, Any], invoice_id: uuid.UUID) -> Response:
    """An issued invoice as a file made from its document, byte-identical on every download:
    `json` (the canonical snapshot: its SHA-256 is `snapshot_sha256`), `csv` (a row per
    line, then per tax category; the amounts sum to the total; headers in the agency's
    language), `pdf` (a Factur-X: PDF/A-3 in the agency's language with its CII attached as
    `factur-x.xml`), or `cii` (EN 16931 Cross Industry Invoice XML, Factur-X EN 16931
    profile). 409 for a draft."""
    return _file(
        *invoice_service.export_invoice(
            request_session(), current_caller(), invoice_id, args["format"]
        )
    )


@invoices.route("/export", methods=["GET"])
@invoices.auth(Role.FINANCE)
@expensive
@invoices.arguments(PeriodExportArgs, location="query")
@invoices.response(200, content_type="text/csv")
def export_period(args: dict[str, Any]) -> Response:
    """Every line of a period's issued invoices in one CSV, by invoice number."""
    return _file(*invoice_service.export_period(request_session(), args["period"]))


# Corrections ---------------------------------------------------------------------------------


class VoidSchema(StrictSchema):
    reason = reason_field()


@invoices.route("/<uuid:invoice_id>/void", methods=["POST"])
@invoices.auth(Role.FINANCE)
@invoices.arguments(VoidSchema)
@invoices.response(200, InvoiceSchema)
def void_invoice(data: dict[str, Any], invoice_id: uuid.UUID) -> Any:
    """Cancel an issued invoice nobody paid and nothing credited (409 `invoice_paid`,
    `invoice_credited`, `not_issued` for a draft). It keeps its number and snapshot; the usage
    it billed is billable again, so the period's next billing run drafts its replacement. An
    invoice sent to Stripe is voided there too."""
    return corrections.void(request_session(), current_caller(), invoice_id, data["reason"], now())


class CreditLineSchema(StrictSchema):
    position = ma.fields.Integer(required=True, metadata={"description": "The invoice line"})
    amount = Money(required=True, metadata={"description": "Net amount credited"})


class CreditNoteCreateSchema(StrictSchema):
    reason = reason_field()
    lines = ma.fields.List(
        ma.fields.Nested(CreditLineSchema),
        validate=ma.validate.Length(min=1, max=1000),
        load_default=None,
        metadata={"description": "What to credit; without it, all that remains of every line"},
    )


class CreditNoteLineSchema(ma.Schema):
    position = ma.fields.Integer()
    invoice_line_id = ma.fields.UUID()
    provider_id = ma.fields.UUID()
    amount = Money(currency_from="credit_note.currency")
    tax_category = ma.fields.String()
    tax_rate = ma.fields.Function(
        lambda line: str(trim_decimals(line.tax_rate, keep=0)), metadata={"type": "string"}
    )


class CreditNoteSchema(ma.Schema):
    id = ma.fields.UUID()
    number = ma.fields.String()
    invoice_id = ma.fields.UUID()
    agency_id = agency_id_field()
    currency = ma.fields.String()
    reason = ma.fields.String()
    subtotal = Money(currency_from="currency")
    tax = Money(currency_from="currency")
    total = Money(currency_from="currency")
    taxes = ma.fields.List(ma.fields.Nested(TaxSchema))
    issued_at = Timestamp()
    snapshot_sha256 = ma.fields.String()
    stripe_credit_note_id = ma.fields.String(allow_none=True)
    lines = ma.fields.List(ma.fields.Nested(CreditNoteLineSchema))
    created_at = Timestamp()


class CreditableSchema(ma.Schema):
    lines = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.String(),
        metadata={"description": 'Position → net amount left, e.g. {"1": "11.73"}'},
    )


class CreditNoteListArgs(ListArgs):
    invoice_id = ma.fields.UUID()


@invoices.route("/<uuid:invoice_id>/credit-notes", methods=["POST"])
@invoices.auth(Role.FINANCE)
@idempotent(required=True)
@invoices.arguments(CreditNoteCreateSchema)
@invoices.response(201, CreditNoteSchema)
def credit_invoice(data: dict[str, Any], invoice_id: uuid.UUID) -> Response:
    """Issue a credit note for an issued invoice (`Idempotency-Key`): net amounts of some of
    its lines, or without `lines` all that remains. It takes the next number of the credit
    note series (`CN-<year>-<000001>`) and is frozen at once. Crediting more of a line than
    remains is 409 `exceeds_creditable`."""
    note = corrections.issue_credit_note(
        request_session(), current_caller(), invoice_id, data["reason"], data["lines"], now()
    )
    return created(
        jsonify(CreditNoteSchema().dump(note)), "credit_notes.get_credit_note", note_id=note.id
    )


@invoices.route("/<uuid:invoice_id>/creditable", methods=["GET"])
@invoices.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@invoices.response(200, CreditableSchema)
def creditable(invoice_id: uuid.UUID) -> Any:
    """What remains creditable of each line of an invoice, by position (net)."""
    session = request_session()
    invoice = invoice_service.get_invoice(session, current_caller(), invoice_id)
    return {
        "lines": {
            str(position): invoice_service.money_text(amount, invoice.currency)
            for position, amount in corrections.creditable(session, invoice).items()
        }
    }


@credit_notes.route("", methods=["GET"])
@credit_notes.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@credit_notes.arguments(CreditNoteListArgs, location="query")
@credit_notes.response(200, page_of(CreditNoteSchema))
def list_credit_notes(args: dict[str, Any]) -> Any:
    """Credit notes, newest first: your agency's, or (finance) every agency's."""
    return corrections.list_credit_notes(request_session(), current_caller(), **args)


@credit_notes.route("/<uuid:note_id>", methods=["GET"])
@credit_notes.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@credit_notes.response(200, CreditNoteSchema)
def get_credit_note(note_id: uuid.UUID) -> Any:
    return corrections.get_credit_note(request_session(), current_caller(), note_id)


@credit_notes.route("/<uuid:note_id>/export", methods=["GET"])
@credit_notes.auth(Role.BUYER, Role.APPROVER, Role.FINANCE, Role.ADMIN)
@expensive
@credit_notes.arguments(ExportArgs, location="query")
@credit_notes.response(200, content_type="application/octet-stream")
def export_credit_note(args: dict[str, Any], note_id: uuid.UUID) -> Response:
    """A credit note as a file from its snapshot (same formats as invoices; CII type 381
    referencing the corrected invoice)."""
    return _file(
        *corrections.export_credit_note(
            request_session(), current_caller(), note_id, args["format"]
        )
    )
