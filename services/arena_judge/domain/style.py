"""Surface features of an answer: the covariates of length-bias statistics and style control."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Style:
    tokens: int
    characters: int
    header_count: int
    list_count: int
    bold_count: int


def style_of(text: str) -> Style:
    """Tokens are approximated by words and punctuation marks when the model's count is unknown."""
    return Style(
        tokens=len(_TOKEN.findall(text)),
        characters=len(text),
        header_count=len(_HEADER.findall(text)),
        list_count=len(_LIST_ITEM.findall(text)),
        bold_count=len(_BOLD.findall(text)),
    )
