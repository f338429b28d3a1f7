"""The OpenAI-compatible client: request shape, API key, retries with backoff, rate limits,
error mapping and streaming, against a scripted HTTP transport (the real endpoint is covered by
the integration tests against the service's own HTTP API)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from arena_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from arena_inference.backends.openai_backend import OpenAIBackend, RateLimiter
from arena_inference.domain.backend import BackendRequest, Prompt
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Completion,
    FinishReason,
    ModelSpec,
    Role,
    Sampling,
)

Script = Callable[[httpx.Request], httpx.Response]


def completion_body(text: str = "hi there", finish: str = "stop") -> dict[str, object]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def backend(
    script: Script, sleeps: Sleeps | None = None, **options: object
) -> tuple[OpenAIBackend, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return script(request)

    spec = ModelSpec(
        name="strong",
        backend=BackendKind.OPENAI,
        uri="gpt-remote",
        endpoint="http://api.example/v1",
        api_key_secret="openai",
        backend_options={"max_retries": 3, **options},
    )
    instance = OpenAIBackend(
        spec, api_key="sk-test", transport=httpx.MockTransport(handler), sleep=sleeps or Sleeps()
    )
    await instance.load()
    return instance, seen


def request(text: str = "hello", on_delta: object = None, **sampling: object) -> BackendRequest:
    return BackendRequest(
        Prompt((ChatMessage(Role.USER, text),)),
        Sampling(**sampling),  # type: ignore[arg-type]
        on_delta=on_delta,  # type: ignore[arg-type]
    )


async def one(instance: OpenAIBackend, item: BackendRequest) -> Completion:
    (result,) = await instance.generate([item])
    if isinstance(result, Exception):
        raise result
    return result


async def test_a_chat_completion_request_carries_sampling_model_and_key() -> None:
    instance, seen = await backend(lambda _: httpx.Response(200, json=completion_body()))

    result = await one(
        instance, request(temperature=0.2, max_tokens=5, seed=3, stop=("x",), top_k=4)
    )

    sent = json.loads(seen[0].content)
    assert str(seen[0].url) == "http://api.example/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert sent == {
        "model": "gpt-remote",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.2,
        "max_tokens": 5,
        "seed": 3,
        "stop": ["x"],
        "top_k": 4,
    }
    assert result.choices[0].text == "hi there"
    assert result.choices[0].finish_reason == FinishReason.STOP
    assert (result.prompt_tokens, result.completion_tokens) == (7, 2)


async def test_hosted_api_options_drop_extended_params_and_rename_max_tokens() -> None:
    instance, seen = await backend(
        lambda _: httpx.Response(200, json=completion_body()),
        standard_params_only=True,
        max_tokens_field="max_completion_tokens",
    )

    await one(instance, request(max_tokens=5, top_k=4, min_p=0.1))

    sent = json.loads(seen[0].content)
    assert sent["max_completion_tokens"] == 5
    assert "top_k" not in sent
    assert "min_p" not in sent


async def test_server_errors_are_retried_with_growing_backoff() -> None:
    answers = iter(
        [httpx.Response(503), httpx.Response(502), httpx.Response(200, json=completion_body())]
    )
    sleeps = Sleeps()
    instance, seen = await backend(lambda _: next(answers), sleeps, backoff_seconds=1.0)

    result = await one(instance, request())

    assert result.choices[0].text == "hi there"
    assert len(seen) == 3
    assert 0.5 <= sleeps.calls[0] <= 1.0
    assert 1.0 <= sleeps.calls[1] <= 2.0


async def test_retry_after_is_honoured_and_a_spent_budget_is_resource_exhausted() -> None:
    sleeps = Sleeps()
    instance, seen = await backend(
        lambda _: httpx.Response(
            429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}}
        ),
        sleeps,
    )

    with pytest.raises(ResourceExhaustedError, match="slow down"):
        await one(instance, request())

    assert len(seen) == 4
    assert sleeps.calls == [7.0, 7.0, 7.0]


async def test_connection_failures_are_retried_then_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    instance, seen = await backend(refuse)

    with pytest.raises(UnavailableError, match="after 4 attempts"):
        await one(instance, request())
    assert len(seen) == 4


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (400, InvalidArgumentError, "context length exceeded"),
        (401, FailedPreconditionError, "secret 'openai'"),
        (404, NotFoundError, "'gpt-remote' not found"),
    ],
)
async def test_client_errors_are_not_retried_and_keep_the_servers_message(
    status: int, error: type[Exception], message: str
) -> None:
    instance, seen = await backend(
        lambda _: httpx.Response(status, json={"error": {"message": "context length exceeded"}})
    )

    with pytest.raises(error, match=message):
        await one(instance, request())
    assert len(seen) == 1


async def test_streaming_passes_deltas_on_and_assembles_the_answer() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    stream = "".join(f"data: {json.dumps(chunk)}\n\n" for chunk in chunks) + "data: [DONE]\n\n"
    instance, seen = await backend(
        lambda _: httpx.Response(200, text=stream, headers={"content-type": "text/event-stream"})
    )
    deltas: list[tuple[int, str]] = []

    result = await one(instance, request(on_delta=lambda i, t: deltas.append((i, t))))

    assert json.loads(seen[0].content)["stream"] is True
    assert deltas == [(0, "Hel"), (0, "lo")]
    assert result.choices[0].text == "Hello"
    assert result.choices[0].finish_reason == FinishReason.LENGTH
    assert result.completion_tokens == 2
    assert result.time_to_first_token is not None


async def test_adapters_are_requested_as_remote_model_ids() -> None:
    instance, seen = await backend(lambda _: httpx.Response(200, json=completion_body()))
    await instance.load_adapter(AdapterSpec("style", "style-lora"))

    await instance.generate(
        [BackendRequest(Prompt((ChatMessage(Role.USER, "x"),)), Sampling(), adapter="style")]
    )

    assert json.loads(seen[0].content)["model"] == "style-lora"
    assert instance.loaded_adapters == ("style",)


async def test_the_rate_limiter_spaces_requests() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(2.0, burst=1, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        await limiter.acquire()

    assert waits == [0.5, 0.5]
