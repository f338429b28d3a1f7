"""Cleaning steps, each reporting its count and the ids it removed, in the paper's order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_core.errors import InvalidArgumentError
from arena_selection.domain.cleaning import CleaningConfig, LengthUnit, clean_pool, measure, prefix
from arena_selection.domain.decontamination import (
    DecontaminationConfig,
    DecontaminationMode,
    EvalSet,
    word_containment,
)
from arena_selection.domain.embeddings import HashingEmbedder
from arena_selection.domain.language import LanguageFilter
from arena_selection.domain.records import Message, make_record
from tests.unit.selection.support import write_jsonl

LONG = (
    "Describe the water cycle for a class of ten year olds, covering evaporation, "
    "condensation, precipitation and collection, with one everyday example for each stage."
)


def _record(text: str, source: str = "test") -> object:
    return make_record([Message("user", text)], source)


def _pool() -> list:  # type: ignore[type-arg]
    texts = [
        "Hi",  # too short
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Write a short story about a lighthouse keeper who finds a message in a bottle!!",  # prefix
        LONG,
        LONG.replace("Describe", "Explain"),  # near duplicate (another first word)
        "Explain how vaccines train the immune system, in plain words for a newspaper reader.",
        "Explique comment fonctionne la photosynthèse chez les plantes vertes, avec des détails.",
        "List five practical ways to reduce household electricity use during the winter months.",
    ]
    return [_record(text) for text in texts]


def test_each_step_reports_count_and_ids() -> None:
    pool = _pool()
    eval_set = EvalSet("bench", [_record(pool[5].instruction.lower().replace(",", ""))])
    kept, report = clean_pool(
        pool,
        CleaningConfig(min_instruction_length=3),
        eval_sets=[eval_set],
        embedder=HashingEmbedder(),
        language_filter=LanguageFilter(),
    )
    steps = {step.reason: step for step in report.steps}
    assert list(steps) == ["min_length", "prefix_dup", "near_dup", "contamination", "language"]
    assert [r.id for r in steps["min_length"].removed] == [pool[0].id]
    assert [r.id for r in steps["prefix_dup"].removed] == [pool[2].id]
    assert steps["prefix_dup"].removed[0].detail == {"duplicate_of": pool[1].id}
    assert [r.id for r in steps["near_dup"].removed] == [pool[4].id]
    assert steps["near_dup"].removed[0].detail["duplicate_of"] == pool[3].id
    assert [r.id for r in steps["contamination"].removed] == [pool[5].id]
    assert steps["contamination"].removed[0].detail["eval_set"] == "bench"
    assert [r.id for r in steps["language"].removed] == [pool[6].id]
    assert steps["language"].removed[0].detail["language"] == "fr"
    assert [r.id for r in kept] == [pool[1].id, pool[3].id, pool[7].id]
    summary = report.to_dict()
    assert summary["removed"] == {
        "min_length": 1,
        "prefix_dup": 1,
        "near_dup": 1,
        "contamination": 1,
        "language": 1,
    }
    assert summary["input"] == 8
    assert summary["output"] == 3


def test_top_k_removes_the_k_nearest_of_every_eval_prompt() -> None:
    pool = [
        _record(f"Question {i}: how do {w} work in practice?")
        for i, w in enumerate(
            ["magnets", "rockets", "bridges", "vaccines", "batteries", "compilers", "markets"]
        )
    ]
    evals = [EvalSet("bench", [_record("how do rockets and batteries work")])]
    config = CleaningConfig(
        english_only=False,
        prefix_dedup_length=0,
        minhash=None,
        decontamination=DecontaminationConfig(mode=DecontaminationMode.TOP_K, top_k=2),
    )
    kept, report = clean_pool(pool, config, eval_sets=evals, embedder=HashingEmbedder())
    removed = {r.id for r in report.steps[-1].removed}
    assert removed == {pool[1].id, pool[4].id}
    assert len(kept) == 5


def test_word_containment_forgives_typos_but_not_other_prompts() -> None:
    original = ["Write a C++ program to find the nth Fibonacci number using recursion."]
    assert (
        word_containment(
            original, "Pls write a C++ program to find the nth Fibonaci number using recursion"
        )
        == 1.0
    )
    assert (
        word_containment(
            original, "Write a program to find the nth Fibonacci number using dynamic programming."
        )
        < 0.9
    )
    # A short prompt inside a much longer, different one is not a copy.
    assert word_containment(["Write a riddle"], "Write a riddle " + "about cats " * 20) == 0.0


def test_units_and_prefixes() -> None:
    text = "  How do I build a PC?  "
    assert measure(text, LengthUnit.CHARACTERS) == 20
    assert measure(text, LengthUnit.WORDS) == 6
    assert measure(text, LengthUnit.TOKENS) == 7
    assert prefix("HOW do, I build", 3, LengthUnit.WORDS) == "how do i"


def test_bad_input() -> None:
    with pytest.raises(InvalidArgumentError, match="pool is empty"):
        clean_pool([], CleaningConfig())
    with pytest.raises(InvalidArgumentError) as error:
        clean_pool(_pool(), CleaningConfig(decontamination=DecontaminationConfig(ngram_size=2)))
    assert error.value.where == "decontamination.ngram_size"
    with pytest.raises(InvalidArgumentError, match="needs an embedding model"):
        clean_pool(_pool(), CleaningConfig(), eval_sets=[EvalSet("e", _pool()[:1])])


def test_cli_clean_writes_pool_and_report(tmp_path: Path) -> None:
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _pool()))
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"instruction": _pool()[5].instruction}])
    out, report = tmp_path / "clean.jsonl", tmp_path / "report.json"
    result = CliRunner().invoke(
        data,
        [
            "clean",
            str(pool_file),
            "--out",
            str(out),
            "--report",
            str(report),
            "--decontaminate",
            str(bench),
            "--embedding-model",
            "hash-bow",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["removed"]["contamination"] == 1
    contamination = next(s for s in summary["steps"] if s["reason"] == "contamination")
    assert contamination["removed"][0]["id"] == _pool()[5].id
    assert out.read_text().count("\n") == summary["output"] == 3
    missing = CliRunner().invoke(
        data, ["clean", str(tmp_path / "nope.jsonl"), "--out", str(out), "--report", str(report)]
    )
    assert missing.exit_code == 1
    assert "nope.jsonl: no such file" in missing.output


def test_calibration_puts_the_threshold_between_copies_and_distinct_prompts() -> None:
    from arena_selection.domain.decontamination import calibrate_threshold

    pool = _pool()
    evals = [EvalSet("bench", [_record(text) for text in (LONG, "How do tides work on Earth?")])]
    calibration = calibrate_threshold(pool[1:3] + pool[5:], evals, HashingEmbedder(), seed=1)
    assert calibration.distinct_max < calibration.paraphrase_min
    assert calibration.distinct_max < calibration.threshold < calibration.paraphrase_min
