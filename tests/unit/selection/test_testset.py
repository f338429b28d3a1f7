"""WizardArena test-set construction with a fast lexical embedder and a deterministic rater."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_core.errors import InvalidArgumentError
from arena_selection.domain.embeddings import HashingEmbedder
from arena_selection.domain.records import Message, Record, make_record
from arena_selection.domain.testset import TestSetConfig, build_test_set, kmeans

TOPICS = ["python code", "tax law", "baking bread", "chess openings", "marathon training"]
POOL = [
    make_record(
        [Message("user", f"question {i} about {TOPICS[i % 5]}: detail {i * 7 % 11}")]
        + (
            [Message("assistant", "earlier answer"), Message("user", "and a follow-up")]
            if i % 4 == 0
            else []
        ),
        "test",
        category=TOPICS[i % 5],
    )
    for i in range(100)
]


def rater(records: Sequence[Record]) -> list[float]:
    """Deterministic difficulty: a digest of the id, 0..10 in steps of 0.5."""
    return [int(record.id[:6], 16) % 21 / 2 for record in records]


def test_quotas_ordering_and_carried_labels() -> None:
    config = TestSetConfig(
        num_clusters=5, diverse_per_cluster=2, hard_candidates_per_cluster=6, hard_size=8, seed=3
    )
    result = build_test_set(POOL, HashingEmbedder(), config, rater)
    clusters = Counter(record.meta["wizardarena"]["cluster"] for record in result.diverse)
    sizes = np.bincount(result.labels, minlength=5)
    assert all(clusters[c] == min(2, sizes[c]) for c in range(5))
    assert len(result.hard) == 8
    difficulties = [record.meta["wizardarena"]["difficulty"] for record in result.hard]
    assert difficulties == sorted(difficulties, reverse=True)
    # The hardest candidates were kept: nothing left out is harder than the easiest kept.
    candidates = result.difficulty
    assert len(candidates) <= 5 * 6
    kept = {record.id for record in result.hard}
    assert max(v for k, v in candidates.items() if k not in kept) <= min(difficulties)
    assert not kept & {record.id for record in result.diverse}
    assert result.mix == result.diverse + result.hard
    by_id = {record.id: record for record in POOL}
    for record in result.mix:
        assert record.category == by_id[record.id].category
        assert record.messages == by_id[record.id].messages  # multi-turn kept whole


def test_same_seed_same_sets() -> None:
    config = TestSetConfig(
        num_clusters=4, diverse_per_cluster=2, hard_candidates_per_cluster=5, hard_size=6, seed=11
    )
    first = build_test_set(POOL, HashingEmbedder(), config, rater)
    again = build_test_set(list(POOL), HashingEmbedder(), config, rater)
    other = build_test_set(POOL, HashingEmbedder(), TestSetConfig(4, 2, 5, 6, seed=12), rater)
    assert [r.id for r in first.mix] == [r.id for r in again.mix]
    assert [r.id for r in first.mix] != [r.id for r in other.mix]


def test_kmeans_separates_obvious_groups() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate(
        [rng.normal(center, 0.1, size=(20, 2)) for center in (0, 5, 10)]
    ).astype(np.float32)
    labels, _ = kmeans(points, 3, seed=0)
    assert sorted(Counter(labels.tolist()).values()) == [20, 20, 20]


def test_bad_input() -> None:
    with pytest.raises(InvalidArgumentError, match="pool is empty"):
        build_test_set([], HashingEmbedder(), TestSetConfig(), rater)
    with pytest.raises(InvalidArgumentError) as error:
        build_test_set(POOL, HashingEmbedder(), TestSetConfig(num_clusters=500), rater)
    assert error.value.where == "num_clusters"
    with pytest.raises(InvalidArgumentError, match="needs difficulty ratings"):
        build_test_set(POOL, HashingEmbedder(), TestSetConfig(num_clusters=3), None)
    with pytest.raises(InvalidArgumentError, match=r"outside \[0, 10\]"):
        build_test_set(
            POOL, HashingEmbedder(), TestSetConfig(num_clusters=3), lambda rs: [11.0] * len(rs)
        )


def test_cli_testset_and_describe(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(record.to_dict()) + "\n" for record in POOL))
    scores = tmp_path / "difficulty.jsonl"
    scores.write_text(
        "".join(
            json.dumps({"id": r.id, "difficulty": s}) + "\n"
            for r, s in zip(POOL, rater(POOL), strict=True)
        )
    )
    runner = CliRunner()
    result = runner.invoke(
        data,
        ["testset", str(pool), "--out-dir", str(tmp_path / "arena"), "--clusters", "5",
         "--hard-candidates", "4", "--hard-size", "6", "--seed", "2",
         "--difficulty-scores", str(scores), "--embedding-model", "hash-bow"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mix = json.loads((tmp_path / "arena/mix/manifest.json").read_text())
    hard = json.loads((tmp_path / "arena/hard/manifest.json").read_text())
    assert hard["record_count"] == 6
    assert mix["record_count"] == 10 + 6
    described = runner.invoke(data, ["describe", str(tmp_path / "arena/mix"), "--json"])
    assert described.exit_code == 0
    assert json.loads(described.output)["dataset_id"] == mix["dataset_id"]
    no_rater = runner.invoke(
        data,
        ["testset", str(pool), "--out-dir", str(tmp_path / "x"), "--clusters", "5",
         "--embedding-model", "hash-bow"],
    )  # fmt: skip
    assert no_rater.exit_code == 1
    assert "difficulty_judge: Offline-Hard needs difficulty ratings" in no_rater.output
    missing = runner.invoke(data, ["describe", str(tmp_path / "nothing")])
    assert missing.exit_code == 1
    assert "no such file or folder" in missing.output
