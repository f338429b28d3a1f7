"""Settings of the judge service: the shared groups plus ``ARENA_JUDGE__*``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from arena_core.settings import ServiceSettings


class JudgeOptions(BaseModel):
    """Options only the judge service reads."""

    # gRPC address of the inference service that runs the judge models (and holds the answers).
    inference_target: str = "127.0.0.1:50051"
    # Deadline of one GenerateBatch / GetGenerations call.
    inference_timeout_seconds: float = Field(600.0, gt=0)
    # FastChat judge_prompts.jsonl files, Arena-Hard judge config YAMLs, or folders of them,
    # comma-separated; the built-in templates are always there.
    template_paths: str = ""
    # Judgments in flight at once for one batch (JudgeBatch, JudgmentBatchRequested); a
    # JudgeBatch request may ask for fewer.
    max_concurrency: int = Field(64, ge=1, le=4096)
    # Inputs per GenerateBatch call, how long a call waits for more inputs to batch, and how
    # many GenerateBatch calls may be in flight at once per replica.
    batch_size: int = Field(16, ge=1, le=1024)
    max_calls_in_flight: int = Field(8, ge=1, le=256)
    batch_window_ms: float = Field(10.0, ge=0)
    # Re-samples of an unparsable judge output when the judge spec does not say.
    default_max_parse_retries: int = Field(2, ge=0, le=10)
    # Re-samples use seed + attempt; a greedy judge (temperature 0 or unset) samples at this
    # temperature on retries, else it would repeat the same unparsable text.
    retry_temperature: float = Field(0.7, gt=0, le=2)
    # Work-queue handlers running side by side in one replica (each pulls from the durable).
    queue_workers: int = Field(4, ge=1, le=64)
    # JetStream KV buckets: judgments by judgment_id, and judge specs by name and version.
    cache_bucket: str = Field("arena-judge-judgments", pattern=r"^[A-Za-z0-9_-]+$")
    spec_bucket: str = Field("arena-judge-specs", pattern=r"^[A-Za-z0-9_-]+$")

    @property
    def template_files(self) -> list[Path]:
        return [Path(part.strip()) for part in self.template_paths.split(",") if part.strip()]


class JudgeSettings(ServiceSettings):
    judge: JudgeOptions = JudgeOptions()
