"""Composition root of the rating service: the one place its adapters are wired together.

The rating service turns judged battles into Bradley-Terry Elo leaderboards with bootstrap CIs:
judged games arrive as JudgmentCompleted / JudgmentBatchCompleted on the `rating-judgments`
durable consumer and are kept, one KV entry per battle, in the battles bucket; every replica
folds that bucket into per-arena cell counts (checkpointed to the aggregates bucket); leaderboards
are fitted on demand over gRPC, for RatingsRequested work items (`rating-requests`) and on a
schedule, and published snapshots are kept in the snapshots bucket.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as NatsNotFoundError

from arena.judge.v1 import events_pb2 as judge_events_pb2
from arena.rating.v1 import events_pb2, rating_service_pb2, rating_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams, ensure_key_value, stream_for
from arena_core.lifecycle import cancel_and_wait
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_rating.aggregator import Aggregates
from arena_rating.event_handlers import JudgmentHandlers, RatingsRequestHandler
from arena_rating.grpc_api import RatingServicer
from arena_rating.service import RatingApplication
from arena_rating.settings import RatingSettings
from arena_rating.store import BattleLedger, CheckpointStore, SnapshotStore, bucket_exists

SERVICE_DESCRIPTOR = rating_service_pb2.DESCRIPTOR.services_by_name["RatingService"]
JUDGMENTS_DURABLE = "rating-judgments"
REQUESTS_DURABLE = "rating-requests"

log = logging.getLogger(__name__)


async def _replay_judgments(js: JetStreamContext, stream: str) -> None:
    """Delete the judgments consumer so the host recreates it at the start of the judge stream."""
    try:
        info = await js.consumer_info(stream, JUDGMENTS_DURABLE)
    except NatsNotFoundError:
        return  # first start: the consumer is created from the beginning anyway
    if info.delivered.stream_seq:
        log.warning(
            "battles bucket was missing; re-reading the judge event stream from its start "
            "(battles recorded over RPC are not recoverable)"
        )
        await js.delete_consumer(stream, JUDGMENTS_DURABLE)


def wiring(settings: RatingSettings) -> Wiring:
    policy = settings.consumer
    options = settings.rating

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        judgments = ConsumerSpec.on(
            JUDGMENTS_DURABLE,
            [judge_events_pb2.JudgmentCompleted, judge_events_pb2.JudgmentBatchCompleted],
            policy,
        )
        lost = not await bucket_exists(bus.js, options.battles_bucket)
        battles_kv = await ensure_key_value(bus.js, options.battles_bucket, settings.nats)
        if lost and options.replay_judgments_on_loss:
            await _replay_judgments(bus.js, judgments.stream)
        ledger = BattleLedger(battles_kv, options.battles_bucket, options.write_concurrency)
        checkpoints = CheckpointStore(
            await ensure_key_value(bus.js, options.aggregates_bucket, settings.nats)
        )
        snapshots = SnapshotStore(
            await ensure_key_value(bus.js, options.snapshots_bucket, settings.nats)
        )
        aggregates = Aggregates(
            bus.js,
            ledger,
            checkpoints,
            max_payload=bus.client.max_payload,
            catch_up_timeout=options.catch_up_timeout_seconds,
        )
        await aggregates.start()
        stack.push_async_callback(aggregates.close)
        app = RatingApplication(bus.js, bus.publisher, ledger, aggregates, snapshots, options)
        ingest = JudgmentHandlers(app, options.strong_verdict_weight)
        requests = RatingsRequestHandler(
            app, bus.publisher, policy.max_deliveries, options.request_wait_seconds
        )

        # Our own tasks rather than ServiceParts.background: the host waits up to 15 s for
        # background jobs to return on shutdown, and these loops never do. They are cancelled
        # once consumers and gRPC have stopped, before the final checkpoint.
        jobs = [
            asyncio.create_task(
                aggregates.run_checkpoints(options.checkpoint_interval_seconds),
                name="rating-checkpoints",
            ),
            asyncio.create_task(app.run_schedule(), name="rating-schedule"),
        ]
        stack.push_async_callback(cancel_and_wait, jobs)

        return ServiceParts(
            grpc_services=[
                grpc_service(
                    RatingServicer(app),
                    rating_service_pb2_grpc.add_RatingServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("rating"), stream_for("events", "judge")],
            subscriptions=[
                Subscription(
                    judgments,
                    {
                        judge_events_pb2.JudgmentCompleted: ingest.on_judgment,
                        judge_events_pb2.JudgmentBatchCompleted: ingest.on_batch,
                    },
                ),
                Subscription(
                    ConsumerSpec.on(REQUESTS_DURABLE, [events_pb2.RatingsRequested], policy),
                    {events_pb2.RatingsRequested: requests},
                ),
            ],
        )

    return wire
