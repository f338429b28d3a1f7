"""Combining judgments: the two position orders of one pair, and the members of an ensemble.

How the paper's two games combine is not stated, so all three readings are offered:
- SEPARATE_BATTLES (Arena-Hard): each order is its own battle; no combined verdict.
- MEAN_SCORE: each answer's score averaged over both orders, the higher mean wins; this is what
  score-gap thresholds (the paper's K) read. Verdict-only protocols average the verdicts' signed
  strength (A>>B = +2 .. B>>A = -2) instead.
- BOTH_AGREE: a side wins only when both orders name it; anything else is a tie.
A combined verdict needs every requested order parsed; otherwise it stays unset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean

from arena_judge.domain.verdicts import (
    EnsembleAggregation,
    Order,
    Outcome,
    ParseStatus,
    PositionAggregation,
    Side,
    Verdict,
)

_STRENGTH = {
    Verdict.A_MUCH_BETTER: 2,
    Verdict.A_BETTER: 1,
    Verdict.TIE: 0,
    Verdict.B_BETTER: -1,
    Verdict.B_MUCH_BETTER: -2,
}


@dataclass(frozen=True)
class PairResult:
    verdict: Verdict
    mean_score_a: float | None
    mean_score_b: float | None
    # Unset unless both orders parsed.
    position_consistent: bool | None


def combine_orders(
    outcomes: Mapping[Order, Outcome], aggregation: PositionAggregation
) -> PairResult:
    parsed = {
        order: o for order, o in outcomes.items() if o.parsed and o.verdict is not Verdict.NONE
    }
    consistent: bool | None = None
    if Order.AB in parsed and Order.BA in parsed:
        consistent = parsed[Order.AB].verdict.side == parsed[Order.BA].verdict.side
    scored = [o for o in parsed.values() if o.score_a is not None and o.score_b is not None]
    mean_a = fmean(o.score_a for o in scored if o.score_a is not None) if scored else None
    mean_b = fmean(o.score_b for o in scored if o.score_b is not None) if scored else None
    complete = bool(outcomes) and len(parsed) == len(outcomes)
    verdict = Verdict.NONE
    if complete and aggregation is PositionAggregation.MEAN_SCORE:
        if mean_a is not None and mean_b is not None and len(scored) == len(parsed):
            verdict = Verdict.from_scores(mean_a, mean_b)
        else:
            verdict = _mean_strength([o.verdict for o in parsed.values()])
    elif complete and aggregation is PositionAggregation.BOTH_AGREE:
        verdicts = [o.verdict for o in parsed.values()]
        sides = {v.side for v in verdicts}
        if len(sides) == 1:
            side = sides.pop()
            verdict = Verdict.from_side(side, strong=all(v.strong for v in verdicts))
        else:
            verdict = Verdict.TIE
    return PairResult(verdict, mean_a, mean_b, consistent)


def _mean_strength(verdicts: Sequence[Verdict]) -> Verdict:
    mean = fmean(_STRENGTH[v] for v in verdicts)
    if mean == 0:
        return Verdict.TIE
    side: Side = "a" if mean > 0 else "b"
    return Verdict.from_side(side, strong=abs(mean) >= 2)


def combine_ensemble(
    aggregation: EnsembleAggregation, members: Sequence[Outcome], *, pairwise: bool
) -> Outcome:
    """Majority vote over the members' winners, or the mean of their scores; members that could
    not be parsed abstain. With no parsed member the ensemble's judgment fails."""
    parsed = [m for m in members if m.parsed]
    totals = {
        "attempts": sum(m.attempts for m in members),
        "prompt_tokens": sum(m.prompt_tokens for m in members),
        "completion_tokens": sum(m.completion_tokens for m in members),
    }
    summary = f"{len(parsed)} of {len(members)} members parsed"
    failed = Outcome(
        Verdict.NONE, None, None, summary, "", ParseStatus.FAILED, members=tuple(members), **totals
    )
    if not parsed:
        return failed
    scores_a = [m.score_a for m in parsed if m.score_a is not None]
    scores_b = [m.score_b for m in parsed if m.score_b is not None]
    mean_a = fmean(scores_a) if scores_a else None
    mean_b = fmean(scores_b) if scores_b else None
    if aggregation is EnsembleAggregation.MEAN_SCORE:
        if mean_a is None or (pairwise and mean_b is None):
            return failed
        verdict = (
            Verdict.from_scores(mean_a, mean_b)
            if pairwise and mean_b is not None
            else (Verdict.NONE)
        )
    elif pairwise:
        verdict = majority([m.verdict for m in parsed])
    else:
        verdict = Verdict.NONE  # single-answer members: the grade is the mean
    votes = ", ".join(m.verdict.label or _grade(m) for m in parsed)
    return Outcome(
        verdict=verdict,
        score_a=mean_a,
        score_b=mean_b if pairwise else None,
        explanation=f"{summary}: {votes}",
        raw_output="",
        parse_status=ParseStatus.OK,
        members=tuple(members),
        **totals,
    )


def majority(verdicts: Sequence[Verdict]) -> Verdict:
    """The side most members named; a tie between sides is a tie. Strong when most of the
    winning side's voters said so."""
    sides = Counter(v.side for v in verdicts if v.side is not None)
    if not sides:
        return Verdict.NONE
    ranked = sides.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return Verdict.TIE
    side = ranked[0][0]
    backers = [v for v in verdicts if v.side == side]
    strong = sum(v.strong for v in backers) * 2 > len(backers)
    return Verdict.from_side(side, strong=strong)


def _grade(outcome: Outcome) -> str:
    return f"{outcome.score_a:g}" if outcome.score_a is not None else "-"
