"""The provider operator's console pages: their provider and its evidence, their offers
(versions, the ETag handled for them, publishing), machines and usage."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from flask import Flask
from sqlalchemy import select

from broker.db import Database
from broker.models import Evidence, EvidenceState, Offer, OfferState
from tests.console_support import BUYER, OPERATOR, sign_in, text_of


class _Form(HTMLParser):
    """The fields a browser would post from the form whose action is `action`."""

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action, self.inside = action, False
        self.fields: dict[str, Any] = {}
        self.select: str | None = None
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("action") == self.action
        elif not self.inside:
            return
        elif tag == "input" and a.get("name"):
            if a.get("type") == "checkbox":
                if "checked" in a:
                    self.fields.setdefault(a["name"], []).append(a.get("value", "on"))
            else:
                self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self.select = a.get("name")
        elif (
            tag == "option" and self.select and ("selected" in a or self.select not in self.fields)
        ):
            self.fields[self.select] = a.get("value", "")
        elif tag == "textarea":
            self.textarea = a.get("name", "")
            self.fields[self.textarea] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None

    def handle_data(self, data: str) -> None:
        if self.inside and self.textarea:
            self.fields[self.textarea] += data


def form_of(body: str, action: str) -> dict[str, Any]:
    parser = _Form(action)
    parser.feed(body)
    return {k: v for k, v in parser.fields.items() if k != "csrf_token"}


def _offer(app: Flask, sku: str, version: int) -> Offer | None:
    database: Database = app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        return session.scalar(select(Offer).where(Offer.sku == sku, Offer.version == version))


def test_an_operator_edits_a_published_offer_into_a_new_version_and_publishes_it(
    demo_app: Flask,
) -> None:
    browser = sign_in(demo_app, OPERATOR, "en")
    listed = browser.get("/provider/offers")
    assert listed.status_code == 200
    assert "hc-std-s-par" in text_of(listed) and "Sync from the cloud" in text_of(listed)
    published = _offer(demo_app, "hc-std-s-par", 1)
    assert published is not None and published.state is OfferState.PUBLISHED
    path = f"/provider/offers/{published.id}"
    page = browser.get(path)
    assert page.status_code == 200 and "Make the next version" in text_of(page)
    form = form_of(page.get_data(as_text=True), path)
    assert form["revision"] == str(published.revision)
    form["name"] = "Standard S — Paris (2027)"
    form["prices.instance_hour.unit_price"] = "0,005"  # a French decimal comma is understood

    saved = browser.post(path, form)
    assert saved.status_code == 303
    draft = _offer(demo_app, "hc-std-s-par", 2)
    assert draft is not None and draft.state is OfferState.DRAFT
    assert draft.name == "Standard S — Paris (2027)"
    assert saved.headers["Location"].endswith(f"/provider/offers/{draft.id}")
    shown = text_of(browser.get(saved.headers["Location"]))
    assert "Version 2 created as a draft" in shown and "Publish this version" in shown

    publish = browser.post(f"/provider/offers/{draft.id}/publish")
    assert publish.status_code == 303
    assert "Version 2 is published" in text_of(browser.get(publish.headers["Location"]))
    assert (now_published := _offer(demo_app, "hc-std-s-par", 2)) is not None
    assert now_published.state is OfferState.PUBLISHED
    old = _offer(demo_app, "hc-std-s-par", 1)
    assert old is not None and old.state is OfferState.RETIRED


def test_a_stale_revision_or_a_missing_csrf_token_changes_nothing(demo_app: Flask) -> None:
    browser = sign_in(demo_app, OPERATOR, "en")
    offer = _offer(demo_app, "hc-std-m-par", 1)
    assert offer is not None
    path = f"/provider/offers/{offer.id}"
    form = form_of(browser.get(path).get_data(as_text=True), path)
    form["revision"] = str(offer.revision + 7)  # someone saved meanwhile
    form["name"] = "Changed behind their back"

    answer = browser.post(path, form)
    assert answer.status_code == 412
    words = text_of(answer)
    assert "Someone changed this while you were editing" in words
    assert 'value="Standard M — Paris"' in answer.get_data(as_text=True)
    assert _offer(demo_app, "hc-std-m-par", 2) is None
    assert (same := _offer(demo_app, "hc-std-m-par", 1)) is not None
    assert same.name == "Standard M — Paris" and same.revision == offer.revision

    forged = browser.client.post(f"/provider/offers/{offer.id}/retire", data={})
    assert forged.status_code == 403  # no CSRF token
    assert (still := _offer(demo_app, "hc-std-m-par", 1)) is not None
    assert still.state is OfferState.PUBLISHED


def test_a_new_offer_with_a_bad_sku_is_refused_by_the_field(demo_app: Flask) -> None:
    browser = sign_in(demo_app, OPERATOR, "en")
    form = form_of(
        browser.get("/provider/offers/new").get_data(as_text=True), "/provider/offers/new"
    )
    form.update(
        {
            "sku": "-not a sku",
            "name": "Standard XS — Paris",
            "region": "fr-par-1",
            "specs.vcpu": "1",
            "specs.ram_gib": "2",
            "prices.instance_hour.unit_price": "0.01",
        }
    )
    answer = browser.post("/provider/offers/new", form)
    assert answer.status_code == 422
    body = answer.get_data(as_text=True)
    assert 'id="error-sku"' in body and "There is a problem" in text_of(answer)
    assert 'value="Standard XS — Paris"' in body  # what they typed is kept
    assert _offer(demo_app, "-not a sku", 1) is None

    form["sku"] = "hc-std-xs-par"
    made = browser.post("/provider/offers/new", form)
    assert made.status_code == 303
    draft = _offer(demo_app, "hc-std-xs-par", 1)
    assert draft is not None and draft.state is OfferState.DRAFT
    assert draft.monthly_price > 0


def test_an_operator_submits_evidence_and_sees_their_machines_and_usage(demo_app: Flask) -> None:
    browser = sign_in(demo_app, OPERATOR, "en")
    home = browser.get("/provider")
    assert home.status_code == 200
    words = text_of(home)
    assert "Hexagone Cloud" in words and "secnumcloud" in words and "Submit evidence" in words
    digest = "ab" * 32
    answer = browser.post(
        "/provider/evidence",
        {
            **form_of(home.get_data(as_text=True), "/provider/evidence"),
            "kind": "certification",
            "scheme": "bsi-c5",
            "level": "Type 2",
            "valid_from": "2026-01-01",
            "valid_until": "2028-12-31",
            "issuer": "BSI",
            "evidence_url": "https://trust.hexagone-cloud.example/c5.pdf",
            "document_sha256": digest,
        },
    )
    assert answer.status_code == 303
    database: Database = demo_app.extensions["broker.db"]
    with database.session(read_only=True) as session:
        item = session.scalar(select(Evidence).where(Evidence.scheme == "bsi-c5"))
        assert item is not None and item.state is EvidenceState.PENDING
    shown = text_of(browser.get("/provider"))
    assert "an assessor will decide" in shown and "bsi-c5" in shown and digest in shown

    bad = browser.post(
        "/provider/evidence",
        {"provider_id": str(item.provider_id), "kind": "certification", "scheme": "Not A Slug"},
    )
    assert bad.status_code == 422
    assert 'id="error-scheme"' in bad.get_data(as_text=True)
    assert 'id="error-valid_from"' in bad.get_data(as_text=True)

    machines = browser.get("/provider/machines")
    assert machines.status_code == 200
    assert "Machines on your cloud" in text_of(machines)
    usage = browser.get("/provider/usage?metric=instance_hour")
    assert usage.status_code == 200
    assert "metered by the broker" in text_of(usage)
    assert "Agence nationale des données de santé" in text_of(machines)
    assert "€121.34" in text_of(machines)


def test_a_buyer_is_refused_the_operator_pages(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    for path in ("/provider", "/provider/offers", "/evidence"):
        answer = browser.get(path)
        assert answer.status_code == 403, path
        assert "This page needs the role" in text_of(answer)


def test_an_operator_creates_a_volume_offer_priced_by_its_metric_only(demo_app: Flask) -> None:
    browser = sign_in(demo_app, OPERATOR, "en")
    page = browser.get("/provider/offers/new?kind=volume")
    assert page.status_code == 200
    words = text_of(page)
    assert "New offer — Volume" in words and "Size (GiB)" in words and "vCPU" not in words
    assert "Machine time" not in words and "Storage per GiB-month" in words
    form = form_of(page.get_data(as_text=True), "/provider/offers/new")
    form.update(
        {
            "sku": "hc-bloc-ssd-1t-par",
            "name": "Bloc SSD 1 Tio — Paris",
            "region": "fr-par-1",
            "specs.size_gib": "0",
            "prices.storage_gib_month.unit_price": "0,07",
        }
    )
    refused = browser.post("/provider/offers/new", form)
    assert refused.status_code == 422
    assert 'id="error-specs-size_gib"' in refused.get_data(as_text=True)
    assert _offer(demo_app, "hc-bloc-ssd-1t-par", 1) is None

    form["specs.size_gib"] = "1024"
    made = browser.post("/provider/offers/new", form)
    assert made.status_code == 303
    draft = _offer(demo_app, "hc-bloc-ssd-1t-par", 1)
    assert draft is not None and draft.kind == "volume" and draft.state is OfferState.DRAFT
    assert draft.size_gib == 1024 and draft.encrypted and draft.vcpu == 0
    assert [p["metric"] for p in draft.prices] == ["storage_gib_month"]
    assert "€71.68" in text_of(browser.get(made.headers["Location"]))  # 1,024 GiB × €0.07
