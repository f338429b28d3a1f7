"""Work-queue handlers: `JudgmentRequested` and `JudgmentBatchRequested` in, results out.

Results copy the request's WorkContext and name it as their cause. Their event ids are derived
from the request's, so a redelivered request (the process died after publishing, before the ack)
re-publishes under the same id and JetStream drops the repeat; the judgment itself comes from
the cache, so the judge model is not called again either.

A failure that may pass (inference unreachable) is retried through the consumer's backoff; on the
last delivery it is published as `JudgmentFailed` (retryable) instead of being dead-lettered.
"""

from __future__ import annotations

from arena.judge.v1 import events_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_core.bus.consumer import Delivery
from arena_core.bus.events import EventPublisher, metadata_of, stable_event_id
from arena_core.errors import UnavailableError
from arena_core.hashing import content_hash
from arena_judge.service import JudgeApplication


def _event_id(
    kind: str, request: events_pb2.JudgmentRequested | events_pb2.JudgmentBatchRequested
) -> str:
    cause = metadata_of(request).event_id or content_hash(request)
    return stable_event_id("arena.judge.v1", kind, cause)


class JudgmentHandlers:
    def __init__(
        self, app: JudgeApplication, publisher: EventPublisher, max_deliveries: int
    ) -> None:
        self._app = app
        self._publisher = publisher
        self._max_deliveries = max_deliveries

    def _give_up(self, delivery: Delivery) -> bool:
        return delivery.attempt >= self._max_deliveries

    async def on_judgment(self, request: events_pb2.JudgmentRequested, delivery: Delivery) -> None:
        result = await self._app.judge_task(request.task)
        if isinstance(result, pb.JudgmentError):
            if result.failure.retryable and not self._give_up(delivery):
                raise UnavailableError(result.failure.message)
            await self._publisher.publish(
                events_pb2.JudgmentFailed(error=result),
                event_id=_event_id("JudgmentFailed", request),
                caused_by=request,
            )
            return
        await self._publisher.publish(
            events_pb2.JudgmentCompleted(judgment=result),
            event_id=_event_id("JudgmentCompleted", request),
            caused_by=request,
        )

    async def on_batch(
        self, request: events_pb2.JudgmentBatchRequested, delivery: Delivery
    ) -> None:
        results = await self._app.judge_tasks(list(request.tasks))
        errors = [r for r in results if isinstance(r, pb.JudgmentError)]
        if any(e.failure.retryable for e in errors) and not self._give_up(delivery):
            # Everything already judged is cached, so the retry only redoes what failed.
            raise UnavailableError(f"{len(errors)} of {len(results)} judgments failed; retrying")
        completed = events_pb2.JudgmentBatchCompleted(
            judgments=[r for r in results if isinstance(r, pb.Judgment)], errors=errors
        )
        await self._publisher.publish(
            completed,
            event_id=_event_id("JudgmentBatchCompleted", request),
            caused_by=request,
        )
