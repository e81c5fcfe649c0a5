"""The demo consortium seeded by `make run`: one consortium, two agencies, three providers,
and a catalogue of published offers for the agencies to search.

Client secrets are stored hashed, so the demo credentials are also written (mode 0600) to
`instance/demo-credentials.json` on first seed, to be printed again on every start. Seeding is
idempotent: an existing database is completed, never wiped (a provider that exists by name, an
offer whose provider and SKU exist are left as they are).

The three fictional providers show what the catalogue's filters are about: a French operator
with SecNumCloud evidence, a Québec operator whose SOC 2 report has expired, and the EU
subsidiary of a US group (cheapest, but reached by the US CLOUD Act, so `sovereign_only`
leaves it out). Certificates are dated relative to the seeding, so the demo stays current.

The consortium entered that evidence, so it is verified; besides, a demo certification body
(a trusted issuer) has signed an EUCS statement for Hexagone Cloud, which verifies itself, and
Atlantic Compute Europe's operator claims SecNumCloud, which waits in the assessors' queue.

A new demo also gets a closed month (`broker.demo_history`): it is founded the day before last
month began, and last month is replayed through the services and jobs, ending in issued
invoices, a credit note, a voided invoice and its replacement.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.document import SIRENE
from broker.auth.identity import Caller
from broker.auth.secrets import verify_secret
from broker.config import load_config
from broker.db import Database
from broker.demo_history import founding_moment, seed_history
from broker.models import (
    AgencyPolicy,
    ApiClient,
    BillingProfile,
    Offer,
    Organization,
    OrganizationKind,
    Provider,
    Role,
    TrustedIssuer,
)
from broker.models.base import use_clock, utcnow
from broker.services import (
    billing_profiles,
    evidence,
    offers,
    organizations,
    policies,
    providers,
    trusted_issuers,
)
from broker.services.preconditions import IfMatch

# Each demo agency's policy: (currency, monthly budget, approval threshold). Orders above the
# threshold wait for the agency's approver; the budget caps what is committed per month.
DEMO_POLICIES: dict[str, tuple[str, str, str]] = {
    "Agence nationale des données de santé": ("EUR", "20000", "1000"),
    "Ville de Québec": ("CAD", "8000", "400"),
}

# How the demo agencies are invoiced: a French public body on Chorus Pro (its SIRET, service
# code and commitment number, invoices in French) and a Québec city (French too, no SIRET).
# Québec charges GST and QST on the same base: 5 % + 9.975 %, shown as one rate.
DEMO_BILLING: dict[str, dict[str, Any]] = {
    "Agence nationale des données de santé": {
        "legal_name": "Agence nationale des données de santé (établissement public)",
        "address": "9 rue Georges Pitard",
        "post_code": "75015",
        "city": "Paris",
        "country": "FR",
        "vat_rate": Decimal("20"),
        "legal_id": "18002002600019",
        "language": "fr",
        "buyer_reference": "DSI-CLOUD",
        "purchase_order_reference": "EJ-2026-000142",
        "requires_buyer_reference": True,
        "requires_purchase_order_reference": True,
    },
    "Ville de Québec": {
        "legal_name": "Ville de Québec",
        "address": "2, rue des Jardins",
        "post_code": "G1R 4S9",
        "city": "Québec",
        "country": "CA",
        "vat_rate": Decimal("14.975"),
        "language": "fr",
    },
}

DEMO_ORGANIZATIONS: list[tuple[str, OrganizationKind, list[list[Role]]]] = [
    (
        "Sovereign Cloud Consortium",
        OrganizationKind.CONSORTIUM,
        [[Role.ADMIN], [Role.FINANCE], [Role.ASSESSOR]],
    ),
    (
        "Agence nationale des données de santé",
        OrganizationKind.AGENCY,
        [[Role.BUYER], [Role.APPROVER]],
    ),
    ("Ville de Québec", OrganizationKind.AGENCY, [[Role.BUYER], [Role.APPROVER]]),
    ("Hexagone Cloud", OrganizationKind.PROVIDER, [[Role.PROVIDER]]),
    ("Nordet Nuagique", OrganizationKind.PROVIDER, [[Role.PROVIDER]]),
    ("Atlantic Compute Europe", OrganizationKind.PROVIDER, [[Role.PROVIDER]]),
]


# The seed acts as the consortium's administration.
SEED_CONSORTIUM = Caller(
    client_id="seed",
    organization_id=uuid.UUID(int=0),
    organization_kind=OrganizationKind.CONSORTIUM,
    roles=frozenset({Role.ADMIN}),
)


@dataclass(frozen=True)
class DemoCredential:
    organization: str
    organization_id: str
    kind: str
    roles: list[str]
    client_id: str
    client_secret: str


def seed_demo(
    db: Database, credentials_file: Path, config: Mapping[str, Any] | None = None
) -> list[DemoCredential]:
    """Create what is missing of the demo consortium and its catalogue, and give a new demo
    its closed month; return every demo credential.

    The closed month runs jobs on the simulated clouds, so it needs the configuration of the
    instance being seeded (where those clouds keep their machines): `config`, or the
    environment's (`load_config()`) when the credentials file lies in that instance's
    directory, as under `broker serve`. Otherwise (a credentials file elsewhere) the demo is
    seeded without history, created now."""
    now = utcnow()
    runtime = _runtime(credentials_file, config)
    founding: AbstractContextManager[None] = nullcontext()
    if runtime is not None and _is_new(db):
        founded = founding_moment(now)
        founding = use_clock(lambda: founded)
    with founding:
        credentials = _seed_consortium(db, credentials_file)
    if runtime is not None:
        seed_history(db, runtime, now)
    return credentials


def _runtime(credentials_file: Path, config: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The configuration the demo's history runs its jobs with, if it is known."""
    if config is not None:
        return config
    environment = load_config()
    if Path(environment["INSTANCE_PATH"]).resolve() != credentials_file.parent.resolve():
        return None
    return environment


def _is_new(db: Database) -> bool:
    """No demo consortium yet: the seed founds it."""
    with db.session(read_only=True) as session:
        consortium = DEMO_ORGANIZATIONS[0][0]
        return (
            session.scalar(select(Organization.id).where(Organization.name == consortium)) is None
        )


def _seed_consortium(db: Database, credentials_file: Path) -> list[DemoCredential]:
    """The organizations, their clients, policies and the catalogue: what is missing of them."""
    issued: list[DemoCredential] = []
    with db.transaction() as session:
        # Keep only remembered credentials that still work: the client exists in this
        # database, is not revoked, and its secret was not rotated since.
        remembered = _read(credentials_file)
        hashes = {
            client_id: secret_hash
            for client_id, secret_hash in session.execute(
                select(ApiClient.client_id, ApiClient.secret_hash).where(
                    ApiClient.client_id.in_([c.client_id for c in remembered]),
                    ApiClient.revoked_at.is_(None),
                )
            )
        }
        known = [
            c
            for c in remembered
            if c.client_id in hashes and verify_secret(c.client_secret, hashes[c.client_id])
        ]
        have = {(c.organization, tuple(c.roles)) for c in known}
        for name, kind, role_sets in DEMO_ORGANIZATIONS:
            organization = session.scalar(select(Organization).where(Organization.name == name))
            if organization is None:
                organization = organizations.create_organization(
                    session, None, name=name, kind=kind
                )
            for roles in role_sets:
                if (name, tuple(r.value for r in roles)) in have:
                    continue
                client = organizations.create_client(
                    session,
                    None,
                    organization.id,
                    name=f"demo {name} {'/'.join(roles)}",
                    roles=roles,
                )
                issued.append(
                    DemoCredential(
                        organization=name,
                        organization_id=str(organization.id),
                        kind=kind.value,
                        roles=[r.value for r in roles],
                        client_id=client.client.client_id,
                        client_secret=client.secret,
                    )
                )
        _seed_policies(session)
        _seed_catalogue(session, credentials_file.parent / "demo-issuer-key.json")
    credentials = known + issued
    if credentials != remembered:
        _write(credentials_file, credentials)
    return credentials


# --- the demo catalogue ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOffer:
    """One VM offer; prices not given here come from its provider's rate card."""

    sku: str
    name: str
    region: str
    vcpu: int
    ram_gib: float
    disk_gib: int
    gpu: int = 0
    instance_hour: str | None = None  # overrides the rate card (GPU machines)
    compliance: tuple[str, ...] | None = None  # None: every scheme the provider holds
    egress_tiers: tuple[tuple[str | None, str], ...] = ()  # graduated: (up_to GiB, price)


@dataclass(frozen=True)
class DemoStorage:
    """One storage offer: a block volume, or a bucket (a vault with `immutability_days`)."""

    sku: str
    name: str
    region: str
    kind: str  # volume | object_storage
    prices: dict[str, str]  # metric → unit price
    size_gib: int | None = None
    performance: str = "standard"
    iops: int | None = None
    encrypted: bool = True
    versioning: bool = False
    immutability_days: int | None = None


@dataclass(frozen=True)
class DemoProvider:
    name: str  # also the name of the provider organization operating it
    domain: str  # where its (fictional) evidence is published
    operator_country: str
    parent_country: str | None
    exposure: tuple[str, ...]
    regions: tuple[tuple[str, str, str, int], ...]  # (code, country, city, datacenter tier)
    # (scheme, level, valid from, valid until): days relative to the seeding
    evidence: tuple[tuple[str, str | None, int, int], ...]
    currency: str
    rates: dict[str, str]  # metric → unit price, for every metric
    offers: tuple[DemoOffer, ...]
    # Machine types its cloud sells that have no offer yet (the README's operator publishes one).
    not_offered: tuple[DemoOffer, ...] = ()
    storage: tuple[DemoStorage, ...] = ()


DEMO_PROVIDERS: tuple[DemoProvider, ...] = (
    DemoProvider(
        name="Hexagone Cloud",
        domain="trust.hexagone-cloud.example",
        operator_country="FR",
        parent_country=None,
        exposure=(),
        regions=(
            ("fr-par-1", "FR", "Paris", 3),
            ("fr-lyo-1", "FR", "Lyon", 3),
            ("fr-mrs-1", "FR", "Marseille", 4),
        ),
        evidence=(
            ("secnumcloud", "3.2", -400, 700),
            ("hds", "2.0", -250, 850),
            ("iso27001", "2022", -500, 600),
        ),
        currency="EUR",
        rates={
            "instance_hour": "0.004",
            "vcpu_hour": "0.0165",
            "ram_gib_hour": "0.0055",
            "storage_gib_month": "0.06",
            "egress_gib": "0.02",
        },
        offers=(
            DemoOffer("hc-std-s-par", "Standard S — Paris", "fr-par-1", 2, 4, 50),
            DemoOffer("hc-std-m-par", "Standard M — Paris", "fr-par-1", 4, 16, 100),
            DemoOffer("hc-std-l-par", "Standard L — Paris", "fr-par-1", 8, 32, 200),
            DemoOffer("hc-mem-xl-par", "Mémoire XL — Paris", "fr-par-1", 16, 128, 400),
            DemoOffer("hc-std-m-lyo", "Standard M — Lyon", "fr-lyo-1", 4, 16, 100),
            DemoOffer(
                "hc-dev-s-lyo",
                "Développement S — Lyon (hors SecNumCloud)",
                "fr-lyo-1",
                2,
                4,
                40,
                compliance=("iso27001",),
            ),
            DemoOffer("hc-std-l-mrs", "Standard L — Marseille", "fr-mrs-1", 8, 32, 200),
            DemoOffer(
                "hc-gpu-l40s-mrs",
                "GPU L40S — Marseille",
                "fr-mrs-1",
                16,
                96,
                800,
                gpu=1,
                instance_hour="1.95",
            ),
        ),
        not_offered=(DemoOffer("hc-std-xs-par", "Standard XS — Paris", "fr-par-1", 1, 2, 25),),
        storage=(
            DemoStorage(
                "hc-bloc-ssd-par",
                "Bloc SSD 100 Gio — Paris",
                "fr-par-1",
                "volume",
                {"storage_gib_month": "0.08"},
                size_gib=100,
            ),
            DemoStorage(
                "hc-bloc-nvme-par",
                "Bloc NVMe haute performance 500 Gio — Paris",
                "fr-par-1",
                "volume",
                {"storage_gib_month": "0.16"},
                size_gib=500,
                performance="high-iops",
                iops=20000,
            ),
            DemoStorage(
                "hc-objet-par",
                "Stockage objet — Paris",
                "fr-par-1",
                "object_storage",
                {"storage_gib_month": "0.02", "requests": "0.000004", "egress_gib": "0.01"},
                versioning=True,
            ),
        ),
    ),
    DemoProvider(
        name="Nordet Nuagique",
        domain="conformite.nordet-nuagique.example",
        operator_country="CA",
        parent_country=None,
        exposure=(),
        regions=(("ca-qc-1", "CA", "Montréal", 4), ("ca-qc-2", "CA", "Québec City", 3)),
        evidence=(
            ("cccs-medium", "Protected B", -300, 800),
            ("iso27001", "2022", -150, 950),
            ("soc2-type2", None, -420, -55),  # expired: shown, but matches no search
        ),
        currency="CAD",
        rates={
            "instance_hour": "0.005",
            "vcpu_hour": "0.0215",
            "ram_gib_hour": "0.0072",
            "storage_gib_month": "0.08",
            "egress_gib": "0.025",
        },
        offers=(
            DemoOffer("nn-s-mtl", "Boréal S — Montréal", "ca-qc-1", 2, 4, 50),
            DemoOffer("nn-m-mtl", "Boréal M — Montréal", "ca-qc-1", 4, 16, 100),
            DemoOffer("nn-l-mtl", "Boréal L — Montréal", "ca-qc-1", 8, 32, 250),
            DemoOffer("nn-mem-xl-mtl", "Boréal Mémoire XL — Montréal", "ca-qc-1", 16, 128, 500),
            DemoOffer(
                "nn-gpu-a100-mtl",
                "Boréal GPU A100 — Montréal",
                "ca-qc-1",
                24,
                192,
                1000,
                gpu=2,
                instance_hour="5.40",
            ),
            DemoOffer("nn-m-qc", "Boréal M — Québec", "ca-qc-2", 4, 16, 100),
            DemoOffer("nn-l-qc", "Boréal L — Québec", "ca-qc-2", 8, 32, 250),
        ),
        storage=(
            DemoStorage(
                "nn-bloc-ssd-mtl",
                "Boréal Bloc SSD 100 Gio — Montréal",
                "ca-qc-1",
                "volume",
                {"storage_gib_month": "0.11"},
                size_gib=100,
            ),
            # The vault: a city's records kept write-once for a year, in a Tier IV site.
            DemoStorage(
                "nn-coffre-mtl",
                "Boréal Coffre-fort 365 jours — Montréal",
                "ca-qc-1",
                "object_storage",
                {"storage_gib_month": "0.035", "requests": "0.000005", "egress_gib": "0.025"},
                versioning=True,
                immutability_days=365,
            ),
        ),
    ),
    DemoProvider(
        name="Atlantic Compute Europe",
        domain="compliance.atlantic-compute.example",
        operator_country="IE",
        parent_country="US",
        exposure=("US_CLOUD_ACT",),
        regions=(
            ("ie-dub-1", "IE", "Dublin", 3),
            ("de-fra-1", "DE", "Frankfurt", 4),
            ("nl-ams-1", "NL", "Amsterdam", 3),
        ),
        evidence=(
            ("iso27001", "2022", -350, 750),
            ("bsi-c5", "Type 2", -200, 530),
            ("eucs", "substantial", -90, 1000),
        ),
        currency="EUR",
        rates={
            "instance_hour": "0.003",
            "vcpu_hour": "0.0118",
            "ram_gib_hour": "0.0039",
            "storage_gib_month": "0.045",
            "egress_gib": "0.0085",
        },
        offers=(
            DemoOffer("ace-gp-s-dub", "General Purpose S — Dublin", "ie-dub-1", 2, 4, 50),
            DemoOffer(
                "ace-gp-m-dub",
                "General Purpose M — Dublin",
                "ie-dub-1",
                4,
                16,
                100,
                egress_tiers=(("100", "0"), ("10240", "0.0085"), (None, "0.006")),
            ),
            DemoOffer("ace-gp-m-fra", "General Purpose M — Frankfurt", "de-fra-1", 4, 16, 100),
            DemoOffer("ace-gp-l-fra", "General Purpose L — Frankfurt", "de-fra-1", 8, 32, 200),
            DemoOffer("ace-mem-xl-fra", "Memory XL — Frankfurt", "de-fra-1", 16, 128, 400),
            DemoOffer(
                "ace-gpu-h100-fra",
                "GPU H100 — Frankfurt",
                "de-fra-1",
                32,
                256,
                1600,
                gpu=1,
                instance_hour="2.85",
            ),
            DemoOffer("ace-gp-s-ams", "General Purpose S — Amsterdam", "nl-ams-1", 2, 4, 50),
            DemoOffer("ace-gp-xl-ams", "General Purpose XL — Amsterdam", "nl-ams-1", 16, 64, 400),
            DemoOffer("ace-mem-2xl-ams", "Memory 2XL — Amsterdam", "nl-ams-1", 32, 256, 800),
        ),
    ),
)


def provider_payload(
    demo: DemoProvider, organization_id: uuid.UUID, now: datetime
) -> dict[str, Any]:
    """The provider as `POST /v1/providers` would hand it to the service."""
    return {
        "name": demo.name,
        "organization_id": organization_id,
        "adapter": "simulated",
        # The simulated cloud sells what the catalogue lists, so an offer sync of a demo
        # provider finds everything in place; creates take a few seconds, as on a real cloud.
        "adapter_config": {
            "seed": sum(demo.name.encode()),
            "provision_delay_seconds": 5,
            "flavors": [
                {
                    "sku": offer.sku,
                    "name": offer.name,
                    "vcpu": offer.vcpu,
                    "ram_gib": str(offer.ram_gib),
                    "disk_gib": offer.disk_gib,
                    "gpu": offer.gpu,
                    "region": offer.region,
                }
                for offer in demo.offers + demo.not_offered
            ],
            "volume_types": [
                {"sku": item.sku, "name": item.name, "region": item.region}
                for item in demo.storage
                if item.kind == "volume"
            ],
        },
        "regions": [
            {"code": code, "country": country, "city": city, "datacenter_tier": tier}
            for code, country, city, tier in demo.regions
        ],
        "compliance": [
            {
                "scheme": scheme,
                "level": level,
                "valid_from": now + timedelta(days=start),
                "valid_until": now + timedelta(days=end),
                "evidence_url": f"https://{demo.domain}/evidence/{scheme}.pdf",
            }
            for scheme, level, start, end in demo.evidence
        ],
        "jurisdiction": {
            "operator_country": demo.operator_country,
            "parent_country": demo.parent_country,
            "extraterritorial_exposure": list(demo.exposure),
        },
    }


def offer_payload(demo: DemoProvider, offer: DemoOffer, provider_id: uuid.UUID) -> dict[str, Any]:
    """The offer as `POST /v1/offers` would hand it to the service."""
    rates = {
        **demo.rates,
        **({"instance_hour": offer.instance_hour} if offer.instance_hour else {}),
    }
    prices: list[dict[str, Any]] = []
    for metric, unit_price in rates.items():
        price: dict[str, Any] = {
            "metric": metric,
            "unit_price": unit_price,
            "currency": demo.currency,
        }
        if metric == "egress_gib" and offer.egress_tiers:
            price["tiers"] = [{"up_to": up_to, "unit_price": p} for up_to, p in offer.egress_tiers]
        prices.append(price)
    data: dict[str, Any] = {
        "provider_id": provider_id,
        "sku": offer.sku,
        "name": offer.name,
        "kind": "vm",
        "region": offer.region,
        "specs": {
            "vcpu": offer.vcpu,
            "ram_gib": offer.ram_gib,
            "disk_gib": offer.disk_gib,
            "gpu": offer.gpu,
        },
        "prices": prices,
    }
    if offer.compliance is not None:
        data["compliance"] = list(offer.compliance)
    return data


def storage_payload(
    demo: DemoProvider, item: DemoStorage, provider_id: uuid.UUID
) -> dict[str, Any]:
    """A storage offer as `POST /v1/offers` would hand it to the service."""
    specs: dict[str, Any] = (
        {
            "size_gib": item.size_gib,
            "performance": item.performance,
            "iops": item.iops,
            "encrypted": item.encrypted,
        }
        if item.kind == "volume"
        else {
            "encrypted": item.encrypted,
            "versioning": item.versioning,
            "immutability_days": item.immutability_days,
        }
    )
    return {
        "provider_id": provider_id,
        "sku": item.sku,
        "name": item.name,
        "kind": item.kind,
        "region": item.region,
        "specs": specs,
        "prices": [
            {"metric": metric, "unit_price": price, "currency": demo.currency}
            for metric, price in item.prices.items()
        ],
    }


def _seed_policies(session: Session) -> None:
    """Give each demo agency its billing profile and policy, unless it has them already."""
    consortium = SEED_CONSORTIUM
    for name, profile in DEMO_BILLING.items():
        agency = session.scalars(select(Organization).where(Organization.name == name)).one()
        if session.get(BillingProfile, agency.id) is None:
            billing_profiles.put_profile(
                session,
                consortium,
                agency.id,
                {"legal_id_scheme": SIRENE if "legal_id" in profile else None, **profile},
                if_match=IfMatch.of(0),
                config={},
            )
    for name, (currency, budget, threshold) in DEMO_POLICIES.items():
        agency = session.scalars(select(Organization).where(Organization.name == name)).one()
        if session.get(AgencyPolicy, agency.id) is not None:
            continue
        policies.put_policy(
            session,
            consortium,
            agency.id,
            if_match=IfMatch.of(0),
            currency=currency,
            monthly_budget=Decimal(budget),
            approval_threshold=Decimal(threshold),
            sovereignty={},
        )


def _operator(provider: Provider) -> Caller:
    return Caller(
        client_id="seed",
        organization_id=provider.organization_id,
        organization_kind=OrganizationKind.PROVIDER,
        roles=frozenset({Role.PROVIDER}),
    )


def _seed_catalogue(session: Session, issuer_key_file: Path) -> None:
    """Create the demo providers and publish their offers, skipping what exists already.

    The providers' regions, jurisdictions and certificates are entered by the consortium, so
    they are verified; besides, the demo certification body signs one statement (verified by
    its signature) and one operator claims a certificate nobody has vouched for yet (pending,
    in the assessors' queue)."""
    now = utcnow()
    for demo in DEMO_PROVIDERS:
        provider = session.scalar(select(Provider).where(Provider.name == demo.name))
        if provider is None:
            # The operating organization was created above, if it was missing.
            operator = session.scalars(
                select(Organization).where(Organization.name == demo.name)
            ).one()
            provider = providers.create_provider(
                session, None, provider_payload(demo, operator.id, now), now
            )
            _seed_claims(session, provider, issuer_key_file, now)
        # Offers are created and published by the operator, as through the API.
        caller = _operator(provider)
        existing = set(session.scalars(select(Offer.sku).where(Offer.provider_id == provider.id)))
        payloads = [offer_payload(demo, offer, provider.id) for offer in demo.offers]
        payloads += [storage_payload(demo, item, provider.id) for item in demo.storage]
        for payload in payloads:
            if payload["sku"] in existing:
                continue
            draft = offers.create_offer(session, caller, payload)
            offers.publish_offer(session, caller, draft.id)


# The demo certification body: its statements verify themselves (see broker/statements.py).
DEMO_ISSUER = ("Organisme de certification de démonstration", "https://certification.demo.example")
# (provider, scheme, level, days valid): signed by the demo issuer.
DEMO_STATEMENT = ("Hexagone Cloud", "eucs", "high", 365)
# (provider, scheme, level): claimed by the provider's operator, awaiting an assessor.
DEMO_PENDING_CLAIM = ("Atlantic Compute Europe", "secnumcloud", "3.2")


def _demo_issuer(session: Session, key_file: Path) -> tuple[TrustedIssuer, ECKey]:
    """The demo certification body and its signing key (kept, mode 0600, beside the demo
    credentials so that people can sign statements of their own to try)."""
    if key_file.exists():
        key = ECKey.import_key(json.loads(key_file.read_text()))
    else:
        key = ECKey.generate_key("P-256", parameters={"kid": "demo-1"})
        key_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(key.as_dict(private=True), handle, indent=2)
    name, issuer = DEMO_ISSUER
    row = session.scalar(select(TrustedIssuer).where(TrustedIssuer.issuer == issuer))
    if row is None:
        row = trusted_issuers.create(
            session,
            SEED_CONSORTIUM,
            {"name": name, "issuer": issuer, "jwks": {"keys": [key.as_dict(private=False)]}},
        )
    return row, key


def sign_statement(key: ECKey, issuer: str, claims: dict[str, Any]) -> str:
    """A compact JWS of `claims` by `issuer`, as a certification body would sign it."""
    header = {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    return jws.serialize_compact(
        header, json.dumps({"iss": issuer, **claims}), key, algorithms=["ES256"]
    )


def _seed_claims(session: Session, provider: Provider, key_file: Path, now: datetime) -> None:
    if provider.name == DEMO_STATEMENT[0]:
        issuer, key = _demo_issuer(session, key_file)
        _, scheme, level, days = DEMO_STATEMENT
        statement = sign_statement(
            key,
            issuer.issuer,
            {
                "sub": str(provider.id),
                "scheme": scheme,
                "level": level,
                "nbf": int(now.timestamp()) - 86400,
                "exp": int((now + timedelta(days=days)).timestamp()),
            },
        )
        evidence.submit(
            session,
            _operator(provider),
            provider.id,
            {"kind": "certification", "statement": statement},
            now,
        )
    if provider.name == DEMO_PENDING_CLAIM[0]:
        _, scheme, level = DEMO_PENDING_CLAIM
        evidence.submit(
            session,
            _operator(provider),
            provider.id,
            {
                "kind": "certification",
                "scheme": scheme,
                "level": level,
                "valid_from": now - timedelta(days=10),
                "valid_until": now + timedelta(days=1000),
                "issuer": "ANSSI",
                "evidence_url": "https://compliance.atlantic-compute.example/secnumcloud.pdf",
                "document_sha256": hashlib.sha256(b"demo secnumcloud claim").hexdigest(),
            },
            now,
        )


def _read(path: Path) -> list[DemoCredential]:
    if not path.exists():
        return []
    return [DemoCredential(**item) for item in json.loads(path.read_text())]


def _write(path: Path, credentials: list[DemoCredential]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump([asdict(c) for c in credentials], handle, indent=2)
    temporary.replace(path)
