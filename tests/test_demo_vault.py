"""The demo's vault, end to end: the city of Québec finds it, quotes it, orders it, gets its
connection details once, and an S3 client stores a record in it that nobody can delete.

The seeded demo consortium is used as it is, except for the cloud behind Nordet Nuagique:
there the consortium points the provider at an Outscale account played by the fake Outscale API
and moto's S3 (object lock included) as its OOS — what an operator would register for a real
Outscale region. Everything the buyer does goes through the HTTP API; jobs run as the worker
runs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker import create_app
from broker.db import Database
from broker.models import Provider
from broker.services import credentials as credentials_service
from broker.services.adapters import ProviderRuntime
from tests.adapters.fake_outscale import fake_outscale_cloud
from tests.helpers import problem
from tests.test_order_flow_demo import CITY, credentials, login, ok, run_jobs

__all__ = ["credentials"]  # the seeded demo's clients: a fixture shared with the order flow

NORDET = "Nordet Nuagique"
VAULT = "Boréal Coffre-fort 365 jours — Montréal"


@pytest.fixture
def app(app_config: dict[str, Any]) -> Any:
    """The broker, allowed to reach the local fake clouds."""
    application = create_app({**app_config, "PROVIDER_ALLOW_PRIVATE_ENDPOINTS": True})
    yield application
    application.extensions["broker.db"].dispose()


def test_the_city_orders_the_demo_vault_and_stores_a_record_no_one_can_delete(
    app: Flask,
    db: Database,
    client: FlaskClient,
    credentials: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    with fake_outscale_cloud(tmp_path, region="ca-qc-1") as outscale:
        with db.transaction() as session:
            nordet = session.scalars(select(Provider).where(Provider.name == NORDET)).one()
            nordet.adapter, nordet.adapter_config = "outscale", outscale["settings"]
            nordet.version += 1
            keyring = ProviderRuntime.from_config(app.config).keyring
            credentials_service.set_credentials(
                session, None, nordet, outscale["credentials"], keyring
            )
        buyer = login(client, credentials, CITY, "buyer")

        found = ok(
            client.get(
                "/v1/offers?kind=object_storage&immutable=true&min_datacenter_tier=4",
                headers=buyer.headers,
            )
        )["items"]
        [vault] = found
        assert (vault["name"], vault["provider_name"], vault["datacenter_tier"]) == (
            VAULT,
            NORDET,
            4,
        )
        assert vault["region"] == {"code": "ca-qc-1", "country": "CA", "city": "Montréal"}
        assert vault["specs"]["immutability_days"] == 365
        assert vault["currency"] == "CAD"

        quote = ok(
            client.post(
                "/v1/quotes",
                json={"offer_id": vault["id"], "stored_gib": 2000, "hours": 730},
                headers=buyer.headers,
            )
        )
        assert (quote["total"], quote["currency"], quote["allowed"]) == ("70.00", "CAD", True)

        placed = ok(
            client.post(
                "/v1/orders",
                json={"offer_id": vault["id"], "quantity": 1, "name": "registres"},
                headers={**buyer.headers, "Idempotency-Key": "vault-order-1"},
            ),
            201,
        )
        assert placed["state"] == "approved"
        run_jobs(app, db)
        order = ok(client.get(f"/v1/orders/{placed['id']}", headers=buyer.headers))
        assert order["state"] == "completed", order["state_reason"]
        [listed] = ok(client.get(f"/v1/resources?order_id={placed['id']}", headers=buyer.headers))[
            "items"
        ]
        resource = ok(client.get(f"/v1/resources/{listed['id']}", headers=buyer.headers))
        assert (resource["kind"], resource["state"], resource["retention_days"]) == (
            "object_storage",
            "active",
            365,
        )

        secret_url = f"/v1/resources/{resource['id']}/secret"
        details = ok(client.post(secret_url, headers=buyer.headers))
        assert details["endpoint"] == outscale["s3_endpoint"]
        assert details["bucket"] == resource["provider_ref"]
        problem(client.post(secret_url, headers=buyer.headers), 409, "secret_already_shown")

        s3 = boto3.client(
            "s3",
            endpoint_url=details["endpoint"],
            region_name=details["region"],
            aws_access_key_id=details["access_key_id"],
            aws_secret_access_key=details["secret_access_key"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        body = b"Deliberation 2026-117 of the city council"
        stored = s3.put_object(Bucket=details["bucket"], Key="deliberation-117.pdf", Body=body)
        got = s3.get_object(Bucket=details["bucket"], Key="deliberation-117.pdf")
        assert got["Body"].read() == body
        assert got["ObjectLockMode"] == "COMPLIANCE"  # the vault's default retention
        with pytest.raises(ClientError):
            s3.delete_object(
                Bucket=details["bucket"],
                Key="deliberation-117.pdf",
                VersionId=stored["VersionId"],
            )

        # Nor can the city delete the vault through the broker while the record is held.
        refused = problem(
            client.post(
                f"/v1/resources/{resource['id']}/actions",
                json={"action": "terminate"},
                headers=buyer.headers,
            ),
            409,
            "under_retention",
        )
        assert "1 object(s) under retention" in refused["detail"]
