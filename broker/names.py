"""Names that cannot pass for one another.

Providers and organizations are chosen by name in the marketplace and printed on invoices, so a
name that *looks* like an existing one is an impersonation vector: ``Нexagone Cloud`` with a
Cyrillic capital EN, ``Ηexagone Cloud`` with a Greek capital ETA, fullwidth ``Ｈｅｘａｇｏｎｅ``, a
no-break space instead of a space, a zero-width space in the middle, or a right-to-left override
that reorders what the reader sees. This module gives the two tools to stop that:

* :func:`check_name` refuses names carrying invisible or direction-changing characters (and
  blank names), with messages fit for the API user;
* :func:`name_key` computes a comparison key in the spirit of the Unicode TR39 *skeleton*: two
  names whose keys are equal must be treated as the same name (e.g. by a unique index on the key).

The confusable classes come from the data file shipped with the ``confusable-homoglyphs`` package
(derived from Unicode's ``confusables.txt``); nothing is fetched at run time. The module does not
import Flask or touch the database.

Keys may be stored (a unique index): a change to this algorithm, to the package's data or to
Python's Unicode version can change keys, and stored keys must then be recomputed.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources

__all__ = ["NAME_PATTERN", "check_name", "invisible_characters", "name_key"]

# General categories that never belong in a name: controls, format characters (zero-width
# characters, bidi embeddings/overrides/isolates and marks, soft hyphen, BOM, tags...),
# surrogates, and line/paragraph separators. Private-use and unassigned code points show (as a
# box) and so cannot hide: they are left to the look-alike key.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Characters that render as nothing (or as blank) although they are letters, marks or symbols
# rather than format characters (most are Default_Ignorable_Code_Point in Unicode).
_INVISIBLE_EXTRA = frozenset(
    {
        0x034F,  # COMBINING GRAPHEME JOINER
        0x115F,  # HANGUL CHOSEONG FILLER
        0x1160,  # HANGUL JUNGSEONG FILLER
        0x17B4,  # KHMER VOWEL INHERENT AQ
        0x17B5,  # KHMER VOWEL INHERENT AA
        0x180E,  # MONGOLIAN VOWEL SEPARATOR (Cf today, listed in case of older data)
        0x2800,  # BRAILLE PATTERN BLANK
        0x3164,  # HANGUL FILLER
        0xFFA0,  # HALFWIDTH HANGUL FILLER
        *range(0x180B, 0x1810),  # MONGOLIAN FREE VARIATION SELECTORS
        *range(0xFE00, 0xFE10),  # VARIATION SELECTOR-1..16
        *range(0xE0100, 0xE01F0),  # VARIATION SELECTOR-17..256
    }
)

# The package's data wraps right-to-left characters in LEFT-TO-RIGHT MARKs (for display); they
# are not part of the characters themselves.
_DATA_WRAPPERS = "\u200e\u200f"

# Two names may not differ only by these ASCII characters... unless the data says they look alike.
_ASCII_VISIBLE = frozenset(chr(c) for c in range(0x20, 0x7F))

# Every single code point, alone or between letters, reaches a fixed point within three rounds.
_MAX_ROUNDS = 6


def _is_invisible(char: str) -> bool:
    return ord(char) in _INVISIBLE_EXTRA or unicodedata.category(char) in _REFUSED_CATEGORIES


def _refused_ranges() -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for code in range(0x110000):
        if code in _INVISIBLE_EXTRA or unicodedata.category(chr(code)) in _REFUSED_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return ranges


def _character_class(ranges: list[tuple[int, int]]) -> str:
    # Read alike by JSON Schema validators (ECMA-262, Rust) and Python: `\\uXXXX` escapes in
    # the Basic Multilingual Plane, the characters themselves beyond it (no escape for those
    # is common to all three). Lone surrogates cannot be written (JSON text carries none;
    # `check_name` still refuses them).
    def escape(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(
        escape(a) if a == b else f"{escape(a)}-{escape(b)}"
        for a, b in ranges
        if not 0xD800 <= a <= 0xDFFF
    )


_REFUSED = _character_class(_refused_ranges())
# What `check_name` accepts, as a JSON Schema (ECMA-262) regular expression for the API
# documentation and its property tests: no refused character, and one that is not a space.
NAME_PATTERN = f"^[^{_REFUSED}]*[^{_REFUSED}\\s][^{_REFUSED}]*$"


def _describe(char: str) -> str:
    code = ord(char)
    name = unicodedata.name(char, "")
    if not name:
        category = unicodedata.category(char)
        name = {
            "Cc": "<control>",
            "Co": "<private use>",
            "Cs": "<surrogate>",
            "Cn": "<unassigned>",
        }.get(category, f"<{category}>")
    return f"U+{code:04X} {name}"


def invisible_characters(name: str) -> list[str]:
    """The invisible or direction-changing characters of ``name``, described for a user message.

    Each distinct offending character is listed once, in order of first appearance, as
    ``"U+200B ZERO WIDTH SPACE"``. Refused are all characters of general category Cc, Cf,
    Cs, Zl and Zp (which covers zero-width spaces and joiners, the word joiner,
    the BOM, the soft hyphen, bidi embeddings, overrides, isolates and marks, tag characters),
    plus invisible letters and marks that are not format characters: the combining grapheme
    joiner, variation selectors, Hangul fillers, Khmer inherent vowels, the Mongolian vowel
    separator and free variation selectors, and the blank braille pattern. Space separators
    (U+0020, and also U+00A0, U+3000...) are allowed; :func:`name_key` normalises them.
    """
    found: list[str] = []
    seen: set[str] = set()
    for char in name:
        if char not in seen and _is_invisible(char):
            seen.add(char)
            found.append(_describe(char))
    return found


class _Classes:
    """Union-find over characters, refusing unions that would merge two ASCII characters."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.has_ascii: dict[str, bool] = {}
        self.refused = 0

    def find(self, char: str) -> str:
        parent = self.parent
        if char not in parent:
            parent[char] = char
            self.has_ascii[char] = char in _ASCII_VISIBLE
            return char
        root = char
        while parent[root] != root:
            root = parent[root]
        while parent[char] != root:  # path compression
            parent[char], char = root, parent[char]
        return root

    def union(self, a: str, b: str, *, guarded: bool) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if guarded and self.has_ascii[ra] and self.has_ascii[rb]:
            self.refused += 1
            return
        if rb < ra:  # the root stays the smallest code point of the class
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.has_ascii[ra] = self.has_ascii[ra] or self.has_ascii[rb]

    def table(self) -> dict[int, str]:
        return {ord(c): root for c in self.parent if (root := self.find(c)) != c}


def _case_partners(char: str) -> Iterator[str]:
    for partner in (char.lower(), char.upper(), char.casefold()):
        if len(partner) == 1 and partner != char:
            yield partner


def _confusable_pairs() -> list[tuple[str, str]]:
    raw = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8")
    data: dict[str, list[dict[str, str]]] = json.loads(raw)
    pairs: dict[tuple[str, str], None] = {}  # ordered set; the data lists most pairs both ways
    for key, homoglyphs in data.items():
        char = key.strip(_DATA_WRAPPERS)
        if len(char) != 1:
            continue
        for homoglyph in homoglyphs:
            other = homoglyph["c"].strip(_DATA_WRAPPERS)
            if len(other) == 1 and other != char:
                pairs[(min(char, other), max(char, other))] = None
    return list(pairs)


def _tier(pair: tuple[str, str]) -> int:
    if pair[0] in _ASCII_VISIBLE and pair[1] in _ASCII_VISIBLE:
        return 0
    if any(unicodedata.category(c) in ("Lu", "Lt") for c in pair):
        return 1
    return 2


def _build_classes(pairs: Iterable[tuple[str, str]]) -> _Classes:
    pairs = list(pairs)
    classes = _Classes()
    # 1. A character and its other case are one: the key is case-insensitive.
    for char in {c for pair in pairs for c in pair} | set(_ASCII_VISIBLE):
        for partner in _case_partners(char):
            classes.union(char, partner, guarded=False)
    # 2. The look-alikes. Closing confusables under case would chain unrelated letters together
    #    (r~Cherokee HU~Γ~γ~y~Warang Citi HAR~T~t), so a union that would merge two classes that
    #    both hold an ASCII character is refused -- unless the data pairs the two ASCII
    #    characters directly (O/0, l/I/1/|, `/'). Capital-letter pairs go first so that e.g.
    #    Greek Η/η lands with H (its capital look-alike) rather than with n.
    for a, b in sorted(pairs, key=_tier):
        classes.union(a, b, guarded=_tier((a, b)) != 0)
    return classes


@cache
def _confusable_table() -> dict[int, str]:
    """``str.translate`` table: character -> representative of its confusable class."""
    return _build_classes(_confusable_pairs()).table()


def _round(text: str, table: dict[int, str]) -> str:
    # Case-fold before mapping too: the classes are closed under simple case mapping, so this
    # changes nothing for single-character folds, and it gives multi-character folds their
    # meaning (STRASSE and straße agree, though the data makes ß look like β).
    text = unicodedata.normalize("NFKC", text.casefold().translate(table).casefold())
    text = "".join(c for c in text if not _is_invisible(c))
    return " ".join(text.split())


def name_key(name: str) -> str:
    """The comparison key of ``name``: names with equal keys must be treated as the same name.

    In the spirit of the Unicode TR39 skeleton: NFKC (fullwidth, ligatures, mathematical
    letters...), case folding, then each character is replaced by the representative of its
    confusable class (the class's smallest code point), then case-folded and NFKC-normalised
    again; these rounds repeat until the text no longer changes (two, at most three rounds), so
    that ``name_key(name_key(x)) == name_key(x)``. Invisible characters (see
    :func:`invisible_characters`) are dropped, and every run of whitespace (any space separator,
    U+00A0, U+3000...) becomes one ASCII space, with none at the ends.

    The classes come from the ``confusable-homoglyphs`` data, joined by union-find over its
    single-character pairs, with upper and lower case in one class. Where that would join two
    ASCII characters, the data's own ASCII pairs are kept and the indirect link dropped: ``0``,
    ``o`` and ``O`` are one class, as are ``1``, ``i``, ``I``, ``l``, ``L`` and ``|``, and the
    backtick with the apostrophe; but ``r`` and ``t`` are not. The key is not meant for display.

    Limits: multi-character look-alikes (``rn`` for ``m``, ``vv`` for ``w``) are not handled, and
    accents are kept -- ``Société`` and ``Societe`` have different keys, since they may be
    different companies (a composed and a decomposed ``é`` do have the same key).
    """
    table = _confusable_table()
    text = unicodedata.normalize("NFKC", name)
    for _ in range(_MAX_ROUNDS):
        following = _round(text, table)
        if following == text:
            break
        text = following
    return text


def check_name(name: str) -> list[str]:
    """The user-facing errors of ``name`` as a provider or organization name; empty when fine.

    Refuses invisible and direction-changing characters (one message listing them all) and names
    that are empty once normalised (blank or made only of spaces and invisible characters).
    Whether the name collides with an existing one is for the caller to check, by comparing
    :func:`name_key` values.
    """
    errors: list[str] = []
    found = invisible_characters(name)
    if found:
        errors.append(
            "Invisible or direction-changing characters are not allowed: " + ", ".join(found) + "."
        )
    if not name_key(name):
        errors.append("The name must contain at least one visible character.")
    return errors
