"""Bus handlers: judged games in (JudgmentCompleted, JudgmentBatchCompleted), and the
RatingsRequested work item answered by RatingsPublished or RatingsFailed.

Ingestion is idempotent by construction: each battle is one KV create under its identity
``(arena, battle_id, game)`` (judgment id when the battle id is empty), so a redelivery, a
re-publish under another event id, or a crash between the write and the ack counts nothing
twice. A judgment without a verdict (parse failure), without an arena, or of a single-answer
protocol makes no battle.

Answers to a work item derive their ids from the request's event id: a redelivered request
stores the same snapshot id and re-publishes under the same event id, which JetStream drops.
"""

from __future__ import annotations

import logging
import time

from arena.judge.v1 import events_pb2 as judge_events
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import events_pb2
from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.bus.consumer import Delivery
from arena_core.bus.events import EventPublisher, metadata_of, stable_event_id
from arena_core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from arena_core.hashing import content_hash
from arena_rating import metrics
from arena_rating.convert import battle_key, battle_of_judgment
from arena_rating.service import RatingApplication

log = logging.getLogger(__name__)


class NotEnoughBattlesError(UnavailableError):
    """The arena does not hold min_battles yet; judgments may still be in flight."""


def _cause(event: object) -> str:
    return metadata_of(event).event_id or content_hash(event)  # type: ignore[arg-type]


class JudgmentHandlers:
    def __init__(self, app: RatingApplication, strong_weight: float) -> None:
        self._app = app
        self._strong_weight = strong_weight

    async def on_judgment(self, event: judge_events.JudgmentCompleted, delivery: Delivery) -> None:
        await self._ingest([event.judgment], event)

    async def on_batch(
        self, event: judge_events.JudgmentBatchCompleted, delivery: Delivery
    ) -> None:
        await self._ingest(list(event.judgments), event)

    async def _ingest(
        self,
        judgments: list[judge_pb.Judgment],
        event: judge_events.JudgmentCompleted | judge_events.JudgmentBatchCompleted,
    ) -> None:
        cause = _cause(event)
        keyed = []
        for index, judgment in enumerate(judgments):
            battle, reason = battle_of_judgment(judgment, self._strong_weight)
            if battle is None:
                metrics.JUDGMENTS_SKIPPED.labels(reason).inc()
                continue
            # Without battle and judgment ids the event's own position is the identity.
            keyed.append((battle_key(battle, f"{cause}/{index}"), battle))
        if keyed:
            await self._app.record(
                keyed, pb.BATTLE_SOURCE_JUDGMENTS, event_id_base=cause, caused_by=event
            )


class RatingsRequestHandler:
    """Publishes the requested leaderboard once the arena holds ``min_battles``."""

    def __init__(
        self,
        app: RatingApplication,
        publisher: EventPublisher,
        max_deliveries: int,
        wait_seconds: float,
    ) -> None:
        self._app = app
        self._publisher = publisher
        self._max_deliveries = max_deliveries
        self._wait_seconds = wait_seconds

    async def __call__(self, request: events_pb2.RatingsRequested, delivery: Delivery) -> None:
        cause = _cause(request)
        try:
            if request.HasField("min_battles"):
                await self._wait_for_battles(request)
            await self._app.publish(
                request.query,
                pb.PUBLISH_TRIGGER_WORK_ITEM,
                snapshot_id=content_hash("arena.rating.snapshot/v1", "work-item", cause),
                context=request.context,
                caused_by=request,
            )
        except InvalidArgumentError as error:
            await self._fail(request, cause, "INVALID_ARGUMENT", str(error), retryable=False)
        except NotFoundError as error:
            await self._fail(request, cause, "NOT_FOUND", str(error), retryable=False)
        except UnavailableError as error:
            if delivery.attempt < self._max_deliveries:
                raise  # retried with backoff: the battles may still be on their way
            reason = (
                "NOT_ENOUGH_BATTLES" if isinstance(error, NotEnoughBattlesError) else "UNAVAILABLE"
            )
            await self._fail(request, cause, reason, str(error), retryable=True)

    async def _wait_for_battles(self, request: events_pb2.RatingsRequested) -> None:
        query = self._app.resolve(request.query)
        wanted = request.min_battles
        if wanted < 0:
            raise InvalidArgumentError(f"must not be negative, got {wanted}", where="min_battles")
        aggregates = self._app.aggregates
        deadline = time.monotonic() + self._wait_seconds
        await aggregates.catch_up()
        while True:
            state = aggregates.arenas.get(query.arena)
            have = state.battle_count if state is not None else 0
            left = deadline - time.monotonic()
            if have >= wanted:
                return
            if left <= 0:
                raise NotEnoughBattlesError(
                    f"arena {query.arena!r} holds {have} battles of {wanted} wanted"
                )
            await aggregates.changed(query.arena, state.version if state else 0, left)

    async def _fail(
        self,
        request: events_pb2.RatingsRequested,
        cause: str,
        reason: str,
        message: str,
        *,
        retryable: bool,
    ) -> None:
        log.warning("ratings request failed: %s", message, extra={"reason": reason})
        failed = events_pb2.RatingsFailed(query=request.query, context=request.context)
        failed.failure.reason = reason
        failed.failure.message = message
        failed.failure.retryable = retryable
        await self._publisher.publish(
            failed,
            event_id=stable_event_id("arena.rating.v1", "RatingsFailed", cause),
            caused_by=request,
        )
