"""The console's languages: French and English, through Flask-Babel.

The language of a page is the signed-in person's preference, else the `broker_language`
cookie the switch sets for someone not signed in, else the browser's `Accept-Language`, else
French (the first users' language). Dates, numbers and money go through Babel's formatters
with that locale: `1 234,56 €` in French, `€1,234.56` in English.

The French catalogue (`broker/translations/fr/LC_MESSAGES/messages.po`) is compiled by the
install (`make run`, `make test`); when its `.mo` is missing or older than the `.po` (a
`pip install` without make, an edit), the app compiles it when it starts, so a page never
shows a stale translation.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask, g, request
from flask_babel import Babel, format_currency, format_date, format_datetime, format_decimal
from flask_babel import get_locale as babel_locale
from markupsafe import Markup

LANGUAGES = ("fr", "en")
DEFAULT_LANGUAGE = "fr"
LANGUAGE_COOKIE = "broker_language"
# Each language named in itself, for the switch.
LANGUAGE_NAMES = {"fr": "Français", "en": "English"}
TRANSLATIONS = Path(__file__).resolve().parent.parent / "translations"


def language_of_request() -> str:
    """The language this request's page is in (see the module's docstring)."""
    chosen = g.get("person_language")
    if chosen in LANGUAGES:
        return str(chosen)
    cookie = request.cookies.get(LANGUAGE_COOKIE)
    if cookie in LANGUAGES:
        return str(cookie)
    return request.accept_languages.best_match(LANGUAGES) or DEFAULT_LANGUAGE


def language() -> str:
    """The current page's language (`fr` or `en`)."""
    return str(babel_locale() or DEFAULT_LANGUAGE)


def compile_catalogues(directory: Path = TRANSLATIONS) -> list[Path]:
    """Compile every `.po` whose `.mo` is missing or older; returns the `.mo` written."""
    written = []
    for po_path in sorted(directory.glob("*/LC_MESSAGES/messages.po")):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with po_path.open("rb") as po_file:
            catalogue = read_po(po_file, locale=po_path.parent.parent.name)
        with mo_path.open("wb") as mo_file:
            write_mo(mo_file, catalogue)
        written.append(mo_path)
    return written


def money(amount: Decimal | int | float | str | None, currency: str) -> str:
    """An amount in the page's locale: `1 234,56 €`, `€1,234.56`, `CA$1,234.56`."""
    if amount is None:
        return "—"
    return format_currency(Decimal(str(amount)), currency)


def number(value: Decimal | int | float | None, digits: int = 2) -> str:
    """A number in the page's locale, with at most `digits` decimals."""
    if value is None:
        return "—"
    pattern = "#,##0" + ("." + "#" * digits if digits else "")
    return format_decimal(Decimal(str(value)), format=pattern)


def typed_amount(amount: Decimal | None) -> str:
    """An amount as a form field shows it to be edited: `20000`, `12.5` (no trailing zeros,
    the notation the API's schemas read)."""
    if amount is None:
        return ""
    return format(amount.normalize(), "f")


def decimal_text(value: str | None) -> str:
    """A decimal typed in a form as the API's schemas read it: a comma (French) is the decimal
    point, spaces between thousands are dropped."""
    return (value or "").strip().replace("\u202f", "").replace(" ", "").replace(",", ".")


def when(value: datetime | date | None, style: str = "medium") -> str:
    """A date and time (UTC) or a date, in the page's locale."""
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return format_datetime(value, style)
    return format_date(value, style)


def machine_time(value: datetime | date | None) -> Markup:
    """A `<time>` element: readable in the locale, exact in its `datetime` attribute."""
    if value is None:
        return Markup("—")
    return Markup('<time datetime="{}">{}</time>').format(value.isoformat(), when(value))


def init_i18n(app: Flask) -> None:
    """Babel with the console's language choice; its formatters as template filters."""
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LANGUAGE)
    app.config.setdefault("BABEL_DEFAULT_TIMEZONE", "UTC")
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS)
    try:
        compile_catalogues()
    except OSError:  # a read-only install: its catalogues were compiled when it was built
        app.logger.warning("translations could not be compiled; using those installed")
    Babel(app, locale_selector=language_of_request)
    app.jinja_env.filters.update(money=money, number=number, when=when, time=machine_time)
    app.jinja_env.globals.update(
        LANGUAGES=LANGUAGES, LANGUAGE_NAMES=LANGUAGE_NAMES, language=language
    )
