"""Runs the training service in this process (real NATS, real gRPC) and talks to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from grpc import aio
from nats.js import JetStreamContext

from arena.training.v1 import events_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena.training.v1 import training_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import free_port
from arena_core.bus.subjects import route_of
from arena_core.service_host import ServiceHost
from arena_core.settings import ConsumerSettings, GrpcSettings, MetricsSettings, NatsSettings
from arena_training.app import wiring
from arena_training.settings import LocalRunnerOptions, TrainingOptions, TrainingSettings
from arena_training.store import is_terminal


@dataclass
class RunningService:
    host: ServiceHost
    address: str
    stub: pb_grpc.TrainingServiceAsyncStub
    js: JetStreamContext
    work_dir: Path


def settings_for(nats_url: str, work_dir: Path, **training: Any) -> TrainingSettings:
    local = training.pop("local", LocalRunnerOptions())
    return TrainingSettings(
        nats=NatsSettings(url=nats_url),
        grpc=GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
        consumer=ConsumerSettings(ack_wait_seconds=30, max_deliveries=3),
        training=TrainingOptions(work_dir=work_dir, local=local, **training),
    )


@asynccontextmanager
async def training_service(settings: TrainingSettings) -> AsyncIterator[RunningService]:
    host = ServiceHost("training", settings, wiring(settings))
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    ready = asyncio.create_task(host.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
    assert host.grpc is not None
    address = f"127.0.0.1:{host.grpc.port}"
    client = await nats.connect(settings.nats.url)
    channel = aio.insecure_channel(address)
    try:
        yield RunningService(
            host=host,
            address=address,
            stub=pb_grpc.TrainingServiceStub(channel),  # type: ignore[arg-type]
            js=client.jetstream(),
            work_dir=settings.training.resolved_work_dir(),
        )
    finally:
        await channel.close()
        await client.drain()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


async def publish_request(
    js: JetStreamContext,
    run_id: str,
    spec: pb.TrainingRunSpec,
    *,
    flywheel_run: str = "",
    iteration: int | None = None,
) -> events_pb2.TrainingRequested:
    """Publishes a TrainingRequested work item, as the flywheel controller would."""
    request = events_pb2.TrainingRequested(run_id=run_id)
    request.metadata.event_id = uuid.uuid4().hex
    request.metadata.correlation_id = flywheel_run or "ad-hoc"
    request.spec.CopyFrom(spec)
    request.context.run_id = flywheel_run
    if iteration is not None:
        request.context.iteration = iteration
    route = route_of(request)
    await js.publish(
        route.subject,
        request.SerializeToString(),
        stream=route.stream,
        headers={"Nats-Msg-Id": request.metadata.event_id},
    )
    return request


async def wait_for_run(
    stub: pb_grpc.TrainingServiceAsyncStub,
    run_id: str,
    predicate: Callable[[pb.TrainingRun], bool] = lambda run: is_terminal(run.state),
    timeout: float = 180,
) -> pb.TrainingRun:
    deadline = time.monotonic() + timeout
    while True:
        try:
            run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        except aio.AioRpcError:
            run = None
        if run is not None and predicate(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not get there in {timeout}s: {run}")
        await asyncio.sleep(0.2)


async def training_events(js: JetStreamContext, run_id: str, timeout: float = 10) -> list[Any]:
    """Every event of `run_id` in the training event stream, in stream order, once the run's
    `TrainingRunFinished` is there (the state in KV is written just before it is published)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await _events_of(js, run_id)
        if any(isinstance(e, events_pb2.TrainingRunFinished) for e in found):
            return found
        if time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def _events_of(js: JetStreamContext, run_id: str) -> list[Any]:
    types = {
        route_of(kind).subject: kind
        for kind in (
            events_pb2.TrainingRunStarted,
            events_pb2.TrainingProgressReported,
            events_pb2.TrainingRunFinished,
            events_pb2.CheckpointRegistered,
        )
    }
    found: list[Any] = []
    info = await js.stream_info("ARENA_EVENTS_TRAINING")
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            message = await js.get_msg("ARENA_EVENTS_TRAINING", sequence)
        except nats.js.errors.NotFoundError:
            continue
        kind = types.get(message.subject)
        if kind is None or message.data is None:
            continue
        event = kind.FromString(message.data)
        event_run = (
            event.checkpoint.run_id if kind is events_pb2.CheckpointRegistered else event.run_id
        )
        if event_run == run_id:
            found.append(event)
    return found
