"""Signed certification statements (`broker.statements`): pure tests, no app, no database.

Keys are generated with joserfc; the RSA key (slow-ish) once per module.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from broker.statements import (
    MAX_TOKEN_LENGTH,
    Statement,
    StatementRejected,
    TrustedKeys,
    check_jwks,
    verify_statement,
)

# joserfc warns when it *signs* with "EdDSA" (deprecated by RFC 9864); verifying does not.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

ISSUER = "https://certifier.example"
OTHER_ISSUER = "https://other-certifier.example"
PROVIDER = "5b0e7c64-2f0a-4a57-9a43-1c3e8f6d2b10"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = int(NOW.timestamp())
YEAR = 365 * 24 * 3600
DOC = "ab" * 32


@cache
def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid})


@cache
def ed_key(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid})


@cache
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "a-rsa"})


def public_set(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def issuers() -> list[TrustedKeys]:
    return [
        TrustedKeys(ISSUER, "Certifier", public_set(ec_key("a-ec"), ed_key("a-ed"), rsa_key())),
        TrustedKeys(OTHER_ISSUER, "Other certifier", public_set(ec_key("b-ec"))),
    ]


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": PROVIDER,
        "scheme": "secnumcloud",
        "level": "3.2",
        "nbf": T - 3600,
        "exp": T + YEAR,
        "document_sha256": DOC,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Key, alg: str = "ES256", kid: str | None = "a-ec") -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return jws.serialize_compact(header, json.dumps(payload), key, algorithms=[alg])


def b64(data: dict[str, Any] | list[Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify(token: str, *, subject: str = PROVIDER, now: datetime = NOW) -> Statement:
    return verify_statement(token, issuers(), subject=subject, now=now)


def assert_sentence(text: str) -> None:
    assert len(text) > 20 and text[0].isupper() and text.endswith("."), text


def rejected(code: str, token: str, **kwargs: Any) -> StatementRejected:
    with pytest.raises(StatementRejected) as info:
        verify(token, **kwargs)
    assert info.value.code == code, info.value.detail
    assert_sentence(info.value.detail)
    return info.value


# --- valid statements ----------------------------------------------------------------------


def test_a_plain_es256_statement_verifies_and_returns_its_fields() -> None:
    statement = verify(sign(claims(), ec_key("a-ec")))
    assert statement == Statement(
        issuer=ISSUER,
        key_id="a-ec",
        subject=PROVIDER,
        scheme="secnumcloud",
        level="3.2",
        valid_from=datetime.fromtimestamp(T - 3600, tz=UTC),
        valid_until=datetime.fromtimestamp(T + YEAR, tz=UTC),
        document_sha256=DOC,
    )
    assert statement.valid_from.tzinfo is UTC and statement.valid_until.tzinfo is UTC


def test_a_vc_jwt_signed_with_eddsa_verifies_with_an_urn_uuid_subject() -> None:
    payload = {
        "iss": ISSUER,
        "nbf": T - 60,
        "exp": T + YEAR,
        "vc": {
            "@context": ["https://www.w3.org/2018/credentials/v1"],
            "type": ["VerifiableCredential", "SovereigntyCertification"],
            "credentialSubject": {"id": f"urn:uuid:{PROVIDER.upper()}", "scheme": "hds"},
        },
    }
    statement = verify(sign(payload, ed_key("a-ed"), "EdDSA", kid="a-ed"))
    assert (statement.subject, statement.scheme, statement.key_id) == (PROVIDER, "hds", "a-ed")
    assert statement.level is None and statement.document_sha256 is None
    assert statement.valid_from == datetime.fromtimestamp(T - 60, tz=UTC)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_an_rsa_statement_verifies(alg: str) -> None:
    statement = verify(sign(claims(scheme="bsi-c5"), rsa_key(), alg, kid="a-rsa"))
    assert (statement.scheme, statement.key_id) == ("bsi-c5", "a-rsa")


def test_without_kid_each_key_of_the_issuer_is_tried_and_iat_stands_in_for_nbf() -> None:
    token = sign(claims(nbf=None, iat=T - 10), ed_key("a-ed"), "EdDSA", kid=None)
    statement = verify(token)
    assert statement.key_id == "a-ed"
    assert statement.valid_from == datetime.fromtimestamp(T - 10, tz=UTC)


def test_validity_runs_from_nbf_inclusive_to_exp_exclusive() -> None:
    token = sign(claims(nbf=T, exp=T + 10), ec_key("a-ec"))
    assert verify(token, now=NOW).scheme == "secnumcloud"
    assert verify(token, now=NOW + timedelta(seconds=9.999)).scheme == "secnumcloud"


# --- rejections ----------------------------------------------------------------------------


def test_a_tampered_payload_is_a_bad_signature() -> None:
    header, _, signature = sign(claims(), ec_key("a-ec")).split(".")
    forged = ".".join([header, b64(claims(scheme="hds")), signature])
    rejected("bad_signature", forged)


@pytest.mark.parametrize("kid", [None, "a-ec"])
def test_a_key_of_another_issuer_cannot_sign_for_the_trusted_one(kid: str | None) -> None:
    # Issuer B's key is trusted too, but only for statements whose iss is B.
    token = sign(claims(iss=ISSUER), ec_key("b-ec"), kid=kid)
    error = rejected("bad_signature", token)
    assert "Certifier (https://certifier.example)" in error.detail
    assert verify(sign(claims(iss=OTHER_ISSUER), ec_key("b-ec"), kid="b-ec")).key_id == "b-ec"


def test_an_issuer_the_consortium_does_not_trust_is_refused() -> None:
    token = sign(claims(iss="https://x.example"), ec_key("a-ec"))
    error = rejected("unknown_issuer", token)
    assert error.detail == (
        "The statement is signed by an issuer the consortium does not trust (https://x.example)."
    )


def test_a_kid_the_issuer_does_not_publish_is_refused() -> None:
    rejected("unknown_key", sign(claims(), ec_key("a-ec"), kid="b-ec"))


def test_a_statement_about_another_provider_is_refused() -> None:
    token = sign(claims(sub="0f8e1f57-1111-4a57-9a43-1c3e8f6d2b10"), ec_key("a-ec"))
    rejected("wrong_subject", token)


def test_a_statement_is_expired_from_its_exp_on() -> None:
    token = sign(claims(exp=T), ec_key("a-ec"))
    rejected("expired", token, now=NOW)


def test_a_statement_before_its_nbf_is_not_yet_valid() -> None:
    token = sign(claims(nbf=T + 1), ec_key("a-ec"))
    rejected("not_yet_valid", token)


def test_a_statement_without_exp_is_refused() -> None:
    rejected("missing_claim", sign(claims(exp=None), ec_key("a-ec")))


@pytest.mark.parametrize("scheme", [None, "SecNumCloud", "", "iso 27001", "-hds", 27001])
def test_a_statement_without_a_slug_scheme_is_refused(scheme: Any) -> None:
    payload = claims()
    payload.pop("scheme")
    if scheme is not None:
        payload["scheme"] = scheme
    rejected("missing_claim", sign(payload, ec_key("a-ec")))


def test_an_unsigned_alg_none_token_is_refused() -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    rejected("algorithm_not_allowed", token)


def test_an_hs256_token_is_refused() -> None:
    secret = OctKey.generate_key(256)
    rejected("algorithm_not_allowed", sign(claims(), secret, "HS256", kid="a-ec"))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        f"{b64({'alg': 'ES256'})}.{b64(b'not json')}.c2ln",
        f"{b64({'alg': 'ES256'})}.{b64([1, 2, 3])}.c2ln",
        f"{b64([{'alg': 'ES256'}])}.{b64({'iss': ISSUER})}.c2ln",
        f"{b64({'typ': 'JWT'})}.{b64({'iss': ISSUER})}.c2ln",
    ],
)
def test_garbage_is_malformed(token: str) -> None:
    rejected("malformed", token)


def test_an_oversize_token_is_malformed() -> None:
    token = sign(claims(padding="x" * MAX_TOKEN_LENGTH), ec_key("a-ec"))
    assert len(token) > MAX_TOKEN_LENGTH
    error = rejected("malformed", token)
    assert str(MAX_TOKEN_LENGTH) in error.detail


@pytest.mark.parametrize(
    "changes",
    [
        {"document_sha256": "AB" * 32},
        {"document_sha256": "ab" * 31},
        {"exp": T - 3600},  # exp == nbf
        {"exp": "tomorrow"},
        {"nbf": True},
    ],
)
def test_bad_claim_values_are_malformed(changes: dict[str, Any]) -> None:
    rejected("malformed", sign(claims(**changes), ec_key("a-ec")))


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError):
        verify(sign(claims(), ec_key("a-ec")), now=datetime(2025, 6, 1))


# --- check_jwks ----------------------------------------------------------------------------


def one_error(jwks: Any) -> str:
    errors = check_jwks(jwks)
    assert len(errors) == 1, errors
    assert_sentence(errors[0])
    return errors[0]


def test_check_jwks_accepts_a_mixed_ec_and_okp_set() -> None:
    assert check_jwks(public_set(ec_key("a-ec"), ed_key("a-ed"))) == []


def test_check_jwks_refuses_a_private_key() -> None:
    jwks = {"keys": [ec_key("a-ec").as_dict(private=True)]}
    assert "private" in one_error(jwks)


def test_check_jwks_refuses_a_symmetric_key() -> None:
    jwks = {"keys": [OctKey.generate_key(256, parameters={"kid": "s"}).as_dict(private=True)]}
    assert '"oct"' in one_error(jwks)


def test_check_jwks_refuses_a_duplicate_kid() -> None:
    jwks = public_set(ec_key("a-ec"), ed_key("a-ed"))
    jwks["keys"][1]["kid"] = "a-ec"
    assert "unique" in one_error(jwks)


def test_check_jwks_refuses_a_key_without_kid() -> None:
    jwks = public_set(ec_key("a-ec"))
    del jwks["keys"][0]["kid"]
    assert '"kid"' in one_error(jwks)


def test_check_jwks_refuses_a_1024_bit_rsa_key() -> None:
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    n = base64.urlsafe_b64encode(numbers.n.to_bytes(128, "big")).rstrip(b"=").decode()
    jwks = {"keys": [{"kty": "RSA", "kid": "small", "n": n, "e": "AQAB"}]}
    assert "1024-bit" in one_error(jwks)


@pytest.mark.parametrize("jwks", [{"keys": []}, [], "keys", None, {"keys": {}}, {}])
def test_check_jwks_refuses_an_empty_set_or_a_non_object(jwks: Any) -> None:
    one_error(jwks)


def test_check_jwks_refuses_other_curves_and_more_than_twenty_keys() -> None:
    p521 = ECKey.generate_key("P-521", parameters={"kid": "big"})
    assert "P-256 or P-384" in one_error(public_set(p521))
    assert "at most 20" in one_error({"keys": [{"kid": str(i)} for i in range(21)]})
