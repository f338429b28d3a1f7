"""Promotion: a candidate replaces the incumbent only when the rating evidence says it is better."""

from __future__ import annotations

from dataclasses import dataclass

from arena_flywheel.domain.spec import PromotionDecl


@dataclass(frozen=True)
class Standing:
    """A model's row on the leaderboard the decision reads."""

    model: str
    rating: float
    ci_low: float
    ci_high: float
    battles: int


@dataclass(frozen=True)
class Decision:
    promoted: bool
    rule: str
    reason: str


def decide(rule: PromotionDecl, candidate: Standing, incumbent: Standing) -> Decision:
    """Applies the spec's rule; the reason states the numbers it compared."""
    if candidate.battles < rule.min_battles:
        return Decision(
            False,
            rule.rule,
            f"{candidate.model} has {candidate.battles} battles, fewer than the "
            f"{rule.min_battles} the rule requires",
        )
    if rule.rule == "ci_lower_above_incumbent":
        better = candidate.ci_low > incumbent.rating
        comparison = (
            f"lower bound {candidate.ci_low:.1f} {'above' if better else 'not above'} "
            f"incumbent rating {incumbent.rating:.1f}"
        )
    else:
        better = candidate.rating > incumbent.rating
        comparison = (
            f"rating {candidate.rating:.1f} {'above' if better else 'not above'} "
            f"incumbent rating {incumbent.rating:.1f}"
        )
    return Decision(better, rule.rule, f"{candidate.model}: {comparison}")
