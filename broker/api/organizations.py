"""`/v1/organizations`: agencies, providers' operators and the consortium; their API clients."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, now, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
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
    """An API client as admins see it: never its secret, nor the secret's hash."""

    id = ma.fields.UUID()
    client_id = ma.fields.String()
    name = ma.fields.String()
    organization_id = ma.fields.UUID()
    roles = ma.fields.List(ma.fields.String())
    created_at = Timestamp()
    revoked_at = Timestamp(
        allow_none=True, metadata={"description": "When it was revoked; null while active."}
    )
    credential_version = ma.fields.Integer(
        metadata={"description": "1 at creation, plus one per rotation of the secret."}
    )
    rotated_at = Timestamp(
        allow_none=True,
        metadata={"description": "When the secret was last rotated; null if never."},
    )


class IssuedClientSchema(ma.Schema):
    """A new client with its secret (dumped from `services.organizations.IssuedClient`)."""

    id = ma.fields.UUID(attribute="client.id")
    client_id = ma.fields.String(attribute="client.client_id")
    name = ma.fields.String(attribute="client.name")
    organization_id = ma.fields.UUID(attribute="client.organization_id")
    roles = ma.fields.List(ma.fields.String(), attribute="client.roles")
    created_at = Timestamp(attribute="client.created_at")
    credential_version = ma.fields.Integer(attribute="client.credential_version")
    client_secret = ma.fields.String(
        attribute="secret", metadata={"description": "Shown once, now. Only a hash is kept."}
    )


# A client in a path: its `client_id`, or its `id`.
_CLIENT = "<string(maxlength=64):client_id>"


def _client_parameter() -> dict[str, Any]:
    # A new dict each time: flask-smorest completes the one it is given in place.
    return {"in": "path", "name": "client_id", "description": "`client_id` (or `id`)."}


_NO_STORE = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}


def _organization_response(organization: Any) -> Response:
    return with_etag(jsonify(OrganizationSchema().dump(organization)), organization.version)


def _secret_response(issued: service.IssuedClient, status: int) -> Response:
    """A response carrying a client secret, which no cache may keep (RFC 6749 §5.1 asks
    the same of tokens)."""
    response = jsonify(IssuedClientSchema().dump(issued))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("", methods=["GET"])
@blp.auth()
@blp.arguments(OrganizationListArgs(), location="query")
@blp.response(200, page_of(OrganizationSchema))
def list_organizations(args: dict[str, Any]) -> Any:
    """List organizations (admins see all; others see their own)."""
    return service.list_organizations(request_session(), current_caller(), **args)


@blp.route("", methods=["POST"])
@blp.auth(Role.ADMIN)
@idempotent(required=False)
@blp.arguments(OrganizationCreateSchema())
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
@blp.arguments(OrganizationPatchSchema())
@blp.response(200, OrganizationSchema, headers={"ETag": {"schema": {"type": "string"}}})
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def update_organization(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Rename an organization (needs `If-Match`)."""
    organization = service.rename_organization(
        request_session(),
        current_caller(),
        organization_id,
        if_match=if_match(),
        **data,
    )
    return _organization_response(organization)


@blp.route("/<uuid:organization_id>/clients", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(ClientCreateSchema())
@blp.response(201, IssuedClientSchema, headers=_NO_STORE)
def create_client(data: dict[str, Any], organization_id: uuid.UUID) -> Response:
    """Issue an API client with roles; its secret is returned once and never again."""
    issued = service.create_client(request_session(), current_caller(), organization_id, **data)
    return _secret_response(issued, 201)


@blp.route("/<uuid:organization_id>/clients", methods=["GET"])
@blp.auth(Role.ADMIN)
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(ClientSchema))
def list_clients(args: dict[str, Any], organization_id: uuid.UUID) -> Any:
    """List an organization's API clients (never their secrets)."""
    return service.list_clients(request_session(), current_caller(), organization_id, **args)


@blp.route(
    f"/<uuid:organization_id>/clients/{_CLIENT}/revoke",
    methods=["POST"],
    parameters=[_client_parameter()],
)
@blp.auth(Role.ADMIN)
@blp.response(200, ClientSchema)
def revoke_client(organization_id: uuid.UUID, client_id: str) -> Any:
    """Revoke an API client.

    It gets no new token, and the tokens it holds are refused from its next request on.
    Revoking it again is a 409 `client_revoked`; a client of another organization is a 404.
    """
    return service.revoke_client(
        request_session(), current_caller(), organization_id, client_id, now()
    )


@blp.route(
    f"/<uuid:organization_id>/clients/{_CLIENT}/rotate-secret",
    methods=["POST"],
    parameters=[_client_parameter()],
)
@blp.auth(Role.ADMIN)
@blp.response(200, IssuedClientSchema, headers=_NO_STORE)
def rotate_client_secret(organization_id: uuid.UUID, client_id: str) -> Response:
    """Give an API client a new secret (returned once).

    The old secret, and every token issued before, stop working at once: what to do after a
    leak. A revoked client is a 409 `client_revoked`; one of another organization a 404.
    """
    issued = service.rotate_client_secret(
        request_session(), current_caller(), organization_id, client_id, now()
    )
    return _secret_response(issued, 200)
