"""The one interface every model backend implements (vLLM, OpenAI-compatible, transformers,
replay), and the request a backend receives once the engine has validated and resolved it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from arena_core.errors import FailedPreconditionError
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Completion,
    ModelSpec,
    Sampling,
)

# Called with (choice index, new text) as text is produced; may be called from another thread.
DeltaSink = Callable[[int, str], None]


@dataclass(frozen=True)
class Prompt:
    """A conversation as the backend will feed it: its token count (None when the backend cannot
    tell before calling) and whatever the backend precomputed (e.g. token ids)."""

    messages: tuple[ChatMessage, ...]
    token_count: int | None = None
    data: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BackendRequest:
    prompt: Prompt
    # Effective settings: model defaults applied, max_tokens always set and within the context.
    sampling: Sampling
    adapter: str = ""
    # Unique per call; engines that track requests (vLLM) use it as their request id.
    request_id: str = ""
    on_delta: DeltaSink | None = field(default=None, compare=False)


class ModelBackend(ABC):
    """One loaded model. Instances are created per registration by a backend factory."""

    kind: BackendKind

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    async def load(self) -> None:
        """Makes the model ready to serve; raises with a clear message when it cannot."""

    @abstractmethod
    async def unload(self) -> None:
        """Frees the model's memory; the backend is not used afterwards."""

    @property
    def context_length(self) -> int | None:
        """Longest prompt plus completion the model accepts; None when unknown."""
        return self.spec.max_model_len

    def prepare(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Applies the chat template / tokenizes, when the backend can, to count prompt tokens."""
        return Prompt(tuple(messages))

    @abstractmethod
    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        """Answers every request, one result per request in order; a failure of one request is
        returned in its place (as an exception) and does not fail the others."""

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return ()

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        raise FailedPreconditionError(
            f"model {self.spec.name!r} runs on the {self.kind.value} backend, "
            "which cannot attach LoRA adapters"
        )

    async def unload_adapter(self, name: str) -> None:
        raise FailedPreconditionError(
            f"model {self.spec.name!r} runs on the {self.kind.value} backend, "
            "which has no LoRA adapters"
        )

    @property
    def queued(self) -> int:
        """Requests waiting inside the backend (for the queue-depth gauge)."""
        return 0


BackendFactory = Callable[[ModelSpec], ModelBackend]
