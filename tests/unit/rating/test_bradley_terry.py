"""The Bradley–Terry fit against Chatbot Arena's scikit-learn reference, anchors, ridge policy."""

from __future__ import annotations

import numpy as np
import pytest

from arena_rating.domain import (
    Battles,
    BradleyTerryFit,
    battles_from_records,
    cells_from_battles,
    fit_bradley_terry,
    log_likelihood,
    mle_exists,
    win_probability,
)

from .helpers import battle_records, synthetic_battles, winner_names

pytest.importorskip("sklearn")
from .reference import reference_elo

TOLERANCE_ELO = 0.01


def _fit(battles: Battles, anchors: dict[int, float] | None = None) -> BradleyTerryFit:
    score, total = cells_from_battles(battles).pair_totals()
    return fit_bradley_terry(score, total, anchors=anchors)


@pytest.mark.parametrize(
    ("n_models", "n_battles", "tie_share", "spread", "seed"),
    [
        (2, 50, 0.0, 100.0, 0),
        (8, 3000, 0.1, 150.0, 1),
        (20, 20000, 0.3, 300.0, 2),
        (40, 8000, 0.05, 400.0, 3),  # sparse: ~10 battles a pair, wide spread
    ],
)
def test_ratings_match_the_chatbot_arena_reference(
    n_models: int, n_battles: int, tie_share: float, spread: float, seed: int
) -> None:
    battles, _ = synthetic_battles(
        n_models, n_battles, seed=seed, tie_share=tie_share, spread=spread
    )
    ours = _fit(battles)
    ref = reference_elo(
        battles.model_a, battles.model_b, winner_names(battles), len(battles.models)
    )
    assert ours.finite
    assert np.abs(ours.ratings - ref).max() < TOLERANCE_ELO
    assert ours.ratings.mean() == pytest.approx(1000.0)


def test_a_weight_equals_repeated_rows_in_the_reference() -> None:
    battles, _ = synthetic_battles(6, 1500, seed=4, weights=(1.0, 3.0))
    repeat = np.repeat(np.arange(len(battles)), battles.weight.astype(int))
    ref = reference_elo(
        battles.model_a[repeat],
        battles.model_b[repeat],
        winner_names(battles)[repeat],
        len(battles.models),
    )
    assert np.abs(_fit(battles).ratings - ref).max() < TOLERANCE_ELO


def test_fit_recovers_the_true_ratings() -> None:
    battles, true = synthetic_battles(10, 200_000, seed=5, tie_share=0.0)
    ours = _fit(battles).ratings
    assert np.abs((ours - ours.mean()) - (true - true.mean())).max() < 10.0


def test_one_anchor_is_a_shift_of_the_centred_fit() -> None:
    battles, _ = synthetic_battles(9, 4000, seed=6)
    centred = _fit(battles).ratings
    anchored = _fit(battles, anchors={3: 1100.0}).ratings
    assert anchored[3] == pytest.approx(1100.0)
    np.testing.assert_allclose(anchored - anchored[3], centred - centred[3], atol=1e-6)


def test_two_anchors_give_the_constrained_maximum() -> None:
    battles, _ = synthetic_battles(6, 5000, seed=7)
    score, total = cells_from_battles(battles).pair_totals()
    fit = fit_bradley_terry(score, total, anchors={0: 1000.0, 1: 1200.0})
    assert fit.ratings[[0, 1]].tolist() == pytest.approx([1000.0, 1200.0])
    # Moving any free model either way lowers the likelihood.
    best = log_likelihood(score, fit.ratings)
    for k in range(2, 6):
        for delta in (-0.5, 0.5):
            moved = fit.ratings.copy()
            moved[k] += delta
            assert log_likelihood(score, moved) < best


def test_a_model_that_never_loses_gets_a_bounded_flagged_rating() -> None:
    records = [{"model_a": "champ", "model_b": "b", "winner": "model_a"}] * 20
    records += [{"model_a": "b", "model_b": "c", "winner": "model_a"}] * 10
    records += [{"model_a": "c", "model_b": "b", "winner": "model_a"}] * 10
    battles = battles_from_records(records)
    score, total = cells_from_battles(battles).pair_totals()
    assert not mle_exists(score, total)
    fit = fit_bradley_terry(score, total)
    assert not fit.finite
    assert np.isfinite(fit.ratings).all()
    champ = fit.ratings[battles.models.index("champ")]
    assert 1300 < champ < 2500  # ridge-bounded, far above the others, not 1e6


def test_well_posed_data_is_never_penalised() -> None:
    battles, _ = synthetic_battles(5, 3000, seed=8)
    score, total = cells_from_battles(battles).pair_totals()
    assert mle_exists(score, total)
    plain = fit_bradley_terry(score, total, ridge=0.0).ratings
    default = fit_bradley_terry(score, total).ratings
    np.testing.assert_array_equal(plain, default)


def test_disconnected_groups_have_no_finite_mle() -> None:
    records = [
        {"model_a": "a", "model_b": "b", "winner": "model_a"},
        {"model_a": "b", "model_b": "a", "winner": "model_a"},
        {"model_a": "c", "model_b": "d", "winner": "tie"},
    ]
    score, total = cells_from_battles(battles_from_records(records)).pair_totals()
    assert not mle_exists(score, total)
    assert np.isfinite(fit_bradley_terry(score, total).ratings).all()


def test_win_probability_is_the_elo_curve() -> None:
    assert float(win_probability(1400.0, 1000.0)) == pytest.approx(10 / 11)
    assert float(win_probability(1000.0, 1000.0)) == 0.5


def test_line_order_does_not_change_the_fit() -> None:
    battles, _ = synthetic_battles(6, 800, seed=9)
    records = battle_records(battles)
    reordered = battles_from_records(list(reversed(records)))
    np.testing.assert_array_equal(_fit(battles).ratings, _fit(reordered).ratings)
