"""Done when: on a pool built from the shared instructions (AlpacaEval, Arena-Hard v2.0, Vicuna)
with planted near-copies of MT-Bench and Arena-Hard v0.1 prompts, decontamination against those
two sets removes every planted copy and keeps everything else — and the report says so.

The pool really holds two MT-Bench prompts verbatim (Vicuna's questions, also in AlpacaEval's
vicuna subset): they are contamination too, found here independently by exact normalised match.
Runs the real all-MiniLM-L6-v2 through `arena data clean` (texts cut at 64 tokens for speed).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_selection.domain.ingest import IngestSource, read_source
from arena_selection.domain.records import Message, Record, make_record, normalize_text
from tests.unit.selection.support import (
    ALPACA_EVAL,
    ARENA_HARD_V01,
    ARENA_HARD_V20,
    MT_BENCH,
    VICUNA,
)


def near_copy(text: str, rng: random.Random) -> str:
    """A light edit that keeps the prompt what it is."""
    words = text.split()
    edit = rng.randrange(6)
    if edit == 0:
        return text.upper()
    if edit == 1:
        return "Hey, quick question. " + text
    if edit == 2:
        return text.rstrip() + " Please answer in detail, thanks!"
    if edit == 3 and len(words) > 3:  # a typo in the longest word
        longest = max(range(len(words)), key=lambda i: len(words[i]))
        word = words[longest]
        words[longest] = (
            word[:1] + word[2:3] + word[1:2] + word[3:] if len(word) > 3 else word + "s"
        )
        return " ".join(words)
    if edit == 4:
        return " ".join(words)  # re-spaced: newlines and indentation collapsed
    return text.replace(".", "!").replace(",", " ,")


def build_pool(rng: random.Random) -> tuple[list[Record], set[str], list[Record], list[Record]]:
    pool = []
    for path, take in ((VICUNA, 80), (ALPACA_EVAL, 250), (ARENA_HARD_V20, 120)):
        records, _ = read_source(IngestSource(path))
        pool += sorted(rng.sample(records, take), key=lambda r: r.id)
    mt_bench, _ = read_source(IngestSource(MT_BENCH))
    arena_hard, _ = read_source(IngestSource(ARENA_HARD_V01))
    planted = [
        make_record([Message("user", near_copy(record.user_turns[0], rng))], "planted")
        for record in rng.sample(mt_bench, 20) + rng.sample(arena_hard, 20)
    ]
    mixed = pool + planted
    rng.shuffle(mixed)
    return mixed, {record.id for record in planted}, mt_bench, arena_hard


def test_decontamination_removes_every_planted_copy_and_keeps_the_rest(tmp_path: Path) -> None:
    rng = random.Random(2024)
    pool, planted, mt_bench, arena_hard = build_pool(rng)
    eval_texts = {normalize_text(turn) for r in mt_bench + arena_hard for turn in r.user_turns}
    verbatim = {
        r.id for r in pool if r.id not in planted and normalize_text(r.instruction) in eval_texts
    }

    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps(record.to_dict()) + "\n" for record in pool))
    report_file, out = tmp_path / "report.json", tmp_path / "clean.jsonl"
    result = CliRunner().invoke(
        data,
        [
            "clean",
            str(pool_file),
            "--out",
            str(out),
            "--report",
            str(report_file),
            "--decontaminate",
            str(MT_BENCH),
            "--decontaminate",
            str(ARENA_HARD_V01),
            "--max-seq-length",
            "64",
            # Only decontamination here, so "everything else" is every other pool record.
            "--min-length",
            "0",
            "--prefix-length",
            "0",
            "--no-minhash",
            "--keep-non-english",
        ],
    )
    assert result.exit_code == 0, result.output

    report = json.loads(report_file.read_text())
    step = next(step for step in report["steps"] if step["reason"] == "contamination")
    removed = {entry["id"] for entry in step["removed"]}
    assert planted <= removed, f"missed planted copies: {planted - removed}"
    assert removed == planted | verbatim
    assert len(verbatim) >= 2  # Vicuna's two MT-Bench questions
    assert report["removed"]["contamination"] == step["removed_count"] == len(planted | verbatim)
    assert report["output"] == len(pool) - len(removed)
    assert step["settings"]["eval_sets"] == {"mt_bench": 80, "arena-hard-v0.1": 500}
    kept = {json.loads(line)["id"] for line in out.read_text().split("\n") if line}
    assert kept == {record.id for record in pool} - removed
    print(
        f"pool {len(pool)}: planted {len(planted)}, verbatim {len(verbatim)}, removed "
        f"{len(removed)} by rule {sorted({e['rule'] for e in step['removed']})}"
    )
