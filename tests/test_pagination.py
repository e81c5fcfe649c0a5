"""Keyset pagination of list endpoints, through `GET /v1/organizations` (and the audit log).

Pages follow `next_cursor` until it is null; every item appears exactly once, in
`(created_at, id)` order, whatever the page size; rows inserted while a client pages through
never repeat or hide what it has seen; cursors that the API did not issue are refused with a
422 problem, never a 500.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from broker.db import Database
from broker.models import Organization, OrganizationKind
from broker.services import organizations
from broker.services.pagination import DEFAULT_LIMIT, MAX_LIMIT
from tests.conftest import ApiUser

PATH = "/v1/organizations"
PROBLEM = "application/problem+json"
CREATED = 137
KINDS = [OrganizationKind.AGENCY, OrganizationKind.PROVIDER, OrganizationKind.CONSORTIUM]


def _b64(raw: str | bytes) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _create(db: Database, names: list[str]) -> None:
    with db.transaction() as session:
        for index, name in enumerate(names):
            organizations.create_organization(
                session, None, name=name, kind=KINDS[index % len(KINDS)]
            )


def _stored_order(db: Database, kind: str | None = None) -> list[str]:
    """Every organization's id, sorted in Python by (created_at, id)."""
    with db.transaction() as session:
        rows = list(
            session.execute(select(Organization.created_at, Organization.id, Organization.kind))
        )
    return [
        str(row.id)
        for row in sorted(rows, key=lambda row: (row.created_at, row.id))
        if kind is None or row.kind.value == kind
    ]


@pytest.fixture
def expected(db: Database, admin: ApiUser) -> list[str]:
    """137 organizations (plus the admin's), some sharing one `created_at` so `id` decides."""
    _create(db, [f"Org {index:03d}" for index in range(CREATED)])
    with db.transaction() as session:
        tied = list(
            session.scalars(
                select(Organization.id).where(Organization.name.like("Org 04%"))
            )
        )
        anchor = session.scalar(
            select(Organization.created_at).where(Organization.name == "Org 040")
        )
        session.execute(
            update(Organization)
            .where(Organization.id.in_(tied))
            .values(created_at=anchor)
            .execution_options(synchronize_session=False)
        )
    order = _stored_order(db)
    assert len(order) == CREATED + 1
    return order


def _page(client: FlaskClient, user: ApiUser, query: str) -> Any:
    response = client.get(f"{PATH}?{query}", headers=user.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(response.json) == {"items", "next_cursor"}
    return response.json


def _walk(
    client: FlaskClient, user: ApiUser, limit: int | None, extra: str = ""
) -> list[list[str]]:
    """The ids of every page, following `next_cursor` until it is null."""
    pages: list[list[str]] = []
    cursor: str | None = None
    for _ in range(CREATED * 3):
        parts = [part for part in (extra, f"limit={limit}" if limit else "") if part]
        if cursor is not None:
            parts.append(f"cursor={cursor}")
        body = _page(client, user, "&".join(parts))
        pages.append([item["id"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert isinstance(cursor, str) and cursor
    raise AssertionError("next_cursor never became null")


@pytest.mark.parametrize("limit", [1, 7, 50, 69, 137, 138, 200])
def test_pages_cover_every_organization_once_in_order(
    client: FlaskClient, admin: ApiUser, expected: list[str], limit: int
) -> None:
    pages = _walk(client, admin, limit)
    seen = [item for page in pages for item in page]
    assert seen == expected
    assert len(set(seen)) == len(seen)
    # Full pages, then a last page that is not empty (no trailing empty page).
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit
    assert len(pages) == -(-len(expected) // limit)


def test_items_carry_sort_keys_in_order(
    client: FlaskClient, admin: ApiUser, expected: list[str]
) -> None:
    items = _page(client, admin, f"limit={MAX_LIMIT}")["items"]
    keys = [(item["created_at"], item["id"]) for item in items]
    assert all(created.endswith("Z") for created, _ in keys)
    assert keys == sorted(keys)
    assert [item_id for _, item_id in keys] == expected


def test_kind_filter_pages_through_its_kind_only(
    client: FlaskClient, admin: ApiUser, db: Database, expected: list[str]
) -> None:
    for kind in ("agency", "provider", "consortium"):
        pages = _walk(client, admin, 7, extra=f"kind={kind}")
        assert [item for page in pages for item in page] == _stored_order(db, kind)


def test_default_limit_is_50(client: FlaskClient, admin: ApiUser, expected: list[str]) -> None:
    assert DEFAULT_LIMIT == 50
    first = _page(client, admin, "")
    assert [item["id"] for item in first["items"]] == expected[:50]
    assert first["next_cursor"] is not None
    pages = _walk(client, admin, None)
    assert [len(page) for page in pages] == [50, 50, len(expected) - 100]
    assert [item for page in pages for item in page] == expected


def test_inserts_while_paging_neither_repeat_nor_hide_items(
    client: FlaskClient, admin: ApiUser, db: Database, expected: list[str]
) -> None:
    first = _page(client, admin, "limit=10")
    seen = [item["id"] for item in first["items"]]
    assert seen == expected[:10]
    cursor = first["next_cursor"]

    _create(db, [f"Late {index}" for index in range(5)])
    late_batch_one = [i for i in _stored_order(db) if i not in set(expected)]
    assert len(late_batch_one) == 5

    inserted_again = False
    while cursor is not None:
        body = _page(client, admin, f"limit=10&cursor={cursor}")
        seen.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if not inserted_again and len(seen) >= 60:
            _create(db, [f"Later {index}" for index in range(3)])
            inserted_again = True

    late = [i for i in _stored_order(db) if i not in set(expected)]
    assert len(late) == 8
    assert late[:5] == late_batch_one
    assert len(seen) == len(set(seen)), "an item was repeated"
    assert seen == expected + late


def test_each_cursor_can_be_replayed(
    client: FlaskClient, admin: ApiUser, expected: list[str]
) -> None:
    first = _page(client, admin, "limit=20")
    again = _page(client, admin, f"limit=20&cursor={first['next_cursor']}")
    twice = _page(client, admin, f"limit=20&cursor={first['next_cursor']}")
    assert again == twice
    assert [item["id"] for item in again["items"]] == expected[20:40]
    # A cursor does not fix the page size: the same cursor with another limit.
    wider = _page(client, admin, f"limit=30&cursor={first['next_cursor']}")
    assert [item["id"] for item in wider["items"]] == expected[20:50]


_UUID = str(uuid.UUID(int=1))
INVALID_CURSORS = {
    "garbage": "garbage",
    "not-base64": "!!!***",
    "non-json": _b64("hello, world"),
    "non-utf8": _b64(b"\xff\xfe\xfd\xfc"),
    "json-object": _b64(json.dumps({"created_at": "2024-01-01T00:00:00+00:00", "id": _UUID})),
    "json-string": _b64(json.dumps("2024-01-01T00:00:00+00:00")),
    "empty-list": _b64("[]"),
    "list-too-short": _b64(json.dumps(["2024-01-01T00:00:00+00:00"])),
    "list-too-long": _b64(json.dumps(["2024-01-01T00:00:00+00:00", _UUID, 1])),
    "naive-timestamp": _b64(json.dumps(["2024-01-01T00:00:00", _UUID])),
    "not-a-timestamp": _b64(json.dumps(["yesterday", _UUID])),
    "number-timestamp": _b64(json.dumps([1700000000, _UUID])),
    "nulls": _b64("[null, null]"),
    "not-a-uuid": _b64(json.dumps(["2024-01-01T00:00:00+00:00", "not-a-uuid"])),
    "number-uuid": _b64(json.dumps(["2024-01-01T00:00:00+00:00", 123])),
    "list-uuid": _b64(json.dumps(["2024-01-01T00:00:00+00:00", [1, 2]])),
    "timestamp-before-year-1-in-utc": _b64(json.dumps(["0001-01-01T00:00:00+01:00", _UUID])),
    "timestamp-after-year-9999-in-utc": _b64(json.dumps(["9999-12-31T23:59:59-01:00", _UUID])),
    "deeply-nested": _b64("[" * 700),
    "very-long": "A" * 5000,
}


def _assert_cursor_problem(response: Any) -> None:
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.json
    assert body["code"] == "validation_failed"
    assert body["status"] == 422
    assert list(body["errors"]) == ["cursor"], body["errors"]
    assert body["errors"]["cursor"]


@pytest.mark.parametrize("cursor", INVALID_CURSORS.values(), ids=INVALID_CURSORS.keys())
def test_invalid_cursor_is_a_422_problem(
    client: FlaskClient, admin: ApiUser, cursor: str
) -> None:
    response = client.get(f"{PATH}?limit=5&cursor={cursor}", headers=admin.headers)
    _assert_cursor_problem(response)


INVALID_SEQ_CURSORS = {
    "string": _b64('["12"]'),
    "boolean": _b64("[true]"),
    "float": _b64("[1.5]"),
    "null": _b64("[null]"),
    "organizations-cursor": _b64(json.dumps(["2024-01-01T00:00:00+00:00", _UUID])),
    "beyond-bigint": _b64(json.dumps([2**63])),
    "huge": _b64(json.dumps([10**30])),
}


@pytest.mark.parametrize(
    "cursor", INVALID_SEQ_CURSORS.values(), ids=INVALID_SEQ_CURSORS.keys()
)
def test_invalid_audit_cursor_is_a_422_problem(
    client: FlaskClient, admin: ApiUser, cursor: str
) -> None:
    response = client.get(f"/v1/audit-events?cursor={cursor}", headers=admin.headers)
    _assert_cursor_problem(response)


def test_audit_events_page_in_sequence_order(
    client: FlaskClient, admin: ApiUser, db: Database
) -> None:
    _create(db, [f"Audited {index}" for index in range(23)])
    seqs: list[int] = []
    cursor: str | None = None
    while True:
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(f"/v1/audit-events?{query}", headers=admin.headers)
        assert response.status_code == 200
        seqs.extend(event["seq"] for event in response.json["items"])
        cursor = response.json["next_cursor"]
        if cursor is None:
            break
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 23 + 2  # plus the admin's organization and client


def test_empty_cursor_means_first_page(
    client: FlaskClient, admin: ApiUser, expected: list[str]
) -> None:
    body = _page(client, admin, "limit=3&cursor=")
    assert [item["id"] for item in body["items"]] == expected[:3]


@pytest.mark.parametrize("limit", ["0", "-1", str(MAX_LIMIT + 1), "1000000", "abc", "1.5", ""])
def test_limit_out_of_bounds_is_a_422_problem(
    client: FlaskClient, admin: ApiUser, limit: str
) -> None:
    response = client.get(f"{PATH}?limit={limit}", headers=admin.headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.json
    assert body["code"] == "validation_failed"
    fields = [field.rsplit(".", 1)[-1] for field in body["errors"]]
    assert fields == ["limit"], body["errors"]


@pytest.mark.parametrize("limit", [1, MAX_LIMIT])
def test_limit_bounds_are_inclusive(
    client: FlaskClient, admin: ApiUser, expected: list[str], limit: int
) -> None:
    body = _page(client, admin, f"limit={limit}")
    assert [item["id"] for item in body["items"]] == expected[:limit]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(min_value=1, max_value=MAX_LIMIT))
def test_any_limit_concatenates_to_the_full_list(
    client: FlaskClient, admin: ApiUser, expected: list[str], limit: int
) -> None:
    pages = _walk(client, admin, limit)
    assert [item for page in pages for item in page] == expected
    assert all(len(page) == limit for page in pages[:-1])


def test_cursor_survives_a_timezone_offset(
    client: FlaskClient, admin: ApiUser, db: Database, expected: list[str]
) -> None:
    """A cursor naming the same instant in another offset selects the same page."""
    with db.transaction() as session:
        row = session.execute(
            select(Organization.created_at, Organization.id).where(
                Organization.id == uuid.UUID(expected[9])
            )
        ).one()
    shifted = row.created_at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    cursor = _b64(json.dumps([shifted.isoformat(), str(row.id)]))
    body = _page(client, admin, f"limit=10&cursor={cursor}")
    assert [item["id"] for item in body["items"]] == expected[10:20]
