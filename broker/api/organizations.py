"""`/v1/organizations`: agencies, providers' operators and the consortium; their API clients."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match_version, with_etag
from broker.api.idempotency import idempotent
from broker.api.schemas import ListArgs, StrictSchema, Timestamp, name_field, page_of
from broker.models import OrganizationKind, Role
from broker.services import organizations as service

blp = Blueprint(
    "organizations", __name__, url_prefix="/v1/organizations", description="Organizations"
)


class OrganizationSchema(ma.Schema):
    id = ma.fields.UUID(dump_only=True)
    name = ma.fields.String(required=True)
    kind = ma.fields.Enum(OrganizationKind, by_value=True, required=True)
    created_at = Timestamp(dump_only=True)


class OrganizationCreateSchema(StrictSchema):
    name = name_field(required=True)
    kind = ma.fields.Enum(OrganizationKind, by_value=True, required=True)


class OrganizationPatchSchema(StrictSchema):
    name = name_field(required=True)


class OrganizationListArgs(ListArgs):
    kind = ma.fields.Enum(OrganizationKind, by_value=True, load_default=None)


class ClientCreateSchema(StrictSchema):
    name = name_field(required=True)
    roles = ma.fields.List(
        ma.fields.Enum(Role, by_value=True),
        required=True,
        validate=ma.validate.Length(min=1, max=len(Role)),
    )


class ClientSchema(ma.Schema):
    id = ma.fields.UUID()
    client_id = ma.fields.String()
    name = ma.fields.String()
    organization_id = ma.fields.UUID()
    roles = ma.fields.List(ma.fields.String())
    created_at = Timestamp()


class IssuedClientSchema(ma.Schema):
    """A new client with its secret (dumped from `services.organizations.IssuedClient`)."""

    id = ma.fields.UUID(attribute="client.id")
    client_id = ma.fields.String(attribute="client.client_id")
    name = ma.fields.String(attribute="client.name")
    organization_id = ma.fields.UUID(attribute="client.organization_id")
    roles = ma.fields.List(ma.fields.String(), attribute="client.roles")
    created_at = Timestamp(attribute="client.created_at")
    client_secret = ma.fields.String(
        attribute="secret", metadata={"description": "Shown once, now. Only a hash is kept."}
    )


def _organization_response(organization: Any) -> Response:
    return with_etag(jsonify(OrganizationSchema().dump(organization)), organization.version)


@blp.route("", methods=["GET"])
@blp.auth()
@blp.arguments(OrganizationListArgs, location="query")
@blp.response(200, page_of(OrganizationSchema))
def list_organizations(args: dict[str, Any]) -> Any:
    """List organizations (admins see all; others see their own)."""
    return service.list_organizations(request_session(), current_caller(), **args)


@blp.route("", methods=["POST"])
@blp.auth(Role.ADMIN)
@idempotent(required=False)
@blp.arguments(OrganizationCreateSchema)
@blp.response(201, OrganizationSchema, headers={"ETag": {"schema": {"type": "string"}}})
def create_organization(data: dict[str, Any]) -> Response:
    """Register an organization."""
    organization = service.create_organization(request_session(), current_caller(), **data)
    return created(
        _organization_response(organization),
        "organizations.get_organization",
        organization_id=organization.id,
    )


@blp.route("/<uuid:organization_id>", methods=["GET"])
@blp.auth()
@blp.response(200, OrganizationSchema, headers={"ETag": {"schema": {"type": "string"}}})
def get_organization(organization_id: uuid.UUID) -> Response:
    """Read one organization (your own, or any as admin)."""
    return _organization_response(
        service.get_organization(request_session(), current_caller(), organization_id)
    )


@blp.route("/<uuid:organization_id>", methods=["PATCH"])
@blp.auth(Role.ADMIN)
@blp.arguments(OrganizationPatchSchema)
@blp.response(200, OrganizationSchema, headers={"ETag": {"schema": {"type": "string"}}})
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def update_organization(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Rename an organization (needs `If-Match`)."""
    organization = service.rename_organization(
        request_session(),
        current_caller(),
        organization_id,
        expected_version=if_match_version(),
        **data,
    )
    return _organization_response(organization)


@blp.route("/<uuid:organization_id>/clients", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(ClientCreateSchema)
@blp.response(201, IssuedClientSchema)
def create_client(data: dict[str, Any], organization_id: uuid.UUID) -> service.IssuedClient:
    """Issue an API client with roles; its secret is returned once and never again."""
    return service.create_client(request_session(), current_caller(), organization_id, **data)


@blp.route("/<uuid:organization_id>/clients", methods=["GET"])
@blp.auth(Role.ADMIN)
@blp.arguments(ListArgs, location="query")
@blp.response(200, page_of(ClientSchema))
def list_clients(args: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """List an organization's API clients (never their secrets)."""
    return service.list_clients(request_session(), current_caller(), organization_id, **args)
