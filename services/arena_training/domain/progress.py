"""What a worker tells the service, as marker lines in its log, and throughput/ETA arithmetic.

A worker prints one line per fact, ``@@arena {json}``, on its standard output. The service reads
the same lines whether the worker is a local process (its log file) or a Kubernetes pod (its log
stream), so progress needs no extra connection from the pod. Everything else in the log is free
text for humans.

>>> line = encode(Progress(step=10, total_steps=100, loss=1.5))
>>> line.startswith(MARKER)
True
>>> decode(line)
Progress(kind='progress', step=10, total_steps=100, epoch=0.0, loss=1.5, learning_rate=None, \
grad_norm=None, tokens_per_second=None, eta_seconds=None, metrics={})
>>> decode("plain log text") is None
True
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import orjson

MARKER = "@@arena "


@dataclass(frozen=True)
class Started:
    kind: Literal["started"] = "started"
    attempt: int = 1
    total_steps: int | None = None
    resumed_from_step: int | None = None
    world_size: int = 1


@dataclass(frozen=True)
class Progress:
    kind: Literal["progress"] = "progress"
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    # Recipe metrics, e.g. "rewards/margins", "rewards/accuracies", "eval_loss".
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSaved:
    kind: Literal["checkpoint"] = "checkpoint"
    step: int = 0
    path: str = ""


@dataclass(frozen=True)
class Result:
    """The finished model is written: where, its digest and size, and the final metrics."""

    kind: Literal["result"] = "result"
    step: int = 0
    path: str = ""
    sha256: str = ""
    size_bytes: int = 0
    adapter: bool = False
    final_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """Why the worker gave up: a stable reason code, a message, whether a retry may help."""

    kind: Literal["error"] = "error"
    reason: str = "TRAINING_ERROR"
    message: str = ""
    retryable: bool = False
    details: dict[str, str] = field(default_factory=dict)


Marker = Started | Progress | CheckpointSaved | Result | Failed

_KINDS: dict[str, type[Marker]] = {
    "started": Started,
    "progress": Progress,
    "checkpoint": CheckpointSaved,
    "result": Result,
    "error": Failed,
}


def encode(marker: Marker) -> str:
    return MARKER + orjson.dumps(asdict(marker)).decode()


def decode(line: str) -> Marker | None:
    """The marker on a log line, or None for ordinary text (or a marker this version ignores)."""
    start = line.find(MARKER)
    if start < 0:
        return None
    try:
        payload = orjson.loads(line[start + len(MARKER) :])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    marker_class = _KINDS.get(str(payload.get("kind")))
    if marker_class is None:
        return None
    known = set(marker_class.__dataclass_fields__)
    try:
        return marker_class(**{k: v for k, v in payload.items() if k in known})
    except TypeError:
        return None


class ThroughputMeter:
    """Tokens per second and time left from (step, tokens) samples over a sliding window.

    The window keeps the rates current after a slow start (compilation, data loading).

    >>> meter = ThroughputMeter(total_steps=100, clock=iter([0.0, 10.0]).__next__)
    >>> meter.observe(step=0, tokens=0)
    (None, None)
    >>> meter.observe(step=10, tokens=5000)
    (500.0, 90.0)
    """

    def __init__(
        self, total_steps: int | None, window: int = 20, clock: Any = time.monotonic
    ) -> None:
        self.total_steps = total_steps
        self._clock = clock
        self._samples: deque[tuple[float, int, float | None]] = deque(maxlen=window)

    def observe(self, step: int, tokens: float | None) -> tuple[float | None, float | None]:
        """Records a sample; returns (tokens per second, seconds left), None where unknown."""
        now = float(self._clock())
        self._samples.append((now, step, tokens))
        first_time, first_step, first_tokens = self._samples[0]
        elapsed = now - first_time
        if elapsed <= 0:
            return None, None
        tokens_per_second = None
        if tokens is not None and first_tokens is not None and tokens >= first_tokens:
            tokens_per_second = (tokens - first_tokens) / elapsed
        eta = None
        steps_done = step - first_step
        if self.total_steps is not None and steps_done > 0:
            eta = max(0.0, (self.total_steps - step) * elapsed / steps_done)
        return tokens_per_second, eta
