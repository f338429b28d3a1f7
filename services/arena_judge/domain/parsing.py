"""Robust parsers for what real judges write.

Each parser returns a `Parsed` in presentation order, or None when the output carries no
usable verdict; the engine then draws a new sample, up to the judge's retry budget. Parsers never
raise on bad text: an unparsable output is a recorded outcome, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from arena_judge.domain.verdicts import Parsed, Verdict

_NUM = r"(\d{1,2}(?:\.\d+)?)"

# --- Arena-Hard: `[[A>>B]]` .. `[[B>>A]]` -------------------------------------------------------

DEFAULT_ARENA_HARD_PATTERNS: tuple[str, ...] = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")

ARENA_HARD_LABELS: dict[str, Verdict] = {
    "A>>B": Verdict.A_MUCH_BETTER,
    "A>B": Verdict.A_BETTER,
    "A=B": Verdict.TIE,
    "B>A": Verdict.B_BETTER,
    "B>>A": Verdict.B_MUCH_BETTER,
    # The same relations written the other way round.
    "B<<A": Verdict.A_MUCH_BETTER,
    "B<A": Verdict.A_BETTER,
    "B=A": Verdict.TIE,
    "A==B": Verdict.TIE,
    "A<B": Verdict.B_BETTER,
    "A<<B": Verdict.B_MUCH_BETTER,
}


def arena_hard_verdict(label: str | None) -> Verdict:
    """A recorded Arena-Hard score (`"A>>B"`, ..., or null) as a verdict; NONE when unknown."""
    if label is None:
        return Verdict.NONE
    return ARENA_HARD_LABELS.get(re.sub(r"\s+", "", label).upper(), Verdict.NONE)


def parse_arena_hard(
    text: str, patterns: Sequence[str] = DEFAULT_ARENA_HARD_PATTERNS
) -> Parsed | None:
    """Arena-Hard's rule: the first pattern with matches decides; the last match is the verdict.

    An unknown relation (`[[A>>>B]]`) counts as no verdict rather than a guess.
    """
    upper = text.upper()
    for pattern in patterns:
        matches = [match for match in re.findall(pattern, upper) if match]
        if not matches:
            continue
        verdict = arena_hard_verdict(matches[-1].strip("\n"))
        if verdict is Verdict.NONE:
            return None
        return Parsed(verdict=verdict, explanation=_without_last_line_matching(text, pattern))
    return None


# --- MT-Bench pairwise: `[[A]]`, `[[B]]`, `[[C]]` (tie) ------------------------------------------

_PAIR_MARKER = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_PAIR_VERDICT = {"A": Verdict.A_BETTER, "B": Verdict.B_BETTER, "C": Verdict.TIE, "TIE": Verdict.TIE}


def parse_mt_bench_pair(text: str) -> Parsed | None:
    """The last `[[A]]`/`[[B]]`/`[[C]]` marker: judges state the final verdict at the end."""
    matches = _PAIR_MARKER.findall(text)
    if not matches:
        return None
    verdict = _PAIR_VERDICT[matches[-1].upper()]
    return Parsed(verdict=verdict, explanation=_without_last_line_matching(text, _PAIR_MARKER))


def mt_bench_pair_winner(text: str) -> str:
    """FastChat's own rule (A before B before C, `error` otherwise), to audit recorded files."""
    if "[[A]]" in text:
        return "A"
    if "[[B]]" in text:
        return "B"
    if "[[C]]" in text:
        return "tie"
    return "error"


# --- Single grades: `[[8]]` (MT-Bench) or 0-10 difficulty ---------------------------------------

_SINGLE_PATTERNS = (
    re.compile(r"\[\[\s*" + _NUM + r"\s*(?:/\s*10)?\s*\]\]"),
    re.compile(r"\[\s*" + _NUM + r"\s*(?:/\s*10)?\s*\]"),
    re.compile(r"\b(?:rating|score|difficulty)\s*[:=]\s*\**\s*" + _NUM, re.IGNORECASE),
)


def parse_single_score(text: str, low: float = 1.0, high: float = 10.0) -> Parsed | None:
    """FastChat's order: `[[x]]`, then `[x]`, then `Rating: x`; the first match, within range."""
    for pattern in _SINGLE_PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        score = float(match.group(1))
        if not low <= score <= high:
            return None
        return Parsed(score_a=score, explanation=_without_last_line_matching(text, pattern))
    return None


# --- The paper's judge: a 1-10 score for each answer --------------------------------------------

_SIDE_WORDS = r"(?:assistant|response|answer|model|output)"
_SCORE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # The project's own format: Scores: [[A=7, B=5]] (also A: 7/10; B: 5/10).
    re.compile(
        r"\[\[\s*A\s*[:=]\s*"
        + _NUM
        + r"\s*(?:/\s*10)?\s*[,;]?\s*B\s*[:=]\s*"
        + _NUM
        + r"\s*(?:/\s*10)?\s*\]\]",
        re.IGNORECASE,
    ),
    # [[7, 5]] or [[7/5]]
    re.compile(r"\[\[\s*" + _NUM + r"\s*[,;/ ]\s*" + _NUM + r"\s*\]\]"),
    # Vicuna-style reviews: the first line is just the two scores, "8 7" or "8, 7".
    re.compile(r"\A\s*" + _NUM + r"\s*[, ]\s*" + _NUM + r"\s*$", re.MULTILINE),
    # "The output tuple is (10, 4)", "the scores are (1, 5)"
    re.compile(
        r"(?:tuple(?:\s+is)?|output|scores\s+are)\s*:?\s*\(\s*"
        + _NUM
        + r"\s*,\s*"
        + _NUM
        + r"\s*\)",
        re.IGNORECASE,
    ),
)


def _side_patterns(side: str, number: str) -> tuple[re.Pattern[str], ...]:
    # Vicuna-era judges number the answers 1 and 2 instead of A and B.
    label = rf"[(\[]?(?:{side}|{number})[)\]]?"
    return (
        # "Assistant A: 8/10", "Response (A) score: 8", "**Assistant A**: 8"
        re.compile(
            rf"{_SIDE_WORDS}\s*{label}\**\s*(?:'s)?\s*(?:overall\s+)?(?:score|rating)?\s*\**\s*"
            rf"[:=\-]\s*\**\s*{_NUM}\s*(?:/\s*10|out of 10)?",
            re.IGNORECASE,
        ),
        # "Score A: 8", "Score for Assistant A = 8", "Rating of response A: 8"
        re.compile(
            rf"(?:score|rating)\s*(?:for|of)?\s*(?:{_SIDE_WORDS}\s*)?{label}\**\s*[:=\-]\s*\**\s*"
            rf"{_NUM}",
            re.IGNORECASE,
        ),
        # "I would give Assistant 1 a score of 10"
        re.compile(
            rf"{_SIDE_WORDS}\s*{label}\s+an?\s+(?:score|rating)\s+of\s+{_NUM}", re.IGNORECASE
        ),
        # JSON: "score_a": 8
        re.compile(rf"\"score_{side}\"\s*:\s*{_NUM}", re.IGNORECASE),
    )


_SIDE_A = _side_patterns("A", "1")
_SIDE_B = _side_patterns("B", "2")


def parse_pair_scores(text: str, low: float = 1.0, high: float = 10.0) -> Parsed | None:
    """Two scores, each within [low, high]; the higher wins and equal scores tie.

    Tries the strict formats first (last occurrence wins, as the final line is the answer), then
    per-answer labels anywhere in the text.
    """
    for pattern in _SCORE_PATTERNS:
        matches = list(pattern.finditer(text))
        if matches:
            found = matches[-1] if pattern is not _SCORE_PATTERNS[2] else matches[0]
            return _scored(float(found.group(1)), float(found.group(2)), text, found, low, high)
    score_a = _last_number(_SIDE_A, text)
    score_b = _last_number(_SIDE_B, text)
    if score_a is None or score_b is None:
        return None
    return _scored(score_a, score_b, text, None, low, high)


def _last_number(patterns: Sequence[re.Pattern[str]], text: str) -> float | None:
    for pattern in patterns:
        matches = pattern.findall(text)
        if matches:
            return float(matches[-1])
    return None


def _scored(
    score_a: float,
    score_b: float,
    text: str,
    match: re.Match[str] | None,
    low: float,
    high: float,
) -> Parsed | None:
    if not (low <= score_a <= high and low <= score_b <= high):
        return None
    explanation = text.strip()
    if match is not None:
        explanation = (text[: match.start()] + text[match.end() :]).strip()
        explanation = re.sub(r"(?im)^\s*scores?\s*:?\s*$", "", explanation).strip()
    return Parsed(
        verdict=Verdict.from_scores(score_a, score_b),
        score_a=score_a,
        score_b=score_b,
        explanation=explanation,
    )


def _without_last_line_matching(text: str, pattern: str | re.Pattern[str]) -> str:
    """The judge's reasoning without the final verdict line, when that line is only the verdict."""
    lines = text.strip().split("\n")
    compiled = re.compile(pattern, re.IGNORECASE) if isinstance(pattern, str) else pattern
    if lines and compiled.search(lines[-1]) and len(lines[-1]) < 80:
        lines = lines[:-1]
    return "\n".join(lines).strip()
