"""Pairings, ids and the model lineage across the stages of an iteration."""

from __future__ import annotations

from arena_flywheel.domain.battles import (
    Pairing,
    battle_id,
    chunks,
    evaluation_pairs,
    training_pairs,
    work_id,
)
from arena_flywheel.domain.plan import Position, Step, candidate_at, trained_model_name
from arena_flywheel.domain.spec import parse_spec

SPEC_TEXT = """
name: lineage
models:
  target: {backend: transformers, path: /m/t}
  a: {backend: replay, path: /r/a.json}
  b: {backend: replay, path: /r/b.json}
target: {model: target, base: /m/t}
opponents: [a, b]
judge: {name: reference, protocol: reference}
pool: {dataset: /d/pool.jsonl, slices: 7}
evaluation: {test_set: /d/test.jsonl}
iterations: 2
"""
SPEC = parse_spec(SPEC_TEXT)


def test_training_rounds_pit_the_target_against_every_opponent() -> None:
    assert training_pairs("t", ["a", "b"]) == [Pairing("t", "a"), Pairing("t", "b")]


def test_iteration_zero_plays_every_pair_later_ones_only_the_candidate() -> None:
    everyone = evaluation_pairs("t", ["a", "b", "a"], everyone_plays_everyone=True)
    assert everyone == [Pairing("t", "a"), Pairing("t", "b"), Pairing("a", "b")]
    assert evaluation_pairs("t2", ["a", "b"], everyone_plays_everyone=False) == [
        Pairing("t2", "a"),
        Pairing("t2", "b"),
    ]


def test_ids_are_stable_and_distinct() -> None:
    judge = Position(1, "sft", Step.JUDGE)
    first = battle_id("run", judge, "p1", Pairing("t", "a"))
    assert first == battle_id("run", judge, "p1", Pairing("t", "a"))
    assert first != battle_id("run", judge, "p2", Pairing("t", "a"))
    assert first != battle_id("other", judge, "p1", Pairing("t", "a"))
    train = work_id("r1", Position(2, "dpo", Step.REGISTER_CHECKPOINT), "x")
    assert train == "fw-r1-2-dpo-register-checkpoint-x"
    assert work_id("r1", Position(0, None, Step.SPLIT)) == "fw-r1-0-all-split"


def test_each_stage_builds_on_the_model_the_previous_stage_loaded() -> None:
    loaded = {
        Position(1, "sft", Step.LOAD_CHECKPOINT).key(): "t-i1-sft",
        Position(1, "dpo", Step.LOAD_CHECKPOINT).key(): "t-i1-dpo",
    }
    assert candidate_at(SPEC, Position(1, "sft", Step.BATTLE), loaded, "t") == "t"
    assert candidate_at(SPEC, Position(1, "dpo", Step.BATTLE), loaded, "t") == "t-i1-sft"
    assert candidate_at(SPEC, Position(1, "rl", Step.BATTLE), loaded, "t") == "t-i1-dpo"
    # The closing evaluation rates the iteration's newest model.
    assert candidate_at(SPEC, Position(1, None, Step.EVALUATE), loaded, "t") == "t-i1-dpo"
    assert candidate_at(SPEC, Position(2, "sft", Step.BATTLE), loaded, "t-i1-dpo") == "t-i1-dpo"
    assert trained_model_name(SPEC, "r9", 2, "rl") == "target-r9-i2-rl"


def test_chunks_cover_everything_in_order() -> None:
    assert [list(chunk) for chunk in chunks([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]


def test_continuous_runs_add_an_iteration_per_new_batch_each_split_first() -> None:
    spec = parse_spec(
        SPEC_TEXT.replace("iterations: 2", "iterations: continuous").replace(
            "slices: 7", "slices: 4"
        )
    )
    from arena_flywheel.domain.plan import (
        from_new_batch,
        iteration_positions,
        next_position,
        planned_iterations,
    )

    assert planned_iterations(spec) == 1
    assert planned_iterations(spec, new_batches=2) == 3
    assert not from_new_batch(spec, 1)
    assert from_new_batch(spec, 2)
    second = list(iteration_positions(spec, 2))
    assert second[0] == Position(2, None, Step.SPLIT)
    assert second[1] == Position(2, "sft", Step.BATTLE)
    done = {p.key() for i in range(2) for p in iteration_positions(spec, i)}
    assert next_position(spec, done) is None  # waits for data
    assert next_position(spec, done, new_batches=1) == Position(2, None, Step.SPLIT)
