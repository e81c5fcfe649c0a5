"""The buyer's catalogue page: every filter of the API as a GET form, in both languages (the
storage filters too: a city finds the demo's vault)."""

from __future__ import annotations

import re

from flask import Flask

from tests.console_support import BUYER, QC_BUYER, sign_in, text_of


def test_a_buyer_filters_the_catalogue_by_a_certification(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    everything = text_of(browser.get("/catalogue"))
    certified = browser.get("/catalogue?certification=secnumcloud&sort=monthly_price")
    assert certified.status_code == 200
    words = text_of(certified)
    assert "Catalogue" in words and "Certification valid today" in words
    assert len(words) < len(everything)


def test_the_tier_filter_keeps_tier_iv_sites_only(demo_app: Flask) -> None:
    browser = sign_in(demo_app, BUYER, "en")
    words = text_of(browser.get("/catalogue?min_datacenter_tier=4"))
    assert "Tier 4" in words and "Tier 3" not in words
    assert "Tier 3" in text_of(browser.get("/catalogue"))


def test_a_city_finds_the_demo_vault_in_french(demo_app: Flask) -> None:
    browser = sign_in(demo_app, QC_BUYER, "fr")
    page = browser.get("/catalogue?kind=object_storage&immutable=true&min_datacenter_tier=4")
    assert page.status_code == 200
    words = text_of(page)
    assert "Boréal Coffre-fort 365 jours — Montréal" in words and "Nordet Nuagique" in words
    assert "Tier 4" in words and "rétention de 365 jours" in words and "Coffre-fort" in words
    assert "pour 1 000 Gio stockés" in words.replace("\u202f", " ")
    assert "Bloc" not in words and "Boréal S" not in words  # no volume, no machine
    offer = browser.get(re.findall(r'href="(/catalogue/[0-9a-f-]{36})"', page.get_data(True))[0])
    assert "Conservation de chaque objet pendant au moins 365 jours" in text_of(offer)
