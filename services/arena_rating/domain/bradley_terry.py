"""Bradley–Terry maximum likelihood on the Elo scale, fitted on per-pair totals.

P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)); a tie is half a win for each side, which
is exactly Chatbot Arena's trick of duplicating the battles and giving each copy to one side.
We work in natural log-odds ``theta = (R - 1000) * ln(10) / 400`` and maximise the likelihood by
Newton's method on the (m, m) matrices of scores and games, many bootstrap rounds at once.

No finite MLE exists when some group of models never loses (or never wins) against the rest:
the comparison graph, with an edge i -> j when i scored against j, is not strongly connected.
Policy: such a fit is penalised by a ridge ``ridge / 2 * sum((theta - centre) ** 2)`` (default
0.01, a N(0, 10^2) prior in log-odds, about 1,700 Elo wide) and reported as not finite; a
well-posed fit is never penalised, so it matches the reference exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import expit, log_expit

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

ELO_SCALE = 400.0
ELO_BASE = 10.0
INITIAL_RATING = 1000.0
NATS_PER_ELO = math.log(ELO_BASE) / ELO_SCALE
DEFAULT_RIDGE = 0.01

_TOLERANCE = 1e-5  # last Newton step in log-odds; the error left is ~step**2, 1e-10 (2e-8 Elo)
_MAX_ITER = 100
_MAX_STEP = 2.0  # log-odds; keeps early steps from far-off starts sane
_LINE_SEARCH_ABOVE = 1.0  # log-odds; smaller Newton steps from a warm start are safe


@dataclass(frozen=True, eq=False)
class BradleyTerryFit:
    """Ratings in Elo, one per model; ``finite`` is False when the ridge policy applied."""

    ratings: FloatArray
    finite: bool
    iterations: int


@dataclass(frozen=True, eq=False)
class BatchFit:
    """Ratings (rounds, models); NaN where a model had no battle in that round."""

    ratings: FloatArray
    finite: BoolArray
    iterations: int


def win_probability(rating_a: float | FloatArray, rating_b: float | FloatArray) -> FloatArray:
    """P(a beats b) under the Elo-scale Bradley–Terry model."""
    diff = (np.asarray(rating_a, dtype=np.float64) - rating_b) * NATS_PER_ELO
    return np.asarray(expit(diff), dtype=np.float64)


def mle_exists(score: FloatArray, total: FloatArray) -> bool:
    """Whether a finite MLE exists among the models that played (strong connectivity)."""
    return bool(strongly_connected(score[None], total[None])[0])


def fit_bradley_terry(
    score: FloatArray,
    total: FloatArray,
    *,
    anchors: Mapping[int, float] | None = None,
    ridge: float = DEFAULT_RIDGE,
) -> BradleyTerryFit:
    """Fit ratings from S[i, j] (i's weighted score against j) and N[i, j] (weighted games).

    Without anchors the ratings are centred on a mean of 1000; with anchors those models are
    held at their ratings (one anchor is a pure shift of the centred fit).
    """
    batch = fit_bradley_terry_batch(score[None], total[None], anchors=anchors, ridge=ridge)
    return BradleyTerryFit(
        ratings=batch.ratings[0], finite=bool(batch.finite[0]), iterations=batch.iterations
    )


def fit_bradley_terry_batch(
    score: FloatArray,
    total: FloatArray,
    *,
    anchors: Mapping[int, float] | None = None,
    ridge: float = DEFAULT_RIDGE,
    start: FloatArray | None = None,
) -> BatchFit:
    """Fit many (rounds, m, m) problems at once; ``start`` is a warm start in Elo, (m,)."""
    rounds, m, _ = score.shape
    fixed = np.zeros(m, dtype=bool)
    theta = np.zeros((rounds, m))
    if start is not None:
        theta[:] = (np.nan_to_num(start, nan=INITIAL_RATING) - INITIAL_RATING) * NATS_PER_ELO
    for index, rating in (anchors or {}).items():
        fixed[index] = True
        theta[:, index] = (rating - INITIAL_RATING) * NATS_PER_ELO
    if not fixed.any():
        theta -= theta.mean(axis=1, keepdims=True)
    present = total.sum(axis=2) > 0
    # A round without an anchor's battles has nothing tying the others to the anchor.
    finite = strongly_connected(score, total) & present[:, fixed].all(axis=1)
    penalty = np.where(finite, 0.0, ridge)
    theta, iterations = _newton(score, total, theta, fixed, penalty, present)
    ratings = INITIAL_RATING + theta / NATS_PER_ELO
    ratings[~present & ~fixed] = np.nan  # an anchor keeps its rating, battles or not
    if not fixed.any():
        ratings += INITIAL_RATING - np.nanmean(ratings, axis=1, keepdims=True)
    return BatchFit(ratings=ratings, finite=finite & present.all(axis=1), iterations=iterations)


def log_likelihood(score: FloatArray, ratings: FloatArray) -> float:
    """Log-likelihood of ratings (Elo) given the score matrix (ties as half wins)."""
    theta = (np.nan_to_num(ratings, nan=INITIAL_RATING) - INITIAL_RATING) * NATS_PER_ELO
    return float((score * log_expit(theta[:, None] - theta[None, :])).sum())


def _newton(
    score: FloatArray,
    total: FloatArray,
    theta: FloatArray,
    fixed: BoolArray,
    penalty: FloatArray,
    present: BoolArray,
) -> tuple[FloatArray, int]:
    rounds, m, _ = score.shape
    free = ~fixed
    diag = np.arange(m)
    centre = theta[:, fixed].mean(axis=1) if fixed.any() else np.zeros(rounds)
    wins = score.sum(axis=2)
    active = np.arange(rounds)
    iterations = 0
    while active.size and iterations < _MAX_ITER:
        iterations += 1
        n, th = total[active], theta[active]
        lam, ctr, absent = penalty[active, None], centre[active, None], ~present[active]
        # In-place arithmetic: these (rounds, m, m) passes are the cost of a round.
        p = np.subtract(th[:, :, None], th[:, None, :])
        expit(p, out=p)
        expected = np.multiply(n, p)
        grad = wins[active] - expected.sum(axis=2) - lam * (th - ctr)
        grad[absent | fixed] = 0.0
        np.subtract(1.0, p, out=p)
        hess = np.multiply(expected, p, out=expected)  # n p (1 - p), the pair information
        row = hess.sum(axis=2)
        np.negative(hess, out=hess)
        # An absent model gets a unit diagonal so that its step is exactly zero.
        hess[:, diag, diag] = row + lam + absent
        step = _solve(hess, grad, free)
        size = np.abs(step).max(axis=1)
        scale = np.minimum(1.0, _MAX_STEP / np.maximum(size, 1e-300))
        step *= scale[:, None]
        far = size * scale > _LINE_SEARCH_ABOVE
        if far.any():
            s = score[active[far]]
            step[far] *= _backtrack(s, th[far], step[far], grad[far], lam[far], ctr[far])
        theta[active] = th + step
        # Newton converges quadratically: after a step this small the error is ~step**2.
        active = active[size >= _TOLERANCE]
    return theta, iterations


def strongly_connected(score: FloatArray, total: FloatArray) -> BoolArray:
    """Per round: can every model that played reach every other along "scored against" edges?

    Breadth-first search from one model, forwards and backwards, as batched boolean products.
    """
    rounds, m, _ = score.shape
    present = total.sum(axis=2) > 0
    edges = (score > 0).astype(np.float64)
    first = np.argmax(present, axis=1)
    connected = np.ones(rounds, dtype=bool)
    for graph in (edges, edges.transpose(0, 2, 1)):
        reach = np.zeros((rounds, m), dtype=bool)
        reach[np.arange(rounds), first] = True
        while True:
            grown = reach | (np.matmul(reach[:, None, :].astype(np.float64), graph)[:, 0] > 0)
            if (grown == reach).all():
                break
            reach = grown
        connected &= (reach | ~present).all(axis=1)
    return connected


def _solve(hess: FloatArray, grad: FloatArray, free: BoolArray) -> FloatArray:
    m = hess.shape[1]
    if free.all():
        # The Laplacian is singular along (1, ..., 1); adding 11'/m removes that direction and,
        # because the gradient sums to zero, keeps the step (and so the mean) unchanged.
        hess += 1.0 / m
        return np.asarray(np.linalg.solve(hess, grad[..., None])[..., 0], dtype=np.float64)
    step = np.zeros_like(grad)
    sub = hess[:, free][:, :, free]
    step[:, free] = np.linalg.solve(sub, grad[:, free, None])[..., 0]
    return step


def _objective(
    score: FloatArray, theta: FloatArray, lam: FloatArray, ctr: FloatArray
) -> FloatArray:
    loglik = (score * log_expit(theta[:, :, None] - theta[:, None, :])).sum(axis=(1, 2))
    return np.asarray(loglik - 0.5 * lam[:, 0] * ((theta - ctr) ** 2).sum(axis=1))


def _backtrack(
    score: FloatArray,
    theta: FloatArray,
    step: FloatArray,
    grad: FloatArray,
    lam: FloatArray,
    ctr: FloatArray,
) -> FloatArray:
    """Armijo backtracking: per-round step lengths that increase the penalised likelihood."""
    base = _objective(score, theta, lam, ctr)
    slope = (grad * step).sum(axis=1)
    length = np.ones(theta.shape[0])
    todo = np.arange(theta.shape[0])
    for _ in range(30):
        trial = theta[todo] + length[todo, None] * step[todo]
        value = _objective(score[todo], trial, lam[todo], ctr[todo])
        ok = value >= base[todo] + 1e-4 * length[todo] * slope[todo]
        todo = todo[~ok]
        if not todo.size:
            break
        length[todo] *= 0.5
    return length[:, None]
