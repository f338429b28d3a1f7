"""Runs the real inference service (ServiceHost + app wiring) in the test's event loop, against
the session's nats-server, on free ports; stopping and starting it again is a service restart
(a fresh registry, engine and backends; only JetStream keeps state)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
from grpc import aio
from nats.js.errors import NotFoundError

from arena.inference.v1 import inference_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import free_port
from arena_core.bus.subjects import stream_name
from arena_core.rpc.client import service_channel
from arena_core.service_host import ServiceHost
from arena_core.settings import GrpcSettings, MetricsSettings, NatsSettings
from arena_inference.app import GENERATION_CONSUMER, wiring
from arena_inference.settings import InferenceOptions, InferenceSettings
from tests.support.tiny_models import tiny_chat_model

WORK_STREAM = stream_name("work", "inference")


def tiny_model_declaration(name: str = "tiny", **fields: Any) -> dict[str, Any]:
    return {"name": name, "backend": "transformers", "uri": str(tiny_chat_model()), **fields}


def service_settings(nats_url: str, **inference: Any) -> InferenceSettings:
    """Settings for one test service; buckets are unique unless the caller passes them."""
    suffix = uuid.uuid4().hex[:8]
    options: dict[str, Any] = {
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "cache_bucket": f"test-generations-{suffix}",
        "registry_bucket": f"test-models-{suffix}",
        "queue_concurrency": 8,
        "batch_window_ms": 5,
        **inference,
    }
    return InferenceSettings(
        nats=NatsSettings(url=nats_url),
        grpc=GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
        inference=InferenceOptions(**options),
    )


@dataclass
class RunningService:
    host: ServiceHost
    settings: InferenceSettings
    channel: aio.Channel
    stub: pb_grpc.InferenceServiceStub

    @property
    def grpc_address(self) -> str:
        assert self.host.grpc is not None
        return f"127.0.0.1:{self.host.grpc.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.inference.http_port}/v1"


async def _clear_foreign_consumers(url: str) -> None:
    """A work-queue stream allows no two consumers with overlapping filters: drop what other
    suites (e.g. the bus tests' throw-away consumers) left on the inference work queue."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        with contextlib.suppress(NotFoundError):
            for consumer in await js.consumers_info(WORK_STREAM):
                if consumer.name != GENERATION_CONSUMER:
                    await js.delete_consumer(WORK_STREAM, consumer.name)
    finally:
        await client.drain()


@contextlib.asynccontextmanager
async def running_service(settings: InferenceSettings) -> AsyncIterator[RunningService]:
    await _clear_foreign_consumers(settings.nats.url)
    host = ServiceHost("inference", settings, wiring(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    ready = asyncio.create_task(host.ready.wait())
    await asyncio.wait([task, ready], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if not host.ready.is_set():
        ready.cancel()
        stop.set()
        if task.done():
            task.result()  # the start-up error
        raise TimeoutError("the inference service did not become ready")
    assert host.grpc is not None
    channel = service_channel(f"127.0.0.1:{host.grpc.port}")
    try:
        yield RunningService(host, settings, channel, pb_grpc.InferenceServiceStub(channel))
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, timeout=60)
