"""The demo's people and its identity provider (`make run` only).

The embedded demo serves its own OpenID provider at `/demo-idp` (broker/demo_idp), and the
broker trusts it like any identity provider: an `IdentityProvider` row whose issuer is that
address, its client secret stored encrypted. Its people are the demo organizations' staff —
a buyer and an approver of each agency, an operator of each provider, a finance person, an
assessor and an admin of the consortium — registered as persons with their memberships, so
that their first sign-in finds them by e-mail with their roles. Their passwords, and the
client secret the provider knows the broker by, are written once (mode 0600) to
`instance/demo-people.json`; every worker mounts the provider from that file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.models import IdentityProvider, Membership, Organization, OrganizationIdentifier, User
from broker.seed import SEED_CONSORTIUM
from broker.services import identity_providers, members
from broker.services.adapters import ProviderRuntime
from broker.services.invitations import email_key

log = logging.getLogger(__name__)

# The demo consortium as its invoices name it (a production broker sets its own: the seller's
# identity is required configuration).
DEMO_SELLER_ENV = {
    "BROKER_SELLER_NAME": "Consortium du cloud souverain (démonstration)",
    "BROKER_SELLER_LEGAL_ID": "12345678900017",
    "BROKER_SELLER_VAT_ID": "FR32123456789",
    "BROKER_SELLER_ADDRESS": "12 rue de l'Arsenal",
    "BROKER_SELLER_POST_CODE": "75004",
    "BROKER_SELLER_CITY": "Paris",
    "BROKER_SELLER_COUNTRY": "FR",
}

CLIENT_ID = "broker-console"
PROVIDER_NAME = "Démo (fournisseur d'identité de démonstration)"

# (organization, e-mail domain, siret or None)
DEMO_DOMAINS: tuple[tuple[str, str, str | None], ...] = (
    ("Sovereign Cloud Consortium", "consortium.example", None),
    ("Agence nationale des données de santé", "ands.example.fr", "18002002600019"),
    ("Ville de Québec", "ville-quebec.example", None),
    ("Hexagone Cloud", "hexagone-cloud.example", None),
    ("Nordet Nuagique", "nordet.example", None),
    ("Atlantic Compute Europe", "atlantic-compute.example", None),
)

# (e-mail local part, given name, usual name, organization, roles)
DEMO_PEOPLE: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("admin", "Alice", "Martin", "Sovereign Cloud Consortium", ("admin",)),
    ("finance", "Bruno", "Lefèvre", "Sovereign Cloud Consortium", ("finance",)),
    ("evaluatrice", "Chloé", "Durand", "Sovereign Cloud Consortium", ("assessor",)),
    ("acheteur", "David", "Moreau", "Agence nationale des données de santé", ("buyer",)),
    ("approbatrice", "Émilie", "Bernard", "Agence nationale des données de santé", ("approver",)),
    ("acheteuse", "Fanny", "Tremblay", "Ville de Québec", ("buyer",)),
    ("approbateur", "Gabriel", "Gagnon", "Ville de Québec", ("approver",)),
    ("exploitation", "Hugo", "Petit", "Hexagone Cloud", ("provider",)),
    ("exploitation", "Inès", "Roy", "Nordet Nuagique", ("provider",)),
    ("operations", "James", "Walsh", "Atlantic Compute Europe", ("provider",)),
)


@dataclass(frozen=True)
class DemoPersonCredential:
    email: str
    password: str
    organization: str
    roles: list[str]
    given_name: str
    usual_name: str
    siret: str | None


def people_file(config: dict[str, Any]) -> Path:
    return Path(config["INSTANCE_PATH"]) / "demo-people.json"


def issuer_of(config: dict[str, Any]) -> str:
    return f"{str(config['OAUTH_ISSUER']).rstrip('/')}/demo-idp"


def seed_people(db: Database, config: dict[str, Any]) -> list[DemoPersonCredential]:
    """Register the demo's identity provider, its organizations' e-mail domains (and siret),
    and its people with their roles; what is there already is kept. Returns the people with
    their passwords."""
    path = people_file(config)
    saved = json.loads(path.read_text()) if path.exists() else {}
    client_secret = saved.get("client_secret") or secrets.token_urlsafe(32)
    passwords = {p["email"]: p["password"] for p in saved.get("people", [])}
    runtime = ProviderRuntime.from_config(config)
    issuer = issuer_of(config)
    people: list[DemoPersonCredential] = []
    with db.transaction() as session:
        by_name = {o.name: o for o in session.scalars(select(Organization))}
        provider = session.scalar(
            select(IdentityProvider).where(IdentityProvider.client_id == CLIENT_ID)
        )
        if provider is None:
            identity_providers.create(
                session,
                SEED_CONSORTIUM,
                {
                    "name": PROVIDER_NAME,
                    "issuer": issuer,
                    "client_id": CLIENT_ID,
                    "client_secret": client_secret,
                    "scopes": "openid email profile siret",
                    "organization_claim": "siret",
                    "match_email_domain": True,
                    "enabled": True,
                },
                keyring=runtime.keyring,
                http=runtime.http.__class__(timeout=runtime.http.timeout, allow_private=True),
            )
        elif provider.issuer != issuer:  # served on another port than last time
            provider.issuer = issuer
        taken = {(i.scheme, i.value) for i in session.scalars(select(OrganizationIdentifier))}
        for name, domain, siret in DEMO_DOMAINS:
            organization = by_name.get(name)
            if organization is None:
                continue
            for scheme, value in (("email_domain", domain), ("siret", siret)):
                if value and (scheme, value) not in taken:
                    members.add_identifier(
                        session,
                        None,
                        organization.id,
                        scheme=scheme,
                        value=value,
                    )
        for local, given, usual, name, roles in DEMO_PEOPLE:
            organization = by_name.get(name)
            if organization is None:
                continue
            domain = next(d for n, d, _ in DEMO_DOMAINS if n == name)
            siret = next(s for n, _, s in DEMO_DOMAINS if n == name)
            email = f"{local}@{domain}"
            user = session.scalar(select(User).where(User.email_key == email_key(email)))
            if user is None:
                user = User(
                    id=uuid.uuid4(),
                    email=email,
                    email_key=email_key(email),
                    display_name=f"{given} {usual}",
                    language="fr",
                )
                session.add(user)
                session.add(
                    Membership(user_id=user.id, organization_id=organization.id, roles=list(roles))
                )
            password = passwords.get(email) or secrets.token_urlsafe(12)
            people.append(
                DemoPersonCredential(email, password, name, list(roles), given, usual, siret)
            )
    _write(path, {"client_secret": client_secret, "people": [p.__dict__ for p in people]})
    return people


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(document, handle, indent=2, ensure_ascii=False)


def mount_demo_idp(app: Flask) -> None:
    """Serve the demo's OpenID provider at `/demo-idp`, with the people `seed_people` wrote."""
    from broker.demo_idp import DemoIdpSettings, DemoPerson, create_blueprint
    from broker.models.base import utcnow

    path = people_file(app.config)
    if not path.exists():
        log.warning("demo identity provider not mounted: %s is missing (seed the demo)", path)
        return
    saved = json.loads(path.read_text())
    base = str(app.config["OAUTH_ISSUER"]).rstrip("/")
    settings = DemoIdpSettings(
        issuer=issuer_of(app.config),
        state_dir=Path(app.config["INSTANCE_PATH"]) / "demo-idp",
        clients={CLIENT_ID: (saved["client_secret"], [f"{base}/auth/callback"])},
        people=[
            DemoPerson(p["email"], p["password"], p["given_name"], p["usual_name"], p["siret"])
            for p in saved["people"]
        ],
        post_logout_redirect_uris={CLIENT_ID: [f"{base}/auth/signed-out"]},
        now=utcnow,
    )
    app.register_blueprint(create_blueprint(settings))
