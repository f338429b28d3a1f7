"""What happens after an attempt ends: success, failure with a reason, or resume.

A worker that wrote its result succeeded. A worker that reported an error failed for that reason
(retried only when the error says a retry may help). A worker that vanished without a word — a
killed process, an evicted or OOM-killed pod, a restarted node — was interrupted: the run resumes
from its last checkpoint as a new attempt, until the attempt budget is spent.

>>> decide(AttemptEnd(exit_code=0, result=True), attempt=1, max_attempts=3).action
'succeed'
>>> decide(AttemptEnd(exit_code=-9), attempt=1, max_attempts=3).action
'resume'
>>> decision = decide(AttemptEnd(exit_code=-9), attempt=3, max_attempts=3)
>>> decision.action, decision.reason
('fail', 'INTERRUPTED')
>>> decide(AttemptEnd(exit_code=1), attempt=1, max_attempts=3).reason
'WORKER_CRASHED'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["succeed", "fail", "resume", "cancel"]


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended, as the runner and the worker's markers tell it."""

    exit_code: int | None = None
    # The worker printed its result marker (the final model is written).
    result: bool = False
    # The worker printed an error marker.
    error_reason: str | None = None
    error_message: str = ""
    error_retryable: bool = False
    # The runner's own view: e.g. "OOM" for an OOM-killed container, "DeadlineExceeded".
    runner_reason: str = ""
    runner_message: str = ""
    cancelled: bool = False


# What the runner saw that no resume can fix: (reason code, message when the runner gave none).
FINAL_RUNNER_REASONS = {
    "OOM": ("OOM", "the training container ran out of memory"),
    "ErrImagePull": ("IMAGE_PULL_FAILED", "the training image cannot be pulled"),
    "ImagePullBackOff": ("IMAGE_PULL_FAILED", "the training image cannot be pulled"),
    "InvalidImageName": ("IMAGE_PULL_FAILED", "the training image name is invalid"),
    "CreateContainerConfigError": (
        "POD_CONFIG_ERROR",
        "the training container cannot be configured (a missing Secret or ConfigMap?)",
    ),
    "DeadlineExceeded": ("DEADLINE_EXCEEDED", "the job ran past its active deadline"),
}


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    message: str = ""
    retryable: bool = False


def decide(end: AttemptEnd, *, attempt: int, max_attempts: int) -> Decision:
    if end.cancelled:
        return Decision("cancel", "CANCELLED", "cancelled on request")
    if end.result and end.exit_code in (0, None):
        return Decision("succeed")
    can_retry = attempt < max_attempts
    if end.error_reason:
        if end.error_retryable and can_retry:
            return Decision("resume", end.error_reason, end.error_message, True)
        return Decision("fail", end.error_reason, end.error_message, end.error_retryable)
    if end.runner_reason in FINAL_RUNNER_REASONS:
        # The same job fails the same way again (out of memory, an image that cannot be pulled,
        # a missing secret, its deadline); resuming would only burn GPU hours.
        reason, default_message = FINAL_RUNNER_REASONS[end.runner_reason]
        return Decision("fail", reason, end.runner_message or default_message, retryable=False)
    if end.exit_code is not None and 0 < end.exit_code <= 128 and not end.runner_reason:
        # An ordinary non-zero exit without an error marker is a crash (e.g. an import error):
        # running the same code again fails the same way.
        return Decision("fail", "WORKER_CRASHED", _describe(end), retryable=False)
    what = _describe(end)
    if can_retry:
        return Decision("resume", "INTERRUPTED", what, True)
    return Decision(
        "fail",
        "INTERRUPTED",
        f"{what}; gave up after {attempt} attempt(s)",
        retryable=True,
    )


def _describe(end: AttemptEnd) -> str:
    if end.runner_message:
        return end.runner_message
    if end.exit_code is None:
        return "the worker stopped without reporting a result"
    if end.exit_code < 0:
        return f"the worker was killed by signal {-end.exit_code} before reporting a result"
    if end.exit_code > 128:
        return f"the worker was killed (exit code {end.exit_code}) before reporting a result"
    return f"the worker exited with code {end.exit_code} without reporting a result"
