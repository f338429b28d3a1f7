"""The consumer loop against a real nats-server: dedupe, ack, retry and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from nats.js import JetStreamContext

from arena_core.bus.consumer import Delivery, EventConsumer, Handler
from arena_core.bus.events import EventPublisher
from arena_core.bus.subjects import (
    DEAD_LETTER_STREAM,
    dead_letter_subject,
    partition_token,
    subject_of,
)
from arena_core.bus.topology import ConsumerSpec, ensure_consumer
from arena_core.errors import InvalidArgumentError
from arena_core.settings import ConsumerSettings
from tests.integration.bus_support import (
    WORK_ITEM,
    generation_request,
    jetstream,
    work_queue_consumer,
)


async def _run_until(
    consumer: EventConsumer, condition: asyncio.Event, timeout: float = 20
) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(condition.wait(), timeout)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def _dead_letters(js: JetStreamContext, spec: ConsumerSpec) -> list[dict[str, str]]:
    info = await js.stream_info(DEAD_LETTER_STREAM)
    found = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            message = await js.get_msg(DEAD_LETTER_STREAM, sequence)
            if message.subject == dead_letter_subject(spec.durable):
                found.append(dict(message.headers or {}))
    return found


async def _settled(js: JetStreamContext, spec: ConsumerSpec) -> tuple[int, int]:
    info = await js.consumer_info(spec.stream, spec.durable)
    return info.num_pending, info.num_ack_pending


async def test_republishing_an_event_id_is_dropped_by_jetstream(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url)
        publisher = EventPublisher(js, "test")

        first = await publisher.publish(generation_request("hello", event_id="evt-dup-1"))
        again = await publisher.publish(generation_request("hello", event_id="evt-dup-1"))

        assert (first, again) == (True, False)
        assert (await js.stream_info(spec.stream)).state.messages == 1


async def test_handled_message_is_acked_and_gone(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url)
        await EventPublisher(js, "test").publish(generation_request("hello"))
        seen: list[str] = []
        done = asyncio.Event()

        async def handle(event: object, delivery: Delivery) -> None:
            seen.append(event.task.input.messages[0].content)  # type: ignore[attr-defined]
            done.set()

        await _run_until(EventConsumer(js, spec, {WORK_ITEM: handle}, "test"), done)

        assert seen == ["hello"]
        assert await _settled(js, spec) == (0, 0)
        # Work-queue retention: an acknowledged work item leaves the stream.
        assert (await js.stream_info(spec.stream)).state.messages == 0


async def test_malformed_payload_is_dead_lettered_and_the_next_message_still_handled(
    nats_url: str,
) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url)
        await js.publish(subject_of(WORK_ITEM), b"\xff\xff\xff not protobuf", stream=spec.stream)
        await EventPublisher(js, "test").publish(generation_request("after the bad one"))
        handled: list[str] = []
        done = asyncio.Event()

        async def handle(event: object, delivery: Delivery) -> None:
            handled.append(event.task.input.messages[0].content)  # type: ignore[attr-defined]
            done.set()

        await _run_until(EventConsumer(js, spec, {WORK_ITEM: handle}, "test"), done)

        assert handled == ["after the bad one"]
        letters = await _dead_letters(js, spec)
        assert len(letters) == 1
        assert letters[0]["Arena-Dead-Letter-Reason"].startswith("undecodable GenerationRequested")
        assert letters[0]["Arena-Deliveries"] == "1"  # not retried: retrying cannot help
        assert await _settled(js, spec) == (0, 0)


async def test_failing_handler_is_retried_then_dead_lettered(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url, max_deliveries=3, retry_backoff_seconds=0.05)
        await EventPublisher(js, "test").publish(generation_request("always fails"))
        attempts: list[int] = []
        done = asyncio.Event()

        async def handle(event: object, delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            if len(attempts) == 3:
                asyncio.get_running_loop().call_later(0.5, done.set)
            raise RuntimeError("model server down")

        await _run_until(EventConsumer(js, spec, {WORK_ITEM: handle}, "test"), done)

        assert attempts == [1, 2, 3]
        letters = await _dead_letters(js, spec)
        assert [letter["Arena-Deliveries"] for letter in letters] == ["3"]
        assert "failed 3 times" in letters[0]["Arena-Dead-Letter-Reason"]
        assert await _settled(js, spec) == (0, 0)


async def test_invalid_argument_is_not_retried(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url, max_deliveries=5)
        await EventPublisher(js, "test").publish(generation_request("unknown model"))
        attempts: list[int] = []
        done = asyncio.Event()

        async def handle(event: object, delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            asyncio.get_running_loop().call_later(0.5, done.set)
            raise InvalidArgumentError("no such model", where="task.input.model.name")

        await _run_until(EventConsumer(js, spec, {WORK_ITEM: handle}, "test"), done)

        assert attempts == [1]
        letters = await _dead_letters(js, spec)
        assert "task.input.model.name: no such model" in letters[0]["Arena-Dead-Letter-Reason"]


@pytest.mark.parametrize("replicas", [2])
async def test_replicas_share_a_work_queue_without_overlap(nats_url: str, replicas: int) -> None:
    async with jetstream(nats_url) as js:
        spec = await work_queue_consumer(js, nats_url)
        publisher = EventPublisher(js, "test")
        for index in range(20):
            await publisher.publish(generation_request(f"prompt {index}"))
        handled: list[str] = []
        done = asyncio.Event()

        async def handle(event: object, delivery: Delivery) -> None:
            handled.append(event.task.input.messages[0].content)  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
            if len(handled) == 20:
                done.set()

        consumers = [EventConsumer(js, spec, {WORK_ITEM: handle}, "test") for _ in range(replicas)]
        tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
        await asyncio.wait_for(done.wait(), 20)
        for consumer in consumers:
            consumer.stop()
        await asyncio.gather(*tasks)

        assert sorted(handled) == sorted(f"prompt {index}" for index in range(20))


async def test_partitioned_work_reaches_only_the_consumer_of_its_partition(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        await work_queue_consumer(js, nats_url)  # purges the queue and its consumers
        for existing in await js.consumers_info("ARENA_WORK_INFERENCE"):
            await js.delete_consumer("ARENA_WORK_INFERENCE", existing.name)
        specs = {
            model: ConsumerSpec.on(
                f"generation-{partition_token(model)}",
                [WORK_ITEM],
                ConsumerSettings(),
                partitions=[model],
            )
            for model in ("tiny-1.0", "small")
        }
        for spec in specs.values():
            await ensure_consumer(js, spec)
        publisher = EventPublisher(js, "test")
        await publisher.publish(generation_request("for tiny"), partition="tiny-1.0")
        await publisher.publish(generation_request("for small"), partition="small")
        handled: dict[str, list[str]] = {"tiny-1.0": [], "small": []}
        done = asyncio.Event()

        def handler_for(model: str) -> Handler:
            async def handle(event: Any, delivery: Delivery) -> None:
                handled[model].append(event.task.input.messages[0].content)
                if all(handled.values()):
                    done.set()

            return handle

        consumers = [
            EventConsumer(js, specs[model], {WORK_ITEM: handler_for(model)}, "test")
            for model in specs
        ]
        tasks = [asyncio.create_task(consumer.run()) for consumer in consumers]
        await asyncio.wait_for(done.wait(), 20)
        for consumer in consumers:
            consumer.stop()
        await asyncio.gather(*tasks)

        assert handled == {"tiny-1.0": ["for tiny"], "small": ["for small"]}
