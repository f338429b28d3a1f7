"""The judge service's own metric families (dashboards read these exact names).

`judge` is the judge spec's ``name@version``: a handful per deployment, so the label stays bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from arena_core.metrics import LATENCY_BUCKETS_SECONDS

JUDGMENTS = Counter(
    "arena_judge_judgments_total",
    "Judgments made, by judge and outcome (ok, parse_failed, cached, error).",
    ["judge", "outcome"],
)
PARSE_FAILURES = Counter(
    "arena_judge_parse_failures_total",
    "Judgments recorded as failed because no sample could be parsed, by judge.",
    ["judge"],
)
PARSE_RETRIES = Counter(
    "arena_judge_parse_retries_total",
    "Extra samples drawn because an output could not be parsed, by judge.",
    ["judge"],
)
POSITION_PAIRS = Counter(
    "arena_judge_position_pairs_total",
    "Pairs whose two position orders both parsed, by judge.",
    ["judge"],
)
POSITION_INCONSISTENT = Counter(
    "arena_judge_position_inconsistent_total",
    "Pairs whose two position orders named different winners, by judge.",
    ["judge"],
)
CACHE_HITS = Counter("arena_judge_cache_hits_total", "Judgments served from the judgment cache.")
CACHE_LOOKUPS = Counter("arena_judge_cache_lookups_total", "Judgment cache lookups.")
MODEL_CALLS = Counter(
    "arena_judge_model_calls_total",
    "Samples requested from the inference service, by judge.",
    ["judge"],
)
INFERENCE_BATCHES = Counter(
    "arena_judge_inference_batches_total",
    "GenerateBatch calls made to the inference service.",
)
JUDGMENT_SECONDS = Histogram(
    "arena_judge_judgment_seconds",
    "Time to make one judgment (model calls and retries included; cache hits excluded).",
    ["judge"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
