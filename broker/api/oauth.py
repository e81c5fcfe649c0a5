"""`POST /oauth/token` (client credentials), JWKS and RFC 8414 metadata.

The token endpoint answers errors in RFC 6749's form (`{"error": …}`), which OAuth client
libraries expect; it is the one exception to problem+json.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, current_app, jsonify

from broker.api.base import Blueprint
from broker.auth.server import ALGORITHM, AUTH_METHODS, authorization_server, signing_keys

blp = Blueprint("oauth", __name__, description="OAuth 2.0 (client credentials)")


class TokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True)
    expires_in = ma.fields.Integer(required=True)
    scope = ma.fields.String()


class OAuthErrorSchema(ma.Schema):
    error = ma.fields.String(required=True)
    error_description = ma.fields.String()


_TOKEN_REQUEST = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "grant_type": {"type": "string", "enum": ["client_credentials"]},
                    "scope": {"type": "string", "description": "Space-separated roles."},
                    "client_id": {"type": "string", "description": "With client_secret_post."},
                    "client_secret": {"type": "string"},
                },
                "required": ["grant_type"],
            }
        }
    },
}


@blp.route("/oauth/token", methods=["POST"])
@blp.doc(
    requestBody=_TOKEN_REQUEST,
    security=[{"basicAuth": []}, {}],
    description="Client credentials grant (RFC 6749 §4.4). Authenticate with HTTP Basic "
    "(`client_secret_basic`) or form fields (`client_secret_post`). The body is form-encoded "
    "(`application/x-www-form-urlencoded`): a JSON body is refused with `invalid_request` and "
    "an `error_description` saying so.",
)
@blp.response(200, TokenSchema)
@blp.alt_response(400, schema=OAuthErrorSchema, description="RFC 6749 error")
@blp.alt_response(401, schema=OAuthErrorSchema, description="RFC 6749 error")
def issue_token() -> Response:
    """Get an access token."""
    response: Response = authorization_server().create_token_response()
    return response


@blp.route("/.well-known/jwks.json", methods=["GET"])
@blp.response(200)
def jwks() -> Response:
    """Public keys that verify access tokens."""
    return jsonify(signing_keys().public_jwks())


@blp.route("/.well-known/oauth-authorization-server", methods=["GET"])
@blp.response(200)
def metadata() -> dict[str, Any]:
    """Authorization server metadata (RFC 8414)."""
    issuer = current_app.config["OAUTH_ISSUER"]
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/oauth/token",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "response_types_supported": [],
        "scopes_supported": ["buyer", "approver", "provider", "finance", "admin"],
        "access_token_signing_alg_values_supported": [ALGORITHM],
    }
