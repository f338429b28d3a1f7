"""OpenAI-compatible chat completions over HTTP: vLLM servers, TGI, hosted APIs.

``ModelSpec.endpoint`` is the base URL including the version (``http://host:8000/v1``);
``ModelSpec.uri`` the remote model id (the registry name when empty). The API key comes from the
secret named by ``api_key_secret`` and is sent as a bearer token.

Transient failures (connection errors, timeouts, 408/409/429/5xx) are retried with exponential
backoff and jitter, honouring ``Retry-After``; a streamed request is retried only while no text
has been passed on. Requests are limited to ``max_concurrency`` at once and, when set, to
``requests_per_second``.

Backend options: ``timeout_seconds`` (120), ``max_retries`` (4), ``backoff_seconds`` (0.5),
``max_backoff_seconds`` (30), ``max_concurrency`` (16), ``requests_per_second`` (unlimited),
``headers`` (extra headers), ``extra_body`` (merged into every request), ``max_tokens_field``
("max_tokens" or "max_completion_tokens"), ``standard_params_only`` (drop top_k, min_p and
repetition_penalty, which hosted APIs reject).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from arena_core.errors import (
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from arena_inference.domain.backend import BackendRequest, ModelBackend
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    Choice,
    Completion,
    FinishReason,
    ModelSpec,
)

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_FINISH = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "abort": FinishReason.ABORTED,
}
_EXTENDED_PARAMS = ("top_k", "min_p", "repetition_penalty")

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """A token bucket: at most `rate` acquisitions per second on average, bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._capacity = max(1.0, burst if burst is not None else rate)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(
                    self._capacity, self._tokens + (now - self._updated) * self._rate
                )
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._sleep((1 - self._tokens) / self._rate)


class _RetryableError(Exception):
    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class OpenAIBackend(ModelBackend):
    kind = BackendKind.OPENAI

    def __init__(
        self,
        spec: ModelSpec,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(spec)
        options = dict(spec.backend_options)
        self._api_key = api_key
        self._transport = transport
        self._sleep = sleep
        self._timeout = float(options.get("timeout_seconds", 120))
        self._max_retries = int(options.get("max_retries", 4))
        self._backoff = float(options.get("backoff_seconds", 0.5))
        self._max_backoff = float(options.get("max_backoff_seconds", 30))
        self._concurrency = asyncio.Semaphore(int(options.get("max_concurrency", 16)))
        rate = options.get("requests_per_second")
        self._limiter = RateLimiter(float(rate), sleep=sleep) if rate else None
        self._headers = {str(k): str(v) for k, v in dict(options.get("headers", {})).items()}
        self._extra_body = dict(options.get("extra_body", {}))
        self._max_tokens_field = str(options.get("max_tokens_field", "max_tokens"))
        self._standard_only = bool(options.get("standard_params_only", False))
        self._adapters: dict[str, str] = {}
        self._client: httpx.AsyncClient | None = None
        self.attempts = 0  # HTTP calls made, retries included (for tests and logs)

    @property
    def remote_model(self) -> str:
        return self.spec.uri or self.spec.name

    async def load(self) -> None:
        headers = {"Accept": "application/json", **self._headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._client = httpx.AsyncClient(
            base_url=self.spec.endpoint.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
            transport=self._transport,
        )

    async def unload(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        # The server serves adapters as model ids of their own (vLLM's --lora-modules).
        self._adapters[adapter.name] = adapter.uri if "://" not in adapter.uri else adapter.name

    async def unload_adapter(self, name: str) -> None:
        del self._adapters[name]

    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        results = await asyncio.gather(
            *(self._one(request) for request in requests), return_exceptions=True
        )
        out: list[Completion | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    # --- one request ---------------------------------------------------------------------------

    async def _one(self, request: BackendRequest) -> Completion:
        if self._client is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        body = self._body(request)
        async with self._concurrency:
            last: _RetryableError | None = None
            for attempt in range(self._max_retries + 1):
                if attempt:
                    assert last is not None
                    await self._sleep(self._delay(attempt, last.retry_after))
                if self._limiter is not None:
                    await self._limiter.acquire()
                started = time.perf_counter()
                self.attempts += 1
                try:
                    if request.on_delta is None:
                        return await self._post(body, started)
                    return await self._stream(body, request, started)
                except _RetryableError as error:
                    last = error
                    log.warning(
                        "%s: attempt %d of %d failed: %s",
                        self.spec.name,
                        attempt + 1,
                        self._max_retries + 1,
                        error,
                    )
            assert last is not None
            if last.status == 429:
                raise ResourceExhaustedError(
                    f"{self.spec.endpoint} kept refusing requests for model {self.spec.name!r} "
                    f"after {self._max_retries + 1} attempts: {last}"
                )
            raise UnavailableError(
                f"{self.spec.endpoint} failed for model {self.spec.name!r} after "
                f"{self._max_retries + 1} attempts: {last}"
            )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        ceiling = min(self._max_backoff, self._backoff * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter spreads retrying replicas

    def _body(self, request: BackendRequest) -> dict[str, Any]:
        sampling = request.sampling
        model = self._adapters.get(request.adapter, request.adapter) or self.remote_model
        body: dict[str, Any] = {
            "model": model,
            "messages": [message.as_dict() for message in request.prompt.messages],
        }
        values = sampling.as_dict()
        if "max_tokens" in values:
            body[self._max_tokens_field] = values.pop("max_tokens")
        for name, value in values.items():
            if self._standard_only and name in _EXTENDED_PARAMS:
                continue
            body[name] = value
        if request.on_delta is not None:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self._extra_body)
        return body

    async def _post(self, body: dict[str, Any], started: float) -> Completion:
        assert self._client is not None
        try:
            response = await self._client.post("chat/completions", json=body)
        except httpx.TransportError as error:
            raise _RetryableError(f"{type(error).__name__}: {error}") from None
        if response.status_code != 200:
            self._raise_for(response.status_code, response.text, response.headers)
        payload = _json(response.text)
        elapsed = time.perf_counter() - started
        choices_data = payload.get("choices") or []
        usage = payload.get("usage") or {}
        total = int(usage.get("completion_tokens", 0))
        choices = []
        for position, choice in enumerate(choices_data):
            message = choice.get("message") or {}
            choices.append(
                Choice(
                    index=int(choice.get("index", position)),
                    text=message.get("content") or "",
                    finish_reason=_FINISH.get(choice.get("finish_reason") or "", FinishReason.STOP),
                    completion_tokens=_share(total, len(choices_data), position),
                )
            )
        if not choices:
            raise UnavailableError(f"{self.spec.endpoint} answered without choices: {payload}")
        return Completion(
            tuple(sorted(choices, key=lambda choice: choice.index)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            time_to_first_token=elapsed,  # not streamed: the whole answer came at once
        )

    async def _stream(
        self, body: dict[str, Any], request: BackendRequest, started: float
    ) -> Completion:
        assert self._client is not None
        assert request.on_delta is not None
        texts: dict[int, list[str]] = {}
        finishes: dict[int, FinishReason] = {}
        usage: dict[str, Any] = {}
        first: float | None = None
        emitted = False
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    self._raise_for(response.status_code, text, response.headers)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = _json(data)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        index = int(choice.get("index", 0))
                        delta = (choice.get("delta") or {}).get("content") or ""
                        if delta:
                            first = first or time.perf_counter()
                            texts.setdefault(index, []).append(delta)
                            request.on_delta(index, delta)
                            emitted = True
                        if choice.get("finish_reason"):
                            finishes[index] = _FINISH.get(
                                choice["finish_reason"], FinishReason.STOP
                            )
        except httpx.TransportError as error:
            if emitted:  # text already passed on cannot be taken back: no retry
                raise UnavailableError(
                    f"{self.spec.endpoint} broke off a streamed answer: {error}"
                ) from None
            raise _RetryableError(f"{type(error).__name__}: {error}") from None
        indices = sorted(set(texts) | set(finishes)) or [0]
        total = int(usage.get("completion_tokens", 0))
        return Completion(
            tuple(
                Choice(
                    index,
                    "".join(texts.get(index, [])),
                    finishes.get(index, FinishReason.STOP),
                    _share(total, len(indices), position),
                )
                for position, index in enumerate(indices)
            ),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            time_to_first_token=(first - started) if first else None,
        )

    def _raise_for(self, status: int, text: str, headers: httpx.Headers) -> None:
        message = _error_message(text)
        where = f"{self.spec.endpoint} (HTTP {status})"
        if status in _RETRY_STATUS:
            raise _RetryableError(f"HTTP {status}: {message}", _retry_after(headers), status)
        error: ArenaError
        if status in (400, 413, 422):
            error = InvalidArgumentError(
                f"the endpoint rejected the request: {message}", where=where
            )
        elif status in (401, 403):
            error = FailedPreconditionError(
                f"{where} refused the credentials of secret "
                f"{self.spec.api_key_secret or '(none)'!r}: {message}"
            )
        elif status == 404:
            error = NotFoundError(f"{where}: model {self.remote_model!r} not found: {message}")
        else:
            error = UnavailableError(f"{where}: {message}")
        raise error


def _share(total: int, parts: int, position: int) -> int:
    """Splits a token total over the choices when the server only reports the sum."""
    if parts <= 0:
        return 0
    return total // parts + (1 if position < total % parts else 0)


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UnavailableError(f"the endpoint answered with invalid JSON: {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise UnavailableError(f"the endpoint answered with {type(value).__name__}, not an object")
    return value


def _error_message(text: str) -> str:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if payload.get("message"):
            return str(payload["message"])
    return text[:500]


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
