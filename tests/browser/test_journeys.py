"""What each demo person does in the console, in a browser, in French and in English (issue 17,
"Done when" 1 and 2): signed in through the demo identity provider, a buyer filters the
catalogue by a certification, compares two offers, orders one, sees its machine become active
and stops it; an approver approves an order over the agency's threshold; an operator publishes
a new version of an offer; an assessor verifies the pending claim; finance finalizes last
month's invoice and downloads its PDF; an admin revokes an API client; and an order is placed
with the keyboard alone.

Each pass has its own server (conftest.py), so both walk the same demo. The words asserted are
the ones a person reads, in the pass's language (`SAY[phrase][lang]`). Elements are found by
their label, id, text or form action, never by the layout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import (
    ADMIN,
    APPROVER,
    ASSESSOR,
    BUYER,
    FINANCE,
    OPERATOR,
    Live,
    lang_of,
    shot,
    sign_in,
    wait_for,
)

# The words asserted, in each language (the French of broker/translations/fr).
SAY: dict[str, dict[str, str]] = {
    "show offers": {"en": "Show offers", "fr": "Afficher les offres"},
    "compare selected": {"en": "Compare the selected offers", "fr": "Comparer les offres cochées"},
    "compare offers": {"en": "Compare offers", "fr": "Comparer des offres"},
    "compare": {"en": "Compare ", "fr": "Comparer "},
    "order": {"en": "Order ", "fr": "Commander "},
    "policy says": {
        "en": "What your agency's policy says",
        "fr": "Ce que prévoit la politique de votre organisme",
    },
    "place the order": {"en": "Place the order", "fr": "Passer la commande"},
    "placed": {
        "en": "Your order is placed. Its machines are being made.",
        "fr": "Votre commande est passée. Ses machines sont en cours de création.",
    },
    "placed for approval": {
        "en": "Your order is placed. It waits for an approver of your agency.",
        "fr": (
            "Votre commande est passée. Elle attend l’approbation d’un approbateur de votre "
            "organisme."
        ),
    },
    "stop": {"en": "Stop", "fr": "Arrêter"},
    "machine stopping": {
        "en": "The machine is stopping.",
        "fr": "La machine est en cours d’arrêt.",
    },
    "active": {"en": "active", "fr": "active"},
    "stopping": {"en": "stopping", "fr": "arrêt en cours"},
    "stopped": {"en": "stopped", "fr": "arrêtée"},
    "awaiting approval": {"en": "awaiting approval", "fr": "en attente d’approbation"},
    "approve": {"en": "Approve ", "fr": "Approuver "},
    "approved": {
        "en": "Order {name} approved: its machines are being made.",
        "fr": "Commande {name} approuvée : ses machines sont en cours de création.",
    },
    "save as new version": {
        "en": "Save as a new version",
        "fr": "Enregistrer comme nouvelle version",
    },
    "version drafted": {
        "en": "Version {version} created as a draft.",
        "fr": "Version {version} créée à l’état de brouillon.",
    },
    "publish": {"en": "Publish this version", "fr": "Publier cette version"},
    "version published": {
        "en": "Version {version} is published.",
        "fr": "La version {version} est publiée.",
    },
    "published": {"en": "published", "fr": "publiée"},
    "verify": {"en": "Verify", "fr": "Vérifier"},
    "claim verified": {
        "en": "The claim of {provider} is verified.",
        "fr": "La déclaration de {provider} est vérifiée.",
    },
    "void": {"en": "Void this invoice", "fr": "Annuler cette facture"},
    "voided": {"en": "Invoice {number} is void.", "fr": "La facture {number} est annulée."},
    "start run": {"en": "Start the billing run", "fr": "Lancer la facturation"},
    "finalize": {"en": "Finalize this invoice", "fr": "Émettre cette facture"},
    "issued": {"en": "Invoice {number} is issued.", "fr": "La facture {number} est émise."},
    "finalized": {"en": "finalized", "fr": "émise"},
    "revoke": {"en": "Revoke ", "fr": "Révoquer "},
    "client revoked": {
        "en": "The API client {name} is revoked.",
        "fr": "Le client d’API {name} est révoqué.",
    },
    "revoked": {"en": "revoked", "fr": "révoqué"},
}
HEALTH_AGENCY = "Agence nationale des données de santé"
CITY = "Ville de Québec"
INVOICE_ROWS = "main tbody tr"  # the invoices' table (the page also lists the agencies)
PENDING_CLAIM_PROVIDER = "Atlantic Compute Europe"
MACHINE_WAIT = 30.0


def say(live: Live, phrase: str, **values: str) -> str:
    return SAY[phrase][live.lang].format(**values)


# --- finding things as a person does -------------------------------------------------------------


def main_text(driver: Any) -> str:
    return str(driver.find_element(By.TAG_NAME, "main").text)


def notices(driver: Any) -> list[str]:
    return [str(n.text) for n in driver.find_elements(By.CSS_SELECTOR, "main [role=status]")]


def button(driver: Any, text: str, within: Any = None) -> WebElement:
    """The button whose words are `text` (or start with it, when it ends with a space)."""
    scope = within or driver
    found = [
        b
        for b in scope.find_elements(By.TAG_NAME, "button")
        if (b.text.startswith(text) if text.endswith(" ") else b.text.strip() == text)
    ]
    assert found, f"no button {text!r} on {driver.current_url}:\n{main_text(driver)[:2000]}"
    return found[0]


def link(driver: Any, text: str) -> WebElement:
    """The link of the main content whose words are `text` (or start with it)."""
    for anchor in driver.find_elements(By.CSS_SELECTOR, "main a[href]"):
        if anchor.text.strip() == text or (text.endswith(" ") and anchor.text.startswith(text)):
            return anchor
    raise AssertionError(f"no link {text!r} on {driver.current_url}:\n{main_text(driver)[:2000]}")


def field(driver: Any, name: str) -> WebElement:
    """A form field, by the id the console's macros give it (`field-<name>`)."""
    return driver.find_element(By.ID, "field-" + name.replace(".", "-"))


def fill(driver: Any, name: str, value: str) -> None:
    element = field(driver, name)
    element.clear()
    element.send_keys(value)


def submit(driver: Any, element: WebElement) -> None:
    """Click a button and wait for the page it leads to."""
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait_for(driver, lambda d: _stale(old))


def _stale(element: WebElement) -> bool:
    try:
        element.is_enabled()
    except Exception:  # noqa: BLE001 — StaleElementReferenceException: a new page
        return True
    return False


def reload_until(driver: Any, check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, (
            f"{what} not seen within {timeout}s:\n" + main_text(driver)[:2000]
        )
        time.sleep(0.5)
        driver.refresh()


def row_with(driver: Any, *words: str, rows: str = "main tr, main li") -> WebElement:
    """The table row or card of the main content that mentions every word."""
    for row in driver.find_elements(By.CSS_SELECTOR, rows):
        if all(word in row.text for word in words):
            return row
    raise AssertionError(f"nothing with {words} on {driver.current_url}:\n{main_text(driver)}")


def place_order(driver: Any, live: Live, search: str, name: str, quantity: int) -> None:
    """From the catalogue: find the offer, open it, order `quantity` machines."""
    driver.get(live.base_url + "/catalogue")
    fill(driver, "q", search)
    submit(driver, button(driver, say(live, "show offers")))
    submit(driver, driver.find_element(By.CSS_SELECTOR, "main h3 a"))
    submit(driver, driver.find_element(By.CSS_SELECTOR, "main a[href$='/order']"))
    fill(driver, "name", name)
    fill(driver, "quantity", str(quantity))
    submit(driver, button(driver, say(live, "place the order")))


# --- the journeys -------------------------------------------------------------------------------


def test_a_buyer_filters_compares_orders_sees_the_machine_active_and_stops_it(
    live: Live, driver: Any
) -> None:
    sign_in(driver, live, BUYER)
    driver.get(live.base_url + "/catalogue")
    Select(field(driver, "kind")).select_by_value("vm")
    Select(field(driver, "certification")).select_by_value("secnumcloud")
    submit(driver, button(driver, say(live, "show offers")))
    assert "certification=secnumcloud" in driver.current_url and "kind=vm" in driver.current_url
    offers = driver.find_elements(By.CSS_SELECTOR, "main input[type=checkbox][name=offer]")
    assert len(offers) >= 2, main_text(driver)
    names = []
    for box in offers[:2]:
        label = driver.find_element(By.CSS_SELECTOR, f"label[for='{box.get_attribute('id')}']")
        assert label.text.startswith(say(live, "compare")), label.text
        names.append(label.text[len(say(live, "compare")) :])
        label.click()
    shot(driver, live.lang, "journey-catalogue-filtered")
    submit(driver, button(driver, say(live, "compare selected")))
    assert driver.find_element(By.TAG_NAME, "h1").text == say(live, "compare offers")
    table = driver.find_element(By.CSS_SELECTOR, "main table")
    assert all(name in table.text for name in names), table.text
    shot(driver, live.lang, "journey-compare")

    submit(driver, link(driver, say(live, "order") + names[0]))
    assert say(live, "policy says") in main_text(driver)
    machine_name = f"web-{live.lang}"
    fill(driver, "name", machine_name)
    shot(driver, live.lang, "journey-order-form")
    submit(driver, button(driver, say(live, "place the order")))
    assert say(live, "placed") in notices(driver), main_text(driver)

    reload_until(
        driver,
        lambda: bool(driver.find_elements(By.CSS_SELECTOR, "main a[href*='/machines/']")),
        "the machine of the order",
        MACHINE_WAIT,
    )
    submit(driver, driver.find_element(By.CSS_SELECTOR, "main a[href*='/machines/']"))
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith(machine_name)
    reload_until(
        driver,
        lambda: say(live, "active") in _machine_state(driver),
        "the machine active",
        MACHINE_WAIT,
    )
    shot(driver, live.lang, "journey-machine-active")
    submit(driver, button(driver, say(live, "stop")))
    assert say(live, "machine stopping") in notices(driver), main_text(driver)
    assert _machine_state(driver) in (say(live, "stopping"), say(live, "stopped"))


def _machine_state(driver: Any) -> str:
    states = driver.find_elements(By.CSS_SELECTOR, "main h1 ~ p .state, main .state")
    return str(states[0].text) if states else ""


def test_an_approver_approves_an_order_over_the_threshold(live: Live, driver: Any) -> None:
    # 5 × Standard L — Paris (€239.76 a month each) is over the agency's €1,000 threshold.
    sign_in(driver, live, BUYER)
    name = f"big-{live.lang}"
    place_order(driver, live, "hc-std-l-par", name, 5)
    assert say(live, "placed for approval") in notices(driver), main_text(driver)
    assert say(live, "awaiting approval") in main_text(driver)

    sign_in(driver, live, APPROVER)
    driver.get(live.base_url + "/approvals")
    shot(driver, live.lang, "journey-approvals")
    submit(driver, button(driver, say(live, "approve") + name))
    assert say(live, "approved", name=name) in notices(driver), main_text(driver)
    assert name not in main_text(driver).replace(say(live, "approved", name=name), "")


def test_an_operator_publishes_a_new_version_of_an_offer(live: Live, driver: Any) -> None:
    sign_in(driver, live, OPERATOR)
    driver.get(live.base_url + "/provider/offers")
    submit(driver, link(driver, "Standard M — Lyon"))
    renamed = f"Standard M — Lyon ({live.lang})"
    fill(driver, "name", renamed)
    submit(driver, button(driver, say(live, "save as new version")))
    assert say(live, "version drafted", version="2") in notices(driver), main_text(driver)
    submit(driver, button(driver, say(live, "publish")))
    assert say(live, "version published", version="2") in notices(driver), main_text(driver)
    assert driver.find_element(By.TAG_NAME, "h1").text == renamed
    assert say(live, "published") in row_with(driver, renamed).text
    shot(driver, live.lang, "journey-offer-published")


def test_an_assessor_verifies_a_pending_claim(live: Live, driver: Any) -> None:
    sign_in(driver, live, ASSESSOR)
    driver.get(live.base_url + "/evidence")
    row = row_with(driver, PENDING_CLAIM_PROVIDER, "secnumcloud")
    submit(driver, button(driver, say(live, "verify"), within=row))
    said = say(live, "claim verified", provider=PENDING_CLAIM_PROVIDER)
    assert said in notices(driver), main_text(driver)


def test_finance_finalizes_last_months_invoice_and_downloads_its_pdf(
    live: Live, driver: Any, downloads: Path
) -> None:
    """The demo's last month is closed (its invoices issued, the health agency's credited):
    unless a draft is left, finance voids the city's, bills the month again and finalizes the
    new draft."""
    sign_in(driver, live, FINANCE)
    period = _last_month()
    driver.get(f"{live.base_url}/invoices?period={period}&state=draft")
    if row_with_or_none(driver, CITY, rows=INVOICE_ROWS) is None:
        driver.get(f"{live.base_url}/invoices?period={period}&state=finalized")
        submit(driver, row_with(driver, CITY, rows=INVOICE_ROWS).find_element(By.CSS_SELECTOR, "a"))
        fill(driver, "reason", "Refait : usage corrigé." if live.lang == "fr" else "Usage fixed.")
        number = _invoice_number(driver)
        submit(driver, button(driver, say(live, "void")))
        assert say(live, "voided", number=number) in notices(driver), main_text(driver)
        driver.get(f"{live.base_url}/billing-runs")
        # A month field: its value as the form sends it (YYYY-MM), whatever the widget shows.
        driver.execute_script("arguments[0].value = arguments[1]", field(driver, "period"), period)
        submit(driver, button(driver, say(live, "start run")))
        driver.get(f"{live.base_url}/invoices?period={period}&state=draft")
        reload_until(
            driver,
            lambda: bool(row_with_or_none(driver, CITY, rows=INVOICE_ROWS)),
            "the new draft",
            MACHINE_WAIT,
        )
    submit(driver, row_with(driver, CITY, rows=INVOICE_ROWS).find_element(By.CSS_SELECTOR, "a"))
    submit(driver, button(driver, say(live, "finalize")))
    number = _invoice_number(driver)
    assert say(live, "issued", number=number) in notices(driver), main_text(driver)
    shot(driver, live.lang, "journey-invoice-issued")
    before = set(downloads.glob("*.pdf"))
    driver.find_element(By.CSS_SELECTOR, "main a[href$='/download/pdf']").click()
    deadline = time.monotonic() + 15
    while not (set(downloads.glob("*.pdf")) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    (pdf,) = set(downloads.glob("*.pdf")) - before
    assert pdf.read_bytes().startswith(b"%PDF-")


def row_with_or_none(driver: Any, *words: str, rows: str = "main tr, main li") -> WebElement | None:
    try:
        return row_with(driver, *words, rows=rows)
    except AssertionError:
        return None


def _last_month() -> str:
    from broker.demo_history import previous_period
    from broker.models.base import utcnow

    return previous_period(utcnow())


def _invoice_number(driver: Any) -> str:
    """The invoice's number, as its page's heading shows it (YYYY-NNNNNN)."""
    found = re.search(r"\b\d{4}-\d{6}\b", driver.find_element(By.TAG_NAME, "h1").text)
    assert found, main_text(driver)
    return found.group(0)


def test_an_admin_revokes_an_api_client(live: Live, driver: Any) -> None:
    sign_in(driver, live, ADMIN)
    driver.get(live.base_url + "/admin/clients")
    revoke = [
        b
        for b in driver.find_elements(By.TAG_NAME, "button")
        if b.text.startswith(say(live, "revoke"))
    ]
    if not revoke:  # the page asks for an organization first
        chooser = Select(field(driver, "organization"))
        chooser.select_by_visible_text(HEALTH_AGENCY)
        submit(driver, driver.find_element(By.CSS_SELECTOR, "main form[role=search] button"))
        revoke = [
            b
            for b in driver.find_elements(By.TAG_NAME, "button")
            if b.text.startswith(say(live, "revoke"))
        ]
    assert revoke, main_text(driver)
    name = revoke[-1].text[len(say(live, "revoke")) :]
    submit(driver, revoke[-1])
    assert say(live, "client revoked", name=name) in notices(driver), main_text(driver)
    assert say(live, "revoked") in row_with(driver, name).text


def test_an_order_is_placed_with_the_keyboard_alone(live: Live, driver: Any) -> None:
    sign_in(driver, live, BUYER)
    driver.get(live.base_url + "/catalogue?q=hc-std-s-par")
    tab_to(driver, lambda e: e.tag_name == "a" and "/catalogue/" in _path(e))
    press(driver, Keys.ENTER)
    tab_to(driver, lambda e: e.tag_name == "a" and _path(e).endswith("/order"))
    press(driver, Keys.ENTER)
    tab_to(driver, lambda e: e.get_attribute("id") == "field-name")
    press(driver, f"keys-{live.lang}")
    tab_to(driver, lambda e: e.tag_name == "button" and e.text == say(live, "place the order"))
    press(driver, Keys.SPACE)
    assert say(live, "placed") in notices(driver), main_text(driver)
    assert f"keys-{live.lang}" in driver.find_element(By.TAG_NAME, "h1").text


def _path(element: WebElement) -> str:
    return urlsplit(str(element.get_attribute("href") or "")).path


def press(driver: Any, keys: str) -> None:
    old = driver.find_element(By.TAG_NAME, "html")
    ActionChains(driver).send_keys(keys).perform()
    if keys in (Keys.ENTER, Keys.SPACE):
        wait_for(driver, lambda d: _stale(old))


def tab_to(driver: Any, wanted: Callable[[WebElement], bool], limit: int = 80) -> None:
    """Tab through the page until the focused element is the one wanted."""
    for _ in range(limit):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if wanted(driver.switch_to.active_element):
            assert lang_of(driver)
            return
    raise AssertionError(f"not reached with Tab on {driver.current_url}")
