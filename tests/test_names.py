"""broker.names: no provider or organization may pass for another by its name."""

from __future__ import annotations

import string
import unicodedata

import jsonschema_rs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import names
from broker.names import NAME_PATTERN, check_name, invisible_characters, name_key

REFERENCE = "Hexagone Cloud"

LOOK_ALIKES = [
    pytest.param("hexagone cloud", id="lower case"),
    pytest.param("HEXAGONE CLOUD", id="upper case"),
    pytest.param("HEXAGONE  CLOUD", id="upper case, double space"),
    pytest.param("hExAgOnE cLoUd", id="mixed case"),
    pytest.param("\u041dexagone Cloud", id="Cyrillic capital EN"),
    pytest.param("\u0397exagone Cloud", id="Greek capital ETA"),
    pytest.param("\u03b7exagone Cloud", id="Greek small eta, case partner of ETA"),
    pytest.param("Ｈｅｘａｇｏｎｅ Ｃｌｏｕｄ", id="fullwidth"),
    pytest.param("\uff48exagone cloud", id="fullwidth small h"),
    pytest.param("Hexagone \U0001d402loud", id="mathematical bold C"),
    pytest.param("Hexagone C\u217coud", id="small roman numeral fifty"),
    pytest.param("Hexagone\u00a0Cloud", id="no-break space"),
    pytest.param("Hexagone\u3000Cloud", id="ideographic space"),
    pytest.param("Hexagone\u2003Cloud", id="em space"),
    pytest.param("Hexagone\u202fCloud", id="narrow no-break space"),
    pytest.param("  Hexagone Cloud \u00a0", id="spaces at the ends"),
    pytest.param("Hexag\u043ene Cl\u043eud", id="Cyrillic small o"),
    pytest.param("H\u0435x\u0430gone Cloud", id="Cyrillic small ie and a"),
    pytest.param("Hexag\u03bfne Cloud", id="Greek small omicron"),
    pytest.param("Hexagone Clou\u0501", id="Cyrillic komi de"),
    pytest.param("\u041d\u0415\u0425\u0410G\u041eN\u0415 CL\u041eUD", id="Cyrillic capitals"),
    pytest.param("Hexag0ne Cloud", id="digit zero for o"),
    pytest.param("Hexagone C1oud", id="digit one for l"),
    pytest.param("Hexagone CIoud", id="capital I for l"),
    pytest.param("ＨＥＸＡＧ０ＮＥ\u3000ＣＬ０ＵＤ", id="fullwidth capitals and zeros"),
    pytest.param("Hexa\u200bgone Cloud", id="zero width space (refused by check_name)"),
]

DIFFERENT_NAMES = [
    pytest.param("Hexagone Nuage", id="other word"),
    pytest.param("Hexagone Clouds", id="plural"),
    pytest.param("Hexagon Cloud", id="letter missing"),
    pytest.param("Hexagone Claud", id="other vowel"),
    pytest.param("Hexagone Cloud 2", id="suffix"),
    pytest.param("HexagoneCloud", id="no space"),
    pytest.param("Hexag\u00f4ne Cloud", id="accent"),
    pytest.param("Hexagone Cl\u00f6ud", id="diaeresis"),
    pytest.param("Pentagone Cloud", id="other name"),
]

INVISIBLE = [
    ("\u200b", "U+200B ZERO WIDTH SPACE"),
    ("\u200c", "U+200C ZERO WIDTH NON-JOINER"),
    ("\u200d", "U+200D ZERO WIDTH JOINER"),
    ("\u2060", "U+2060 WORD JOINER"),
    ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("\u202a", "U+202A LEFT-TO-RIGHT EMBEDDING"),
    ("\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"),
    ("\u2069", "U+2069 POP DIRECTIONAL ISOLATE"),
    ("\u200f", "U+200F RIGHT-TO-LEFT MARK"),
    ("\u061c", "U+061C ARABIC LETTER MARK"),
    ("\u00ad", "U+00AD SOFT HYPHEN"),
    ("\u3164", "U+3164 HANGUL FILLER"),
    ("\u115f", "U+115F HANGUL CHOSEONG FILLER"),
    ("\uffa0", "U+FFA0 HALFWIDTH HANGUL FILLER"),
    ("\ufe0f", "U+FE0F VARIATION SELECTOR-16"),
    ("\U000e0101", "U+E0101 VARIATION SELECTOR-18"),
    ("\u034f", "U+034F COMBINING GRAPHEME JOINER"),
    ("\u180e", "U+180E MONGOLIAN VOWEL SEPARATOR"),
    ("\u2800", "U+2800 BRAILLE PATTERN BLANK"),
    ("\U000e0001", "U+E0001 LANGUAGE TAG"),
    ("\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A"),
    ("\u2028", "U+2028 LINE SEPARATOR"),
    ("\t", "U+0009 <control>"),
    ("\x00", "U+0000 <control>"),
]

ACCEPTED = [
    "Hexagone Cloud",
    "Agence nationale des données de santé",
    "Ville de Québec",
    "Nordet Nuagique",
    "L'Oréal Cloud",
    "Zürich Rechenzentrum AG",
    "Straße 12",
    "Облако",
    "Облачные технологии",
    "Σύννεφο",
    "Ελληνικό Νέφος",
    "Hexagone\u00a0Cloud",  # other spaces are allowed: the key normalises them
]


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_look_alikes_collide(name: str) -> None:
    assert name_key(name) == name_key(REFERENCE)


@pytest.mark.parametrize("name", DIFFERENT_NAMES)
def test_different_names_do_not_collide(name: str) -> None:
    assert name_key(name) != name_key(REFERENCE)


def test_close_but_different_words() -> None:
    assert name_key("Nordet") != name_key("Norden")
    assert name_key("Hexagone Cloud") != name_key("Hexagone Nuage")


def test_accents_distinguish_names() -> None:
    # Not stripped: "Société" and "Societe" may be two companies. Composed and decomposed
    # forms are one name.
    assert name_key("Société") != name_key("Societe")
    assert name_key("Socie\u0301te\u0301") == name_key("Soci\u00e9t\u00e9")
    assert name_key("Ville de Québec") != name_key("Ville de Quebec")


def test_case_folding_beyond_simple_case() -> None:
    assert name_key("Straße") == name_key("STRASSE") == name_key("strasse")
    assert name_key("ОБЛАКО") == name_key("облако")
    assert name_key("ΕΛΛΗΝΙΚΟ ΝΕΦΟΣ") == name_key("ελληνικο νεφος")


def test_multi_character_look_alikes_are_not_handled() -> None:
    # Documented limit: "rn" for "m" is a multi-character homoglyph.
    assert name_key("Cloud Rnain") != name_key("Cloud Main")


def test_ascii_merges_are_the_documented_ones() -> None:
    groups: dict[str, set[str]] = {}
    for char in string.ascii_letters + string.digits + string.punctuation:
        groups.setdefault(name_key(char), set()).add(char)
    merged = {frozenset(g) for g in groups.values() if {c.lower() for c in g} != {min(g).lower()}}
    assert merged == {frozenset("0oO"), frozenset("1iIlL|"), frozenset("'`")}


def test_key_shape() -> None:
    assert name_key("  Hexagone \t\n Cloud\u3000") == name_key("Hexagone Cloud")
    key = name_key(" a\u00a0\u00a0b\u2003 c ")
    assert key == key.strip() and "  " not in key and "\u00a0" not in key


@pytest.mark.parametrize(("char", "description"), INVISIBLE)
def test_invisible_characters_are_refused(char: str, description: str) -> None:
    for name in (f"Hexa{char}gone Cloud", f"{char}Hexagone Cloud", f"Hexagone Cloud{char}"):
        assert invisible_characters(name) == [description]
        assert check_name(name) == [
            f"Invisible or direction-changing characters are not allowed: {description}."
        ]


def test_several_invisible_characters_are_listed_once_each() -> None:
    assert check_name("\u202eduolC\u200b enogaxeH\u200b") == [
        "Invisible or direction-changing characters are not allowed: "
        "U+202E RIGHT-TO-LEFT OVERRIDE, U+200B ZERO WIDTH SPACE."
    ]


@pytest.mark.parametrize("name", ACCEPTED)
def test_ordinary_names_are_accepted(name: str) -> None:
    assert invisible_characters(name) == []
    assert check_name(name) == []


@pytest.mark.parametrize("name", ["", " ", "   ", "\u00a0", "\u3000 \u2003"])
def test_blank_names_are_refused(name: str) -> None:
    assert check_name(name) == ["The name must contain at least one visible character."]


def test_invisible_only_name_gets_both_messages() -> None:
    assert check_name("\u200b\u200d") == [
        "Invisible or direction-changing characters are not allowed: "
        "U+200B ZERO WIDTH SPACE, U+200D ZERO WIDTH JOINER.",
        "The name must contain at least one visible character.",
    ]


def test_the_table_comes_from_the_shipped_data() -> None:
    classes = names._build_classes(names._confusable_pairs())
    table = classes.table()
    assert table[ord("\u041d")] == "H" and table[ord("\u0397")] == "H"


def test_key_is_stable_for_every_character_of_the_table() -> None:
    for code in names._confusable_table():
        char = chr(code)
        for text in (char, f"a{char}b"):
            key = name_key(text)
            assert name_key(key) == key, (hex(code), text, key)


_ANY_TEXT = st.text(
    st.one_of(
        st.characters(),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
        st.sampled_from("0oOlI1 \u00a0\u3000\u200b\u202eНΗｈß"),
    )
)


@given(_ANY_TEXT)
def test_name_key_is_idempotent_and_total(text: str) -> None:
    key = name_key(text)
    assert name_key(key) == key
    assert key == key.strip() and "  " not in key
    assert not invisible_characters(key)
    assert isinstance(check_name(text), list)


@given(st.text(string.printable))
def test_name_key_ignores_case_of_ascii(text: str) -> None:
    assert name_key(text) == name_key(text.swapcase())


def test_nfkc_is_applied() -> None:
    assert name_key("\ufb01nance") == name_key("finance")
    assert unicodedata.normalize("NFKC", "\u2460") == "1" and name_key("\u2460") == name_key("1")


@pytest.mark.parametrize(("character", "_description"), INVISIBLE)
def test_the_documented_pattern_refuses_what_check_name_refuses(
    character: str, _description: str
) -> None:
    pattern = jsonschema_rs.validator_for({"type": "string", "pattern": NAME_PATTERN})
    assert not pattern.is_valid(f"Hexagone{character}Cloud")
    assert not pattern.is_valid("   ")
    for name in ACCEPTED:
        assert pattern.is_valid(name), name
