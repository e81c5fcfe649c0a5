"""An organization's people: `/v1/organizations/{id}/identifiers` (how people are
recognised at sign-in), `/v1/organizations/{id}/members` (their roles) and
`/v1/users/{id}/disable|enable`."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma

from broker.api.base import Blueprint, current_caller, now, request_session
from broker.api.schemas import ListArgs, Matches, StrictSchema, Timestamp, page_of
from broker.models import Role
from broker.services import members as service

blp = Blueprint(
    "members",
    __name__,
    url_prefix="/v1/organizations",
    description="Organization identifiers and members",
)
users = Blueprint("users", __name__, url_prefix="/v1/users", description="People")


class IdentifierCreateSchema(StrictSchema):
    scheme = ma.fields.String(
        required=True,
        validate=Matches(
            r"^[a-z][a-z0-9_-]{0,49}$",
            "`siret`, `email_domain` or another scheme's name: lowercase letters, digits, `_` "
            "and `-`, starting with a letter, at most 50 characters",
            suggest=True,
        ),
        metadata={
            "description": "`siret` (14 digits), `email_domain` (a lowercase DNS name), or "
            "the name of the claim another identity provider carries."
        },
    )
    value = ma.fields.String(
        required=True,
        validate=ma.validate.Length(min=1, max=255),
        metadata={"example": "13002526500013"},
    )


class IdentifierSchema(ma.Schema):
    id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    scheme = ma.fields.String()
    value = ma.fields.String()
    created_at = Timestamp()


class RolesSchema(StrictSchema):
    roles = ma.fields.List(
        ma.fields.Enum(Role, by_value=True),
        required=True,
        validate=ma.validate.Length(max=len(Role)),
        metadata={"description": "The member's roles, replaced whole; [] takes them away."},
    )


class MemberSchema(ma.Schema):
    """A person as a member of one organization."""

    user_id = ma.fields.UUID()
    organization_id = ma.fields.UUID()
    email = ma.fields.String(attribute="user.email")
    display_name = ma.fields.String(attribute="user.display_name")
    roles = ma.fields.List(ma.fields.String())
    disabled = ma.fields.Function(
        lambda membership: membership.user.disabled_at is not None,
        metadata={"type": "boolean", "description": "A disabled person cannot sign in."},
    )
    member_since = Timestamp(attribute="created_at")


class UserMembershipSchema(ma.Schema):
    organization_id = ma.fields.UUID()
    roles = ma.fields.List(ma.fields.String())


class UserSchema(ma.Schema):
    """A person, with the organizations they belong to."""

    id = ma.fields.UUID()
    email = ma.fields.String()
    display_name = ma.fields.String()
    language = ma.fields.String()
    disabled = ma.fields.Function(
        lambda user: user.disabled_at is not None, metadata={"type": "boolean"}
    )
    disabled_at = Timestamp(allow_none=True)
    memberships = ma.fields.List(ma.fields.Nested(UserMembershipSchema))
    created_at = Timestamp()


# Identifiers -----------------------------------------------------------------------------


@blp.route("/<uuid:organization_id>/identifiers", methods=["GET"])
@blp.auth(Role.ADMIN)
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(IdentifierSchema))
def list_identifiers(args: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """The identifiers the organization's people are recognised by at sign-in."""
    return service.list_identifiers(request_session(), organization_id, **args)


@blp.route("/<uuid:organization_id>/identifiers", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(IdentifierCreateSchema())
@blp.response(201, IdentifierSchema)
def add_identifier(data: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """Recognise the organization's people at sign-in by an identifier: the value of an
    identity provider's organization claim (`siret`) or their e-mail's domain
    (`email_domain`). An identifier another organization holds is a 409 naming it."""
    return service.add_identifier(request_session(), current_caller(), organization_id, **data)


@blp.route("/<uuid:organization_id>/identifiers/<uuid:identifier_id>", methods=["DELETE"])
@blp.auth(Role.ADMIN)
@blp.response(204)
def remove_identifier(organization_id: uuid.UUID, identifier_id: uuid.UUID) -> None:
    """Stop recognising people by this identifier (existing members stay members)."""
    service.remove_identifier(request_session(), current_caller(), organization_id, identifier_id)


# Members ---------------------------------------------------------------------------------


@blp.route("/<uuid:organization_id>/members", methods=["GET"])
@blp.auth(Role.ADMIN, Role.APPROVER)
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(MemberSchema))
def list_members(args: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """The organization's people and their roles (approvers: their own agency's)."""
    return service.list_members(request_session(), current_caller(), organization_id, **args)


@blp.route("/<uuid:organization_id>/members/<uuid:user_id>", methods=["PUT"])
@blp.auth(Role.ADMIN, Role.APPROVER)
@blp.arguments(RolesSchema())
@blp.response(200, MemberSchema)
def set_member_roles(data: dict[str, Any], organization_id: uuid.UUID, user_id: uuid.UUID) -> Any:
    """Set a member's roles. An approver grants `buyer` and `approver` in their own agency;
    an admin, any role the organization's kind allows (others: 422 `role_not_allowed`).
    Someone who is not a member is a 404."""
    return service.set_roles(
        request_session(), current_caller(), organization_id, user_id, data["roles"]
    )


# People ----------------------------------------------------------------------------------


@users.route("/<uuid:user_id>/disable", methods=["POST"])
@users.auth(Role.ADMIN)
@users.response(200, UserSchema)
def disable_user(user_id: uuid.UUID) -> Any:
    """Disable a person: they cannot sign in, and their browser sessions end at once.
    Already disabled: 409 `user_disabled`."""
    return service.disable_user(request_session(), current_caller(), user_id, now())


@users.route("/<uuid:user_id>/enable", methods=["POST"])
@users.auth(Role.ADMIN)
@users.response(200, UserSchema)
def enable_user(user_id: uuid.UUID) -> Any:
    """Let a disabled person sign in again. Not disabled: 409 `user_not_disabled`."""
    return service.enable_user(request_session(), current_caller(), user_id)
