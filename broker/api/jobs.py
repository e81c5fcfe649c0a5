"""`/v1/jobs`: background work the API queued (offer syncs, and later provisioning)."""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask import url_for

from broker import access
from broker.api.base import Blueprint, current_caller, request_session
from broker.api.schemas import Timestamp
from broker.errors import NotFound
from broker.models import Job, JobState

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Jobs")


class JobSchema(ma.Schema):
    id = ma.fields.UUID()
    kind = ma.fields.String()
    state = ma.fields.Enum(JobState, by_value=True)
    attempts = ma.fields.Integer()
    max_attempts = ma.fields.Integer()
    run_after = Timestamp(metadata={"description": "When it runs (again)."})
    last_error = ma.fields.String(allow_none=True)
    result = ma.fields.Dict(allow_none=True)
    created_at = Timestamp()
    finished_at = Timestamp(allow_none=True)


def job_location(job: Job) -> dict[str, str]:
    return {"Location": url_for("jobs.get_job", job_id=job.id)}


@blp.route("/<uuid:job_id>", methods=["GET"])
@blp.auth()
@blp.response(200, JobSchema)
def get_job(job_id: uuid.UUID) -> Any:
    """Read a job: the consortium's admins, and the organization it works for."""
    caller = current_caller()
    job = request_session().get(Job, job_id)
    if job is None or not access.sees_organization(caller, job.organization_id):
        raise NotFound("No such job.")
    return job
