"""Identity providers: the OpenID Connect issuers people sign in with (admins keep the list).

Each has the broker's client registration there (`client_id`, and a client secret kept only
encrypted with the credential keyring, bound to the row's id like provider credentials, so a
ciphertext copied to another row does not decrypt there), the scopes asked for, and how a
signed-in person's organization is found: by the claim `organization_claim` (say `siret`)
matched against the organization identifiers of that scheme, and/or by the e-mail's domain
(`match_email_domain`), see `broker.services.members.organization_for`.

The secret goes in through the API and out only to the sign-in flow (`client_secret`): never
in a response, the audit log (which says only whether one is set, and when it is replaced)
or a log line.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth.identity import Caller
from broker.errors import Conflict, NotFound, ValidationFailed
from broker.models import IdentityProvider
from broker.services import audit
from broker.services.credentials import CredentialsUnreadable, Keyring
from broker.services.pagination import Page, paginate
from broker.services.preconditions import IfMatch
from providers.http import HttpPolicy, UnsafeEndpoint

DEFAULT_SCOPES = "openid email profile"
# Fields an admin may set besides the secret, in the order they are applied.
_SETTINGS = (
    "name",
    "issuer",
    "client_id",
    "scopes",
    "organization_claim",
    "match_email_domain",
    "enabled",
)
_AUDIT_EXCLUDE = frozenset({"client_secret_ciphertext"})
# The one field of the encrypted document.
_SECRET_FIELD = "client_secret"


class ClientSecretMissing(Exception):
    """The identity provider has no client secret stored (the sign-in flow cannot use it)."""


def _check_issuer(issuer: str, http: HttpPolicy) -> None:
    """An issuer is an https URL of a public host (http and private hosts only where the
    configuration admits them, as for provider endpoints), without query or fragment
    (OpenID Connect Discovery 1.0, §2): the broker fetches its discovery document."""
    try:
        http.check_url(issuer)
        parts = urlsplit(issuer)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except UnsafeEndpoint as error:
        raise ValidationFailed(errors={"issuer": [str(error)]}) from None
    except ValueError:
        raise ValidationFailed(
            errors={"issuer": ["Not a valid URL: expected one such as `https://idp.example.org`."]}
        ) from None
    if parts.query or parts.fragment or issuer.endswith(("?", "#")):
        raise ValidationFailed(
            errors={"issuer": ["An issuer has no query (`?…`) nor fragment (`#…`)."]}
        )


def _check_unique(session: Session, data: dict[str, Any], exclude: uuid.UUID | None) -> None:
    """409 when another identity provider has the name or the issuer already."""
    for field in ("name", "issuer"):
        if field not in data:
            continue
        column = getattr(IdentityProvider, field)
        statement = select(IdentityProvider.id).where(column == data[field])
        if exclude is not None:
            statement = statement.where(IdentityProvider.id != exclude)
        if session.scalar(statement) is not None:
            raise Conflict(
                f"Another identity provider has the {field} {data[field]!r} already.",
                code=f"identity_provider_{field}_taken",
            )


def _check(
    session: Session, data: dict[str, Any], http: HttpPolicy, exclude: uuid.UUID | None = None
) -> None:
    if "issuer" in data:
        _check_issuer(data["issuer"], http)
    _check_unique(session, data, exclude)


def _snapshot(row: IdentityProvider) -> dict[str, Any]:
    """The row as the audit log keeps it: whether a secret is set, never the secret."""
    return {
        **audit.snapshot(row, exclude=_AUDIT_EXCLUDE),
        "client_secret_set": row.client_secret_ciphertext is not None,
    }


def _audit(
    session: Session,
    caller: Caller | None,
    action: str,
    row: IdentityProvider,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        caller,
        f"identity_provider.{action}",
        "identity_provider",
        row.id,
        organization_id=caller.organization_id if caller else None,
        before=before,
        after=after,
    )


def _store_secret(row: IdentityProvider, secret: str, keyring: Keyring) -> None:
    row.client_secret_ciphertext = keyring.encrypt(row.id, {_SECRET_FIELD: secret})


def create(
    session: Session,
    caller: Caller | None,
    data: dict[str, Any],
    *,
    keyring: Keyring,
    http: HttpPolicy,
) -> IdentityProvider:
    """Trust an OpenID Connect provider for people's sign-in; its client secret is stored
    encrypted and never shown again. `caller` None: the broker itself (the demo's seed)."""
    _check(session, data, http)
    row = IdentityProvider(id=uuid.uuid4(), version=1)
    for field in _SETTINGS:
        if field in data:
            setattr(row, field, data[field])
    _store_secret(row, data["client_secret"], keyring)
    session.add(row)
    session.flush()
    _audit(session, caller, "created", row, after=_snapshot(row))
    return row


def get(session: Session, provider_id: uuid.UUID) -> IdentityProvider:
    row = session.get(IdentityProvider, provider_id)
    if row is None:
        raise NotFound("No such identity provider.")
    return row


def list_identity_providers(
    session: Session, *, limit: int, cursor: str | None
) -> Page[IdentityProvider]:
    return paginate(
        session,
        select(IdentityProvider),
        [IdentityProvider.created_at, IdentityProvider.id],
        limit=limit,
        cursor=cursor,
    )


def update(
    session: Session,
    caller: Caller,
    provider_id: uuid.UUID,
    *,
    if_match: IfMatch,
    changes: dict[str, Any],
    keyring: Keyring,
    http: HttpPolicy,
) -> IdentityProvider:
    """Change an identity provider's settings, or replace its client secret, if nobody changed
    it since the caller read it (`If-Match`)."""
    # Locked until the end of the transaction: two writers holding the same ETag take turns,
    # and the second finds the version moved on (412).
    row = session.get(IdentityProvider, provider_id, with_for_update=True)
    if row is None:
        raise NotFound("No such identity provider.")
    if_match.check(row.version, "identity provider")
    _check(session, changes, http, exclude=row.id)
    before = _snapshot(row)
    for field in _SETTINGS:
        if field in changes:
            setattr(row, field, changes[field])
    if "client_secret" in changes:
        _store_secret(row, changes["client_secret"], keyring)
    elif _snapshot(row) == before:
        return row  # nothing changed: same version, nothing to audit
    row.version += 1
    session.flush()
    after = {**_snapshot(row), "client_secret_replaced": "client_secret" in changes}
    _audit(session, caller, "updated", row, before=before, after=after)
    return row


def client_secret(session: Session, provider: IdentityProvider, keyring: Keyring) -> str:
    """The decrypted client secret, for the sign-in flow only (the token request).

    Raises `ClientSecretMissing` when none is stored, and `CredentialsUnreadable` when the
    configured keys cannot decrypt it or it was encrypted for another row."""
    ciphertext = provider.client_secret_ciphertext
    if ciphertext is None:
        raise ClientSecretMissing(f"The identity provider {provider.name!r} has no client secret.")
    try:
        return keyring.decrypt(provider.id, ciphertext)[_SECRET_FIELD]
    except CredentialsUnreadable:
        raise CredentialsUnreadable(
            f"The client secret of the identity provider {provider.name!r} cannot be "
            "decrypted (a key no longer configured, or a ciphertext of another row): set it "
            "again with PATCH /v1/identity-providers/{id}."
        ) from None


def rotate_secrets(session: Session, keyring: Keyring) -> int:
    """Re-encrypt every identity provider's client secret under the first key (what
    `broker keys rotate` does for provider credentials); the count of rows."""
    rows = session.scalars(
        select(IdentityProvider)
        .where(IdentityProvider.client_secret_ciphertext.is_not(None))
        .order_by(IdentityProvider.id)
        .with_for_update()
    ).all()
    for row in rows:
        assert row.client_secret_ciphertext is not None
        row.client_secret_ciphertext = keyring.rotate(row.id, row.client_secret_ciphertext)
    return len(rows)
