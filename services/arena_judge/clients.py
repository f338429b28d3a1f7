"""Outbound calls to the inference service: batched judge-model calls and answer look-ups.

Concurrent judge calls are collected for up to `batch_window_ms` (or until `batch_size` inputs)
and sent as one `GenerateBatch`, so the backend batches them too; at most `max_calls_in_flight`
calls are in flight. Answers referenced by generation id come from `GetGenerations`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb2
from arena.inference.v1 import inference_service_pb2_grpc as inference_grpc
from arena_core.errors import (
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_core.rpc.client import service_channel
from arena_judge import metrics
from arena_judge.convert import chat_messages
from arena_judge.domain.engine import Completion, JudgeDefinition
from arena_judge.domain.verdicts import Message

log = logging.getLogger(__name__)

_Pending = tuple[inference_pb2.GenerationInput, "asyncio.Future[inference_pb2.Generation]"]


class GenerationFailedError(ArenaError):
    """The inference service answered but could not produce this generation."""

    def __init__(self, failure: common_pb2.Failure) -> None:
        self.failure = failure
        super().__init__(f"{failure.reason}: {failure.message}")


def _mapped(error: aio.AioRpcError, what: str) -> ArenaError:
    code = error.code()
    message = f"inference service {what}: {error.details()}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(message)
    return UnavailableError(f"{message} ({code.name})")


class InferenceClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_seconds: float = 600.0,
        batch_size: int = 16,
        batch_window_seconds: float = 0.01,
        max_calls_in_flight: int = 8,
    ) -> None:
        self._channel = service_channel(target)
        self._stub = inference_grpc.InferenceServiceStub(self._channel)
        self._timeout = timeout_seconds
        self._batch_size = batch_size
        self._window = batch_window_seconds
        self._slots = asyncio.Semaphore(max_calls_in_flight)
        self._pending: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._channel.close()

    async def generate(
        self, generation_input: inference_pb2.GenerationInput
    ) -> inference_pb2.Generation:
        future: asyncio.Future[inference_pb2.Generation] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((generation_input, future))
        if len(self._pending) >= self._batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._window, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = (
                self._pending[: self._batch_size],
                self._pending[self._batch_size :],
            )
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: Sequence[_Pending]) -> None:
        request = inference_pb2.GenerateBatchRequest(
            inputs=[item for item, _ in batch], cache_policy=common_pb2.CACHE_POLICY_USE
        )
        try:
            async with self._slots:
                metrics.INFERENCE_BATCHES.inc()
                response = await self._stub.GenerateBatch(request, timeout=self._timeout)
        except aio.AioRpcError as error:
            failure = _mapped(error, "GenerateBatch failed")
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        except BaseException as error:  # cancelled: nobody must wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(UnavailableError(f"GenerateBatch aborted: {error!r}"))
            raise
        results = {result.index: result for result in response.results}
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            result = results.get(index)
            if result is None:
                future.set_exception(UnavailableError(f"GenerateBatch returned no result {index}"))
            elif result.HasField("generation"):
                future.set_result(result.generation)
            else:
                future.set_exception(GenerationFailedError(result.failure))

    async def get_generations(
        self, generation_ids: Sequence[str]
    ) -> tuple[dict[str, inference_pb2.Generation], list[str]]:
        """The cached generations found, and the ids the inference service does not have."""
        unique = list(dict.fromkeys(generation_ids))
        if not unique:
            return {}, []
        try:
            response = await self._stub.GetGenerations(
                inference_pb2.GetGenerationsRequest(generation_ids=unique), timeout=self._timeout
            )
        except aio.AioRpcError as error:
            raise _mapped(error, "GetGenerations failed") from None
        found = {g.generation_id: g for g in response.generations}
        missing = [i for i in unique if i not in found]
        return found, missing


class InferenceCompletions:
    """The domain's CompletionPort over the inference service.

    Re-samples (attempt > 0) change the seed, and give a greedy judge a sampling temperature, so
    the answer cache of the inference service cannot hand back the same unparsable text.
    """

    def __init__(self, client: InferenceClient, retry_temperature: float) -> None:
        self._client = client
        self._retry_temperature = retry_temperature

    async def complete(
        self, judge: JudgeDefinition, messages: Sequence[Message], attempt: int
    ) -> Completion:
        spec: common_pb2.JudgeSpec = judge.handle
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(spec.sampling)
        sampling.n = 1
        if attempt > 0:
            base = spec.sampling.seed if spec.sampling.HasField("seed") else 0
            sampling.seed = base + attempt
            if not spec.sampling.HasField("temperature") or spec.sampling.temperature == 0:
                sampling.temperature = self._retry_temperature
        generation_input = inference_pb2.GenerationInput(
            model=spec.model, messages=chat_messages(messages), sampling=sampling
        )
        metrics.MODEL_CALLS.labels(judge.label).inc()
        generation = await self._client.generate(generation_input)
        text = generation.choices[0].text if generation.choices else ""
        return Completion(
            text=text,
            prompt_tokens=generation.usage.prompt_tokens,
            completion_tokens=generation.usage.completion_tokens,
        )
