"""The console's words for the API's codes and values, in one place: problem codes, field
messages, roles, lifecycle states, metrics and units, policy reasons, the kinds of resource and
their actions, tax categories, usage sources and export formats. Each is English marked for
translation (the French is in broker/translations); templates reach them as globals
(`init_pages`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask_babel import lazy_gettext as _l

from broker.models import UsageSource

# The words a person reads for the problem codes of the API and the services (the services'
# own sentence, with its figures, is shown beside them); a code not here shows that sentence.
PROBLEM_WORDS: Mapping[str, Any] = {
    "validation_failed": _l("Some values are not valid: see the fields below."),
    "forbidden": _l("Your role does not allow this."),
    "not_found": _l("This page does not exist, or is not yours to see."),
    "csrf_failed": _l("This form has expired. Reload the page and try again."),
    "budget_exceeded": _l("This order would exceed the agency's budget."),
    "policy_violation": _l("The agency's policy does not allow this order."),
    "precondition_failed": _l(
        "Someone changed this while you were editing. Here is the new version; "
        "make your change again."
    ),
    "conflict": _l("This cannot be done in the current state."),
    "not_orderable": _l("This offer cannot be ordered now."),
    "rate_limited": _l("Too many requests; wait a moment and try again."),
    "action_not_allowed": _l("The machine cannot do this in its current state."),
    "not_cancellable": _l("This order can no longer be cancelled."),
    "idempotency_key_reused": _l("This form was already sent with other values; reload the page."),
    "own_organization": _l(
        "You belong to this provider's organization: another assessor must decide."
    ),
    "not_pending": _l("This claim was decided already."),
    "not_rejectable": _l("Only pending claims and verified certifications can be rejected."),
    "not_withdrawable": _l("Only pending claims and verified certifications can be withdrawn."),
    "expired": _l("This certificate has expired: it cannot be verified."),
    "duplicate_evidence": _l("The same claim was submitted already."),
    "statement_rejected": _l("The signed statement was refused."),
    "sku_taken": _l("An offer with this SKU exists already: edit it to make a new version."),
    "sku_not_sold": _l("Your cloud does not sell this machine type in this region."),
    "not_a_draft": _l("Only a draft can be published."),
    "offer_retired": _l("This offer is retired: it no longer changes."),
    "newer_version_exists": _l("A newer version of this offer exists already: edit that one."),
    "action_not_for_kind": _l("This kind of resource has no such action."),
    "volume_shrink": _l("A volume only grows: choose a size larger than it has now."),
    "volume_attached": _l("The volume is attached to a machine already: detach it first."),
    "volume_not_attached": _l("The volume is not attached to any machine."),
    "machine_elsewhere": _l("A volume attaches only to a machine of the same provider and region."),
    "not_a_machine": _l("A volume attaches only to a machine."),
    "retention_shortened": _l("A vault's retention can be extended, never shortened."),
    "not_a_vault": _l("This bucket was made without a retention: it is not a vault."),
    "under_retention": _l(
        "The vault still holds objects under retention: it cannot be deleted before they expire."
    ),
    "secret_already_shown": _l(
        "The secret key was shown once already and is not kept: rotate the key to get a new one."
    ),
    "bucket_not_ready": _l("The bucket is still being made: its key is not ready yet."),
    "metric_metered": _l("The broker meters this itself: it cannot be reported."),
    "kind_not_sold": _l("Your cloud does not make this kind of resource."),
    "immutability_unsupported": _l(
        "Your cloud cannot enforce a retention (object lock): it cannot sell a vault."
    ),
    "invoice_issued": _l("This invoice is issued: it no longer changes."),
    "period_not_ended": _l("The period has not ended yet: an invoice is issued after it."),
    "draft_outdated": _l(
        "This draft was built before its period ended: run billing for the period again."
    ),
    "not_issued": _l("This invoice is a draft: finalize it first."),
    "invoice_void": _l("This invoice is void."),
    "invoice_paid": _l("This invoice is paid: correct it with a credit note."),
    "invoice_partly_paid": _l(
        "Bank transfers were recorded for this invoice: correct it with a credit note."
    ),
    "nothing_to_credit": _l("Nothing remains to credit on this invoice."),
    "exceeds_creditable": _l("A credit note cannot credit more than remains of a line."),
    "en16931_rule_broken": _l(
        "This invoice would break a rule of the European e-invoicing standard (EN 16931): it "
        "was not issued. The rules broken are named below."
    ),
    "internal_error": _l(
        "Something went wrong on our side. The error was logged; try again later."
    ),
}


# marshmallow's messages, as a person reads them.
FIELD_WORDS: Mapping[str, Any] = {
    "Missing data for required field.": _l("Required."),
    "Not a valid number.": _l("Enter a number."),
    "Not a valid integer.": _l("Enter a whole number."),
    "Not a valid string.": _l("Enter some text."),
    "Not a valid UUID.": _l("Not a valid identifier."),
    "Not a valid boolean.": _l("Choose yes or no."),
    "Field may not be null.": _l("Required."),
    "Unknown field.": _l("Not expected here."),
    "Expected a whole number, such as 2.": _l("Enter a whole number, such as 2."),
}


ROLE_LABELS: Mapping[str, Any] = {
    "buyer": _l("buyer"),
    "approver": _l("approver"),
    "provider": _l("provider operator"),
    "finance": _l("finance"),
    "assessor": _l("assessor"),
    "admin": _l("administrator"),
}


STATE_LABELS: Mapping[str, Any] = {
    "draft": _l("draft"),
    "published": _l("published"),
    "retired": _l("retired"),
    "pending": _l("pending"),
    "verified": _l("verified"),
    "rejected": _l("rejected"),
    "withdrawn": _l("withdrawn"),
    "superseded": _l("superseded"),
    "pending_approval": _l("awaiting approval"),
    "approved": _l("approved"),
    "provisioning": _l("provisioning"),
    "completed": _l("completed"),
    "failed": _l("failed"),
    "cancelled": _l("cancelled"),
    "active": _l("active"),
    "stopping": _l("stopping"),
    "stopped": _l("stopped"),
    "starting": _l("starting"),
    "rebooting": _l("rebooting"),
    "updating": _l("updating"),
    "terminating": _l("terminating"),
    "terminated": _l("terminated"),
    "error": _l("error"),
    "finalized": _l("finalized"),
    "paid": _l("paid"),
    "void": _l("void"),
    "queued": _l("queued"),
    "running": _l("running"),
    "succeeded": _l("succeeded"),
    "dead": _l("dead"),
    "open": _l("open"),
    "not_configured": _l("not configured"),
    "sync_failed": _l("sync failed"),
    "payment_failed": _l("payment failed"),
    "suspended": _l("suspended"),
    "disabled": _l("disabled"),
    "enabled": _l("enabled"),
    "revoked": _l("revoked"),
}


METRIC_LABELS: Mapping[str, Any] = {
    "instance_hour": _l("Machine time"),
    "vcpu_hour": _l("vCPU time"),
    "ram_gib_hour": _l("Memory time"),
    "storage_gib_month": _l("Storage"),
    "egress_gib": _l("Outbound traffic"),
    "requests": _l("Requests"),
}


# Per unit of a metric (prices), and the unit a quantity is counted in (usage).
PER_UNIT: Mapping[str, Any] = {
    "hour": _l("per hour"),
    "vCPU-hour": _l("per vCPU-hour"),
    "GiB-hour": _l("per GiB-hour"),
    "GiB-month": _l("per GiB-month"),
    "GiB": _l("per GiB"),
    "request": _l("per request"),
}


UNITS: Mapping[str, Any] = {
    "instance_hour": _l("hours"),
    "vcpu_hour": _l("vCPU-hours"),
    "ram_gib_hour": _l("GiB-hours"),
    "storage_gib_month": _l("GiB-months"),
    "egress_gib": _l("GiB"),
    "requests": _l("requests"),
}


# The policy's reasons (their `code`), as a person reads them; the service's own sentence,
# with the figures, is shown beside it.
REASON_WORDS: Mapping[str, Any] = {
    "certification_missing": _l("A certification your agency requires is not valid today."),
    "country_not_allowed": _l("Your agency's policy does not allow the country of the data."),
    "jurisdiction_unverified": _l("Nobody has vouched for the operator's jurisdiction yet."),
    "extraterritorial_exposure": _l(
        "The operator is exposed to foreign law, which your agency's policy forbids."
    ),
    "currency_mismatch": _l("The offer is not priced in the currency of your budget."),
    "budget_exceeded": _l("This order would exceed the agency's monthly budget."),
    "provider_suspended": _l("The provider is suspended."),
}


ACTION_LABELS: Mapping[str, Any] = {
    "stop": _l("Stop"),
    "start": _l("Start"),
    "reboot": _l("Restart"),
    "terminate": _l("Delete"),
    "resize": _l("Resize"),
    "attach": _l("Attach"),
    "detach": _l("Detach"),
    "set_retention": _l("Extend the retention"),
    "rotate_key": _l("Rotate the key"),
}


# What a person reads once an action is under way, by kind of resource and action.
ACTION_DONE: Mapping[tuple[str, str], Any] = {
    ("vm", "stop"): _l("The machine is stopping."),
    ("vm", "start"): _l("The machine is starting."),
    ("vm", "reboot"): _l("The machine is restarting."),
    ("vm", "terminate"): _l("The machine is being deleted."),
    ("volume", "resize"): _l("The volume is being resized."),
    ("volume", "attach"): _l("The volume is being attached."),
    ("volume", "detach"): _l("The volume is being detached."),
    ("volume", "terminate"): _l("The volume is being deleted."),
    ("object_storage", "set_retention"): _l("The retention is being extended."),
    ("object_storage", "rotate_key"): _l(
        "A new key is being issued: its secret can be shown once, here, when it is ready."
    ),
    ("object_storage", "terminate"): _l("The bucket is being deleted."),
}


# The kinds of thing the catalogue sells: one of them, and the filter's choices.
KIND_LABELS: Mapping[str, Any] = {
    "vm": _l("Machine"),
    "volume": _l("Volume"),
    "object_storage": _l("Object storage"),
}
KIND_CHOICES: Mapping[str, Any] = {
    "vm": _l("Machines"),
    "volume": _l("Volumes"),
    "object_storage": _l("Object storage"),
}
# A volume's performance class, when it is one of the usual ones (else shown as written).
PERFORMANCE_LABELS: Mapping[str, Any] = {
    "standard": _l("Standard"),
    "high-iops": _l("High IOPS"),
}


TAX_LABELS: Mapping[str, Any] = {
    "S": _l("Standard VAT rate"),
    "Z": _l("Zero-rated"),
    "E": _l("Exempt from VAT"),
    "AE": _l("Reverse charge"),
}


SOURCE_LABELS: Mapping[str, Any] = {
    UsageSource.BROKER.value: _l("metered by the broker"),
    UsageSource.PUSH.value: _l("pushed"),
    UsageSource.POLL.value: _l("read from the cloud"),
}


FORMAT_LABELS: Mapping[str, Any] = {
    "pdf": _l("PDF"),
    "csv": _l("CSV (spreadsheet)"),
    "cii": _l("Factur-X CII (XML)"),
    "json": _l("JSON (issued snapshot)"),
}


def role_label(role: str) -> str:
    return str(ROLE_LABELS.get(role, role))


def state_label(state: Any) -> str:
    """A lifecycle state (an enum or its value) in the page's language."""
    value = getattr(state, "value", state)
    return str(STATE_LABELS.get(str(value), value))


def metric_label(metric: str) -> str:
    return str(METRIC_LABELS.get(metric, metric))


def kind_label(kind: str) -> str:
    return str(KIND_LABELS.get(kind, kind))


def action_done(kind: str, action: str) -> str:
    """The notice once `action` on a resource of `kind` is under way."""
    return str(ACTION_DONE.get((kind, action), ACTION_LABELS.get(action, action)))


# What templates read by these names, without each view passing them.
TEMPLATE_GLOBALS: Mapping[str, Any] = {
    "metric_labels": METRIC_LABELS,
    "per_unit": PER_UNIT,
    "units": UNITS,
    "reason_words": REASON_WORDS,
    "tax_labels": TAX_LABELS,
    "source_labels": SOURCE_LABELS,
    "format_labels": FORMAT_LABELS,
    "action_labels": ACTION_LABELS,
    "kind_labels": KIND_LABELS,
    "kind_choices": KIND_CHOICES,
    "performance_labels": PERFORMANCE_LABELS,
    "kind_label": kind_label,
    "role_label": role_label,
    "state_label": state_label,
    "metric_label": metric_label,
}
