"""English-only filtering with py3langid, whose model ships inside the package (works offline).

Instructions are often part code, so the text is cleaned before it is classified: fenced and
inline code, URLs and non-letters are dropped. A conversation is non-English when most of its
letters are in a non-Latin script, or when the classifier names another language with high
confidence on enough prose; too little prose to judge counts as English (kept).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

# The languages the classifier may answer with: the common ones in chat logs. A smaller set
# avoids rare labels (Pidgin, Wu, Igbo) for short or code-heavy English text.
DEFAULT_LANGUAGES = (
    "en", "zh", "ru", "es", "fr", "de", "ja", "ko", "pt", "it", "nl", "pl", "tr", "ar", "vi",
    "id", "uk", "cs", "sv", "fa", "he", "hi", "th", "el", "ro", "hu", "da", "fi", "no", "bn",
)  # fmt: skip

_CODE_FENCE = re.compile(r"```.*?(```|$)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"https?://\S+|www\.\S+")
_CODE_LINE = re.compile(r"^\s*(?:[#/{}<>\[\]()=;$@%|\\*+-].*|.*[;{}]\s*)$", re.MULTILINE)


@dataclass(frozen=True)
class LanguageVerdict:
    english: bool
    language: str
    confidence: float
    reason: str


class LanguageFilter:
    """Decides whether an instruction is English; the model loads on first use."""

    def __init__(
        self,
        *,
        min_confidence: float = 0.9,
        min_letters: int = 20,
        max_foreign_script_share: float = 0.3,
        languages: tuple[str, ...] = DEFAULT_LANGUAGES,
    ) -> None:
        self._min_confidence = min_confidence
        self._min_letters = min_letters
        self._max_foreign = max_foreign_script_share
        self._languages = languages
        self._identifier: Any = None
        self._lock = threading.Lock()

    def _classifier(self) -> Any:
        with self._lock:
            if self._identifier is None:
                from py3langid.langid import (  # type: ignore[import-untyped]
                    MODEL_DIR,
                    MODEL_FILE,
                    LanguageIdentifier,
                )

                identifier = LanguageIdentifier.from_modelpath(
                    MODEL_DIR / MODEL_FILE, norm_probs=True
                )
                identifier.set_languages(list(self._languages))
                self._identifier = identifier
            return self._identifier

    def verdict(self, text: str) -> LanguageVerdict:
        prose = _prose(text)
        letters = [char for char in prose if char.isalpha()]
        if not letters:
            return LanguageVerdict(True, "und", 0.0, "no prose")
        foreign = sum(1 for char in letters if not _latin(char)) / len(letters)
        if foreign > self._max_foreign:
            language, confidence = self._classifier().classify(prose[:4000])
            return LanguageVerdict(False, str(language), float(confidence), "non-Latin script")
        if len(letters) < self._min_letters:
            return LanguageVerdict(True, "und", 0.0, "too little prose to judge")
        language, confidence = self._classifier().classify(prose[:4000])
        if language == "en":
            return LanguageVerdict(True, "en", float(confidence), "english")
        if confidence >= self._min_confidence:
            return LanguageVerdict(False, str(language), float(confidence), "classified")
        return LanguageVerdict(True, str(language), float(confidence), "low confidence")


def _prose(text: str) -> str:
    text = _CODE_FENCE.sub(" ", text)
    text = _INLINE_CODE.sub(" ", text)
    text = _URL.sub(" ", text)
    return _CODE_LINE.sub(" ", text)


def _latin(char: str) -> bool:
    # Basic Latin, Latin-1 and Latin Extended-A/B: English with the odd accented word.
    return ord(char) < 0x250
