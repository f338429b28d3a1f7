"""Prometheus metrics of the training service (the dashboards use these exact names).

Per-run series (`run` label) are bounded by the runs the service has seen since it started;
tokens/s and ETA series are removed when a run ends, the loss is kept as its final value.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

TRAINING_LOSS = Gauge(
    "arena_training_loss", "Latest training loss reported by a run.", ["run", "recipe"]
)
TRAINING_TOKENS_PER_SECOND = Gauge(
    "arena_training_tokens_per_second", "Training throughput of a running run.", ["run"]
)
TRAINING_ETA_SECONDS = Gauge(
    "arena_training_eta_seconds", "Estimated time until a running run finishes.", ["run"]
)
TRAINING_RUNS = Counter(
    "arena_training_runs",
    "Training runs that reached a terminal state, by recipe and status.",
    ["recipe", "status"],
)
TRAINING_RUNS_ACTIVE = Gauge(
    "arena_training_runs_active", "Runs executing on this replica now.", ["recipe"]
)


def observe_progress(
    run_id: str,
    recipe: str,
    *,
    loss: float | None,
    tokens_per_second: float | None,
    eta_seconds: float | None,
) -> None:
    if loss is not None:
        TRAINING_LOSS.labels(run_id, recipe).set(loss)
    if tokens_per_second is not None:
        TRAINING_TOKENS_PER_SECOND.labels(run_id).set(tokens_per_second)
    if eta_seconds is not None:
        TRAINING_ETA_SECONDS.labels(run_id).set(eta_seconds)


def observe_finished(run_id: str, recipe: str, status: str) -> None:
    TRAINING_RUNS.labels(recipe, status).inc()
    for gauge in (TRAINING_TOKENS_PER_SECOND, TRAINING_ETA_SECONDS):
        with contextlib.suppress(KeyError):
            gauge.remove(run_id)
