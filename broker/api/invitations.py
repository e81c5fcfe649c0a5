"""`/v1/organizations/{id}/invitations`: people invited by e-mail to join an organization.

The answer to `POST` holds the invitation's link, shown once (only a hash of its token is
kept), and says whether it was e-mailed (when SMTP is configured). See
broker/services/invitations.py for the rules; the link's landing page belongs to sign-in.
"""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify

from broker.api.base import Blueprint, current_caller, now, provider_runtime, request_session
from broker.api.schemas import ListArgs, StrictSchema, Timestamp, page_of
from broker.models import Invitation, Role
from broker.services import invitations as service

blp = Blueprint(
    "invitations",
    __name__,
    url_prefix="/v1/organizations/<uuid:organization_id>/invitations",
    description="Invitations",
)

_NO_STORE = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}


class InvitationCreateSchema(StrictSchema):
    email = ma.fields.Email(
        required=True,
        validate=ma.validate.Length(max=320),
        error_messages={
            "invalid": "Expected an e-mail address, such as `jeanne.martin@agence.gouv.fr`."
        },
        metadata={"description": "Where the invitation goes; whoever signs in with it joins."},
    )
    roles = ma.fields.List(
        ma.fields.Enum(Role, by_value=True),
        required=True,
        validate=ma.validate.Length(min=1, max=len(Role)),
        metadata={
            "description": "Roles the person gets in the organization: those its kind allows "
            "(an agency's approver may grant buyer and approver)."
        },
    )


class InvitationSchema(ma.Schema):
    """An invitation as its organization sees it: never its token."""

    id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    email = ma.fields.String()
    roles = ma.fields.List(ma.fields.String())
    state = ma.fields.Function(
        lambda invitation: service.state_of(invitation, now()),
        metadata={
            "description": "`pending` (its link works), `accepted`, `revoked` or `expired`.",
            "type": "string",
            "enum": list(service.STATES),
        },
    )
    invited_by = ma.fields.String(metadata={"description": "The inviter's client id."})
    expires_at = Timestamp()
    accepted_at = Timestamp(allow_none=True)
    revoked_at = Timestamp(allow_none=True)
    created_at = Timestamp()


class IssuedInvitationSchema(InvitationSchema):
    link = ma.fields.String(
        metadata={
            "description": "The invitation link: shown once, now (only a hash of its token is "
            "kept). Pass it on when `emailed` is false."
        }
    )
    emailed = ma.fields.Boolean(
        metadata={
            "description": "Whether an e-mail with the link was queued (SMTP is configured); "
            "it is sent in the background and retried if the mail server is down."
        }
    )


@blp.route("", methods=["POST"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.arguments(InvitationCreateSchema())
@blp.response(201, IssuedInvitationSchema, headers=_NO_STORE)
def create_invitation(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Invite a person by e-mail, with roles (admins: any organization; approvers: their own).

    The answer holds the link, never shown again. A pending invitation of the same address to
    the same organization is revoked. Roles the organization's kind does not allow are a 422
    `role_not_allowed`.
    """
    issued = service.issue(
        request_session(),
        current_caller(),
        current_app.config,
        provider_runtime().keyring,
        organization_id,
        data["email"],
        data["roles"],
        now(),
    )
    body = {
        **InvitationSchema().dump(issued.invitation),
        "link": issued.link,
        "emailed": issued.emailed,
    }
    response = jsonify(body)
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("", methods=["GET"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(InvitationSchema))
def list_invitations(args: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """List the organization's invitations in every state (never their links)."""
    return service.list_invitations(request_session(), current_caller(), organization_id, **args)


@blp.route("/<uuid:invitation_id>/revoke", methods=["POST"])
@blp.auth(Role.APPROVER, Role.ADMIN)
@blp.response(200, InvitationSchema)
def revoke_invitation(organization_id: uuid.UUID, invitation_id: uuid.UUID) -> Invitation:
    """Revoke an invitation: its link stops working and its e-mail, if not sent yet, is not.

    One already used or revoked is a 409 (`invitation_used`, `invitation_revoked`).
    """
    return service.revoke(
        request_session(),
        current_caller(),
        invitation_id,
        now(),
        organization_id=organization_id,
    )
