"""The assessor's pages: the queue of pending evidence of every provider, with its documents,
to verify or reject (with a reason). The same services and rules as the API's: nobody vouches
for a provider of an organization they belong to."""

from __future__ import annotations

import uuid

import marshmallow as ma
from flask import Response, request
from flask_babel import gettext
from werkzeug.wrappers import Response as BaseResponse

from broker import access
from broker.api.base import now, request_session
from broker.api.evidence import EvidenceRejectSchema
from broker.api.schemas import ListArgs
from broker.errors import BrokerError, NotFound
from broker.models import EvidenceState, Role
from broker.services import evidence as evidence_service
from broker.web.pages import (
    Problem,
    bp,
    caller,
    done,
    filters,
    page,
    problem_of,
    query_args,
    render,
)

CONSORTIUM = (Role.ASSESSOR, Role.ADMIN)


def _queue(problem: Problem | None = None, failed: uuid.UUID | None = None) -> Response:
    """The pending claims, oldest first; `failed`: the claim a refused decision was about."""
    args, problem_of_args = filters(ListArgs, query_args())
    found = evidence_service.list_evidence(
        request_session(),
        caller(),
        state=EvidenceState.PENDING,
        limit=args["limit"],
        cursor=args["cursor"],
    )
    shown = problem or problem_of_args
    return render(
        "console/assessor/queue.html",
        200 if shown is None else shown.status,
        page=found,
        problem=shown,
        failed=failed,
        reason=request.form.get("reason", "") if request.method == "POST" else "",
        vouches={item.id: access.vouches(caller(), item.provider) for item in found.items},
    )


@bp.get("/evidence")
@page(*CONSORTIUM)
def evidence_queue() -> Response:
    """Every provider's pending claims, oldest first, with their documents."""
    return _queue()


@bp.post("/evidence/<uuid:provider_id>/<uuid:evidence_id>/verify")
@page(*CONSORTIUM)
def verify_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> BaseResponse:
    """Vouch for a pending claim: it counts from now on."""
    try:
        item = evidence_service.verify(request_session(), caller(), provider_id, evidence_id, now())
    except NotFound:
        raise
    except BrokerError as error:
        return _queue(problem_of(error), evidence_id)
    return done(
        "console.evidence_queue",
        gettext("The claim of %(provider)s is verified.", provider=item.provider.name),
    )


@bp.post("/evidence/<uuid:provider_id>/<uuid:evidence_id>/reject")
@page(*CONSORTIUM)
def reject_evidence(provider_id: uuid.UUID, evidence_id: uuid.UUID) -> BaseResponse:
    """Refuse a pending claim, saying why (the provider's operators read the reason)."""
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _queue(
            Problem(
                gettext("Some values are not valid: see the fields below."),
                {"reason": [gettext("Say why the claim is rejected.")]},
            ),
            evidence_id,
        )
    try:
        data = EvidenceRejectSchema().load({"reason": reason})
        item = evidence_service.reject(
            request_session(), caller(), provider_id, evidence_id, data["reason"], now()
        )
    except NotFound:
        raise
    except (ma.ValidationError, BrokerError) as error:
        return _queue(problem_of(error), evidence_id)
    return done(
        "console.evidence_queue",
        gettext("The claim of %(provider)s is rejected.", provider=item.provider.name),
    )
