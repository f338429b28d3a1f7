"""The inference use cases: answer one conversation, many, or one streamed, through the cache.

Every request is validated (clear messages naming the field), resolved against the registry
(model defaults applied, revision resolved), looked up in the answer cache under its generation
id, and only then computed by the model's backend. Identical requests in flight at the same time
are computed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from arena_core.errors import ArenaError, NotFoundError
from arena_inference.domain.backend import BackendRequest, DeltaSink, ModelBackend
from arena_inference.domain.ports import AnswerCache, Telemetry
from arena_inference.domain.registry import ModelRegistry
from arena_inference.domain.requests import (
    check_context,
    generation_id,
    prompt_sha256,
    validate_input,
)
from arena_inference.domain.types import (
    CachePolicy,
    Completion,
    Generation,
    GenerationInput,
    ModelRef,
    ModelSpec,
    Sampling,
    StreamDelta,
)


@dataclass(frozen=True)
class EngineOptions:
    # max_tokens when neither the request nor the model's defaults set it.
    default_max_tokens: int = 512


@dataclass(frozen=True)
class _Plan:
    request: GenerationInput
    model: ModelRef  # revision resolved
    sampling: Sampling  # effective
    generation_id: str
    pinned_revision: bool  # the caller asked for a specific revision


_DONE = object()


class InferenceEngine:
    def __init__(
        self,
        registry: ModelRegistry,
        cache: AnswerCache,
        telemetry: Telemetry | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self.registry = registry
        self._cache = cache
        self._telemetry = telemetry or Telemetry()
        self._options = options or EngineOptions()
        self._in_flight: dict[str, asyncio.Task[Generation]] = {}
        self._ids = itertools.count()

    # --- use cases -----------------------------------------------------------------------------

    async def generate(
        self, request: GenerationInput, policy: CachePolicy = CachePolicy.USE, where: str = "input"
    ) -> Generation:
        plan = self._plan(request, where)
        if policy == CachePolicy.USE and (hit := await self._cached(plan)) is not None:
            return hit
        if policy == CachePolicy.BYPASS:
            return await self._compute(plan, policy, None)
        # Identical requests in flight share one computation (and one cache write).
        task = self._in_flight.get(plan.generation_id)
        if task is None:
            task = asyncio.create_task(self._compute(plan, policy, None))
            self._in_flight[plan.generation_id] = task
            task.add_done_callback(lambda _: self._in_flight.pop(plan.generation_id, None))
        return await asyncio.shield(task)

    async def generate_batch(
        self,
        requests: Sequence[GenerationInput],
        policy: CachePolicy = CachePolicy.USE,
        wheres: Sequence[str] | None = None,
    ) -> list[Generation | Exception]:
        """One result per request, in order; a failed item never fails the others. Requests
        reach their backends together, so batching backends run them as one batch."""
        results = await asyncio.gather(
            *(
                self.generate(
                    request, policy, where=wheres[index] if wheres else f"inputs[{index}]"
                )
                for index, request in enumerate(requests)
            ),
            return_exceptions=True,
        )
        out: list[Generation | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and friends are not per-item failures
            out.append(result)
        return out

    async def stream(
        self, request: GenerationInput, policy: CachePolicy = CachePolicy.USE
    ) -> AsyncIterator[StreamDelta | Generation]:
        """Text deltas as they are produced, then the finished generation."""
        plan = self._plan(request, "input")
        if policy == CachePolicy.USE and (hit := await self._cached(plan)) is not None:
            for choice in hit.choices:
                if choice.text:
                    yield StreamDelta(choice.index, choice.text)
            yield hit
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def sink(index: int, text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, StreamDelta(index, text))

        task = asyncio.create_task(self._compute(plan, policy, sink))
        # Scheduled after every delta the backend sent, so _DONE always comes last.
        task.add_done_callback(lambda _: loop.call_soon(queue.put_nowait, _DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                assert isinstance(item, StreamDelta)
                yield item
            yield task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def lookup(self, generation_ids: Sequence[str]) -> tuple[list[Generation], list[str]]:
        """Cached generations by id, and the ids that are not in the cache."""
        found = await asyncio.gather(*(self._cache.get(key) for key in generation_ids))
        hits = [replace(generation, cached=True) for generation in found if generation is not None]
        missing = [key for key, value in zip(generation_ids, found, strict=True) if value is None]
        return hits, missing

    def generation_id_of(self, request: GenerationInput) -> str:
        """The cache key the request would be answered under (validates it)."""
        return self._plan(request, "input").generation_id

    # --- internals -----------------------------------------------------------------------------

    def _plan(self, request: GenerationInput, where: str, spec: ModelSpec | None = None) -> _Plan:
        validate_input(request, where)
        spec = spec or self.registry.spec(request.model.name)
        sampling = request.sampling.merged(spec.default_sampling)
        if sampling.max_tokens is None:
            sampling = replace(sampling, max_tokens=self._options.default_max_tokens)
        pinned = bool(request.model.revision)
        model = ModelRef(
            spec.name,
            request.model.revision if pinned else spec.resolved_revision,
            request.model.adapter,
        )
        return _Plan(
            request=request,
            model=model,
            sampling=sampling,
            generation_id=generation_id(model, request.messages, sampling),
            pinned_revision=pinned,
        )

    async def _cached(self, plan: _Plan) -> Generation | None:
        hit = await self._cache.get(plan.generation_id)
        self._telemetry.cache_lookup(hit is not None)
        if hit is None:
            return None
        backend = self.registry.spec(plan.model.name).backend
        self._telemetry.request_finished(plan.model.name, backend, "cached")
        return replace(hit, cached=True)

    async def _compute(
        self, plan: _Plan, policy: CachePolicy, on_delta: DeltaSink | None
    ) -> Generation:
        started = time.perf_counter()
        name = plan.model.name
        spec = self.registry.spec(name)
        try:
            async with self.registry.lease(name) as (spec, backend):
                plan = self._check_against(plan, spec, backend)
                completion, called = await self._call(plan, backend, on_delta)
        except Exception as error:
            self._telemetry.error(name, spec.backend, _reason(error))
            self._telemetry.request_finished(name, spec.backend, "error")
            raise
        latency = time.perf_counter() - started
        ttft = None
        if completion.time_to_first_token is not None:  # plus the wait before the backend call
            ttft = called - started + completion.time_to_first_token
        generation = Generation(
            generation_id=plan.generation_id,
            model=plan.model,
            choices=completion.choices,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            latency_seconds=latency,
            time_to_first_token=ttft,
            created_at=datetime.now(UTC),
            backend=spec.backend,
            prompt_sha256=prompt_sha256(plan.request.messages),
        )
        if policy != CachePolicy.BYPASS:
            await self._cache.put(generation)
        self._telemetry.generated(name, spec.backend, generation.completion_tokens, latency, ttft)
        self._telemetry.request_finished(name, spec.backend, "ok")
        return generation

    def _check_against(self, plan: _Plan, spec: ModelSpec, backend: ModelBackend) -> _Plan:
        """The plan for the model as it is now loaded (a swap may have happened meanwhile)."""
        if plan.pinned_revision and plan.model.revision != spec.resolved_revision:
            raise NotFoundError(
                f"model {spec.name!r} is at revision {spec.resolved_revision!r}; revision "
                f"{plan.model.revision!r} has no cached answer for this request and is not loaded"
            )
        if not plan.pinned_revision and plan.model.revision != spec.resolved_revision:
            plan = self._plan(plan.request, "input", spec)
        adapter = plan.model.adapter
        if adapter and adapter not in backend.loaded_adapters:
            attached = ", ".join(backend.loaded_adapters) or "none"
            raise NotFoundError(
                f"adapter {adapter!r} is not attached to model {spec.name!r} (attached: {attached})"
            )
        return plan

    async def _call(
        self, plan: _Plan, backend: ModelBackend, on_delta: DeltaSink | None
    ) -> tuple[Completion, float]:
        prompt = backend.prepare(plan.request.messages)
        sampling = plan.sampling
        context = backend.context_length
        if context is not None and prompt.token_count is not None:
            room = check_context(plan.model.name, prompt.token_count, context)
            if sampling.max_tokens is None or sampling.max_tokens > room:
                sampling = replace(sampling, max_tokens=room)
        request = BackendRequest(
            prompt=prompt,
            sampling=sampling,
            adapter=plan.model.adapter,
            request_id=f"{plan.generation_id[:16]}-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            on_delta=on_delta,
        )
        self._telemetry.queue_depth(plan.model.name, 1)
        called = time.perf_counter()
        try:
            (result,) = await backend.generate([request])
        finally:
            self._telemetry.queue_depth(plan.model.name, -1)
        if isinstance(result, Exception):
            raise result
        return result, called


def _reason(error: BaseException) -> str:
    return type(error).__name__ if isinstance(error, ArenaError) else "internal"
