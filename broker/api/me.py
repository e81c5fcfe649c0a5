"""`GET /v1/me`: who is calling — a person (signed in through an identity provider, with a
browser session) or an API client (a bearer token) — with their organizations and roles."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g

from broker.api.base import Blueprint, current_caller, request_session
from broker.services import people

blp = Blueprint("me", __name__, url_prefix="/v1/me", description="Who I am")


class MembershipSchema(ma.Schema):
    organization_id = ma.fields.UUID()
    organization_name = ma.fields.String()
    organization_kind = ma.fields.String()
    roles = ma.fields.List(ma.fields.String())


class MeSchema(ma.Schema):
    kind = ma.fields.String(metadata={"enum": ["person", "client"]})
    id = ma.fields.String(metadata={"description": "The person's id, or the client's id"})
    name = ma.fields.String()
    email = ma.fields.String(allow_none=True)
    language = ma.fields.String(allow_none=True, metadata={"enum": ["fr", "en", None]})
    organization_id = ma.fields.UUID(metadata={"description": "The organization acted for"})
    roles = ma.fields.List(ma.fields.String(), metadata={"description": "Roles held there"})
    memberships = ma.fields.List(ma.fields.Nested(MembershipSchema))
    csrf_token = ma.fields.String(
        allow_none=True,
        metadata={
            "description": "With a browser session: echo it in `X-CSRF-Token` on every change "
            "made with the session cookie. Null with a bearer token."
        },
    )


@blp.route("", methods=["GET"])
@blp.auth()
@blp.response(200, MeSchema)
def me() -> Any:
    """Who I am: a person or an API client, the organization I act for, my roles."""
    return people.describe(request_session(), current_caller(), g.get("csrf_token"))
