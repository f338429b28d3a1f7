"""The consumer loop: pull from a durable consumer, decode, handle, then ack, retry or dead-letter.

- Success: `ack_sync`, confirmed by the server before the next message is counted as done.
- A `PermanentError` (or any `InvalidArgumentError`) and undecodable payloads: dead-lettered at
  once — retrying cannot help.
- Any other exception: `nak` with a growing delay, until the delivery budget is spent; then
  dead-lettered. The server allows one delivery more than the budget, and a message arriving on
  that extra delivery (its handler crashed the process every time) is dead-lettered unhandled.
- While a handler runs, the message is kept alive with `in_progress` so slow work is not
  redelivered to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from arena_core import logs
from arena_core.bus.events import MSG_ID_HEADER, metadata_of
from arena_core.bus.subjects import dead_letter_subject, route_of
from arena_core.bus.topology import DEAD_LETTERS, ConsumerSpec
from arena_core.errors import InvalidArgumentError
from arena_core.metrics import (
    CONSUMER_PENDING,
    EVENT_HANDLING_SECONDS,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
)

log = logging.getLogger(__name__)

Handler = Callable[[Any, "Delivery"], Awaitable[None]]


class PermanentError(Exception):
    """Handling this message can never succeed; dead-letter it instead of retrying."""


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the message besides its payload."""

    subject: str
    attempt: int
    stream_sequence: int


class EventConsumer:
    """Runs one durable consumer until stopped, dispatching each message type to its handler."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handlers: Mapping[type[Message], Handler],
        service: str,
    ) -> None:
        self._js = js
        self._spec = spec
        self._service = service
        self._handlers = {
            route_of(kind).subject: (kind, handler) for kind, handler in handlers.items()
        }
        self._stopping = asyncio.Event()

    @property
    def durable(self) -> str:
        return self._spec.durable

    def stop(self) -> None:
        """Finish the message in hand, then return from `run`."""
        self._stopping.set()

    async def run(self) -> None:
        subscription = await self._js.pull_subscribe_bind(
            durable=self._spec.durable, stream=self._spec.stream
        )
        last_lag_probe = 0.0
        try:
            while not self._stopping.is_set():
                if time.monotonic() - last_lag_probe > 5:
                    last_lag_probe = time.monotonic()
                    await self._report_lag()
                try:
                    messages = await subscription.fetch(self._spec.policy.fetch_batch, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                for message in messages:
                    if self._stopping.is_set():
                        # Not handled: hand it straight back for another replica or our restart.
                        await message.nak()
                        continue
                    await self._process(message)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _report_lag(self) -> None:
        with contextlib.suppress(Exception):
            info = await self._js.consumer_info(self._spec.stream, self._spec.durable)
            CONSUMER_PENDING.labels(self._service, self.durable).set(
                info.num_pending + info.num_ack_pending
            )

    async def _process(self, message: Msg) -> None:
        attempt = message.metadata.num_delivered
        started = time.perf_counter()
        outcome = await self._dispatch(message, attempt)
        EVENTS_CONSUMED.labels(self._service, self.durable, outcome).inc()
        EVENT_HANDLING_SECONDS.labels(self._service, self.durable).observe(
            time.perf_counter() - started
        )

    async def _dispatch(self, message: Msg, attempt: int) -> str:
        if attempt > self._spec.policy.max_deliveries:
            await self._dead_letter(message, "crashed", "delivery budget spent without an answer")
            return "dead_lettered"
        entry = self._handlers.get(_unpartitioned(message.subject))
        if entry is None:
            await self._dead_letter(
                message, "no_handler", f"no handler for subject {message.subject}"
            )
            return "dead_lettered"
        message_type, handler = entry
        try:
            event = message_type.FromString(message.data)
        except DecodeError as error:
            await self._dead_letter(
                message, "undecodable", f"undecodable {message_type.DESCRIPTOR.name}: {error}"
            )
            return "dead_lettered"
        delivery = Delivery(message.subject, attempt, message.metadata.sequence.stream)
        token = logs.correlation_id.set(_correlation_of(event))
        try:
            async with _kept_alive(message, self._spec.policy.ack_wait_seconds):
                await handler(event, delivery)
        except (PermanentError, InvalidArgumentError) as error:
            await self._dead_letter(message, "permanent_error", f"{type(error).__name__}: {error}")
            return "dead_lettered"
        except Exception as error:
            if attempt >= self._spec.policy.max_deliveries:
                log.exception("handler failed on its last delivery", extra=self._where(message))
                await self._dead_letter(
                    message, "retries_exhausted", f"failed {attempt} times: {error!r}"
                )
                return "dead_lettered"
            log.warning(
                "handler failed; will retry", extra={**self._where(message), "error": repr(error)}
            )
            await message.nak(delay=self._spec.policy.retry_backoff_seconds * 2 ** (attempt - 1))
            return "retried"
        finally:
            logs.correlation_id.reset(token)
        await message.ack_sync()
        return "acked"

    async def _dead_letter(self, message: Msg, label: str, reason: str) -> None:
        """Moves the message to the dead-letter stream; `label` is the bounded metric label."""
        stream_sequence = message.metadata.sequence.stream
        log.error("dead-lettering message: %s", reason, extra=self._where(message))
        await self._js.publish(
            dead_letter_subject(self.durable),
            message.data,
            stream=DEAD_LETTERS.name,
            headers={
                # Idempotent: a crash between this publish and the term() publishes it only once.
                MSG_ID_HEADER: f"{self._spec.stream}-{stream_sequence}-{self.durable}",
                "Arena-Dead-Letter-Reason": reason[:1000],
                "Arena-Original-Subject": message.subject,
                "Arena-Original-Stream": self._spec.stream,
                "Arena-Original-Sequence": str(stream_sequence),
                "Arena-Deliveries": str(message.metadata.num_delivered),
            },
        )
        await message.term()
        EVENTS_DEAD_LETTERED.labels(self._service, self.durable, label).inc()

    def _where(self, message: Msg) -> dict[str, Any]:
        return {
            "consumer": self.durable,
            "subject": message.subject,
            "stream_sequence": message.metadata.sequence.stream,
            "delivery": message.metadata.num_delivered,
        }


def _unpartitioned(subject: str) -> str:
    """arena.<kind>.<domain>.<version>.<Name>[.<partition>] without the partition."""
    return ".".join(subject.split(".", 5)[:5])


def _correlation_of(event: Message) -> str | None:
    try:
        return metadata_of(event).correlation_id or None
    except TypeError:
        return None


@contextlib.asynccontextmanager
async def _kept_alive(message: Msg, ack_wait_seconds: float) -> Any:
    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(ack_wait_seconds / 3)
            await message.in_progress()

    task = asyncio.create_task(heartbeat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
