"""Every main page of the console, as each demo person sees it, in French and in English: in
the pass's language (`<html lang>`), with no serious or critical WCAG 2.1 AA violation found by
axe-core, with the security headers; a screenshot of each for reviewers when asked
(`make screenshots`). The main pages are the person's navigation and, in each section, the
first thing it lists (an offer, an order, an invoice…). A form posted without its CSRF token is
refused and changes nothing.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from selenium.webdriver.common.by import By

from tests.browser.conftest import (
    ADMIN,
    APPROVER,
    ASSESSOR,
    AXE_SCRIPT,
    BUYER,
    FINANCE,
    OPERATOR,
    Live,
    axe,
    describe,
    lang_of,
    session_cookies,
    shot,
    sign_in,
    wait_for,
)

PEOPLE = {
    "buyer": BUYER,
    "approver": APPROVER,
    "operator": OPERATOR,
    "assessor": ASSESSOR,
    "finance": FINANCE,
    "admin": ADMIN,
}


def security_problems(response: requests.Response) -> list[str]:
    """What is missing from a console page's security headers."""
    headers = response.headers
    policy = headers.get("Content-Security-Policy", "")
    found = []
    if not policy:
        found.append("no Content-Security-Policy")
    if "'unsafe-inline'" in policy or "'unsafe-eval'" in policy:
        found.append(f"an unsafe Content-Security-Policy: {policy}")
    if "frame-ancestors 'none'" not in policy:
        found.append("no frame-ancestors 'none'")
    if headers.get("X-Content-Type-Options") != "nosniff":
        found.append("no X-Content-Type-Options: nosniff")
    if not headers.get("Referrer-Policy"):
        found.append("no Referrer-Policy")
    return found


def check_page(driver: Any, live: Live, name: str, cookies: dict[str, str]) -> list[str]:
    """The current page's problems: language, accessibility, headers (and its screenshot)."""
    found = []
    path = urlsplit(driver.current_url).path
    if lang_of(driver) != live.lang:
        found.append(f"{path}: <html lang={lang_of(driver)!r}>, not {live.lang!r}")
    if AXE_SCRIPT.exists():
        violations = axe(driver)
        if violations:
            found.append(f"{path}: axe-core finds\n{describe(violations)}")
    answer = requests.get(driver.current_url, cookies=cookies, timeout=10, allow_redirects=False)
    if answer.status_code != 200:
        found.append(f"{path}: GET answers {answer.status_code}")
    found.extend(f"{path}: {problem}" for problem in security_problems(answer))
    shot(driver, live.lang, name)
    return found


def page_name(role: str, path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    # Identifiers make poor file names: the section and "item" instead.
    words = ["item" if re.fullmatch(r"[0-9a-f-]{32,36}", p) else p for p in parts]
    return "-".join([role, *words]) or role


def links(driver: Any, selector: str) -> list[str]:
    return [
        str(a.get_attribute("href"))
        for a in driver.find_elements(By.CSS_SELECTOR, selector)
        if a.get_attribute("href")
    ]


def first_item(driver: Any, section: str) -> str | None:
    """The first link of the page's main content to a page under this section (an offer of
    the catalogue, an invoice of the list…), pagers and downloads aside."""
    base = urlsplit(section).path.rstrip("/") + "/"
    for href in links(driver, "main a[href]"):
        parts = urlsplit(href)
        if parts.path.startswith(base) and not parts.query and "/download" not in parts.path:
            return href
    return None


# The pages checked in each pass: a page two people share (the catalogue of a buyer and of an
# approver, the invoices of finance and of an admin) is checked for the first one.
CHECKED: dict[str, set[str]] = {}


# Pages reached from a section's page rather than under it: the first link matching each.
REACHED_FROM_SECTIONS = ("main a[href$='/billing-profile']",)


def page_key(url: str) -> str:
    return re.sub(r"[0-9a-f-]{32,36}", "<id>", urlsplit(url).path)


@pytest.mark.parametrize("role", list(PEOPLE))
def test_each_persons_main_pages_are_accessible_safe_and_in_the_language(
    live: Live, driver: Any, role: str
) -> None:
    sign_in(driver, live, PEOPLE[role])
    cookies = session_cookies(driver)
    sections = links(driver, "nav a[href]")
    assert sections, f"{role} has no navigation"
    checked = CHECKED.setdefault(live.lang, set())
    problems: list[str] = []
    for section in sections:
        driver.get(section)
        if page_key(section) not in checked:
            checked.add(page_key(section))
            problems += check_page(driver, live, page_name(role, urlsplit(section).path), cookies)
        items = [first_item(driver, section)]
        items += [next(iter(links(driver, selector)), None) for selector in REACHED_FROM_SECTIONS]
        for item in items:
            if item and page_key(item) not in checked:
                checked.add(page_key(item))
                driver.get(item)
                problems += check_page(driver, live, page_name(role, urlsplit(item).path), cookies)
    assert not problems, "\n".join(problems)


def test_the_sign_in_pages_are_accessible(live: Live, driver: Any) -> None:
    driver.delete_all_cookies()
    driver.get(live.base_url + "/")
    wait_for(driver, lambda d: d.find_elements(By.ID, "password"))
    problems: list[str] = []
    if AXE_SCRIPT.exists():  # the demo identity provider's form (English only: a demo)
        violations = axe(driver)
        if violations:
            problems.append(
                f"the demo identity provider's form: axe-core finds\n{describe(violations)}"
            )
    shot(driver, live.lang, "sign-in")
    sign_in(driver, live, BUYER)
    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_for(driver, lambda d: urlsplit(d.current_url).path == "/auth/signed-out")
    problems += check_page(driver, live, "signed-out", {})
    assert not problems, "\n".join(problems)


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(
    live: Live, driver: Any
) -> None:
    sign_in(driver, live, APPROVER)
    cookies = session_cookies(driver)
    invitee = f"csrf-{live.lang}@ands.example.fr"
    answer = requests.post(
        f"{live.base_url}/agency/invitations",
        data={"email": invitee, "roles": "buyer"},
        cookies=cookies,
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 403, answer.text[:500]
    assert not security_problems(answer)
    driver.get(f"{live.base_url}/agency/members")
    assert lang_of(driver) == live.lang
    assert invitee not in driver.find_element(By.TAG_NAME, "main").text
