"""Composition root of the judge service: the one place its adapters are wired together.

The judge service judges answer pairs in both position orders with LLM and reference judges:
gRPC for synchronous judging, grades and rewards; the `judge-judgment` work queue for
`JudgmentRequested` / `JudgmentBatchRequested`; judgments cached in JetStream KV by content hash;
judge models called through the inference service.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.judge.v1 import events_pb2, judge_service_pb2, judge_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams, ensure_key_value, stream_for
from arena_core.errors import ConfigurationError, InvalidArgumentError
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_judge.clients import InferenceClient, InferenceCompletions
from arena_judge.domain.engine import JudgeEngine
from arena_judge.domain.templates import TemplateCatalog
from arena_judge.event_handlers import JudgmentHandlers
from arena_judge.grpc_api import JudgeServicer
from arena_judge.service import JudgeApplication
from arena_judge.settings import JudgeSettings
from arena_judge.store import KvJudgmentCache, SpecRegistry

SERVICE_DESCRIPTOR = judge_service_pb2.DESCRIPTOR.services_by_name["JudgeService"]


def wiring(settings: JudgeSettings) -> Wiring:
    options = settings.judge
    try:
        # Loaded before anything starts: a bad template file stops the service with exit code 2.
        templates = TemplateCatalog.from_paths(options.template_files)
    except InvalidArgumentError as error:
        raise ConfigurationError(f"ARENA_JUDGE__TEMPLATE_PATHS: {error}") from None

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        client = InferenceClient(
            options.inference_target,
            timeout_seconds=options.inference_timeout_seconds,
            batch_size=options.batch_size,
            batch_window_seconds=options.batch_window_ms / 1000,
            max_calls_in_flight=options.max_calls_in_flight,
        )
        stack.push_async_callback(client.close)
        cache = KvJudgmentCache(await ensure_key_value(bus.js, options.cache_bucket, settings.nats))
        specs = SpecRegistry(await ensure_key_value(bus.js, options.spec_bucket, settings.nats))
        engine = JudgeEngine(templates, InferenceCompletions(client, options.retry_temperature))
        app = JudgeApplication(
            engine,
            client,
            cache,
            specs,
            default_retries=options.default_max_parse_retries,
            max_concurrency=options.max_concurrency,
        )
        handlers = JudgmentHandlers(app, bus.publisher, settings.consumer.max_deliveries)
        # Several pullers on the one durable, each taking one message at a time: single work
        # items are judged side by side, so their model calls share GenerateBatch calls.
        policy = settings.consumer
        if options.queue_workers > 1:
            policy = policy.model_copy(update={"fetch_batch": 1})
        consumer = ConsumerSpec.on(
            "judge-judgment",
            [events_pb2.JudgmentRequested, events_pb2.JudgmentBatchRequested],
            policy,
        )
        subscription = Subscription(
            consumer,
            {
                events_pb2.JudgmentRequested: handlers.on_judgment,
                events_pb2.JudgmentBatchRequested: handlers.on_batch,
            },
        )
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    JudgeServicer(app),
                    judge_service_pb2_grpc.add_JudgeServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("judge"), stream_for("events", "inference")],
            subscriptions=[subscription] * options.queue_workers,
        )

    return wire
