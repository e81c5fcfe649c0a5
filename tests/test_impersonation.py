"""No provider or organization may pass for another by its name (over HTTP).

Names are compared by their look-alike key (`broker.names.name_key`: case-folded, NFKC, by
confusable class), and invisible or direction-changing characters are refused in every name.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.catalogue_fixtures import create_provider_organization, make_provider, provider_body
from tests.conftest import ApiUser, MakeUser
from tests.helpers import all_pages, problem

TAKEN = "Hexagone Cloud"

# Names that read as "Hexagone Cloud": 409 `name_taken`.
LOOK_ALIKES = [
    pytest.param("hexagone cloud", id="lower case"),
    pytest.param("HEXAGONE CLOUD", id="upper case"),
    pytest.param("\u041dexagone Cloud", id="Cyrillic capital EN"),
    pytest.param("\u0397exagone Cloud", id="Greek capital ETA"),
    pytest.param("Hexag\u043ene Cl\u043eud", id="Cyrillic small O"),
    pytest.param("Hexag0ne Cloud", id="digit zero"),
    pytest.param("Hexagone C1oud", id="digit one"),
    pytest.param("\uff28\uff45\uff58\uff41\uff47\uff4f\uff4e\uff45 Cloud", id="fullwidth"),
    pytest.param("Hexagone\u00a0Cloud", id="no-break space"),
    pytest.param("Hexagone  Cloud", id="two spaces"),
    pytest.param(" Hexagone Cloud ", id="surrounding spaces"),
    pytest.param("\U0001d407exagone Cloud", id="mathematical bold H"),
]

# Names hiding characters: 422 on `name`.
INVISIBLE = [
    pytest.param("Hexagone Cloud\u200b", id="zero-width space"),
    pytest.param("Hexa\u200dgone Cloud", id="zero-width joiner"),
    pytest.param("Hexagone\u2060 Cloud", id="word joiner"),
    pytest.param("\ufeffHexagone Cloud", id="byte order mark"),
    pytest.param("Hexa\u00adgone Cloud", id="soft hyphen"),
    pytest.param("\u202eduolC enogaxeH", id="right-to-left override"),
    pytest.param("Hexagone \u2066Cloud\u2069", id="bidi isolate"),
    pytest.param("Hexagone Cloud\u200f", id="right-to-left mark"),
    pytest.param("Hexagone Cloud\U000e0041", id="tag character"),
    pytest.param("Hexagone\u3164Cloud", id="Hangul filler"),
]


def _organization(client: FlaskClient, admin: ApiUser, name: str) -> Any:
    return client.post(
        "/v1/organizations", json={"name": name, "kind": "provider"}, headers=admin.headers
    )


def _names(client: FlaskClient, admin: ApiUser, path: str) -> list[str]:
    return sorted(item["name"] for item in all_pages(client, admin, path))


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_a_look_alike_organization_name_is_taken(
    client: FlaskClient, admin: ApiUser, name: str
) -> None:
    assert _organization(client, admin, TAKEN).status_code == 201
    before = _names(client, admin, "/v1/organizations")
    refused = problem(_organization(client, admin, name), 409, "name_taken")
    assert TAKEN in refused["detail"]
    assert _names(client, admin, "/v1/organizations") == before


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_a_look_alike_provider_name_is_taken_and_so_is_a_rename_to_it(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, name: str
) -> None:
    make_provider(client, admin, make_user, name=TAKEN)
    organization_id = create_provider_organization(client, admin)
    body = provider_body(organization_id, name=name)
    refused = problem(client.post("/v1/providers", json=body, headers=admin.headers), 409)
    assert refused["code"] == "name_taken"
    other = make_provider(client, admin, make_user, name="Nordet Nuagique")
    renamed = client.patch(
        f"/v1/providers/{other.id}",
        json={"name": name},
        headers={**other.operator.headers, "If-Match": other.etag},
    )
    problem(renamed, 409, "name_taken")
    assert _names(client, admin, "/v1/providers") == [TAKEN, "Nordet Nuagique"]


@pytest.mark.parametrize("name", INVISIBLE)
def test_invisible_and_direction_changing_characters_are_refused_in_names(
    client: FlaskClient, admin: ApiUser, make_user: MakeUser, name: str
) -> None:
    refused = problem(_organization(client, admin, name), 422, "validation_failed")
    assert refused["errors"]["name"][0].startswith("Invisible or direction-changing characters")
    organization_id = create_provider_organization(client, admin)
    body = provider_body(organization_id, name=name)
    refused = problem(client.post("/v1/providers", json=body, headers=admin.headers), 422)
    assert list(refused["errors"]) == ["name"]
    # Every name, not only those that must be unique: an offer's, a client's.
    setup = make_provider(client, admin, make_user)
    offer = client.post(
        "/v1/offers",
        json={
            "provider_id": setup.id,
            "sku": "vm-1",
            "name": name,
            "region": "fr-par-1",
            "specs": {"vcpu": 1, "ram_gib": 1},
            "prices": [{"metric": "instance_hour", "unit_price": "0.01", "currency": "EUR"}],
        },
        headers=setup.operator.headers,
    )
    assert list(problem(offer, 422)["errors"]) == ["name"]
    client_body = {"name": name, "roles": ["provider"]}
    issued = client.post(
        f"/v1/organizations/{organization_id}/clients", json=client_body, headers=admin.headers
    )
    assert list(problem(issued, 422)["errors"]) == ["name"]
    assert TAKEN not in _names(client, admin, "/v1/organizations")


def test_distinct_names_that_share_letters_are_fine(client: FlaskClient, admin: ApiUser) -> None:
    for name in (TAKEN, "Hexagone Nuage", "Hexagones Cloud", "Société Cloud", "Societe Cloud"):
        assert _organization(client, admin, name).status_code == 201, name
