"""A market with a clock the test moves, machines that run when the test says, and the jobs
that meter and bill them, all through the API and the real job handlers.

The clock starts in March 2030 and moves only when the test says; the API, the jobs and the
lifecycle timestamps all read it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.services import usage as usage_service
from tests.conftest import ApiUser, MakeUser
from tests.test_provisioning import Clock, Market, make_market, place_order

START = datetime(2030, 3, 1, tzinfo=UTC)


@dataclass
class Ledger:
    app: Flask
    client: FlaskClient
    db: Database
    clock: Clock
    market: Market
    operator: ApiUser  # the provider's operator (pushes usage)
    finance: ApiUser

    def at(self, when: datetime) -> None:
        assert when >= self.clock.now, "the clock only moves forward"
        self.clock.now = when

    def run_jobs(self) -> int:
        """Run every ready job (and the retries that come ready at the same clock)."""
        total = 0
        while ran := run_pending(
            JobContext(self.db, self.app.config, now=self.clock), HANDLERS, on_dead=ON_DEAD
        ):
            total += ran
        return total

    def start_machine(self, when: datetime, name: str = "web") -> str:
        """Order one machine at `when`; it is active from exactly then. Its resource id."""
        self.at(when)
        order_id = place_order(self.client, self.market, name=name)
        self.run_jobs()
        listing = self.client.get(
            f"/v1/resources?order_id={order_id}", headers=self.market.buyer.headers
        )
        (resource,) = listing.json["items"]
        assert resource["state"] == "active" and resource["activated_at"] is not None
        return str(resource["id"])

    def act(self, resource_id: str, action: str, when: datetime, by: ApiUser | None = None) -> None:
        """`action` on a machine at `when`, by its agency's buyer (the market's by default)."""
        self.at(when)
        response = self.client.post(
            f"/v1/resources/{resource_id}/actions",
            json={"action": action},
            headers=(by or self.market.buyer).headers,
        )
        assert response.status_code == 202, response.get_data(as_text=True)
        self.run_jobs()

    def meter(self, when: datetime) -> dict[str, Any]:
        """The metering job as a worker runs it at `when`."""
        self.at(when)
        return usage_service.meter_closed_hours(JobContext(self.db, self.app.config, self.clock))

    def push(self, records: list[dict[str, Any]], key: str | None = None) -> Any:
        return self.client.post(
            "/v1/usage",
            json={"records": records},
            headers={**self.operator.headers, "Idempotency-Key": key or str(uuid.uuid4())},
        )

    def bill(self, period: str, when: datetime | None = None) -> dict[str, Any]:
        """A billing run for `period` (at `when`), run to the end; the run as the API shows it."""
        if when is not None:
            self.at(when)
        response = self.client.post(
            "/v1/billing-runs",
            json={"period": period},
            headers={**self.finance.headers, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert response.status_code == 202, response.get_data(as_text=True)
        self.run_jobs()
        run = self.client.get(response.headers["Location"], headers=self.finance.headers).json
        assert run["state"] == "succeeded", run
        return dict(run)

    def invoices(self, period: str | None = None, agency: ApiUser | None = None) -> list[Any]:
        query = f"?period={period}" if period else ""
        if agency is not None:
            query += ("&" if query else "?") + f"agency_id={agency.organization_id}"
        listing = self.client.get(f"/v1/invoices{query}", headers=self.finance.headers)
        assert listing.status_code == 200, listing.get_data(as_text=True)
        return [
            self.client.get(f"/v1/invoices/{item['id']}", headers=self.finance.headers).json
            for item in listing.json["items"]
        ]

    def invoice_of(self, period: str, agency: ApiUser | None = None) -> dict[str, Any]:
        (invoice,) = self.invoices(period, agency or self.market.buyer)
        return dict(invoice)

    def finalize(self, invoice_id: str, when: datetime | None = None) -> Any:
        if when is not None:
            self.at(when)
        return self.client.post(f"/v1/invoices/{invoice_id}/finalize", headers=self.finance.headers)


def make_ledger(
    app: Flask,
    client: FlaskClient,
    db: Database,
    admin: ApiUser,
    make_user: MakeUser,
    *,
    buyer: ApiUser | None = None,
) -> Ledger:
    clock = Clock(START)
    app.config["CLOCK"] = clock
    market = make_market(app, client, admin, make_user, buyer=buyer)
    operator = make_user(
        "provider", ["provider"], organization_id=_operator_org(client, admin, market)
    )
    finance = make_user("consortium", ["finance"], organization_id=admin.organization_id)
    return Ledger(app, client, db, clock, market, operator, finance)


def _operator_org(client: FlaskClient, admin: ApiUser, market: Market) -> str:
    provider = client.get(f"/v1/providers/{market.provider_id}", headers=admin.headers).json
    return str(provider["organization_id"])


def money(value: Any) -> Decimal:
    return Decimal(str(value))
