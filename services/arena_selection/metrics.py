"""Prometheus metrics of the selection service (labels are bounded: stage, model label, job
kind, state, removal reason)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EXAMPLES_SELECTED = Counter(
    "arena_selection_examples_selected_total",
    "Training examples selected from judged rounds, by stage and the model whose response was "
    "chosen (the paper's per-model share).",
    ["stage", "opponent"],
)
JOBS_FINISHED = Counter(
    "arena_selection_jobs_total", "Selection jobs that reached a terminal state.", ["kind", "state"]
)
JOBS_RUNNING = Gauge("arena_selection_jobs_running", "Selection jobs running now.", ["kind"])
JOB_SECONDS = Histogram(
    "arena_selection_job_duration_seconds",
    "Wall time of a selection job from start to its terminal state.",
    ["kind"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
)
RECORDS_REMOVED = Counter(
    "arena_selection_records_removed_total",
    "Pool records removed by cleaning, by rule.",
    ["reason"],
)
DATASETS_PUBLISHED = Counter(
    "arena_selection_datasets_published_total", "Dataset versions published, by kind.", ["kind"]
)
