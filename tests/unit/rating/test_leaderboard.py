"""Leaderboards: ranks, CIs, win rates against a baseline, categories, style control, online Elo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import orjson
import pytest

from arena_rating.domain import (
    Battles,
    OnlineElo,
    RatingInputError,
    battles_from_records,
    load_battles,
    online_elo,
    parse_battles_jsonl,
    rank_by_intervals,
    rate_battles,
    rate_by_category,
    style_features,
)

from .helpers import battle_records, synthetic_battles

ARENA_HARD_BATTLES = "arena-hard-auto/_history/57a9881/data/arena_hard_battles.jsonl"


def test_rank_is_one_plus_models_clearly_above() -> None:
    low = np.array([1100.0, 1090.0, 1000.0, 980.0])
    high = np.array([1150.0, 1120.0, 1095.0, 1010.0])
    # Model 2's upper bound 1095 is under model 0's lower 1100 but not model 1's 1090.
    assert rank_by_intervals(low, high).tolist() == [1, 1, 2, 3]


def test_bootstrap_leaderboard_shape_and_ordering() -> None:
    battles, _ = synthetic_battles(8, 6000, seed=21)
    board = rate_battles(battles, bootstrap_rounds=120, seed=3)
    ratings = [row.rating for row in board.models]
    assert ratings == sorted(ratings, reverse=True)
    assert board.bootstrap_rounds == 120
    assert board.ci_method == "bootstrap"
    for row in board.models:
        assert row.ci_low is not None
        assert row.ci_high is not None
        assert row.ci_low <= row.rating <= row.ci_high
        assert row.battles == int(battles.battle_counts()[battles.models.index(row.model)])
    doc = board.to_dict()
    assert set(doc) >= {"models", "bootstrap", "anchor"}
    assert set(doc["models"][0]) == {
        "model",
        "rating",
        "mle",
        "ci_low",
        "ci_high",
        "rank",
        "battles",
    }
    assert np.mean([row.mle for row in board.models]) == pytest.approx(1000.0)


def test_no_bootstrap_means_rating_is_the_mle_and_no_ci() -> None:
    battles, _ = synthetic_battles(5, 2000, seed=22)
    board = rate_battles(battles, bootstrap_rounds=0)
    for row in board.models:
        assert row.rating == row.mle
        assert row.ci_low is None
        assert row.ci_high is None
    assert board.ci_method is None
    assert board.to_dict()["models"][0]["ci_low"] is None


def test_seed_makes_the_leaderboard_reproducible() -> None:
    battles, _ = synthetic_battles(6, 3000, seed=23)
    first = rate_battles(battles, bootstrap_rounds=50, seed=11)
    again = rate_battles(battles, bootstrap_rounds=50, seed=11, workers=1)
    assert first == again


def test_same_battles_in_any_order_give_exactly_the_same_leaderboard() -> None:
    """What the service relies on: events in any order rate exactly as the JSONL file does."""
    battles, _ = synthetic_battles(7, 2500, seed=27, weights=(1.0, 3.0))
    records = battle_records(battles)
    data = b"\n".join(orjson.dumps(r) for r in records)
    shuffled = [records[k] for k in np.random.default_rng(1).permutation(len(records))]
    from_file = rate_battles(parse_battles_jsonl(data), bootstrap_rounds=40, seed=9)
    from_events = rate_battles(battles_from_records(shuffled), bootstrap_rounds=40, seed=9)
    assert from_file == from_events


def test_anchor_holds_its_rating_in_every_round() -> None:
    battles, _ = synthetic_battles(6, 3000, seed=24)
    anchor = battles.models[2]
    board = rate_battles(battles, anchors={anchor: 1100.0}, bootstrap_rounds=60, seed=1)
    row = board.model(anchor)
    assert (row.rating, row.mle, row.ci_low, row.ci_high) == (1100.0,) * 4
    assert board.to_dict()["anchor"] == {anchor: 1100.0}


def test_analytic_ci_is_available_for_quick_refreshes() -> None:
    battles, _ = synthetic_battles(6, 8000, seed=25)
    boot = rate_battles(battles, bootstrap_rounds=400, seed=2)
    fast = rate_battles(battles, ci="analytic")
    assert fast.ci_method == "analytic"
    for row in fast.models:
        b = boot.model(row.model)
        assert row.ci_high is not None
        assert row.ci_low is not None
        assert b.ci_high is not None
        assert b.ci_low is not None
        assert row.ci_high - row.ci_low == pytest.approx(b.ci_high - b.ci_low, rel=0.2)


def test_unknown_anchor_or_baseline_is_an_input_error() -> None:
    battles, _ = synthetic_battles(3, 100, seed=26)
    with pytest.raises(RatingInputError, match="anchor model 'ghost' has no battles"):
        rate_battles(battles, anchors={"ghost": 1000.0}, bootstrap_rounds=0)
    with pytest.raises(RatingInputError, match="baseline model 'ghost'"):
        rate_battles(battles, baseline="ghost", bootstrap_rounds=0)


def test_arena_hard_battles_rate_and_the_baseline_scores_fifty(datasets: Path) -> None:
    battles = load_battles(datasets / ARENA_HARD_BATTLES)
    baseline = "claude-3-haiku-20240307"
    board = rate_battles(
        battles, baseline=baseline, anchors={baseline: 1000.0}, bootstrap_rounds=100, seed=0
    )
    assert board.model(baseline).win_rate == 50.0
    assert board.finite
    assert board.nonfinite_rounds == 0
    # Every other model only meets the baseline, so the BT win rate is its raw score share.
    for row in board.models:
        if row.model == baseline:
            continue
        mine = (battles.model_a == battles.models.index(row.model)) | (
            battles.model_b == battles.models.index(row.model)
        )
        as_a = battles.model_a[mine] == battles.models.index(row.model)
        share = np.where(as_a, battles.score_a[mine], 1 - battles.score_a[mine]).mean()
        assert row.win_rate is not None
        assert row.win_rate == pytest.approx(100 * share, abs=1e-6)
        assert row.win_rate_ci_low is not None
        assert row.win_rate_ci_high is not None
        assert row.win_rate_ci_low < row.win_rate < row.win_rate_ci_high


def test_per_category_leaderboards() -> None:
    records = []
    for k in range(60):
        records.append(
            {
                "model_a": "a",
                "model_b": "b",
                "winner": "model_a" if k % 3 else "model_b",
                "category": "math",
            }
        )
        records.append(
            {
                "model_a": "a",
                "model_b": "b",
                "winner": "model_b" if k % 3 else "model_a",
                "category": "writing",
            }
        )
    battles = battles_from_records(records)
    boards = rate_by_category(battles, bootstrap_rounds=0)
    assert set(boards) == {"math", "writing"}
    assert boards["math"].models[0].model == "a"
    assert boards["writing"].models[0].model == "b"
    assert boards["math"].category == "math"


def _styled_battles(seed: int = 31) -> tuple[Battles, np.ndarray, float]:
    """Battles where longer answers win more often and some models are much wordier."""
    battles, true = synthetic_battles(6, 30_000, seed=seed, tie_share=0.0)
    rng = np.random.default_rng(seed)
    verbosity = np.array([4.0, 1.0, 1.0, 2.0, 1.0, 0.5])
    n = len(battles)
    tokens_a = 300 * verbosity[battles.model_a] * rng.lognormal(0, 0.3, n)
    tokens_b = 300 * verbosity[battles.model_b] * rng.lognormal(0, 0.3, n)
    zeros = np.zeros(n)
    style = np.stack([tokens_a, zeros, zeros, zeros, tokens_b, zeros, zeros, zeros], axis=1)
    styled = dataclasses.replace(battles, style=style)
    gamma = 0.5
    x = style_features(styled)[:, 0]
    logit = (true[battles.model_a] - true[battles.model_b]) * np.log(10) / 400 + gamma * x
    a_wins = rng.random(n) < 1 / (1 + np.exp(-logit))
    return dataclasses.replace(styled, outcome=np.where(a_wins, 0, 1)), true, gamma


def test_style_control_removes_the_length_advantage() -> None:
    battles, true, gamma = _styled_battles()
    plain = rate_battles(battles, bootstrap_rounds=0)
    styled = rate_battles(battles, bootstrap_rounds=20, seed=1, style_control=True)
    truth = dict(zip(battles.models, true - true.mean() + 1000, strict=True))
    wordy = battles.models[0]
    assert plain.model(wordy).mle - truth[wordy] > 40  # length inflates the plain rating
    assert abs(styled.model(wordy).mle - truth[wordy]) < 15
    assert styled.style_coefficients is not None
    coefficients = dict(styled.style_coefficients)
    assert coefficients["tokens"] == pytest.approx(gamma, abs=0.05)
    assert coefficients["headers"] == 0.0
    row = styled.model(wordy)
    assert row.ci_low is not None
    assert row.ci_high is not None
    assert row.ci_low < row.mle < row.ci_high


def test_style_control_needs_metadata() -> None:
    battles, _ = synthetic_battles(3, 50, seed=32)
    with pytest.raises(RatingInputError, match="style control needs conv_metadata"):
        rate_battles(battles, bootstrap_rounds=0, style_control=True)


def test_online_elo_follows_the_k_factor_update() -> None:
    elo = OnlineElo(k=4)
    elo.update("a", "b", "model_a")
    assert elo.ratings() == {"a": 1002.0, "b": 998.0}
    elo.update("b", "a", "tie")
    expected_b = 1 / (1 + 10 ** ((1002 - 998) / 400))
    assert elo.ratings()["b"] == pytest.approx(998 + 4 * (0.5 - expected_b))
    with pytest.raises(RatingInputError):
        elo.update("a", "b", "draw")


def test_online_elo_over_battles_tracks_the_strong_model() -> None:
    battles, true = synthetic_battles(4, 4000, seed=33, tie_share=0.0, spread=300.0)
    ratings = online_elo(battles, k=4)
    best = battles.models[int(np.argmax(true))]
    assert max(ratings, key=ratings.__getitem__) == best
    assert sum(ratings.values()) == pytest.approx(4000.0)  # zero-sum updates
