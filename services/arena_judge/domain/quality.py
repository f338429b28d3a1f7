"""How good is a judge: position consistency, length bias, parse failures, agreement with gold.

Everything works on `Game`s (one judged order of one pair, oriented to A/B), whether they come
from recorded files or from the service's own judgments.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from arena_judge.domain.records import Game
from arena_judge.domain.verdicts import Side


@dataclass(frozen=True)
class PositionStats:
    valid: int
    inconsistent: int
    rate: float
    # Among inconsistent pairs: the first-shown answer won both orders / the second-shown did.
    first_position_preference: float
    second_position_preference: float
    # Pairs with only one order, or with an order that has no verdict.
    incomplete: int


def position_consistency(games: Iterable[Game]) -> PositionStats:
    """Pairs judged in both orders with both verdicts; inconsistent when the winners differ."""
    pairs: dict[str, dict[int, Game]] = defaultdict(dict)
    for game in games:
        pairs[game.pair_key][game.game] = game
    valid = inconsistent = first = second = incomplete = 0
    for orders in pairs.values():
        one, two = orders.get(1), orders.get(2)
        if one is None or two is None or one.verdict.side is None or two.verdict.side is None:
            incomplete += 1
            continue
        valid += 1
        if one.verdict.side == two.verdict.side:
            continue
        inconsistent += 1
        # Game 1 shows A first, game 2 shows B first (verdicts are already mirrored).
        if one.verdict.side == "a" and two.verdict.side == "b":
            first += 1
        elif one.verdict.side == "b" and two.verdict.side == "a":
            second += 1
    return PositionStats(
        valid=valid,
        inconsistent=inconsistent,
        rate=inconsistent / valid if valid else 0.0,
        first_position_preference=first / inconsistent if inconsistent else 0.0,
        second_position_preference=second / inconsistent if inconsistent else 0.0,
        incomplete=incomplete,
    )


@dataclass(frozen=True)
class LengthStats:
    # Decisive verdicts between answers of different length.
    decisive: int
    longer_wins: int
    longer_wins_rate: float
    # Games whose answer lengths were unknown.
    unknown_length: int


def length_bias(games: Iterable[Game]) -> LengthStats:
    decisive = longer = unknown = 0
    for game in games:
        side = game.verdict.side
        if side not in ("a", "b"):
            continue
        if game.length_a is None or game.length_b is None:
            unknown += 1
            continue
        if game.length_a == game.length_b:
            continue
        decisive += 1
        longer_side = "a" if game.length_a > game.length_b else "b"
        longer += side == longer_side
    return LengthStats(decisive, longer, longer / decisive if decisive else 0.0, unknown)


@dataclass(frozen=True)
class ParseCounts:
    total: int
    failed: int
    failure_rate: float
    recovered_by_retry: int


def parse_counts(games: Sequence[Game], attempts: Mapping[str, int] | None = None) -> ParseCounts:
    """Games without a verdict are failures; `attempts` (by source) finds retried successes."""
    failed = sum(1 for game in games if game.verdict.side is None)
    recovered = 0
    if attempts:
        recovered = sum(
            1 for g in games if g.verdict.side is not None and attempts.get(g.source, 1) > 1
        )
    total = len(games)
    return ParseCounts(total, failed, failed / total if total else 0.0, recovered)


@dataclass(frozen=True)
class GoldAgreement:
    gold_set: str
    judge: str
    n: int
    # Correct verdicts over every (item, order) prediction; an unparsed one counts as wrong.
    accuracy: float
    # Over predictions where neither the gold label nor the verdict is a tie.
    accuracy_without_ties: float | None
    cohen_kappa: float | None
    # Items whose orders gave the same verdict; None when only one order was judged.
    positional_agreement: float | None
    orders: int
    unparsed: int


def gold_agreement(
    gold_set: str,
    judge: str,
    labels: Mapping[str, Side],
    predictions: Mapping[str, Sequence[Side | None]],
) -> GoldAgreement:
    """Agreement of a judge's verdicts (per item, one entry per position order, already oriented
    to the item's first/second output) with gold labels."""
    pairs: list[tuple[Side, Side | None]] = []
    agree = two_orders = 0
    for item_id, label in labels.items():
        verdicts = predictions.get(item_id)
        if not verdicts:
            continue
        pairs += [(label, verdict) for verdict in verdicts]
        if len(verdicts) >= 2:
            two_orders += 1
            agree += verdicts[0] is not None and all(v == verdicts[0] for v in verdicts)
    n_items = sum(1 for item_id in labels if predictions.get(item_id))
    parsed = [(g, p) for g, p in pairs if p is not None]
    correct = sum(1 for g, p in parsed if g == p)
    decisive = [(g, p) for g, p in parsed if g != "tie" and p != "tie"]
    orders = max((len(v) for v in predictions.values()), default=0)
    return GoldAgreement(
        gold_set=gold_set,
        judge=judge,
        n=n_items,
        accuracy=correct / len(pairs) if pairs else 0.0,
        accuracy_without_ties=(
            sum(1 for g, p in decisive if g == p) / len(decisive) if decisive else None
        ),
        cohen_kappa=cohen_kappa([g for g, _ in parsed], [p for _, p in parsed if p is not None]),
        positional_agreement=agree / two_orders if two_orders else None,
        orders=orders,
        unparsed=len(pairs) - len(parsed),
    )


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items; None when undefined."""
    n = len(first)
    if n == 0 or n != len(second):
        return None
    categories = sorted(set(first) | set(second))
    observed = sum(1 for a, b in zip(first, second, strict=True) if a == b) / n
    expected = sum((first.count(c) / n) * (second.count(c) / n) for c in categories)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


@dataclass
class QualityReport:
    judge: str
    position: PositionStats
    length: LengthStats
    parse: ParseCounts
    gold: list[GoldAgreement] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "position": asdict(self.position),
            "length": asdict(self.length),
            "parse": asdict(self.parse),
            "gold": [asdict(g) for g in self.gold],
        }


def quality_report(
    judge: str,
    games: Sequence[Game],
    gold: Iterable[GoldAgreement] = (),
    attempts: Mapping[str, int] | None = None,
) -> QualityReport:
    return QualityReport(
        judge=judge,
        position=position_consistency(games),
        length=length_bias(games),
        parse=parse_counts(games, attempts),
        gold=list(gold),
    )
