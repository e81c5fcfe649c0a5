"""The authorization matrix: every operation × role × tenant, driven by `openapi.yaml`, for
API clients (a bearer token) and people (a browser session) alike.

Every operation of the committed spec documents the roles it admits (`x-roles`, written by
`Blueprint.auth`), so an operation added later joins the matrix by itself:

- a client holding only a role the operation does not admit is refused with 403 `forbidden`
  and the request changes nothing. The role check comes first: path ids are random (no
  lookup answers 404 first), bodies are `{}` (no validation answers 422 first), `If-Match`
  is never sent (no 428 first), and `Idempotency-Key` makes no difference;
- a request without a token is refused with 401 and a `WWW-Authenticate` challenge;
- a client holding an admitted role gets past the role check (anything but 403), never a 500.

These cases share one app, database and client per role (a fresh app per case would cost
more than the cases themselves); refused requests change nothing, so sharing is safe.

Then tenants: the billing objects (usage records, invoices, billing profiles) of one agency
or provider are invisible to the others, and finance sees them all.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from broker import create_app
from broker.db import Database
from broker.migrate import upgrade
from broker.models import Base, Membership, Organization, OrganizationKind, Role, User
from broker.models.organizations import ROLES_BY_KIND
from broker.services import organizations, people
from tests.billing_fixtures import Ledger, make_ledger
from tests.conftest import TEST_SELLER, ApiUser, MakeUser, fetch_token
from tests.helpers import PROBLEM, all_pages, problem
from tests.test_provisioning import Market, make_market, place_order

SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_FILE.read_text())
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# The operations anyone may call without a token; every other one needs a bearer token.
PUBLIC = {
    "GET /.well-known/jwks.json",
    "GET /.well-known/oauth-authorization-server",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /openapi.yaml",
    "POST /oauth/token",
    "POST /v1/webhooks/stripe",  # Stripe signs its events instead
}
# Each role is held by clients of exactly one kind of organization.
KIND_OF_ROLE = {role.value: kind.value for kind, roles in ROLES_BY_KIND.items() for role in roles}
ROLES = tuple(role.value for role in Role)


@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str
    roles: tuple[str, ...]  # `x-roles`: the roles admitted, or ("any",)
    has_body: bool
    headers: tuple[str, ...]  # the header parameters it documents

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    def url(self) -> str:
        """The path with a random UUID for each path parameter."""
        return re.sub(r"\{[^}/]+\}", lambda _: str(uuid.uuid4()), self.path)

    @property
    def admitted(self) -> tuple[str, ...]:
        return ROLES if "any" in self.roles else self.roles

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(role for role in ROLES if role not in self.admitted)


def _read_spec() -> tuple[list[Operation], set[str]]:
    """The operations needing a bearer token, and the names of the others."""
    protected: list[Operation] = []
    public: set[str] = set()
    for path, item in SPEC["paths"].items():
        for method in HTTP_METHODS:
            if method not in item:
                continue
            definition = item[method]
            if {"bearerAuth": []} not in (definition.get("security") or []):
                public.add(f"{method.upper()} {path}")
                continue
            parameters = [*item.get("parameters", []), *definition.get("parameters", [])]
            protected.append(
                Operation(
                    method.upper(),
                    path,
                    tuple(definition.get("x-roles") or ()),
                    "requestBody" in definition,
                    tuple(p["name"] for p in parameters if p.get("in") == "header"),
                )
            )
    return protected, public


OPERATIONS, PUBLIC_IN_SPEC = _read_spec()
REFUSED = [
    pytest.param(operation, role, id=f"{operation} as {role}")
    for operation in OPERATIONS
    for role in operation.refused
]
REFUSED_WITH_IDEMPOTENCY_KEY = [
    pytest.param(operation, role, id=f"{operation} as {role}")
    for operation in OPERATIONS
    if "Idempotency-Key" in operation.headers
    for role in operation.refused
]
ADMITTED = [
    pytest.param(operation, role, id=f"{operation} as {role}")
    for operation in OPERATIONS
    for role in operation.admitted
]
EVERY_OPERATION = [pytest.param(operation, id=str(operation)) for operation in OPERATIONS]


def call(
    client: FlaskClient, operation: Operation, headers: dict[str, str], *, key: bool = True
) -> Any:
    """`operation` on random ids, `{}` for a body, and a fresh `Idempotency-Key` if it takes
    one (unless `key` is false)."""
    headers = dict(headers)
    if key and "Idempotency-Key" in operation.headers:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    if operation.has_body:
        return client.open(operation.url(), method=operation.method, headers=headers, json={})
    return client.open(operation.url(), method=operation.method, headers=headers)


def json_of(response: Any) -> Any:
    """The JSON body of `response` (which must have one)."""
    body = response.get_json()
    assert body is not None, response.get_data(as_text=True)
    return body


def snapshot(db: Database) -> dict[str, list[str]]:
    """Every row of every table (to tell that a refused request changed nothing), but for
    browser sessions, which note when they were last used."""
    with db.session(read_only=True) as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(select(table)))
            for table in Base.metadata.sorted_tables
            if table.name != "browser_sessions"
        }


# One app for the whole matrix -------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix_database_url(
    db_kind: str,
    pytestconfig: pytest.Config,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[str]:
    """A migrated database of its own (on PostgreSQL, a second database on the test server:
    the per-test fixtures empty theirs after each test)."""
    if db_kind != "postgresql":
        path = tmp_path_factory.mktemp("matrix") / "broker.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server = Database(pytestconfig.broker_pg_url)  # type: ignore[attr-defined]
    name = f"broker_matrix_{uuid.uuid4().hex[:12]}"
    autocommit = server.engine.execution_options(isolation_level="AUTOCOMMIT")
    with autocommit.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(str(server.engine.url)).set(database=name).render_as_string(False)
    try:
        upgrade(url)
        yield url
    finally:
        with autocommit.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@pytest.fixture(scope="module")
def matrix_app(
    matrix_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    signing_key_pem: str,
    credential_key: str,
) -> Iterator[Flask]:
    root = tmp_path_factory.mktemp("matrix-app")
    application = create_app(
        {
            "DATABASE_URL": matrix_database_url,
            "INSTANCE_PATH": str(root / "instance"),
            "SIGNING_KEY": signing_key_pem,
            "CREDENTIAL_KEYS": credential_key,
            "PROVIDER_STATE_DIR": str(root / "providers"),
            "PROVIDER_TIMEOUT": 2.0,
            "TESTING": True,
            "SELLER": TEST_SELLER,
            "JSON_LOGS": False,
            "LOG_LEVEL": "WARNING",
            "IDEMPOTENCY_WAIT_SECONDS": 30.0,
        }
    )
    yield application
    application.extensions["broker.db"].dispose()


@pytest.fixture(scope="module")
def matrix_client(matrix_app: Flask) -> FlaskClient:
    return matrix_app.test_client()


@pytest.fixture(scope="module")
def matrix_db(matrix_app: Flask) -> Database:
    database: Database = matrix_app.extensions["broker.db"]
    return database


@pytest.fixture(scope="module")
def user_of_role(matrix_client: FlaskClient, matrix_db: Database) -> dict[str, ApiUser]:
    """A client holding that role only, of an organization of its own, per role."""
    users = {}
    for role in ROLES:
        with matrix_db.transaction() as session:
            organization = organizations.create_organization(
                session,
                None,
                name=f"{role} {uuid.uuid4().hex[:8]}",
                kind=OrganizationKind(KIND_OF_ROLE[role]),
            )
            issued = organizations.create_client(
                session, None, organization.id, name="matrix client", roles=[Role(role)]
            )
            client_id, secret = issued.client.client_id, issued.secret
            organization_id = str(organization.id)
        token = fetch_token(matrix_client, client_id, secret)
        users[role] = ApiUser(client_id, secret, organization_id, [role], token)
    return users


Browser = tuple[FlaskClient, dict[str, str]]  # a client (its cookies) and the headers to send


@pytest.fixture(scope="module")
def person_of_role(
    matrix_app: Flask, matrix_db: Database, user_of_role: dict[str, ApiUser]
) -> dict[str, Browser]:
    """A person holding that role only, in the organization of the client of that role, signed
    in: their browser (the session cookie) and its CSRF token."""
    browsers = {}
    for role, client in user_of_role.items():
        with matrix_db.transaction() as session:
            organization = session.get_one(Organization, uuid.UUID(client.organization_id))
            user = User(
                id=uuid.uuid4(),
                email=f"{role}@matrix.example",
                email_key=f"{role}@matrix.example",
                display_name=f"Matrix {role}",
                language="fr",
            )
            session.add(user)
            session.add(Membership(user_id=user.id, organization_id=organization.id, roles=[role]))
            session.flush()
            row, token = people.open_session(
                session, people.SignedIn(user, organization), None, None, datetime.now(UTC)
            )
            csrf = row.csrf_token
        browser = matrix_app.test_client()
        browser.set_cookie(people.SESSION_COOKIE, token)
        browsers[role] = (browser, {people.CSRF_HEADER: csrf})
    return browsers


@pytest.fixture(params=["client", "person"])
def browser_of_role(
    request: pytest.FixtureRequest,
    matrix_client: FlaskClient,
    user_of_role: dict[str, ApiUser],
    person_of_role: dict[str, Browser],
) -> dict[str, Browser]:
    """The same rules for API clients (a bearer token) and people (a browser session)."""
    if request.param == "person":
        return person_of_role
    return {role: (matrix_client, user.headers) for role, user in user_of_role.items()}


# The spec itself ------------------------------------------------------------------------------


def test_only_the_known_public_operations_go_without_a_token() -> None:
    assert PUBLIC_IN_SPEC == PUBLIC, "an operation without bearer authentication"
    assert len(OPERATIONS) >= 40
    assert set(KIND_OF_ROLE) == set(ROLES)
    for operation in OPERATIONS:
        assert operation.roles, f"{operation} documents no x-roles"
        assert operation.roles == ("any",) or set(operation.roles) <= set(ROLES), operation


# Roles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("operation", "role"), REFUSED)
def test_a_role_not_admitted_is_refused_and_changes_nothing(
    matrix_db: Database,
    browser_of_role: dict[str, Browser],
    operation: Operation,
    role: str,
) -> None:
    browser, headers = browser_of_role[role]
    before = snapshot(matrix_db)
    response = call(browser, operation, headers)
    problem(response, 403, "forbidden")
    assert snapshot(matrix_db) == before


@pytest.mark.parametrize(("operation", "role"), REFUSED_WITH_IDEMPOTENCY_KEY)
def test_a_role_not_admitted_is_refused_without_an_idempotency_key_too(
    matrix_client: FlaskClient,
    matrix_db: Database,
    user_of_role: dict[str, ApiUser],
    operation: Operation,
    role: str,
) -> None:
    before = snapshot(matrix_db)
    response = call(matrix_client, operation, user_of_role[role].headers, key=False)
    problem(response, 403, "forbidden")  # not 400 idempotency_key_required
    assert snapshot(matrix_db) == before


@pytest.mark.parametrize("operation", EVERY_OPERATION)
def test_no_token_is_401_with_a_challenge_and_changes_nothing(
    matrix_client: FlaskClient, matrix_db: Database, operation: Operation
) -> None:
    before = snapshot(matrix_db)
    response = call(matrix_client, operation, {})
    problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    assert snapshot(matrix_db) == before


@pytest.mark.parametrize(("operation", "role"), ADMITTED)
def test_an_admitted_role_gets_past_the_role_check(
    browser_of_role: dict[str, Browser],
    operation: Operation,
    role: str,
) -> None:
    browser, headers = browser_of_role[role]
    response = call(browser, operation, headers)
    assert response.status_code != 403, response.get_data(as_text=True)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.mimetype == PROBLEM


# Tenants --------------------------------------------------------------------------------------


def t(day: int, hour: int = 0, month: int = 3) -> datetime:
    return datetime(2030, month, day, hour, tzinfo=UTC)


@dataclasses.dataclass
class Tenants:
    """Two agencies (A, B), each with a buyer, an approver and a machine, on two providers
    (1 ran A's machine, 2 B's for a few hours), with pushed and metered usage and March
    invoices."""

    ledger: Ledger
    admin: ApiUser
    buyer_a: ApiUser
    approver_a: ApiUser
    buyer_b: ApiUser
    approver_b: ApiUser
    operator_1: ApiUser
    operator_2: ApiUser
    provider_1: str
    provider_2: str
    machine_a: str
    machine_b: str

    @property
    def client(self) -> FlaskClient:
        return self.ledger.client

    @property
    def finance(self) -> ApiUser:
        return self.ledger.finance

    def agency(self, name: str) -> tuple[ApiUser, ApiUser]:
        return (self.buyer_a, self.approver_a) if name == "A" else (self.buyer_b, self.approver_b)


def _start(ledger: Ledger, market: Market, when: datetime, name: str) -> str:
    ledger.at(when)
    order_id = place_order(ledger.client, market, name=name)
    ledger.run_jobs()
    listing = ledger.client.get(f"/v1/resources?order_id={order_id}", headers=market.buyer.headers)
    (resource,) = json_of(listing)["items"]
    assert resource["state"] == "active"
    return str(resource["id"])


def _push(client: FlaskClient, operator: ApiUser, machine: str) -> None:
    record = {
        "record_id": f"vcpu-{machine}",
        "resource_id": machine,
        "metric": "vcpu_hour",
        "quantity": "2",
        "start": "2030-03-02T10:00:00Z",
        "end": "2030-03-02T11:00:00Z",
    }
    response = client.post(
        "/v1/usage",
        json={"records": [record]},
        headers={**operator.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert json_of(response)["created"] == 1


@pytest.fixture
def tenants(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> Tenants:
    ledger = make_ledger(app, client, db, admin, make_user)
    buyer_a = ledger.market.buyer
    buyer_b = make_user("agency", ["buyer"])
    market_2 = make_market(app, client, admin, make_user, buyer=buyer_b)
    provider_2 = json_of(client.get(f"/v1/providers/{market_2.provider_id}", headers=admin.headers))
    operator_2 = make_user("provider", ["provider"], organization_id=provider_2["organization_id"])
    machine_a = _start(ledger, ledger.market, t(2, 9), "a-web")
    machine_b = _start(ledger, market_2, t(2, 9), "b-web")
    ledger.at(t(2, 12))
    _push(client, ledger.operator, machine_a)
    _push(client, operator_2, machine_b)
    # a few metered hours each (not a month of them to read back)
    ledger.act(machine_a, "terminate", t(2, 13), by=buyer_a)
    ledger.act(machine_b, "terminate", t(2, 13), by=buyer_b)
    ledger.bill("2030-03", when=t(1, 1, month=4))  # meters March too
    return Tenants(
        ledger,
        admin,
        buyer_a,
        make_user("agency", ["approver"], organization_id=buyer_a.organization_id),
        buyer_b,
        make_user("agency", ["approver"], organization_id=buyer_b.organization_id),
        ledger.operator,
        operator_2,
        ledger.market.provider_id,
        market_2.provider_id,
        machine_a,
        machine_b,
    )


def same_problem(response: Any, other: Any) -> None:
    """Two responses with the same problem (but for their request ids)."""
    assert response.status_code == other.status_code
    assert response.mimetype == other.mimetype == PROBLEM
    body, other_body = dict(response.json), dict(other.json)
    body.pop("request_id", None)
    other_body.pop("request_id", None)
    assert body == other_body


def test_an_agency_reads_its_own_invoices_only_and_finance_all(tenants: Tenants) -> None:
    client = tenants.client
    invoice = {
        name: {
            item["id"]
            for item in all_pages(
                client, tenants.finance, f"/v1/invoices?agency_id={user.organization_id}"
            )
        }
        for name, user in (("A", tenants.buyer_a), ("B", tenants.buyer_b))
    }
    assert all(len(ids) == 1 for ids in invoice.values()), invoice
    everything = invoice["A"] | invoice["B"]
    for user in (tenants.finance, tenants.admin):
        assert {item["id"] for item in all_pages(client, user, "/v1/invoices")} == everything
        for invoice_id in everything:
            assert client.get(f"/v1/invoices/{invoice_id}", headers=user.headers).status_code == 200

    for own, other in (("A", "B"), ("B", "A")):
        (other_id,) = invoice[other]
        (own_id,) = invoice[own]
        other_agency = tenants.agency(other)[0].organization_id
        for user in tenants.agency(own):
            assert {item["id"] for item in all_pages(client, user, "/v1/invoices")} == {own_id}
            assert all_pages(client, user, f"/v1/invoices?agency_id={other_agency}") == []
            mine = client.get(f"/v1/invoices/{own_id}", headers=user.headers)
            assert mine.status_code == 200 and json_of(mine)["agency_id"] == user.organization_id
            theirs = client.get(f"/v1/invoices/{other_id}", headers=user.headers)
            problem(theirs, 404, "not_found")
            same_problem(theirs, client.get(f"/v1/invoices/{uuid.uuid4()}", headers=user.headers))

    for operator in (tenants.operator_1, tenants.operator_2):
        problem(client.get("/v1/invoices", headers=operator.headers), 403, "forbidden")
        for invoice_id in everything:
            response = client.get(f"/v1/invoices/{invoice_id}", headers=operator.headers)
            problem(response, 403, "forbidden")


def test_usage_is_seen_by_its_agency_its_provider_and_finance_only(tenants: Tenants) -> None:
    client = tenants.client

    def usage(user: ApiUser, query: str = "") -> list[dict[str, Any]]:
        return all_pages(client, user, f"/v1/usage{query}")

    everything = usage(tenants.finance)
    assert {item["resource_id"] for item in everything} == {tenants.machine_a, tenants.machine_b}
    assert {item["source"] for item in everything} == {
        "push",
        "broker",
    }  # pushed, and metered by the broker
    assert usage(tenants.admin) == everything

    own = {"A": tenants.machine_a, "B": tenants.machine_b}
    for name, machine in own.items():
        theirs = own["B" if name == "A" else "A"]
        expected = [item for item in everything if item["resource_id"] == machine]
        for user in tenants.agency(name):
            assert usage(user) == expected
            assert {item["agency_id"] for item in expected} == {user.organization_id}
            assert usage(user, f"?resource_id={theirs}") == []

    for operator, provider, machine in (
        (tenants.operator_1, tenants.provider_1, tenants.machine_a),
        (tenants.operator_2, tenants.provider_2, tenants.machine_b),
    ):
        expected = [item for item in everything if item["provider_id"] == provider]
        assert expected and {item["resource_id"] for item in expected} == {machine}
        assert usage(operator) == expected

    # nor can a provider's operator report usage of another provider's machine
    response = client.post(
        "/v1/usage",
        json={
            "records": [
                {
                    "record_id": "foreign",
                    "resource_id": tenants.machine_b,
                    "metric": "vcpu_hour",
                    "quantity": "1",
                    "start": "2030-03-02T12:00:00Z",
                    "end": "2030-03-02T13:00:00Z",
                }
            ]
        },
        headers={**tenants.operator_1.headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert "records.0.resource_id" in problem(response, 422, "validation_failed")["errors"]
    assert usage(tenants.finance) == everything


def test_an_agency_reads_its_own_billing_profile_only_and_finance_all(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser
) -> None:
    finance = make_user("consortium", ["finance"], organization_id=admin.organization_id)
    a_buyer = make_user("agency", ["buyer"])
    a_approver = make_user("agency", ["approver"], organization_id=a_buyer.organization_id)
    b_buyer = make_user("agency", ["buyer"])
    provider = make_user("provider", ["provider"])

    def profile(user: ApiUser, organization_id: str) -> Any:
        path = f"/v1/organizations/{organization_id}/billing-profile"
        return client.get(path, headers=user.headers)

    for user in (finance, admin):
        for agency in (a_buyer, b_buyer):
            response = profile(user, agency.organization_id)
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.json["organization_id"] == agency.organization_id
    for user in (a_buyer, a_approver):
        own = profile(user, a_buyer.organization_id)
        assert own.status_code == 200 and own.json["organization_id"] == user.organization_id
        unknown = profile(user, str(uuid.uuid4()))
        problem(unknown, 404, "not_found")
        for other in (b_buyer, provider, admin):  # another agency; not an agency at all
            response = profile(user, other.organization_id)
            problem(response, 404, "not_found")
            same_problem(response, unknown)
    problem(profile(provider, provider.organization_id), 403, "forbidden")
