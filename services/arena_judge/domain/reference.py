"""The reference judge: an answer compared with a known answer, no model involved.

A match scores 10 and a miss scores 1, on the same 1-10 scale as the LLM judges, so reference
and LLM judgments mix in one leaderboard or one ensemble.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

from arena_judge.domain.verdicts import ReferenceMatch

MATCH_SCORE = 10.0
MISS_SCORE = 1.0
DEFAULT_NUMERIC_TOLERANCE = 1e-6

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?%?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(
    r"(?:final answer|answer is|answer:|####)\s*:?\s*(.+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE
)


@dataclass(frozen=True)
class ReferenceResult:
    score: float
    matched: bool
    explanation: str


def reference_score(
    answer: str,
    reference: str,
    match: ReferenceMatch,
    tolerance: float | None = None,
) -> ReferenceResult:
    if match is ReferenceMatch.EXACT:
        ok = answer.strip() == reference.strip()
        return _result(ok, "exact match" if ok else "not identical to the reference")
    if match is ReferenceMatch.NUMERIC:
        expected = final_number(reference)
        got = final_number(answer)
        if expected is None:
            return _result(False, "the reference answer has no number")
        if got is None:
            return _result(False, f"no number in the answer (expected {_fmt(expected)})")
        limit = DEFAULT_NUMERIC_TOLERANCE if tolerance is None else tolerance
        ok = abs(got - expected) <= limit
        relation = "equals" if ok else "differs from"
        return _result(ok, f"final number {_fmt(got)} {relation} {_fmt(expected)} (±{limit:g})")
    target = normalize(reference)
    ok = any(normalize(candidate) == target for candidate in answer_candidates(answer))
    return _result(ok, "matches the reference" if ok else "does not match the reference")


def _result(ok: bool, explanation: str) -> ReferenceResult:
    return ReferenceResult(MATCH_SCORE if ok else MISS_SCORE, ok, explanation)


def normalize(text: str) -> str:
    """Case, accents' compatibility forms, punctuation and whitespace folded."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    without_punctuation = "".join(
        " " if unicodedata.category(ch).startswith("P") else ch for ch in folded
    )
    return " ".join(without_punctuation.split())


def answer_candidates(answer: str) -> list[str]:
    """Where a final answer usually sits: the whole text, a \\boxed{}, after "answer is", the
    last line."""
    candidates = [answer]
    candidates += _BOXED.findall(answer)
    candidates += [m.group(1) for m in _ANSWER_IS.finditer(answer)]
    lines = [line for line in answer.strip().split("\n") if line.strip()]
    if lines:
        candidates.append(lines[-1])
    return candidates


def final_number(text: str) -> float | None:
    """The answer's number: inside \\boxed{}, else after "answer is"/"####", else the last one."""
    for source in (_BOXED.findall(text), [m.group(1) for m in _ANSWER_IS.finditer(text)]):
        for candidate in reversed(source):
            value = _last_number(candidate)
            if value is not None:
                return value
    return _last_number(text)


def _last_number(text: str) -> float | None:
    matches = _NUMBER.findall(text)
    for raw in reversed(matches):
        value = _parse_number(raw)
        if value is not None:
            return value
    return None


def _parse_number(raw: str) -> float | None:
    # "45%" reads as 45: references state percentages the way answers do.
    cleaned = raw.replace(",", "").replace(" ", "").rstrip("%")
    try:
        return float(Fraction(cleaned)) if "/" in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def _fmt(value: float) -> str:
    return f"{value:g}"
