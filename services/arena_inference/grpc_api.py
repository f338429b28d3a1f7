"""The gRPC InferenceService: translates protos to domain calls and back.

Domain errors propagate as exceptions and the shared interceptor maps them to status codes
(unknown model NOT_FOUND, bad arguments INVALID_ARGUMENT, ...), so the servicer stays free of
status handling and the service keeps serving after any bad request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from arena.inference.v1 import inference_service_pb2 as pb
from arena.inference.v1 import inference_service_pb2_grpc
from arena_core.errors import InvalidArgumentError
from arena_inference.convert import (
    BACKENDS,
    adapter_from_proto,
    cache_policy_from_proto,
    failure_of,
    generation_to_proto,
    info_to_proto,
    input_from_proto,
    spec_from_proto,
)
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.types import Generation, ModelState, StreamDelta
from arena_inference.registry_store import RegistryStore

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_BATCH = 10_000


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine, store: RegistryStore | None = None) -> None:
        self._engine = engine
        self._registry = engine.registry
        self._store = store

    # --- generation ----------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        generation = await self._engine.generate(
            input_from_proto(request.input), cache_policy_from_proto(request.cache_policy)
        )
        return pb.GenerateResponse(generation=generation_to_proto(generation))

    async def GenerateBatch(
        self, request: pb.GenerateBatchRequest, context: Any
    ) -> pb.GenerateBatchResponse:
        if len(request.inputs) > MAX_BATCH:
            raise InvalidArgumentError(
                f"{len(request.inputs)} inputs; send at most {MAX_BATCH} per call", where="inputs"
            )
        # A malformed item fails alone, in its place, like any other per-item failure.
        results = [pb.GenerationResult(index=i) for i in range(len(request.inputs))]
        valid: list[int] = []
        inputs = []
        for index, item in enumerate(request.inputs):
            try:
                inputs.append(input_from_proto(item, f"inputs[{index}]"))
                valid.append(index)
            except InvalidArgumentError as error:
                results[index].failure.CopyFrom(failure_of(error))
        outcomes = await self._engine.generate_batch(
            inputs,
            cache_policy_from_proto(request.cache_policy),
            wheres=[f"inputs[{index}]" for index in valid],
        )
        for index, outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, Generation):
                results[index].generation.CopyFrom(generation_to_proto(outcome))
            else:
                results[index].failure.CopyFrom(failure_of(outcome))
        return pb.GenerateBatchResponse(results=results)

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        stream = self._engine.stream(
            input_from_proto(request.input), cache_policy_from_proto(request.cache_policy)
        )
        async for item in stream:
            if isinstance(item, StreamDelta):
                yield pb.GenerateStreamResponse(
                    delta=pb.GenerationDelta(choice_index=item.choice_index, text=item.text)
                )
            else:
                yield pb.GenerateStreamResponse(generation=generation_to_proto(item))

    async def GetGenerations(
        self, request: pb.GetGenerationsRequest, context: Any
    ) -> pb.GetGenerationsResponse:
        for index, key in enumerate(request.generation_ids):
            if len(key) != 64 or any(char not in "0123456789abcdef" for char in key):
                raise InvalidArgumentError(
                    f"{key!r} is not a generation id (64 lowercase hex digits)",
                    where=f"generation_ids[{index}]",
                )
        found, missing = await self._engine.lookup(list(request.generation_ids))
        return pb.GetGenerationsResponse(
            generations=[generation_to_proto(generation) for generation in found],
            missing_ids=missing,
        )

    # --- registry ------------------------------------------------------------------------------

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        backend = BACKENDS.get(request.backend) if request.backend else None
        infos = self._registry.list(backend)
        size = request.page.page_size or DEFAULT_PAGE_SIZE
        if size < 0:
            raise InvalidArgumentError("must not be negative", where="page.page_size")
        size = min(size, MAX_PAGE_SIZE)
        token = request.page.page_token
        start = 0
        if token:
            # The token is the last name of the previous page: stable while models come and go.
            start = next((i for i, info in enumerate(infos) if info.spec.name > token), len(infos))
        page = infos[start : start + size]
        response = pb.ListModelsResponse(models=[info_to_proto(info) for info in page])
        if start + size < len(infos):
            response.page.next_page_token = page[-1].spec.name
        return response

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=info_to_proto(self._registry.info(_name(request.name))))

    async def RegisterModel(
        self, request: pb.RegisterModelRequest, context: Any
    ) -> pb.RegisterModelResponse:
        spec = spec_from_proto(request.spec)
        info = await self._registry.register(spec, load=request.load, replace=request.replace)
        if self._store is not None:
            # Desired state for every replica: loaded if asked to or already serving here.
            await self._store.save(spec, load=request.load or info.state == ModelState.READY)
        return pb.RegisterModelResponse(model=info_to_proto(info))

    async def UnregisterModel(
        self, request: pb.UnregisterModelRequest, context: Any
    ) -> pb.UnregisterModelResponse:
        name = _name(request.name)
        await self._registry.unregister(name)
        if self._store is not None:
            await self._store.delete(name)
        return pb.UnregisterModelResponse()

    async def LoadModel(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:
        name = _name(request.name)
        info = await self._registry.load(name)
        if self._store is not None:
            await self._store.save(info.spec, load=True)
        return pb.LoadModelResponse(model=info_to_proto(info))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Any
    ) -> pb.UnloadModelResponse:
        name = _name(request.name)
        info = await self._registry.unload(name)
        if self._store is not None:
            await self._store.save(info.spec, load=False)
        return pb.UnloadModelResponse(model=info_to_proto(info))

    async def LoadAdapter(
        self, request: pb.LoadAdapterRequest, context: Any
    ) -> pb.LoadAdapterResponse:
        info = await self._registry.load_adapter(
            _name(request.model, "model"), adapter_from_proto(request.adapter)
        )
        return pb.LoadAdapterResponse(model=info_to_proto(info))

    async def UnloadAdapter(
        self, request: pb.UnloadAdapterRequest, context: Any
    ) -> pb.UnloadAdapterResponse:
        if not request.adapter:
            raise InvalidArgumentError("adapter name is empty", where="adapter")
        info = await self._registry.unload_adapter(_name(request.model, "model"), request.adapter)
        return pb.UnloadAdapterResponse(model=info_to_proto(info))


def _name(value: str, field: str = "name") -> str:
    if not value.strip():
        raise InvalidArgumentError("model name is empty", where=field)
    return value
