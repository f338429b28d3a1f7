from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from arena_flywheel.domain import SpecError, next_position, parse_spec, planned_iterations
from arena_flywheel.domain.plan import Step, iteration_positions, progress
from arena_flywheel.domain.promotion import Standing, decide
from arena_flywheel.domain.spec import PromotionDecl

VALID: dict[str, Any] = {
    "name": "demo",
    "models": {
        "target": {"backend": "transformers", "path": "/models/target"},
        "strong": {"backend": "transformers", "path": "/models/strong"},
        "hosted": {"backend": "openai", "uri": "https://api.example.com/v1"},
    },
    "target": {"model": "target", "base": "/models/target"},
    "opponents": ["strong", "hosted"],
    "judge": {"name": "reference", "protocol": "reference"},
    "pool": {"dataset": "pool-v1", "slices": 7},
    "stages": ["sft", "dpo", "rl"],
    "thresholds": {"sft": 2.0, "per_iteration": {2: {"sft": 1.0}}},
    "evaluation": {
        "test_set": "build",
        "source": "/data/held-out.jsonl",
        "anchor": {"model": "strong", "rating": 1100},
    },
    "iterations": 2,
}


def _spec(**changes: Any) -> str:
    raw = copy.deepcopy(VALID)
    raw.update(changes)
    return yaml.safe_dump(raw)


def _fields(text: str) -> dict[str, str]:
    with pytest.raises(SpecError) as raised:
        parse_spec(text, "spec.yaml")
    return {violation.field: violation.message for violation in raised.value.violations}


def test_valid_spec_slices_consecutively_after_d0() -> None:
    spec = parse_spec(_spec())
    assert [spec.slice_for(1, stage) for stage in spec.stages] == [1, 2, 3]
    assert [spec.slice_for(2, stage) for stage in spec.stages] == [4, 5, 6]
    assert spec.threshold(1, "sft") == 2.0
    assert spec.threshold(2, "sft") == 1.0
    assert spec.threshold(2, "dpo") == 1.0


def test_unknown_model_is_named_by_field() -> None:
    problems = _fields(_spec(opponents=["strong", "gpt-9"]))
    assert problems == {"opponents[1]": "unknown model 'gpt-9'; declare it under `models`"}


def test_missing_judge_and_k_out_of_range_are_reported_together() -> None:
    raw = copy.deepcopy(VALID)
    del raw["judge"]
    raw["thresholds"] = {"dpo": 12}
    problems = _fields(yaml.safe_dump(raw))
    assert problems["judge"] == "Field required"
    assert "less than or equal to 9" in problems["thresholds.dpo"]


def test_llm_judge_needs_a_model() -> None:
    problems = _fields(_spec(judge={"name": "paper-judge", "protocol": "paper"}))
    assert problems == {"judge": "the paper judge needs `model`"}


def test_too_few_slices_for_the_iterations() -> None:
    problems = _fields(_spec(pool={"dataset": "pool-v1", "slices": 5}))
    assert problems == {
        "pool.slices": "2 iteration(s) of 3 stage(s) need D0..D6 (7 slices, D0 for the "
        "target's initial data), got 5"
    }


def test_overlapping_explicit_slices_are_rejected() -> None:
    plan = {1: {"sft": 1, "dpo": 2, "rl": 3}, 2: {"sft": 4, "dpo": 2, "rl": 6}}
    problems = _fields(_spec(plan=plan))
    assert problems == {
        "plan.2.dpo": "slice D2 is already used by iteration 1 dpo; slices must not overlap"
    }


def test_unknown_field_and_bad_yaml_are_named() -> None:
    assert "Extra inputs are not permitted" in _fields(_spec(stagez=["sft"]))["stagez"]
    assert next(iter(_fields("name: [unclosed\n"))).startswith("line ")


def test_state_machine_resumes_from_completed_positions() -> None:
    spec = parse_spec(_spec())
    completed: set[str] = set()
    order = []
    while (position := next_position(spec, completed)) is not None:
        order.append(position)
        completed.add(position.key())

    assert order[0].step is Step.SPLIT
    assert [p.step for p in order[4:10]] == [
        Step.BATTLE,
        Step.JUDGE,
        Step.SELECT,
        Step.TRAIN,
        Step.REGISTER_CHECKPOINT,
        Step.LOAD_CHECKPOINT,
    ]
    assert order[-1].step is Step.PROMOTE
    assert order[-1].iteration == 2
    assert len(order) == 4 + 2 * (3 * 6 + 3)
    assert progress(spec, completed) == (len(order), len(order))
    # Forget one step in the middle: that one is what comes next.
    middle = list(iteration_positions(spec, 1))[7]
    assert next_position(spec, completed - {middle.key()}) == middle


def test_continuous_mode_runs_the_first_pool_then_one_iteration_per_new_batch() -> None:
    spec = parse_spec(_spec(iterations="continuous"))
    first = (spec.pool.slices - 1) // len(spec.stages)
    assert planned_iterations(spec) == first
    assert planned_iterations(spec, new_batches=2) == first + 2


def test_promotion_needs_the_lower_bound_above_the_incumbent() -> None:
    rule = PromotionDecl(rule="ci_lower_above_incumbent", min_battles=100)
    incumbent = Standing("target-it0", 1000.0, 980.0, 1020.0, 500)

    clear = decide(rule, Standing("target-it1", 1060.0, 1031.5, 1090.0, 500), incumbent)
    overlap = decide(rule, Standing("target-it1", 1030.0, 995.0, 1065.0, 500), incumbent)
    too_few = decide(rule, Standing("target-it1", 1200.0, 1150.0, 1250.0, 50), incumbent)

    assert clear.promoted
    assert clear.reason == "target-it1: lower bound 1031.5 above incumbent rating 1000.0"
    assert not overlap.promoted
    assert not too_few.promoted
    assert "fewer than the 100" in too_few.reason
