"""Building blocks for catalogue tests: providers and offers made through the HTTP API.

Plain functions (not fixtures) so that any test module can combine them with the `client`,
`admin` and `make_user` fixtures of `tests/conftest.py`:

- `make_provider(client, admin, make_user)` creates an organization of kind provider
  (`POST /v1/organizations` as admin), an operator client of it (`make_user`) and a provider
  (`POST /v1/providers` as admin) with two regions, compliance evidence and a jurisdiction;
- `offer_body(provider_id)` is a valid `POST /v1/offers` body whose `monthly_price` is
  58.94 EUR (`OFFER_MONTHLY_PRICE`, computed by hand below);
- `create_offer` / `publish_offer` / `retire_offer` / `published_offer` drive an offer's
  lifecycle as its operator and check the status they expect.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask.testing import FlaskClient

from broker.models import Evidence, EvidenceKind, EvidenceState
from tests.conftest import ApiUser

# Evidence windows: one that covers "now" for decades, one long expired.
VALID_FROM = "2020-01-01T00:00:00Z"
VALID_UNTIL = "2099-01-01T00:00:00Z"
EXPIRED_FROM = "2015-01-01T00:00:00Z"
EXPIRED_UNTIL = "2019-01-01T00:00:00Z"

# 730 hours of 2 vCPU, 4 GiB RAM, 50 GiB disk at the prices of `offer_body`:
#   instance_hour      0.05  × 730           = 36.50
#   vcpu_hour          0.01  × 2 × 730       = 14.60
#   ram_gib_hour       0.002 × 4 × 730       =  5.84
#   storage_gib_month  0.04  × 50 (1 month)  =  2.00
#                                      total = 58.94
OFFER_MONTHLY_PRICE = "58.94"


def default_regions() -> list[dict[str, Any]]:
    return [
        {"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3},
        {"code": "fr-lyo-1", "country": "FR", "city": "Lyon", "datacenter_tier": 4},
    ]


def default_compliance() -> list[dict[str, Any]]:
    return [
        {
            "scheme": "secnumcloud",
            "level": "3.2",
            "valid_from": VALID_FROM,
            "valid_until": VALID_UNTIL,
            "evidence_url": "https://cyber.gouv.fr/evidence/secnumcloud-42.pdf",
        },
        {
            "scheme": "hds",
            "level": None,
            "valid_from": VALID_FROM,
            "valid_until": VALID_UNTIL,
            "evidence_url": "https://esante.gouv.fr/evidence/hds-42.pdf",
        },
    ]


def default_jurisdiction() -> dict[str, Any]:
    return {"operator_country": "FR", "parent_country": "FR", "extraterritorial_exposure": []}


def provider_body(
    organization_id: str, name: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """A valid `POST /v1/providers` body; `overrides` replace top-level fields."""
    body: dict[str, Any] = {
        "name": name or f"Provider {uuid.uuid4().hex[:8]}",
        "organization_id": organization_id,
        "adapter": "openstack",
        "adapter_config": {"auth_url": "https://keystone.example.fr/v3", "region": "fr-par"},
        "regions": default_regions(),
        "compliance": default_compliance(),
        "jurisdiction": default_jurisdiction(),
    }
    body.update(overrides)
    return body


def create_provider_organization(
    client: FlaskClient, admin: ApiUser, name: str | None = None
) -> str:
    """`POST /v1/organizations` (kind provider) as admin; returns the organization id."""
    response = client.post(
        "/v1/organizations",
        json={"name": name or f"Provider org {uuid.uuid4().hex[:8]}", "kind": "provider"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return str(response.json["id"])


@dataclass
class ProviderSetup:
    """A provider as created through the API, with an operator client of its organization."""

    provider: dict[str, Any]
    etag: str
    operator: ApiUser
    organization_id: str

    @property
    def id(self) -> str:
        return str(self.provider["id"])


def make_provider(
    client: FlaskClient,
    admin: ApiUser,
    make_user: Callable[..., ApiUser],
    *,
    name: str | None = None,
    **overrides: Any,
) -> ProviderSetup:
    """A provider organization, an operator (role provider) of it and its provider."""
    organization_id = create_provider_organization(client, admin)
    operator = make_user("provider", ["provider"], organization_id=organization_id)
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, name=name, **overrides),
        headers=admin.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return ProviderSetup(dict(response.json), response.headers["ETag"], operator, organization_id)


def price(metric: str, unit_price: str, currency: str = "EUR", **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "unit_price": unit_price, "currency": currency, **extra}


def default_prices() -> list[dict[str, Any]]:
    return [
        price("instance_hour", "0.05"),
        price("vcpu_hour", "0.01"),
        price("ram_gib_hour", "0.002"),
        price("storage_gib_month", "0.04"),
    ]


def offer_body(provider_id: str, sku: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid `POST /v1/offers` body (monthly price `OFFER_MONTHLY_PRICE`)."""
    body: dict[str, Any] = {
        "provider_id": provider_id,
        "sku": sku or f"vm-{uuid.uuid4().hex[:8]}",
        "name": "General purpose 2 vCPU / 4 GiB",
        "kind": "vm",
        "region": "fr-par-1",
        "specs": {"vcpu": 2, "ram_gib": 4, "disk_gib": 50},
        "prices": default_prices(),
    }
    body.update(overrides)
    return body


def create_offer(
    client: FlaskClient, operator: ApiUser, provider_id: str, **overrides: Any
) -> tuple[dict[str, Any], str]:
    """`POST /v1/offers` as `operator` (expects 201); returns the body and its ETag."""
    response = client.post(
        "/v1/offers", json=offer_body(provider_id, **overrides), headers=operator.headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    return dict(response.json), response.headers["ETag"]


def publish_offer(
    client: FlaskClient, operator: ApiUser, offer_id: str
) -> tuple[dict[str, Any], str]:
    response = client.post(f"/v1/offers/{offer_id}/publish", headers=operator.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json), response.headers["ETag"]


def retire_offer(
    client: FlaskClient, operator: ApiUser, offer_id: str
) -> tuple[dict[str, Any], str]:
    response = client.post(f"/v1/offers/{offer_id}/retire", headers=operator.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.json), response.headers["ETag"]


def published_offer(
    client: FlaskClient, operator: ApiUser, provider_id: str, **overrides: Any
) -> tuple[dict[str, Any], str]:
    """An offer created and published at once; returns the published body and its ETag."""
    offer, _ = create_offer(client, operator, provider_id, **overrides)
    return publish_offer(client, operator, str(offer["id"]))


def vouched(kind: str, at: datetime, **facts: Any) -> Evidence:
    """Evidence the consortium entered, for tests that store providers directly."""
    return Evidence(
        id=uuid.uuid4(),
        kind=EvidenceKind(kind),
        state=EvidenceState.VERIFIED,
        submitted_by="consortium",
        submitted_at=at,
        decided_by="consortium",
        decided_at=at,
        **facts,
    )


def vouched_provider_evidence(
    at: datetime,
    *,
    certifications: list[tuple[str, str | None, datetime, datetime, str | None]],
    jurisdiction: tuple[str, str | None, list[str]],
    regions: list[dict[str, Any]],
) -> list[Evidence]:
    """A provider's evidence as the consortium would have entered it: certifications
    `(scheme, level, valid_from, valid_until, evidence_url)`, its jurisdiction
    `(operator_country, parent_country, exposure)` and its regions."""
    operator_country, parent_country, exposure = jurisdiction
    return [
        *(
            vouched(
                "certification",
                at,
                scheme=scheme,
                level=level,
                valid_from=start,
                valid_until=end,
                evidence_url=url,
            )
            for scheme, level, start, end, url in certifications
        ),
        vouched(
            "jurisdiction",
            at,
            operator_country=operator_country,
            parent_country=parent_country,
            extraterritorial_exposure=sorted(exposure),
        ),
        *(
            vouched(
                "region",
                at,
                region_code=region["code"],
                country=region["country"],
                city=region.get("city"),
                datacenter_tier=region.get("datacenter_tier"),
            )
            for region in regions
        ),
    ]
