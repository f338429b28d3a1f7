"""The `TrainingService` gRPC servicer: translates requests to supervisor calls and back.

Domain errors become status codes in the shared interceptors (INVALID_ARGUMENT for a bad
request, NOT_FOUND for an unknown run, dataset, checkpoint or base model, FAILED_PRECONDITION for
a runner or judge this service lacks); nothing is stored for a rejected StartRun.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arena.training.v1 import training_service_pb2 as pb
from arena.training.v1 import training_service_pb2_grpc as pb_grpc
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_training.runners.base import LogLine
from arena_training.store import CheckpointRegistry
from arena_training.supervisor import RunSupervisor, sequence_page

# Log lines sent per message when catching up; a live follow sends what is there.
_LOG_CHUNK = 200
_LOG_FLUSH_SECONDS = 0.25


class TrainingServicer(pb_grpc.TrainingServiceServicer):
    def __init__(self, supervisor: RunSupervisor, checkpoints: CheckpointRegistry) -> None:
        self._supervisor = supervisor
        self._checkpoints = checkpoints

    async def StartRun(self, request: pb.StartRunRequest, context: Any) -> pb.StartRunResponse:
        run = await self._supervisor.start_run(
            request.spec, run_id=request.run_id, validate_only=request.validate_only
        )
        return pb.StartRunResponse(run=run)

    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=await self._supervisor.get(_required(request.run_id)))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        runs = await self._supervisor.list(state=request.state, stage=request.stage)
        page, token = sequence_page(
            runs, request.page.page_size, request.page.page_token, where="page.page_token"
        )
        response = pb.ListRunsResponse(runs=page)  # type: ignore[arg-type]
        response.page.next_page_token = token
        return response

    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.CancelRunResponse:
        return pb.CancelRunResponse(run=await self._supervisor.cancel(_required(request.run_id)))

    async def StreamRunEvents(
        self, request: pb.StreamRunEventsRequest, context: Any
    ) -> AsyncIterator[pb.StreamRunEventsResponse]:
        async for event in self._supervisor.watch(_required(request.run_id)):
            yield event

    async def StreamRunLogs(
        self, request: pb.StreamRunLogsRequest, context: Any
    ) -> AsyncIterator[pb.StreamRunLogsResponse]:
        tail = request.tail_lines if request.HasField("tail_lines") else None
        if tail is not None and tail < 0:
            raise InvalidArgumentError("must not be negative", where="tail_lines")
        lines = self._supervisor.logs(
            _required(request.run_id), follow=request.follow, tail_lines=tail
        )
        async for chunk in _chunked(lines):
            yield pb.StreamRunLogsResponse(lines=[_log_line(line) for line in chunk])

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Any
    ) -> pb.GetCheckpointResponse:
        checkpoint_id = _required(request.checkpoint_id, "checkpoint_id")
        checkpoint = await self._checkpoints.get(checkpoint_id)
        if checkpoint is None:
            raise NotFoundError(f"checkpoint_id: no checkpoint {checkpoint_id!r} is registered")
        return pb.GetCheckpointResponse(checkpoint=checkpoint)

    async def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: Any
    ) -> pb.ListCheckpointsResponse:
        checkpoints = await self._checkpoints.list(request.model_name)
        checkpoints.sort(
            key=lambda c: (c.created_at.seconds, c.created_at.nanos, c.checkpoint_id), reverse=True
        )
        page, token = sequence_page(
            checkpoints, request.page.page_size, request.page.page_token, where="page.page_token"
        )
        response = pb.ListCheckpointsResponse(checkpoints=page)  # type: ignore[arg-type]
        response.page.next_page_token = token
        return response


def _required(value: str, name: str = "run_id") -> str:
    if not value:
        raise InvalidArgumentError("is required", where=name)
    return value


def _log_line(line: LogLine) -> pb.LogLine:
    message = pb.LogLine(text=line.text, stream=line.stream, node_rank=line.node_rank)
    if line.time is not None:
        message.time.FromDatetime(line.time)
    return message


async def _chunked(lines: AsyncIterator[LogLine]) -> AsyncIterator[list[LogLine]]:
    """Groups lines into messages: full chunks while catching up, small ones while following."""
    queue: asyncio.Queue[LogLine | None] = asyncio.Queue(maxsize=_LOG_CHUNK * 4)

    async def pump() -> None:
        try:
            async for line in lines:
                await queue.put(line)
        finally:
            await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        chunk: list[LogLine] = []
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _LOG_FLUSH_SECONDS)
            except TimeoutError:
                if chunk:
                    yield chunk
                    chunk = []
                continue
            if item is None:
                break
            chunk.append(item)
            if len(chunk) >= _LOG_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        await task  # re-raises what the pump hit (e.g. NotFoundError for an unknown run)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
