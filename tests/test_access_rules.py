"""The access rules live in `broker.access`: services ask named questions, never compare roles
themselves, and every named check answers the same for an API client and for a person."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest

from broker import access
from broker.auth.identity import Caller
from broker.models import OrganizationKind, Provider, Role

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "broker" / "services"
CALLER_ATTRIBUTES = {"roles", "is_admin", "is_consortium"}

# `.roles` of objects that are not the caller: the roles stored on a membership or carried by
# an invitation (what was *granted*), read and written by the services that grant them.
GRANTED_ROLES = {
    ("invitations.py", "membership"): "the roles a person holds in an organization, extended",
    ("invitations.py", "invitation"): "the roles an invitation grants, applied and shown",
    ("members.py", "membership"): "the roles an approver or admin grants a member",
    ("people.py", "current"): "a person's membership, whose stored roles make their Caller",
    ("people.py", "membership"): "a person's memberships, listed with their roles",
}


def _is_role_member(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Role"
    )


def _violations(name: str, source: str) -> list[str]:
    """Role tests spelled inline in one service module (one entry a line): `Role.X` inside a
    comparison or a set intersection, and the caller's `.roles`, `.is_admin` or
    `.is_consortium` (the named checks `access.is_admin(...)` are what services should use)."""
    found: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        role_test = isinstance(node, ast.Compare) or (
            isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd)
        )
        if role_test and any(_is_role_member(inner) for inner in ast.walk(node)):
            found.setdefault(node.lineno, ast.unparse(node))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in CALLER_ATTRIBUTES
            and ast.unparse(node.value) != "access"
            and (name, ast.unparse(node.value)) not in GRANTED_ROLES
        ):
            found.setdefault(node.lineno, ast.unparse(node))
    return [f"{name}:{line}: {text}" for line, text in sorted(found.items())]


def test_services_never_spell_a_role_check_inline() -> None:
    found = []
    for path in sorted(SERVICES.glob("*.py")):
        found += _violations(path.name, path.read_text())
    assert found == []


def test_the_checker_sees_inline_role_checks() -> None:
    sample = (
        "a = Role.ADMIN in caller.roles\n"
        "b = caller.roles & {Role.FINANCE}\n"
        "c = caller.is_admin\n"
        "d = who.is_consortium\n"
        "e = role == Role.BUYER\n"
        "ok = frozenset({Role.BUYER})\n"
        "fine = access.is_admin(caller)\n"
    )
    assert [v.split(":")[1] for v in _violations("orders.py", sample)] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


def test_the_checker_allows_granted_roles_only_where_listed() -> None:
    assert _violations("members.py", "x = membership.roles\n") == []
    assert _violations("orders.py", "x = membership.roles\n") != []


# --- the named checks, for both kinds of caller ---------------------------------------------

OWN = uuid.uuid4()
OTHER = uuid.uuid4()  # a person's further membership; never an API client's
ELSEWHERE = uuid.uuid4()


def _caller(kind: str, *roles: Role, organization_kind: OrganizationKind) -> Caller:
    if kind == "client":
        return Caller("client-1", OWN, organization_kind, frozenset(roles))
    user_id = uuid.uuid4()
    return Caller(
        f"person:{user_id}",
        OWN,
        organization_kind,
        frozenset(roles),
        other_organization_ids=frozenset({OTHER}),
        user_id=user_id,
    )


KINDS = ["client", "person"]
AGENCY = OrganizationKind.AGENCY
CONSORTIUM = OrganizationKind.CONSORTIUM
PROVIDER_KIND = OrganizationKind.PROVIDER


def _provider(organization_id: uuid.UUID) -> Provider:
    return Provider(organization_id=organization_id)


@pytest.mark.parametrize("kind", KINDS)
def test_roles_alone(kind: str) -> None:
    admin = _caller(kind, Role.ADMIN, organization_kind=CONSORTIUM)
    assessor = _caller(kind, Role.ASSESSOR, organization_kind=CONSORTIUM)
    finance = _caller(kind, Role.FINANCE, organization_kind=CONSORTIUM)
    buyer = _caller(kind, Role.BUYER, organization_kind=AGENCY)
    operator = _caller(kind, Role.PROVIDER, organization_kind=PROVIDER_KIND)

    assert [access.is_admin(c) for c in (admin, assessor, finance, buyer)] == [
        True,
        False,
        False,
        False,
    ]
    assert [access.is_assessor_or_admin(c) for c in (admin, assessor, finance)] == [
        True,
        True,
        False,
    ]
    assert access.is_assessor_only(assessor)
    assert not access.is_assessor_only(
        _caller(kind, Role.ASSESSOR, Role.ADMIN, organization_kind=CONSORTIUM)
    )
    assert [access.sees_every_agency(c) for c in (admin, finance, assessor, buyer)] == [
        True,
        True,
        False,
        False,
    ]
    assert access.is_operator(operator) and not access.is_operator(buyer)
    assert access.is_approver(_caller(kind, Role.APPROVER, organization_kind=AGENCY))
    assert not access.is_approver(buyer)
    assert access.has_any_role(buyer, Role.APPROVER, Role.BUYER)
    assert not access.has_any_role(buyer, Role.APPROVER)
    assert not access.has_any_role(buyer)
    assert access.role_names(
        _caller(kind, Role.BUYER, Role.APPROVER, organization_kind=AGENCY)
    ) == [
        "approver",
        "buyer",
    ]
    assert access.missing_roles(buyer, Role.ASSESSOR, Role.ADMIN) == (
        "This needs the role assessor or admin; your access token has the role buyer."
    )


@pytest.mark.parametrize("kind", KINDS)
def test_organization_rules_hold_for_the_organization_acted_for_only(kind: str) -> None:
    buyer = _caller(kind, Role.BUYER, organization_kind=AGENCY)
    approver = _caller(kind, Role.APPROVER, organization_kind=AGENCY)
    admin = _caller(kind, Role.ADMIN, organization_kind=CONSORTIUM)
    finance = _caller(kind, Role.FINANCE, organization_kind=CONSORTIUM)

    # A person's other memberships do not count: their roles hold where they act.
    for organization_id, own in ((OWN, True), (OTHER, False), (ELSEWHERE, False)):
        assert access.acts_for(buyer, organization_id) is own
        assert access.sees_organization(buyer, organization_id) is own
        assert access.holds_role_in(approver, organization_id, Role.APPROVER) is own
        assert access.may_manage_agency(approver, organization_id) is own
        assert access.may_manage_agency(buyer, organization_id) is False
        assert access.may_read_agency(buyer, organization_id) is own
        assert access.sees_organization(admin, organization_id) is True
        assert access.may_manage_agency(admin, organization_id) is True
        assert access.may_read_agency(finance, organization_id) is True
        assert access.may_manage_agency(finance, organization_id) is False
    assert not access.holds_role_in(buyer, OWN, Role.APPROVER)
    # An object of the system (no organization) is the admins' only.
    assert not access.sees_organization(buyer, None)
    assert access.sees_organization(admin, None)


@pytest.mark.parametrize("kind", KINDS)
def test_provider_rules(kind: str) -> None:
    operator = _caller(kind, Role.PROVIDER, organization_kind=PROVIDER_KIND)
    admin = _caller(kind, Role.ADMIN, organization_kind=CONSORTIUM)
    assessor = _caller(kind, Role.ASSESSOR, organization_kind=CONSORTIUM)
    buyer = _caller(kind, Role.BUYER, organization_kind=AGENCY)
    own, further, foreign = _provider(OWN), _provider(OTHER), _provider(ELSEWHERE)

    # A person's roles hold in the organization they act for, not in their other ones.
    assert access.operates(operator, own)
    assert not access.operates(operator, further)
    assert not access.operates(operator, foreign)
    assert not access.operates(buyer, own) and not access.operates(admin, foreign)

    assert access.may_administer_provider(admin, foreign)
    assert access.may_administer_provider(operator, own)
    assert not access.may_administer_provider(operator, foreign)
    assert not access.may_administer_provider(assessor, foreign)

    assert access.sees_all_evidence(assessor, foreign)
    assert access.sees_all_evidence(operator, own)
    assert not access.sees_all_evidence(operator, foreign)
    assert not access.sees_all_evidence(buyer, own)


@pytest.mark.parametrize("kind", KINDS)
def test_the_consortium_vouches_except_for_a_provider_it_belongs_to(kind: str) -> None:
    assessor = _caller(kind, Role.ASSESSOR, organization_kind=CONSORTIUM)
    operator = _caller(kind, Role.PROVIDER, organization_kind=PROVIDER_KIND)
    assert access.vouches(assessor, _provider(ELSEWHERE))
    assert not access.vouches(assessor, _provider(OWN))
    assert access.vouches(assessor, _provider(OTHER)) is (kind == "client")
    assert not access.vouches(operator, _provider(ELSEWHERE))
    assert access.vouches(None, _provider(OWN))
