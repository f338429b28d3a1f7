"""Pool ingestion: every supported format into one canonical record with a stable id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_core.errors import InvalidArgumentError
from arena_selection.domain.ingest import (
    IngestSource,
    SourceFormat,
    detect_format,
    ingest,
    parse_format,
    read_source,
)
from arena_selection.domain.records import Message, read_jsonl, record_id
from tests.unit.selection.support import (
    ALPACA_EVAL,
    ARENA_HARD_V01,
    ARENA_HARD_V20,
    MT_BENCH,
    VICUNA,
    write_jsonl,
)


def test_real_question_files_of_every_benchmark_format() -> None:
    mt_bench, fmt = read_source(IngestSource(MT_BENCH))
    assert fmt == SourceFormat.FASTCHAT_QUESTIONS
    assert len(mt_bench) == 80
    # Multi-turn questions stay whole: both turns, in order, as user turns.
    assert all([m.role for m in r.messages] == ["user", "user"] for r in mt_bench)
    assert {r.category for r in mt_bench} == {
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    }
    assert mt_bench[0].meta["question_id"] == 81

    v01, fmt = read_source(IngestSource(ARENA_HARD_V01))
    assert fmt == SourceFormat.ARENA_HARD_QUESTIONS
    assert len(v01) == 500
    assert v01[0].source == "arena-hard-v0.1"
    assert v01[0].category == "ABC Sequence Puzzles & Groups"  # the topic, not the benchmark name

    v20, _ = read_source(IngestSource(ARENA_HARD_V20))
    # U+2028 sits inside prompts: splitting on it would break records apart.
    assert len(v20) == 750
    assert any("\u2028" in r.instruction for r in v20)

    alpaca, fmt = read_source(IngestSource(ALPACA_EVAL))
    assert fmt == SourceFormat.ALPACA_EVAL
    assert len(alpaca) == 805
    assert [m.role for m in alpaca[0].messages] == ["user", "assistant"]
    assert alpaca[0].meta["generator"] == "alpaca-7b"

    vicuna, fmt = read_source(IngestSource(VICUNA))
    assert fmt == SourceFormat.FASTCHAT_QUESTIONS
    assert len(vicuna) == 80


def test_the_same_conversation_gets_the_same_id_in_every_format(tmp_path: Path) -> None:
    question, answer = "Name three primes.", "2, 3 and 5."
    files = {
        "sharegpt": {
            "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer},
            ]
        },
        "alpaca": {"instruction": question, "input": "", "output": answer},
        "messages": {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        },
        "alpaca_eval": {"instruction": question, "output": answer, "generator": "m"},
    }
    ids = set()
    for name, row in files.items():
        records, fmt = read_source(IngestSource(write_jsonl(tmp_path / f"{name}.jsonl", [row])))
        assert fmt.value == name
        ids.add(records[0].id)
    assert ids == {record_id([Message("user", question), Message("assistant", answer)])}


def test_parquet_and_datasets_folders(tmp_path: Path) -> None:
    import datasets

    rows = [
        {"instruction": f"Explain topic {i} in detail.", "input": "", "output": "..."}
        for i in range(5)
    ]
    jsonl, _ = read_source(IngestSource(write_jsonl(tmp_path / "a.jsonl", rows)))
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "a.parquet"))
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "saved"))
    parquet, _ = read_source(IngestSource(tmp_path / "a.parquet"))
    saved, _ = read_source(IngestSource(tmp_path / "saved"))
    assert [r.id for r in jsonl] == [r.id for r in parquet] == [r.id for r in saved]


def test_canonical_records_round_trip_and_ids_are_checked(tmp_path: Path) -> None:
    records, _ = read_source(IngestSource(VICUNA))
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    again, fmt = read_source(IngestSource(path))
    assert fmt == SourceFormat.CANONICAL
    assert again == records
    tampered = records[0].to_dict() | {"id": "0" * 64}
    with pytest.raises(InvalidArgumentError, match="not the content hash"):
        read_jsonl(json.dumps(tampered).encode(), "pool.jsonl")


def test_a_malformed_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a"}\n{"instruction": "b"}\n{"instruction": \n')
    with pytest.raises(InvalidArgumentError) as error:
        read_source(IngestSource(path))
    assert error.value.where == f"{path}:3"
    bad_field = write_jsonl(tmp_path / "field.jsonl", [{"instruction": "ok"}, {"instruction": 7}])
    with pytest.raises(InvalidArgumentError, match=r"field.jsonl:2: `instruction`"):
        read_source(IngestSource(bad_field))


def test_unknown_formats_are_rejected_clearly(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown format 'xml'; expected one of auto"):
        parse_format("xml")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "?", "answer": "!"}])
    with pytest.raises(InvalidArgumentError, match=r"odd.jsonl:1: unknown format \(keys: answer"):
        read_source(IngestSource(odd))
    assert detect_format({"conversations": []}, "x") == SourceFormat.SHAREGPT


def test_ingest_is_all_or_nothing(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"instruction": "Write a poem about the sea."}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine"}\nnot json\n')
    out = tmp_path / "pool.jsonl"
    result = CliRunner().invoke(data, ["ingest", str(good), str(bad), "--out", str(out)])
    assert result.exit_code == 1
    assert f"{bad}:2: malformed JSON line" in result.output
    assert not out.exists()
    with pytest.raises(InvalidArgumentError, match="no input files"):
        ingest([])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InvalidArgumentError, match="holds no records"):
        ingest([IngestSource(empty)])


def test_cli_ingest_writes_pool_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "pool.jsonl"
    result = CliRunner().invoke(data, ["ingest", str(MT_BENCH), str(VICUNA), "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out.read_bytes(), str(out))
    assert len(records) == 160
    manifest = json.loads((tmp_path / "pool.jsonl.manifest.json").read_text())
    assert manifest["kind"] == "pool"
    assert manifest["record_count"] == 160
    assert len(manifest["dataset_id"]) == 64
