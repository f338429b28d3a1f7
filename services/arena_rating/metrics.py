"""The rating service's own metric families (the Grafana dashboards read these exact names).

`arena` and `model` are bounded by what the deployment rates: a handful of arenas, tens of models.
The rating gauges follow the latest published snapshot of an arena's main leaderboard (all
categories, all models, no style control).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATTLES_INGESTED = Counter(
    "arena_rating_battles_ingested_total",
    "Battles newly counted into an arena (duplicates excluded), from judgments or RPC.",
    ["arena"],
)
BATTLES_DUPLICATE = Counter(
    "arena_rating_battles_duplicate_total",
    "Battles ignored because their (arena, battle_id, game) was already counted.",
    ["arena"],
)
JUDGMENTS_SKIPPED = Counter(
    "arena_rating_judgments_skipped_total",
    "Judgments that made no battle, by reason (no_arena, no_verdict, single_answer, same_model).",
    ["reason"],
)
MODEL_RATING = Gauge(
    "arena_rating_model_rating_elo",
    "A model's rating on the latest published leaderboard of an arena.",
    ["arena", "model"],
)
MODEL_RATING_CI_LOW = Gauge(
    "arena_rating_model_rating_ci_low_elo",
    "Lower bound of the 95% interval of a model's published rating.",
    ["arena", "model"],
)
MODEL_RATING_CI_HIGH = Gauge(
    "arena_rating_model_rating_ci_high_elo",
    "Upper bound of the 95% interval of a model's published rating.",
    ["arena", "model"],
)
MODELS_RATED = Gauge(
    "arena_rating_models_rated",
    "Models with at least one battle in an arena.",
    ["arena"],
)
FIT_SECONDS = Histogram(
    "arena_rating_fit_seconds",
    "Time to fit one leaderboard, by method (mle, bootstrap, analytic, style_control, online_elo).",
    ["method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
SNAPSHOTS_PUBLISHED = Counter(
    "arena_rating_snapshots_published_total",
    "Leaderboard snapshots stored and announced, by trigger (schedule, rpc, work_item).",
    ["trigger"],
)
