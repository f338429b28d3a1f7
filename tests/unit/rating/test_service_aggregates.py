"""The pieces of the rating service that need no bus: counts back into battles, judgments into
battles, query checks and the checkpoint encoding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.errors import InvalidArgumentError
from arena_rating.convert import ResolvedQuery, battle_key, battle_of_judgment, resolve_query
from arena_rating.domain import (
    Battles,
    RatingInputError,
    battles_from_counts,
    cells_from_battles,
    outcome_totals,
    rate_battles,
)
from arena_rating.store import Checkpoint

from .helpers import synthetic_battles


def _counts(battles: Battles) -> tuple[list[str], list[str], list[int], list[float], list[int]]:
    """The service's view of battles: distinct (a, b, outcome, weight) cells and their counts."""
    names = battles.models
    cells = Counter(
        zip(
            [names[k] for k in battles.model_a.tolist()],
            [names[k] for k in battles.model_b.tolist()],
            battles.outcome.tolist(),
            battles.weight.tolist(),
            strict=True,
        )
    )
    keys = list(cells)
    return (
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [cells[k] for k in keys],
    )


def test_counts_rebuild_the_same_cells_and_the_same_seeded_leaderboard() -> None:
    battles, _ = synthetic_battles(7, 5000, seed=4, weights=(1.0, 3.0))
    rebuilt = battles_from_counts(*_counts(battles))
    original, again = cells_from_battles(battles), cells_from_battles(rebuilt)
    assert rebuilt.models == battles.models
    for name in ("i", "j", "score", "weight", "count"):
        assert np.array_equal(getattr(original, name), getattr(again, name)), name
    assert np.array_equal(rebuilt.battle_counts(), battles.battle_counts())
    a = rate_battles(battles, bootstrap_rounds=40, seed=3)
    b = rate_battles(rebuilt, bootstrap_rounds=40, seed=3)
    assert a.models == b.models


def test_outcome_totals_count_weighted_wins_losses_and_ties() -> None:
    battles = battles_from_counts(
        ["x", "x", "y"], ["y", "z", "z"], [0, 2, 1], [3.0, 1.0, 1.0], [2, 1, 4]
    )
    wins, losses, ties = outcome_totals(battles)
    assert battles.models == ("x", "y", "z")
    assert wins.tolist() == [6.0, 0.0, 4.0]
    assert losses.tolist() == [0.0, 10.0, 0.0]
    assert ties.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        (("x", "x", 0, 1.0, 1), "same model"),
        (("x", "y", 7, 1.0, 1), "outcome"),
        (("x", "y", 0, 0.0, 1), "weight"),
        (("x", "y", 0, 1.0, 0), "count"),
        (("", "y", 0, 1.0, 1), "non-empty"),
    ],
)
def test_bad_cells_are_refused(cell: tuple[str, str, int, float, int], words: str) -> None:
    with pytest.raises(RatingInputError, match=words):
        battles_from_counts(*([value] for value in cell))  # type: ignore[arg-type]


def _judgment(**fields: object) -> judge_pb.Judgment:
    base: dict[str, object] = {
        "judgment_id": "j1",
        "battle_id": "b1",
        "arena": "wizard",
        "model_a": "a",
        "model_b": "b",
        "order": judge_pb.JUDGE_ORDER_BA,
        "verdict": judge_pb.VERDICT_B_MUCH_BETTER,
        "parse_status": judge_pb.PARSE_STATUS_OK,
        "category": "math",
    }
    return judge_pb.Judgment(**{**base, **fields})  # type: ignore[arg-type]


def test_judgments_become_weighted_battles_keyed_by_battle_and_game() -> None:
    battle, _ = battle_of_judgment(_judgment(), strong_weight=3.0)
    assert battle is not None
    assert (battle.winner, battle.weight, battle.game, battle.category) == (
        pb.WINNER_MODEL_B,
        3.0,
        2,
        "math",
    )
    plain, _ = battle_of_judgment(_judgment(verdict=judge_pb.VERDICT_TIE), strong_weight=3.0)
    assert plain is not None
    assert not plain.HasField("weight")
    # Another judgment of the same battle and game is the same battle; the other game is not.
    other, _ = battle_of_judgment(_judgment(judgment_id="j2"), strong_weight=3.0)
    swapped, _ = battle_of_judgment(_judgment(order=1), strong_weight=3.0)
    assert other is not None
    assert swapped is not None
    assert battle_key(battle, "x") == battle_key(other, "y") != battle_key(swapped, "x")
    # Without a battle id the judgment id decides.
    by_judgment, _ = battle_of_judgment(_judgment(battle_id=""), strong_weight=3.0)
    assert by_judgment is not None
    assert battle_key(by_judgment, "x") != battle_key(battle, "x")
    for fields, reason in (
        ({"arena": ""}, "no_arena"),
        ({"verdict": 0, "parse_status": judge_pb.PARSE_STATUS_FAILED}, "no_verdict"),
        ({"model_b": ""}, "single_answer"),
        ({"model_b": "a"}, "same_model"),
    ):
        assert battle_of_judgment(_judgment(**fields), strong_weight=3.0) == (None, reason)


def _resolve(**fields: object) -> ResolvedQuery:
    return resolve_query(
        pb.LeaderboardQuery(**fields),  # type: ignore[arg-type]
        default_rounds=100,
        max_rounds=1000,
        default_seed=0,
        default_k=4.0,
    )


def test_queries_get_defaults_and_echo_them() -> None:
    resolved = _resolve(arena="a")
    assert resolved.rounds == 100
    assert resolved.seed == 0
    echoed = resolved.to_proto()
    assert echoed.bootstrap_rounds == 100
    assert echoed.seed == 0
    assert echoed.ci_method == pb.CI_METHOD_BOOTSTRAP
    none = _resolve(arena="a", ci_method=pb.CI_METHOD_NONE)
    assert none.rounds == 0


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({}, "query.arena"),
        ({"arena": "a", "anchors": [pb.Anchor(model="")]}, "query.anchors[0].model"),
        (
            {"arena": "a", "anchors": [pb.Anchor(model="m"), pb.Anchor(model="m")]},
            "query.anchors[1]",
        ),
        ({"arena": "a", "bootstrap_rounds": -1}, "query.bootstrap_rounds"),
        ({"arena": "a", "models": ["m", ""]}, "query.models[1]"),
        ({"arena": "a", "method": 9}, "query.method"),
        ({"arena": "a", "ci_method": 9}, "query.ci_method"),
        (
            {"arena": "a", "method": pb.RATING_METHOD_ONLINE_ELO, "k_factor": -2.0},
            "query.k_factor",
        ),
        (
            {"arena": "a", "method": pb.RATING_METHOD_ONLINE_ELO, "style_control": True},
            "query.style_control",
        ),
        (
            {
                "arena": "a",
                "method": pb.RATING_METHOD_ONLINE_ELO,
                "anchors": [pb.Anchor(model="m")],
            },
            "query.anchors",
        ),
    ],
)
def test_bad_queries_name_the_field(fields: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        _resolve(**fields)
    assert caught.value.where == where


def test_checkpoints_round_trip() -> None:
    checkpoint = Checkpoint(
        arena="wizard arena/√",
        epoch="e1",
        covered=42,
        version=40,
        battle_count=7,
        updated_at=1.5,
        cells=[("", "a", "b", 0, 1.0, 4), ("math", "b", "c", 3, 3.0, 3)],
    )
    assert Checkpoint.decode(checkpoint.encode()) == checkpoint
    assert Checkpoint.decode(b"not a checkpoint") is None
