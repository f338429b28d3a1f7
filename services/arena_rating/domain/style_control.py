"""Style control: Bradley–Terry with response-length and markdown covariates.

As Chatbot Arena defines it: for each of tokens, headers, lists and bold, the feature is
(a - b) / (a + b + 1), standardised over the battles; the model is
logit P(a beats b) = theta_a - theta_b + gamma . x, and the ratings are the thetas, i.e. what
each model would score against an opponent of identical style. The covariates are per battle,
so this fit runs on battle rows, not pair totals, and its bootstrap resamples rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import expit, log_expit

from .battles import STYLE_FEATURES, Battles
from .bootstrap import BootstrapResult, blas_single_threaded
from .bradley_terry import DEFAULT_RIDGE, INITIAL_RATING, NATS_PER_ELO, strongly_connected
from .errors import RatingInputError

FloatArray = npt.NDArray[np.float64]

_TOLERANCE = 1e-6
_MAX_ITER = 100
_MAX_STEP = 2.0


@dataclass(frozen=True, eq=False)
class StyleFit:
    """Style-controlled ratings (Elo) and the style coefficients (log-odds per SD)."""

    ratings: FloatArray
    coefficients: FloatArray
    finite: bool


def style_features(battles: Battles) -> FloatArray:
    """Standardised (n, 4) style differences; a constant feature becomes a zero column."""
    if battles.style is None or np.isnan(battles.style).any():
        missing = (
            len(battles) if battles.style is None else int(np.isnan(battles.style).any(1).sum())
        )
        raise RatingInputError(
            f"style control needs conv_metadata on every battle; {missing} battles lack it"
        )
    a, b = battles.style[:, :4], battles.style[:, 4:]
    ratio = (a - b) / (a + b + 1.0)
    std = ratio.std(axis=0)
    centred = ratio - ratio.mean(axis=0)
    return np.asarray(np.divide(centred, std, out=np.zeros_like(centred), where=std > 0))


def fit_style_controlled(
    battles: Battles,
    features: FloatArray,
    *,
    multiplicity: FloatArray | None = None,
    anchors: Mapping[int, float] | None = None,
    ridge: float = DEFAULT_RIDGE,
    start: StyleFit | None = None,
) -> StyleFit:
    """Maximum likelihood over battle rows, each weighted by weight x multiplicity."""
    m, k = len(battles.models), features.shape[1]
    weight = battles.weight if multiplicity is None else battles.weight * multiplicity
    a, b, y = battles.model_a, battles.model_b, battles.score_a
    present = (np.bincount(a, weight, m) + np.bincount(b, weight, m)) > 0
    score, total = _pair_totals(a, b, y, weight, m)
    fixed = np.zeros(m, dtype=bool)
    for index in anchors or {}:
        fixed[index] = True
    connected = bool(strongly_connected(score[None], total[None])[0])
    finite = connected and bool(present[fixed].all())
    lam = 0.0 if finite else ridge
    params = np.zeros(m + k)
    if start is not None:
        params[:m] = np.nan_to_num(start.ratings, nan=INITIAL_RATING) - INITIAL_RATING
        params[:m] *= NATS_PER_ELO
        params[m:] = start.coefficients
    for index, rating in (anchors or {}).items():
        params[index] = (rating - INITIAL_RATING) * NATS_PER_ELO
    centre = params[:m][fixed].mean() if fixed.any() else 0.0
    problem = _RowProblem(a, b, y, weight, features, m, fixed, present, lam, centre)
    params = problem.solve(params)
    ratings = INITIAL_RATING + params[:m] / NATS_PER_ELO
    ratings[~present & ~fixed] = np.nan
    if not fixed.any():
        ratings += INITIAL_RATING - np.nanmean(ratings)
    return StyleFit(
        ratings=ratings, coefficients=params[m:].copy(), finite=finite and bool(present.all())
    )


def bootstrap_style_controlled(
    battles: Battles,
    features: FloatArray,
    *,
    rounds: int,
    seed: int | None = None,
    anchors: Mapping[int, float] | None = None,
    ridge: float = DEFAULT_RIDGE,
    start: StyleFit | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> tuple[BootstrapResult, FloatArray]:
    """Row-resampling bootstrap; returns the ratings and the (rounds, 4) coefficients."""
    n = len(battles)
    seeds = np.random.SeedSequence(seed).spawn(rounds)

    def run(index: int) -> StyleFit:
        rows = np.random.default_rng(seeds[index]).integers(0, n, n)
        multiplicity = np.bincount(rows, minlength=n).astype(np.float64)
        fit = fit_style_controlled(
            battles, features, multiplicity=multiplicity, anchors=anchors, ridge=ridge, start=start
        )
        if progress is not None:
            progress(1)
        return fit

    with blas_single_threaded(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fits = list(pool.map(run, range(rounds)))
    m, k = len(battles.models), features.shape[1]
    ratings = np.array([f.ratings for f in fits]).reshape(rounds, m)
    coefficients = np.array([f.coefficients for f in fits]).reshape(rounds, k)
    nonfinite = sum(not f.finite for f in fits)
    return BootstrapResult(ratings=ratings, nonfinite_rounds=nonfinite, seed=seed), coefficients


def _pair_totals(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], y: FloatArray, weight: FloatArray, m: int
) -> tuple[FloatArray, FloatArray]:
    games = np.asarray(np.bincount(a * m + b, weight, m * m), dtype=np.float64).reshape(m, m)
    wins = np.asarray(np.bincount(a * m + b, weight * y, m * m), dtype=np.float64).reshape(m, m)
    return wins + (games - wins).T, games + games.T


@dataclass(frozen=True, eq=False)
class _RowProblem:
    a: npt.NDArray[np.int64]
    b: npt.NDArray[np.int64]
    y: FloatArray
    weight: FloatArray
    x: FloatArray
    m: int
    fixed: npt.NDArray[np.bool_]
    present: npt.NDArray[np.bool_]
    lam: float
    centre: float

    def objective(self, params: FloatArray) -> float:
        z = self._logits(params)
        loglik = self.weight * (self.y * log_expit(z) + (1 - self.y) * log_expit(-z))
        theta = params[: self.m]
        return float(loglik.sum() - 0.5 * self.lam * ((theta - self.centre) ** 2).sum())

    def solve(self, params: FloatArray) -> FloatArray:
        for _ in range(_MAX_ITER):
            grad, hess = self._derivatives(params)
            step = self._step(grad, hess)
            size = float(np.abs(step).max())
            step *= min(1.0, _MAX_STEP / max(size, 1e-300))
            if size > 0.25:
                step *= self._backtrack(params, step, grad)
            params = params + step
            if size < _TOLERANCE:
                break
        return params

    def _logits(self, params: FloatArray) -> FloatArray:
        theta = params[: self.m]
        return np.asarray(theta[self.a] - theta[self.b] + self.x @ params[self.m :])

    def _derivatives(self, params: FloatArray) -> tuple[FloatArray, FloatArray]:
        m, a, b = self.m, self.a, self.b
        p = expit(self._logits(params))
        resid = self.weight * (self.y - p)
        info = self.weight * p * (1 - p)
        theta = params[:m]
        grad = np.empty(params.shape[0])
        grad[:m] = np.bincount(a, resid, m) - np.bincount(b, resid, m)
        grad[:m] -= self.lam * (theta - self.centre)
        grad[m:] = self.x.T @ resid
        grad[:m][self.fixed | ~self.present] = 0.0
        pair = np.bincount(a * m + b, info, m * m).reshape(m, m)
        pair += pair.T
        hess = np.empty((params.shape[0], params.shape[0]))
        hess[:m, :m] = -pair
        hess[np.arange(m), np.arange(m)] = pair.sum(axis=1) + self.lam + ~self.present
        weighted_x = info[:, None] * self.x
        cross = np.stack(
            [np.bincount(a, col, m) - np.bincount(b, col, m) for col in weighted_x.T], axis=1
        )
        cross[~self.present] = 0.0
        hess[:m, m:] = cross
        hess[m:, :m] = cross.T
        hess[m:, m:] = self.x.T @ weighted_x
        # A feature that is all zero has no information; pin its coefficient.
        empty = np.diag(hess)[m:] <= 0
        hess[m:, m:][np.diag_indices(len(empty))] += empty
        return grad, hess

    def _step(self, grad: FloatArray, hess: FloatArray) -> FloatArray:
        m = self.m
        free = np.concatenate([~self.fixed, np.ones(hess.shape[0] - m, dtype=bool)])
        if not self.fixed.any():
            hess = hess.copy()
            hess[:m, :m] += 1.0 / m  # removes the translation direction, see bradley_terry
            return np.asarray(np.linalg.solve(hess, grad))
        step = np.zeros_like(grad)
        step[free] = np.linalg.solve(hess[np.ix_(free, free)], grad[free])
        return step

    def _backtrack(self, params: FloatArray, step: FloatArray, grad: FloatArray) -> float:
        base = self.objective(params)
        slope = float(grad @ step)
        length = 1.0
        for _ in range(30):
            if self.objective(params + length * step) >= base + 1e-4 * length * slope:
                break
            length *= 0.5
        return length


__all__ = [
    "STYLE_FEATURES",
    "StyleFit",
    "bootstrap_style_controlled",
    "fit_style_controlled",
    "style_features",
]
