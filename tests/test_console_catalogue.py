"""The buyer's catalogue page: every filter of the API as a GET form, in both languages."""

from __future__ import annotations

from flask import Flask

from tests.console_support import BUYER, sign_in, text_of


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
