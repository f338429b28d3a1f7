"""Settings of the rating service: the shared groups plus ``ARENA_RATING__*``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from arena_core.settings import ServiceSettings

_BUCKET = r"^[A-Za-z0-9_-]+$"


class RatingOptions(BaseModel):
    """Options only the rating service reads."""

    # JetStream KV buckets: one entry per counted battle (the idempotency key and the effect in
    # one keyed write), per-arena aggregate checkpoints, and published leaderboard snapshots.
    battles_bucket: str = Field("arena-rating-battles", pattern=_BUCKET)
    aggregates_bucket: str = Field("arena-rating-aggregates", pattern=_BUCKET)
    snapshots_bucket: str = Field("arena-rating-snapshots", pattern=_BUCKET)
    # Seconds between scheduled snapshots of every arena whose battles changed; 0 turns it off.
    publish_interval_seconds: float = Field(300.0, ge=0)
    # Bootstrap rounds when a query leaves them unset, and the most a query may ask for.
    default_bootstrap_rounds: int = Field(100, ge=0, le=100_000)
    max_bootstrap_rounds: int = Field(10_000, ge=1, le=1_000_000)
    # Seed of the bootstrap when a query leaves it unset, so the same battles give the same
    # leaderboard; "random" (or empty) draws fresh entropy for every fit.
    default_seed: int | None = Field(0, ge=0)
    # Threads one bootstrap uses, and fits that may run at once (each on its own threads).
    bootstrap_workers: int = Field(2, ge=1, le=64)
    max_concurrent_fits: int = Field(2, ge=1, le=64)
    # Weight of a strong verdict (A>>B, B>>A): Arena-Hard counts it as three battles.
    strong_verdict_weight: float = Field(3.0, gt=0)
    # Least time between two StreamLeaderboard updates when the request does not say.
    stream_min_interval_seconds: float = Field(5.0, ge=0)
    # Most time between two writes of an arena's aggregate checkpoint.
    checkpoint_interval_seconds: float = Field(5.0, gt=0)
    # How long one delivery of a RatingsRequested waits for min_battles before it is retried.
    request_wait_seconds: float = Field(30.0, ge=0)
    # How long a read waits for this replica to have folded battles already in the bucket.
    catch_up_timeout_seconds: float = Field(30.0, gt=0)
    # Battle writes in flight at once for one JudgmentBatchCompleted or RecordBattles call.
    write_concurrency: int = Field(64, ge=1, le=4096)
    # Battles one RecordBattles call may carry.
    max_battles_per_call: int = Field(100_000, ge=1)
    # When the battles bucket is found missing at start-up, re-read the judge event stream from
    # its beginning so judged battles are counted again (battles recorded over RPC are lost).
    replay_judgments_on_loss: bool = True

    @model_validator(mode="after")
    def _default_within_max(self) -> RatingOptions:
        if self.default_bootstrap_rounds > self.max_bootstrap_rounds:
            raise ValueError(
                f"default_bootstrap_rounds ({self.default_bootstrap_rounds}) exceeds "
                f"max_bootstrap_rounds ({self.max_bootstrap_rounds})"
            )
        return self

    @field_validator("default_seed", mode="before")
    @classmethod
    def _random_seed(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "random", "none"):
            return None
        return value


class RatingSettings(ServiceSettings):
    rating: RatingOptions = RatingOptions()
