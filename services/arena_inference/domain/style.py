"""Surface features of an answer (Arena-Hard's style-control covariates)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"^#{1,6} ", re.MULTILINE)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+\.)\s", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_WORDISH = re.compile(r"\w+|[^\w\s]")
_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)


@dataclass(frozen=True)
class Style:
    tokens: int
    characters: int
    header_count: int
    list_count: int
    bold_count: int


def style_of(text: str, tokens: int | None = None) -> Style:
    """Counts headers, list items and bold spans outside code blocks (as Arena-Hard does).

    `tokens` is the model's own count when known; otherwise words and punctuation are counted.
    """
    prose = _CODE_BLOCK.sub("", text)
    return Style(
        tokens=tokens if tokens is not None else approximate_tokens(text),
        characters=len(text),
        header_count=len(_HEADER.findall(prose)),
        list_count=len(_LIST.findall(prose)),
        bold_count=len(_BOLD.findall(prose)),
    )


def approximate_tokens(text: str) -> int:
    """Words and punctuation marks: a tokenizer-free stand-in for recorded answers."""
    return len(_WORDISH.findall(text))
