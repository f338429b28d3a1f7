"""The shared gRPC server: health, reflection, status codes from domain errors, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from arena.inference.v1 import inference_service_pb2 as pb
from arena.inference.v1 import inference_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import free_port
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_core.rpc.health import check_health
from arena_core.rpc.server import GrpcServer, grpc_service
from arena_core.settings import GrpcSettings

SERVICE = "grpc-test"


class ScriptedInference(pb_grpc.InferenceServiceServicer):
    """Raises what the test needs; the interceptors must turn it into the right status."""

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        raise NotFoundError(f"model {request.name!r} is not registered")

    async def RegisterModel(self, request: Any, context: Any) -> pb.RegisterModelResponse:
        raise InvalidArgumentError("must not be empty", where="spec.name")

    async def Generate(self, request: Any, context: Any) -> pb.GenerateResponse:
        raise RuntimeError("a bug")

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse()

    async def GenerateStream(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        yield pb.GenerateStreamResponse()
        yield pb.GenerateStreamResponse()
        raise NotFoundError("adapter vanished mid-stream")


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    descriptor = pb.DESCRIPTOR.services_by_name["InferenceService"]
    server = GrpcServer(
        SERVICE,
        GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        [
            grpc_service(
                ScriptedInference(), pb_grpc.add_InferenceServiceServicer_to_server, descriptor
            )
        ],
    )
    await server.start()
    yield server
    await server.stop()


async def _status(server: GrpcServer, call: str, request: Any, **kwargs: Any) -> grpc.RpcError:
    async with aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            await getattr(stub, call)(request, **kwargs)
    return raised.value


def _handled(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "arena_grpc_server_handled_total", {"service": SERVICE, "method": method, "code": code}
    )
    return value or 0.0


async def test_health_is_not_serving_until_told(server: GrpcServer) -> None:
    assert await check_health(server.address) == "NOT_SERVING"
    await server.set_serving(True)
    assert await check_health(server.address) == "SERVING"
    assert await check_health(server.address, "arena.inference.v1.InferenceService") == "SERVING"
    await server.set_serving(False)
    assert await check_health(server.address) == "NOT_SERVING"


async def test_domain_errors_map_to_status_codes(server: GrpcServer) -> None:
    method = "/arena.inference.v1.InferenceService/GetModel"
    before = _handled(method, "NOT_FOUND")

    not_found = await _status(server, "GetModel", pb.GetModelRequest(name="gpt-x"))
    invalid = await _status(server, "RegisterModel", pb.RegisterModelRequest())

    assert not_found.code() == grpc.StatusCode.NOT_FOUND
    assert not_found.details() == "model 'gpt-x' is not registered"
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.details() == "spec.name: must not be empty"
    assert _handled(method, "NOT_FOUND") == before + 1


async def test_unexpected_error_is_internal_and_names_the_request_id(server: GrpcServer) -> None:
    error = await _status(
        server, "Generate", pb.GenerateRequest(), metadata=(("x-request-id", "req-42"),)
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id req-42)"
    assert "a bug" not in error.details()  # internals stay in the server log


async def test_unimplemented_rpc_says_so(server: GrpcServer) -> None:
    error = await _status(server, "UnloadModel", pb.UnloadModelRequest())
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_streaming_rpc_errors_after_partial_output(server: GrpcServer) -> None:
    received: list[pb.GenerateStreamResponse] = []

    async def read_all() -> None:
        async with aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            async for response in stub.GenerateStream(pb.GenerateStreamRequest()):
                received.append(response)

    with pytest.raises(grpc.RpcError) as raised:
        await read_all()
    assert len(received) == 2
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_ok_call_is_counted_and_timed(server: GrpcServer) -> None:
    method = "/arena.inference.v1.InferenceService/ListModels"
    before = _handled(method, "OK")
    async with aio.insecure_channel(server.address) as channel:
        await pb_grpc.InferenceServiceStub(channel).ListModels(pb.ListModelsRequest())
    assert _handled(method, "OK") == before + 1
    count = REGISTRY.get_sample_value(
        "arena_grpc_server_handling_seconds_count", {"service": SERVICE, "method": method}
    )
    assert count is not None
    assert count >= 1


async def test_reflection_lists_the_service_and_health(server: GrpcServer) -> None:
    async with aio.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {
            service.name
            async for response in responses
            for service in response.list_services_response.service
        }
    assert {"arena.inference.v1.InferenceService", "grpc.health.v1.Health"} <= names


async def test_taken_port_is_a_clear_error(server: GrpcServer) -> None:
    from arena_core.errors import ConfigurationError

    clash = GrpcServer(SERVICE, GrpcSettings(host="127.0.0.1", port=server.port or 0), [])
    with pytest.raises(ConfigurationError, match="ARENA_GRPC__PORT"):
        await clash.start()
