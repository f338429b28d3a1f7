"""The job runner abstraction: start a training job, watch it, stream its logs, cancel it.

Two implementations: `LocalProcessRunner` (accelerate / torchrun / python processes next to the
service) and `KubernetesRunner` (a Job, an indexed Job with a headless Service for several nodes,
or a Kubeflow TrainJob / PyTorchJob). The supervisor only ever talks to this interface.

A job's name is deterministic from (run id, attempt) on Kubernetes and the process id locally;
logs of earlier attempts stay readable as long as the runner keeps them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from arena_training.domain.job import TrainingJob


@dataclass(frozen=True)
class Placement:
    """Where and on what a run executes, with the service's defaults filled in."""

    runner: str
    num_nodes: int = 1
    gpus_per_node: int = 0
    cpu: str = ""
    memory: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    image: str = ""
    priority_class_name: str = ""

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.processes_per_node


@dataclass(frozen=True)
class LaunchRequest:
    run_id: str
    attempt: int
    job: TrainingJob
    # The run's folder in the shared work directory (job file, logs, trainer checkpoints).
    run_dir: Path
    placement: Placement
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobHandle:
    runner: str
    run_id: str
    attempt: int
    # Process id, or the Kubernetes object's name.
    name: str
    # Which Kubernetes kind the job is ("job", "trainjob", "pytorchjob"); empty locally.
    kind: str = ""
    num_nodes: int = 1


class JobPhase(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # The job no longer exists (deleted, garbage-collected, or a process that is gone).
    GONE = "gone"


@dataclass(frozen=True)
class JobStatus:
    phase: JobPhase
    exit_code: int | None = None
    # Machine-readable cause, e.g. "OOM", "DeadlineExceeded", "Unschedulable".
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.GONE)


@dataclass(frozen=True)
class LogLine:
    text: str
    stream: str = "stdout"
    node_rank: int = 0
    time: datetime | None = None


class JobRunner(Protocol):
    """What the supervisor needs from a place that runs jobs."""

    kind: str
    # True when jobs keep running while the service restarts (they are re-attached after).
    detach_on_shutdown: bool

    async def start(self, request: LaunchRequest) -> JobHandle: ...

    async def attach(self, run_id: str, attempt: int, name: str) -> JobHandle | None:
        """The handle of a job started before a restart, or None when it is no longer running."""
        ...

    async def status(self, handle: JobHandle) -> JobStatus: ...

    async def wait(self, handle: JobHandle) -> JobStatus:
        """Returns once the job has finished."""
        ...

    def logs(
        self, handle: JobHandle, *, follow: bool, tail_lines: int | None = None
    ) -> AsyncIterator[LogLine]:
        """The job's log lines; with `follow`, until the job's processes have ended."""
        ...

    async def cancel(self, handle: JobHandle) -> None:
        """Stops the job's processes and removes what it created."""
        ...

    async def cleanup(self, handle: JobHandle) -> None:
        """Removes what a finished job left behind (logs are kept while the runner can)."""
        ...

    async def close(self) -> None: ...
