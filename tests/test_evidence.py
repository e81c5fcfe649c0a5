"""Sovereignty a provider cannot grant itself: claims wait for someone else's word.

The exploit that started it, replayed over HTTP: the operator of a provider reached by the US
CLOUD Act rewrote its jurisdiction and gave itself SecNumCloud until 2099; its new offer version
was found by `certification=secnumcloud&sovereign_only=true`, quoted as allowed and ordered by
an agency whose policy forbids exactly that. Now the claims stay pending until an assessor of
the consortium vouches for them, and then count only until they expire.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc.jwk import ECKey, OKPKey

from broker import access
from broker.auth.identity import Caller
from broker.db import Database
from broker.errors import Forbidden
from broker.models import OrganizationKind, Role
from broker.seed import sign_statement
from broker.services import evidence
from tests.catalogue_fixtures import ProviderSetup, make_provider, published_offer
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, problem
from tests.test_orders import Agency, act, make_agency, make_shop, ok, order_body, post_order

NOW = datetime(2030, 3, 1, 12, tzinfo=UTC)
ISSUER = "https://certification.example"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def clock(app: Flask) -> list[datetime]:
    """The broker's clock, set by the test (`clock[0] = …`)."""
    moment = [NOW]
    app.config["CLOCK"] = lambda: moment[0]
    return moment


@pytest.fixture
def assessor(make_user: MakeUser) -> ApiUser:
    """An assessor of a consortium organization other than the admins'."""
    return make_user("consortium", ["assessor"], name="Bureau des évaluations")


def get(client: FlaskClient, user: ApiUser, path: str) -> dict[str, Any]:
    return ok(client.get(path, headers=user.headers))


def patch_provider(
    client: FlaskClient, user: ApiUser, provider_id: str, body: dict[str, Any]
) -> Any:
    current = client.get(f"/v1/providers/{provider_id}", headers=user.headers)
    headers = {**user.headers, "If-Match": current.headers["ETag"]}
    return client.patch(f"/v1/providers/{provider_id}", json=body, headers=headers)


def decide(
    client: FlaskClient, user: ApiUser, provider_id: str, evidence_id: str, action: str, **body: Any
) -> Any:
    return client.post(
        f"/v1/providers/{provider_id}/evidence/{evidence_id}/{action}",
        json=body or None,
        headers=user.headers,
    )


def search(client: FlaskClient, user: ApiUser, query: str) -> list[str]:
    return [offer["id"] for offer in all_pages(client, user, f"/v1/offers?{query}")]


def quote(client: FlaskClient, user: ApiUser, offer_id: str) -> dict[str, Any]:
    body = {"offer_id": offer_id, "quantity": 1, "hours": 730}
    return ok(client.post("/v1/quotes", json=body, headers=user.headers))


def secnumcloud(until: datetime) -> dict[str, Any]:
    return {
        "scheme": "secnumcloud",
        "level": "3.2",
        "valid_from": iso(NOW - timedelta(days=30)),
        "valid_until": iso(until),
        "issuer": "ANSSI",
        "evidence_url": "https://cyber.gouv.fr/qualification/42.pdf",
        "document_sha256": "ab" * 32,
    }


ISO27001 = {
    "scheme": "iso27001",
    "level": "2022",
    "valid_from": iso(NOW - timedelta(days=300)),
    "valid_until": iso(NOW + timedelta(days=300)),
    "evidence_url": "https://iso.example/27001.pdf",
}


def claim_secnumcloud(client: FlaskClient, setup: ProviderSetup) -> dict[str, Any]:
    """The provider's operator claims SecNumCloud (for ten years): a pending claim."""
    body = {"kind": "certification", **secnumcloud(NOW + timedelta(days=3650))}
    path = f"/v1/providers/{setup.id}/evidence"
    return ok(client.post(path, json=body, headers=setup.operator.headers), 201)


def exposed_shop(client: FlaskClient, admin: ApiUser, make_user: MakeUser) -> Any:
    """A provider whose parent is American, with a published offer in Paris (ISO 27001)."""
    return make_shop(
        client,
        admin,
        make_user,
        offer={"compliance": ["iso27001"]},
        jurisdiction={
            "operator_country": "IE",
            "parent_country": "US",
            "extraterritorial_exposure": ["US_CLOUD_ACT"],
        },
        compliance=[ISO27001],
    )


def strict_agency(client: FlaskClient, make_user: MakeUser) -> Agency:
    from tests.test_orders import set_policy

    agency = make_agency(make_user)
    set_policy(
        client,
        agency,
        budget="1000",
        required_certifications=["secnumcloud"],
        allowed_countries=["FR", "DE"],
        forbid_extraterritorial=True,
    )
    return agency


# --- done when 1: the exploit ---------------------------------------------------------------


def test_a_provider_cannot_grant_itself_sovereignty_until_an_assessor_vouches(
    client: FlaskClient,
    admin: ApiUser,
    assessor: ApiUser,
    make_user: MakeUser,
    clock: list[datetime],
) -> None:
    shop = exposed_shop(client, admin, make_user)
    operator, provider_id = shop.provider.operator, shop.provider.id
    agency = strict_agency(client, make_user)
    until = NOW + timedelta(days=90)

    # The operator rewrites its jurisdiction and certifies itself.
    claimed = patch_provider(
        client,
        operator,
        provider_id,
        {
            "jurisdiction": {"operator_country": "DE", "extraterritorial_exposure": []},
            "compliance": [ISO27001, secnumcloud(until)],
        },
    )
    assert claimed.status_code == 200, claimed.get_data(as_text=True)
    provider = claimed.json
    assert provider["jurisdiction"]["operator_country"] == "IE"
    assert provider["jurisdiction"]["extraterritorial_exposure"] == ["US_CLOUD_ACT"]
    assert [c["scheme"] for c in provider["compliance"]] == ["iso27001"]
    pending = {item["kind"]: item for item in provider["pending_evidence"]}
    assert set(pending) == {"jurisdiction", "certification"}
    assert {item["state"] for item in pending.values()} == {"pending"}
    assert pending["certification"]["scheme"] == "secnumcloud"

    # A new version of its offer claims the certificate, and is published.
    edited = client.patch(
        f"/v1/offers/{shop.offer_id}",
        json={"compliance": ["iso27001", "secnumcloud"]},
        headers={**operator.headers, "If-Match": '"v2"'},
    )
    assert edited.status_code == 201, edited.get_data(as_text=True)
    offer_id = edited.json["id"]
    ok(client.post(f"/v1/offers/{offer_id}/publish", headers=operator.headers))
    shown = get(client, agency.buyer, f"/v1/offers/{offer_id}")
    claim = next(c for c in shown["compliance"] if c["scheme"] == "secnumcloud")
    assert (claim["state"], claim["valid_now"], claim["verified_by"]) == ("pending", False, None)

    # Nothing the claimant wrote counts.
    buyer = agency.buyer
    assert search(client, buyer, "certification=secnumcloud") == []
    assert search(client, buyer, "sovereign_only=true") == []
    assert search(client, buyer, "certification=secnumcloud&sovereign_only=true") == []
    refused = quote(client, buyer, offer_id)
    assert refused["allowed"] is False
    assert {r["code"] for r in refused["reasons"]} == {
        "certification_missing",
        "extraterritorial_exposure",
    }
    order = problem(post_order(client, buyer, order_body(offer_id)), 422, "policy_violation")
    assert {r["code"] for r in order["reasons"]} == {
        "certification_missing",
        "extraterritorial_exposure",
    }

    # An assessor of the consortium vouches for both claims: now they count.
    for item in pending.values():
        verified = ok(decide(client, assessor, provider_id, item["id"], "verify"))
        assert verified["state"] == "verified" and verified["verified_by"] == assessor.client_id
    assert search(client, buyer, "certification=secnumcloud&sovereign_only=true") == [offer_id]
    allowed = quote(client, buyer, offer_id)
    assert (allowed["allowed"], allowed["reasons"]) == (True, [])
    shown = get(client, buyer, f"/v1/offers/{offer_id}")
    claim = next(c for c in shown["compliance"] if c["scheme"] == "secnumcloud")
    assert claim["valid_now"] is True
    assert claim["verified_by"] == assessor.client_id
    assert claim["document_sha256"] == "ab" * 32
    assert shown["jurisdiction"]["operator_country"] == "DE"
    placed = post_order(client, buyer, order_body(offer_id))
    assert placed.status_code == 201, placed.get_data(as_text=True)

    # Once the certificate runs out, it stops counting.
    clock[0] = until
    assert search(client, buyer, "certification=secnumcloud") == []
    expired = quote(client, buyer, offer_id)
    assert [r["code"] for r in expired["reasons"]] == ["certification_missing"]
    problem(post_order(client, buyer, order_body(offer_id)), 422, "policy_violation")
    clock[0] = until - timedelta(microseconds=1)
    assert search(client, buyer, "certification=secnumcloud") == [offer_id]


def test_what_the_consortium_enters_is_verified_at_once_and_audited(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user)
    items = all_pages(client, admin, f"/v1/providers/{setup.id}/evidence")
    assert sorted(item["kind"] for item in items) == [
        "certification",
        "certification",
        "jurisdiction",
        "region",
        "region",
    ]
    assert {(i["state"], i["counts"], i["verified_by"]) for i in items} == {
        ("verified", True, admin.client_id)
    }
    events = all_pages(client, admin, f"/v1/audit-events?object_id={items[0]['id']}")
    assert [e["action"] for e in events] == ["evidence.submitted", "evidence.verified"]
    assert events[1]["before"]["state"] == "pending"
    assert events[1]["after"]["state"] == "verified"



def test_an_assessor_may_enter_claims_on_a_provider_and_nothing_else(
    client: FlaskClient, admin: ApiUser, assessor: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user)
    renamed = patch_provider(client, assessor, setup.id, {"name": "Autre nom"})
    assert list(problem(renamed, 422, "validation_failed")["errors"]) == ["name"]
    entered = patch_provider(client, assessor, setup.id, {"compliance": [ISO27001]})
    assert entered.status_code == 200, entered.get_data(as_text=True)
    # The consortium's document is the truth: ISO 27001 verified, the others superseded.
    assert [(c["scheme"], c["verified_by"]) for c in entered.json["compliance"]] == [
        ("iso27001", assessor.client_id)
    ]
    superseded = all_pages(client, admin, f"/v1/providers/{setup.id}/evidence?state=superseded")
    assert sorted(item["scheme"] for item in superseded) == ["hds", "secnumcloud"]


def test_an_exposure_the_operator_discloses_counts_at_once_but_a_removal_waits(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, buyer: ApiUser
) -> None:
    setup = make_provider(client, admin, make_user)
    offer, _ = published_offer(client, setup.operator, setup.id)
    assert search(client, buyer, "sovereign_only=true") == [offer["id"]]
    disclosed = patch_provider(
        client,
        setup.operator,
        setup.id,
        {"jurisdiction": {"operator_country": "FR", "extraterritorial_exposure": ["FISA_702"]}},
    )
    assert disclosed.status_code == 200, disclosed.get_data(as_text=True)
    assert disclosed.json["jurisdiction"]["extraterritorial_exposure"] == ["FISA_702"]
    assert search(client, buyer, "sovereign_only=true") == []
    # Withdrawing the disclosure is the provider's word again: it takes it back at once only
    # because the disclosure itself was never vouched for.
    claim = disclosed.json["pending_evidence"][0]
    withdrawn = client.post(
        f"/v1/providers/{setup.id}/evidence/{claim['id']}/withdraw", headers=setup.operator.headers
    )
    assert ok(withdrawn)["state"] == "withdrawn"
    assert search(client, buyer, "sovereign_only=true") == [offer["id"]]


def test_a_new_region_country_waits_and_then_moves_the_offers(
    client: FlaskClient, admin: ApiUser, assessor: ApiUser, make_user: MakeUser, buyer: ApiUser
) -> None:
    setup = make_provider(client, admin, make_user)
    offer, _ = published_offer(client, setup.operator, setup.id)
    moved = ok(
        client.post(
            f"/v1/providers/{setup.id}/evidence",
            json={"kind": "region", "region_code": "fr-par-1", "country": "DE", "city": "Kehl"},
            headers=setup.operator.headers,
        ),
        201,
    )
    assert moved["state"] == "pending"
    assert search(client, buyer, "country=FR") == [offer["id"]]
    assert search(client, buyer, "country=DE") == []
    ok(decide(client, assessor, setup.id, moved["id"], "verify"))
    assert search(client, buyer, "country=DE") == [offer["id"]]
    assert get(client, buyer, f"/v1/offers/{offer['id']}")["region"]["city"] == "Kehl"
    regions = get(client, buyer, f"/v1/providers/{setup.id}")["regions"]
    assert regions[0] == {
        "code": "fr-par-1",
        "country": "DE",
        "city": "Kehl",
        "datacenter_tier": None,
    }


# --- done when 2: who vouches ---------------------------------------------------------------


def test_only_the_consortium_decides_and_never_for_its_own_provider(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    assessor: ApiUser,
    make_user: MakeUser,
    buyer: ApiUser,
) -> None:
    setup = make_provider(client, admin, make_user)
    claim = claim_secnumcloud(client, setup)
    for user in (setup.operator, buyer):
        problem(decide(client, user, setup.id, claim["id"], "verify"), 403, "forbidden")
        problem(decide(client, user, setup.id, claim["id"], "reject", reason="no"), 403)
    finance = make_user("consortium", ["finance"], organization_id=admin.organization_id)
    problem(decide(client, finance, setup.id, claim["id"], "verify"), 403, "forbidden")

    # Someone who belongs to the provider's organization (a person with two memberships, say)
    # cannot vouch for it, whatever else they are.
    insider = Caller(
        client_id="insider",
        organization_id=uuid.UUID(assessor.organization_id),
        organization_kind=OrganizationKind.CONSORTIUM,
        roles=frozenset({Role.ASSESSOR}),
        other_organization_ids=frozenset({uuid.UUID(setup.organization_id)}),
    )
    with db.transaction() as session, pytest.raises(Forbidden) as refused:
        evidence.verify(
            session, insider, uuid.UUID(setup.id), uuid.UUID(claim["id"]), datetime.now(UTC)
        )
    assert refused.value.code == "own_organization"
    # And what such a person enters for it is a claim like any other.
    with db.transaction() as session:
        provider = evidence._provider(session, uuid.UUID(setup.id))
        assert access.vouches(insider, provider) is False

    item = get(client, setup.operator, f"/v1/providers/{setup.id}/evidence/{claim['id']}")
    assert item["state"] == "pending"
    verified = ok(decide(client, assessor, setup.id, claim["id"], "verify"))
    assert verified["state"] == "verified"
    assert verified["decided_by_organization_id"] == assessor.organization_id
    problem(decide(client, assessor, setup.id, claim["id"], "verify"), 409, "not_pending")
    events = all_pages(client, admin, f"/v1/audit-events?object_id={claim['id']}")
    assert [(e["action"], e["actor_client_id"]) for e in events] == [
        ("evidence.submitted", setup.operator.client_id),
        ("evidence.verified", assessor.client_id),
    ]


def test_a_rejection_says_why_and_the_queue_and_listings_show_what_each_may_see(
    client: FlaskClient,
    admin: ApiUser,
    assessor: ApiUser,
    make_user: MakeUser,
    buyer: ApiUser,
) -> None:
    setup = make_provider(client, admin, make_user)
    claim = claim_secnumcloud(client, setup)
    queue = all_pages(client, assessor, "/v1/evidence?state=pending")
    assert [item["id"] for item in queue] == [claim["id"]]
    problem(client.get("/v1/evidence", headers=setup.operator.headers), 403, "forbidden")
    # Buyers see what was verified only; the operator sees its claim.
    listed = all_pages(client, buyer, f"/v1/providers/{setup.id}/evidence")
    assert claim["id"] not in {item["id"] for item in listed}
    problem(
        client.get(f"/v1/providers/{setup.id}/evidence/{claim['id']}", headers=buyer.headers), 404
    )
    assert claim["id"] in {
        i["id"] for i in all_pages(client, setup.operator, f"/v1/providers/{setup.id}/evidence")
    }

    problem(decide(client, assessor, setup.id, claim["id"], "reject"), 400)
    rejected = ok(
        decide(client, assessor, setup.id, claim["id"], "reject", reason="No such certificate.")
    )
    assert (rejected["state"], rejected["reason"]) == ("rejected", "No such certificate.")
    assert all_pages(client, assessor, "/v1/evidence?state=pending") == []
    problem(decide(client, assessor, setup.id, claim["id"], "verify"), 409, "not_pending")
    # Another provider's evidence id under this provider is not found.
    other = make_provider(client, admin, make_user)
    problem(decide(client, assessor, other.id, claim["id"], "verify"), 404, "not_found")


def test_identical_claims_are_refused_and_kinds_keep_to_their_fields(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user)
    path = f"/v1/providers/{setup.id}/evidence"
    body = {"kind": "certification", **secnumcloud(NOW + timedelta(days=3650))}
    first = ok(client.post(path, json=body, headers=setup.operator.headers), 201)
    again = problem(client.post(path, json=body, headers=setup.operator.headers), 409)
    assert again["code"] == "duplicate_evidence" and again["evidence_id"] == first["id"]
    mixed = client.post(
        path,
        json={"kind": "region", "region_code": "x-1", "country": "FR", "scheme": "hds"},
        headers=setup.operator.headers,
    )
    assert "scheme" in problem(mixed, 422, "validation_failed")["errors"]
    backwards = {**body, "valid_until": body["valid_from"]}
    refused = problem(client.post(path, json=backwards, headers=setup.operator.headers), 422)
    assert list(refused["errors"]) == ["valid_until"]
    unknown = client.post(path, json={"kind": "rumour"}, headers=setup.operator.headers)
    assert list(problem(unknown, 422)["errors"]) == ["kind"]
    assert len(all_pages(client, admin, f"{path}?state=pending")) == 1


# --- done when 3: signed statements ---------------------------------------------------------


@pytest.fixture
def issuer_key(client: FlaskClient, admin: ApiUser) -> ECKey:
    key = ECKey.generate_key("P-256", parameters={"kid": "cb-1"})
    body = {
        "name": "Organisme de certification",
        "issuer": ISSUER,
        "jwks": {"keys": [key.as_dict(private=False)]},
    }
    ok(client.post("/v1/trusted-issuers", json=body, headers=admin.headers), 201)
    return key


def statement(key: ECKey, provider_id: str, **claims: Any) -> str:
    body = {
        "sub": provider_id,
        "scheme": "secnumcloud",
        "level": "3.2",
        "nbf": int((NOW - timedelta(days=1)).timestamp()),
        "exp": int((NOW + timedelta(days=365)).timestamp()),
        **claims,
    }
    return sign_statement(key, ISSUER, body)


def submit(client: FlaskClient, user: ApiUser, provider_id: str, token: str) -> Any:
    return client.post(
        f"/v1/providers/{provider_id}/evidence",
        json={"kind": "certification", "statement": token},
        headers=user.headers,
    )


def test_a_signed_statement_from_a_trusted_issuer_counts_without_an_assessor(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    buyer: ApiUser,
    issuer_key: ECKey,
    clock: list[datetime],
) -> None:
    setup = make_provider(client, admin, make_user, compliance=[])
    offer, _ = published_offer(client, setup.operator, setup.id)
    signed = ok(submit(client, setup.operator, setup.id, statement(issuer_key, setup.id)), 201)
    assert (signed["state"], signed["counts"], signed["signed"]) == ("verified", True, True)
    assert signed["verified_by"] == "Organisme de certification"
    assert signed["key_id"] == "cb-1"
    assert signed["valid_until"] == iso(NOW + timedelta(days=365))
    # Offers claim it from their next version on; the offer of the test claims it now.
    draft = client.patch(
        f"/v1/offers/{offer['id']}",
        json={"compliance": ["secnumcloud"]},
        headers={**setup.operator.headers, "If-Match": '"v2"'},
    )
    new_id = ok(draft, 201)["id"]
    ok(client.post(f"/v1/offers/{new_id}/publish", headers=setup.operator.headers))
    assert search(client, buyer, "certification=secnumcloud") == [new_id]
    shown = get(client, buyer, f"/v1/offers/{new_id}")["compliance"][0]
    assert (shown["signed"], shown["verified_by"]) == (True, "Organisme de certification")

    # It stops counting when it expires …
    clock[0] = NOW + timedelta(days=365)
    assert search(client, buyer, "certification=secnumcloud") == []
    clock[0] = NOW
    # … or when its issuer's key is no longer trusted.
    issuers = all_pages(client, admin, "/v1/trusted-issuers")
    other = OKPKey.generate_key("Ed25519", parameters={"kid": "cb-2"})
    current = client.get(f"/v1/trusted-issuers/{issuers[0]['id']}", headers=admin.headers)
    replaced = client.patch(
        f"/v1/trusted-issuers/{issuers[0]['id']}",
        json={"jwks": {"keys": [other.as_dict(private=False)]}},
        headers={**admin.headers, "If-Match": current.headers["ETag"]},
    )
    ok(replaced)
    assert search(client, buyer, "certification=secnumcloud") == []
    revoked = get(client, setup.operator, f"/v1/providers/{setup.id}/evidence/{signed['id']}")
    assert revoked["state"] == "rejected"
    assert "cb-1" in revoked["reason"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad signature", "bad_signature"),
        ("another subject", "wrong_subject"),
        ("unknown issuer", "unknown_issuer"),
        ("expired", "expired"),
    ],
)
def test_a_statement_that_does_not_check_out_is_refused_with_its_reason(
    client: FlaskClient,
    admin: ApiUser,
    make_user: MakeUser,
    buyer: ApiUser,
    issuer_key: ECKey,
    clock: list[datetime],
    case: str,
    reason: str,
) -> None:
    setup = make_provider(client, admin, make_user, compliance=[])
    published_offer(client, setup.operator, setup.id)
    if case == "bad signature":
        forger = ECKey.generate_key("P-256", parameters={"kid": "cb-1"})
        token = statement(forger, setup.id)
    elif case == "another subject":
        token = statement(issuer_key, str(uuid.uuid4()))
    elif case == "unknown issuer":
        token = statement(issuer_key, setup.id, iss="https://unknown.example")
    else:
        token = statement(issuer_key, setup.id, exp=int(NOW.timestamp()))
    refused = problem(submit(client, setup.operator, setup.id, token), 422, "statement_rejected")
    assert refused["reason"] == reason
    assert refused["errors"]["statement"] == [refused["detail"]]
    assert refused["detail"].endswith(".")
    assert all_pages(client, admin, f"/v1/providers/{setup.id}/evidence?state=pending") == []
    assert search(client, buyer, "certification=secnumcloud") == []


def test_trusted_issuers_are_admins_to_keep_and_their_keys_must_be_public(
    client: FlaskClient, admin: ApiUser, assessor: ApiUser, buyer: ApiUser
) -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k"})
    body = {"name": "Certifieur", "issuer": ISSUER, "jwks": {"keys": [key.as_dict(private=True)]}}
    problem(client.post("/v1/trusted-issuers", json=body, headers=assessor.headers), 403)
    refused = problem(client.post("/v1/trusted-issuers", json=body, headers=admin.headers), 422)
    assert list(refused["errors"]) == ["jwks"]
    body["jwks"] = {"keys": [key.as_dict(private=False)]}
    created = ok(client.post("/v1/trusted-issuers", json=body, headers=admin.headers), 201)
    assert "d" not in created["jwks"]["keys"][0]
    # Everyone may read the list, to check a statement themselves.
    assert [i["issuer"] for i in all_pages(client, buyer, "/v1/trusted-issuers")] == [ISSUER]
    again = {**body, "name": "Autre"}
    problem(client.post("/v1/trusted-issuers", json=again, headers=admin.headers), 409)
    look_alike = {**body, "name": "CERTIFIEUR", "issuer": "https://other.example"}
    problem(client.post("/v1/trusted-issuers", json=look_alike, headers=admin.headers), 409)
    gone = client.delete(f"/v1/trusted-issuers/{created['id']}", headers=admin.headers)
    assert gone.status_code == 204
    assert all_pages(client, buyer, "/v1/trusted-issuers") == []


# --- done when 4: approval checks again -------------------------------------------------------


def _pending_order(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> tuple[Any, Agency, str]:
    from tests.test_orders import set_policy

    shop = make_shop(client, admin, make_user, offer={"compliance": ["secnumcloud"]})
    agency = make_agency(make_user)
    set_policy(
        client, agency, budget="500", threshold="10", required_certifications=["secnumcloud"]
    )
    placed = ok(post_order(client, agency.buyer, order_body(shop.offer_id)), 201)
    assert placed["state"] == "pending_approval"
    return shop, agency, placed["id"]


def test_an_order_whose_offer_lost_its_certification_cannot_be_approved(
    client: FlaskClient, admin: ApiUser, assessor: ApiUser, make_user: MakeUser
) -> None:
    shop, agency, order_id = _pending_order(client, admin, make_user)
    certificate = next(
        c for c in shop.provider.provider["compliance"] if c["scheme"] == "secnumcloud"
    )
    ok(decide(client, assessor, shop.provider.id, certificate["id"], "reject", reason="Suspended."))
    refused = problem(act(client, agency.approver, order_id, "approve"), 422, "policy_violation")
    assert [r["code"] for r in refused["reasons"]] == ["certification_missing"]
    assert "secnumcloud" in refused["detail"]
    assert get(client, agency.buyer, f"/v1/orders/{order_id}")["state"] == "pending_approval"
    rejected = ok(act(client, agency.approver, order_id, "reject", reason="No longer certified."))
    assert rejected["state"] == "rejected"


def test_an_order_over_a_lowered_budget_cannot_be_approved(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    from tests.test_orders import set_policy

    shop, agency, order_id = _pending_order(client, admin, make_user)
    set_policy(client, agency, budget="50", threshold="10", required_certifications=["secnumcloud"])
    refused = problem(act(client, agency.approver, order_id, "approve"), 422, "policy_violation")
    assert [r["code"] for r in refused["reasons"]] == ["budget_exceeded"]
    assert (
        "58.94 EUR a month on top of 0.00 committed exceeds the monthly budget of 50.00"
        in (refused["reasons"][0]["detail"])
    )
    assert get(client, agency.buyer, f"/v1/orders/{order_id}")["state"] == "pending_approval"
    set_policy(client, agency, budget="60", threshold="10", required_certifications=["secnumcloud"])
    assert ok(act(client, agency.approver, order_id, "approve"))["state"] == "approved"
    assert shop.offer_id
