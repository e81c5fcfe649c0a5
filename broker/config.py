"""Configuration read from environment variables (12-factor).

Every setting has a default that works for the embedded single-machine setup; production
overrides them through the environment. `create_app(config=...)` may override any key, which
is how the tests point an app at their own database.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _decimal(name: str, default: str) -> Decimal:
    """A non-negative decimal setting; a malformed value stops the app at start."""
    raw = os.environ.get(name)
    try:
        value = Decimal(raw if raw not in (None, "") else default)
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal number, not {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{name} must be a non-negative number, not {raw!r}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: Sequence[str]) -> tuple[str, ...]:
    """A "|"-separated list of texts from the environment (blank items dropped)."""
    raw = os.environ.get(name)
    if raw is None:
        return tuple(default)
    return tuple(item.strip() for item in raw.split("|") if item.strip())


# Articles L441-10 and D441-5 of the French Code de commerce: every invoice states the payment
# terms, the penalties for late payment and the 40 EUR fixed indemnity for recovery costs.
FRENCH_LEGAL_MENTIONS: dict[str, tuple[str, ...]] = {
    "fr": (
        "Pas d'escompte pour paiement anticipé.",
        "En cas de retard de paiement, des pénalités au taux de trois fois le taux d'intérêt "
        "légal sont exigibles, ainsi qu'une indemnité forfaitaire pour frais de recouvrement "
        "de 40 € (articles L441-10 et D441-5 du Code de commerce).",
    ),
    "en": (
        "No discount for early payment.",
        "Late payment incurs penalties at three times the French legal interest rate and a "
        "fixed indemnity of EUR 40 for recovery costs (articles L441-10 and D441-5 of the "
        "French Commercial Code).",
    ),
}

# What EN 16931 needs of the seller (BR-S-02, BR-CO-26, BR-08 and the French CTC rules).
SELLER_REQUIRED = {
    "vat_id": "BROKER_SELLER_VAT_ID",
    "legal_id": "BROKER_SELLER_LEGAL_ID",
    "address": "BROKER_SELLER_ADDRESS",
    "post_code": "BROKER_SELLER_POST_CODE",
    "city": "BROKER_SELLER_CITY",
}


def _legal_mentions() -> dict[str, tuple[str, ...]]:
    french = os.environ.get("BROKER_SELLER_COUNTRY", "FR") == "FR"
    return {
        language: _list(f"BROKER_LEGAL_MENTIONS_{language.upper()}", default if french else ())
        for language, default in FRENCH_LEGAL_MENTIONS.items()
    }


def require_seller(config: Mapping[str, Any]) -> None:
    """Refuse to serve without the seller's identity: every invoice would break EN 16931
    (BR-S-02, BR-CO-26, BR-08). Called by what serves (gunicorn's app, `broker serve`), not by
    tools such as `flask openapi write`; the workers issue no invoice."""
    seller = config["SELLER"]
    gaps = [
        variable
        for key, variable in SELLER_REQUIRED.items()
        if not str(seller.get(key) or "").strip()
    ]
    if gaps:
        raise SystemExit(
            "The seller's identity on invoices is incomplete: set " + ", ".join(gaps) + "."
        )


def instance_path() -> Path:
    """Directory for the embedded database, the generated signing key and local state."""
    return Path(os.environ.get("BROKER_INSTANCE_PATH", PROJECT_ROOT / "instance")).resolve()


def base_url() -> str:
    """Where this broker is reached: `BROKER_ISSUER` when set (behind a proxy, the public
    https URL), otherwise the address it serves on (`HOST`, `PORT`), so that `PORT=8765 make
    run` hands out tokens and a discovery document naming port 8765. A wildcard address is
    reached locally as 127.0.0.1."""
    configured = os.environ.get("BROKER_ISSUER")
    if configured:
        return configured.rstrip("/")
    host = os.environ.get("HOST", "127.0.0.1")
    port = os.environ.get("PORT", "8000")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def load_config() -> dict[str, Any]:
    """Build the application configuration from the environment."""
    instance = instance_path()
    return {
        "INSTANCE_PATH": str(instance),
        "DATABASE_URL": os.environ.get("DATABASE_URL", f"sqlite:///{instance / 'broker.db'}"),
        # OAuth 2.0 / RFC 9068: the issuer names this authorization server; the audience names
        # the API. Both must match exactly on every token the API accepts.
        "OAUTH_ISSUER": base_url(),
        "OAUTH_AUDIENCE": os.environ.get("BROKER_AUDIENCE", "https://broker.example/api"),
        "ACCESS_TOKEN_TTL": _int("BROKER_ACCESS_TOKEN_TTL", 900),
        # PEM of an RSA private key, or a path to one. When neither is set, a key is generated
        # into the instance directory on first use (fine for one host, not for many).
        "SIGNING_KEY": os.environ.get("BROKER_SIGNING_KEY"),
        "SIGNING_KEY_FILE": os.environ.get(
            "BROKER_SIGNING_KEY_FILE", str(instance / "signing-key.pem")
        ),
        # Signs the browser's cookie while a person signs in (state, nonce, PKCE verifier);
        # generated into the instance directory when unset. People's sessions themselves are
        # server-side records.
        "SECRET_KEY": os.environ.get("BROKER_SECRET_KEY"),
        "SECRET_KEY_FILE": os.environ.get("BROKER_SECRET_KEY_FILE", str(instance / "secret-key")),
        "SESSION_IDLE_MINUTES": _int("BROKER_SESSION_IDLE_MINUTES", 30),
        "SESSION_ABSOLUTE_HOURS": _int("BROKER_SESSION_ABSOLUTE_HOURS", 12),
        # Invitations by e-mail: the SMTP server (`smtp://host:port`,
        # `smtp+starttls://user:password@host:port`, `smtps://user:password@host:port`). Unset:
        # no e-mail is sent; the inviter passes on the link from the answer.
        "SMTP_URL": os.environ.get("BROKER_SMTP_URL") or None,
        "SMTP_FROM": os.environ.get("BROKER_SMTP_FROM", "broker@localhost"),
        "SMTP_TIMEOUT_SECONDS": float(os.environ.get("BROKER_SMTP_TIMEOUT_SECONDS", "10")),
        # How long an invitation link works.
        "INVITATION_TTL_HOURS": _int("BROKER_INVITATION_TTL_HOURS", 168),
        # The demo OpenID provider (`/demo-idp`), which `broker serve` turns on with the demo.
        "DEMO_IDP": _bool("BROKER_DEMO_IDP", False),
        # Fernet keys (comma-separated, newest first) encrypting provider credentials. When
        # unset, keys are kept in a file of the instance directory (generated on first use).
        "CREDENTIAL_KEYS": os.environ.get("BROKER_CREDENTIAL_KEYS"),
        "CREDENTIAL_KEYS_FILE": os.environ.get(
            "BROKER_CREDENTIAL_KEYS_FILE", str(instance / "credential-keys")
        ),
        # Rate limits ("N per second|minute|hour", the `limits` notation), counted in memory
        # (one process) or in Redis shared by every process and host (`redis://host:6379/0`).
        "RATE_LIMITS_ENABLED": _bool("BROKER_RATE_LIMITS", True),
        "RATE_LIMIT_STORAGE_URI": os.environ.get("BROKER_RATE_LIMIT_STORAGE_URI", "memory://"),
        "RATE_LIMIT_PER_CLIENT": os.environ.get("BROKER_RATE_LIMIT_PER_CLIENT", "600 per minute"),
        "RATE_LIMIT_PER_ADDRESS": os.environ.get(
            "BROKER_RATE_LIMIT_PER_ADDRESS", "1200 per minute"
        ),
        "RATE_LIMIT_TOKEN": os.environ.get("BROKER_RATE_LIMIT_TOKEN", "30 per minute"),
        "RATE_LIMIT_EXPENSIVE": os.environ.get("BROKER_RATE_LIMIT_EXPENSIVE", "120 per minute"),
        # Timeout (seconds) of every call to a provider's API.
        "PROVIDER_TIMEOUT": float(os.environ.get("BROKER_PROVIDER_TIMEOUT", "10")),
        # Local fake clouds (http, 127.0.0.1) are allowed only when the tests set this; it has
        # no environment variable on purpose.
        "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": False,
        # Development only: webhooks may point at http and private addresses (a receiver on
        # this machine, such as `broker webhooks listen`). Off by default; logged at start.
        "WEBHOOKS_ALLOW_PRIVATE": _bool("BROKER_ALLOW_PRIVATE_WEBHOOKS", False),
        # A worker's hold on a job (renewed while it runs); a crashed worker's jobs are taken
        # over once it runs out.
        "JOB_LEASE_SECONDS": float(os.environ.get("BROKER_JOB_LEASE_SECONDS", "300")),
        # Where the simulated cloud keeps its state.
        "PROVIDER_STATE_DIR": os.environ.get(
            "BROKER_PROVIDER_STATE_DIR", str(instance / "providers")
        ),
        # Usage older than this many days is refused (a period that old is settled); usage
        # ending more than USAGE_CLOCK_SKEW_SECONDS in the future is refused too.
        "USAGE_LOOKBACK_DAYS": _int("BROKER_USAGE_LOOKBACK_DAYS", 62),
        "USAGE_CLOCK_SKEW_SECONDS": _int("BROKER_USAGE_CLOCK_SKEW_SECONDS", 300),
        # Usage that cannot have happened is refused (`broker.services.usage`). A record must
        # lie within its resource's life, from when it became active to when it was
        # terminated, give or take this much: the cloud's and the broker's clocks, and the
        # moment each saw the machine come and go, may differ by a few minutes.
        "USAGE_LIFE_TOLERANCE_SECONDS": _int("BROKER_USAGE_LIFE_TOLERANCE_SECONDS", 300),
        # Ceilings of what one resource can consume, where its offer's size says nothing. A
        # 25 Gbit/s interface (the fastest a consortium cloud sells a VM) saturated for an
        # hour moves 10,477 GiB: 12,000 GiB/h (about 28.6 Gbit/s) leaves room above it.
        "USAGE_MAX_EGRESS_GIB_PER_HOUR": _decimal("BROKER_USAGE_MAX_EGRESS_GIB_PER_HOUR", "12000"),
        # Requests per hour (about 830 a second sustained): a month of it is what the ledger
        # can sum for one resource (ceilings above ~3.4 million units an hour are held there).
        "USAGE_MAX_REQUESTS_PER_HOUR": _decimal("BROKER_USAGE_MAX_REQUESTS_PER_HOUR", "3000000"),
        # The most one bucket can store, GiB (1 PiB): bounds its `storage_gib_month`. A VM's
        # or volume's storage is bounded by its offer's disk size instead.
        "USAGE_MAX_BUCKET_GIB": _decimal("BROKER_USAGE_MAX_BUCKET_GIB", "1048576"),
        # A draft invoice line above this share (percent) of its invoice's subtotal is flagged
        # for finance when the subtotal is over BILLING_OUTLIER_MIN_SUBTOTAL (in the
        # invoice's currency); finance still decides whether to finalize.
        "BILLING_OUTLIER_SHARE": _decimal("BROKER_BILLING_OUTLIER_SHARE", "50"),
        "BILLING_OUTLIER_MIN_SUBTOTAL": _decimal("BROKER_BILLING_OUTLIER_MIN_SUBTOTAL", "1000"),
        # The seller on every invoice (the consortium): EN 16931 wants its VAT id, legal
        # identifier and postal address on each, so the broker refuses to start without them
        # (`seller_gaps`); the demo sets its own. The address is its street lines, separated
        # by "|" (up to three).
        "SELLER": {
            "name": os.environ.get("BROKER_SELLER_NAME", "Sovereign Cloud Consortium"),
            "legal_id": os.environ.get("BROKER_SELLER_LEGAL_ID", ""),
            "legal_id_scheme": os.environ.get("BROKER_SELLER_LEGAL_ID_SCHEME", "0002"),
            "vat_id": os.environ.get("BROKER_SELLER_VAT_ID", ""),
            "address": os.environ.get("BROKER_SELLER_ADDRESS", ""),
            "post_code": os.environ.get("BROKER_SELLER_POST_CODE", ""),
            "city": os.environ.get("BROKER_SELLER_CITY", ""),
            "country": os.environ.get("BROKER_SELLER_COUNTRY", "FR"),
        },
        # What the seller's country requires every invoice to say (payment terms, penalties for
        # late payment, the fixed recovery indemnity), per invoice language, "|" between
        # sentences; French law's by default when the seller is in France.
        "LEGAL_MENTIONS": _legal_mentions(),
        "DEFAULT_VAT_RATE": os.environ.get("BROKER_DEFAULT_VAT_RATE", "20"),
        # Invoices are due this many days after they are issued.
        "PAYMENT_TERMS_DAYS": _int("BROKER_PAYMENT_TERMS_DAYS", 30),
        # The consortium's share of what providers' resources billed (percent of the net).
        "CONSORTIUM_FEE_RATE": os.environ.get("BROKER_CONSORTIUM_FEE_RATE", "5"),
        # Stripe collects payment of issued invoices; without an API key nothing is sent.
        # STRIPE_API_BASE points the client elsewhere (the tests' fake Stripe).
        "STRIPE_API_KEY": os.environ.get("BROKER_STRIPE_API_KEY") or None,
        "STRIPE_API_BASE": os.environ.get("BROKER_STRIPE_API_BASE") or None,
        "STRIPE_WEBHOOK_SECRET": os.environ.get("BROKER_STRIPE_WEBHOOK_SECRET") or None,
        "STRIPE_WEBHOOK_TOLERANCE_SECONDS": _int("BROKER_STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300),
        "STRIPE_TIMEOUT_SECONDS": _int("BROKER_STRIPE_TIMEOUT_SECONDS", 10),
        "MAX_CONTENT_LENGTH": _int("BROKER_MAX_BODY_BYTES", 1024 * 1024),
        "IDEMPOTENCY_TTL_HOURS": _int("BROKER_IDEMPOTENCY_TTL_HOURS", 24),
        # How long a duplicate request waits for the first one to finish before answering 409.
        "IDEMPOTENCY_WAIT_SECONDS": float(os.environ.get("BROKER_IDEMPOTENCY_WAIT", "10")),
        # An in-flight claim older than this is treated as abandoned (its process died).
        "IDEMPOTENCY_LOCK_SECONDS": _int("BROKER_IDEMPOTENCY_LOCK_SECONDS", 120),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "JSON_LOGS": _bool("BROKER_JSON_LOGS", True),
        "TESTING": False,
        # flask-smorest / OpenAPI
        "API_TITLE": "Sovereign Cloud Broker",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.1.0",
        # Relative: the broker that serves the document (Swagger UI's requests and its
        # "Authorize" token request go there).
        "API_SPEC_OPTIONS": {"servers": [{"url": "/", "description": "This broker"}]},
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": "/docs/assets/",
    }
