"""Consistency between leaderboards, as Arena-Hard and the paper define it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from arena_rating.domain import (
    RatingInputError,
    ScoredModel,
    compare_leaderboards,
    rate_battles,
    scored_models_from_json,
    separated,
)

from .helpers import synthetic_battles


def _board(scores: dict[str, tuple[float, float, float]]) -> list[ScoredModel]:
    return [ScoredModel(m, s, lo, hi) for m, (s, lo, hi) in scores.items()]


REFERENCE = _board(
    {
        "a": (1200, 1190, 1210),
        "b": (1100, 1090, 1110),
        "c": (1000, 990, 1010),
        "d": (995, 985, 1005),  # overlaps c: the reference cannot separate c and d
    }
)


def test_identical_leaderboards_agree_fully() -> None:
    result = compare_leaderboards(REFERENCE, REFERENCE)
    assert result.spearman == 1.0
    assert result.kendall == 1.0
    assert result.agreement == 1.0
    assert result.separability == pytest.approx(5 / 6)
    assert result.average == pytest.approx((1 + 1 + 5 / 6) / 3)
    assert result.common_models == 4
    assert result.brier < 1e-6


def test_agreement_counts_plus_minus_and_zero() -> None:
    bench = _board(
        {
            "a": (10.0, 9.0, 11.0),
            "b": (5.0, 4.0, 6.0),  # separates a > b: +1
            "c": (5.5, 3.0, 8.0),  # cannot separate c from a? it can (8 < 9): +1; from b: 0
            "d": (20.0, 19.0, 21.0),  # d above everything: -1 against a, b, c
        }
    )
    result = compare_leaderboards(bench, REFERENCE)
    # Reference-separable pairs: ab, ac, ad, bc, bd (not cd).
    votes = {"ab": 1, "ac": 1, "ad": -1, "bc": 0, "bd": -1}
    assert result.agreement == pytest.approx(sum(votes.values()) / len(votes))
    assert result.separability == pytest.approx(5 / 6)  # only b-c overlap


def test_reversed_confident_benchmark_scores_minus_one() -> None:
    flipped = [
        ScoredModel(s.model, -s.score, -(s.ci_high or 0), -(s.ci_low or 0)) for s in REFERENCE
    ]
    result = compare_leaderboards(flipped, REFERENCE)
    assert result.agreement == -1.0
    assert result.spearman == -1.0
    assert result.brier > 0.99


def test_brier_uses_the_benchmark_uncertainty() -> None:
    se = 5.0 / 1.959963984540054
    bench = _board({"x": (105.0, 100.0, 110.0), "y": (100.0, 95.0, 105.0)})
    ref = _board({"x": (2.0, 1.9, 2.1), "y": (1.0, 0.9, 1.1)})
    p = norm.cdf(5.0 / math.sqrt(2 * se**2))
    assert compare_leaderboards(bench, ref).brier == pytest.approx((1 - p) ** 2)


def test_only_common_models_count() -> None:
    bench = [*REFERENCE[:2], ScoredModel("zzz", 1.0)]
    result = compare_leaderboards(bench, REFERENCE)
    assert result.common_models == 2
    single = compare_leaderboards(REFERENCE[:1], REFERENCE)
    assert single.common_models == 1
    assert math.isnan(single.spearman)
    assert single.to_dict()["spearman"] is None


def test_separated_is_strict_disjointness() -> None:
    low, high = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    assert separated(low, high).tolist() == [
        [False, False, True],
        [False, False, False],
        [True, False, False],
    ]


def test_reads_rate_mt_bench_and_alpaca_shapes() -> None:
    battles, _ = synthetic_battles(5, 2000, seed=41)
    board = rate_battles(battles, bootstrap_rounds=50, seed=1)
    models = scored_models_from_json(board.to_dict())
    assert [m.model for m in models] == [r.model for r in board.models]
    mt = scored_models_from_json(
        {"models": [{"model": "m", "score": 8.1, "ci_low": 7.9, "ci_high": 8.3, "n": 160}]}
    )
    assert mt[0].score == 8.1
    assert mt[0].ci_low == 7.9
    alpaca = scored_models_from_json(
        {"models": [{"model": "m", "win_rate": 20.0, "standard_error": 1.0, "n": 805}]}
    )
    assert alpaca[0].ci_low == pytest.approx(20.0 - 1.96, abs=1e-3)
    with pytest.raises(RatingInputError, match="models\\[0\\]: needs a numeric"):
        scored_models_from_json({"models": [{"model": "m"}]})
    with pytest.raises(RatingInputError, match="expected an object with a 'models' list"):
        scored_models_from_json([1, 2])


def test_a_benchmark_from_the_same_model_tracks_the_reference() -> None:
    big, _ = synthetic_battles(8, 40_000, seed=42, spread=250.0, ratings_seed=7)
    small, _ = synthetic_battles(8, 4_000, seed=43, spread=250.0, ratings_seed=7)
    ref = scored_models_from_json(rate_battles(big, bootstrap_rounds=100, seed=1).to_dict())
    bench = scored_models_from_json(rate_battles(small, bootstrap_rounds=100, seed=2).to_dict())
    result = compare_leaderboards(bench, ref)
    assert result.spearman > 0.9
    assert result.agreement > 0.6
    assert 0 < result.separability <= 1
