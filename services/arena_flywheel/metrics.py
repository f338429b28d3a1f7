"""Prometheus metrics of the flywheel controller (the dashboards and alerts use these names).

`arena_flywheel_stage` is 1 for the stage a run is in now and 0 for the others; the stage label is
the step with its training stage ("sft.battle", "evaluate"), or one of the idle states "waiting",
"done", "failed" (the alert on a stuck run skips those). Series are per run, bounded by the runs
this controller has driven since it started.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

ITERATION = Gauge("arena_flywheel_iteration", "Iteration a run is in (0 = baseline).", ["run"])
STAGE = Gauge(
    "arena_flywheel_stage", "1 for the stage a run is in now, 0 otherwise.", ["run", "stage"]
)
BATTLES = Counter(
    "arena_flywheel_battles", "Judged games (one per position order) a run has collected.", ["run"]
)
LAST_PROGRESS = Gauge(
    "arena_flywheel_last_progress_timestamp_seconds",
    "When a run last moved forward (Unix time).",
    ["run"],
)

_current: dict[str, str] = {}


def enter_stage(run_id: str, stage: str, iteration: int | None = None) -> None:
    previous = _current.get(run_id)
    if previous is not None and previous != stage:
        STAGE.labels(run_id, previous).set(0)
    _current[run_id] = stage
    STAGE.labels(run_id, stage).set(1)
    if iteration is not None:
        ITERATION.labels(run_id).set(iteration)
    progressed(run_id)


def progressed(run_id: str) -> None:
    LAST_PROGRESS.labels(run_id).set(time.time())


def battles_judged(run_id: str, count: int) -> None:
    if count > 0:
        BATTLES.labels(run_id).inc(count)
