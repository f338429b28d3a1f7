"""Settings of the selection service: the shared groups plus ``ARENA_SELECTION__*``."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from arena_core.settings import ServiceSettings


class SelectionOptions(BaseModel):
    """Options only the selection service reads."""

    # Where dataset files go: nats-obj://<bucket> (JetStream object store) or file:///<folder>.
    store_uri: str = "nats-obj://arena-selection-datasets"
    # Default embedding model for decontamination and test sets (a request may name another).
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_device: str = "cpu"
    # Tokens of each text the embedding model reads; None means the model's own limit.
    embedding_max_tokens: int | None = Field(128, ge=8, le=8192)
    # gRPC address of the judge service (difficulty ratings for Offline-Hard).
    judge_target: str = "127.0.0.1:50052"
    # gRPC address of the inference service (answer texts of a judged round).
    inference_target: str = "127.0.0.1:50051"
    # Difficulty ratings in flight at once.
    difficulty_concurrency: int = Field(8, ge=1, le=256)
    # How long a training-data job waits for a round's expected judgments to arrive.
    round_wait_seconds: float = Field(600.0, ge=0)
    # Least time between two progress events of one job.
    progress_interval_seconds: float = Field(1.0, ge=0)
    # Jobs that may run at once in one replica; more wait their turn.
    max_concurrent_jobs: int = Field(2, ge=1, le=64)

    @field_validator("store_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("nats-obj://", "file://")):
            raise ValueError("must be nats-obj://<bucket> or file:///<folder>")
        return value


class SelectionSettings(ServiceSettings):
    selection: SelectionOptions = SelectionOptions()
