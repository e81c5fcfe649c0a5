"""The demo consortium seeded by `make run`: one consortium, two agencies, three providers.

Client secrets are stored hashed, so the demo credentials are also written (mode 0600) to
`instance/demo-credentials.json` on first seed, to be printed again on every start. Seeding is
idempotent: an existing database is completed, never wiped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import select

from broker.db import Database
from broker.models import ApiClient, Organization, OrganizationKind, Role
from broker.services import organizations

DEMO_ORGANIZATIONS: list[tuple[str, OrganizationKind, list[list[Role]]]] = [
    ("Sovereign Cloud Consortium", OrganizationKind.CONSORTIUM, [[Role.ADMIN], [Role.FINANCE]]),
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


@dataclass(frozen=True)
class DemoCredential:
    organization: str
    organization_id: str
    kind: str
    roles: list[str]
    client_id: str
    client_secret: str


def seed_demo(db: Database, credentials_file: Path) -> list[DemoCredential]:
    """Create what is missing of the demo consortium and return every demo credential."""
    issued: list[DemoCredential] = []
    with db.transaction() as session:
        # Keep only remembered credentials whose client still exists in this database.
        remembered = _read(credentials_file)
        live = set(
            session.scalars(
                select(ApiClient.client_id).where(
                    ApiClient.client_id.in_([c.client_id for c in remembered]),
                    ApiClient.revoked_at.is_(None),
                )
            )
        )
        known = [c for c in remembered if c.client_id in live]
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
    credentials = known + issued
    if credentials != remembered:
        _write(credentials_file, credentials)
    return credentials


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
