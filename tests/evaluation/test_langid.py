"""Language identification of fixed strings (py3langid's bundled model, offline)."""

import pytest

from tl_culture.errors import TLCultureError
from tl_culture.evaluation.langid import UNDETERMINED, LanguageIdentifier, has_letters

pytest.importorskip("py3langid")

TEXTS = {
    "en": "The most important holiday of the year is the Christmas season with the whole family.",
    "de": "Der wichtigste Feiertag des Jahres ist Weihnachten, dann kommt die ganze Familie zusammen.",
    "da": "Den vigtigste højtid i året er julen, hvor hele familien samles og spiser sammen.",
    "zh": "一年中最重要的节日是春节，全家人都会聚在一起吃饭。",
    "ru": "Самый важный праздник года — Новый год, когда вся семья собирается вместе.",
    "fa": "مهم‌ترین جشن سال نوروز است که همه خانواده دور هم جمع می‌شوند.",
}


@pytest.fixture(scope="module")
def ident():
    return LanguageIdentifier()


def test_languages_of_fixed_strings(ident):
    for lang, text in TEXTS.items():
        assert ident(text) == lang, (lang, text)


def test_undetermined(ident):
    for text in ("", "   ", "1234 5678", "<>«»!!", "\n\n"):
        assert not has_letters(text)
        assert ident(text) == UNDETERMINED
    strict = LanguageIdentifier(min_confidence=0.99)
    assert strict("<strong>«</strong>") == UNDETERMINED


def test_restricted_languages_and_description():
    ident = LanguageIdentifier(languages=["de", "da"])
    assert ident.labels == ["da", "de"] and ident(TEXTS["de"]) == "de"
    d = ident.describe()
    assert d["name"] == "py3langid" and d["languages"] == ["da", "de"] and d["version"]
    with pytest.raises(TLCultureError, match="does not know"):
        LanguageIdentifier(languages=["xx"])
    with pytest.raises(TLCultureError, match="min_confidence"):
        LanguageIdentifier(min_confidence=1.5)
