"""Leaderboards: ratings, confidence intervals, ranks and win rates against a baseline.

``rating`` is the bootstrap median, as the paper reports it, and the 95% interval is the
2.5/97.5 percentiles; without a bootstrap ``rating`` is the MLE. A model's rank is 1 plus the
number of models whose lower bound exceeds its upper bound (Chatbot Arena's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .battles import STYLE_FEATURES, Battles, cells_from_battles
from .bootstrap import (
    Z_95,
    BootstrapResult,
    analytic_covariance,
    bootstrap_ratings,
    normal_interval,
)
from .bradley_terry import DEFAULT_RIDGE, fit_bradley_terry, win_probability
from .errors import RatingInputError
from .style_control import bootstrap_style_controlled, fit_style_controlled, style_features

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CiMethod = Literal["bootstrap", "analytic"]

DEFAULT_BOOTSTRAP_ROUNDS = 100  # the paper's choice


@dataclass(frozen=True)
class ModelRating:
    """One row of a leaderboard; win rates are percent against the baseline."""

    model: str
    rating: float
    mle: float
    ci_low: float | None
    ci_high: float | None
    rank: int
    battles: int
    win_rate: float | None = None
    win_rate_ci_low: float | None = None
    win_rate_ci_high: float | None = None


@dataclass(frozen=True)
class Leaderboard:
    """Models sorted by rating, best first, with how the ratings were obtained."""

    models: tuple[ModelRating, ...]
    bootstrap_rounds: int
    ci_method: CiMethod | None
    anchors: tuple[tuple[str, float], ...] = ()
    baseline: str | None = None
    category: str | None = None
    seed: int | None = None
    finite: bool = True
    nonfinite_rounds: int = 0
    style_coefficients: tuple[tuple[str, float], ...] | None = None

    def model(self, name: str) -> ModelRating:
        """The row of ``name``."""
        for row in self.models:
            if row.model == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The ``arena rate --format json`` shape."""
        rows = []
        for row in self.models:
            item: dict[str, Any] = {
                "model": row.model,
                "rating": row.rating,
                "mle": row.mle,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "rank": row.rank,
                "battles": row.battles,
            }
            if self.baseline is not None:
                item["win_rate"] = row.win_rate
            rows.append(item)
        out: dict[str, Any] = {
            "models": rows,
            "bootstrap": self.bootstrap_rounds,
            "anchor": dict(self.anchors) or None,
            "baseline": self.baseline,
            "category": self.category,
            "nonfinite_rounds": self.nonfinite_rounds,
        }
        if self.style_coefficients is not None:
            out["style_coefficients"] = dict(self.style_coefficients)
        return out


def rank_by_intervals(low: FloatArray, high: FloatArray) -> IntArray:
    """1 + the number of models whose lower bound exceeds this model's upper bound."""
    return np.asarray(1 + (low[None, :] > high[:, None]).sum(axis=1), dtype=np.int64)


def baseline_win_rate(ratings: FloatArray, baseline_rating: float) -> FloatArray:
    """Percent chance of beating the baseline (the Arena-Hard score; the baseline gets 50)."""
    return 100.0 * win_probability(ratings, baseline_rating)


def rate_battles(
    battles: Battles,
    *,
    anchors: Mapping[str, float] | None = None,
    baseline: str | None = None,
    bootstrap_rounds: int = DEFAULT_BOOTSTRAP_ROUNDS,
    seed: int | None = None,
    ci: CiMethod = "bootstrap",
    style_control: bool = False,
    category: str | None = None,
    ridge: float = DEFAULT_RIDGE,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> Leaderboard:
    """Fit a leaderboard from battles (optionally one category)."""
    if category is not None:
        battles = battles.in_category(category)
    if len(battles) == 0:
        raise RatingInputError("no battles to rate")
    if bootstrap_rounds < 0:
        raise RatingInputError(f"bootstrap rounds must be >= 0, got {bootstrap_rounds}")
    anchor_index = _model_indices(battles, anchors or {}, "anchor")
    if baseline is not None:
        _model_indices(battles, {baseline: 0.0}, "baseline")
    rounds = bootstrap_rounds if ci == "bootstrap" else 0
    options = _FitOptions(anchor_index, rounds, seed, ridge, workers, progress)
    if style_control:
        if ci == "analytic":
            raise RatingInputError("the analytic CI is not available with style control")
        fitted = _fit_style_controlled(battles, options)
    else:
        fitted = _fit_plain(battles, options, analytic=ci == "analytic")
    return _assemble(
        battles,
        fitted,
        anchors=anchors or {},
        baseline=baseline,
        category=category,
        seed=seed,
    )


def rate_by_category(battles: Battles, **options: Any) -> dict[str, Leaderboard]:
    """One leaderboard per category (same options as :func:`rate_battles`)."""
    return {name: rate_battles(battles, category=name, **options) for name in battles.categories}


@dataclass(frozen=True, eq=False)
class _FitOptions:
    anchors: dict[int, float]
    rounds: int
    seed: int | None
    ridge: float
    workers: int
    progress: Callable[[int], None] | None


@dataclass(frozen=True, eq=False)
class _Fitted:
    mle: FloatArray
    finite: bool
    boot: BootstrapResult | None = None
    covariance: FloatArray | None = None
    coefficients: tuple[tuple[str, float], ...] | None = None

    @property
    def ci_method(self) -> CiMethod | None:
        if self.boot is not None:
            return "bootstrap"
        return "analytic" if self.covariance is not None else None


def _fit_plain(battles: Battles, options: _FitOptions, *, analytic: bool) -> _Fitted:
    cells = cells_from_battles(battles)
    score, total = cells.pair_totals()
    fit = fit_bradley_terry(score, total, anchors=options.anchors, ridge=options.ridge)
    if options.rounds:
        boot = bootstrap_ratings(
            cells,
            rounds=options.rounds,
            seed=options.seed,
            anchors=options.anchors,
            ridge=options.ridge,
            start=fit.ratings,
            workers=options.workers,
            progress=options.progress,
        )
        return _Fitted(fit.ratings, fit.finite, boot=boot)
    if analytic:
        ridge = 0.0 if fit.finite else options.ridge
        cov = analytic_covariance(cells, fit.ratings, anchors=options.anchors, ridge=ridge)
        return _Fitted(fit.ratings, fit.finite, covariance=cov)
    return _Fitted(fit.ratings, fit.finite)


def _fit_style_controlled(battles: Battles, options: _FitOptions) -> _Fitted:
    features = style_features(battles)
    fit = fit_style_controlled(battles, features, anchors=options.anchors, ridge=options.ridge)
    coefficients = tuple(zip(STYLE_FEATURES, fit.coefficients.tolist(), strict=True))
    boot = None
    if options.rounds:
        boot, _ = bootstrap_style_controlled(
            battles,
            features,
            rounds=options.rounds,
            seed=options.seed,
            anchors=options.anchors,
            ridge=options.ridge,
            start=fit,
            workers=options.workers,
            progress=options.progress,
        )
    return _Fitted(fit.ratings, fit.finite, boot=boot, coefficients=coefficients)


def _model_indices(battles: Battles, ratings: Mapping[str, float], what: str) -> dict[int, float]:
    index = {name: k for k, name in enumerate(battles.models)}
    out = {}
    for name, rating in ratings.items():
        if name not in index:
            raise RatingInputError(f"{what} model {name!r} has no battles")
        if not np.isfinite(rating):
            raise RatingInputError(f"{what} rating for {name!r} must be finite")
        out[index[name]] = float(rating)
    return out


def _assemble(
    battles: Battles,
    fitted: _Fitted,
    *,
    anchors: Mapping[str, float],
    baseline: str | None,
    category: str | None,
    seed: int | None,
) -> Leaderboard:
    names = battles.models
    mle, boot, covariance = fitted.mle, fitted.boot, fitted.covariance
    rating = mle.copy()
    low: FloatArray | None = None
    high: FloatArray | None = None
    if boot is not None:
        low, rating, high = boot.percentiles([2.5, 50.0, 97.5])
    elif covariance is not None:
        low, high = normal_interval(mle, covariance)
    ranks = rank_by_intervals(rating if low is None else low, rating if high is None else high)
    wins = _win_rates(names, mle, boot, covariance, baseline)
    counts = battles.battle_counts()
    rows = [
        ModelRating(
            model=names[k],
            rating=float(rating[k]),
            mle=float(mle[k]),
            ci_low=None if low is None else float(low[k]),
            ci_high=None if high is None else float(high[k]),
            rank=int(ranks[k]),
            battles=int(counts[k]),
            win_rate=None if wins is None else float(wins[0][k]),
            win_rate_ci_low=None if wins is None or wins[1] is None else float(wins[1][k]),
            win_rate_ci_high=None if wins is None or wins[2] is None else float(wins[2][k]),
        )
        for k in range(len(names))
    ]
    rows.sort(key=lambda r: (-r.rating, r.model))
    return Leaderboard(
        models=tuple(rows),
        bootstrap_rounds=0 if boot is None else boot.rounds,
        ci_method=fitted.ci_method,
        anchors=tuple(sorted(anchors.items())),
        baseline=baseline,
        category=category,
        seed=seed,
        finite=fitted.finite,
        nonfinite_rounds=0 if boot is None else boot.nonfinite_rounds,
        style_coefficients=fitted.coefficients,
    )


def _win_rates(
    names: tuple[str, ...],
    mle: FloatArray,
    boot: BootstrapResult | None,
    covariance: FloatArray | None,
    baseline: str | None,
) -> tuple[FloatArray, FloatArray | None, FloatArray | None] | None:
    if baseline is None:
        return None
    base = names.index(baseline)
    point = baseline_win_rate(mle, float(mle[base]))
    if boot is not None:
        # Percentiles of the per-round gap to the baseline, as Arena-Hard anchors each round.
        gap = boot.ratings - boot.ratings[:, [base]]
        low_gap, high_gap = np.nanpercentile(gap, [2.5, 97.5], axis=0)
        return point, baseline_win_rate(low_gap, 0.0), baseline_win_rate(high_gap, 0.0)
    if covariance is not None:
        var = np.diag(covariance) + covariance[base, base] - 2 * covariance[:, base]
        half = Z_95 * np.sqrt(np.clip(var, 0.0, None))
        gap = mle - mle[base]
        return point, baseline_win_rate(gap - half, 0.0), baseline_win_rate(gap + half, 0.0)
    return point, None, None
