"""Recorded judgments in the public formats: verdicts, battles and position consistency.

The expected battles are derived here straight from the raw files with the formats' own rules,
independently of the importers under test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from arena_core.errors import InvalidArgumentError
from arena_judge.domain.quality import position_consistency
from arena_judge.domain.records import (
    mean_grades,
    read_ab_ba,
    read_alpaca_eval,
    read_arena_hard,
    read_fastchat_pair,
    read_fastchat_single,
)
from arena_judge.domain.verdicts import Verdict
from tests.unit.judge.datasets import (
    ARENA_HARD_FORK,
    FASTCHAT_PAIR,
    SHARED_DATASETS,
    repro_pairwise_files,
)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


# Arena-Hard's show_result rules, written out: (winner, weight) per score, game 1 and game 2.
_GAME_1 = {
    "A>>B": ("model_a", 3),
    "A>B": ("model_a", 1),
    "A=B": ("tie", 1),
    "B>A": ("model_b", 1),
    "B>>A": ("model_b", 3),
}
_GAME_2 = {
    "A>>B": ("model_b", 3),
    "A>B": ("model_b", 1),
    "A=B": ("tie", 1),
    "B>A": ("model_a", 1),
    "B>>A": ("model_a", 3),
}


def test_arena_hard_file_gives_the_battles_its_format_defines() -> None:
    records = _lines(ARENA_HARD_FORK)
    expected = []
    nulls = 0
    for record in records:
        for game, rules in ((0, _GAME_1), (1, _GAME_2)):
            score = record["games"][game]["score"]
            if score is None:
                nulls += 1
                continue
            winner, weight = rules[score]
            expected.append(
                {
                    "model_a": "gpt-4-0314",
                    "model_b": record["model"],
                    "winner": winner,
                    "weight": float(weight),
                    "question_id": record["question_id"],
                    "game": game + 1,
                }
            )

    imported = read_arena_hard([ARENA_HARD_FORK])

    assert [b.to_json() for b in imported.battles] == expected
    assert imported.records == 108
    assert len(imported.games) == 216
    assert imported.failures == nulls == 2
    assert len(imported.battles) == 214
    strong = [b for b in imported.battles if b.weight == 3]
    assert len(strong) == 175  # 95 A>>B + 80 B>>A
    # Game 2 showed the model first; its A>>B is a strong win for the model (model_b).
    game_2 = [g for g in imported.games if g.game == 2]
    raw_2 = Counter(r["games"][1]["score"] for r in records)
    assert sum(g.verdict is Verdict.B_MUCH_BETTER for g in game_2) == raw_2["A>>B"]


def test_arena_hard_baseline_is_configurable() -> None:
    imported = read_arena_hard([ARENA_HARD_FORK], baseline="o3-mini")
    assert {b.model_a for b in imported.battles} == {"o3-mini"}


def test_fastchat_pair_file_gives_mirrored_verdicts_and_battles() -> None:
    records = _lines(FASTCHAT_PAIR)
    imported = read_fastchat_pair([FASTCHAT_PAIR])
    expected = [
        (
            record["model_1"],
            record["model_2"],
            {"model_1": "model_a", "model_2": "model_b"}.get(
                record[f"g{game}_winner"], record[f"g{game}_winner"]
            ),
            record["question_id"],
            game,
        )
        for record in records
        for game in (1, 2)
    ]
    assert [(b.model_a, b.model_b, b.winner, b.question_id, b.game) for b in imported.battles] == (
        expected
    )
    assert all(b.weight == 1 for b in imported.battles)
    assert imported.failures == 0
    # Re-reading every verdict from the judge's text, game 2 mirrored (it showed model_2 first),
    # lands on the winners FastChat recorded.
    from_text = read_fastchat_pair([FASTCHAT_PAIR], from_text=True)
    assert [g.verdict for g in from_text.games] == [g.verdict for g in imported.games]
    stats = position_consistency(imported.games)
    assert (stats.valid, stats.inconsistent) == (10, 3)


def test_mt_bench_repro_gives_the_published_position_inconsistency() -> None:
    imported = read_ab_ba(repro_pairwise_files())
    stats = position_consistency(imported.games)
    assert imported.records == 1200
    assert (stats.valid, stats.inconsistent) == (1193, 399)
    assert round(100 * stats.rate, 2) == 33.45
    # Where the orders disagree, the first-shown answer mostly won both times.
    assert round(stats.first_position_preference * stats.inconsistent) == 321


def test_ab_ba_battles_mirror_game_two() -> None:
    imported = read_ab_ba(repro_pairwise_files()[:1])
    record = _lines(repro_pairwise_files()[0])[0]
    first, second = imported.battles[0], imported.battles[1]
    mirrored = {"A": "model_b", "B": "model_a", "tie": "tie"}[record["winner_ba"]]
    assert second.winner == mirrored
    assert second.game == 2
    assert first.winner == {"A": "model_a", "B": "model_b", "tie": "tie"}[record["winner_ab"]]
    assert first.category == record["category"]


@pytest.mark.parametrize(
    ("model", "annotator", "published", "draw_half"),
    [
        ("claude-2.1", "weighted_alpaca_eval_gpt4_turbo", 15.734, False),
        ("gpt-3.5-turbo-1106", "weighted_alpaca_eval_gpt4_turbo", 9.178, False),
        ("alpaca-7b", "alpaca_eval_gpt4", 26.460, True),
    ],
)
def test_alpaca_eval_battles_keep_the_published_win_rate(
    model: str, annotator: str, published: float, draw_half: bool
) -> None:
    path = SHARED_DATASETS / "alpaca_eval/results" / model / annotator / "annotations.json"
    imported = read_alpaca_eval([path])
    total = sum(b.weight for b in imported.battles)
    wins = sum(b.weight for b in imported.battles if b.winner == "model_b")
    ties = sum(b.weight for b in imported.battles if b.winner == "tie")
    assert total == pytest.approx(805)
    assert round(100 * (wins + ties / 2) / total, 3) == pytest.approx(published, abs=0.001)
    assert {b.model_b for b in imported.battles} == {model}


def test_mt_bench_single_grades_give_the_published_means() -> None:
    grades = read_fastchat_single(
        [SHARED_DATASETS / "RouteLLM/benchmarks/mt-bench/gpt-4_single.jsonl"]
    )
    means = mean_grades(grades)
    assert means["martian"] == pytest.approx(8.3125)
    assert means["unify"] == pytest.approx(8.757862, abs=1e-6)
    assert sum(g.score is None for g in grades) == 1


def test_bad_records_are_named_by_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "judgments.jsonl"
    good = json.dumps({"question_id": 1, "model": "m", "games": [{"score": "A>B"}]})
    bad.write_text(
        good + "\n\n" + json.dumps({"question_id": 2, "model": "m", "games": "x"}) + "\n"
    )
    with pytest.raises(InvalidArgumentError, match=rf"{bad}:3: field 'games' must be list"):
        read_arena_hard([bad])
    bad.write_text("{not json\n")
    with pytest.raises(InvalidArgumentError, match=rf"{bad}:1: invalid JSON"):
        read_arena_hard([bad])
    bad.write_text(
        json.dumps(
            {
                "question_id": 1,
                "model_a": "a",
                "model_b": "b",
                "winner_ab": "A",
                "winner_ba": "maybe",
            }
        )
        + "\n"
    )
    with pytest.raises(InvalidArgumentError, match=r"winner_ba' must be one of"):
        read_ab_ba([bad])


def test_records_split_on_newlines_only(tmp_path: Path) -> None:
    """Arena-Hard v2.0 text holds U+2028; str.splitlines would cut a record in two."""
    path = tmp_path / "judgments.jsonl"
    record = {
        "question_id": "q\u2028x",
        "model": "m",
        "games": [{"score": "A>>B"}, {"score": None}],
    }
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    imported = read_arena_hard([path])
    assert imported.records == 1
    assert imported.battles[0].question_id == "q\u2028x"
    assert imported.failures == 1
