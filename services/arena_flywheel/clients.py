"""Outbound gRPC calls: the few questions the controller asks other services directly.

Work itself (answers, judgments, selection jobs, training runs, ratings) travels as work items on
the bus; these calls only read datasets and checkpoints and steer the inference service's models.
A user error on the other side (FAILED_PRECONDITION, NOT_FOUND, INVALID_ARGUMENT) fails the step
for good; UNAVAILABLE and DEADLINE_EXCEEDED are retried by the controller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb
from arena.inference.v1 import inference_service_pb2_grpc as inference_grpc
from arena.selection.v1 import selection_service_pb2 as selection_pb
from arena.selection.v1 import selection_service_pb2_grpc as selection_grpc
from arena.training.v1 import training_service_pb2 as training_pb
from arena.training.v1 import training_service_pb2_grpc as training_grpc
from arena_core.errors import (
    AlreadyExistsError,
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_core.rpc.client import service_channel

ResponseT = TypeVar("ResponseT")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _error(service: str, error: grpc.RpcError) -> ArenaError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    message = f"{service}: {details}"
    if code in RETRYABLE:
        return UnavailableError(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message)
    return FailedPreconditionError(message)


class _Client:
    def __init__(self, service: str, target: str) -> None:
        self._service = service
        self._target = target
        self._channel: aio.Channel | None = None

    def _open(self) -> aio.Channel:
        if self._channel is None:
            self._channel = service_channel(self._target)
        return self._channel

    async def _call(self, rpc: Callable[..., Awaitable[ResponseT]], request: Any) -> ResponseT:
        try:
            return await rpc(request, timeout=120)
        except grpc.RpcError as error:
            raise _error(f"{self._service} service at {self._target}", error) from None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class SelectionClient(_Client):
    def __init__(self, target: str) -> None:
        super().__init__("selection", target)

    async def dataset(self, dataset_id: str) -> selection_pb.Dataset:
        stub = selection_grpc.SelectionServiceStub(self._open())
        response = await self._call(
            stub.GetDataset, selection_pb.GetDatasetRequest(dataset_id=dataset_id)
        )
        return response.dataset

    async def records(self, dataset_id: str) -> list[common_pb2.Conversation]:
        stub = selection_grpc.SelectionServiceStub(self._open())
        records: list[common_pb2.Conversation] = []
        try:
            async for page in stub.ReadDataset(
                selection_pb.ReadDatasetRequest(dataset_id=dataset_id), timeout=300
            ):
                records.extend(page.records)
        except grpc.RpcError as error:
            raise _error(f"selection service at {self._target}", error) from None
        return records


class TrainingClient(_Client):
    def __init__(self, target: str) -> None:
        super().__init__("training", target)

    async def checkpoint(self, checkpoint_id: str) -> training_pb.Checkpoint:
        stub = training_grpc.TrainingServiceStub(self._open())
        response = await self._call(
            stub.GetCheckpoint, training_pb.GetCheckpointRequest(checkpoint_id=checkpoint_id)
        )
        return response.checkpoint

    async def cancel(self, run_id: str) -> None:
        stub = training_grpc.TrainingServiceStub(self._open())
        # Never started, or already finished: nothing to cancel.
        with contextlib.suppress(NotFoundError, FailedPreconditionError):
            await self._call(stub.CancelRun, training_pb.CancelRunRequest(run_id=run_id))


class InferenceClient(_Client):
    def __init__(self, target: str) -> None:
        super().__init__("inference", target)

    async def register(
        self, spec: inference_pb.ModelSpec, *, replace: bool = True
    ) -> inference_pb.ModelInfo:
        stub = inference_grpc.InferenceServiceStub(self._open())
        response = await self._call(
            stub.RegisterModel, inference_pb.RegisterModelRequest(spec=spec, replace=replace)
        )
        return response.model

    async def load(self, name: str) -> inference_pb.ModelInfo:
        stub = inference_grpc.InferenceServiceStub(self._open())
        response = await self._call(stub.LoadModel, inference_pb.LoadModelRequest(name=name))
        return response.model

    async def model(self, name: str) -> inference_pb.ModelInfo:
        stub = inference_grpc.InferenceServiceStub(self._open())
        response = await self._call(stub.GetModel, inference_pb.GetModelRequest(name=name))
        return response.model
