"""Schemathesis over every operation of the committed `openapi.yaml`, in-process, with a valid
admin token (or, for operations admins may not call, a token of a role that may) and a fixed
seed: no server error, no response that breaks the schema, no invalid
request accepted, no valid request refused.

Documented refusals are taught to its checks: a missing `If-Match` answers 428 (RFC 6585), a
cursor this API never issued is refused on `cursor`, an Idempotency-Key reused with another
body is 422, a price bound without its currency is 422, pushed usage must be of the caller's
own machines and within its time window, a billing run's period must have started, the
token endpoint answers bad credentials in RFC 6749's 400/401, only Stripe signs webhooks, a
trusted issuer's keys must be real public keys, a signed statement must verify, an offer's
specs are those of its kind and a billing profile's SIRENE number has 9 or 14 digits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import ApiUser, MakeUser

SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"
KIND_OF_ROLE = {
    "buyer": "agency",
    "approver": "agency",
    "provider": "provider",
    "finance": "consortium",
    "assessor": "consortium",
}

pytestmark = pytest.mark.slow

config = SchemathesisConfig.from_dict(
    {
        "seed": 20261122,
        "checks": {
            # 428 for If-Match (RFC 6585); 403 when the role check refuses the call first.
            "missing_required_header": {"expected-statuses": [400, 403, 422, 428]},
            "positive_data_acceptance": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_path(SPEC_FILE, config=config)


def _documented_refusal(response, case) -> bool:
    """Refusals of schema-valid requests that the contract itself prescribes."""
    if case.path == "/oauth/token":
        return response.status_code in (400, 401)  # RFC 6749: bad client or grant
    if case.path == "/v1/webhooks/stripe":
        # Only Stripe can sign an event (and Stripe is not configured here).
        return response.status_code in (400, 404)
    if response.status_code == 412:  # a well-formed but stale If-Match
        return True
    if response.status_code == 422:
        body = response.json()
        if body.get("code") == "idempotency_key_reused":  # one key, two different bodies
            return True
        if case.path == "/v1/offers" and set(body.get("errors", {})) == {"currency"}:
            return True  # max_monthly_price needs a currency: prices in two don't compare
        if case.path.startswith("/v1/offers") and all(
            key.split(".")[0] == "specs" for key in body.get("errors", {})
        ):
            return True  # each kind has its own specs (`kind`, or the offer's, decides)
        if case.path.startswith("/v1/providers") and all(
            key.split(".")[0] in {"adapter", "adapter_config", "credentials"}
            for key in body.get("errors", {})
        ):
            return True  # each adapter names its own settings: the installed plugins decide
        if case.path == "/v1/usage" and all(
            key.split(".")[-1] in {"resource_id", "start", "end"} for key in body.get("errors", {})
        ):
            return True  # usage of your own machines, in the lookback window, within a month
        if case.path == "/v1/billing-runs" and set(body.get("errors", {})) == {"period"}:
            return True  # a period that has started (and not before 2000)
        if case.path.endswith("/billing-profile") and set(body.get("errors", {})) == {"legal_id"}:
            return True  # in the SIRENE register (scheme 0002), 9 or 14 digits
        if case.path.startswith("/v1/trusted-issuers") and set(body.get("errors", {})) == {"jwks"}:
            return True  # a key set of real public keys: importable, with their own kids
        if case.path.endswith("/evidence") and (
            body.get("code") == "statement_rejected"  # a statement must verify
            or set(body.get("errors", {})) == {"valid_until"}  # and a validity end its start
        ):
            return True
        return set(body.get("errors", {})) == {"cursor"}  # a cursor we never issued
    return False


@schemathesis.check
def valid_data_accepted(ctx, response, case):
    """`positive_data_acceptance`, minus the documented refusals above."""
    if _documented_refusal(response, case):
        return None
    return positive_data_acceptance(ctx, response, case)


@pytest.fixture
def role_user(make_user: MakeUser) -> Callable[[str], ApiUser]:
    """`role_user(role)`: a client holding `role`, made on first use; the operation's later
    examples reuse it, as they reuse `admin` (fixtures are set up once per operation)."""
    made: dict[str, ApiUser] = {}

    def get(role: str) -> ApiUser:
        if role not in made:
            made[role] = make_user(KIND_OF_ROLE[role], [role])
        return made[role]

    return get


@schema.parametrize()
@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_operation_conforms(case, app, admin: ApiUser, role_user: Callable[[str], ApiUser]) -> None:
    # A fresh app and database for every operation.
    case.operation.schema.app = case.operation.app = app
    # The admin token, unless the operation is for another role (then a client holding it),
    # so that fuzzing reaches past the role check.
    roles = case.operation.definition.raw.get("x-roles", ["admin"])
    user = admin
    if "admin" not in roles and "any" not in roles:
        user = role_user(roles[0])
    case.call_and_validate(
        headers=user.headers,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_accepted],
    )
