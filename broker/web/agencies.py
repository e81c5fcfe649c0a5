"""The approver's pages: the approvals inbox (each order with its policy verdict checked again
now, as approving would), the agency's overview, its policy editor (the version read travels
in the form, so a change made meanwhile is said rather than overwritten), its members and
invitations, and its webhooks. Every page is the agency the approver acts for."""

from __future__ import annotations

import re
import uuid
from typing import Any

import marshmallow as ma
from flask import Response, current_app, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from billing.money import MINOR_UNITS
from broker.api.base import now, provider_runtime, request_session
from broker.api.invitations import InvitationCreateSchema
from broker.api.members import RolesSchema
from broker.api.orders import RejectSchema
from broker.api.policies import PolicySchema
from broker.api.webhooks import WebhookCreateSchema
from broker.errors import BrokerError, NotFound, PreconditionFailed
from broker.models import OrderState, Role
from broker.services import invitations as invitations_service
from broker.services import members as members_service
from broker.services import offers as offers_service
from broker.services import orders as orders_service
from broker.services import organizations as organizations_service
from broker.services import policies as policies_service
from broker.services import webhooks as webhooks_service
from broker.web.i18n import typed_amount
from broker.web.pages import (
    Problem,
    bp,
    caller,
    cursor_arg,
    done,
    page,
    precondition,
    problem_of,
    render,
)

PAGE_SIZE = 50


def _agency_id() -> uuid.UUID:
    return caller().organization_id


def _list_fields(problem: Problem) -> Problem:
    """Messages about one item of a list field (`sovereignty.allowed_countries.0`) shown by
    the list's own field."""
    fields: dict[str, list[str]] = {}
    for name, messages in problem.fields.items():
        fields.setdefault(re.sub(r"(\.\d+)+$", "", name), []).extend(messages)
    problem.fields = fields
    return problem


# Approvals ------------------------------------------------------------------------------


def _inbox(
    problem: Problem | None = None, order_id: uuid.UUID | None = None, reason: str = ""
) -> Response:
    """The inbox, with what went wrong with the order `order_id` when something did."""
    session, person, moment = request_session(), caller(), now()
    found = orders_service.list_orders(
        session, person, limit=PAGE_SIZE, cursor=cursor_arg(), state=OrderState.PENDING_APPROVAL
    )
    waiting = [
        {
            "order": order,
            "offer": offers_service.get_offer(session, person, order.offer_id),
            "reasons": orders_service.recheck(session, order, moment),
        }
        for order in found.items
    ]
    policy = policies_service.get_policy(session, person, person.organization_id)
    return render(
        "console/agency/approvals.html",
        200 if problem is None else problem.status,
        waiting=waiting,
        page=found,
        names=members_service.person_names(session, [o.created_by for o in found.items]),
        policy=policy,
        remaining=orders_service.budget_remaining(session, policy, person.organization_id),
        problem=problem,
        failed=order_id,
        reason=reason,
    )


@bp.get("/approvals")
@page(Role.APPROVER)
def approvals() -> Response:
    """The agency's orders awaiting approval, newest first, each with the policy's verdict
    checked again now (certifications expire, budgets fill up)."""
    return _inbox()


@bp.post("/approvals/<uuid:order_id>/approve")
@page(Role.APPROVER)
def approve_order(order_id: uuid.UUID) -> Response | BaseResponse:
    """Approve an order: its machines are made. One that no longer complies stays waiting."""
    try:
        order = orders_service.approve(request_session(), caller(), order_id, now())
    except NotFound:
        raise
    except BrokerError as error:
        problem = problem_of(error)
        if error.code == "policy_violation":
            problem.message = gettext(
                "This order no longer complies with the agency's policy; it stays awaiting "
                "approval."
            )
        return _inbox(problem, order_id)
    return done(
        "console.approvals",
        gettext("Order %(name)s approved: its machines are being made.", name=order.name),
    )


@bp.post("/approvals/<uuid:order_id>/reject")
@page(Role.APPROVER)
def reject_order(order_id: uuid.UUID) -> Response | BaseResponse:
    """Reject an order, saying why (the buyer reads the reason)."""
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _inbox(
            Problem(
                gettext("Say why the order is rejected."),
                {"reason": [gettext("Enter the reason for the rejection; the buyer reads it.")]},
            ),
            order_id,
        )
    try:
        data = RejectSchema().load({"reason": reason})
        order = orders_service.reject(request_session(), caller(), order_id, data["reason"], now())
    except NotFound:
        raise
    except (BrokerError, ma.ValidationError) as error:
        return _inbox(problem_of(error), order_id, reason)
    return done("console.approvals", gettext("Order %(name)s rejected.", name=order.name))


# The agency ----------------------------------------------------------------------------


@bp.get("/agency")
@page(Role.APPROVER)
def agency() -> Response:
    """The agency at a glance: its policy, and the way to its members, invitations and
    webhooks."""
    session, person = request_session(), caller()
    policy = policies_service.get_policy(session, person, person.organization_id)
    return render(
        "console/agency/overview.html",
        organization=organizations_service.get_organization(
            session, person, person.organization_id
        ),
        policy=policy,
        remaining=orders_service.budget_remaining(session, policy, person.organization_id),
    )


def _policy_form(policy: policies_service.PolicyView) -> dict[str, Any]:
    """The form's values for a stored policy."""
    return {
        "currency": policy.currency or "EUR",
        "monthly_budget": typed_amount(policy.monthly_budget),
        "approval_threshold": typed_amount(policy.approval_threshold),
        "required_certifications": sorted(policy.sovereignty.required_certifications),
        "allowed_countries": ", ".join(sorted(policy.sovereignty.allowed_countries)),
        "forbid_extraterritorial": policy.sovereignty.forbid_extraterritorial,
        "revision": policy.version,
    }


def _posted_policy() -> tuple[dict[str, Any], dict[str, Any]]:
    """The posted form: as typed (to show again) and as the API's policy body."""
    form = request.form
    typed: dict[str, Any] = {
        "currency": form.get("currency", ""),
        "monthly_budget": form.get("monthly_budget", "").strip(),
        "approval_threshold": form.get("approval_threshold", "").strip(),
        "required_certifications": form.getlist("sovereignty.required_certifications"),
        "allowed_countries": form.get("sovereignty.allowed_countries", ""),
        "forbid_extraterritorial": "sovereignty.forbid_extraterritorial" in form,
        "revision": form.get("revision", ""),
    }
    body = {
        "currency": typed["currency"],
        "monthly_budget": typed["monthly_budget"] or None,
        "approval_threshold": typed["approval_threshold"] or None,
        "sovereignty": {
            "required_certifications": typed["required_certifications"],
            "allowed_countries": [
                code.strip().upper()
                for code in re.split(r"[\s,;]+", typed["allowed_countries"])
                if code.strip()
            ],
            "forbid_extraterritorial": typed["forbid_extraterritorial"],
        },
    }
    return typed, body


def _policy_page(values: dict[str, Any], problem: Problem | None = None) -> Response:
    schemes = set(offers_service.claimed_schemes(request_session()))
    schemes.update(values["required_certifications"])
    return render(
        "console/agency/policy.html",
        200 if problem is None else problem.status,
        values=values,
        currencies=[(code, code) for code in sorted(MINOR_UNITS)],
        schemes=sorted(schemes),
        problem=problem,
    )


@bp.route("/agency/policy", methods=["GET", "POST"])
@page(Role.APPROVER)
def policy() -> Response | BaseResponse:
    """The agency's policy: budget, approval threshold and sovereignty rules. The version
    read is sent back with the change; if someone saved another meanwhile, theirs is shown."""
    session, person = request_session(), caller()
    if request.method == "GET":
        return _policy_page(
            _policy_form(policies_service.get_policy(session, person, person.organization_id))
        )
    typed, body = _posted_policy()
    revision = typed["revision"]
    try:
        data = PolicySchema().load(body)
        policies_service.put_policy(
            session,
            person,
            person.organization_id,
            if_match=precondition(revision),
            **data,
        )
    except PreconditionFailed as error:
        current = policies_service.get_policy(session, person, person.organization_id)
        return _policy_page(_policy_form(current), problem_of(error))
    except (BrokerError, ma.ValidationError) as error:
        return _policy_page(typed, _list_fields(problem_of(error)))
    return done("console.policy", gettext("The policy is saved."))


# Members and invitations ---------------------------------------------------------------


def _members_page(problem: Problem | None = None, status: int = 200, **context: Any) -> Response:
    session, person = request_session(), caller()
    organization_id = person.organization_id
    members = members_service.list_members(session, person, organization_id, limit=200, cursor=None)
    invitations = invitations_service.list_invitations(
        session, person, organization_id, limit=200, cursor=None
    )
    moment = now()
    return render(
        "console/agency/members.html",
        problem.status if problem is not None else status,
        members=members.items,
        invitations=[
            (invitation, invitations_service.state_of(invitation, moment))
            for invitation in invitations.items
        ],
        grantable=sorted(role.value for role in members_service.APPROVER_GRANTS),
        problem=problem,
        **context,
    )


@bp.get("/agency/members")
@page(Role.APPROVER)
def members() -> Response:
    """The agency's people and their roles; its invitations, and a form to invite someone."""
    return _members_page()


@bp.post("/agency/members/<uuid:user_id>/roles")
@page(Role.APPROVER)
def set_member_roles(user_id: uuid.UUID) -> Response | BaseResponse:
    """Give a member the roles ticked (none: they stay a member without any role)."""
    try:
        data = RolesSchema().load({"roles": request.form.getlist("roles")})
        membership = members_service.set_roles(
            request_session(), caller(), _agency_id(), user_id, data["roles"]
        )
    except NotFound:
        raise
    except (BrokerError, ma.ValidationError) as error:
        return _members_page(problem_of(error), member=user_id)
    return done(
        "console.members",
        gettext("The roles of %(name)s are saved.", name=membership.user.display_name),
    )


@bp.post("/agency/invitations")
@page(Role.APPROVER)
def invite() -> Response:
    """Invite a person by e-mail; the link is shown once, on the page that answers."""
    email = request.form.get("email", "").strip()
    roles = request.form.getlist("roles")
    try:
        data = InvitationCreateSchema().load({"email": email, "roles": roles})
        issued = invitations_service.issue(
            request_session(),
            caller(),
            current_app.config,
            provider_runtime().keyring,
            _agency_id(),
            data["email"],
            data["roles"],
            now(),
        )
    except (BrokerError, ma.ValidationError) as error:
        return _members_page(problem_of(error), invited={"email": email, "roles": roles})
    return _members_page(status=201, issued=issued)


@bp.post("/agency/invitations/<uuid:invitation_id>/revoke")
@page(Role.APPROVER)
def revoke_invitation(invitation_id: uuid.UUID) -> Response | BaseResponse:
    """Revoke an invitation: its link stops working."""
    try:
        invitation = invitations_service.revoke(
            request_session(), caller(), invitation_id, now(), organization_id=_agency_id()
        )
    except NotFound:
        raise
    except BrokerError as error:
        return _members_page(problem_of(error))
    return done(
        "console.members",
        gettext("The invitation of %(email)s is revoked.", email=invitation.email),
    )


# Webhooks ------------------------------------------------------------------------------


def _webhooks_page(problem: Problem | None = None, status: int = 200, **context: Any) -> Response:
    session, person = request_session(), caller()
    found = webhooks_service.list_endpoints(
        session, person, organization_id=person.organization_id, limit=50, cursor=None
    )
    return render(
        "console/agency/webhooks.html",
        problem.status if problem is not None else status,
        endpoints=found.items,
        event_types=webhooks_service.EVENT_TYPES,
        problem=problem,
        **context,
    )


@bp.route("/agency/webhooks", methods=["GET", "POST"])
@page(Role.APPROVER)
def webhooks() -> Response:
    """Where the agency's order and machine changes are delivered; add an endpoint (its
    signing secret is shown once, on the page that answers)."""
    if request.method == "GET":
        return _webhooks_page()
    url = request.form.get("url", "").strip()
    events = request.form.getlist("events")
    try:
        data = WebhookCreateSchema().load({"url": url, "events": events})
        endpoint, secret = webhooks_service.register(
            request_session(),
            caller(),
            data["url"],
            data["events"],
            provider_runtime().keyring,
            webhooks_service.http_policy(current_app.config),
        )
    except (BrokerError, ma.ValidationError) as error:
        return _webhooks_page(_list_fields(problem_of(error)), typed={"url": url, "events": events})
    return _webhooks_page(status=201, created=endpoint, secret=secret)


@bp.post("/agency/webhooks/<uuid:endpoint_id>/enable")
@page(Role.APPROVER)
def enable_webhook(endpoint_id: uuid.UUID) -> BaseResponse:
    """Deliver to an endpoint again."""
    endpoint = webhooks_service.enable_endpoint(request_session(), caller(), endpoint_id)
    return done("console.webhooks", gettext("Deliveries to %(url)s resume.", url=endpoint.url))


@bp.post("/agency/webhooks/<uuid:endpoint_id>/disable")
@page(Role.APPROVER)
def disable_webhook(endpoint_id: uuid.UUID) -> BaseResponse:
    """Stop delivering to an endpoint until it is enabled again."""
    endpoint = webhooks_service.disable_endpoint(request_session(), caller(), endpoint_id)
    return done("console.webhooks", gettext("Deliveries to %(url)s stop.", url=endpoint.url))


@bp.post("/agency/webhooks/<uuid:endpoint_id>/delete")
@page(Role.APPROVER)
def delete_webhook(endpoint_id: uuid.UUID) -> BaseResponse:
    """Remove an endpoint; deliveries still queued for it are dropped."""
    endpoint = webhooks_service.get_endpoint(request_session(), caller(), endpoint_id)
    url = endpoint.url
    webhooks_service.delete_endpoint(request_session(), caller(), endpoint_id)
    return done("console.webhooks", gettext("The endpoint %(url)s is removed.", url=url))
