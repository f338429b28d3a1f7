"""Checking a generation request and naming it: validation with clear messages, and the ids.

`generation_id` is the answer-cache key: the canonical hash of everything that determines an
answer (model name, resolved revision, adapter, messages, effective sampling with the seed), so
the same request is never generated twice. `prompt_sha256` hashes the messages alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_inference.domain.types import ChatMessage, GenerationInput, ModelRef, Role, Sampling

# Bumped if the key's composition ever changes, so old and new keys never collide.
GENERATION_KEY_VERSION = "arena.inference.generation/v1"
MAX_CHOICES = 16


def validate_input(request: GenerationInput, where: str = "input") -> None:
    """Raises InvalidArgumentError naming the first bad field; changes nothing."""
    if not request.model.name.strip():
        raise InvalidArgumentError("model name is empty", where=f"{where}.model.name")
    if not request.messages:
        raise InvalidArgumentError(
            "messages is empty; send at least one user message", where=f"{where}.messages"
        )
    for index, message in enumerate(request.messages):
        if not isinstance(message.role, Role):
            raise InvalidArgumentError(
                f"role {message.role!r} is not one of system, user, assistant, tool",
                where=f"{where}.messages[{index}].role",
            )
    if request.messages[-1].role == Role.ASSISTANT:
        raise InvalidArgumentError(
            "the last message is the assistant's; end with the turn to answer",
            where=f"{where}.messages[{len(request.messages) - 1}].role",
        )
    validate_sampling(request.sampling, f"{where}.sampling")


def validate_sampling(sampling: Sampling, where: str = "sampling") -> None:
    def bad(field: str, message: str) -> InvalidArgumentError:
        return InvalidArgumentError(message, where=f"{where}.{field}")

    if sampling.max_tokens is not None and sampling.max_tokens <= 0:
        raise bad("max_tokens", f"must be positive (got {sampling.max_tokens})")
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if value is not None and not math.isfinite(value):
            raise bad(name, f"must be a finite number (got {value})")
    if sampling.temperature is not None and sampling.temperature < 0:
        raise bad("temperature", f"must be >= 0 (got {sampling.temperature})")
    if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
        raise bad("top_p", f"must be in (0, 1] (got {sampling.top_p})")
    if sampling.min_p is not None and not 0 <= sampling.min_p <= 1:
        raise bad("min_p", f"must be in [0, 1] (got {sampling.min_p})")
    if sampling.top_k is not None and sampling.top_k < 0:
        raise bad("top_k", f"must be >= 0, 0 meaning no limit (got {sampling.top_k})")
    if sampling.n is not None and not 1 <= sampling.n <= MAX_CHOICES:
        raise bad("n", f"must be between 1 and {MAX_CHOICES} (got {sampling.n})")
    if sampling.repetition_penalty is not None and not (
        math.isfinite(sampling.repetition_penalty) and sampling.repetition_penalty > 0
    ):
        raise bad("repetition_penalty", f"must be > 0 (got {sampling.repetition_penalty})")
    for index, stop in enumerate(sampling.stop):
        if not stop:
            raise bad(f"stop[{index}]", "stop strings must not be empty")


def check_context(model: str, prompt_tokens: int, context: int) -> int:
    """The room left for the answer; InvalidArgumentError when the prompt leaves none."""
    if prompt_tokens >= context:
        raise InvalidArgumentError(
            f"the prompt is {prompt_tokens} tokens but model {model!r} accepts at most {context} "
            "tokens of context (prompt and answer together); shorten the conversation",
            where="input.messages",
        )
    return context - prompt_tokens


def generation_id(model: ModelRef, messages: Sequence[ChatMessage], sampling: Sampling) -> str:
    """The cache key; `model.revision` must already be resolved."""
    return content_hash(
        GENERATION_KEY_VERSION,
        model.name,
        model.revision,
        model.adapter,
        [message.as_dict() for message in messages],
        sampling.as_dict(),
    )


def prompt_sha256(messages: Sequence[ChatMessage]) -> str:
    return content_hash([message.as_dict() for message in messages])
