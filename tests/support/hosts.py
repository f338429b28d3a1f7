"""A service's real host (gRPC, NATS topology, consumers) in the test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from grpc import aio

from arena_core.rpc.client import service_channel
from arena_core.service_host import ServiceHost, Wiring
from arena_core.settings import ServiceSettings

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


@asynccontextmanager
async def hosted_service(
    service: str, settings: SettingsT, wiring: Callable[[SettingsT], Wiring]
) -> AsyncIterator[tuple[ServiceHost, aio.Channel]]:
    """Runs the host until the block ends; yields it with a channel to its gRPC port."""
    stop = asyncio.Event()
    host = ServiceHost(service, settings, wiring(settings))
    task = asyncio.create_task(host.run(stop))
    ready = asyncio.create_task(host.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what stopped it
    assert host.ready.is_set(), f"{service} service did not become ready"
    channel = service_channel(f"127.0.0.1:{settings.grpc.port}")
    try:
        yield host, channel
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)
