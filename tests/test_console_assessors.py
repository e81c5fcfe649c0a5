"""The assessor's console page: the queue of pending evidence, verify and reject."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.models import Evidence, EvidenceState, Provider
from broker.seed import DEMO_PENDING_CLAIM
from tests.console_support import ASSESSOR, OPERATOR, sign_in, text_of


def _pending_claim(app: Flask) -> Evidence:
    """The demo's claim awaiting an assessor (Atlantic Compute Europe's SecNumCloud)."""
    provider, scheme, _ = DEMO_PENDING_CLAIM
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        item = session.scalar(
            select(Evidence)
            .join(Provider, Provider.id == Evidence.provider_id)
            .where(Provider.name == provider, Evidence.scheme == scheme)
        )
    assert item is not None
    return item


def _state(app: Flask, item: Evidence) -> EvidenceState:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        return session.get_one(Evidence, item.id).state


def test_an_assessor_verifies_the_pending_claim(demo_app: Flask) -> None:
    claim = _pending_claim(demo_app)
    browser = sign_in(demo_app, ASSESSOR, "en")
    queue = browser.get("/evidence")
    assert queue.status_code == 200
    words = text_of(queue)
    assert "Atlantic Compute Europe" in words and "secnumcloud" in words
    assert claim.document_sha256 is not None and claim.document_sha256 in words
    assert f'href="{claim.evidence_url}"' in queue.get_data(as_text=True)

    verified = browser.post(f"/evidence/{claim.provider_id}/{claim.id}/verify")
    assert verified.status_code == 303
    assert _state(demo_app, claim) is EvidenceState.VERIFIED
    after = text_of(browser.get(verified.headers["Location"]))
    assert "The claim of Atlantic Compute Europe is verified." in after
    assert "No evidence is waiting." in after
    again = browser.post(f"/evidence/{claim.provider_id}/{claim.id}/verify")
    assert again.status_code == 409  # decided already: said, not a blank page
    assert "This claim was decided already." in text_of(again)


def test_a_rejection_needs_a_reason(demo_app: Flask) -> None:
    claim = _pending_claim(demo_app)
    browser = sign_in(demo_app, ASSESSOR, "en")
    path = f"/evidence/{claim.provider_id}/{claim.id}/reject"
    refused = browser.post(path, {"reason": "  "})
    assert refused.status_code == 422
    assert "Say why the claim is rejected." in text_of(refused)
    assert 'id="error-reason"' in refused.get_data(as_text=True)
    assert _state(demo_app, claim) is EvidenceState.PENDING

    rejected = browser.post(path, {"reason": "The certificate names another company."})
    assert rejected.status_code == 303
    assert _state(demo_app, claim) is EvidenceState.REJECTED


def test_the_queue_is_the_consortiums_and_changes_need_the_csrf_token(demo_app: Flask) -> None:
    claim = _pending_claim(demo_app)
    operator = sign_in(demo_app, OPERATOR, "en")
    assert operator.get("/evidence").status_code == 403
    assert operator.post(f"/evidence/{claim.provider_id}/{claim.id}/verify").status_code == 403
    assessor = sign_in(demo_app, ASSESSOR, "fr")
    forged = assessor.client.post(f"/evidence/{claim.provider_id}/{claim.id}/verify", data={})
    assert forged.status_code == 403
    assert _state(demo_app, claim) is EvidenceState.PENDING
    assert "Preuves" in text_of(assessor.get("/evidence"))
