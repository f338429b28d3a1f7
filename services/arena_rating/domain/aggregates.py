"""Battles rebuilt from stored per-cell counts, and each model's weighted outcome totals.

A service keeps an arena as counts of distinct (model_a, model_b, outcome, weight) cells rather
than one row per battle. Expanding the counts back into rows gives the same :class:`Battles`
that reading the battles one per line gives (models in sorted order, the same cells), so
:func:`~.leaderboard.rate_battles` fits the same ratings and, for a seeded bootstrap, draws the
same intervals. The rows come out in one canonical order (sorted by cell); only the
row-resampling branch of the bootstrap (under ~8 battles a cell) depends on row order, so for
that case a battles file in the same order reproduces them bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .battles import Battles, Outcome
from .errors import RatingInputError

FloatArray = npt.NDArray[np.float64]


def battles_from_counts(
    model_a: Sequence[str],
    model_b: Sequence[str],
    outcome: Sequence[int],
    weight: Sequence[float],
    count: Sequence[int],
) -> Battles:
    """Battles with ``count[k]`` copies of cell k; cells may come in any order, repeats add up."""
    n_cells = len(count)
    if not len(model_a) == len(model_b) == len(outcome) == len(weight) == n_cells:
        raise RatingInputError("cell columns must have the same length")
    for k in range(n_cells):
        _check_cell(k, model_a[k], model_b[k], outcome[k], weight[k], count[k])
    names = sorted(set(model_a) | set(model_b))
    index = {name: position for position, name in enumerate(names)}
    a = np.fromiter((index[name] for name in model_a), np.int64, n_cells)
    b = np.fromiter((index[name] for name in model_b), np.int64, n_cells)
    codes = np.asarray(outcome, dtype=np.int64).reshape(n_cells)
    weights = np.asarray(weight, dtype=np.float64).reshape(n_cells)
    counts = np.asarray(count, dtype=np.int64).reshape(n_cells)
    order = np.lexsort((weights, codes, b, a))  # canonical: by a, then b, outcome, weight
    a, b, codes, weights, counts = a[order], b[order], codes[order], weights[order], counts[order]
    n = int(counts.sum())
    return Battles(
        models=tuple(names),
        model_a=np.repeat(a, counts),
        model_b=np.repeat(b, counts),
        outcome=np.repeat(codes, counts),
        weight=np.repeat(weights, counts),
        category=np.full(n, -1, dtype=np.int64),
        categories=(),
    )


def outcome_totals(battles: Battles) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Weighted wins, losses and ties (either kind) of each model, in ``battles.models`` order."""
    m = len(battles.models)
    a, b, w, outcome = battles.model_a, battles.model_b, battles.weight, battles.outcome
    a_wins = outcome == Outcome.A_WINS
    b_wins = outcome == Outcome.B_WINS
    tie = ~(a_wins | b_wins)

    def total(index: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> FloatArray:
        return np.asarray(np.bincount(index[mask], w[mask], m), dtype=np.float64)

    wins = total(a, a_wins) + total(b, b_wins)
    losses = total(a, b_wins) + total(b, a_wins)
    ties = total(a, tie) + total(b, tie)
    return wins, losses, ties


def _check_cell(k: int, a: str, b: str, outcome: int, weight: float, count: int) -> None:
    def fail(message: str) -> RatingInputError:
        return RatingInputError(f"cell {k}: {message}")

    if not isinstance(a, str) or not a or not isinstance(b, str) or not b:
        raise fail(f"model names must be non-empty strings, got {a!r} and {b!r}")
    if a == b:
        raise fail(f"model_a and model_b are the same model {a!r}")
    if outcome not in tuple(Outcome):
        raise fail(f"outcome must be one of {[int(o) for o in Outcome]}, got {outcome!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise fail(f"weight must be a positive finite number, got {weight!r}")
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise fail(f"count must be a positive integer, got {count!r}")
