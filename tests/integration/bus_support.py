"""Helpers for bus tests: a JetStream connection and the work-queue topology of one consumer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.js import JetStreamContext

from arena.inference.v1 import events_pb2
from arena_core.bus.topology import (
    DEAD_LETTERS,
    ConsumerSpec,
    ensure_consumer,
    ensure_streams,
    stream_of,
)
from arena_core.settings import ConsumerSettings, NatsSettings

WORK_ITEM = events_pb2.GenerationRequested


def generation_request(prompt: str, event_id: str | None = None) -> events_pb2.GenerationRequested:
    request = events_pb2.GenerationRequested()
    request.metadata.event_id = event_id or uuid.uuid4().hex
    request.task.input.model.name = "tiny"
    message = request.task.input.messages.add()
    message.content = prompt
    return request


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(url)
    try:
        yield client.jetstream()
    finally:
        await client.drain()


async def work_queue_consumer(
    js: JetStreamContext, url: str, durable: str | None = None, **policy: float
) -> ConsumerSpec:
    """A fresh durable consumer on the inference work queue, purged so tests stay independent."""
    settings = NatsSettings(url=url)
    stream = stream_of(WORK_ITEM)
    await ensure_streams(js, [DEAD_LETTERS, stream], settings)
    await js.purge_stream(stream.name)
    for existing in await js.consumers_info(stream.name):
        await js.delete_consumer(stream.name, existing.name)
    spec = ConsumerSpec(
        durable=durable or f"test-{uuid.uuid4().hex[:8]}",
        stream=stream.name,
        message_types=(WORK_ITEM,),
        policy=ConsumerSettings(**policy),  # type: ignore[arg-type]
    )
    await ensure_consumer(js, spec)
    return spec
