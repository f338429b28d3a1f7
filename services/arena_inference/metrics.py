"""Prometheus families of the inference service (names used by the Grafana dashboards).

Labels are bounded: `model` is a registry name, `backend` one of four, `outcome` and `reason`
fixed vocabularies, `gpu` a device index.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from arena_core.metrics import LATENCY_BUCKETS_SECONDS
from arena_inference.domain.ports import Telemetry
from arena_inference.domain.types import BackendKind

log = logging.getLogger(__name__)

GENERATED_TOKENS = Counter(
    "arena_inference_generated_tokens_total",
    "Completion tokens generated (cache hits excluded).",
    ["model"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "arena_inference_time_to_first_token_seconds",
    "Time from taking a request to its first generated token.",
    ["model"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
REQUEST_SECONDS = Histogram(
    "arena_inference_request_seconds",
    "Time to compute one generation (cache hits excluded).",
    ["model"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
QUEUE_DEPTH = Gauge(
    "arena_inference_queue_depth",
    "Generation requests waiting for or being served by a model's backend.",
    ["model"],
)
GPU_MEMORY_USED = Gauge(
    "arena_inference_gpu_memory_used_bytes", "GPU memory in use on the device.", ["gpu"]
)
GPU_MEMORY_TOTAL = Gauge(
    "arena_inference_gpu_memory_total_bytes", "GPU memory on the device.", ["gpu"]
)
CACHE_HITS = Counter(
    "arena_inference_cache_hits_total", "Answer-cache lookups that found a generation."
)
CACHE_LOOKUPS = Counter("arena_inference_cache_lookups_total", "Answer-cache lookups.")
REQUESTS = Counter(
    "arena_inference_requests_total",
    "Generation requests by backend and outcome (ok, cached, error).",
    ["backend", "outcome"],
)
ERRORS = Counter(
    "arena_inference_errors_total",
    "Failed generation requests by backend and error class.",
    ["backend", "reason"],
)


class PrometheusTelemetry(Telemetry):
    """Label children are looked up once per label set and kept: `labels()` takes a lock and
    builds its key on every call, and a request reports several measurements."""

    def __init__(self) -> None:
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        key = (family, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def cache_lookup(self, hit: bool) -> None:
        CACHE_LOOKUPS.inc()
        if hit:
            CACHE_HITS.inc()

    def request_finished(self, model: str, backend: BackendKind, outcome: str) -> None:
        self._child(REQUESTS, backend.value, outcome).inc()

    def error(self, model: str, backend: BackendKind, reason: str) -> None:
        self._child(ERRORS, backend.value, reason).inc()

    def generated(
        self,
        model: str,
        backend: BackendKind,
        completion_tokens: int,
        latency_seconds: float,
        time_to_first_token: float | None,
    ) -> None:
        self._child(GENERATED_TOKENS, model).inc(completion_tokens)
        self._child(REQUEST_SECONDS, model).observe(latency_seconds)
        if time_to_first_token is not None:
            self._child(TIME_TO_FIRST_TOKEN, model).observe(time_to_first_token)

    def queue_depth(self, model: str, delta: int) -> None:
        self._child(QUEUE_DEPTH, model).inc(delta)


def sample_gpu_memory() -> int:
    """Sets the GPU memory gauges from every visible CUDA device; returns how many it saw."""
    if "torch" not in sys.modules and not Path("/dev/nvidiactl").exists():
        return 0  # no NVIDIA driver here: no need to import torch to find no GPU
    try:
        import torch
    except ImportError:
        return 0
    if not torch.cuda.is_available():
        return 0
    count = torch.cuda.device_count()
    for index in range(count):
        free, total = torch.cuda.mem_get_info(index)
        GPU_MEMORY_USED.labels(str(index)).set(total - free)
        GPU_MEMORY_TOTAL.labels(str(index)).set(total)
    return count


async def gpu_memory_sampler(interval_seconds: float) -> None:
    """Background job: samples GPU memory until cancelled (idles where there is no GPU; a
    background job that returned would stop the service)."""
    while True:
        try:
            seen = await asyncio.to_thread(sample_gpu_memory)
        except Exception:
            log.exception("sampling GPU memory failed; not trying again")
            seen = 0
        if not seen:
            await asyncio.Event().wait()
        await asyncio.sleep(interval_seconds)
