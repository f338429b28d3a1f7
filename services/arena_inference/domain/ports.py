"""What the engine needs from the outside: an answer cache and a place to report measurements.

The service plugs in JetStream KV and Prometheus; tests use the in-memory cache and the no-op
telemetry defined here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from arena_inference.domain.types import BackendKind, Generation


class AnswerCache(ABC):
    """Finished generations by generation id; shared by all replicas and kept across restarts."""

    @abstractmethod
    async def get(self, generation_id: str) -> Generation | None: ...

    @abstractmethod
    async def put(self, generation: Generation) -> None: ...


class MemoryAnswerCache(AnswerCache):
    def __init__(self) -> None:
        self.entries: dict[str, Generation] = {}

    async def get(self, generation_id: str) -> Generation | None:
        return self.entries.get(generation_id)

    async def put(self, generation: Generation) -> None:
        self.entries[generation.generation_id] = generation


class Telemetry:
    """Measurement hooks; every method is a no-op here."""

    def cache_lookup(self, hit: bool) -> None:
        """One answer-cache lookup, hit or miss."""

    def request_finished(self, model: str, backend: BackendKind, outcome: str) -> None:
        """One generation request ended: outcome is "ok", "cached" or "error"."""

    def error(self, model: str, backend: BackendKind, reason: str) -> None:
        """A request failed; `reason` is a bounded error class name."""

    def generated(
        self,
        model: str,
        backend: BackendKind,
        completion_tokens: int,
        latency_seconds: float,
        time_to_first_token: float | None,
    ) -> None:
        """A generation was computed (not served from the cache)."""

    def queue_depth(self, model: str, delta: int) -> None:
        """Requests waiting for or being served by the model's backend changed by `delta`."""
