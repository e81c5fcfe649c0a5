"""The approver's pages: the approvals inbox with the policy checked again, the policy editor
with its version, members, invitations and webhooks."""

from __future__ import annotations

import re
import uuid

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.models import AgencyPolicy, Membership, Offer, OfferState, Order, OrderState, User
from broker.models.base import utcnow
from broker.services import orders, people
from broker.services.invitations import email_key
from tests.console_support import APPROVER, BUYER, sign_in, text_of

SKU = "hc-std-m-par"  # Hexagone Cloud, Standard M — Paris: €121.34 a month


def _pending_order(app: Flask, quantity: int = 9) -> uuid.UUID:
    """An order of the demo buyer over the agency's approval threshold (€1,000 a month)."""
    database: Database = app.extensions["broker.db"]
    with database.transaction() as session:
        user = session.scalars(select(User).where(User.email_key == email_key(BUYER))).one()
        membership = session.scalars(select(Membership).where(Membership.user_id == user.id)).one()
        buyer = people.caller_for(session, user, membership.organization_id)
        offer = session.scalars(
            select(Offer).where(Offer.sku == SKU, Offer.state == OfferState.PUBLISHED)
        ).one()
        order = orders.place_order(
            session,
            buyer,
            {"offer_id": offer.id, "quantity": quantity, "name": "etude-cohorte", "parameters": {}},
            utcnow(),
        )
        assert order.state is OrderState.PENDING_APPROVAL
        return order.id


def _order_state(app: Flask, order_id: uuid.UUID) -> OrderState:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        return session.get_one(Order, order_id).state


def test_an_approver_sees_the_rechecked_verdict_and_approves(demo_app: Flask) -> None:
    order_id = _pending_order(demo_app)
    browser = sign_in(demo_app, APPROVER, "en")
    inbox = browser.get("/approvals")
    assert inbox.status_code == 200
    words = text_of(inbox)
    assert "etude-cohorte" in words and "€1,092.06" in words  # 9 × €121.34
    assert "Checked again now: the policy allows this order." in words
    assert browser.csrf_token in inbox.get_data(as_text=True)  # the page's own forms carry it
    assert "Acheteur" in words or "David" in words  # who asked, by name

    approved = browser.post(f"/approvals/{order_id}/approve")
    assert approved.status_code == 303 and approved.location.endswith("/approvals")
    assert _order_state(demo_app, order_id) is OrderState.APPROVED
    after = text_of(browser.get("/approvals"))
    assert "Order etude-cohorte approved" in after and "No order is awaiting approval." in after


def test_a_rejection_needs_a_reason(demo_app: Flask) -> None:
    order_id = _pending_order(demo_app)
    browser = sign_in(demo_app, APPROVER, "en")
    refused = browser.post(f"/approvals/{order_id}/reject", {"reason": "  "})
    assert refused.status_code == 422
    assert "Enter the reason for the rejection; the buyer reads it." in text_of(refused)
    assert 'id="field-reason"' in refused.get_data(as_text=True)
    assert _order_state(demo_app, order_id) is OrderState.PENDING_APPROVAL

    rejected = browser.post(
        f"/approvals/{order_id}/reject", {"reason": "Pas de budget cette année"}
    )
    assert rejected.status_code == 303
    assert _order_state(demo_app, order_id) is OrderState.REJECTED


def test_the_policy_editor_saves_and_says_when_someone_changed_it(demo_app: Flask) -> None:
    browser = sign_in(demo_app, APPROVER, "en")
    form = browser.get("/agency/policy")
    assert form.status_code == 200 and 'name="revision" value="1"' in form.get_data(as_text=True)
    change = {
        "revision": "1",
        "currency": "EUR",
        "monthly_budget": "25000",
        "approval_threshold": "1500",
        "sovereignty.allowed_countries": "FR, de",
        "sovereignty.forbid_extraterritorial": "true",
    }
    saved = browser.post("/agency/policy", change)
    assert saved.status_code == 303
    database: Database = demo_app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        [policy] = session.scalars(
            select(AgencyPolicy).where(AgencyPolicy.approval_threshold == 1500)
        ).all()
        assert policy.allowed_countries == ["DE", "FR"] and policy.forbid_extraterritorial
        assert policy.version == 2
    shown = text_of(browser.get("/agency/policy"))
    assert "The policy is saved." in shown

    stale = browser.post("/agency/policy", {**change, "approval_threshold": "900"})
    assert stale.status_code == 412
    body = stale.get_data(as_text=True)
    assert "Someone changed this while you were editing." in text_of(stale)
    assert 'name="revision" value="2"' in body and 'value="1500' in body

    bad = browser.post("/agency/policy", {**change, "revision": "2", "monthly_budget": "beaucoup"})
    assert bad.status_code == 422
    assert 'id="error-monthly_budget"' in bad.get_data(as_text=True)


def test_members_invitations_and_webhooks(demo_app: Flask) -> None:
    browser = sign_in(demo_app, APPROVER, "en")
    assert "Members and invitations" in text_of(browser.get("/agency"))
    members = text_of(browser.get("/agency/members"))
    assert "acheteur@ands.example.fr" in members
    invited = browser.post(
        "/agency/invitations", {"email": "nouvelle@ands.example.fr", "roles": ["buyer"]}
    )
    assert invited.status_code == 201
    assert "it will not be shown again" in text_of(invited)
    assert 'class="secret"' in invited.get_data(as_text=True)
    listed = text_of(browser.get("/agency/members"))
    assert "nouvelle@ands.example.fr" in listed and "/invitations/" not in listed
    webhooks = browser.get("/agency/webhooks")
    assert webhooks.status_code == 200 and "Add an endpoint" in text_of(webhooks)
    wrong = browser.post("/agency/webhooks", {"url": "ftp://example.org"})
    assert wrong.status_code == 422 and 'id="error-url"' in wrong.get_data(as_text=True)
    added = browser.post("/agency/webhooks", {"url": "https://receiver.example.net/hooks"})
    assert added.status_code == 201, text_of(added)
    assert "https://receiver.example.net/hooks" in text_of(browser.get("/agency/webhooks"))
    [endpoint_id] = re.findall(
        r"/agency/webhooks/([0-9a-f-]{36})/delete", added.get_data(as_text=True)
    )
    removed = browser.post(f"/agency/webhooks/{endpoint_id}/delete")
    assert removed.status_code == 303
    after = text_of(browser.get("/agency/webhooks"))
    assert "The endpoint https://receiver.example.net/hooks is removed." in after
    assert "No endpoint yet." in after


def test_buyers_are_refused_and_posts_need_the_csrf_token(demo_app: Flask) -> None:
    order_id = _pending_order(demo_app)
    buyer = sign_in(demo_app, BUYER, "en")
    assert buyer.get("/approvals").status_code == 403
    assert buyer.post(f"/approvals/{order_id}/approve").status_code == 403
    approver = sign_in(demo_app, APPROVER, "en")
    forged = approver.client.post(f"/approvals/{order_id}/approve")
    assert forged.status_code == 403
    assert _order_state(demo_app, order_id) is OrderState.PENDING_APPROVAL
