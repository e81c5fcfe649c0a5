"""`/v1/providers`: the consortium registers providers; their operators keep them current.

Admins create providers for organizations of kind provider, with regions, compliance
evidence and a jurisdiction. Every authenticated client may read providers. A provider's own
operators may change it (except its `state`, which only admins set); other operators get 404.
Changes need `If-Match` with the current `ETag` (`"v<N>"`): missing → 428, stale → 412, and
of concurrent writers holding the same ETag exactly one wins.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.catalogue_fixtures import (
    VALID_FROM,
    VALID_UNTIL,
    ProviderSetup,
    create_provider_organization,
    default_compliance,
    make_provider,
    provider_body,
    published_offer,
)
from tests.conftest import ApiUser, MakeUser
from tests.helpers import PROBLEM, all_pages, problem, run_concurrently

TIMESTAMP_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


CLAIM_FIELDS = ("scheme", "level", "valid_from", "valid_until", "evidence_url")


def _by_scheme(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Certifications as claimed (their evidence's other fields left out), by scheme."""
    claims = [{name: item[name] for name in CLAIM_FIELDS} for item in items]
    return sorted(claims, key=lambda item: str(item["scheme"]))


def _get(client: FlaskClient, user: ApiUser, provider_id: str) -> Any:
    response = client.get(f"/v1/providers/{provider_id}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def _patch(
    client: FlaskClient, user: ApiUser, provider_id: str, body: dict[str, Any], etag: str | None
) -> Any:
    headers = dict(user.headers)
    if etag is not None:
        headers["If-Match"] = etag
    return client.patch(f"/v1/providers/{provider_id}", json=body, headers=headers)


def _audit(client: FlaskClient, user: ApiUser, object_id: str) -> list[dict[str, Any]]:
    return all_pages(client, user, f"/v1/audit-events?object_id={object_id}")


def _provider_ids(client: FlaskClient, user: ApiUser) -> list[str]:
    return [item["id"] for item in all_pages(client, user, "/v1/providers")]


@pytest.fixture
def setup(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> ProviderSetup:
    return make_provider(client, admin, make_user, name="Souverain Cloud")


# --- creating ---------------------------------------------------------------------------------


def test_admin_creates_a_provider_with_regions_evidence_and_jurisdiction(
    client: FlaskClient, admin: ApiUser
) -> None:
    organization_id = create_provider_organization(client, admin, "Souverain SAS")
    body = provider_body(
        organization_id,
        name="Souverain Cloud",
        jurisdiction={
            "operator_country": "FR",
            "parent_country": "DE",
            "extraterritorial_exposure": ["US_CLOUD_ACT"],
        },
    )
    response = client.post("/v1/providers", json=body, headers=admin.headers)

    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v1"'
    created = response.json
    provider_id = created["id"]
    uuid.UUID(provider_id)
    assert response.headers["Location"].endswith(f"/v1/providers/{provider_id}")
    assert set(created) == {
        "id",
        "name",
        "organization_id",
        "adapter",
        "adapter_config",
        "regions",
        "compliance",
        "jurisdiction",
        "pending_evidence",
        "state",
        "created_at",
    }
    assert created["name"] == "Souverain Cloud"
    assert created["organization_id"] == organization_id
    assert created["adapter"] == "openstack"
    assert created["adapter_config"] == {
        "auth_url": "https://keystone.example.fr/v3",
        "region": "fr-par",
    }
    assert created["regions"] == [
        {"code": "fr-par-1", "country": "FR", "city": "Paris", "datacenter_tier": 3},
        {"code": "fr-lyo-1", "country": "FR", "city": "Lyon", "datacenter_tier": 4},
    ]
    assert _by_scheme(created["compliance"]) == [
        {
            "scheme": "hds",
            "level": None,
            "valid_from": VALID_FROM,
            "valid_until": VALID_UNTIL,
            "evidence_url": "https://esante.gouv.fr/evidence/hds-42.pdf",
        },
        {
            "scheme": "secnumcloud",
            "level": "3.2",
            "valid_from": VALID_FROM,
            "valid_until": VALID_UNTIL,
            "evidence_url": "https://cyber.gouv.fr/evidence/secnumcloud-42.pdf",
        },
    ]
    jurisdiction = dict(created["jurisdiction"])
    assert TIMESTAMP_Z.match(jurisdiction.pop("verified_at"))
    uuid.UUID(jurisdiction.pop("evidence_id"))
    assert jurisdiction == {
        "operator_country": "FR",
        "parent_country": "DE",
        "extraterritorial_exposure": ["US_CLOUD_ACT"],
        "verified_by": admin.client_id,
    }
    # Entered by the consortium: verified at once, by the admin who entered it.
    assert {(c["state"], c["counts"], c["verified_by"]) for c in created["compliance"]} == {
        ("verified", True, admin.client_id)
    }
    assert created["pending_evidence"] == []
    assert created["state"] == "active"
    assert TIMESTAMP_Z.match(created["created_at"]), created["created_at"]

    # What was stored is what was answered.
    read = client.get(response.headers["Location"], headers=admin.headers)
    assert read.status_code == 200
    assert read.headers["ETag"] == '"v1"'
    stored = dict(read.json)
    assert _by_scheme(stored.pop("compliance")) == _by_scheme(created["compliance"])
    assert stored == {k: v for k, v in created.items() if k != "compliance"}

    events = _audit(client, admin, provider_id)
    assert [event["action"] for event in events] == ["provider.created"]
    assert events[0]["actor_client_id"] == admin.client_id
    assert events[0]["organization_id"] == organization_id


def test_extraterritorial_exposure_is_stored_once_each_and_sorted(
    client: FlaskClient, admin: ApiUser
) -> None:
    organization_id = create_provider_organization(client, admin)
    jurisdiction = {
        "operator_country": "FR",
        "extraterritorial_exposure": ["US_CLOUD_ACT", "FISA_702", "US_CLOUD_ACT"],
    }
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, jurisdiction=jurisdiction),
        headers=admin.headers,
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    read = _get(client, admin, response.json["id"])
    assert read.json["jurisdiction"]["extraterritorial_exposure"] == ["FISA_702", "US_CLOUD_ACT"]
    assert read.json["jurisdiction"]["parent_country"] is None


@pytest.mark.parametrize("kind", ["agency", "consortium"])
def test_operator_organization_must_be_of_kind_provider(
    client: FlaskClient, admin: ApiUser, kind: str
) -> None:
    response = client.post(
        "/v1/organizations", json={"name": f"A {kind}", "kind": kind}, headers=admin.headers
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body = provider_body(response.json["id"])

    refused = client.post("/v1/providers", json=body, headers=admin.headers)

    refusal = problem(refused, 422, "validation_failed")
    assert list(refusal["errors"]) == ["organization_id"]
    assert _provider_ids(client, admin) == []


def test_unknown_operator_organization_is_404(client: FlaskClient, admin: ApiUser) -> None:
    response = client.post(
        "/v1/providers", json=provider_body(str(uuid.uuid4())), headers=admin.headers
    )
    problem(response, 404, "not_found")
    assert _provider_ids(client, admin) == []


def test_provider_names_are_unique(
    client: FlaskClient, admin: ApiUser, setup: ProviderSetup
) -> None:
    organization_id = create_provider_organization(client, admin)
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, name="Souverain Cloud"),
        headers=admin.headers,
    )
    problem(response, 409, "name_taken")
    assert _provider_ids(client, admin) == [setup.id]


def test_region_codes_must_be_unique(client: FlaskClient, admin: ApiUser) -> None:
    organization_id = create_provider_organization(client, admin)
    regions = [
        {"code": "fr-par-1", "country": "FR"},
        {"code": "fr-par-1", "country": "FR", "city": "Paris"},
    ]
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, regions=regions),
        headers=admin.headers,
    )
    body = problem(response, 422, "validation_failed")
    assert "regions" in body["errors"]
    assert _provider_ids(client, admin) == []


@pytest.mark.parametrize(
    "valid_until", ["2020-01-01T00:00:00Z", "2019-12-31T23:59:59Z"], ids=["equal", "before"]
)
def test_evidence_must_end_after_it_starts(
    client: FlaskClient, admin: ApiUser, valid_until: str
) -> None:
    organization_id = create_provider_organization(client, admin)
    compliance = [
        {"scheme": "secnumcloud", "valid_from": "2020-01-01T00:00:00Z", "valid_until": valid_until}
    ]
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, compliance=compliance),
        headers=admin.headers,
    )
    body = problem(response, 422, "validation_failed")
    assert list(body["errors"]) == ["compliance.0.valid_until"]
    assert _provider_ids(client, admin) == []


@pytest.mark.parametrize(
    "url",
    ["http://cyber.gouv.fr/evidence.pdf", "ftp://cyber.gouv.fr/evidence.pdf", "cyber.gouv.fr/x"],
)
def test_evidence_url_must_be_https(client: FlaskClient, admin: ApiUser, url: str) -> None:
    organization_id = create_provider_organization(client, admin)
    compliance = default_compliance()
    compliance[1]["evidence_url"] = url
    response = client.post(
        "/v1/providers",
        json=provider_body(organization_id, compliance=compliance),
        headers=admin.headers,
    )
    body = problem(response, 422, "validation_failed")
    assert list(body["errors"]) == ["compliance.1.evidence_url"]
    assert _provider_ids(client, admin) == []


@pytest.mark.parametrize(
    ("kind", "role"),
    [
        ("agency", "buyer"),
        ("agency", "approver"),
        ("provider", "provider"),
        ("consortium", "finance"),
    ],
)
def test_only_admins_create_providers(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, kind: str, role: str
) -> None:
    organization_id = create_provider_organization(client, admin)
    # Even the operator of the organization the provider would belong to may not.
    user = (
        make_user("provider", ["provider"], organization_id=organization_id)
        if role == "provider"
        else make_user(kind, [role])
    )
    response = client.post(
        "/v1/providers", json=provider_body(organization_id), headers=user.headers
    )
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    assert _provider_ids(client, admin) == []


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "role"),
    [
        ("agency", "buyer"),
        ("agency", "approver"),
        ("provider", "provider"),
        ("consortium", "finance"),
        ("consortium", "admin"),
    ],
)
def test_every_authenticated_role_reads_providers(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    setup: ProviderSetup,
    kind: str,
    role: str,
) -> None:
    other = make_provider(client, admin, make_user, name="Autre Cloud")
    user = make_user(kind, [role])

    listed = all_pages(client, user, "/v1/providers")
    assert sorted(item["id"] for item in listed) == sorted([setup.id, other.id])
    assert {item["name"] for item in listed} == {"Souverain Cloud", "Autre Cloud"}

    response = client.get(f"/v1/providers/{setup.id}", headers=user.headers)
    assert response.status_code == 200
    assert response.headers["ETag"] == '"v1"'
    assert response.json["name"] == "Souverain Cloud"
    assert response.json["organization_id"] == setup.organization_id
    assert _by_scheme(response.json["compliance"]) == _by_scheme(setup.provider["compliance"])


def test_reading_needs_a_token_and_unknown_ids_are_404(
    client: FlaskClient, buyer: ApiUser, setup: ProviderSetup
) -> None:
    assert client.get("/v1/providers").status_code == 401
    assert client.get(f"/v1/providers/{setup.id}").status_code == 401
    problem(client.get(f"/v1/providers/{uuid.uuid4()}", headers=buyer.headers), 404, "not_found")


# --- changing ---------------------------------------------------------------------------------


def test_operator_claims_evidence_with_if_match_and_it_waits_for_an_assessor(
    client: FlaskClient, setup: ProviderSetup
) -> None:
    operator = setup.operator
    compliance = default_compliance()
    compliance[0]["level"] = "3.3"
    compliance[0]["evidence_url"] = "https://cyber.gouv.fr/evidence/secnumcloud-2026.pdf"

    response = _patch(client, operator, setup.id, {"compliance": compliance}, setup.etag)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v2"'
    assert response.json["id"] == setup.id
    # What counts is unchanged; the new level is a pending claim (the unchanged hds is not).
    secnumcloud = [c for c in response.json["compliance"] if c["scheme"] == "secnumcloud"]
    assert [(c["level"], c["state"]) for c in secnumcloud] == [("3.2", "verified")]
    pending = response.json["pending_evidence"]
    assert _by_scheme(pending) == [
        {
            "scheme": "secnumcloud",
            "level": "3.3",
            "valid_from": VALID_FROM,
            "valid_until": VALID_UNTIL,
            "evidence_url": "https://cyber.gouv.fr/evidence/secnumcloud-2026.pdf",
        }
    ]
    assert pending[0]["state"] == "pending" and pending[0]["counts"] is False
    assert pending[0]["submitted_by"] == operator.client_id
    # Fields not sent are unchanged.
    assert response.json["regions"] == setup.provider["regions"]
    assert response.json["name"] == "Souverain Cloud"

    read = _get(client, operator, setup.id)
    assert read.headers["ETag"] == '"v2"'
    assert read.json["pending_evidence"] == pending

    events = _audit(client, operator, setup.id)
    assert [event["action"] for event in events] == ["provider.created", "provider.updated"]
    assert events[1]["actor_client_id"] == operator.client_id
    claim = _audit(client, operator, pending[0]["id"])
    assert [event["action"] for event in claim] == ["evidence.submitted"]
    assert claim[0]["actor_client_id"] == operator.client_id
    assert claim[0]["organization_id"] == setup.organization_id


def test_patch_without_if_match_is_428_and_changes_nothing(
    client: FlaskClient, admin: ApiUser, setup: ProviderSetup
) -> None:
    for user in (setup.operator, admin):
        response = _patch(client, user, setup.id, {"name": "Renamed"}, None)
        problem(response, 428, "precondition_required")
    read = _get(client, admin, setup.id)
    assert read.headers["ETag"] == '"v1"'
    assert read.json["name"] == "Souverain Cloud"


def test_patch_with_a_stale_etag_is_412_and_changes_nothing(
    client: FlaskClient, setup: ProviderSetup
) -> None:
    operator = setup.operator
    first = _patch(
        client, operator, setup.id, {"adapter_config": {"seed": 1}, "adapter": "simulated"}, '"v1"'
    )
    assert first.status_code == 200, first.get_data(as_text=True)
    assert first.headers["ETag"] == '"v2"'

    for stale in ('"v1"', '"v3"', '"v0"', "not-an-etag"):
        response = _patch(
            client,
            operator,
            setup.id,
            {"adapter_config": {"seed": 2}, "adapter": "simulated"},
            stale,
        )
        problem(response, 412, "precondition_failed")

    read = _get(client, operator, setup.id)
    assert read.headers["ETag"] == '"v2"'
    assert read.json["adapter_config"] == {"seed": 1}


def test_another_providers_operator_gets_404(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, setup: ProviderSetup
) -> None:
    other = make_provider(client, admin, make_user, name="Autre Cloud")
    response = _patch(client, other.operator, setup.id, {"name": "Hijacked"}, setup.etag)
    problem(response, 404, "not_found")
    read = _get(client, admin, setup.id)
    assert read.headers["ETag"] == '"v1"'
    assert read.json["name"] == "Souverain Cloud"
    assert [e["action"] for e in _audit(client, admin, setup.id)] == ["provider.created"]


def test_buyers_cannot_patch_providers(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser, setup: ProviderSetup
) -> None:
    response = _patch(client, buyer, setup.id, {"name": "Hijacked"}, setup.etag)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert _get(client, admin, setup.id).json["name"] == "Souverain Cloud"


def test_only_admins_change_a_providers_state(
    client: FlaskClient, admin: ApiUser, buyer: ApiUser, setup: ProviderSetup
) -> None:
    offer, _ = published_offer(client, setup.operator, setup.id)
    assert [o["id"] for o in all_pages(client, buyer, "/v1/offers")] == [offer["id"]]

    refused = _patch(client, setup.operator, setup.id, {"state": "suspended"}, setup.etag)
    body = problem(refused, 422, "validation_failed")
    assert list(body["errors"]) == ["state"]
    read = _get(client, admin, setup.id)
    assert (read.json["state"], read.headers["ETag"]) == ("active", '"v1"')

    suspended = _patch(client, admin, setup.id, {"state": "suspended"}, setup.etag)
    assert suspended.status_code == 200, suspended.get_data(as_text=True)
    assert suspended.json["state"] == "suspended"
    assert suspended.headers["ETag"] == '"v2"'
    assert _get(client, setup.operator, setup.id).json["state"] == "suspended"
    # A suspended provider's offers leave the catalogue.
    assert all_pages(client, buyer, "/v1/offers") == []


def test_the_consortium_replacing_the_compliance_list_replaces_the_evidence(
    client: FlaskClient, admin: ApiUser, setup: ProviderSetup
) -> None:
    evidence = [
        {
            "scheme": "bsi-c5",
            "level": "type-2",
            "valid_from": "2024-03-01T00:00:00Z",
            "valid_until": "2027-03-01T00:00:00Z",
            "evidence_url": "https://bsi.bund.de/c5/attestation.pdf",
        }
    ]
    response = _patch(client, admin, setup.id, {"compliance": evidence}, setup.etag)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _by_scheme(response.json["compliance"]) == evidence
    read = _get(client, admin, setup.id)
    assert _by_scheme(read.json["compliance"]) == evidence
    assert "secnumcloud" not in read.get_data(as_text=True)

    emptied = _patch(client, admin, setup.id, {"compliance": []}, read.headers["ETag"])
    assert emptied.status_code == 200, emptied.get_data(as_text=True)
    assert emptied.headers["ETag"] == '"v3"'
    assert _get(client, admin, setup.id).json["compliance"] == []


def test_renaming_to_a_taken_name_is_409(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, setup: ProviderSetup
) -> None:
    make_provider(client, admin, make_user, name="Autre Cloud")
    response = _patch(client, setup.operator, setup.id, {"name": "Autre Cloud"}, setup.etag)
    problem(response, 409, "name_taken")
    assert _get(client, admin, setup.id).json["name"] == "Souverain Cloud"


def test_concurrent_patches_with_the_same_etag_let_exactly_one_win(
    app: Flask, client: FlaskClient, setup: ProviderSetup
) -> None:
    operator = setup.operator

    def patch(index: int) -> tuple[int, str]:
        response = _patch(
            app.test_client(),
            operator,
            setup.id,
            {"adapter_config": {"seed": index}, "adapter": "simulated"},
            setup.etag,
        )
        return response.status_code, response.get_data(as_text=True)

    results = run_concurrently(5, patch)

    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 412, 412, 412, 412], results
    winner = next(index for index, (status, _) in enumerate(results) if status == 200)
    read = _get(client, operator, setup.id)
    assert read.headers["ETag"] == '"v2"'
    assert read.json["adapter_config"] == {"seed": winner}
    actions = [e["action"] for e in _audit(client, operator, setup.id)]
    assert actions == ["provider.created", "provider.updated"]
