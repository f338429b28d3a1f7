"""Translation between the protobuf contracts and the inference domain's types.

Every transport adapter (gRPC, work queue, KV cache, HTTP) goes through these functions, so the
contract is mapped in one place. Messages from callers are checked here for what only the wire
form can get wrong (an unspecified role or backend), naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from google.protobuf import json_format, struct_pb2

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_core.errors import (
    AlreadyExistsError,
    ConfigurationError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from arena_inference.domain.style import style_of
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    CachePolicy,
    ChatMessage,
    Choice,
    FinishReason,
    Generation,
    GenerationInput,
    ModelInfo,
    ModelRef,
    ModelSpec,
    ModelState,
    ReplayFormat,
    Role,
    Sampling,
)
from arena_inference.settings import ModelDeclaration

ROLES: dict[common_pb2.Role.ValueType, Role] = {
    common_pb2.ROLE_SYSTEM: Role.SYSTEM,
    common_pb2.ROLE_USER: Role.USER,
    common_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    common_pb2.ROLE_TOOL: Role.TOOL,
}
ROLE_TO_PROTO = {role: number for number, role in ROLES.items()}

BACKENDS: dict[pb.Backend.ValueType, BackendKind] = {
    pb.BACKEND_VLLM: BackendKind.VLLM,
    pb.BACKEND_OPENAI_COMPATIBLE: BackendKind.OPENAI,
    pb.BACKEND_TRANSFORMERS: BackendKind.TRANSFORMERS,
    pb.BACKEND_REPLAY: BackendKind.REPLAY,
}
BACKEND_TO_PROTO = {kind: number for number, kind in BACKENDS.items()}

FINISH_TO_PROTO = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.ABORTED: pb.FINISH_REASON_ABORTED,
}
FINISH_FROM_PROTO = {number: reason for reason, number in FINISH_TO_PROTO.items()}

STATE_TO_PROTO = {
    ModelState.REGISTERED: pb.MODEL_STATE_REGISTERED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}

REPLAY_FORMATS: dict[pb.ReplayFormat.ValueType, ReplayFormat] = {
    pb.REPLAY_FORMAT_UNSPECIFIED: ReplayFormat.AUTO,
    pb.REPLAY_FORMAT_FASTCHAT: ReplayFormat.FASTCHAT,
    pb.REPLAY_FORMAT_ARENA_HARD: ReplayFormat.ARENA_HARD,
    pb.REPLAY_FORMAT_ALPACA_EVAL: ReplayFormat.ALPACA_EVAL,
}
REPLAY_FORMAT_TO_PROTO = {fmt: number for number, fmt in REPLAY_FORMATS.items()}

CACHE_POLICIES: dict[common_pb2.CachePolicy.ValueType, CachePolicy] = {
    common_pb2.CACHE_POLICY_UNSPECIFIED: CachePolicy.USE,
    common_pb2.CACHE_POLICY_USE: CachePolicy.USE,
    common_pb2.CACHE_POLICY_REFRESH: CachePolicy.REFRESH,
    common_pb2.CACHE_POLICY_BYPASS: CachePolicy.BYPASS,
}

# Stable reason codes for Failure.reason, and whether trying again may help.
_FAILURES: tuple[tuple[type[BaseException], str, bool], ...] = (
    (InvalidArgumentError, "INVALID_ARGUMENT", False),
    (NotFoundError, "NOT_FOUND", False),
    (AlreadyExistsError, "ALREADY_EXISTS", False),
    (FailedPreconditionError, "FAILED_PRECONDITION", False),
    (ConfigurationError, "CONFIGURATION", False),
    (ResourceExhaustedError, "RESOURCE_EXHAUSTED", True),
    (UnavailableError, "UNAVAILABLE", True),
)


# --- requests ----------------------------------------------------------------------------------


def sampling_from_proto(message: common_pb2.SamplingParams) -> Sampling:
    def optional(name: str) -> Any:
        return getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]

    return Sampling(
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        top_k=optional("top_k"),
        min_p=optional("min_p"),
        max_tokens=optional("max_tokens"),
        seed=optional("seed"),
        stop=tuple(message.stop),
        n=optional("n"),
        presence_penalty=optional("presence_penalty"),
        frequency_penalty=optional("frequency_penalty"),
        repetition_penalty=optional("repetition_penalty"),
    )


def sampling_to_proto(sampling: Sampling) -> common_pb2.SamplingParams:
    values = sampling.as_dict()
    return common_pb2.SamplingParams(**values)


def model_ref_from_proto(message: common_pb2.ModelRef) -> ModelRef:
    return ModelRef(message.name, message.revision, message.adapter)


def model_ref_to_proto(ref: ModelRef) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=ref.name, revision=ref.revision, adapter=ref.adapter)


def messages_from_proto(
    messages: Sequence[common_pb2.ChatMessage], where: str
) -> tuple[ChatMessage, ...]:
    out = []
    for index, message in enumerate(messages):
        role = ROLES.get(message.role)
        if role is None:
            raise InvalidArgumentError(
                "role is unspecified; use ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
                where=f"{where}.messages[{index}].role",
            )
        out.append(ChatMessage(role, message.content))
    return tuple(out)


def input_from_proto(message: pb.GenerationInput, where: str = "input") -> GenerationInput:
    return GenerationInput(
        model=model_ref_from_proto(message.model),
        messages=messages_from_proto(message.messages, where),
        sampling=sampling_from_proto(message.sampling),
    )


def input_to_proto(request: GenerationInput) -> pb.GenerationInput:
    return pb.GenerationInput(
        model=model_ref_to_proto(request.model),
        messages=[
            common_pb2.ChatMessage(role=ROLE_TO_PROTO[m.role], content=m.content)
            for m in request.messages
        ],
        sampling=sampling_to_proto(request.sampling),
    )


def cache_policy_from_proto(value: common_pb2.CachePolicy.ValueType) -> CachePolicy:
    return CACHE_POLICIES.get(value, CachePolicy.USE)


# --- generations -------------------------------------------------------------------------------


def generation_to_proto(
    generation: Generation, context: common_pb2.WorkContext | None = None
) -> pb.Generation:
    message = pb.Generation(
        generation_id=generation.generation_id,
        model=model_ref_to_proto(generation.model),
        usage=common_pb2.Usage(
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
        ),
        cached=generation.cached,
        backend=BACKEND_TO_PROTO[generation.backend],
        prompt_sha256=generation.prompt_sha256,
    )
    for choice in generation.choices:
        style = style_of(choice.text, choice.completion_tokens or None)
        message.choices.append(
            pb.Choice(
                index=choice.index,
                text=choice.text,
                finish_reason=FINISH_TO_PROTO[choice.finish_reason],
                style=common_pb2.StyleFeatures(
                    tokens=style.tokens,
                    characters=style.characters,
                    header_count=style.header_count,
                    list_count=style.list_count,
                    bold_count=style.bold_count,
                ),
            )
        )
    message.latency.FromNanoseconds(round(generation.latency_seconds * 1e9))
    if generation.time_to_first_token is not None:
        message.time_to_first_token.FromNanoseconds(round(generation.time_to_first_token * 1e9))
    message.created_at.FromDatetime(generation.created_at)
    if context is not None:
        message.context.CopyFrom(context)
    return message


def generation_from_proto(message: pb.Generation) -> Generation:
    return Generation(
        generation_id=message.generation_id,
        model=model_ref_from_proto(message.model),
        choices=tuple(
            Choice(
                index=choice.index,
                text=choice.text,
                finish_reason=FINISH_FROM_PROTO.get(choice.finish_reason, FinishReason.STOP),
                completion_tokens=int(choice.style.tokens),
            )
            for choice in message.choices
        ),
        prompt_tokens=int(message.usage.prompt_tokens),
        completion_tokens=int(message.usage.completion_tokens),
        latency_seconds=message.latency.ToNanoseconds() / 1e9,
        time_to_first_token=(
            message.time_to_first_token.ToNanoseconds() / 1e9
            if message.HasField("time_to_first_token")
            else None
        ),
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        backend=BACKENDS.get(message.backend, BackendKind.TRANSFORMERS),
        prompt_sha256=message.prompt_sha256,
        cached=message.cached,
    )


def failure_of(error: BaseException) -> common_pb2.Failure:
    """A Failure with a stable reason code; unexpected errors are retryable INTERNAL."""
    for error_class, reason, retryable in _FAILURES:
        if isinstance(error, error_class):
            return common_pb2.Failure(reason=reason, message=str(error), retryable=retryable)
    return common_pb2.Failure(
        reason="INTERNAL", message=f"{type(error).__name__}: {error}", retryable=True
    )


# --- model specs -------------------------------------------------------------------------------


def spec_from_proto(message: pb.ModelSpec, where: str = "spec") -> ModelSpec:
    backend = BACKENDS.get(message.backend)
    if backend is None:
        raise InvalidArgumentError(
            "backend is unspecified; choose BACKEND_VLLM, BACKEND_OPENAI_COMPATIBLE, "
            "BACKEND_TRANSFORMERS or BACKEND_REPLAY",
            where=f"{where}.backend",
        )
    return ModelSpec(
        name=message.name,
        backend=backend,
        uri=message.uri,
        revision=message.revision,
        default_sampling=sampling_from_proto(message.default_sampling),
        endpoint=message.endpoint,
        api_key_secret=message.api_key_secret,
        tensor_parallel_size=(
            message.tensor_parallel_size if message.HasField("tensor_parallel_size") else None
        ),
        max_model_len=message.max_model_len if message.HasField("max_model_len") else None,
        dtype=message.dtype,
        adapters=tuple(adapter_from_proto(adapter) for adapter in message.adapters),
        replay_uris=tuple(message.replay_uris),
        replay_format=REPLAY_FORMATS.get(message.replay_format, ReplayFormat.AUTO),
        backend_options=struct_to_dict(message.backend_options),
        labels=dict(message.labels),
    )


def spec_to_proto(spec: ModelSpec) -> pb.ModelSpec:
    message = pb.ModelSpec(
        name=spec.name,
        backend=BACKEND_TO_PROTO[spec.backend],
        uri=spec.uri,
        revision=spec.revision,
        default_sampling=sampling_to_proto(spec.default_sampling),
        endpoint=spec.endpoint,
        api_key_secret=spec.api_key_secret,
        dtype=spec.dtype,
        adapters=[adapter_to_proto(adapter) for adapter in spec.adapters],
        replay_uris=list(spec.replay_uris),
        replay_format=REPLAY_FORMAT_TO_PROTO[spec.replay_format],
        labels=dict(spec.labels),
    )
    if spec.tensor_parallel_size is not None:
        message.tensor_parallel_size = spec.tensor_parallel_size
    if spec.max_model_len is not None:
        message.max_model_len = spec.max_model_len
    if spec.backend_options:
        message.backend_options.update(dict(spec.backend_options))
    return message


def adapter_from_proto(message: pb.AdapterSpec) -> AdapterSpec:
    return AdapterSpec(message.name, message.uri, message.revision)


def adapter_to_proto(adapter: AdapterSpec) -> pb.AdapterSpec:
    return pb.AdapterSpec(name=adapter.name, uri=adapter.uri, revision=adapter.revision)


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain values; whole numbers become ints (Struct keeps every number a double),
    so engine arguments such as max_num_seqs arrive as the ints they were."""
    return {key: _whole(value) for key, value in json_format.MessageToDict(message).items()}


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole(item) for item in value]
    return value


def info_to_proto(info: ModelInfo) -> pb.ModelInfo:
    message = pb.ModelInfo(
        spec=spec_to_proto(info.spec),
        state=STATE_TO_PROTO[info.state],
        loaded_adapters=list(info.loaded_adapters),
        instance=info.instance,
    )
    if info.context_length is not None:
        message.context_length = info.context_length
    if info.loaded_at is not None:
        message.loaded_at.FromDatetime(info.loaded_at)
    if info.failure:
        message.failure.CopyFrom(
            common_pb2.Failure(reason="LOAD_FAILED", message=info.failure, retryable=True)
        )
    return message


def spec_from_declaration(declaration: ModelDeclaration) -> ModelSpec:
    sampling = declaration.default_sampling.model_dump()
    sampling["stop"] = tuple(sampling["stop"])
    return ModelSpec(
        name=declaration.name,
        backend=BackendKind(declaration.backend),
        uri=declaration.uri,
        revision=declaration.revision,
        default_sampling=Sampling(**sampling),
        endpoint=declaration.endpoint,
        api_key_secret=declaration.api_key_secret,
        tensor_parallel_size=declaration.tensor_parallel_size,
        max_model_len=declaration.max_model_len,
        dtype=declaration.dtype,
        adapters=tuple(
            AdapterSpec(adapter.name, adapter.uri, adapter.revision)
            for adapter in declaration.adapters
        ),
        replay_uris=tuple(declaration.replay_uris),
        replay_format=ReplayFormat(declaration.replay_format),
        backend_options=dict(declaration.backend_options),
        labels=dict(declaration.labels),
    )
