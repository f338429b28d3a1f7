"""Composition root of the inference service: the one place its adapters are wired together.

Many models behind one API: the registry (declared models, runtime registrations kept in KV), the
engine with the KV answer cache, the gRPC InferenceService, the generation work queue, the
OpenAI-compatible HTTP endpoint, Prometheus telemetry and the GPU memory sampler.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import AsyncExitStack
from typing import Any

from google.protobuf.message import Message

from arena.inference.v1 import events_pb2, inference_service_pb2, inference_service_pb2_grpc
from arena_core.bus.consumer import Handler
from arena_core.bus.events import EventPublisher
from arena_core.bus.topology import (
    ConsumerSpec,
    domain_streams,
    ensure_key_value,
    ensure_streams,
)
from arena_core.errors import ArenaError
from arena_core.lifecycle import cancel_and_wait
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_inference.answer_cache import KvAnswerCache
from arena_inference.backends.factory import backend_factory, secret_resolver
from arena_inference.convert import (
    BACKEND_TO_PROTO,
    model_ref_to_proto,
    spec_from_declaration,
    spec_to_proto,
)
from arena_inference.domain import registry as reg
from arena_inference.domain.engine import EngineOptions, InferenceEngine
from arena_inference.domain.registry import ModelRegistry
from arena_inference.event_handlers import GenerationWorker
from arena_inference.grpc_api import InferenceServicer
from arena_inference.http_api import OpenAIHttpServer
from arena_inference.metrics import PrometheusTelemetry, gpu_memory_sampler, sample_gpu_memory
from arena_inference.registry_store import RegistryStore
from arena_inference.settings import InferenceSettings

log = logging.getLogger(__name__)

SERVICE_DESCRIPTOR = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]
GENERATION_CONSUMER = "inference-generation"


def wiring(settings: InferenceSettings) -> Wiring:
    options = settings.inference
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        streams = domain_streams("inference")
        # Early, so the registry's events published while wiring have their stream.
        await ensure_streams(bus.js, streams, settings.nats)
        declarations = options.declarations()

        registry = ModelRegistry(
            backend_factory(options, secret_resolver(options)), instance=options.instance
        )
        registry.add_listener(RegistryEvents(bus.publisher, options.instance).publish)
        stack.push_async_callback(registry.close)
        cache = KvAnswerCache(await ensure_key_value(bus.js, options.cache_bucket, settings.nats))
        engine = InferenceEngine(
            registry,
            cache,
            PrometheusTelemetry(),
            EngineOptions(default_max_tokens=options.default_max_tokens),
        )

        for declaration in declarations:
            await registry.register(spec_from_declaration(declaration))
        store = RegistryStore(
            await ensure_key_value(bus.js, options.registry_bucket, settings.nats), registry
        )
        restored = await store.restore()
        if restored:
            log.info("restored runtime model registrations: %s", ", ".join(sorted(restored)))
        if options.load_on_start:
            for declaration in declarations:
                if declaration.name in restored:
                    continue  # its stored desired state was applied
                try:
                    await registry.load(declaration.name)
                except ArenaError as error:  # serve the other models; this one retries on use
                    log.error("model %r did not load at start-up: %s", declaration.name, error)

        if options.http_port:
            api_key = options.http_api_key.get_secret_value() if options.http_api_key else None
            http = OpenAIHttpServer(engine, options.http_host, options.http_port, api_key)
            await http.start()
            stack.push_async_callback(http.stop)

        worker = GenerationWorker(engine, bus.publisher, policy.max_deliveries)
        # One message per fetch, so the messages spread over the handlers running at once and
        # reach the backends together (batching across work items).
        consumer = ConsumerSpec.on(
            GENERATION_CONSUMER,
            [events_pb2.GenerationRequested, events_pb2.GenerationBatchRequested],
            policy.model_copy(update={"fetch_batch": 1}),
        )
        handlers: dict[type[Message], Handler] = {
            events_pb2.GenerationRequested: worker.on_generation,
            events_pb2.GenerationBatchRequested: worker.on_batch,
        }
        # Long-running helpers are owned here, not by ServiceParts.background: the host waits
        # up to 15 s for background jobs to end on their own at shutdown; these never do.
        helpers = [
            asyncio.create_task(store.follow(), name="inference-registry-follow"),
            asyncio.create_task(
                gpu_memory_sampler(options.gpu_metrics_interval_seconds), name="gpu-memory"
            ),
        ]
        stack.push_async_callback(cancel_and_wait, helpers)
        await asyncio.to_thread(sample_gpu_memory)  # before the freeze: it may import torch
        # What exists now (modules, settings, loaded models) lives as long as the service: keep
        # it out of the collector's full passes, which otherwise walk every object of torch,
        # grpc and protobuf and pause the event loop for a tenth of a second or more.
        gc.collect()
        gc.freeze()
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    InferenceServicer(engine, store),
                    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*streams],
            subscriptions=[Subscription(consumer, handlers)] * options.queue_concurrency,
        )

    return wire


class RegistryEvents:
    """Publishes the registry's facts as ModelRegistered, ModelLoaded, ... events."""

    def __init__(self, publisher: EventPublisher, instance: str) -> None:
        self._publisher = publisher
        self._instance = instance

    async def publish(self, event: reg.RegistryEvent) -> None:
        message: Any
        if isinstance(event, reg.ModelRegistered):
            message = events_pb2.ModelRegistered(
                spec=spec_to_proto(event.spec), replaced=event.replaced
            )
        elif isinstance(event, reg.ModelUnregistered):
            message = events_pb2.ModelUnregistered(name=event.name)
        elif isinstance(event, reg.ModelLoaded):
            message = events_pb2.ModelLoaded(
                model=model_ref_to_proto(event.model),
                backend=BACKEND_TO_PROTO[event.backend],
                instance=self._instance,
            )
            message.load_duration.FromNanoseconds(round(event.load_seconds * 1e9))
        elif isinstance(event, reg.ModelLoadFailed):
            message = events_pb2.ModelLoadFailed(
                model=model_ref_to_proto(event.model),
                backend=BACKEND_TO_PROTO[event.backend],
                instance=self._instance,
            )
            message.failure.reason = event.reason
            message.failure.message = event.message
            message.failure.retryable = True
        else:
            message = events_pb2.ModelUnloaded(
                model=model_ref_to_proto(event.model), instance=self._instance
            )
        await self._publisher.publish(message)
