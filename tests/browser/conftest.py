"""The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven
by Selenium; never a browser download), against the real `broker serve` that `make run`
runs: API, console, worker, the demo identity provider and the seeded demo with a closed
month of history.

Each language pass (`fr`, `en`) has its own server, started together on first use, so the
journeys of one pass do not use up what the other needs (the demo has one pending claim, one
closed month to finalize); and its own browser, reused by the pass's tests. A person signs in
through the demo identity provider's form, as anyone would; the English pass then picks
English with the language switch (the demo people prefer French).

`axe(driver)` runs axe-core (tests/browser/node_modules, installed by `make test` from the
lock file) in the page and returns its serious and critical WCAG 2.1 A/AA violations; the
checks are skipped, with the reason, when npm could not install it. `shot(driver, name)`
writes a full-page PNG to `$BROKER_SCREENSHOTS/<lang>/<name>.png` when that variable is set
(`make screenshots`).

The browser tests run once, on the SQLite run (the services under the pages are tested on
both databases by the API tests).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serving import (
    PROJECT_ROOT,
    Server,
    kill_leftovers,
    serve_environment,
    start,
    wait_until_up,
)

HERE = Path(__file__).resolve().parent
AXE_SCRIPT = HERE / "node_modules" / "axe-core" / "axe.min.js"
LANGUAGES = ("fr", "en")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WAIT = 30.0

# The demo people (broker/demo.py), by what they do.
BUYER = "acheteur@ands.example.fr"
APPROVER = "approbatrice@ands.example.fr"
QC_BUYER = "acheteuse@ville-quebec.example"
QC_APPROVER = "approbateur@ville-quebec.example"
OPERATOR = "exploitation@hexagone-cloud.example"
NORDET_OPERATOR = "exploitation@nordet.example"
ATLANTIC_OPERATOR = "operations@atlantic-compute.example"
ASSESSOR = "evaluatrice@consortium.example"
FINANCE = "finance@consortium.example"
ADMIN = "admin@consortium.example"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = str(HERE)
    ours = [item for item in items if str(item.path).startswith(here)]
    if not ours:
        return
    if config.getoption("--db") == "postgresql":
        reason = "the console in a browser, on `make run`'s database: the SQLite run"
    elif CHROMIUM is None or CHROMEDRIVER is None:
        reason = (
            "chromium and chromedriver are missing: `make system-packages` (as root) installs "
            "Debian's chromium and chromium-driver"
        )
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in ours:
        item.add_marker(skip)


# --- the live servers --------------------------------------------------------------------------


@dataclass
class Live:
    """One language pass: its server, its demo people's passwords, its browser."""

    lang: str
    server: Server
    instance: Path
    started_in: float

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def password(self, email: str) -> str:
        people = json.loads((self.instance / "demo-people.json").read_text())["people"]
        return str(next(p["password"] for p in people if p["email"] == email))


def _serve(root: Path) -> tuple[Server, float]:
    root.mkdir(parents=True, exist_ok=True)
    env = serve_environment(f"sqlite:///{root / 'serve.db'}", root / "instance", root)
    began = time.monotonic()
    server = start(env, root, 1, f"http://127.0.0.1:{env['PORT']}")
    try:
        wait_until_up(server)
    except BaseException:
        kill_leftovers(server)
        raise
    return server, time.monotonic() - began


@pytest.fixture(scope="session")
def live_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Live]]:
    """Both passes' servers, started at the same time."""
    root = tmp_path_factory.mktemp("browser")
    with ThreadPoolExecutor(len(LANGUAGES)) as pool:
        futures = {lang: pool.submit(_serve, root / lang) for lang in LANGUAGES}
        started: dict[str, Live] = {}
        failure: BaseException | None = None
        for lang, future in futures.items():
            try:
                server, took = future.result()
            except BaseException as error:  # noqa: BLE001 — stop the others, then re-raise
                failure = failure or error
                continue
            started[lang] = Live(lang, server, root / lang / "instance", took)
    try:
        if failure is not None:
            raise failure
        yield started
    finally:
        for live in started.values():
            kill_leftovers(live.server)


@pytest.fixture(scope="session", params=LANGUAGES)
def lang(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def live(live_servers: dict[str, Live], lang: str) -> Live:
    return live_servers[lang]


# --- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def downloads(tmp_path_factory: pytest.TempPathFactory, lang: str) -> Path:
    return tmp_path_factory.mktemp(f"downloads-{lang}")


@pytest.fixture(scope="session")
def driver(live: Live, downloads: Path) -> Iterator[Any]:
    """A headless Chromium for this language pass, reused by its tests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager download anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--lang={live.lang}",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "intl.accept_languages": live.lang,
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "plugins.always_open_pdf_externally": True,
        },
    )
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    browser.set_page_load_timeout(WAIT)
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": False},
    )
    try:
        yield browser
    finally:
        browser.quit()


# --- helpers --------------------------------------------------------------------------------------


def lang_of(driver: Any) -> str:
    return str(driver.find_element("css selector", "html").get_attribute("lang"))


def sign_in(driver: Any, live: Live, email: str) -> None:
    """Sign in as a demo person through the demo identity provider's form, in the pass's
    language (the switch, when the person's preference is another)."""
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(live.base_url + "/")
    assert "/demo-idp/" in driver.current_url, driver.current_url
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(live.password(email))
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_for(
        driver,
        lambda d: (
            d.current_url.startswith(live.base_url)
            and "/demo-idp" not in d.current_url
            and d.find_elements(By.CSS_SELECTOR, "main h1")
        ),
    )
    if lang_of(driver) != live.lang:
        switch = driver.find_element(By.CSS_SELECTOR, f"form.language button[value='{live.lang}']")
        switch.click()
        wait_for(driver, lambda d: lang_of(d) == live.lang)


def wait_for(driver: Any, condition: Any, timeout: float = 10.0) -> Any:
    """Wait until `condition(driver)` holds; an element read while its page was being replaced
    (stale, or not there yet) is read again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(
        driver,
        timeout,
        ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
    )
    return waiting.until(condition)


def session_cookies(driver: Any) -> dict[str, str]:
    return {cookie["name"]: cookie["value"] for cookie in driver.get_cookies()}


def require_axe() -> None:
    if not AXE_SCRIPT.exists():
        pytest.skip(
            f"{AXE_SCRIPT.relative_to(PROJECT_ROOT)} is missing: `make test` installs axe-core "
            "with npm (npm ci --prefix tests/browser)"
        )


def axe(driver: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical WCAG 2.1 A/AA violations on the current page.

    The script is injected through WebDriver, which the page's Content-Security-Policy does
    not govern (the page itself may run no inline script)."""
    require_axe()
    driver.set_script_timeout(WAIT)
    if not driver.execute_script("return typeof window.axe !== 'undefined'"):
        driver.execute_script(AXE_SCRIPT.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}})"
        ".then(r => done(r.violations), e => done({error: String(e)}));",
        WCAG_AA,
    )
    assert not isinstance(result, dict), result
    return [v for v in result if v.get("impact") in ("serious", "critical")]


def describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"    {' '.join(node['target'])}: {node.get('failureSummary', '')[:200]}")
    return "\n".join(lines)


def shot(driver: Any, lang: str, name: str) -> Path | None:
    """A full-page PNG of the current page, when $BROKER_SCREENSHOTS names a folder."""
    folder = os.environ.get("BROKER_SCREENSHOTS")
    if not folder:
        return None
    target = Path(folder) / lang / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    picture = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    target.write_bytes(base64.b64decode(picture["data"]))
    return target


def words(table: dict[str, str], lang: str) -> str:
    """The phrase in the pass's language, from {"en": …, "fr": …}."""
    return table[lang]
