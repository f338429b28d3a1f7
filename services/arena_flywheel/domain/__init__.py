"""Flywheel domain: the run spec, the iteration state machine and promotion (no transport)."""

from arena_flywheel.domain.plan import Position, Step, next_position, planned_iterations
from arena_flywheel.domain.promotion import Decision, Standing, decide
from arena_flywheel.domain.spec import FlywheelSpec, SpecError, SpecViolation, parse_spec

__all__ = [
    "Decision",
    "FlywheelSpec",
    "Position",
    "SpecError",
    "SpecViolation",
    "Standing",
    "Step",
    "decide",
    "next_position",
    "parse_spec",
    "planned_iterations",
]
