"""`/v1/identity-providers`: the OpenID Connect providers people sign in with (admins)."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import Response, jsonify

from broker.api.base import Blueprint, created, current_caller, provider_runtime, request_session
from broker.api.concurrency import IF_MATCH_PARAMETER, if_match, with_etag
from broker.api.schemas import (
    JsonBool,
    ListArgs,
    Matches,
    PublicUrl,
    StrictSchema,
    Timestamp,
    name_field,
    page_of,
)
from broker.models import IdentityProvider, Role
from broker.services import identity_providers as service

blp = Blueprint(
    "identity_providers",
    __name__,
    url_prefix="/v1/identity-providers",
    description="Identity providers",
)

_ETAG = {"ETag": {"schema": {"type": "string"}}}
_PRINTABLE = r"[\x21-\x7e]"


def _issuer_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=[
            ma.validate.Length(min=1, max=500),
            PublicUrl(
                "https://auth.example.gouv.fr",
                local_when="PROVIDER_ALLOW_PRIVATE_ENDPOINTS",
                query=False,
            ),
        ],
        metadata={
            "description": "The issuer identifier (`iss`, exactly): an https URL of a public host, "
            "without query or fragment. Its discovery document is read from "
            "`{issuer}/.well-known/openid-configuration`."
        },
        **kwargs,
    )


def _client_id_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        validate=[
            ma.validate.Length(min=1, max=255),
            Matches(rf"^{_PRINTABLE}+$", "the broker's client id there: printable ASCII"),
        ],
        metadata={"description": "The broker's client id at the provider."},
        **kwargs,
    )


def _client_secret_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        load_only=True,
        validate=[
            ma.validate.Length(min=1, max=1000),
            Matches(rf"^{_PRINTABLE}+$", "the client secret: printable ASCII without spaces"),
        ],
        metadata={
            "description": "Write-only: stored encrypted, never shown again.",
            **kwargs.pop("metadata", {}),
        },
        **kwargs,
    )


def _scopes_field(**kwargs: Any) -> ma.fields.String:
    # RFC 6749 §3.3: scope tokens of printable ASCII except `"` and `\`, one space apart; one
    # of them `openid` (in the pattern, so that the OpenAPI document says so too).
    token = r"[\x21\x23-\x5b\x5d-\x7e]+"
    return ma.fields.String(
        validate=[
            ma.validate.Length(min=1, max=500),
            Matches(
                rf"^(?:{token} )*openid(?: {token})*$",
                "scopes separated by single spaces, one of them `openid`, such as "
                "`openid email profile`",
            ),
        ],
        metadata={"description": "Asked for at sign-in, space-separated; must include openid."},
        **kwargs,
    )


def _claim_field(**kwargs: Any) -> ma.fields.String:
    return ma.fields.String(
        allow_none=True,
        validate=Matches(
            r"^[A-Za-z_][A-Za-z0-9_.:-]{0,99}$",
            "a claim name such as `siret`: letters, digits, `_`, `.`, `:` and `-`, starting "
            "with a letter or `_`, at most 100 characters",
        ),
        metadata={
            "description": "The claim naming the person's organization (such as `siret`), "
            "matched against the organizations' identifiers of the same scheme; null: none."
        },
        **kwargs,
    )


class IdentityProviderPatchSchema(StrictSchema):
    name = name_field()
    issuer = _issuer_field()
    client_id = _client_id_field()
    client_secret = _client_secret_field(
        metadata={"description": "Replaces the stored secret (write-only)."}
    )
    scopes = _scopes_field()
    organization_claim = _claim_field()
    match_email_domain = JsonBool(
        metadata={"description": "Find the organization by the e-mail's domain too."}
    )
    enabled = JsonBool(metadata={"description": "Offered at sign-in."})


class IdentityProviderCreateSchema(IdentityProviderPatchSchema):
    name = name_field(required=True)
    issuer = _issuer_field(required=True)
    client_id = _client_id_field(required=True)
    client_secret = _client_secret_field(required=True)
    scopes = _scopes_field(load_default=service.DEFAULT_SCOPES)
    organization_claim = _claim_field(load_default=None)
    match_email_domain = JsonBool(
        load_default=True,
        metadata={"description": "Find the organization by the e-mail's domain too."},
    )
    enabled = JsonBool(load_default=True, metadata={"description": "Offered at sign-in."})


class IdentityProviderSchema(ma.Schema):
    """An identity provider as admins see it: never its client secret."""

    id = ma.fields.UUID()
    name = ma.fields.String()
    issuer = ma.fields.String()
    client_id = ma.fields.String()
    client_secret_set = ma.fields.Function(
        lambda row: row.client_secret_ciphertext is not None,
        metadata={"type": "boolean", "description": "Whether a client secret is stored."},
    )
    scopes = ma.fields.String()
    organization_claim = ma.fields.String(allow_none=True)
    match_email_domain = ma.fields.Boolean()
    enabled = ma.fields.Boolean()
    created_at = Timestamp()


def _response(row: IdentityProvider) -> Response:
    return with_etag(jsonify(IdentityProviderSchema().dump(row)), row.version)


@blp.route("", methods=["GET"])
@blp.auth(Role.ADMIN)
@blp.arguments(ListArgs(), location="query")
@blp.response(200, page_of(IdentityProviderSchema))
def list_identity_providers(args: dict[str, Any]) -> Any:
    """The OpenID Connect providers people may sign in with (never their client secrets)."""
    return service.list_identity_providers(request_session(), **args)


@blp.route("", methods=["POST"])
@blp.auth(Role.ADMIN)
@blp.arguments(IdentityProviderCreateSchema())
@blp.response(201, IdentityProviderSchema, headers=_ETAG)
def create_identity_provider(data: dict[str, Any]) -> Response:
    """Let people sign in through an OpenID Connect provider.

    `client_secret` is stored encrypted and never shown again. A name or issuer another
    provider has already is a 409."""
    runtime = provider_runtime()
    row = service.create(
        request_session(), current_caller(), data, keyring=runtime.keyring, http=runtime.http
    )
    return created(_response(row), "identity_providers.get_identity_provider", provider_id=row.id)


@blp.route("/<uuid:provider_id>", methods=["GET"])
@blp.auth(Role.ADMIN)
@blp.response(200, IdentityProviderSchema, headers=_ETAG)
def get_identity_provider(provider_id: uuid.UUID) -> Response:
    """One identity provider (never its client secret)."""
    return _response(service.get(request_session(), provider_id))


@blp.route("/<uuid:provider_id>", methods=["PATCH"])
@blp.auth(Role.ADMIN)
@blp.arguments(IdentityProviderPatchSchema())
@blp.response(200, IdentityProviderSchema, headers=_ETAG)
@blp.doc(parameters=[IF_MATCH_PARAMETER])
def update_identity_provider(data: dict[str, Any], provider_id: uuid.UUID) -> Response:
    """Change an identity provider, or replace its client secret (`client_secret`).
    Needs `If-Match`; `enabled: false` stops offering it at sign-in."""
    runtime = provider_runtime()
    row = service.update(
        request_session(),
        current_caller(),
        provider_id,
        if_match=if_match(),
        changes=data,
        keyring=runtime.keyring,
        http=runtime.http,
    )
    return _response(row)
