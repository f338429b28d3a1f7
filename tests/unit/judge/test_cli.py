"""`arena judge battles|consistency|gold|quality` on the public files."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from arena_cli import judge_commands
from tests.unit.judge.datasets import (
    ARENA_HARD_FORK,
    FASTCHAT_PAIR,
    LLMBAR,
    MT_BENCH_REPRO,
    PANDALM,
    repro_pairwise_files,
)


@pytest.fixture
def arena() -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    judge_commands.register(cli)
    return cli


def _run(arena: click.Group, *args: str) -> str:
    result = CliRunner().invoke(arena, ["judge", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_battles_from_arena_hard(arena: click.Group, tmp_path: Path) -> None:
    out = tmp_path / "battles.jsonl"
    result = CliRunner().invoke(
        arena, ["judge", "battles", "--format", "arena-hard", "-o", str(out), str(ARENA_HARD_FORK)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr)
    assert summary == {
        "records": 108,
        "games": 216,
        "failures": 2,
        "battles": 214,
        "battle_weight": 564.0,
    }
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 214
    assert set(lines[0]) == {"model_a", "model_b", "winner", "weight", "question_id", "game"}
    assert {line["weight"] for line in lines} == {1.0, 3.0}


def test_battles_feed_the_rating_reader(arena: click.Group) -> None:
    """The rating service's own reader accepts what `arena judge battles` writes."""
    rating = pytest.importorskip("arena_rating.domain.battles")
    reader = getattr(rating, "battles_from_records", None)
    if reader is None:
        pytest.skip("the rating service reads battles differently now")
    for format_name, path in (("mt-bench-pair", FASTCHAT_PAIR), ("arena-hard", ARENA_HARD_FORK)):
        output = _run(arena, "battles", "--format", format_name, str(path))
        records = [json.loads(line) for line in output.splitlines()]
        assert records
        reader(records)  # raises on any line it cannot read


def test_consistency_of_the_round_robin(arena: click.Group) -> None:
    files = [str(p) for p in repro_pairwise_files()]
    report = json.loads(_run(arena, "consistency", "--format", "ab-ba", *files))
    assert (report["valid"], report["inconsistent"]) == (1193, 399)
    assert round(100 * report["rate"], 2) == 33.45


def test_gold_agreement_from_recorded_verdicts(arena: click.Group) -> None:
    llmbar = json.loads(
        _run(arena, "gold", "--gold", "llmbar", str(LLMBAR / "Natural"), "--judge", "GPT-4/Vanilla")
    )
    assert llmbar[0]["accuracy"] == pytest.approx(0.955)
    assert llmbar[0]["positional_agreement"] == pytest.approx(0.95)
    pandalm = json.loads(_run(arena, "gold", "--gold", "pandalm", str(PANDALM)))
    assert [row["judge"] for row in pandalm] == ["gpt-3.5-turbo", "pandalm-7b"]
    assert all(row["cohen_kappa"] > 0.4 for row in pandalm)


def test_gold_with_an_unknown_judge_fails_clearly(arena: click.Group) -> None:
    result = CliRunner().invoke(
        arena, ["judge", "gold", "--gold", "pandalm", str(PANDALM), "--judge", "gpt-9"]
    )
    assert result.exit_code == 1
    assert "no recorded verdicts of judge 'gpt-9'" in result.output


def test_quality_report_as_json_and_table(arena: click.Group) -> None:
    files = [str(p) for p in repro_pairwise_files()]
    report = json.loads(
        _run(
            arena,
            "quality",
            "--format",
            "ab-ba",
            "--judge",
            "gpt-4o-mini",
            "--answers",
            str(MT_BENCH_REPRO / "answers"),
            "--gold",
            "llmbar",
            str(LLMBAR / "Natural"),
            "--gold-judge",
            "GPT-4/Vanilla",
            "--output-format",
            "json",
            *files,
        )
    )
    assert report["position"]["inconsistent"] == 399
    assert report["length"]["decisive"] > 2000
    assert 0.5 < report["length"]["longer_wins_rate"] < 1
    assert report["parse"]["failed"] == 13
    assert report["gold"][0]["accuracy"] == pytest.approx(0.955)

    table = _run(arena, "quality", "--format", "arena-hard", str(ARENA_HARD_FORK))
    assert "position inconsistency" in table
    assert "longer answer wins" in table


def test_missing_and_malformed_inputs(arena: click.Group, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    result = CliRunner().invoke(arena, ["judge", "battles", "--format", "arena-hard", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:1: field 'model'" in result.output
    result = CliRunner().invoke(
        arena, ["judge", "consistency", "--format", "alpaca-eval", str(bad)]
    )
    assert result.exit_code == 2  # not a two-order format
