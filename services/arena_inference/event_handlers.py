"""The generation work queue: `GenerationRequested` and `GenerationBatchRequested` handlers.

Answers go through the engine, so they are stored in the KV answer cache under their generation
id before the result is published: a redelivery (after a crash or a lost ack) is served from the
cache and re-publishes the result under the same deterministic event id, which JetStream drops as
a duplicate. Nothing is generated twice.

Failures that cannot succeed on retry (bad input, unknown model) are answered at once with
`GenerationFailed`; transient ones are retried by the consumer until the delivery budget is
spent, then answered with `GenerationFailed` (retryable=true).
"""

from __future__ import annotations

import logging

from arena.inference.v1 import events_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_core.bus.consumer import Delivery
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.errors import ArenaError, InvalidArgumentError
from arena_inference.convert import (
    cache_policy_from_proto,
    failure_of,
    generation_to_proto,
    input_from_proto,
)
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.types import CachePolicy, Generation, GenerationInput

log = logging.getLogger(__name__)


class GenerationWorker:
    def __init__(
        self, engine: InferenceEngine, publisher: EventPublisher, max_deliveries: int
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._max_deliveries = max_deliveries

    async def on_generation(
        self, event: events_pb2.GenerationRequested, delivery: Delivery
    ) -> None:
        task = event.task
        cause = _cause(event.metadata.event_id, delivery)
        try:
            request = input_from_proto(task.input, "task.input")
            generation = await self._engine.generate(
                request, cache_policy_from_proto(task.cache_policy), where="task.input"
            )
        except Exception as error:
            failure = failure_of(error)
            if failure.retryable and delivery.attempt < self._max_deliveries:
                raise  # transient: the consumer retries with backoff
            failed = events_pb2.GenerationFailed(
                error=pb.GenerationError(
                    generation_id=self._id_or_empty(task.input),
                    model=task.input.model,
                    failure=failure,
                    attempts=delivery.attempt,
                    context=task.context,
                )
            )
            log.warning("generation failed: %s", failure.message)
            await self._publisher.publish(
                failed,
                event_id=stable_event_id("inference.GenerationFailed", cause),
                caused_by=event,
            )
            return
        completed = events_pb2.GenerationCompleted(
            generation=generation_to_proto(generation, task.context)
        )
        await self._publisher.publish(
            completed,
            event_id=stable_event_id("inference.GenerationCompleted", cause),
            caused_by=event,
        )

    async def on_batch(
        self, event: events_pb2.GenerationBatchRequested, delivery: Delivery
    ) -> None:
        cause = _cause(event.metadata.event_id, delivery)
        outcomes: list[Generation | Exception | None] = [None] * len(event.tasks)
        by_policy: dict[CachePolicy, list[tuple[int, GenerationInput]]] = {}
        for index, task in enumerate(event.tasks):
            try:
                request = input_from_proto(task.input, f"tasks[{index}].input")
            except InvalidArgumentError as error:
                outcomes[index] = error
                continue
            by_policy.setdefault(cache_policy_from_proto(task.cache_policy), []).append(
                (index, request)
            )
        for policy, items in by_policy.items():
            results = await self._engine.generate_batch(
                [request for _, request in items],
                policy,
                wheres=[f"tasks[{index}].input" for index, _ in items],
            )
            for (index, _), result in zip(items, results, strict=True):
                outcomes[index] = result
        transient = [
            outcome
            for outcome in outcomes
            if isinstance(outcome, Exception) and failure_of(outcome).retryable
        ]
        if transient and delivery.attempt < self._max_deliveries:
            # Finished items are cached, so the retry only computes what failed.
            raise transient[0]
        completed = events_pb2.GenerationBatchCompleted()
        for task, outcome in zip(event.tasks, outcomes, strict=True):
            if isinstance(outcome, Generation):
                completed.generations.append(generation_to_proto(outcome, task.context))
            else:
                assert outcome is not None
                completed.errors.append(
                    pb.GenerationError(
                        generation_id=self._id_or_empty(task.input),
                        model=task.input.model,
                        failure=failure_of(outcome),
                        attempts=delivery.attempt,
                        context=task.context,
                    )
                )
        await self._publisher.publish(
            completed,
            event_id=stable_event_id("inference.GenerationBatchCompleted", cause),
            caused_by=event,
        )

    def _id_or_empty(self, message: pb.GenerationInput) -> str:
        try:
            return self._engine.generation_id_of(input_from_proto(message))
        except ArenaError:
            return ""


def _cause(event_id: str, delivery: Delivery) -> str:
    return event_id or f"{delivery.subject}#{delivery.stream_sequence}"
