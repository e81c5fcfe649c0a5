"""The demo OpenID provider, driven as a relying party drives it: authlib's client builds the
authorization request (PKCE S256, nonce, state), the browser part goes through Flask's test
client, and the ID token and userinfo are verified against the provider's JWKS with joserfc.

The provider runs on a bare Flask app (no `create_app`): it must stand on its own.
"""

from __future__ import annotations

import base64
import html
import os
import re
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet
from werkzeug.test import TestResponse

from broker.demo_idp import DemoIdpSettings, DemoPerson, create_blueprint
from broker.demo_idp.keys import KEY_FILE, load_or_create_signing_key

ISSUER = "https://idp.test/demo-idp"
CLIENT_ID = "broker-console"
CLIENT_SECRET = "console-secret-0123456789"
REDIRECT_URI = "https://broker.test/auth/callback"
SIGNED_OUT_URI = "https://broker.test/signed-out"
SCOPE = "openid email profile siret"
ALICE = DemoPerson("alice@agency.example", "alice-pass", "Alice", "Martin", "13002526500013")
BOB = DemoPerson("bob@agency.example", "bob-pass", "Bob", "Durand", None)


class Clock:
    """The provider's clock: real time unless set to an earlier moment."""

    def __init__(self) -> None:
        self.fixed: datetime | None = None

    def __call__(self) -> datetime:
        return self.fixed or datetime.now(UTC)


@pytest.fixture(scope="module")
def module_clock() -> Clock:
    return Clock()


@pytest.fixture
def clock(module_clock: Clock) -> Iterator[Clock]:
    yield module_clock
    module_clock.fixed = None


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, module_clock: Clock) -> DemoIdpSettings:
    """One provider for the module (hashing the demo passwords and making a key take a
    moment); every test works with its own codes, tokens and nonces."""
    return DemoIdpSettings(
        issuer=ISSUER,
        state_dir=tmp_path_factory.mktemp("demo-idp"),
        clients={CLIENT_ID: (CLIENT_SECRET, [REDIRECT_URI])},
        people=[ALICE, BOB],
        post_logout_redirect_uris={CLIENT_ID: [SIGNED_OUT_URI]},
        now=module_clock,
    )


def idp_app(settings: DemoIdpSettings) -> Flask:
    app = Flask("demo_idp_test")
    app.register_blueprint(create_blueprint(settings))
    return app


@pytest.fixture(scope="module")
def app(settings: DemoIdpSettings) -> Flask:
    return idp_app(settings)


@pytest.fixture
def web(app: Flask, clock: Clock) -> FlaskClient:
    return app.test_client()


class FlaskTransport(requests.adapters.BaseAdapter):
    """Lets a `requests` session (authlib's client) talk to a Flask test client."""

    def __init__(self, client: FlaskClient) -> None:
        super().__init__()
        self.client = client

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        answer = self.client.open(
            request.url, method=request.method, headers=headers, data=request.body
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = requests.structures.CaseInsensitiveDict(answer.headers)
        response._content = answer.get_data()
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def rp(web: FlaskClient) -> Iterator[OAuth2Session]:
    """The relying party's OAuth client, as the broker would configure it."""
    session = OAuth2Session(
        CLIENT_ID,
        CLIENT_SECRET,
        scope=SCOPE,
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
    )
    session.mount("https://idp.test", FlaskTransport(web))
    yield session
    session.close()


class Attempt:
    """One authorization request in flight: what the relying party keeps in its session."""

    def __init__(self, rp: OAuth2Session, **extra: str) -> None:
        self.verifier = generate_token(64)
        self.nonce = generate_token(20)
        self.url, self.state = rp.create_authorization_url(
            f"{ISSUER}/authorize", code_verifier=self.verifier, nonce=self.nonce, **extra
        )


def sign_in(web: FlaskClient, attempt: Attempt, email: str, password: str) -> TestResponse:
    """Open the sign-in form the authorization URL shows, and submit it."""
    form = web.get(attempt.url)
    assert form.status_code == 200, form.text
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', form.text)[1])
    return web.post(f"https://idp.test{action}", data={"email": email, "password": password})


def code_from(response: TestResponse, attempt: Attempt) -> str:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [attempt.state]
    return query["code"][0]


def redeem(web: FlaskClient, code: str, verifier: str | None) -> TestResponse:
    """A token request, form-encoded with Basic client authentication."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier is not None:
        form["code_verifier"] = verifier
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    return web.post(f"{ISSUER}/token", data=form, headers={"Authorization": f"Basic {basic}"})


def verified_claims(web: FlaskClient, token: str, **expected: Any) -> dict[str, Any]:
    """The claims of a JWT signed by the provider's published key, with `iss`, `aud`, `exp`
    and `iat` checked, and any `expected` claim values."""
    keys = KeySet.import_key_set(web.get(f"{ISSUER}/jwks").get_json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": CLIENT_ID},
        sub={"essential": True},
        **{name: {"essential": True, "value": value} for name, value in expected.items()},
    )
    registry.validate(decoded.claims)
    return dict(decoded.claims)


def test_code_flow_gives_a_verified_id_token_and_a_signed_userinfo(
    web: FlaskClient, rp: OAuth2Session
) -> None:
    attempt = Attempt(rp)
    redirect = sign_in(web, attempt, "Alice@Agency.example", "alice-pass")
    code_from(redirect, attempt)

    token = rp.fetch_token(
        f"{ISSUER}/token",
        authorization_response=redirect.headers["Location"],
        state=attempt.state,
        code_verifier=attempt.verifier,
    )

    claims = verified_claims(web, token["id_token"], nonce=attempt.nonce)
    now = datetime.now(UTC).timestamp()
    assert now - 5 <= claims["iat"] <= now + 1
    assert claims["exp"] > now
    assert claims["email"] == "alice@agency.example"
    assert claims["given_name"] == "Alice"
    assert claims["usual_name"] == "Martin"
    assert claims["siret"] == "13002526500013"
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] == 300
    assert "refresh_token" not in token

    userinfo = rp.get(f"{ISSUER}/userinfo")
    assert userinfo.status_code == 200
    assert userinfo.headers["Content-Type"] == "application/jwt"
    info = verified_claims(web, userinfo.text)
    assert info["sub"] == claims["sub"]
    assert (info["email"], info["given_name"], info["usual_name"], info["siret"]) == (
        "alice@agency.example",
        "Alice",
        "Martin",
        "13002526500013",
    )


def test_sub_is_stable_per_person_and_siret_only_when_the_person_has_one(
    web: FlaskClient, rp: OAuth2Session
) -> None:
    subs = []
    for email, password in [("bob@agency.example", "bob-pass")] * 2 + [
        ("alice@agency.example", "alice-pass")
    ]:
        attempt = Attempt(rp)
        code = code_from(sign_in(web, attempt, email, password), attempt)
        answer = redeem(web, code, attempt.verifier)
        claims = verified_claims(web, answer.get_json()["id_token"], nonce=attempt.nonce)
        subs.append(claims["sub"])
        if email.startswith("bob"):
            assert "siret" not in claims
    assert subs[0] == subs[1] != subs[2]


def test_a_scope_releases_only_its_claims(web: FlaskClient, rp: OAuth2Session) -> None:
    attempt = Attempt(rp, scope="openid email unknown-scope")
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    answer = redeem(web, code, attempt.verifier)
    assert answer.get_json()["scope"] == "openid email"
    claims = verified_claims(web, answer.get_json()["id_token"])
    assert claims["email"] == "alice@agency.example"
    assert not {"given_name", "usual_name", "siret"} & claims.keys()


def test_discovery_document(web: FlaskClient) -> None:
    document = web.get(f"{ISSUER}/.well-known/openid-configuration").get_json()
    assert document["issuer"] == ISSUER
    assert document["authorization_endpoint"] == f"{ISSUER}/authorize"
    assert document["token_endpoint"] == f"{ISSUER}/token"
    assert document["jwks_uri"] == f"{ISSUER}/jwks"
    assert document["userinfo_endpoint"] == f"{ISSUER}/userinfo"
    assert document["end_session_endpoint"] == f"{ISSUER}/logout"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert {"openid", "email", "profile", "siret"} <= set(document["scopes_supported"])
    assert document["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    keys = web.get(f"{ISSUER}/jwks").get_json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "RSA" and keys[0]["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & keys[0].keys()


def test_the_sign_in_form_is_an_accessible_page_that_runs_no_script(
    web: FlaskClient, rp: OAuth2Session
) -> None:
    page = web.get(Attempt(rp).url)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert '<label for="email">' in page.text and '<label for="password">' in page.text
    assert "<script" not in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["Cache-Control"] == "no-store"
    assert '<html lang="en">' in page.text and ">Password</label>" in page.text


def test_the_sign_in_form_speaks_the_browsers_language(web: FlaskClient, rp: OAuth2Session) -> None:
    page = web.get(Attempt(rp).url, headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert '<html lang="fr">' in page.text
    assert ">Mot de passe</label>" in page.text and ">Connexion</button>" in page.text


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("alice@agency.example", "wrong"),
        ("alice@agency.example", ""),
        ("nobody@agency.example", "alice-pass"),
        ("bob@agency.example", "alice-pass"),
    ],
)
def test_a_wrong_password_shows_the_form_again_without_a_code(
    web: FlaskClient, rp: OAuth2Session, email: str, password: str
) -> None:
    answer = sign_in(web, Attempt(rp), email, password)
    assert answer.status_code == 200
    assert "Location" not in answer.headers
    assert "Wrong e-mail or password." in answer.text
    assert 'role="alert"' in answer.text
    assert "code=" not in answer.text


def test_the_form_keeps_the_request_but_never_the_password(
    web: FlaskClient, rp: OAuth2Session
) -> None:
    attempt = Attempt(rp)
    answer = sign_in(web, attempt, "alice@agency.example", "not-her-password")
    assert "not-her-password" not in answer.text
    assert 'value="alice@agency.example"' in answer.text
    # The form shown again still carries the request: signing in from it works.
    action = html.unescape(re.search(r'action="([^"]+)"', answer.text)[1])
    retry = web.post(
        f"https://idp.test{action}",
        data={"email": "alice@agency.example", "password": "alice-pass"},
    )
    code_from(retry, attempt)


@pytest.mark.parametrize("verifier", [None, "w" * 43, "short"])
def test_a_missing_or_wrong_code_verifier_is_invalid_grant(
    web: FlaskClient, rp: OAuth2Session, verifier: str | None
) -> None:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    answer = redeem(web, code, verifier)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_grant"
    assert "access_token" not in answer.get_json()
    # The code is spent: the right verifier no longer helps an attacker who tried first.
    assert redeem(web, code, attempt.verifier).get_json()["error"] == "invalid_grant"


def test_a_code_is_good_once(web: FlaskClient, rp: OAuth2Session) -> None:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    first = redeem(web, code, attempt.verifier)
    assert first.status_code == 200 and first.get_json()["id_token"]
    second = redeem(web, code, attempt.verifier)
    assert second.status_code == 400
    assert second.get_json()["error"] == "invalid_grant"


def test_a_code_expires_after_sixty_seconds(
    web: FlaskClient, rp: OAuth2Session, clock: Clock
) -> None:
    attempt = Attempt(rp)
    clock.fixed = datetime.now(UTC) - timedelta(seconds=61)  # issued 61 s ago
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    clock.fixed = None
    answer = redeem(web, code, attempt.verifier)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_grant"


def test_a_code_still_works_within_its_lifetime(
    web: FlaskClient, rp: OAuth2Session, clock: Clock
) -> None:
    attempt = Attempt(rp)
    clock.fixed = datetime.now(UTC) - timedelta(seconds=50)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    clock.fixed = None
    assert redeem(web, code, attempt.verifier).status_code == 200


def test_an_access_token_expires_after_five_minutes(
    web: FlaskClient, rp: OAuth2Session, clock: Clock
) -> None:
    attempt = Attempt(rp)
    clock.fixed = datetime.now(UTC) - timedelta(seconds=301)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    access_token = redeem(web, code, attempt.verifier).get_json()["access_token"]
    clock.fixed = None
    answer = web.get(f"{ISSUER}/userinfo", headers={"Authorization": f"Bearer {access_token}"})
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "invalid_token"
    assert answer.headers["WWW-Authenticate"].lower().startswith("bearer")


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic eDp5"])
def test_userinfo_needs_a_live_access_token(web: FlaskClient, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = web.get(f"{ISSUER}/userinfo", headers=headers)
    assert answer.status_code == 401
    assert answer.get_json()["error"]
    assert answer.headers["WWW-Authenticate"].lower().startswith("bearer")
    assert answer.mimetype == "application/json"


def test_a_wrong_client_secret_is_invalid_client(web: FlaskClient, rp: OAuth2Session) -> None:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    basic = base64.b64encode(f"{CLIENT_ID}:wrong".encode()).decode()
    answer = web.post(
        f"{ISSUER}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": attempt.verifier,
        },
        headers={"Authorization": f"Basic {basic}"},
    )
    assert answer.status_code == 401
    assert answer.get_json()["error"] == "invalid_client"
    # The code was not spent by a caller who could not authenticate as its client.
    assert redeem(web, code, attempt.verifier).status_code == 200


def test_client_secret_post_is_accepted(web: FlaskClient, rp: OAuth2Session) -> None:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    answer = web.post(
        f"{ISSUER}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": attempt.verifier,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
    )
    assert answer.status_code == 200, answer.text
    verified_claims(web, answer.get_json()["id_token"], nonce=attempt.nonce)


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://evil.test/callback"},
        {"redirect_uri": REDIRECT_URI + "/"},
        {"redirect_uri": 'https://evil.test/"\\x'},
        {"redirect_uri": ""},
        {"client_id": "unknown-client"},
        {"client_id": ""},
    ],
)
def test_an_unregistered_redirect_or_client_gets_an_error_page_not_a_redirect(
    web: FlaskClient, rp: OAuth2Session, change: dict[str, str]
) -> None:
    attempt = Attempt(rp)
    parts = urlsplit(attempt.url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    query.update(change)
    for method in (web.get, web.post):
        answer = method(f"{ISSUER}/authorize", query_string=query)
        assert answer.status_code == 400
        assert "Location" not in answer.headers
        assert answer.mimetype == "text/html"
        assert "Sign-in request refused" in answer.text
    signed_in = web.post(
        f"{ISSUER}/authorize",
        query_string=query,
        data={"email": "alice@agency.example", "password": "alice-pass"},
    )
    assert signed_in.status_code == 400 and "Location" not in signed_in.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"nonce": None}, "invalid_request"),
        ({"scope": "email profile"}, "invalid_scope"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": 'co"de\\'}, "unsupported_response_type"),
    ],
)
def test_a_request_without_pkce_s256_nonce_or_openid_goes_back_with_an_error(
    web: FlaskClient, rp: OAuth2Session, change: dict[str, str | None], error: str
) -> None:
    attempt = Attempt(rp)
    query = {name: values[0] for name, values in parse_qs(urlsplit(attempt.url).query).items()}
    for name, value in change.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    answer = web.get(f"{ISSUER}/authorize", query_string=query)
    if answer.status_code == 400:  # a response_type authlib cannot echo: a page
        assert change.get("response_type") and "Location" not in answer.headers
        return
    assert answer.status_code == 302
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    returned = parse_qs(location.query)
    assert returned["error"] == [error]
    assert returned["state"] == [attempt.state]
    assert "code" not in returned


def test_a_code_issued_by_one_worker_is_redeemed_at_another(
    settings: DemoIdpSettings, rp: OAuth2Session
) -> None:
    first, second = idp_app(settings).test_client(), idp_app(settings).test_client()
    attempt = Attempt(rp)
    code = code_from(sign_in(first, attempt, "alice@agency.example", "alice-pass"), attempt)
    answer = redeem(second, code, attempt.verifier)
    assert answer.status_code == 200, answer.text
    # Both workers sign with the one key: the token checks out against either's JWKS.
    verified_claims(first, answer.get_json()["id_token"], nonce=attempt.nonce)
    info = second.get(
        f"{ISSUER}/userinfo",
        headers={"Authorization": f"Bearer {answer.get_json()['access_token']}"},
    )
    assert info.status_code == 200
    verified_claims(first, info.text)
    # Spent everywhere.
    assert redeem(first, code, attempt.verifier).get_json()["error"] == "invalid_grant"


def test_of_concurrent_redemptions_of_one_code_exactly_one_succeeds(
    app: Flask, rp: OAuth2Session
) -> None:
    attempt = Attempt(rp)
    code = code_from(
        sign_in(app.test_client(), attempt, "alice@agency.example", "alice-pass"), attempt
    )
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: redeem(app.test_client(), code, attempt.verifier), range(8))
        )
    assert sorted(answer.status_code for answer in answers) == [200] + [400] * 7


def test_the_store_keeps_no_code_or_token_in_clear(
    settings: DemoIdpSettings, web: FlaskClient, rp: OAuth2Session
) -> None:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    stored = b"".join(path.read_bytes() for path in settings.state_dir.glob("*.sqlite3*"))
    assert code.encode() not in stored
    access_token = redeem(web, code, attempt.verifier).get_json()["access_token"]
    stored = b"".join(path.read_bytes() for path in settings.state_dir.glob("*.sqlite3*"))
    assert access_token.encode() not in stored
    assert b"alice-pass" not in stored


def test_workers_starting_at_once_share_one_private_key_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_signing_key(state_dir), range(8)))
    assert len({key.kid for key in keys}) == 1
    assert stat.S_IMODE(os.stat(state_dir / KEY_FILE).st_mode) == 0o600
    assert sorted(os.listdir(state_dir)) == [KEY_FILE]  # no temporary file left behind
    assert load_or_create_signing_key(state_dir).kid == keys[0].kid


def test_the_blueprint_registers_nothing_on_the_app(app: Flask) -> None:
    assert None not in app.before_request_funcs
    assert None not in app.after_request_funcs
    assert {rule.rule for rule in app.url_map.iter_rules()} >= {
        "/demo-idp/.well-known/openid-configuration",
        "/demo-idp/authorize",
        "/demo-idp/token",
        "/demo-idp/jwks",
        "/demo-idp/userinfo",
        "/demo-idp/logout",
    }


def test_an_issuer_that_does_not_end_with_the_mount_point_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="/demo-idp"):
        DemoIdpSettings(
            issuer="https://idp.test/elsewhere",
            state_dir=tmp_path,
            clients={},
            people=[],
        )


def _id_token(web: FlaskClient, rp: OAuth2Session) -> str:
    attempt = Attempt(rp)
    code = code_from(sign_in(web, attempt, "alice@agency.example", "alice-pass"), attempt)
    token: str = redeem(web, code, attempt.verifier).get_json()["id_token"]
    return token


@pytest.mark.parametrize("target", [REDIRECT_URI, SIGNED_OUT_URI])
def test_logout_redirects_to_a_registered_uri_with_the_state(web: FlaskClient, target: str) -> None:
    answer = web.get(
        f"{ISSUER}/logout",
        query_string={
            "client_id": CLIENT_ID,
            "post_logout_redirect_uri": target,
            "state": "s-1",
        },
    )
    assert answer.status_code == 302
    assert answer.headers["Location"] == f"{target}?state=s-1"


def test_logout_with_an_id_token_hint_names_the_client(web: FlaskClient, rp: OAuth2Session) -> None:
    answer = web.get(
        f"{ISSUER}/logout",
        query_string={
            "id_token_hint": _id_token(web, rp),
            "post_logout_redirect_uri": SIGNED_OUT_URI,
        },
    )
    assert answer.status_code == 302
    assert answer.headers["Location"] == SIGNED_OUT_URI


@pytest.mark.parametrize(
    "query",
    [
        {"client_id": CLIENT_ID, "post_logout_redirect_uri": "https://evil.test/"},
        {"client_id": "unknown", "post_logout_redirect_uri": SIGNED_OUT_URI},
        {"post_logout_redirect_uri": SIGNED_OUT_URI},
        {},
    ],
)
def test_logout_shows_a_signed_out_page_unless_the_uri_is_registered(
    web: FlaskClient, query: dict[str, str]
) -> None:
    answer = web.get(f"{ISSUER}/logout", query_string=query)
    assert answer.status_code == 200
    assert "Location" not in answer.headers
    assert "Signed out" in answer.text


@pytest.mark.parametrize(
    "hint",
    ["garbage", "a.b.c", 'x"y\\z.a.b', "eyJhbGciOiJub25lIn0.eyJhdWQiOiJicm9rZXItY29uc29sZSJ9."],
)
def test_logout_with_a_bad_id_token_hint_never_redirects(web: FlaskClient, hint: str) -> None:
    answer = web.get(
        f"{ISSUER}/logout",
        query_string={
            "id_token_hint": hint,
            "client_id": CLIENT_ID,
            "post_logout_redirect_uri": SIGNED_OUT_URI,
        },
    )
    assert answer.status_code == 400
    assert "Location" not in answer.headers
    assert "Signed out" in answer.text


def test_logout_refuses_a_hint_issued_to_another_client(
    web: FlaskClient, rp: OAuth2Session
) -> None:
    answer = web.get(
        f"{ISSUER}/logout",
        query_string={
            "id_token_hint": _id_token(web, rp),
            "client_id": "another-client",
            "post_logout_redirect_uri": SIGNED_OUT_URI,
        },
    )
    assert answer.status_code == 400 and "Location" not in answer.headers


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/token", {"json": {"grant_type": "authorization_code"}}),
        ("/token", {"data": {"grant_type": "password"}}),
        ("/token", {"data": {}}),
        ("/token", {"data": {"grant_type": "authorization_code", "code": "x"}}),
        ("/userinfo", {"data": {"access_token": "x"}}),
        ("/authorize", {"data": {"response_type": "code"}}),
        ("/authorize", {"query_string": {"client_id": CLIENT_ID, "response_type": "code"}}),
    ],
)
def test_malformed_requests_get_a_clear_error_never_a_500(
    web: FlaskClient, path: str, kwargs: dict[str, Any]
) -> None:
    answer = web.post(f"{ISSUER}{path}", **kwargs)
    assert 400 <= answer.status_code < 500, answer.text
