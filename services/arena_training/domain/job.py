"""The training job: everything a worker process needs, as one JSON document.

The service resolves a run (recipe defaults, dataset files, base weights, where to write) into a
`TrainingJob`; a runner hands it to the worker as a file (local processes) or an environment
variable (Kubernetes pods, so no ConfigMap permissions are needed). Paths in it are the paths the
worker sees: the service and its jobs share one work directory (a PVC in a cluster).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from arena_core.hashing import content_hash

from .datasets import FileFormat
from .recipes import Recipe, Stage

JOB_ENV = "ARENA_TRAINING_JOB"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ModelLocation(BaseModel):
    """Weights a job loads: a folder or hub id, optionally with a LoRA adapter merged on top."""

    model_config = _FROZEN

    path: str
    revision: str = ""
    adapter_path: str | None = None


class DataFiles(BaseModel):
    model_config = _FROZEN

    dataset_id: str
    name: str = ""
    format: FileFormat
    files: tuple[str, ...]


class TrainingJob(BaseModel):
    model_config = _FROZEN

    run_id: str
    attempt: int = Field(ge=1)
    recipe: Recipe
    base: ModelLocation
    datasets: tuple[DataFiles, ...]
    eval_datasets: tuple[DataFiles, ...] = ()
    # Trainer checkpoints (`checkpoint-<step>`), the resume points of the run.
    output_dir: str
    # Where the finished model or adapter is written: the checkpoint store.
    final_dir: str
    checkpoint_id: str
    model_name: str
    # Processes in the whole job (nodes x processes per node).
    world_size: int = Field(1, ge=1)

    @property
    def stage(self) -> Stage:
        return self.recipe.stage

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainingJob:
        return cls.model_validate_json(text)


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def valid_run_id(run_id: str) -> bool:
    """Run ids become KV keys, file names and (shortened) Kubernetes names."""
    return _RUN_ID.match(run_id) is not None


def checkpoint_id_for(run_id: str) -> str:
    """The id of a run's final checkpoint: deterministic, so registering twice is a no-op."""
    return "ckpt-" + content_hash("training-checkpoint", run_id)[:24]


def run_dir(work_dir: Path, run_id: str) -> Path:
    return work_dir / "runs" / run_id


def checkpoint_dir(checkpoint_root: Path, model_name: str, checkpoint_id: str) -> Path:
    return checkpoint_root / _safe_name(model_name) / checkpoint_id


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return cleaned or "model"
