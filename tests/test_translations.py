"""Every string of the console has its French: what `make translations` extracts from the
templates and the code must be translated in broker/translations/fr (not empty, not fuzzy,
the same placeholders). A new `_("…")` without French fails here."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from broker.web.i18n import TRANSLATIONS

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "_l": None, "lazy_gettext": None}
METHODS = [
    ("web/templates/**.html", "jinja2"),
    ("**.py", "python"),
]


def source_messages() -> set[str]:
    """The msgids the code and templates ask for (what `pybabel extract` finds)."""
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT / "broker"),
        method_map=METHODS,
        options_map={"web/templates/**.html": {"extensions": "jinja2.ext.do"}},
        keywords=KEYWORDS,
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_console_string_has_its_french() -> None:
    with (TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as po:
        catalogue = read_po(po, locale="fr")
    wanted = source_messages()
    assert len(wanted) > 100  # the extraction sees the console
    untranslated = sorted(
        message
        for message in wanted
        if (entry := catalogue.get(message)) is None
        or entry.fuzzy
        or not (entry.string if isinstance(entry.string, str) else all(entry.string))
    )
    assert not untranslated, f"{len(untranslated)} strings have no French: {untranslated[:20]}"
    problems = [
        (entry.id, errors) for entry, errors in catalogue.check() if errors
    ]
    assert not problems, problems
