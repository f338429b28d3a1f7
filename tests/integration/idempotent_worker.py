"""A consumer process for the crash test: records each battle once, keyed by its event id.

Usage: python -m tests.integration.idempotent_worker NATS_URL DURABLE ATTEMPTS_LOG STALL_ON_PROMPT

On the first delivery of the message whose prompt is STALL_ON_PROMPT it writes its effect, logs
`stalled`, and hangs before acknowledging — the test SIGKILLs it there.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats

from arena.inference.v1 import events_pb2
from arena_core.bus.consumer import Delivery, EventConsumer
from arena_core.bus.state import ProcessedLedger
from arena_core.bus.topology import ConsumerSpec, ensure_key_value, stream_of
from arena_core.settings import ConsumerSettings, NatsSettings

EFFECTS_BUCKET = "crash_test_battles"


async def main(url: str, durable: str, attempts_log: Path, stall_on: str) -> None:
    client = await nats.connect(url)
    js = client.jetstream()
    battles = ProcessedLedger(await ensure_key_value(js, EFFECTS_BUCKET, NatsSettings(url=url)))

    def log(line: str) -> None:
        with attempts_log.open("a") as output:
            output.write(line + "\n")

    async def record_battle(event: events_pb2.GenerationRequested, delivery: Delivery) -> None:
        prompt = event.task.input.messages[0].content
        log(f"attempt {prompt} {delivery.attempt}")
        # The effect and its idempotency key are one keyed write: a redelivery finds it done.
        if await battles.claim(f"battle.{event.metadata.event_id}"):
            log(f"effect {prompt}")
        if prompt == stall_on and delivery.attempt == 1:
            log("stalled")
            await asyncio.sleep(3600)

    spec = ConsumerSpec(
        durable=durable,
        stream=stream_of(events_pb2.GenerationRequested).name,
        message_types=(events_pb2.GenerationRequested,),
        policy=ConsumerSettings(ack_wait_seconds=2.0, fetch_batch=1),
    )
    consumer = EventConsumer(
        js, spec, {events_pb2.GenerationRequested: record_battle}, "crash-test"
    )
    log("ready")
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
