"""A scripted backend for engine and registry tests: answers by echoing, counts its calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from arena_core.errors import UnavailableError
from arena_inference.domain.backend import BackendRequest, ModelBackend, Prompt
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.ports import MemoryAnswerCache
from arena_inference.domain.registry import ModelRegistry
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Choice,
    Completion,
    FinishReason,
    GenerationInput,
    ModelRef,
    ModelSpec,
    Role,
    Sampling,
)


class EchoBackend(ModelBackend):
    """Answers "<model revision>: <last message>", one token per word; context of 50 words."""

    kind = BackendKind.TRANSFORMERS

    def __init__(self, spec: ModelSpec, *, context: int = 50, delay: float = 0.0) -> None:
        super().__init__(spec)
        self.context = context
        self.delay = delay
        self.loaded = False
        self.unloaded = False
        self.calls: list[list[BackendRequest]] = []
        self.fail_next: list[Exception] = []
        self.adapters: list[str] = []
        self.load_gate: asyncio.Event | None = None

    async def load(self) -> None:
        if self.spec.uri == "broken":
            raise OSError("no weights at 'broken'")
        if self.load_gate is not None:
            await self.load_gate.wait()
        self.loaded = True

    async def unload(self) -> None:
        self.unloaded = True

    @property
    def context_length(self) -> int | None:
        return self.context

    def prepare(self, messages: Sequence[ChatMessage]) -> Prompt:
        words = sum(len(message.content.split()) for message in messages)
        return Prompt(tuple(messages), words)

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self.adapters)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        self.adapters.append(adapter.name)

    async def unload_adapter(self, name: str) -> None:
        self.adapters.remove(name)

    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        self.calls.append(list(requests))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            raise self.fail_next.pop(0)
        out: list[Completion | Exception] = []
        for request in requests:
            text = f"{self.spec.revision or 'r0'}: {request.prompt.messages[-1].content}"
            if request.adapter:
                text = f"[{request.adapter}] {text}"
            words = text.split()[: request.sampling.max_tokens]
            reason = FinishReason.LENGTH if len(text.split()) > len(words) else FinishReason.STOP
            text = " ".join(words)
            if request.on_delta is not None:
                for word in words:
                    request.on_delta(0, word + " ")
            out.append(
                Completion(
                    (Choice(0, text, reason, len(words)),),
                    prompt_tokens=request.prompt.token_count or 0,
                    time_to_first_token=0.001,
                )
            )
        return out


class Factory:
    """Creates EchoBackends and keeps them for inspection."""

    def __init__(self, **options: float) -> None:
        self.options = options
        self.backends: list[EchoBackend] = []

    def __call__(self, spec: ModelSpec) -> EchoBackend:
        backend = EchoBackend(spec, **self.options)  # type: ignore[arg-type]
        self.backends.append(backend)
        return backend


def spec(name: str = "echo", revision: str = "r1", **fields: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        backend=BackendKind.TRANSFORMERS,
        uri=str(fields.pop("uri", "/models/echo")),
        revision=revision,
        **fields,  # type: ignore[arg-type]
    )


def ask(text: str = "hello there", model: str = "echo", **sampling: object) -> GenerationInput:
    return GenerationInput(
        ModelRef(model),
        (ChatMessage(Role.USER, text),),
        Sampling(**sampling),  # type: ignore[arg-type]
    )


async def engine_with(*specs: ModelSpec, **options: float) -> tuple[InferenceEngine, Factory]:
    factory = Factory(**options)
    registry = ModelRegistry(factory, instance="test")
    for item in specs or (spec(),):
        await registry.register(item)
    return InferenceEngine(registry, MemoryAnswerCache()), factory


__all__ = ["EchoBackend", "Factory", "UnavailableError", "ask", "engine_with", "spec"]
