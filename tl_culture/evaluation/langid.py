"""The language of a generated text, from an offline language-identification model.

`LanguageIdentifier` wraps py3langid (a maintained fork of langid.py: a naive Bayes model over
byte n-grams, bundled in the wheel, pure Python + NumPy, no download at run
time; installed with the ``steer`` extra). A text gets the ISO 639-1 code of its most probable
language, or `UNDETERMINED` (``"und"``) when

- it has no letter at all (empty, digits, punctuation), or
- the model's normalised probability of its best language is below ``min_confidence``
  (degenerate output such as repeated markup).

Any callable ``str -> str`` can stand in for it (tests stub it; other identifiers plug in).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from tl_culture.errors import TLCultureError

UNDETERMINED = "und"
"""The label of a text whose language is not determined."""

MIN_CONFIDENCE = 0.5
"""Default lowest normalised probability at which a language is assigned."""

_INSTALL = 'language identification needs py3langid: pip install "tl-culture[steer]"'


def has_letters(text: str) -> bool:
    """Whether ``text`` contains at least one letter (Unicode category L*)."""
    return any(unicodedata.category(ch).startswith("L") for ch in text)


class LanguageIdentifier:
    """py3langid's bundled model as a callable ``text -> ISO 639-1 code or "und"``.

    Args:
        languages: restrict the candidates to these codes (None: all the model knows).
        min_confidence: lowest normalised probability of the best language to assign it.

    Raises:
        TLCultureError: py3langid is not installed, or a code in ``languages`` is unknown to it.
    """

    name = "py3langid"

    def __init__(self, languages: Sequence[str] | None = None, min_confidence: float = MIN_CONFIDENCE) -> None:
        try:
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as _Model
        except ImportError:
            raise TLCultureError(_INSTALL) from None
        if not 0.0 <= min_confidence < 1.0:
            raise TLCultureError(f"min_confidence must be in [0, 1), got {min_confidence}")
        self._model = _Model.from_model_file(MODEL_FILE, norm_probs=True)
        self.languages = sorted(set(languages)) if languages else None
        if self.languages:
            unknown = sorted(set(self.languages) - set(self._model.labels))
            if unknown:
                raise TLCultureError(f"py3langid does not know the language code(s) {', '.join(unknown)}")
            self._model.set_languages(self.languages)
        self.min_confidence = float(min_confidence)

    @property
    def labels(self) -> list[str]:
        """The codes this identifier can answer (plus `UNDETERMINED`)."""
        return list(self._model.labels)

    def __call__(self, text: str) -> str:
        """The ISO 639-1 code of ``text``'s language, or `UNDETERMINED`."""
        if not has_letters(text):
            return UNDETERMINED
        lang, confidence = self._model.classify(text)
        return lang if confidence >= self.min_confidence else UNDETERMINED

    def describe(self) -> dict[str, Any]:
        """Name, version and settings, as recorded with the results."""
        try:
            version = metadata.version("py3langid")
        except metadata.PackageNotFoundError:
            version = None
        return {"name": self.name, "version": version, "languages": self.languages,
                "min_confidence": self.min_confidence, "undetermined": UNDETERMINED}


__all__ = ["MIN_CONFIDENCE", "UNDETERMINED", "LanguageIdentifier", "has_letters"]
