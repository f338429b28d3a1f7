"""The inference domain's value types: chat messages, sampling, model specs, generations.

Plain dataclasses, independent of the protobuf contracts (the gRPC and bus adapters translate), so
the engine, the registry and the backends can be tested without any transport.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class BackendKind(StrEnum):
    """Which engine runs a model."""

    VLLM = "vllm"
    OPENAI = "openai"
    TRANSFORMERS = "transformers"
    REPLAY = "replay"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    ABORTED = "aborted"


class ModelState(StrEnum):
    REGISTERED = "registered"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


class ReplayFormat(StrEnum):
    """Recorded-answer file formats; AUTO looks at each record."""

    AUTO = "auto"
    FASTCHAT = "fastchat"
    ARENA_HARD = "arena_hard"
    ALPACA_EVAL = "alpaca_eval"


class CachePolicy(StrEnum):
    USE = "use"
    REFRESH = "refresh"
    BYPASS = "bypass"


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role.value, "content": self.content}


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; None means "not set here" (a default applies)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None

    def merged(self, defaults: Sampling) -> Sampling:
        """These settings, with every unset field taken from `defaults`."""
        values: dict[str, Any] = {}
        for name in _SAMPLING_FIELDS:
            mine = getattr(self, name)
            unset = mine is None or (name == "stop" and not mine)
            values[name] = getattr(defaults, name) if unset else mine
        return Sampling(**values)

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, for cache keys and logs (unset fields are left out)."""
        values = {
            name: getattr(self, name)
            for name in _SAMPLING_FIELDS
            if getattr(self, name) is not None
        }
        values["stop"] = list(self.stop)
        if not values["stop"]:
            del values["stop"]
        return values

    # Effective values a backend uses when nothing set them.
    @property
    def temperature_or_default(self) -> float:
        return 1.0 if self.temperature is None else self.temperature

    @property
    def top_p_or_default(self) -> float:
        return 1.0 if self.top_p is None else self.top_p

    @property
    def n_or_default(self) -> int:
        return 1 if self.n is None else self.n


# Every request merges and hashes its sampling: the field names are looked up once.
_SAMPLING_FIELDS = tuple(item.name for item in dataclasses.fields(Sampling))


@dataclass(frozen=True)
class ModelRef:
    name: str
    revision: str = ""
    adapter: str = ""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    uri: str
    revision: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """How to serve one model; declared in settings or registered at run time."""

    name: str
    backend: BackendKind
    uri: str = ""
    revision: str = ""
    default_sampling: Sampling = Sampling()
    endpoint: str = ""
    api_key_secret: str = ""
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    dtype: str = ""
    adapters: tuple[AdapterSpec, ...] = ()
    replay_uris: tuple[str, ...] = ()
    replay_format: ReplayFormat = ReplayFormat.AUTO
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def resolved_revision(self) -> str:
        """The revision answers are recorded under: the declared one, or one derived from the
        location, so two checkpoints registered under one name never share cached answers.
        Computed once per spec (specs are frozen): every request asks for it."""
        if self.revision:
            return self.revision
        from arena_core.hashing import content_hash

        location = self.uri or self.endpoint or ",".join(self.replay_uris)
        return "loc-" + content_hash(self.backend.value, location, self.endpoint)[:12]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as this replica sees it."""

    spec: ModelSpec
    state: ModelState
    loaded_adapters: tuple[str, ...] = ()
    context_length: int | None = None
    loaded_at: datetime | None = None
    failure: str | None = None
    instance: str = ""


@dataclass(frozen=True)
class GenerationInput:
    model: ModelRef
    messages: tuple[ChatMessage, ...]
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    """What a backend returns for one request."""

    choices: tuple[Choice, ...]
    prompt_tokens: int = 0
    # Seconds from the backend taking the request to its first token; None when unknown.
    time_to_first_token: float | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


@dataclass(frozen=True)
class Generation:
    """A finished answer, as cached and returned."""

    generation_id: str
    model: ModelRef
    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int
    latency_seconds: float
    time_to_first_token: float | None
    created_at: datetime
    backend: BackendKind
    prompt_sha256: str
    cached: bool = False


@dataclass(frozen=True)
class StreamDelta:
    """Text produced since the previous delta of the same choice."""

    choice_index: int
    text: str


def weights_location(uri: str) -> str:
    """What a loader accepts: a `file://` URI (as the training service registers checkpoints)
    becomes its local path; hub ids and other paths pass through unchanged."""
    return uri.removeprefix("file://") if uri.startswith("file://") else uri
