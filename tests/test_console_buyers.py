"""The buyer's pages on the demo: comparing offers, the order form's policy check, placing
and cancelling an order, a machine's page and its actions, a volume ordered and resized, a
vault's secret key shown once, and who may see what."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.jobs.handlers import HANDLERS, ON_DEAD
from broker.jobs.queue import JobContext, run_pending
from broker.models import (
    BillingProfile,
    Offer,
    OfferState,
    Order,
    OrderState,
    Resource,
    ResourceState,
)
from tests.console_support import (
    BUYER,
    OPERATOR,
    QC_BUYER,
    Browser,
    organization_id,
    sign_in,
    text_of,
)


def _offer(app: Flask, sku: str) -> Offer:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        found = session.scalar(
            select(Offer).where(Offer.sku == sku, Offer.state == OfferState.PUBLISHED)
        )
        assert found is not None, sku
        return found


def _orders(app: Flask) -> list[Order]:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        return list(session.scalars(select(Order).order_by(Order.created_at)))


def _machine(app: Flask, name: str) -> Resource:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        found = session.scalar(select(Resource).where(Resource.name == name))
        assert found is not None, name
        return found


def _euros(amount: Decimal) -> str:
    return f"€{amount:,.2f}"


def test_a_buyer_compares_two_offers_for_two_machines(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    dublin, paris = _offer(demo_app, "ace-gp-s-dub"), _offer(demo_app, "hc-std-s-par")
    page = browser.get(f"/compare?offer={dublin.id}&offer={paris.id}&quantity=2")
    assert page.status_code == 200
    words = text_of(page)
    assert dublin.name in words and paris.name in words
    assert "2 machines for 730 hours a month" in words
    assert _euros(dublin.monthly_price * 2) in words  # €66.12
    assert _euros(paris.monthly_price * 2) in words  # €92.14
    assert "Exposed to foreign law" in words and "Certifications valid today" in words

    five = "&".join(
        f"offer={_offer(demo_app, sku).id}"
        for sku in ("ace-gp-s-dub", "hc-std-s-par", "hc-dev-s-lyo", "ace-gp-s-ams", "hc-std-m-par")
    )
    refused = browser.get(f"/compare?{five}")
    assert refused.status_code == 422
    assert "Choose between two and four offers to compare; you chose 5." in text_of(refused)


def test_checking_an_order_shows_the_policy_and_changes_nothing(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    big = _offer(demo_app, "hc-mem-xl-par")  # €733.56 a month: two are over the threshold
    before = len(_orders(demo_app))
    page = browser.post(
        f"/catalogue/{big.id}/order",
        {"action": "check", "name": "calcul", "quantity": "2", "idempotency_key": "k1"},
    )
    assert page.status_code == 200
    words = text_of(page)
    assert "What your agency's policy says Allowed." in words
    assert "This order will wait for an approver of your agency" in words
    assert f"Cost a month {_euros(big.monthly_price * 2)}" in words
    assert "Budget left this month €" in words

    wrong = browser.post(
        f"/catalogue/{big.id}/order",
        {"action": "place", "name": "Calcul !", "quantity": "0", "idempotency_key": "k2"},
    )
    assert wrong.status_code == 422
    body = wrong.get_data(as_text=True)
    assert 'id="error-name"' in body and 'id="error-quantity"' in body
    assert len(_orders(demo_app)) == before


def test_a_buyer_places_an_order_once_and_cancels_it(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    big = _offer(demo_app, "hc-mem-xl-par")
    form = browser.get(f"/catalogue/{big.id}/order").get_data(as_text=True)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form)
    assert key is not None
    data = {"action": "place", "name": "calcul", "quantity": "2", "idempotency_key": key[1]}
    placed = browser.post(f"/catalogue/{big.id}/order", data)
    assert placed.status_code == 303
    again = browser.post(f"/catalogue/{big.id}/order", data)  # a double click
    assert again.status_code == 303 and again.location == placed.location
    [order] = [o for o in _orders(demo_app) if o.name == "calcul"]
    assert order.state is OrderState.PENDING_APPROVAL and order.quantity == 2
    assert placed.location.endswith(f"/orders/{order.id}")

    page = text_of(browser.get(placed.location))
    assert "Your order is placed. It waits for an approver of your agency." in page
    assert "awaiting approval" in page and _euros(order.monthly_cost) in page
    cancelled = browser.post(f"/orders/{order.id}/cancel")
    assert cancelled.status_code == 303
    assert "The order is cancelled." in text_of(browser.get(cancelled.location))
    assert [o.state for o in _orders(demo_app) if o.id == order.id] == [OrderState.CANCELLED]


def test_a_buyer_stops_a_machine_from_its_page(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    machine = _machine(demo_app, "dossier-patient-1")
    page = browser.get(f"/machines/{machine.id}")
    assert page.status_code == 200
    words = text_of(page)
    assert "dossier-patient-1 Machine active" in words and "Cost so far this month €" in words
    assert '<button type="submit" name="action" value="stop">Stop</button>' in page.get_data(
        as_text=True
    )
    assert 'role="img"' in page.get_data(as_text=True)

    forged = browser.client.post(f"/machines/{machine.id}/action", data={"action": "stop"})
    assert forged.status_code == 403
    assert _machine(demo_app, "dossier-patient-1").state is ResourceState.ACTIVE

    stopped = browser.post(f"/machines/{machine.id}/action", {"action": "stop"})
    assert stopped.status_code == 303
    assert _machine(demo_app, "dossier-patient-1").state is ResourceState.STOPPING
    words = text_of(browser.get(stopped.location))
    assert "The machine is stopping." in words and "stopping" in words
    assert 'value="stop"' not in browser.get(stopped.location).get_data(as_text=True)


def test_only_the_agency_sees_its_orders_and_machines(demo_app: Flask) -> None:
    machine = _machine(demo_app, "dossier-patient-1")
    other = sign_in(demo_app, QC_BUYER, "en")
    assert other.get(f"/machines/{machine.id}").status_code == 404
    assert other.get(f"/orders/{machine.order_id}").status_code == 404
    assert "dossier-patient" not in text_of(other.get("/machines"))
    operator = sign_in(demo_app, OPERATOR, "en")
    refused = operator.get("/orders")
    assert refused.status_code == 403 and "This page needs the role" in text_of(refused)
    assert sign_in(demo_app, BUYER, "en").get(f"/orders/{uuid.uuid4()}").status_code == 404


def _run_jobs(app: Flask) -> None:
    """Run the jobs due now and a few minutes later (the simulated clouds take seconds to make
    something, and the jobs poll them): the app's clock, which the clouds read, moves on."""
    database: Database = app.extensions["broker.db"]
    for _ in range(2):
        shift = app.config.get("TEST_SHIFT", timedelta(0)) + timedelta(minutes=5)
        app.config["TEST_SHIFT"] = shift
        app.config["CLOCK"] = clock = lambda shift=shift: datetime.now(UTC) + shift
        while run_pending(JobContext(database, app.config, now=clock), HANDLERS, on_dead=ON_DEAD):
            pass


def _place(browser: Browser, offer: Offer, name: str) -> Resource:
    """Order one of `offer` from its order form, and run the jobs that make it."""
    form = browser.get(f"/catalogue/{offer.id}/order").get_data(as_text=True)
    key = re.search(r'name="idempotency_key" value="([^"]+)"', form)
    assert key is not None
    data = {"action": "place", "name": name, "quantity": "1", "idempotency_key": key[1]}
    placed = browser.post(f"/catalogue/{offer.id}/order", data)
    assert placed.status_code == 303, text_of(placed)
    _run_jobs(browser.client.application)
    return _machine(browser.client.application, name)


def test_a_buyer_orders_a_volume_and_resizes_it(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    offer = _offer(demo_app, "hc-bloc-ssd-par")
    form = text_of(browser.get(f"/catalogue/{offer.id}/order"))
    assert "Volume of 100 GiB" in form and "€8.00 a month for one volume" in form
    assert "SSH public key" not in form
    volume = _place(browser, offer, "archives-01")
    assert volume.kind == "volume" and volume.state is ResourceState.ACTIVE
    path = f"/machines/{volume.id}"
    words = text_of(browser.get(path))
    assert "archives-01 Volume active" in words and "Size 100 GiB" in words
    assert "Attached to No machine" in words and "Delete the volume" in words

    shrink = browser.post(f"{path}/action", {"action": "resize", "size_gib": "50"})
    assert shrink.status_code == 422
    assert 'id="error-size_gib"' in shrink.get_data(as_text=True)
    assert "A volume only grows" in text_of(shrink) and "More than 100 GiB." in text_of(shrink)
    assert _machine(demo_app, "archives-01").state is ResourceState.ACTIVE

    grown = browser.post(f"{path}/action", {"action": "resize", "size_gib": "200"})
    assert grown.status_code == 303
    assert "The volume is being resized." in text_of(browser.get(grown.location))
    _run_jobs(demo_app)
    resized = _machine(demo_app, "archives-01")
    assert resized.size_gib == 200 and resized.state is ResourceState.ACTIVE
    assert "Size 200 GiB" in text_of(browser.get(path))
    listed = text_of(browser.get("/machines?kind=volume"))
    assert "archives-01 Volume 200 GiB" in listed and "dossier-patient" not in listed


def test_a_vaults_secret_key_is_shown_once_and_its_retention_never_shortened(
    demo_app: Flask,
) -> None:
    browser = sign_in(demo_app, QC_BUYER, "fr")
    vault = _place(browser, _offer(demo_app, "nn-coffre-mtl"), "registres")
    path = f"/machines/{vault.id}"
    page = text_of(browser.get(path))
    assert "Coffre-fort" in page and "Afficher la clé secrète (une seule fois)" in page

    shown = browser.post(f"{path}/secret")
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    words = text_of(shown)
    assert "elle ne sera plus affichée" in words
    secret = re.search(r"Clé secrète (\S+)", words)
    assert secret is not None and secret[1] not in text_of(browser.get(path))
    again = browser.post(f"{path}/secret")
    assert again.status_code == 409 and secret[1] not in text_of(again)
    assert "La clé secrète a déjà été affichée une fois" in text_of(again)

    shorter = browser.post(f"{path}/action", {"action": "set_retention", "retention_days": "30"})
    assert shorter.status_code == 422
    assert 'id="error-retention_days"' in shorter.get_data(as_text=True)
    assert _machine(demo_app, "registres").retention_days == 365


def _form_key(page: str) -> str:
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)
    assert key is not None
    return key[1]


def test_an_order_carries_the_references_its_invoices_need(demo_app: Flask) -> None:
    """The order form fills in the agency's service code and commitment number (its billing
    profile requires both), keeps the ones typed, and says by its field a required one that
    neither the form nor the profile gives — ordering nothing."""
    browser = sign_in(demo_app, BUYER, "en")
    offer = _offer(demo_app, "hc-std-s-par")
    path = f"/catalogue/{offer.id}/order"
    form = browser.get(path).get_data(as_text=True)
    assert '<label for="field-buyer_reference">Service code (buyer reference)</label>' in form
    assert (
        'id="field-purchase_order_reference" name="purchase_order_reference" type="text" '
        'value="EJ-2026-000142" required aria-describedby="hint-purchase_order_reference"'
    ) in form
    assert (
        "Service code (buyer reference) Required by your agency. Printed on the invoice. "
        "Left empty, your agency's default applies: DSI-CLOUD."
    ) in text_of(browser.get(path))

    database: Database = demo_app.extensions["broker.db"]
    with database.transaction() as session:
        agency = organization_id(demo_app, "Agence nationale des données de santé")
        session.get_one(BillingProfile, agency).purchase_order_reference = None
    empty = {"action": "place", "name": "dossiers", "quantity": "1"}
    checked = browser.post(path, {**empty, "action": "check", "idempotency_key": "k"})
    assert checked.status_code == 422 and "What your agency's policy says" in text_of(checked)
    assert 'id="error-purchase_order_reference"' in checked.get_data(as_text=True)
    refused = browser.post(path, {**empty, "idempotency_key": _form_key(form)})
    assert refused.status_code == 422
    body = refused.get_data(as_text=True)
    assert (
        'id="error-purchase_order_reference"' in body and 'id="error-buyer_reference"' not in body
    )
    assert (
        "Commitment number (purchase order reference): Your agency requires a commitment number "
        "on every order: enter one."
    ) in text_of(refused)
    assert not [o for o in _orders(demo_app) if o.name == "dossiers"]

    typed = {"buyer_reference": " DSI-SANTE ", "purchase_order_reference": "EJ-2030-000777"}
    placed = browser.post(path, {**empty, **typed, "idempotency_key": _form_key(body)})
    assert placed.status_code == 303, text_of(placed)
    [order] = [o for o in _orders(demo_app) if o.name == "dossiers"]
    assert (order.buyer_reference, order.purchase_order_reference) == (
        "DSI-SANTE",
        "EJ-2030-000777",
    )
    words = text_of(browser.get(placed.location))
    assert "Service code (buyer reference) DSI-SANTE" in words
    assert "Commitment number (purchase order reference) EJ-2030-000777" in words
