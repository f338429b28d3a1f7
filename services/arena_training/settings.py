"""Settings of the training service: the shared groups plus ``ARENA_TRAINING__*``.

- ``ARENA_TRAINING__RUNNER`` (``local``): where runs execute unless a request says otherwise,
  ``local`` or ``kubernetes``.
- ``ARENA_TRAINING__WORK_DIR`` (``$ARENA_HOME/training`` locally, the checkpoint volume on
  Kubernetes): run folders and staged datasets, shared with the jobs.
- ``ARENA_TRAINING__CHECKPOINT_STORE`` (``<work dir>/checkpoints``): where finished models and
  adapters are written and registered from.
- ``ARENA_TRAINING__MAX_CONCURRENT_RUNS`` (1): runs executing at once; the rest wait PENDING.
- ``ARENA_TRAINING__MAX_ATTEMPTS`` (3): attempts per run; an interrupted attempt resumes from
  its last checkpoint.
- ``ARENA_TRAINING__SELECTION_TARGET``: host:port of the selection service, the dataset catalog
  for dataset ids given without files.
- ``ARENA_TRAINING__JUDGE_TARGET``: host:port of the judge service, for RL rewards from its
  ``Score`` RPC.
- ``ARENA_TRAINING__ALLOW_HUB_MODELS`` (true): accept Hugging Face hub ids as base models.
- ``ARENA_TRAINING__LEASE_SECONDS`` (60): after this long without renewal (a crashed replica)
  another replica adopts its runs.
- ``ARENA_TRAINING__KEEP_TRAINER_CHECKPOINTS`` (false): keep ``checkpoint-<step>`` folders after
  a run succeeded.
- ``ARENA_TRAINING__LOCAL__LAUNCHER`` (``auto``), ``__GPUS`` (0), ``__PYTHON``, ``__ENV``: local
  processes.
- ``ARENA_TRAINING__KUBERNETES__*``: namespace, image, GPUs, node selector, tolerations, volumes
  and secrets of training Jobs (see `KubernetesOptions`; the chart sets them).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from arena_core.settings import ServiceSettings


class TolerationOption(BaseModel):
    """A Kubernetes toleration; accepts the chart's camelCase (`tolerationSeconds`)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


class SecretKeyOption(BaseModel):
    """An environment variable taken from a key of a Secret, by reference."""

    model_config = ConfigDict(extra="forbid")

    secret: str
    key: str


class LocalRunnerOptions(BaseModel):
    launcher: Literal["auto", "python", "torchrun", "accelerate"] = "auto"
    # Interpreter of the worker; the service's own by default (same environment).
    python: str = sys.executable
    gpus: int = Field(0, ge=0)
    # Time a cancelled worker gets between SIGTERM and SIGKILL.
    cancel_grace_seconds: float = Field(10.0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)


class KubernetesOptions(BaseModel):
    """How training Jobs are shaped; the chart fills these from `components.training.jobs`."""

    namespace: str = "default"
    image: str = ""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    # Service account of the job pods (no API access needed).
    service_account: str = ""
    gpus_per_node: int = Field(1, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = ""
    memory: str = ""
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationOption] = Field(default_factory=list)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str = ""
    # Kubeflow: use TrainJob (trainer.kubeflow.org) or PyTorchJob (kubeflow.org) when installed.
    kubeflow: bool = False
    backend: Literal["auto", "job", "trainjob", "pytorchjob"] = "auto"
    training_runtime: str = "torch-distributed"
    # The shared volume for checkpoints, datasets and run folders (ReadWriteMany for multi-node).
    checkpoint_claim: str = ""
    checkpoint_dir: str = "/checkpoints"
    shm_size: str = "16Gi"
    env: dict[str, str] = Field(default_factory=dict)
    # Secrets by reference: env var name -> {secret, key}; whole Secrets as env.
    secret_env: dict[str, SecretKeyOption] = Field(default_factory=dict)
    env_from_secrets: list[str] = Field(default_factory=list)
    run_as_user: int | None = None
    fs_group: int | None = None
    ttl_seconds_after_finished: int = Field(86400, ge=0)
    active_deadline_seconds: int | None = Field(None, ge=1)
    master_port: int = Field(29500, ge=1, le=65535)
    poll_seconds: float = Field(5.0, gt=0)
    kubeconfig: Path | None = None

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if len(value) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (a DNS label)")
        return value


class TrainingOptions(BaseModel):
    """Options only the training service reads."""

    runner: Literal["local", "kubernetes"] = "local"
    work_dir: Path | None = None
    checkpoint_store: Path | None = None
    max_concurrent_runs: int = Field(1, ge=1, le=1024)
    max_attempts: int = Field(3, ge=1, le=100)
    selection_target: str = ""
    judge_target: str = ""
    allow_hub_models: bool = True
    keep_trainer_checkpoints: bool = False
    # A replica's hold on the runs it drives; another replica adopts them this long after it
    # stopped renewing (crashed).
    lease_seconds: float = Field(60.0, ge=5, le=3600)
    # Log lines quoted in a failed run's reason when the worker could not say why itself.
    failure_log_lines: int = Field(20, ge=0, le=1000)
    local: LocalRunnerOptions = LocalRunnerOptions()
    kubernetes: KubernetesOptions = KubernetesOptions()

    def resolved_work_dir(self) -> Path:
        if self.work_dir is not None:
            return self.work_dir.resolve()
        if self.runner == "kubernetes" and self.kubernetes.checkpoint_claim:
            return Path(self.kubernetes.checkpoint_dir)
        return (Path(os.environ.get("ARENA_HOME", ".arena")) / "training").resolve()

    def resolved_checkpoint_store(self) -> Path:
        if self.checkpoint_store is not None:
            return self.checkpoint_store.resolve()
        return self.resolved_work_dir() / "checkpoints"


class TrainingSettings(ServiceSettings):
    training: TrainingOptions = TrainingOptions()
