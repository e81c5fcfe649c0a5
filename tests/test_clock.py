"""One clock: every timestamp a request or a job writes comes from the broker's clock, so a
test that sets `app.config["CLOCK"]` moves all of them, and nothing runs on the system's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from broker.db import Database
from broker.jobs.handlers import HANDLERS
from broker.jobs.queue import JobContext, run_pending
from broker.models import AuditEvent, Job, Organization
from broker.models.base import use_clock, utcnow
from tests.catalogue_fixtures import make_provider
from tests.conftest import ApiUser, MakeUser

MOMENT = datetime(2031, 7, 14, 10, 30, 15, tzinfo=UTC)


def test_a_request_stamps_everything_it_writes_with_the_apps_clock(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user, adapter="simulated", adapter_config={})
    app.config["CLOCK"] = lambda: MOMENT
    created = client.post(
        "/v1/organizations",
        json={"name": "Ville de Nantes", "kind": "agency"},
        headers=admin.headers,
    )
    assert created.json["created_at"] == "2031-07-14T10:30:15Z"
    queued = client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)
    assert queued.status_code == 202, queued.get_data(as_text=True)
    with db.session(read_only=True) as session:
        organization = session.scalars(
            select(Organization).where(Organization.name == "Ville de Nantes")
        ).one()
        assert organization.created_at == MOMENT
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.object_id == str(organization.id))
        ).one()
        assert event.occurred_at == MOMENT
        job = session.get(Job, uuid.UUID(queued.json["id"]))
        assert job is not None and job.run_after == MOMENT
    # After the request, the test's thread reads the system's clock again.
    assert utcnow().year == datetime.now(UTC).year


def test_a_job_stamps_what_it_writes_with_its_contexts_clock(
    app: Flask, client: FlaskClient, db: Database, admin: ApiUser, make_user: MakeUser
) -> None:
    setup = make_provider(client, admin, make_user, adapter="simulated", adapter_config={})
    with use_clock(lambda: MOMENT):
        queued = client.post(f"/v1/providers/{setup.id}/sync", headers=setup.operator.headers)
        assert run_pending(JobContext(db, app.config, now=lambda: MOMENT), HANDLERS) == 1
    with db.session(read_only=True) as session:
        job = session.get(Job, uuid.UUID(queued.json["id"]))
        assert job is not None
        assert (job.run_after, job.finished_at, job.updated_at) == (MOMENT, MOMENT, MOMENT)
