"""Signed certification statements, verified offline.

A *statement* is a compact JWS that a certification body (an *issuer*) signs to say that one
provider holds one certification: which provider (`sub`, or `credentialSubject.id` in a
W3C VC-JWT), which scheme (`secnumcloud`, `hds`, `iso27001`, `bsi-c5`, ... as a lowercase
slug), optionally at which level, for which period (`nbf` or `iat` up to `exp`) and optionally
the SHA-256 of the certificate document. The consortium lists the issuers it trusts together
with their public JWK sets (`TrustedKeys`); a statement whose signature, subject, scheme and
dates check out against that list counts as evidence without a human assessor.

Two payload shapes are accepted:

* plain claims: ``{"iss", "sub", "scheme", "level"?, "nbf"?, "iat"?, "exp",
  "document_sha256"?}``;
* a W3C VC-JWT: ``{"iss", "sub"?, "nbf", "exp", "vc": {"type": [...], "credentialSubject":
  {"id", "scheme", "level"?, "document_sha256"?}}}``, where an id ``urn:uuid:<uuid>`` names
  the provider ``<uuid>``.

Verification never touches the network: header members such as ``jku``, ``x5u``, ``x5c`` or
``jwk`` are ignored, and only the keys of the issuer named by ``iss`` are tried. There is no
clock leeway. This module has no Flask and no database; callers map `StatementRejected` to
their own errors.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, UnsupportedAlgorithmError
from joserfc.jwk import Key, import_key
from joserfc.jws import JWSAlgModel, JWSRegistry

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "REJECTION_CODES",
    "Statement",
    "StatementRejected",
    "TrustedKeys",
    "check_jwks",
    "verify_statement",
]

#: Signature algorithms a statement may use (never "none", never an HMAC).
ALLOWED_ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "PS256", "ES256", "ES384", "EdDSA")
#: Longest statement accepted, in characters.
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: Most keys a trusted issuer may publish.
MAX_KEYS: Final = 20
#: Smallest RSA modulus accepted, in bits.
MIN_RSA_BITS: Final = 2048

#: Every `StatementRejected.code`.
REJECTION_CODES: Final[frozenset[str]] = frozenset(
    {
        "malformed",
        "unknown_issuer",
        "unknown_key",
        "bad_signature",
        "wrong_subject",
        "missing_claim",
        "not_yet_valid",
        "expired",
        "algorithm_not_allowed",
    }
)

_SCHEME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_URN_UUID = "urn:uuid:"
_MAX_LEVEL_LENGTH = 64

# JWK members that only a private (or symmetric) key carries.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_KEY_TYPES: Final = ("RSA", "EC", "OKP")
_CURVES: Final[dict[str, tuple[str, ...]]] = {"EC": ("P-256", "P-384"), "OKP": ("Ed25519",)}
# The algorithms each kind of key may carry in its "alg" member.
_KEY_ALGORITHMS: Final[dict[str, tuple[str, ...]]] = {
    "RSA": ("RS256", "PS256"),
    "P-256": ("ES256",),
    "P-384": ("ES384",),
    "Ed25519": ("EdDSA",),
}


@dataclass(frozen=True)
class TrustedKeys:
    """One trusted issuer, as the verifier needs it."""

    issuer: str  # the `iss` value its statements carry (a URI or a name)
    name: str  # a display name
    jwks: dict[str, Any]  # its public JWK set {"keys": [...]}


@dataclass(frozen=True)
class Statement:
    """What a valid statement says."""

    issuer: str  # iss
    key_id: str | None  # the kid of the key that verified it
    subject: str  # the provider id it is about (a UUID in lowercase canonical form)
    scheme: str
    level: str | None
    valid_from: datetime  # aware UTC, from nbf (or iat when there is no nbf)
    valid_until: datetime  # aware UTC, from exp
    document_sha256: str | None


class StatementRejected(Exception):
    """A statement that does not count, with a stable `code` (one of `REJECTION_CODES`) and a
    `detail` sentence that can be shown to the user as is."""

    def __init__(self, code: str, detail: str) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail

    def __repr__(self) -> str:
        return f"StatementRejected({self.code!r}, {self.detail!r})"


class _StatementRegistry(JWSRegistry):
    """joserfc's JWS registry, narrowed to `ALLOWED_ALGORITHMS`.

    `JWSRegistry.get_alg` emits a `SecurityWarning` for "EdDSA" (deprecated by RFC 9864 in
    favour of "Ed25519"); the consortium still accepts "EdDSA", so the lookup is done here
    without the warning. The size limits are raised to our own cap (joserfc's default header
    limit of 512 bytes would refuse a header carrying an ``x5c`` chain).
    """

    max_header_length = MAX_TOKEN_LENGTH
    max_payload_length = MAX_TOKEN_LENGTH
    max_signature_length = MAX_TOKEN_LENGTH

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in ALLOWED_ALGORITHMS or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


# Unknown, non-critical header members are ignored (RFC 7515 §4); "crit" is still enforced.
_REGISTRY = _StatementRegistry(algorithms=ALLOWED_ALGORITHMS, strict_check_header=False)


# --- key sets ------------------------------------------------------------------------------


def check_jwks(jwks: Any) -> list[str]:
    """Error messages for a JWK set an admin submits for a trusted issuer; an empty list means
    the set is acceptable.

    The set must be ``{"keys": [...]}`` with 1 to 20 keys. Each key must be a public key (no
    private members such as ``d``, ``p``, ``q``; no symmetric ``oct`` key) of type RSA (at
    least 2048 bits), EC (P-256 or P-384) or OKP (Ed25519), carry a unique non-empty
    ``kid``, and be importable by joserfc. A ``use`` member, when present, must be ``sig``,
    and an ``alg`` member must be an allowed algorithm that fits the key.
    """
    if not isinstance(jwks, dict) or "keys" not in jwks:
        return ['The key set must be a JSON object of the form {"keys": [...]}.']
    keys = jwks["keys"]
    if not isinstance(keys, list):
        return ['The "keys" member of the key set must be a list of keys.']
    if not keys:
        return ["The key set is empty; add at least one public key."]
    if len(keys) > MAX_KEYS:
        return [f"The key set has {len(keys)} keys; at most {MAX_KEYS} are allowed."]
    errors: list[str] = []
    seen: set[str] = set()
    for index, key in enumerate(keys, start=1):
        errors.extend(_check_jwk(key, index, seen))
    return errors


def _check_jwk(key: Any, index: int, seen: set[str]) -> list[str]:
    if not isinstance(key, dict):
        return [f"Key {index} is not a JSON object."]
    errors: list[str] = []
    kid = key.get("kid")
    label = f"Key {index}"
    if not isinstance(kid, str) or not kid.strip():
        errors.append(f'{label} has no "kid"; every key needs a unique, non-empty key id.')
    else:
        label = f'Key {index} (kid "{_show(kid, 64)}")'
        if kid in seen:
            errors.append(f"{label} reuses the key id of an earlier key; key ids must be unique.")
        seen.add(kid)

    kty = key.get("kty")
    if kty == "oct":
        errors.append(
            f'{label} is a symmetric ("oct") key; statements are verified with public keys only.'
        )
        return errors
    if kty not in _KEY_TYPES:
        errors.append(
            f"{label} has an unsupported key type ({_show(kty, 20)}); "
            "use RSA, EC (P-256 or P-384) or OKP (Ed25519)."
        )
        return errors
    private = sorted(_PRIVATE_MEMBERS.intersection(key))
    if private:
        members = ", ".join(f'"{m}"' for m in private)
        errors.append(
            f"{label} contains private key material ({members}); submit only the public key."
        )
        return errors

    curve: str
    if kty == "RSA":
        curve = "RSA"
        bits = _rsa_bits(key.get("n"))
        if bits is None:
            errors.append(f'{label} has no valid RSA modulus ("n").')
            return errors
        if bits < MIN_RSA_BITS:
            errors.append(
                f"{label} is a {bits}-bit RSA key; at least {MIN_RSA_BITS} bits are required."
            )
            return errors
    else:
        crv = key.get("crv")
        if crv not in _CURVES[kty]:
            allowed = " or ".join(_CURVES[kty])
            errors.append(
                f"{label} uses the curve {_show(crv, 20)}; {kty} keys must use {allowed}."
            )
            return errors
        curve = crv

    use = key.get("use")
    if use is not None and use != "sig":
        errors.append(f'{label} is meant for "{_show(use, 20)}", not for signatures ("sig").')
    key_ops = key.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        errors.append(f'{label} has "key_ops" that do not include "verify".')
    alg = key.get("alg")
    if alg is not None and alg not in _KEY_ALGORITHMS[curve]:
        fitting = " or ".join(_KEY_ALGORITHMS[curve])
        errors.append(
            f"{label} declares the algorithm {_show(alg, 20)}; this key allows {fitting}."
        )
    if errors:
        return errors

    try:
        imported = import_key(key)
    except JoseError as error:
        errors.append(f"{label} is not a valid {kty} public key ({error.description}).")
    except Exception as error:  # cryptography raises several types for bad key material
        errors.append(f"{label} is not a valid {kty} public key ({error}).")
    else:
        if imported.is_private:  # pragma: no cover - private members are refused above
            errors.append(f"{label} is a private key; submit only the public key.")
    return errors


def _rsa_bits(n: Any) -> int | None:
    """The size in bits of a base64url RSA modulus, or None when it is not one."""
    if not isinstance(n, str) or not n or not _B64URL.fullmatch(n) or len(n) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))
    return int.from_bytes(raw, "big").bit_length()


def _usable_keys(jwks: Any) -> list[Key]:
    """The public keys of a trusted issuer's set that can verify statements. Keys that
    `check_jwks` would refuse are skipped; private members are dropped before import."""
    raw = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(raw, list):
        return []
    keys: list[Key] = []
    for item in raw:
        if not isinstance(item, dict) or item.get("kty") not in _KEY_TYPES:
            continue
        if item["kty"] == "RSA" and (_rsa_bits(item.get("n")) or 0) < MIN_RSA_BITS:
            continue
        public = {k: v for k, v in item.items() if k not in _PRIVATE_MEMBERS}
        try:
            keys.append(import_key(public))
        except Exception:  # an unreadable key simply cannot verify anything
            continue
    return keys


# --- statements ----------------------------------------------------------------------------


def verify_statement(
    token: str, issuers: Sequence[TrustedKeys], *, subject: str, now: datetime
) -> Statement:
    """Verify a signed statement about the provider `subject` at the instant `now` (aware).

    The unverified header and claims are read only to find the issuer (by ``iss``) and its
    key (by ``kid``, or every key of that issuer when there is none); the signature is then
    checked with that issuer's keys only. After it, the subject, scheme and validity window
    are checked, with no leeway: the statement is valid from ``nbf`` (or ``iat``) inclusive
    until ``exp`` exclusive.

    Returns the `Statement`; raises `StatementRejected` with one of `REJECTION_CODES`, or
    `ValueError` when `now` is naive (a programming error).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")

    header, claims = _read_unverified(token)

    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        _reject("malformed", "The statement's header does not name a signature algorithm.")
    if alg not in ALLOWED_ALGORITHMS:
        _reject(
            "algorithm_not_allowed",
            f"The statement is signed with the algorithm {_show(alg, 20)}, which is not "
            f"allowed; use one of {', '.join(ALLOWED_ALGORITHMS)}.",
        )
    if header.get("b64", True) is not True:
        _reject("malformed", "The statement uses an unencoded payload, which is not supported.")

    iss = claims.get("iss")
    if iss is None:
        _reject("missing_claim", "The statement does not name its issuer (iss).")
    if not isinstance(iss, str) or not iss:
        _reject("malformed", "The statement's issuer (iss) is not a non-empty string.")
    trusted = next((t for t in issuers if t.issuer == iss), None)
    if trusted is None:
        _reject(
            "unknown_issuer",
            f"The statement is signed by an issuer the consortium does not trust ({_show(iss)}).",
        )
    who = f"{trusted.name} ({_show(iss)})"

    keys = _usable_keys(trusted.jwks)
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        _reject("malformed", "The statement's key id (kid) is not a string.")
    if kid is not None:
        candidates = [k for k in keys if k.kid == kid]
        if not candidates:
            _reject(
                "unknown_key",
                f'The statement names the key "{_show(kid, 64)}", which is not among the '
                f"published keys of {who}.",
            )
    else:
        candidates = keys
        if not candidates:
            _reject("unknown_key", f"The trusted issuer {who} has no usable public key.")

    verified = _verify_signature(token.strip(), alg, candidates)
    if verified is None:
        _reject(
            "bad_signature",
            f"The statement's signature does not match the keys of {who}; it was altered "
            "or signed by another key.",
        )

    return _read_claims(claims, iss, verified.kid, subject=subject, now=now)


def _verify_signature(token: str, alg: str, candidates: list[Key]) -> Key | None:
    """The first candidate key whose signature over `token` checks out, or None."""
    model = _REGISTRY.get_alg(alg)
    for key in candidates:
        try:
            model.check_key(key)  # key type, curve, "use" and "alg" fit the algorithm
        except JoseError:
            continue
        try:
            jws.deserialize_compact(token, key, registry=_REGISTRY)
        except BadSignatureError:
            continue
        except JoseError as error:
            _reject(
                "malformed",
                f"The statement is not a valid JWS ({error.description or error.error}).",
            )
        except ValueError:
            continue
        return key
    return None


def _read_unverified(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, before any signature check."""
    if not isinstance(token, str):
        _reject("malformed", "The statement is not a text token.")
    token = token.strip()
    if len(token) > MAX_TOKEN_LENGTH:
        _reject(
            "malformed",
            f"The statement is longer than the {MAX_TOKEN_LENGTH} characters accepted.",
        )
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        _reject(
            "malformed",
            "The statement is not a compact JWS (three base64url parts separated by dots).",
        )
    header = _decode_json(parts[0], "header")
    claims = _decode_json(parts[1], "payload")
    if not _B64URL.fullmatch(parts[2]):
        _reject("malformed", "The statement's signature is not base64url-encoded.")
    return header, claims


def _decode_json(segment: str, what: str) -> dict[str, Any]:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        _reject("malformed", f"The statement's {what} is not base64url-encoded.")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # binascii.Error, JSONDecodeError, UnicodeDecodeError
        _reject("malformed", f"The statement's {what} is not valid JSON.")
    if not isinstance(value, dict):
        _reject("malformed", f"The statement's {what} is not a JSON object.")
    return value


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _read_claims(
    claims: dict[str, Any], iss: str, key_id: str | None, *, subject: str, now: datetime
) -> Statement:
    """Check the verified claims against the expected subject and `now`."""
    vc = claims.get("vc")
    if vc is not None:
        if not isinstance(vc, dict):
            _reject("malformed", 'The statement\'s "vc" claim is not a JSON object.')
        types = vc.get("type")
        if types is not None and not (
            isinstance(types, str)
            or (isinstance(types, list) and all(isinstance(t, str) for t in types))
        ):
            _reject("malformed", "The credential's type is not a string or a list of strings.")
        source = vc.get("credentialSubject")
        if source is None:
            _reject("missing_claim", "The credential has no credentialSubject.")
        if not isinstance(source, dict):
            _reject("malformed", "The credential's credentialSubject is not a JSON object.")
        about = _subject_claim(source.get("id"), "credentialSubject.id")
        sub = _subject_claim(claims.get("sub"), "sub")
        if about is not None and sub is not None and about != sub:
            _reject(
                "malformed",
                "The statement's sub and credentialSubject.id name different subjects.",
            )
        about = about if about is not None else sub
    else:
        source = claims
        about = _subject_claim(claims.get("sub"), "sub")

    if about is None:
        _reject(
            "missing_claim",
            "The statement does not say which provider it is about (no sub or "
            "credentialSubject.id).",
        )
    if about != _normalize_subject(subject):
        _reject(
            "wrong_subject",
            f"The statement is about {_show(about)}, not about this provider ({_show(subject)}).",
        )

    scheme = source.get("scheme")
    if scheme is None:
        _reject("missing_claim", "The statement does not name a certification scheme.")
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        _reject(
            "missing_claim",
            f"The statement's scheme {_show(scheme, 50)} is not a lowercase slug such as "
            "secnumcloud or iso27001.",
        )

    level = source.get("level")
    if level is not None and (not isinstance(level, str) or len(level) > _MAX_LEVEL_LENGTH):
        _reject(
            "malformed",
            f"The statement's level is not a string of at most {_MAX_LEVEL_LENGTH} characters.",
        )

    document = source.get("document_sha256")
    if document is not None and (
        not isinstance(document, str) or not _SHA256_HEX.fullmatch(document)
    ):
        _reject(
            "malformed",
            "The statement's document_sha256 is not 64 lowercase hexadecimal characters.",
        )

    if claims.get("exp") is None:
        _reject("missing_claim", "The statement has no expiry (exp); statements must expire.")
    valid_until = _epoch(claims["exp"], "exp")
    start_name = "nbf" if claims.get("nbf") is not None else "iat"
    if claims.get(start_name) is None:
        _reject(
            "missing_claim",
            "The statement carries neither nbf nor iat, so its start of validity is unknown.",
        )
    valid_from = _epoch(claims[start_name], start_name)
    if claims.get("iat") is not None:
        _epoch(claims["iat"], "iat")  # a present iat must at least be a time
    if valid_until <= valid_from:
        _reject(
            "malformed",
            f"The statement expires ({_when(valid_until)}) no later than it starts "
            f"({_when(valid_from)}).",
        )

    if now < valid_from:
        _reject("not_yet_valid", f"The statement is not valid before {_when(valid_from)}.")
    if now >= valid_until:
        _reject("expired", f"The statement expired at {_when(valid_until)}.")

    return Statement(
        issuer=iss,
        key_id=key_id,
        subject=about,
        scheme=scheme,
        level=level,
        valid_from=valid_from,
        valid_until=valid_until,
        document_sha256=document,
    )


def _subject_claim(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        _reject("malformed", f"The statement's {name} is not a non-empty string.")
    return _normalize_subject(value)


def _normalize_subject(value: str) -> str:
    """``urn:uuid:<uuid>`` and ``<uuid>`` in any case become the lowercase ``<uuid>``; any
    other id is compared as is."""
    bare = value[len(_URN_UUID) :] if value[: len(_URN_UUID)].lower() == _URN_UUID else value
    if _UUID.fullmatch(bare):
        return bare.lower()
    return value


def _epoch(value: Any, name: str) -> datetime:
    """An aware UTC datetime from epoch seconds (int or float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        _reject("malformed", f"The statement's {name} is not a time in seconds since the epoch.")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        _reject("malformed", f"The statement's {name} is out of the range of dates.")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _show(value: Any, limit: int = 200) -> str:
    """A value for a message, shortened."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reject(code: str, detail: str) -> NoReturn:
    raise StatementRejected(code, detail)
