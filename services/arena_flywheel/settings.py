"""Settings of the flywheel service: the shared groups plus ``ARENA_FLYWHEEL__*``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from arena_core.settings import ServiceSettings


class FlywheelOptions(BaseModel):
    """Options only the flywheel service reads."""

    # gRPC addresses of the services the controller reads from or steers directly.
    inference_target: str = "127.0.0.1:50051"
    selection_target: str = "127.0.0.1:50054"
    training_target: str = "127.0.0.1:50055"
    # Prompts per GenerationBatchRequested and judgments per JudgmentBatchRequested: one work
    # item per batch keeps the bus's per-message cost off every answer.
    generation_batch_size: int = Field(16, ge=1, le=1024)
    judge_batch_size: int = Field(32, ge=1, le=1024)
    # How often a waiting step sweeps the results bucket for answers another replica recorded.
    results_poll_seconds: float = Field(2.0, gt=0, le=60)
    # Pause between tries of a step whose services were unreachable.
    retry_seconds: float = Field(5.0, gt=0, le=600)
    # JetStream KV buckets of the runs and of the answers to their work.
    runs_bucket: str = "flywheel-runs"
    results_bucket: str = "flywheel-results"
    # Where each run's report (JSON, HTML, Elo plot) is written, one folder per run.
    reports_dir: Path = Path("/var/lib/arena/flywheel")


class FlywheelSettings(ServiceSettings):
    flywheel: FlywheelOptions = FlywheelOptions()
