"""Inputs that once answered 500: each now gets a 4xx problem and changes nothing.

JSON nested hundreds of levels deep, a lone UTF-16 surrogate (`"\\ud800"`, valid JSON that no
database can store) in any string, and numbers beyond what the database holds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.api.base import _SURROGATE_ESCAPE, check_json_document
from broker.errors import BrokerError
from tests.billing_fixtures import Ledger
from tests.conftest import ApiUser
from tests.helpers import all_pages, problem


def _post(client: FlaskClient, user: ApiUser, path: str, raw: str, **headers: str) -> Any:
    return client.post(
        path,
        data=raw.encode(),
        content_type="application/json",
        headers={**user.headers, **headers},
    )


@pytest.mark.parametrize("depth", [33, 990, 5000])
def test_deeply_nested_json_is_refused(client: FlaskClient, admin: ApiUser, depth: int) -> None:
    raw = '{"name": "Deep", "kind": "agency", "x": ' + "[" * depth + "]" * depth + "}"
    refused = problem(_post(client, admin, "/v1/organizations", raw), 400, "bad_request")
    assert "nested" in refused["detail"]
    assert [o["name"] for o in all_pages(client, admin, "/v1/organizations")] == ["Test Consortium"]


def test_nesting_within_the_limit_is_parsed(client: FlaskClient, admin: ApiUser) -> None:
    raw = '{"name": "Shallow", "kind": "agency", "x": ' + "[" * 30 + "]" * 30 + "}"
    refused = problem(_post(client, admin, "/v1/organizations", raw), 422)
    assert list(refused["errors"]) == ["x"]  # an unknown field, not a parser failure


@pytest.mark.parametrize(
    "where",
    ['{"name": "Agence \\ud800", "kind": "agency"}', '{"name": "\\udfff", "kind": "agency"}'],
)
def test_a_lone_surrogate_is_refused_in_a_name(
    client: FlaskClient, admin: ApiUser, where: str
) -> None:
    refused = problem(_post(client, admin, "/v1/organizations", where), 422, "validation_failed")
    assert list(refused["errors"]) == ["name"]
    assert "surrogate" in refused["errors"]["name"][0]


def test_a_lone_surrogate_is_refused_anywhere_in_a_body(
    client: FlaskClient, admin: ApiUser
) -> None:
    # Deep in a free-form object (stored as JSON): refused before any schema sees it.
    raw = json.dumps(
        {
            "name": "P",
            "organization_id": "00000000-0000-0000-0000-000000000000",
            "adapter": "simulated",
            "adapter_config": {"flavors": [{"name": "\ud800"}]},
            "regions": [{"code": "r-1", "country": "FR"}],
            "jurisdiction": {"operator_country": "FR"},
        }
    )
    refused = problem(_post(client, admin, "/v1/providers", raw), 422, "validation_failed")
    assert list(refused["errors"]) == ["adapter_config.flavors.0.name"]


def test_usage_with_a_surrogate_record_id_or_a_huge_quantity_is_refused(ledger: Ledger) -> None:
    machine = ledger.start_machine(datetime(2030, 3, 2, 9, 0, tzinfo=UTC))
    ledger.at(datetime(2030, 3, 5, tzinfo=UTC))
    base = {
        "resource_id": machine,
        "metric": "egress_gib",
        "start": "2030-03-02T10:00:00Z",
        "end": "2030-03-02T10:30:00Z",
    }
    cases = [
        ({**base, "record_id": "\ud800", "quantity": "1"}, "records.0.record_id"),
        ({**base, "record_id": "big", "quantity": "9999999999"}, "records.0.quantity"),
        ({**base, "record_id": "bigger", "quantity": "999999999999.999999"}, "records.0.quantity"),
    ]
    for body, field in cases:
        raw = json.dumps({"records": [body]})
        refused = problem(
            _post(ledger.client, ledger.operator, "/v1/usage", raw, **{"Idempotency-Key": field}),
            422,
        )
        assert field in refused["errors"], refused
    assert all_pages(ledger.client, ledger.operator, "/v1/usage") == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=40,
)


@settings(max_examples=60, deadline=None)
@given(document=_JSON, wrap=st.integers(min_value=0, max_value=40))
def test_the_depth_only_walk_refuses_what_the_full_walk_refuses(document: Any, wrap: int) -> None:
    """A body whose source has no surrogate escape skips the strings (`texts=False`): it is
    refused exactly when the full walk refuses it, and its source is seen to hold none."""
    for _ in range(wrap):
        document = [document]
    raw = json.dumps(document).encode()  # \\uXXXX escapes for every surrogate, as a client's

    def outcome(texts: bool) -> str:
        try:
            check_json_document(document, texts=texts)
        except BrokerError as error:
            return type(error).__name__ + str(error)
        return "ok"

    if any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(document, ensure_ascii=False)):
        assert _SURROGATE_ESCAPE.search(raw) is not None  # so the strings are walked
    if _SURROGATE_ESCAPE.search(raw) is None:
        assert outcome(False) == outcome(True)
