"""The cell-multinomial bootstrap is the row-resampling bootstrap; analytic CIs agree with it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from arena_rating.domain import (
    Battles,
    analytic_covariance,
    battles_from_records,
    bootstrap_ratings,
    cells_from_battles,
    draw_counts,
    fit_bradley_terry,
)
from arena_rating.domain.bootstrap import batch_totals

from .helpers import synthetic_battles, winner_names

pytest.importorskip("sklearn")
from .reference import reference_elo


def _mle(battles: Battles) -> np.ndarray:
    score, total = cells_from_battles(battles).pair_totals()
    return fit_bradley_terry(score, total).ratings


def _row_bootstrap(battles: Battles, rounds: int, seed: int) -> np.ndarray:
    """What the reference tools do: resample battle rows, refit (with our exact fit)."""
    rng = np.random.default_rng(seed)
    n = len(battles)
    out = []
    for _ in range(rounds):
        rows = rng.integers(0, n, n)
        resample = Battles(
            models=battles.models,
            model_a=battles.model_a[rows],
            model_b=battles.model_b[rows],
            outcome=battles.outcome[rows],
            weight=battles.weight[rows],
            category=battles.category[rows],
            categories=(),
        )
        out.append(_mle(resample))
    return np.array(out)


def test_a_resample_counted_in_cells_fits_like_the_reference_on_its_rows() -> None:
    battles, _ = synthetic_battles(6, 1500, seed=11)
    cells = cells_from_battles(battles)
    rng = np.random.default_rng(0)
    winners = winner_names(battles)
    for _ in range(3):
        rows = rng.integers(0, len(battles), len(battles))
        counts = np.bincount(cells.row_cell[rows], minlength=cells.count.size)
        score, total = batch_totals(cells, counts[None, :])
        ours = fit_bradley_terry(score[0], total[0]).ratings
        ref = reference_elo(battles.model_a[rows], battles.model_b[rows], winners[rows], 6)
        assert np.abs(ours - ref).max() < 0.01


@pytest.mark.parametrize(
    ("n_models", "n_battles"),
    [(6, 4000), (25, 400)],  # multinomial over cells; rows drawn then counted
)
def test_bootstrap_has_the_row_resampling_distribution(n_models: int, n_battles: int) -> None:
    battles, _ = synthetic_battles(n_models, n_battles, seed=12, tie_share=0.2)
    cells = cells_from_battles(battles)
    uses_multinomial = n_battles >= 8 * cells.count.size
    assert uses_multinomial == (n_models == 6)
    ours = bootstrap_ratings(cells, rounds=600, seed=1, start=_mle(battles)).ratings
    rows = _row_bootstrap(battles, 300, seed=2)
    for k in range(min(n_models, 6)):
        a, b = ours[:, k][~np.isnan(ours[:, k])], rows[:, k][~np.isnan(rows[:, k])]
        assert ks_2samp(a, b).pvalue > 1e-3
    spread = np.nanstd(ours, axis=0).mean() / np.nanstd(rows, axis=0).mean()
    assert 0.9 < spread < 1.1


def test_bootstrap_cis_match_the_chatbot_arena_bootstrap() -> None:
    battles, _ = synthetic_battles(6, 2000, seed=13)
    winners = winner_names(battles)
    rng = np.random.default_rng(3)
    ref_rounds = []
    for _ in range(200):
        rows = rng.integers(0, len(battles), len(battles))
        ref_rounds.append(
            reference_elo(battles.model_a[rows], battles.model_b[rows], winners[rows], 6)
        )
    ref = np.percentile(np.array(ref_rounds), [2.5, 50, 97.5], axis=0)
    ours = bootstrap_ratings(
        cells_from_battles(battles), rounds=1000, seed=4, start=_mle(battles)
    ).percentiles([2.5, 50, 97.5])
    width = ref[2] - ref[0]
    assert np.abs(ours - ref).max() < 0.25 * width.min()
    assert 0.85 < (ours[2] - ours[0]).mean() / width.mean() < 1.15


def test_seeded_bootstrap_repeats_whatever_the_workers() -> None:
    battles, _ = synthetic_battles(8, 3000, seed=14)
    cells = cells_from_battles(battles)
    one = bootstrap_ratings(cells, rounds=70, seed=7, workers=1).ratings
    two = bootstrap_ratings(cells, rounds=70, seed=7, workers=2).ratings
    other = bootstrap_ratings(cells, rounds=70, seed=8, workers=2).ratings
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)


def test_a_weighted_battle_is_resampled_as_one_unit() -> None:
    battles, _ = synthetic_battles(5, 1500, seed=15, weights=(3.0,))
    tripled = np.repeat(np.arange(len(battles)), 3)
    rows = Battles(
        models=battles.models,
        model_a=battles.model_a[tripled],
        model_b=battles.model_b[tripled],
        outcome=battles.outcome[tripled],
        weight=np.ones(tripled.size),
        category=battles.category[tripled],
        categories=(),
    )
    np.testing.assert_allclose(_mle(battles), _mle(rows), atol=1e-6)
    weighted = bootstrap_ratings(cells_from_battles(battles), rounds=400, seed=5).ratings
    as_rows = bootstrap_ratings(cells_from_battles(rows), rounds=400, seed=5).ratings
    ratio = weighted.std(axis=0).mean() / as_rows.std(axis=0).mean()
    assert ratio == pytest.approx(np.sqrt(3), rel=0.12)


def test_analytic_sandwich_ci_is_close_to_the_bootstrap() -> None:
    battles, _ = synthetic_battles(8, 20_000, seed=16, tie_share=0.3, weights=(1.0, 3.0))
    cells = cells_from_battles(battles)
    mle = _mle(battles)
    boot_sd = bootstrap_ratings(cells, rounds=800, seed=6, start=mle).ratings.std(axis=0)
    sandwich_sd = np.sqrt(np.diag(analytic_covariance(cells, mle)))
    fisher_sd = np.sqrt(np.diag(analytic_covariance(cells, mle, sandwich=False)))
    np.testing.assert_allclose(sandwich_sd, boot_sd, rtol=0.12)
    # Fisher treats a 3x battle as three independent ones, so it is too narrow here.
    assert (fisher_sd < 0.9 * sandwich_sd).all()


def test_anchored_analytic_ci_has_zero_width_at_the_anchor() -> None:
    battles, _ = synthetic_battles(5, 5000, seed=17)
    cells = cells_from_battles(battles)
    score, total = cells.pair_totals()
    mle = fit_bradley_terry(score, total, anchors={2: 1100.0}).ratings
    cov = analytic_covariance(cells, mle, anchors={2: 1100.0})
    assert cov[2, 2] == 0.0
    assert (np.diag(cov)[[0, 1, 3, 4]] > 0).all()


def test_resamples_without_a_finite_mle_are_counted_and_bounded() -> None:
    records = [{"model_a": "a", "model_b": "b", "winner": "model_a"}] * 28
    records += [{"model_a": "b", "model_b": "a", "winner": "model_a"}] * 2  # b wins 2 of 30
    records += [{"model_a": "b", "model_b": "c", "winner": "tie"}] * 30
    battles = battles_from_records(records)
    result = bootstrap_ratings(cells_from_battles(battles), rounds=300, seed=9)
    # P(neither of b's two wins is drawn) = (1 - 2/60) ** 60, about 13% of rounds.
    assert 15 < result.nonfinite_rounds < 75
    assert np.isfinite(result.ratings).all()
    assert result.ratings.max() < 3000


def test_a_model_missing_from_a_resample_is_nan_there() -> None:
    records = [{"model_a": "a", "model_b": "b", "winner": "tie"}] * 40
    records += [{"model_a": "a", "model_b": "rare", "winner": "tie"}]
    battles = battles_from_records(records)
    result = bootstrap_ratings(cells_from_battles(battles), rounds=200, seed=10)
    rare = np.isnan(result.ratings[:, battles.models.index("rare")])
    assert 0.25 < rare.mean() < 0.5  # (1 - 1/41) ** 41, about 36%
    assert result.nonfinite_rounds >= rare.sum()
    assert np.isfinite(result.percentiles([2.5, 97.5])).all()


def test_draws_keep_the_battle_total() -> None:
    battles, _ = synthetic_battles(4, 1000, seed=18)
    cells = cells_from_battles(battles)
    counts = draw_counts(cells, np.random.default_rng(0))
    assert counts.sum() == len(battles)
    assert counts.shape == cells.count.shape


def test_a_resample_without_the_anchor_is_flagged_not_an_error() -> None:
    records = [{"model_a": "a", "model_b": "b", "winner": "model_a"}] * 20
    records += [{"model_a": "b", "model_b": "a", "winner": "model_a"}] * 20
    records += [{"model_a": "anchor", "model_b": "a", "winner": "tie"}]
    battles = battles_from_records(records)
    anchor = battles.models.index("anchor")
    result = bootstrap_ratings(
        cells_from_battles(battles), rounds=200, seed=11, anchors={anchor: 1100.0}
    )
    assert (result.ratings[:, anchor] == 1100.0).all()
    assert np.isfinite(result.ratings).all()
    assert 0.25 < result.nonfinite_rounds / 200 < 0.5  # about (1 - 1/41) ** 41 = 36%


def test_few_battles_per_cell_resample_alike_in_any_line_order() -> None:
    from arena_rating.domain import battles_from_records

    rng = np.random.default_rng(3)
    models = ["a", "b", "c", "d"]
    records = []
    for _ in range(40):  # ~1-2 battles per cell: the row-drawing branch
        first, second = rng.choice(models, 2, replace=False)
        winner = str(rng.choice(["model_a", "model_b", "tie"]))
        records.append({"model_a": str(first), "model_b": str(second), "winner": winner})
    shuffled = [records[index] for index in rng.permutation(len(records))]

    original = bootstrap_ratings(
        cells_from_battles(battles_from_records(records)), rounds=50, seed=4
    )
    reordered = bootstrap_ratings(
        cells_from_battles(battles_from_records(shuffled)), rounds=50, seed=4
    )

    np.testing.assert_array_equal(original.ratings, reordered.ratings)
