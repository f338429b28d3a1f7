"""The flywheel's state machine as pure data: which step comes next, and when a run is done.

A run is a sequence of positions (iteration, stage, step). Iteration 0 prepares: split the pool,
build the evaluation set, evaluate and rate the target before any training. Each later
iteration runs, for every stage in order, battle → judge → select → train → register checkpoint
→ load it into inference, then evaluates the newest checkpoint, rates and decides promotion.

The controller persists the set of completed positions; `next_position` is a pure function of the
spec and that set, so a restarted controller resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from enum import Enum

from arena_flywheel.domain.spec import FlywheelSpec, Stage


class Step(Enum):
    SPLIT = "split"
    BUILD_TEST_SET = "build_test_set"
    BATTLE = "battle"
    JUDGE = "judge"
    SELECT = "select"
    TRAIN = "train"
    REGISTER_CHECKPOINT = "register_checkpoint"
    LOAD_CHECKPOINT = "load_checkpoint"
    EVALUATE = "evaluate"
    RATE = "rate"
    PROMOTE = "promote"


STAGE_STEPS = (
    Step.BATTLE,
    Step.JUDGE,
    Step.SELECT,
    Step.TRAIN,
    Step.REGISTER_CHECKPOINT,
    Step.LOAD_CHECKPOINT,
)
PREPARE_STEPS = (Step.SPLIT, Step.BUILD_TEST_SET, Step.EVALUATE, Step.RATE)
CLOSING_STEPS = (Step.EVALUATE, Step.RATE, Step.PROMOTE)


@dataclass(frozen=True, order=True)
class Position:
    iteration: int
    stage: Stage | None
    step: Step

    def key(self) -> str:
        """A stable id for this position, used in idempotency keys and KV keys."""
        return f"{self.iteration}.{self.stage or 'all'}.{self.step.value}"


def iteration_positions(spec: FlywheelSpec, iteration: int) -> Iterator[Position]:
    if iteration == 0:
        for step in PREPARE_STEPS:
            yield Position(0, None, step)
        return
    if from_new_batch(spec, iteration):
        yield Position(iteration, None, Step.SPLIT)  # the batch that started this iteration
    for stage in spec.stages:
        for step in STAGE_STEPS:
            yield Position(iteration, stage, step)
    for step in CLOSING_STEPS:
        yield Position(iteration, None, step)


def initial_iterations(spec: FlywheelSpec) -> int:
    """Iterations the first pool feeds: all of a finite run; in continuous mode, as many as the
    first pool's slices D1.. allow."""
    if not spec.continuous:
        return int(spec.iterations)
    return max(0, (spec.pool.slices - 1) // len(spec.stages))


def from_new_batch(spec: FlywheelSpec, iteration: int) -> bool:
    """Continuous mode: iterations past the first pool each battle on a newly published batch."""
    return spec.continuous and iteration > initial_iterations(spec)


def planned_iterations(spec: FlywheelSpec, new_batches: int = 0) -> int:
    """Iterations after the preparation: in continuous mode one more per new batch of data."""
    return initial_iterations(spec) + (new_batches if spec.continuous else 0)


def next_position(spec: FlywheelSpec, completed: Set[str], new_batches: int = 0) -> Position | None:
    """The first position not yet completed, or None when every planned iteration is done."""
    for iteration in range(planned_iterations(spec, new_batches) + 1):
        for position in iteration_positions(spec, iteration):
            if position.key() not in completed:
                return position
    return None


def progress(spec: FlywheelSpec, completed: Set[str]) -> tuple[int, int]:
    """(done, total) positions of a finite run."""
    total = [
        position.key()
        for iteration in range(planned_iterations(spec) + 1)
        for position in iteration_positions(spec, iteration)
    ]
    return sum(1 for key in total if key in completed), len(total)


def candidate_at(
    spec: FlywheelSpec, position: Position, produced: Mapping[str, str], incumbent: str
) -> str:
    """The target model at a position: the model the previous stage of the same iteration
    produced (SFT → DPO → RL each build on the last), else the incumbent.

    `produced` maps the keys of completed load-checkpoint positions to the model they loaded.
    At the closing steps it is the iteration's newest model, the candidate for promotion.
    """
    stages = (
        spec.stages if position.stage is None else spec.stages[: spec.stages.index(position.stage)]
    )
    for stage in reversed(stages):
        loaded = produced.get(Position(position.iteration, stage, Step.LOAD_CHECKPOINT).key())
        if loaded:
            return loaded
    return incumbent


def trained_model_name(spec: FlywheelSpec, run_id: str, iteration: int, stage: Stage) -> str:
    """The name a stage's checkpoint is served under, e.g. "target-3f9a-i1-dpo": the run id
    keeps two runs of one spec from replacing each other's models."""
    return f"{spec.target.model}-{run_id}-i{iteration}-{stage}"
