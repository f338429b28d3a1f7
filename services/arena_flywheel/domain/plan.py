"""The flywheel's state machine as pure data: which step comes next, and when a run is done.

A run is a sequence of positions (iteration, stage, step). Iteration 0 prepares: split the pool,
build the evaluation set, evaluate and rate the target before any training. Each later
iteration runs, for every stage in order, battle → judge → select → train → register checkpoint
→ load it into inference, then evaluates the newest checkpoint, rates and decides promotion.

The controller persists the set of completed positions; `next_position` is a pure function of the
spec and that set, so a restarted controller resumes exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
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
    for stage in spec.stages:
        for step in STAGE_STEPS:
            yield Position(iteration, stage, step)
    for step in CLOSING_STEPS:
        yield Position(iteration, None, step)


def planned_iterations(spec: FlywheelSpec, available_slices: int | None = None) -> int:
    """Iterations after the preparation; in continuous mode as many as the slices allow."""
    if not spec.continuous:
        return int(spec.iterations)
    slices = spec.pool.slices if available_slices is None else available_slices
    return max(0, (slices - 1) // len(spec.stages))


def next_position(
    spec: FlywheelSpec, completed: Set[str], available_slices: int | None = None
) -> Position | None:
    """The first position not yet completed, or None when every planned iteration is done."""
    for iteration in range(planned_iterations(spec, available_slices) + 1):
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
