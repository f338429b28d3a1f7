"""Verdict parsers against thousands of real judge outputs and the formats judges drift into."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_judge.domain.parsing import (
    arena_hard_verdict,
    mt_bench_pair_winner,
    parse_arena_hard,
    parse_mt_bench_pair,
    parse_pair_scores,
    parse_single_score,
)
from arena_judge.domain.verdicts import Order, Parsed, Verdict
from tests.unit.judge.datasets import ARENA_HARD_FORK, SHARED_DATASETS, repro_pairwise_files


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def test_arena_hard_judgments_parse_to_their_recorded_scores() -> None:
    games = [game for record in _lines(ARENA_HARD_FORK) for game in record["games"]]  # type: ignore[attr-defined]
    assert len(games) == 216
    for game in games:
        parsed = parse_arena_hard(game["judgment"])
        assert (parsed.verdict.label if parsed else None) == game["score"], game["judgment"][-300:]
    # The two null scores are outputs without a verdict: failures, not guesses.
    assert sum(game["score"] is None for game in games) == 2


def test_mt_bench_pairwise_judgments_parse_to_their_recorded_winners() -> None:
    labels = {Verdict.A_BETTER: "A", Verdict.B_BETTER: "B", Verdict.TIE: "tie"}
    checked = 0
    for path in repro_pairwise_files():
        for record in _lines(path):
            for key in ("ab", "ba"):
                text = str(record[f"judgment_{key}"])
                parsed = parse_mt_bench_pair(text)
                got = labels[parsed.verdict] if parsed else "error"
                assert got == record[f"winner_{key}"]
                assert mt_bench_pair_winner(text) == record[f"winner_{key}"]
                checked += 1
    assert checked == 2400


def test_vicuna_reviews_parse_to_their_recorded_scores() -> None:
    """GPT-4 reviews giving both answers a 1-10 score (the paper judge's output shape)."""
    agree = off_scale = misrecorded = 0
    for path in sorted((SHARED_DATASETS / "vicuna-blog-eval/eval/table/review").glob("*/*.jsonl")):
        for record in _lines(path):
            text = str(record["text"])
            parsed = parse_pair_scores(text)
            got = [parsed.score_a, parsed.score_b] if parsed else [-1.0, -1.0]
            recorded = [float(s) for s in record["score"]]  # type: ignore[attr-defined]
            if got == recorded:
                agree += 1
            elif parsed is None:
                assert min(recorded) == 0  # "0 9": below the 1-10 scale, so no verdict
                off_scale += 1
            else:
                # The file says 10/2 where the review's own score lines say 10/4.
                assert "Assistant 1: 10\nAssistant 2: 4" in text
                misrecorded += 1
    assert (agree, off_scale, misrecorded) == (1034, 4, 2)


def test_mt_bench_single_grades_parse_to_their_recorded_scores() -> None:
    path = SHARED_DATASETS / "RouteLLM/benchmarks/mt-bench/gpt-4_single.jsonl"
    records = _lines(path)
    for record in records:
        parsed = parse_single_score(str(record["judgment"]))
        assert (parsed.score_a if parsed else -1) == record["score"]
    assert len(records) == 320


@pytest.mark.parametrize(
    ("text", "scores"),
    [
        ("Both are fine.\nScores: [[A=7, B=5]]", (7.0, 5.0)),
        ("reasoning\n[[A: 8/10; B: 8/10]]", (8.0, 8.0)),
        ("[[6, 9]]", (6.0, 9.0)),
        ("8 7\nAssistant 1 was more detailed.", (8.0, 7.0)),
        ("**Assistant A**: 9/10\n**Assistant B**: 4/10", (9.0, 4.0)),
        ("Score for Response A = 3\nScore for Response B = 6.5", (3.0, 6.5)),
        ('{"score_a": 10, "score_b": 2, "why": "..."}', (10.0, 2.0)),
        ("I would give Assistant 1 a score of 4 and Assistant 2 a score of 9.", (4.0, 9.0)),
    ],
)
def test_pair_scores_tolerate_the_formats_judges_write(
    text: str, scores: tuple[float, float]
) -> None:
    parsed = parse_pair_scores(text)
    assert parsed is not None
    assert (parsed.score_a, parsed.score_b) == scores
    assert parsed.verdict is Verdict.from_scores(*scores)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ÃĊ ĠĠ the quick assistant Paris 42 ĊĊ",
        "Scores: [[A=11, B=5]]",  # off the 1-10 scale
        "Assistant A: 7",  # only one score
    ],
)
def test_unparsable_pair_scores_give_nothing(text: str) -> None:
    assert parse_pair_scores(text) is None


def test_arena_hard_tolerates_reversed_relations_and_rejects_unknown_ones() -> None:
    assert parse_arena_hard("My final verdict: [[B<<A]]").verdict is Verdict.A_MUCH_BETTER  # type: ignore[union-attr]
    assert parse_arena_hard("first [[A>B]] then, on reflection, [[A=B]]").verdict is Verdict.TIE  # type: ignore[union-attr]
    assert parse_arena_hard("verdict [b>>a]").verdict is Verdict.B_MUCH_BETTER  # type: ignore[union-attr]
    assert parse_arena_hard("[[A>>>B]]") is None
    assert parse_arena_hard("no verdict at all") is None
    assert arena_hard_verdict(None) is Verdict.NONE
    assert arena_hard_verdict(" B > A ") is Verdict.B_BETTER


def test_single_scores_respect_the_scale() -> None:
    assert parse_single_score("Rating: [[8.5]]").score_a == 8.5  # type: ignore[union-attr]
    assert parse_single_score("Difficulty: 0", 0, 10).score_a == 0  # type: ignore[union-attr]
    assert parse_single_score("[[0]]") is None
    assert parse_single_score("no grade") is None


def test_game_two_is_mirrored_back_to_a_and_b() -> None:
    seen_first_won = Parsed(Verdict.A_MUCH_BETTER, 9.0, 2.0, "")
    assert seen_first_won.oriented(Order.BA) == Parsed(Verdict.B_MUCH_BETTER, 2.0, 9.0, "")
    assert seen_first_won.oriented(Order.AB) == seen_first_won
    assert {v.mirrored().mirrored() for v in Verdict} == set(Verdict)
