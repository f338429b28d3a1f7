"""`arena rate`, `arena consistency` and `arena score` on a throwaway click group."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from arena_cli.rating_commands import register

from .helpers import battle_records, synthetic_battles

ARENA_HARD_BATTLES = "arena-hard-auto/_history/57a9881/data/arena_hard_battles.jsonl"


@pytest.fixture
def cli() -> click.Group:
    @click.group()
    def group() -> None:
        """Throwaway root."""

    register(group)
    return group


@pytest.fixture
def battles_file(tmp_path: Path) -> Path:
    battles, _ = synthetic_battles(6, 3000, seed=51)
    path = tmp_path / "battles.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in battle_records(battles)) + b"\n")
    return path


def _invoke(cli: click.Group, *args: str | Path) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_rate_json_shape_and_reproducibility(cli: click.Group, battles_file: Path) -> None:
    args = ("rate", battles_file, "--format", "json", "--bootstrap", "50", "--seed", "3")
    first = _invoke(cli, *args)
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["bootstrap"] == 50
    assert doc["anchor"] is None
    assert len(doc["models"]) == 6
    assert set(doc["models"][0]) == {
        "model",
        "rating",
        "mle",
        "ci_low",
        "ci_high",
        "rank",
        "battles",
    }
    assert sum(m["mle"] for m in doc["models"]) / 6 == pytest.approx(1000.0)
    assert json.loads(_invoke(cli, *args).stdout) == doc


def test_rate_without_bootstrap_reports_the_mle(cli: click.Group, battles_file: Path) -> None:
    result = _invoke(cli, "rate", battles_file, "--format", "json", "--bootstrap", "0")
    doc = json.loads(result.stdout)
    for row in doc["models"]:
        assert row["rating"] == row["mle"]
        assert row["ci_low"] is None
        assert row["ci_high"] is None


def test_rate_anchor_baseline_and_csv(cli: click.Group, battles_file: Path) -> None:
    result = _invoke(
        cli,
        "rate",
        battles_file,
        "--format",
        "csv",
        "--bootstrap",
        "20",
        "--seed",
        "1",
        "--anchor",
        "model-002=1100",
        "--baseline",
        "model-002",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [
        "model",
        "rating",
        "mle",
        "ci_low",
        "ci_high",
        "rank",
        "battles",
        "win_rate",
    ]
    anchor = next(r for r in rows if r["model"] == "model-002")
    assert float(anchor["rating"]) == 1100.0
    assert float(anchor["win_rate"]) == 50.0


def test_rate_table_and_plot(cli: click.Group, battles_file: Path, tmp_path: Path) -> None:
    for suffix in (".png", ".svg"):
        plot = tmp_path / f"board{suffix}"
        result = _invoke(cli, "rate", battles_file, "--bootstrap", "20", "--plot", plot)
        assert result.exit_code == 0, result.output
        assert "model-000" in result.stdout
        assert plot.stat().st_size > 1000
    assert (tmp_path / "board.svg").read_text().lstrip().startswith("<?xml")
    bad = _invoke(cli, "rate", battles_file, "--plot", tmp_path / "board.pdf")
    assert bad.exit_code == 2
    assert ".png or .svg" in bad.output


def test_rate_errors_name_the_line(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"model_a": "a", "model_b": "b", "winner": "model_a"}\n'
        '{"model_a": "a", "model_b": "b", "winner": "A"}\n'
    )
    result = _invoke(cli, "rate", path)
    assert result.exit_code == 1
    assert f"{path}:2: field 'winner'" in result.output
    anchor = _invoke(cli, "rate", path.with_name("bad.jsonl"), "--anchor", "nonsense")
    assert anchor.exit_code == 2
    assert "MODEL=RATING" in anchor.output


def test_rate_category(cli: click.Group, tmp_path: Path) -> None:
    path = tmp_path / "cat.jsonl"
    lines = [
        {"model_a": "a", "model_b": "b", "winner": "model_a", "category": "math"},
        {"model_a": "b", "model_b": "a", "winner": "model_a", "category": "math"},
        {"model_a": "c", "model_b": "a", "winner": "tie", "category": "code"},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in lines))
    doc = json.loads(
        _invoke(
            cli, "rate", path, "--category", "math", "--format", "json", "--bootstrap", "0"
        ).stdout
    )
    assert {m["model"] for m in doc["models"]} == {"a", "b"}
    assert doc["category"] == "math"


def test_rate_arena_hard_battles(cli: click.Group, datasets: Path) -> None:
    result = _invoke(
        cli,
        "rate",
        datasets / ARENA_HARD_BATTLES,
        "--baseline",
        "claude-3-haiku-20240307",
        "--format",
        "json",
        "--seed",
        "0",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rates = {m["model"]: m["win_rate"] for m in doc["models"]}
    assert rates["claude-3-haiku-20240307"] == 50.0
    assert len(rates) == 4


def test_consistency_command(cli: click.Group, battles_file: Path, tmp_path: Path) -> None:
    board = _invoke(
        cli, "rate", battles_file, "--format", "json", "--bootstrap", "50", "--seed", "1"
    ).stdout
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(board)
    b.write_text(board)
    doc = json.loads(_invoke(cli, "consistency", a, b).stdout)
    assert set(doc) == {
        "spearman",
        "kendall",
        "agreement",
        "separability",
        "brier",
        "average",
        "common_models",
    }
    assert doc["spearman"] == 1.0
    assert doc["agreement"] == 1.0
    assert doc["common_models"] == 6


def test_score_mt_bench(cli: click.Group, datasets: Path) -> None:
    path = datasets / "RouteLLM/benchmarks/mt-bench/gpt-4_single.jsonl"
    doc = json.loads(_invoke(cli, "score", "mt-bench", path, "--bootstrap", "200").stdout)
    scores = {m["model"]: m for m in doc["models"]}
    assert round(scores["martian"]["score"], 4) == 8.3125
    assert set(scores["unify"]) == {"model", "score", "ci_low", "ci_high", "n"}


def test_score_alpaca_eval(cli: click.Group, datasets: Path) -> None:
    files = sorted(
        (datasets / "alpaca_eval/results").glob(
            "*/weighted_alpaca_eval_gpt4_turbo/annotations.json"
        )
    )
    plain = json.loads(_invoke(cli, "score", "alpaca-eval", *files).stdout)
    assert set(plain["models"][0]) == {"model", "win_rate", "standard_error", "n"}
    lc = json.loads(_invoke(cli, "score", "alpaca-eval", *files, "--length-controlled").stdout)
    rows = {m["model"]: m for m in lc["models"]}
    assert rows["gpt4_1106_preview"]["length_controlled_win_rate"] == 50.0
    assert round(rows["claude-2.1"]["win_rate"], 3) == 15.734


def test_register_merges_into_an_existing_score_group() -> None:
    @click.group()
    def root() -> None:
        """Root."""

    @root.group("score")
    def existing() -> None:
        """Someone else's score group."""

    @existing.command("judge-agreement")
    def other() -> None:
        """Not ours."""

    register(root)
    assert {"rate", "consistency", "score"} <= set(root.commands)
    assert set(existing.commands) == {"judge-agreement", "mt-bench", "alpaca-eval"}


def test_rate_style_control(cli: click.Group, tmp_path: Path) -> None:
    battles, _ = synthetic_battles(4, 600, seed=52)
    rng = np.random.default_rng(0)
    lines = []
    for record in battle_records(battles):
        tokens = rng.integers(50, 500, 2).tolist()
        record["conv_metadata"] = {
            "sum_assistant_a_tokens": tokens[0],
            "header_count_a": {"h1": 0, "h2": 1},
            "list_count_a": {"ordered": 1, "unordered": 2},
            "bold_count_a": {"**": 0, "__": 0},
            "sum_assistant_b_tokens": tokens[1],
            "header_count_b": {"h1": 1, "h2": 0},
            "list_count_b": {"ordered": 0, "unordered": 0},
            "bold_count_b": {"**": 2, "__": 0},
        }
        lines.append(orjson.dumps(record))
    path = tmp_path / "styled.jsonl"
    path.write_bytes(b"\n".join(lines))
    result = _invoke(cli, "rate", path, "--style-control", "--bootstrap", "5", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["style_coefficients"]) == {"tokens", "headers", "lists", "bold"}
    assert len(doc["models"]) == 4
