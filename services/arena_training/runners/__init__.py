"""Job runners: where a training job's processes run — local processes or Kubernetes."""

from arena_training.runners.base import (
    JobHandle,
    JobPhase,
    JobRunner,
    JobStatus,
    LaunchRequest,
    LogLine,
    Placement,
)

__all__ = [
    "JobHandle",
    "JobPhase",
    "JobRunner",
    "JobStatus",
    "LaunchRequest",
    "LogLine",
    "Placement",
]
