"""How a completed step changes a run's record: results, budget, incumbent, iterations."""

from __future__ import annotations

from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena_flywheel.controller import _complete, _exhausted_budget, _set_limits
from arena_flywheel.domain.plan import Position, Step
from arena_flywheel.domain.spec import parse_spec

SPEC = parse_spec(
    """
name: budget
models:
  target: {backend: transformers, path: /m/t}
  a: {backend: replay, path: /r/a.json}
target: {model: target, base: /m/t}
opponents: [a]
judge: {name: reference, protocol: reference}
pool: {dataset: /d/pool.jsonl, slices: 4}
evaluation: {test_set: /d/test.jsonl}
training: {gpus_per_node: 8, num_nodes: 2}
budgets: {battles: 100, judge_tokens: 5000, gpu_hours: 4}
"""
)


def _record() -> pb.RunRecord:
    record = pb.RunRecord(run=pb.FlywheelRun(run_id="r", incumbent_model="target"))
    _set_limits(record.run.budget, SPEC)
    return record


def test_judged_games_count_as_battles_and_tokens_and_training_as_gpu_hours() -> None:
    judged = pb.StepResult(battle_count=120)
    judged.summary.update({"judgments": 120, "judge_tokens": 3000})
    record = _complete(_record(), SPEC, Position(1, "sft", Step.JUDGE), judged)
    assert record.run.budget.battles == 60  # two games per battle
    assert record.run.budget.judge_tokens == 3000
    assert record.results["1.sft.judge"].battle_count == 120
    assert _exhausted_budget(record.run.budget) == ""

    trained = pb.StepResult(model="target-r-i1-sft", checkpoint_id="c1")
    trained.summary.update({"seconds": 900.0})
    record = _complete(record, SPEC, Position(1, "sft", Step.TRAIN), trained)
    assert record.run.budget.gpu_hours == 4.0  # 15 minutes on 16 GPUs
    assert _exhausted_budget(record.run.budget) == "4.00 GPU hours of 4.0"


def test_promotion_moves_the_incumbent_and_the_last_step_closes_the_iteration() -> None:
    kept = pb.StepResult(
        decision=pb.PromotionDecision(candidate_model="target-r-i1-rl", promoted=False)
    )
    record = _complete(_record(), SPEC, Position(1, None, Step.PROMOTE), kept)
    assert record.run.incumbent_model == "target"
    assert record.run.iterations_completed == 1

    promoted = pb.StepResult(
        decision=pb.PromotionDecision(candidate_model="target-r-i1-rl", promoted=True)
    )
    record = _complete(_record(), SPEC, Position(1, None, Step.PROMOTE), promoted)
    assert record.run.incumbent_model == "target-r-i1-rl"


def test_the_initial_split_remembers_the_pool() -> None:
    split = pb.StepResult(input_dataset_id="pool-1")
    record = _complete(_record(), SPEC, Position(0, None, Step.SPLIT), split)
    assert record.pool_dataset_id == "pool-1"
    assert record.run.iterations_completed == 0
