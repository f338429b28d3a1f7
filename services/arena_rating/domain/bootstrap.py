"""Bootstrap and analytic confidence intervals for Bradley–Terry ratings.

Resampling N battles with replacement gives each distinct (pair, outcome, weight) cell a count
that is jointly Multinomial(N, count / N); we draw that directly (or, with fewer than about
eight battles a cell, draw the rows and count them: the same distribution, cheaper there), then
fit every round from its (m, m) totals. A weighted battle is one resampling unit: a strong
verdict counted 3x is kept or dropped whole, never split into three independent rows.

Each round has its own seed spawned from the run's seed, so a seeded run gives the same rounds
whatever the number of workers or the batch size.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .battles import BattleCells
from .bradley_terry import (
    DEFAULT_RIDGE,
    NATS_PER_ELO,
    fit_bradley_terry_batch,
    win_probability,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
_CELL_VS_ROW_COST = 8  # a binomial draw costs about 8 uniform integer draws
_BATCH_ELEMENTS = 1_500_000  # rounds * m * m per Newton batch, keeps arrays cache-sized


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """Per-round ratings (rounds, m) in Elo; NaN where a model had no battle that round.

    ``nonfinite_rounds`` counts the rounds without a finite MLE for every model (a model or an
    anchor missing, or a group that never lost): the ridge policy bounded those rounds.
    """

    ratings: FloatArray
    nonfinite_rounds: int
    seed: int | None

    @property
    def rounds(self) -> int:
        return int(self.ratings.shape[0])

    def percentiles(self, q: float | list[float]) -> FloatArray:
        """Per-model percentiles (linear interpolation, as pandas' quantile)."""
        return np.asarray(np.nanpercentile(self.ratings, q, axis=0), dtype=np.float64)


def bootstrap_ratings(
    cells: BattleCells,
    *,
    rounds: int,
    seed: int | None = None,
    anchors: Mapping[int, float] | None = None,
    ridge: float = DEFAULT_RIDGE,
    start: FloatArray | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
) -> BootstrapResult:
    """Ratings for ``rounds`` resamples of the battles; ``progress`` gets rounds done per batch."""
    if rounds < 0:
        raise ValueError("rounds must be >= 0")
    m = cells.n_models
    seeds = np.random.SeedSequence(seed).spawn(rounds)
    batch = max(1, min(64, _BATCH_ELEMENTS // max(m * m, 1)))
    starts = list(range(0, rounds, batch))

    def run(first: int) -> tuple[FloatArray, int]:
        chunk = seeds[first : first + batch]
        counts = np.stack([draw_counts(cells, np.random.default_rng(s)) for s in chunk])
        score, total = batch_totals(cells, counts)
        fit = fit_bradley_terry_batch(score, total, anchors=anchors, ridge=ridge, start=start)
        if progress is not None:
            progress(len(chunk))
        return fit.ratings, int((~fit.finite).sum())

    ratings = np.empty((rounds, m))
    nonfinite = 0
    with blas_single_threaded(), ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for first, (part, bad) in zip(starts, pool.map(run, starts), strict=True):
            ratings[first : first + part.shape[0]] = part
            nonfinite += bad
    return BootstrapResult(ratings=ratings, nonfinite_rounds=nonfinite, seed=seed)


def blas_single_threaded() -> AbstractContextManager[object]:
    """One BLAS thread while the bootstrap runs.

    Our own workers fill the cores, and OpenBLAS threads spin while they wait: two of them
    under each of two workers on two cores made the bootstrap five times slower. One thread
    also makes the rounds bit-identical whatever the number of workers. threadpoolctl is
    optional; without it BLAS is left alone.
    """
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:  # pragma: no cover - only where threadpoolctl is not installed
        return nullcontext()
    limiter: AbstractContextManager[object] = threadpoolctl.threadpool_limits(
        limits=1, user_api="blas"
    )
    return limiter


def draw_counts(cells: BattleCells, rng: np.random.Generator) -> IntArray:
    """One resample of the battles, as counts per cell."""
    n = cells.n_battles
    n_cells = cells.count.shape[0]
    if n < _CELL_VS_ROW_COST * n_cells:
        # Rows in cell order, not file order, so the same battles in any order resample alike.
        rows_by_cell = np.repeat(np.arange(n_cells), cells.count)
        drawn = rows_by_cell[rng.integers(0, n, n)]
        return np.bincount(drawn, minlength=n_cells).astype(np.int64)
    return rng.multinomial(n, cells.count / n).astype(np.int64)


def batch_totals(cells: BattleCells, counts: IntArray) -> tuple[FloatArray, FloatArray]:
    """(rounds, m, m) score and games matrices from (rounds, cells) counts."""
    m = cells.n_models
    pair = cells.i * m + cells.j
    first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])  # cells are sorted by pair
    weighted = counts * cells.weight
    games = np.add.reduceat(weighted, first, axis=1)
    wins = np.add.reduceat(weighted * cells.score, first, axis=1)
    i, j = cells.i[first], cells.j[first]
    rounds = counts.shape[0]
    total = np.zeros((rounds, m, m))
    score = np.zeros((rounds, m, m))
    total[:, i, j] = games
    total[:, j, i] = games
    score[:, i, j] = wins
    score[:, j, i] = games - wins
    return score, total


def analytic_covariance(
    cells: BattleCells,
    ratings: FloatArray,
    *,
    anchors: Mapping[int, float] | None = None,
    sandwich: bool = True,
    ridge: float = 0.0,
) -> FloatArray:
    """Covariance (Elo^2) of the ratings from the observed information.

    The sandwich form ``H+ M H+`` uses the per-battle scores, so it treats a weighted battle as
    one unit like the bootstrap does and is robust to ties; ``sandwich=False`` is plain Fisher.
    Anchored models have zero variance; without anchors it is the covariance of centred ratings.
    """
    m = cells.n_models
    p = win_probability(ratings[cells.i], ratings[cells.j])
    pair = cells.i * m + cells.j
    info = _pair_matrix(pair, cells.count * cells.weight * p * (1 - p), m)
    hess = _laplacian(info + info.T) + ridge * np.eye(m)
    if sandwich:
        resid = cells.count * cells.weight**2 * (cells.score - p) ** 2
        meat_pairs = _pair_matrix(pair, resid, m)
        meat = _laplacian(meat_pairs + meat_pairs.T)
    else:
        meat = hess
    free = np.ones(m, dtype=bool)
    for index in anchors or {}:
        free[index] = False
    if free.all():
        inv = np.linalg.inv(hess + 1.0 / m) - 1.0 / m  # pseudo-inverse of a connected Laplacian
    else:
        inv = np.linalg.inv(hess[np.ix_(free, free)])
        meat = meat[np.ix_(free, free)]
    cov = np.zeros((m, m))
    cov[np.ix_(free, free)] = inv @ meat @ inv if sandwich else inv
    return np.asarray(cov / NATS_PER_ELO**2, dtype=np.float64)


def normal_interval(
    ratings: FloatArray, covariance: FloatArray, z: float = Z_95
) -> tuple[FloatArray, FloatArray]:
    """rating -/+ z * standard error from a covariance matrix."""
    half = z * np.sqrt(np.clip(np.diag(covariance), 0.0, math.inf))
    return ratings - half, ratings + half


def _pair_matrix(pair: IntArray, values: FloatArray, m: int) -> FloatArray:
    return np.asarray(np.bincount(pair, values, m * m), dtype=np.float64).reshape(m, m)


def _laplacian(weights: FloatArray) -> FloatArray:
    lap = -weights.copy()
    np.fill_diagonal(lap, weights.sum(axis=1) - np.diag(weights))
    return lap
