"""OAuth 2.0 client credentials and RFC 9068 access tokens, from a client's point of view.

Three parts:

* the authorization server: `POST /oauth/token` with both client authentication methods,
  its RFC 6749 errors, scope narrowing, revoked clients and how secrets are stored;
* the tokens it issues: their JOSE header and claims, checked against the published JWKS
  and the RFC 8414 metadata;
* the resource server: every way a request can fail authentication (401 problem+json with a
  `WWW-Authenticate: Bearer` challenge) or authorization (403 problem+json).

The bad tokens are minted here, with the app's own signing key, from one set of good claims
with exactly one thing changed per test; `test_hand_minted_good_token_is_accepted` shows the
unchanged claims pass, so each rejection has only one possible reason.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select, text, update
from werkzeug.test import TestResponse

from broker.db import Database
from broker.models import ApiClient
from tests.conftest import ApiUser, MakeUser

PROBLEM_JSON = "application/problem+json"
TOKEN_URL = "/oauth/token"


# --- helpers -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(value: dict[str, Any]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _unverified_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def _request_token(client: FlaskClient, user: ApiUser, **form: str) -> TestResponse:
    return client.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials", **form},
        auth=(user.client_id, user.client_secret),
    )


def _assert_oauth_error(response: TestResponse, status: int, error: str) -> None:
    """An RFC 6749 §5.2 error: plain JSON `{"error": ...}`, not problem+json."""
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == error
    assert "type" not in body and "status" not in body
    assert response.headers.get("Cache-Control") == "no-store"
    assert "access_token" not in body


def _assert_unauthorized(response: TestResponse, code: str | set[str] = "invalid_token") -> None:
    """A 401 problem+json with a Bearer challenge (content type checked last, so a wrong
    media type does not hide whether the rest of the answer is right)."""
    assert response.status_code == 401
    body = response.get_json(force=True)
    assert body["status"] == 401
    assert body["title"]
    assert body["code"] in ({code} if isinstance(code, str) else code)
    assert body["type"].endswith(body["code"])
    assert body["request_id"] == response.headers["X-Request-Id"]
    challenge = response.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    if code == "invalid_token":
        assert 'error="invalid_token"' in challenge
    assert "access_token" not in body
    assert response.content_type == PROBLEM_JSON


def _assert_forbidden(response: TestResponse) -> None:
    assert response.status_code == 403
    assert response.content_type == PROBLEM_JSON
    body = response.json
    assert body["status"] == 403
    assert body["code"] == "forbidden"
    assert body["title"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    # RFC 6750 §3.1: a valid token lacking the needed scope is `insufficient_scope`.
    assert 'error="insufficient_scope"' in response.headers.get("WWW-Authenticate", "")


def _good_claims(app: Flask, user: ApiUser, kind: str = "agency") -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": app.config["OAUTH_ISSUER"],
        "aud": app.config["OAUTH_AUDIENCE"],
        "sub": user.client_id,
        "client_id": user.client_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(user.roles),
        "org": user.organization_id,
        "org_kind": kind,
    }


def _mint(claims: dict[str, Any], key: RSAKey, **header: Any) -> str:
    token: str = jwt.encode({"alg": "RS256", "typ": "at+jwt", **header}, claims, key)
    return token


@pytest.fixture
def app_key(signing_key_pem: str) -> RSAKey:
    """The app's own signing key (what a token forger would need to succeed)."""
    key = RSAKey.import_key(signing_key_pem)
    key.ensure_kid()
    return key


def _get_own_org(client: FlaskClient, user: ApiUser, token: str) -> TestResponse:
    return client.get(
        f"/v1/organizations/{user.organization_id}",
        headers={"Authorization": f"Bearer {token}"},
    )


# --- the token endpoint --------------------------------------------------------------------


def test_token_with_client_secret_basic(client: FlaskClient, app: Flask, admin: ApiUser) -> None:
    response = client.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials"},
        auth=(admin.client_id, admin.client_secret),
    )
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == app.config["ACCESS_TOKEN_TTL"]
    assert body["scope"].split() == admin.roles
    assert body["access_token"].count(".") == 2


def test_token_with_client_secret_post(
    client: FlaskClient, app: Flask, make_user: MakeUser
) -> None:
    user = make_user("agency", ["approver", "buyer"])
    response = client.post(
        TOKEN_URL,
        data={
            "grant_type": "client_credentials",
            "client_id": user.client_id,
            "client_secret": user.client_secret,
        },
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == app.config["ACCESS_TOKEN_TTL"]
    assert sorted(body["scope"].split()) == ["approver", "buyer"]
    # The token works on the API.
    assert _get_own_org(client, user, body["access_token"]).status_code == 200


def test_token_with_wrong_secret_is_invalid_client(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials"},
        auth=(buyer.client_id, buyer.client_secret + "x"),
    )
    _assert_oauth_error(response, 401, "invalid_client")


def test_token_with_wrong_secret_in_form_is_invalid_client(
    client: FlaskClient, buyer: ApiUser
) -> None:
    response = client.post(
        TOKEN_URL,
        data={
            "grant_type": "client_credentials",
            "client_id": buyer.client_id,
            "client_secret": "not-the-secret",
        },
    )
    assert response.status_code in (400, 401)
    _assert_oauth_error(response, response.status_code, "invalid_client")


def test_token_for_unknown_client_is_invalid_client(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials"},
        auth=("cb_no-such-client", buyer.client_secret),
    )
    _assert_oauth_error(response, 401, "invalid_client")


def test_token_without_credentials_is_invalid_client(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(TOKEN_URL, data={"grant_type": "client_credentials"})
    assert response.status_code in (400, 401)
    _assert_oauth_error(response, response.status_code, "invalid_client")


def test_token_with_unsupported_grant_type(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.post(
        TOKEN_URL,
        data={"grant_type": "password", "username": "u", "password": "p"},
        auth=(buyer.client_id, buyer.client_secret),
    )
    _assert_oauth_error(response, 400, "unsupported_grant_type")


def test_token_for_a_role_the_client_lacks_is_invalid_scope(
    client: FlaskClient, buyer: ApiUser
) -> None:
    response = _request_token(client, buyer, scope="buyer admin")
    _assert_oauth_error(response, 400, "invalid_scope")


def test_token_for_a_subset_of_roles_is_narrowed(
    client: FlaskClient, app: Flask, make_user: MakeUser
) -> None:
    user = make_user("consortium", ["admin", "finance"])
    response = _request_token(client, user, scope="finance")
    assert response.status_code == 200
    assert response.json["scope"] == "finance"
    token = response.json["access_token"]
    assert _unverified_part(token, 1)["scope"] == "finance"
    # The narrowed token really lacks `admin`: creating an organization is refused.
    created = client.post(
        "/v1/organizations",
        json={"name": "Should Not Exist", "kind": "agency"},
        headers={"Authorization": f"Bearer {token}"},
    )
    _assert_forbidden(created)


def test_revoked_client_cannot_get_a_token(
    client: FlaskClient, db: Database, make_user: MakeUser
) -> None:
    user = make_user("agency", ["buyer"])
    assert _request_token(client, user).status_code == 200
    with db.transaction() as session:
        session.execute(
            update(ApiClient)
            .where(ApiClient.client_id == user.client_id)
            .values(revoked_at=datetime.now(UTC))
        )
    _assert_oauth_error(_request_token(client, user), 401, "invalid_client")
    response = client.post(
        TOKEN_URL,
        data={
            "grant_type": "client_credentials",
            "client_id": user.client_id,
            "client_secret": user.client_secret,
        },
    )
    assert response.status_code in (400, 401)
    _assert_oauth_error(response, response.status_code, "invalid_client")


def _stored_client_row(db: Database, client_id: str) -> tuple[str, tuple[Any, ...]]:
    with db.session(read_only=True) as session:
        secret_hash = session.scalar(
            select(ApiClient.secret_hash).where(ApiClient.client_id == client_id)
        )
        row = session.execute(
            text("SELECT * FROM api_clients WHERE client_id = :id"), {"id": client_id}
        ).one()
    assert secret_hash
    return secret_hash, tuple(row)


def test_client_secret_is_stored_only_as_a_hash(
    client: FlaskClient, db: Database, admin: ApiUser, buyer: ApiUser
) -> None:
    secret_hash, row = _stored_client_row(db, buyer.client_id)
    assert buyer.client_secret not in secret_hash
    # Salted: not the bare SHA-256 of the secret either.
    assert hashlib.sha256(buyer.client_secret.encode()).hexdigest() not in secret_hash
    assert all(buyer.client_secret not in str(value) for value in row)
    with db.session(read_only=True) as session:
        audit_rows = session.execute(text("SELECT * FROM audit_events")).all()
    assert audit_rows
    assert all(buyer.client_secret not in str(value) for r in audit_rows for value in r)
    # Listing an organization's clients shows neither the secret nor its hash.
    listed = client.get(f"/v1/organizations/{buyer.organization_id}/clients", headers=admin.headers)
    assert listed.status_code == 200
    (item,) = listed.json["items"]
    assert item["client_id"] == buyer.client_id
    assert not {"client_secret", "secret_hash"} & set(item)
    assert buyer.client_secret not in listed.get_data(as_text=True)
    assert secret_hash not in listed.get_data(as_text=True)


def test_client_issued_through_the_api_gets_a_working_hashed_secret(
    client: FlaskClient, db: Database, admin: ApiUser, buyer: ApiUser
) -> None:
    response = client.post(
        f"/v1/organizations/{buyer.organization_id}/clients",
        json={"name": "ordering system", "roles": ["buyer"]},
        headers=admin.headers,
    )
    assert response.status_code == 201
    client_id, secret = response.json["client_id"], response.json["client_secret"]
    assert response.json["roles"] == ["buyer"]
    assert len(secret) >= 32
    secret_hash, row = _stored_client_row(db, client_id)
    assert secret not in secret_hash
    assert all(secret not in str(value) for value in row)
    # The secret shown once is the one that works.
    token = client.post(
        TOKEN_URL, data={"grant_type": "client_credentials"}, auth=(client_id, secret)
    )
    assert token.status_code == 200
    assert token.json["scope"] == "buyer"


# --- the issued token, JWKS and metadata ---------------------------------------------------


def _jwks_key(client: FlaskClient) -> tuple[RSAKey, dict[str, Any]]:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    (jwk,) = response.json["keys"]
    return RSAKey.import_key(jwk), jwk


def test_jwks_publishes_the_signing_key_without_private_parts(
    client: FlaskClient, signing_key_pem: str
) -> None:
    key, jwk = _jwks_key(client)
    assert jwk["kty"] == "RSA"
    assert jwk["alg"] == "RS256"
    assert jwk["use"] == "sig"
    assert jwk["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert jwk["n"] == RSAKey.import_key(signing_key_pem).as_dict(private=False)["n"]
    assert key.as_dict()["e"] == jwk["e"]


def test_access_token_header_is_rs256_at_jwt(client: FlaskClient, admin: ApiUser) -> None:
    key, _ = _jwks_key(client)
    token = jwt.decode(admin.token, key, algorithms=["RS256"])
    assert token.header["alg"] == "RS256"
    assert token.header["typ"] == "at+jwt"


def test_access_token_header_names_the_jwks_key(client: FlaskClient, admin: ApiUser) -> None:
    """Clients pick the verification key by `kid` (and rotation needs it)."""
    _, jwk = _jwks_key(client)
    header = _unverified_part(admin.token, 0)
    assert header.get("kid") == jwk["kid"]


def test_access_token_claims(client: FlaskClient, app: Flask, make_user: MakeUser) -> None:
    user = make_user("agency", ["approver", "buyer"])
    key, _ = _jwks_key(client)
    claims = jwt.decode(user.token, key, algorithms=["RS256"]).claims
    assert claims["iss"] == app.config["OAUTH_ISSUER"]
    assert claims["aud"] == app.config["OAUTH_AUDIENCE"]
    assert claims["sub"] == user.client_id
    assert claims["client_id"] == user.client_id
    assert sorted(claims["scope"].split()) == ["approver", "buyer"]
    assert claims["org"] == user.organization_id
    assert claims["org_kind"] == "agency"
    assert claims["jti"]
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int)
    assert claims["exp"] - claims["iat"] == app.config["ACCESS_TOKEN_TTL"]
    assert claims["exp"] > claims["iat"]


def test_every_token_gets_its_own_jti(client: FlaskClient, buyer: ApiUser) -> None:
    second = _request_token(client, buyer).json["access_token"]
    assert _unverified_part(second, 1)["jti"] != _unverified_part(buyer.token, 1)["jti"]


def test_authorization_server_metadata(client: FlaskClient, app: Flask) -> None:
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    metadata = response.json
    issuer = app.config["OAUTH_ISSUER"]
    assert metadata["issuer"] == issuer
    assert metadata["token_endpoint"] == f"{issuer}/oauth/token"
    assert metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert set(metadata["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }
    assert metadata["access_token_signing_alg_values_supported"] == ["RS256"]


# --- the resource side: 401 ----------------------------------------------------------------


def test_hand_minted_good_token_is_accepted(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    """Control: the claims every negative test starts from are accepted as they are."""
    response = _get_own_org(client, buyer, _mint(_good_claims(app, buyer), app_key))
    assert response.status_code == 200
    assert response.json["id"] == buyer.organization_id


def test_no_authorization_header(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.get(f"/v1/organizations/{buyer.organization_id}")
    _assert_unauthorized(response, "missing_authorization")


@pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Basic xyz", "Token abc"])
def test_malformed_authorization_header(client: FlaskClient, buyer: ApiUser, value: str) -> None:
    response = client.get(
        f"/v1/organizations/{buyer.organization_id}", headers={"Authorization": value}
    )
    _assert_unauthorized(response, {"invalid_request", "invalid_token", "unsupported_token_type"})


def test_garbage_bearer_token(client: FlaskClient, buyer: ApiUser) -> None:
    _assert_unauthorized(_get_own_org(client, buyer, "not.a.jwt"))


def test_expired_token(client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey) -> None:
    claims = _good_claims(app, buyer)
    claims["iat"] -= 7200
    claims["exp"] = claims["iat"] + 900
    _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))


def test_wrong_audience(client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey) -> None:
    claims = {**_good_claims(app, buyer), "aud": "https://other-api.example"}
    _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))


def test_audience_is_the_client_as_authlib_defaults(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    claims = {**_good_claims(app, buyer), "aud": buyer.client_id}
    _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))


def test_wrong_issuer(client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey) -> None:
    claims = {**_good_claims(app, buyer), "iss": "https://evil.example"}
    _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))


def test_alg_none_token(client: FlaskClient, app: Flask, buyer: ApiUser) -> None:
    header = _b64url_json({"alg": "none", "typ": "at+jwt"})
    token = f"{header}.{_b64url_json(_good_claims(app, buyer))}."
    _assert_unauthorized(_get_own_org(client, buyer, token))


def test_tampered_payload(client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey) -> None:
    header, payload, signature = _mint(_good_claims(app, buyer), app_key).split(".")
    # Change one character of the payload (an `A` ↔ `B` swap keeps it valid base64url).
    index = len(payload) // 2
    flipped = "B" if payload[index] == "A" else "A"
    tampered = payload[:index] + flipped + payload[index + 1 :]
    assert tampered != payload
    _assert_unauthorized(_get_own_org(client, buyer, f"{header}.{tampered}.{signature}"))


def test_hs256_signed_with_the_public_key(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    """Key confusion: the RSA public key's PEM used as an HMAC secret."""
    public_pem = app_key.as_pem(private=False)
    signing_input = (
        f"{_b64url_json({'alg': 'HS256', 'typ': 'at+jwt'})}."
        f"{_b64url_json(_good_claims(app, buyer))}"
    )
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    _assert_unauthorized(_get_own_org(client, buyer, f"{signing_input}.{_b64url(mac)}"))


def test_token_signed_by_another_key(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    stranger = RSAKey.generate_key(2048)
    # Even claiming the app's key id does not help.
    token = _mint(_good_claims(app, buyer), stranger, kid=app_key.kid)
    _assert_unauthorized(_get_own_org(client, buyer, token))


def test_token_without_org_claim(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    claims = _good_claims(app, buyer)
    del claims["org"]
    response = _get_own_org(client, buyer, _mint(claims, app_key))
    _assert_unauthorized(response, {"invalid_token", "unauthorized"})


def test_token_with_wrong_typ(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    """RFC 9068 §4: an ID token or other JWT must not pass as an access token."""
    token = _mint(_good_claims(app, buyer), app_key, typ="JWT")
    _assert_unauthorized(_get_own_org(client, buyer, token))


def test_token_of_a_client_that_does_not_exist(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    """Well signed, but naming no client: the resource server checks the client, too."""
    claims = {**_good_claims(app, buyer), "sub": "cb_nobody", "client_id": "cb_nobody"}
    _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))


def test_token_with_another_credential_version(
    client: FlaskClient, app: Flask, buyer: ApiUser, app_key: RSAKey
) -> None:
    assert _unverified_part(buyer.token, 1)["credential_version"] == 1
    for version in (0, 2, "1", None):
        claims = {**_good_claims(app, buyer), "credential_version": version}
        _assert_unauthorized(_get_own_org(client, buyer, _mint(claims, app_key)))
    claims = {**_good_claims(app, buyer), "credential_version": 1}
    assert _get_own_org(client, buyer, _mint(claims, app_key)).status_code == 200


def test_token_without_credential_version_counts_as_the_first_until_a_rotation(
    client: FlaskClient, app: Flask, admin: ApiUser, buyer: ApiUser, app_key: RSAKey
) -> None:
    """Tokens issued before the claim existed keep working until the client's first
    rotation (or their expiry)."""
    legacy = _mint(_good_claims(app, buyer), app_key)
    assert _get_own_org(client, buyer, legacy).status_code == 200
    rotated = client.post(
        f"/v1/organizations/{buyer.organization_id}/clients/{buyer.client_id}/rotate-secret",
        headers=admin.headers,
    )
    assert rotated.status_code == 200
    _assert_unauthorized(_get_own_org(client, buyer, legacy))


def test_revoked_clients_token_is_refused(
    client: FlaskClient, db: Database, buyer: ApiUser
) -> None:
    """Revocation takes effect at once, however it was written (here: straight to the table,
    as another process would)."""
    assert _get_own_org(client, buyer, buyer.token).status_code == 200
    with db.transaction() as session:
        session.execute(
            update(ApiClient)
            .where(ApiClient.client_id == buyer.client_id)
            .values(revoked_at=datetime.now(UTC))
        )
    _assert_unauthorized(_get_own_org(client, buyer, buyer.token))


# --- the resource side: 403 ----------------------------------------------------------------


def test_buyer_cannot_create_organizations(
    client: FlaskClient, buyer: ApiUser, admin: ApiUser
) -> None:
    response = client.post(
        "/v1/organizations", json={"name": "Buyer's Own", "kind": "agency"}, headers=buyer.headers
    )
    _assert_forbidden(response)
    listed = client.get("/v1/organizations", headers=admin.headers, query_string={"limit": 200})
    assert "Buyer's Own" not in [item["name"] for item in listed.json["items"]]


def test_buyer_cannot_list_api_clients(client: FlaskClient, buyer: ApiUser) -> None:
    response = client.get(
        f"/v1/organizations/{buyer.organization_id}/clients", headers=buyer.headers
    )
    _assert_forbidden(response)
    assert "items" not in response.json
