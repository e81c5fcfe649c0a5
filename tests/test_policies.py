"""Agency policies (`/v1/organizations/{id}/policy`) and the pure `evaluate` function.

Over HTTP: who may read and replace a policy, optimistic concurrency with `ETag`/`If-Match`,
validation, the shape a policy round-trips in, and the audit event a change writes. Directly:
`broker.services.policies.evaluate` for every reason an offer can break a policy, alone and
together, including a property test against an independent restatement of the rules.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import strategies as st

from broker.services.policies import OfferFacts, Reason, SovereigntyRules, evaluate
from tests.conftest import ApiUser, MakeUser

POLICY = {
    "currency": "EUR",
    "monthly_budget": "12000.50",
    "approval_threshold": "2500",
    "sovereignty": {
        "required_certifications": ["secnumcloud", "hds", "iso27001", "bsi-c5", "hds"],
        "allowed_countries": ["FR", "DE", "NL", "BE", "LU", "AT", "FR"],
        "forbid_extraterritorial": True,
    },
}


def policy_path(organization_id: str) -> str:
    return f"/v1/organizations/{organization_id}/policy"


@pytest.fixture
def approver(make_user: MakeUser) -> ApiUser:
    return make_user("agency", ["approver"])


def put(
    client: FlaskClient, user: ApiUser, organization_id: str, body: Any, if_match: str | None
) -> Any:
    headers = dict(user.headers)
    if if_match is not None:
        headers["If-Match"] = if_match
    return client.put(policy_path(organization_id), json=body, headers=headers)


# --- reading and replacing -------------------------------------------------------------------


def test_an_agency_without_a_policy_has_the_empty_one_at_v0(
    client: FlaskClient, approver: ApiUser
) -> None:
    response = client.get(policy_path(approver.organization_id), headers=approver.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v0"'
    assert response.json == {
        "organization_id": approver.organization_id,
        "currency": None,
        "monthly_budget": None,
        "approval_threshold": None,
        "sovereignty": {
            "required_certifications": [],
            "allowed_countries": [],
            "forbid_extraterritorial": False,
        },
    }


def test_a_policy_is_replaced_with_if_match_and_round_trips(
    client: FlaskClient, approver: ApiUser
) -> None:
    org = approver.organization_id
    response = put(client, approver, org, POLICY, '"v0"')
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v1"'

    read = client.get(policy_path(org), headers=approver.headers)
    assert read.status_code == 200
    assert read.headers["ETag"] == '"v1"'
    for body in (response.json, read.json):
        assert body["organization_id"] == org
        assert body["currency"] == "EUR"
        # Money as strings, in the policy currency's minor unit.
        assert body["monthly_budget"] == "12000.50"
        assert body["approval_threshold"] == "2500.00"
        assert body["sovereignty"] == {
            "required_certifications": ["bsi-c5", "hds", "iso27001", "secnumcloud"],
            "allowed_countries": ["AT", "BE", "DE", "FR", "LU", "NL"],
            "forbid_extraterritorial": True,
        }

    second = {**POLICY, "monthly_budget": None, "approval_threshold": None, "sovereignty": {}}
    response = put(client, approver, org, second, '"v1"')
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == '"v2"'
    read = client.get(policy_path(org), headers=approver.headers).json
    assert read["monthly_budget"] is None and read["approval_threshold"] is None
    assert read["sovereignty"] == {
        "required_certifications": [],
        "allowed_countries": [],
        "forbid_extraterritorial": False,
    }


def test_the_same_etag_always_comes_with_the_same_body(
    client: FlaskClient, approver: ApiUser
) -> None:
    """`"v1"` is a strong validator: the PUT's answer and a later GET are the same bytes."""
    org = approver.organization_id
    written = put(client, approver, org, POLICY, '"v0"')
    assert written.status_code == 200
    read = client.get(policy_path(org), headers=approver.headers)
    assert read.headers["ETag"] == written.headers["ETag"]
    assert read.json == written.json


def test_replacing_needs_if_match_and_the_current_version(
    client: FlaskClient, approver: ApiUser
) -> None:
    org = approver.organization_id
    missing = put(client, approver, org, POLICY, None)
    assert missing.status_code == 428, missing.get_data(as_text=True)
    assert put(client, approver, org, POLICY, '"v1"').status_code == 412  # there is no v1 yet
    assert put(client, approver, org, POLICY, "not-an-etag").status_code == 412
    assert client.get(policy_path(org), headers=approver.headers).headers["ETag"] == '"v0"'

    assert put(client, approver, org, POLICY, '"v0"').status_code == 200
    stale = put(client, approver, org, {**POLICY, "currency": "CAD"}, '"v0"')
    assert stale.status_code == 412, stale.get_data(as_text=True)
    read = client.get(policy_path(org), headers=approver.headers)
    assert read.headers["ETag"] == '"v1"'
    assert read.json["currency"] == "EUR"


# --- who may ---------------------------------------------------------------------------------


def test_an_approver_of_another_agency_finds_no_policy(
    client: FlaskClient, approver: ApiUser, make_user: MakeUser
) -> None:
    other = make_user("agency", ["approver"])
    path = policy_path(approver.organization_id)
    assert client.get(path, headers=other.headers).status_code == 404
    response = put(client, other, approver.organization_id, POLICY, '"v0"')
    assert response.status_code == 404
    assert client.get(path, headers=approver.headers).headers["ETag"] == '"v0"'


def test_a_buyer_reads_its_own_agencys_policy_but_may_not_replace_it(
    client: FlaskClient, approver: ApiUser, make_user: MakeUser
) -> None:
    """Buyers order with their eyes open: they read what their approvers wrote (same body,
    same ETag), and writing stays with approvers."""
    buyer = make_user("agency", ["buyer"], organization_id=approver.organization_id)
    path = policy_path(buyer.organization_id)
    empty = client.get(path, headers=buyer.headers)
    assert empty.status_code == 200, empty.get_data(as_text=True)
    assert empty.headers["ETag"] == '"v0"' and empty.json["currency"] is None

    assert put(client, approver, approver.organization_id, POLICY, '"v0"').status_code == 200
    seen = client.get(path, headers=buyer.headers)
    assert seen.status_code == 200
    assert seen.headers["ETag"] == '"v1"'
    assert seen.json == client.get(path, headers=approver.headers).json
    assert seen.json["approval_threshold"] == "2500.00"
    assert seen.json["monthly_budget"] == "12000.50"

    refused = put(client, buyer, buyer.organization_id, {**POLICY, "currency": "CAD"}, '"v1"')
    assert refused.status_code == 403, refused.get_data(as_text=True)
    assert client.get(path, headers=buyer.headers).json["currency"] == "EUR"


def test_a_buyer_of_another_agency_finds_no_policy(
    client: FlaskClient, approver: ApiUser, make_user: MakeUser
) -> None:
    assert put(client, approver, approver.organization_id, POLICY, '"v0"').status_code == 200
    stranger = make_user("agency", ["buyer"])
    response = client.get(policy_path(approver.organization_id), headers=stranger.headers)
    assert response.status_code == 404, response.get_data(as_text=True)
    unknown = client.get(policy_path(str(uuid.uuid4())), headers=stranger.headers)
    assert unknown.status_code == 404
    assert response.json["detail"] == unknown.json["detail"]  # existence does not leak
    # Their own agency, without a policy, is the empty one.
    own = client.get(policy_path(stranger.organization_id), headers=stranger.headers)
    assert own.status_code == 200 and own.json["monthly_budget"] is None


def test_a_provider_operator_may_not_read_an_agencys_policy(
    client: FlaskClient, approver: ApiUser, make_user: MakeUser
) -> None:
    operator = make_user("provider", ["provider"])
    path = policy_path(approver.organization_id)
    assert client.get(path, headers=operator.headers).status_code == 403


def test_a_policy_needs_a_token(client: FlaskClient, approver: ApiUser) -> None:
    assert client.get(policy_path(approver.organization_id)).status_code == 401


def test_an_admin_may_read_and_replace_any_agency_policy(
    client: FlaskClient, admin: ApiUser, approver: ApiUser
) -> None:
    org = approver.organization_id
    assert client.get(policy_path(org), headers=admin.headers).status_code == 200
    response = put(client, admin, org, POLICY, '"v0"')
    assert response.status_code == 200, response.get_data(as_text=True)
    seen = client.get(policy_path(org), headers=approver.headers)
    assert seen.headers["ETag"] == '"v1"'
    assert seen.json["currency"] == "EUR"


@pytest.mark.parametrize("kind", ["provider", "consortium"])
def test_only_agencies_have_policies(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, kind: str
) -> None:
    roles = ["provider"] if kind == "provider" else ["finance"]
    other = make_user(kind, roles)
    assert client.get(policy_path(other.organization_id), headers=admin.headers).status_code == 404
    assert put(client, admin, other.organization_id, POLICY, '"v0"').status_code == 404
    # Nor does the consortium's own organization have one.
    assert client.get(policy_path(admin.organization_id), headers=admin.headers).status_code == 404


def test_an_unknown_organization_has_no_policy(client: FlaskClient, admin: ApiUser) -> None:
    missing = str(uuid.uuid4())
    assert client.get(policy_path(missing), headers=admin.headers).status_code == 404
    assert put(client, admin, missing, POLICY, '"v0"').status_code == 404


# --- validation --------------------------------------------------------------------------------


INVALID = [
    ({"approval_threshold": "12000.51"}, "approval_threshold"),  # above the budget
    ({"colour": "blue"}, "colour"),
    ({"sovereignty": {"forbid_extraterritorial": 0}}, "sovereignty.forbid_extraterritorial"),
    ({"sovereignty": {"forbid_extraterritorial": "true"}}, "sovereignty.forbid_extraterritorial"),
    ({"sovereignty": {"max_latency_ms": 5}}, "sovereignty.max_latency_ms"),
    ({"sovereignty": {"allowed_countries": ["fr"]}}, "sovereignty.allowed_countries"),
    ({"sovereignty": {"required_certifications": ["SecNum"]}}, "sovereignty"),
    ({"monthly_budget": 1000}, "monthly_budget"),
    ({"monthly_budget": "-5"}, "monthly_budget"),
    ({"monthly_budget": "1.1234567"}, "monthly_budget"),
    ({"currency": "XYZ"}, "currency"),
    ({"currency": None}, "currency"),
]


def test_an_invalid_policy_is_refused_and_nothing_changes(
    client: FlaskClient, approver: ApiUser
) -> None:
    org = approver.organization_id
    for change, field in INVALID:
        response = put(client, approver, org, {**POLICY, **change}, '"v0"')
        assert response.status_code == 422, (change, response.get_data(as_text=True))
        errors = response.json["errors"]
        assert any(key.startswith(field) for key in errors), (change, errors)
    for field in ("currency", "monthly_budget", "approval_threshold"):
        body = {k: v for k, v in POLICY.items() if k != field}
        response = put(client, approver, org, body, '"v0"')
        assert response.status_code == 422, field
        assert field in response.json["errors"], field
    read = client.get(policy_path(org), headers=approver.headers)
    assert read.headers["ETag"] == '"v0"'
    assert read.json["currency"] is None


def test_a_threshold_equal_to_the_budget_is_accepted(
    client: FlaskClient, approver: ApiUser
) -> None:
    body = {**POLICY, "monthly_budget": "2500.00", "approval_threshold": "2500"}
    assert put(client, approver, approver.organization_id, body, '"v0"').status_code == 200


# --- audit -------------------------------------------------------------------------------------


def test_replacing_a_policy_writes_an_audit_event(
    client: FlaskClient, admin: ApiUser, approver: ApiUser
) -> None:
    org = approver.organization_id
    assert put(client, approver, org, POLICY, '"v0"').status_code == 200
    changed = {**POLICY, "currency": "CAD"}
    assert put(client, approver, org, changed, '"v1"').status_code == 200

    response = client.get(
        "/v1/audit-events",
        query_string={"object_type": "agency_policy", "object_id": org},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    events = response.json["items"]
    assert [e["action"] for e in events] == ["policy.updated", "policy.updated"]
    first, second = events
    assert first["actor_client_id"] == approver.client_id
    assert first["organization_id"] == org
    assert first["before"] is None
    assert first["after"]["currency"] == "EUR"
    assert first["after"]["forbid_extraterritorial"] is True
    assert sorted(first["after"]["allowed_countries"]) == ["AT", "BE", "DE", "FR", "LU", "NL"]
    assert second["before"]["currency"] == "EUR"
    assert second["after"]["currency"] == "CAD"


def test_a_refused_change_writes_no_audit_event(
    client: FlaskClient, admin: ApiUser, approver: ApiUser
) -> None:
    org = approver.organization_id
    assert put(client, approver, org, POLICY, None).status_code == 428
    assert (
        put(client, approver, org, {**POLICY, "approval_threshold": "99999"}, '"v0"').status_code
        == 422
    )
    response = client.get(
        "/v1/audit-events",
        query_string={"object_type": "agency_policy", "object_id": org},
        headers=admin.headers,
    )
    assert response.status_code == 200
    assert response.json["items"] == []


# --- evaluate: the pure rule ---------------------------------------------------------------------


def facts(
    country: str = "FR",
    exposure: tuple[str, ...] = (),
    certifications: frozenset[str] = frozenset({"secnumcloud", "hds"}),
    currency: str = "EUR",
) -> OfferFacts:
    return OfferFacts(country, exposure, certifications, currency)


def codes(reasons: list[Reason]) -> list[str]:
    return [reason.code for reason in reasons]


def test_no_rules_allow_everything() -> None:
    exposed = facts(country="US", exposure=("US_CLOUD_ACT",), certifications=frozenset())
    assert evaluate(SovereigntyRules(), exposed) == []
    assert evaluate(SovereigntyRules(), exposed, policy_currency=None) == []


def test_each_missing_certification_is_a_reason_in_scheme_order() -> None:
    rules = SovereigntyRules(required_certifications=frozenset({"secnumcloud", "bsi-c5", "hds"}))
    reasons = evaluate(rules, facts(certifications=frozenset({"hds", "iso27001"})))
    assert codes(reasons) == ["certification_missing", "certification_missing"]
    assert "bsi-c5" in reasons[0].detail and "secnumcloud" in reasons[1].detail
    assert evaluate(rules, facts(certifications=frozenset({"secnumcloud", "bsi-c5", "hds"}))) == []


def test_a_country_outside_the_list_is_a_reason() -> None:
    rules = SovereigntyRules(allowed_countries=frozenset({"DE", "FR"}))
    [reason] = evaluate(rules, facts(country="CA"))
    assert reason.code == "country_not_allowed"
    assert "CA" in reason.detail and "DE, FR" in reason.detail
    assert evaluate(rules, facts(country="FR")) == []
    assert evaluate(rules, facts(country="DE")) == []


def test_extraterritorial_exposure_is_a_reason_only_when_forbidden() -> None:
    exposed = facts(exposure=("US_CLOUD_ACT", "FISA_702"))
    [reason] = evaluate(SovereigntyRules(forbid_extraterritorial=True), exposed)
    assert reason.code == "extraterritorial_exposure"
    assert "US_CLOUD_ACT" in reason.detail and "FISA_702" in reason.detail
    assert evaluate(SovereigntyRules(forbid_extraterritorial=False), exposed) == []
    assert evaluate(SovereigntyRules(forbid_extraterritorial=True), facts()) == []


def test_a_budget_currency_other_than_the_offers_is_a_reason() -> None:
    [reason] = evaluate(SovereigntyRules(), facts(currency="CAD"), policy_currency="EUR")
    assert reason.code == "currency_mismatch"
    assert "CAD" in reason.detail and "EUR" in reason.detail
    assert evaluate(SovereigntyRules(), facts(currency="EUR"), policy_currency="EUR") == []
    assert evaluate(SovereigntyRules(), facts(currency="CAD"), policy_currency=None) == []


def test_every_reason_at_once_in_a_stable_order() -> None:
    rules = SovereigntyRules(
        required_certifications=frozenset({"secnumcloud", "hds"}),
        allowed_countries=frozenset({"FR"}),
        forbid_extraterritorial=True,
    )
    offer = facts(
        country="CA", exposure=("US_CLOUD_ACT",), certifications=frozenset(), currency="CAD"
    )
    assert codes(evaluate(rules, offer, policy_currency="EUR")) == [
        "certification_missing",
        "certification_missing",
        "country_not_allowed",
        "extraterritorial_exposure",
        "currency_mismatch",
    ]


SCHEME_SETS = st.frozensets(st.sampled_from(["secnumcloud", "hds", "iso27001", "bsi-c5"]))
COUNTRIES = st.sampled_from(["FR", "DE", "CA", "US", "BE"])


@given(
    required=SCHEME_SETS,
    allowed=st.frozensets(COUNTRIES),
    forbid=st.booleans(),
    country=COUNTRIES,
    exposure=st.lists(st.sampled_from(["US_CLOUD_ACT", "FISA_702"]), max_size=2, unique=True),
    held=SCHEME_SETS,
    currency=st.sampled_from(["EUR", "CAD"]),
    policy_currency=st.sampled_from([None, "EUR", "CAD"]),
)
def test_property_reasons_follow_the_rules(
    required: frozenset[str],
    allowed: frozenset[str],
    forbid: bool,
    country: str,
    exposure: list[str],
    held: frozenset[str],
    currency: str,
    policy_currency: str | None,
) -> None:
    rules = SovereigntyRules(required, allowed, forbid)
    offer = OfferFacts(country, tuple(exposure), held, currency)
    want = ["certification_missing"] * len(required - held)
    if allowed and country not in allowed:
        want.append("country_not_allowed")
    if forbid and exposure:
        want.append("extraterritorial_exposure")
    if policy_currency is not None and policy_currency != currency:
        want.append("currency_mismatch")
    assert sorted(codes(evaluate(rules, offer, policy_currency=policy_currency))) == sorted(want)
