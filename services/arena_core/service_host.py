"""Runs one service process: metrics endpoint, gRPC server, NATS topology and consumers, in that
order, and tears them down in reverse when asked to stop.

Health says SERVING only once NATS is connected and every stream and consumer the service needs
exists, and flips back to NOT_SERVING while NATS is unreachable and first thing on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.aio.client import Client
from nats.js import JetStreamContext

from arena_core.bus.connection import connect
from arena_core.bus.consumer import EventConsumer, Handler
from arena_core.bus.events import EventPublisher
from arena_core.bus.topology import (
    DEAD_LETTERS,
    ConsumerSpec,
    StreamSpec,
    ensure_consumer,
    ensure_streams,
)
from arena_core.errors import UnavailableError
from arena_core.lifecycle import run_until_signalled
from arena_core.logs import configure_logging
from arena_core.metrics import NATS_CONNECTED, SERVICE_INFO, SERVICE_UP, MetricsServer
from arena_core.rpc.server import GrpcServer, GrpcService
from arena_core.settings import ServiceSettings, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subscription:
    """A durable consumer and the handler for each message type it receives.

    Without handlers the durable consumer is still created, so JetStream keeps every message for
    it until a handler is deployed: nothing published before then is lost.
    """

    spec: ConsumerSpec
    handlers: Mapping[type[Message], Handler] = field(default_factory=dict)


@dataclass
class Bus:
    """What adapters get once NATS is up: the connection, JetStream and a publisher."""

    client: Client
    js: JetStreamContext
    publisher: EventPublisher


Wiring = Callable[[Bus, AsyncExitStack], Awaitable["ServiceParts"]]


@dataclass
class ServiceParts:
    """What a composition root builds once the bus is available."""

    grpc_services: Sequence[GrpcService] = ()
    streams: Sequence[StreamSpec] = ()
    subscriptions: Sequence[Subscription] = ()
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)


class ServiceHost:
    """The runtime around a service's composition root."""

    def __init__(self, service: str, settings: ServiceSettings, wiring: Wiring) -> None:
        self.service = service
        self._settings = settings
        self._wiring = wiring
        self.grpc: GrpcServer | None = None
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        SERVICE_INFO.labels(self.service).info({"version": _version()})
        async with AsyncExitStack() as stack:
            metrics = MetricsServer(self._settings.metrics.host, self._settings.metrics.port)
            metrics.start()
            stack.callback(metrics.stop)

            bus = await self._connect(stack, stop)
            if bus is None:
                return
            parts = await self._wiring(bus, stack)
            await self._declare_topology(bus.js, parts)

            self.grpc = GrpcServer(self.service, self._settings.grpc, parts.grpc_services)
            await self.grpc.start()
            stack.push_async_callback(self.grpc.stop)

            consumers = [
                EventConsumer(bus.js, subscription.spec, subscription.handlers, self.service)
                for subscription in parts.subscriptions
                if subscription.handlers
            ]
            consumer_tasks = [
                asyncio.create_task(consumer.run(), name=consumer.durable) for consumer in consumers
            ]
            background_tasks = [asyncio.create_task(job()) for job in parts.background]
            tasks = [*consumer_tasks, *background_tasks]
            stack.push_async_callback(_stop_tasks, consumers, consumer_tasks, background_tasks)

            await self._set_serving(True)
            self.ready.set()
            log.info("serving", extra={"grpc": self.grpc.address})
            await _wait_first(stop, tasks)
            log.info("stopping")
            await self._set_serving(False)
        # AsyncExitStack unwinds in reverse: consumers, gRPC (graceful), NATS drain, metrics.
        log.info("stopped")

    async def _connect(self, stack: AsyncExitStack, stop: asyncio.Event) -> Bus | None:
        """Connects to NATS, retrying until it answers or the process is told to stop."""
        delay = 0.5
        while not stop.is_set():
            try:
                client = await connect(self._settings.nats, self.service, self._on_nats_state)
            except UnavailableError as error:
                log.warning("%s; retrying in %.1fs", error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
                continue
            stack.push_async_callback(_drain, client)
            js = client.jetstream()
            return Bus(client=client, js=js, publisher=EventPublisher(js, self.service))
        return None

    async def _declare_topology(self, js: JetStreamContext, parts: ServiceParts) -> None:
        streams = [DEAD_LETTERS, *parts.streams]
        await ensure_streams(js, streams, self._settings.nats)
        for subscription in parts.subscriptions:
            await ensure_consumer(js, subscription.spec)

    async def _on_nats_state(self, connected: bool) -> None:
        NATS_CONNECTED.labels(self.service).set(1 if connected else 0)
        if self.ready.is_set():
            await self._set_serving(connected)

    async def _set_serving(self, serving: bool) -> None:
        SERVICE_UP.labels(self.service).set(1 if serving else 0)
        if self.grpc is not None:
            await self.grpc.set_serving(serving)


async def _wait_first(stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]]) -> None:
    """Returns on a stop request, or raises if a consumer or background job crashed."""
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop_task.cancel()
    for task in done:
        if task is not stop_task and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _stop_tasks(
    consumers: Sequence[EventConsumer],
    consumer_tasks: Sequence[asyncio.Task[None]],
    background_tasks: Sequence[asyncio.Task[None]],
) -> None:
    """Consumers finish the message in hand (up to 15 s); background jobs are cancelled."""
    for consumer in consumers:
        consumer.stop()
    for task in background_tasks:
        task.cancel()
    tasks = [*consumer_tasks, *background_tasks]
    _, pending = await asyncio.wait(tasks, timeout=15) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _drain(client: Client) -> None:
    with contextlib.suppress(Exception):
        await client.drain()


def _version() -> str:
    try:
        return version("arena-flywheel")
    except PackageNotFoundError:
        return "unknown"


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def run_service(
    service: str, settings_class: type[SettingsT], wiring: Callable[[SettingsT], Wiring]
) -> None:
    """The body of every service's `__main__`: settings once, logging, then run until SIGTERM."""

    def main(stop: asyncio.Event) -> Awaitable[None]:
        settings = load_settings(settings_class)
        configure_logging(service, settings.log.level, settings.log.format)
        return ServiceHost(service, settings, wiring(settings)).run(stop)

    run_until_signalled(main)
