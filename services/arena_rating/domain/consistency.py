"""How well a benchmark's leaderboard agrees with a reference one (Arena-Hard's metrics).

Over the models both rank, with the 95% intervals of each:

- Spearman and Kendall tau-b of the scores;
- agreement with CI: over the pairs the reference separates (intervals disjoint), +1 where the
  benchmark separates them the same way, -1 the opposite way, 0 where it cannot separate them;
- separability: the share of all pairs the benchmark separates;
- pair-rank Brier score over the pairs the reference separates, with the benchmark's
  P(i above j) = Phi(gap / sqrt(se_i^2 + se_j^2)) from its intervals (se = width / 3.92);
- average: the mean of Spearman, agreement and separability (the paper's "Avg.").

A leaderboard without intervals is treated as having zero-width ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import kendalltau, norm, spearmanr

from .errors import RatingInputError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_Z_95 = 1.959963984540054


@dataclass(frozen=True)
class ScoredModel:
    """A model's score on some leaderboard and its 95% interval."""

    model: str
    score: float
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class Consistency:
    """Fractions in [0, 1] (Spearman/Kendall in [-1, 1]); NaN where undefined."""

    spearman: float
    kendall: float
    agreement: float
    separability: float
    brier: float
    average: float
    common_models: int

    def to_dict(self) -> dict[str, Any]:
        """The ``arena consistency`` JSON (NaN as null)."""
        values = {
            "spearman": self.spearman,
            "kendall": self.kendall,
            "agreement": self.agreement,
            "separability": self.separability,
            "brier": self.brier,
            "average": self.average,
        }
        out: dict[str, Any] = {k: None if math.isnan(v) else v for k, v in values.items()}
        out["common_models"] = self.common_models
        return out


def separated(low: FloatArray, high: FloatArray) -> BoolArray:
    """(m, m): whether the intervals of i and j are disjoint."""
    return np.asarray((low[:, None] > high[None, :]) | (low[None, :] > high[:, None]))


def compare_leaderboards(
    benchmark: Sequence[ScoredModel], reference: Sequence[ScoredModel]
) -> Consistency:
    """Consistency of ``benchmark`` with ``reference`` over their common models."""
    bench = {s.model: s for s in benchmark}
    ref = {s.model: s for s in reference}
    common = sorted(set(bench) & set(ref))
    n = len(common)
    if n < 2:
        nan = math.nan
        return Consistency(nan, nan, nan, nan, nan, nan, n)
    b_score, b_low, b_high = _arrays([bench[m] for m in common])
    r_score, r_low, r_high = _arrays([ref[m] for m in common])
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    b_sep = separated(b_low, b_high) & upper
    r_sep = separated(r_low, r_high) & upper
    same_order = np.sign(b_score[:, None] - b_score[None, :]) == np.sign(
        r_score[:, None] - r_score[None, :]
    )
    if r_sep.any():
        votes = np.where(b_sep, np.where(same_order, 1.0, -1.0), 0.0)
        agreement = float(votes[r_sep].mean())
        brier = _brier(b_score, b_low, b_high, r_score, r_sep)
    else:
        agreement = brier = math.nan
    separability = float(b_sep[upper].mean())
    spearman = _statistic(spearmanr, b_score, r_score)
    kendall = _statistic(kendalltau, b_score, r_score)
    return Consistency(
        spearman=spearman,
        kendall=kendall,
        agreement=agreement,
        separability=separability,
        brier=brier,
        average=(spearman + agreement + separability) / 3.0,
        common_models=n,
    )


def scored_models_from_json(document: Any, *, source: str = "<leaderboard>") -> list[ScoredModel]:
    """Read ``{"models": [...]}`` from ``arena rate`` (rating), ``score mt-bench`` (score) or
    ``score alpaca-eval`` (win_rate, with +/-1.96 standard errors as the interval)."""
    rows = document.get("models") if isinstance(document, Mapping) else None
    if not isinstance(rows, list):
        raise RatingInputError("expected an object with a 'models' list", source=source)
    out = []
    for position, row in enumerate(rows):
        if not isinstance(row, Mapping) or not isinstance(row.get("model"), str):
            raise RatingInputError(f"models[{position}]: needs a 'model' name", source=source)
        value_key = next((k for k in ("rating", "score", "win_rate") if k in row), None)
        if value_key is None or not _is_number(row[value_key]):
            raise RatingInputError(
                f"models[{position}]: needs a numeric rating, score or win_rate", source=source
            )
        score = float(row[value_key])
        low, high = row.get("ci_low"), row.get("ci_high")
        if low is None and high is None and _is_number(row.get("standard_error")):
            half = _Z_95 * float(row["standard_error"])
            low, high = score - half, score + half
        for name, bound in (("ci_low", low), ("ci_high", high)):
            if bound is not None and not _is_number(bound):
                raise RatingInputError(
                    f"models[{position}]: {name} must be a number", source=source
                )
        out.append(
            ScoredModel(
                model=row["model"],
                score=score,
                ci_low=None if low is None else float(low),
                ci_high=None if high is None else float(high),
            )
        )
    return out


def _arrays(rows: Sequence[ScoredModel]) -> tuple[FloatArray, FloatArray, FloatArray]:
    score = np.array([r.score for r in rows], dtype=np.float64)
    low = np.array([r.score if r.ci_low is None else r.ci_low for r in rows], dtype=np.float64)
    high = np.array([r.score if r.ci_high is None else r.ci_high for r in rows], dtype=np.float64)
    return score, low, high


def _brier(
    score: FloatArray, low: FloatArray, high: FloatArray, truth: FloatArray, pairs: BoolArray
) -> float:
    se = (high - low) / (2 * _Z_95)
    i, j = np.nonzero(pairs)
    gap = score[i] - score[j]
    spread = np.sqrt(se[i] ** 2 + se[j] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        prob = np.where(spread > 0, norm.cdf(gap / spread), 0.5 + 0.5 * np.sign(gap))
    outcome = (truth[i] > truth[j]).astype(np.float64)
    return float(((prob - outcome) ** 2).mean())


def _statistic(test: Any, a: FloatArray, b: FloatArray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(test(a, b).statistic)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
