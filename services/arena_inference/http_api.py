"""An OpenAI-compatible HTTP endpoint on the service, so existing tools can use it:
``POST /v1/chat/completions`` (streaming included) and ``GET /v1/models``.

Requests go through the same engine as gRPC (validation, answer cache, batching). Extensions:
``top_k``, ``min_p`` and ``repetition_penalty`` (as vLLM accepts them), ``cache`` ("use",
"refresh" or "bypass"), and ``"model": "<name>:<adapter>"`` for a LoRA adapter. Each answer carries
``arena.generation_id`` and ``arena.cached``. Errors use OpenAI's ``{"error": {...}}`` shape.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from arena_core.errors import (
    AlreadyExistsError,
    ConfigurationError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.types import (
    CachePolicy,
    ChatMessage,
    FinishReason,
    Generation,
    GenerationInput,
    ModelRef,
    Role,
    Sampling,
    StreamDelta,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.ABORTED: "abort",
}
_FLOAT_PARAMS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)
_INT_PARAMS = ("top_k", "seed", "n")
MAX_BODY_BYTES = 32 * 1024 * 1024


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

    def response(self) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            },
            status=self.status,
        )


def http_error_of(error: Exception) -> HttpError:
    """The OpenAI-style status and error type for a domain error."""
    message = str(error)
    if isinstance(error, InvalidArgumentError):
        return HttpError(400, message, "invalid_request_error", error.where)
    if isinstance(error, NotFoundError):
        return HttpError(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(error, AlreadyExistsError | FailedPreconditionError | ConfigurationError):
        return HttpError(409, message, "invalid_request_error")
    if isinstance(error, ResourceExhaustedError):
        return HttpError(429, message, "rate_limit_error")
    if isinstance(error, UnavailableError):
        return HttpError(503, message, "server_error")
    log.exception("unhandled error in the HTTP endpoint", exc_info=error)
    return HttpError(500, "internal error", "server_error")


class OpenAIHttpServer:
    def __init__(
        self, engine: InferenceEngine, host: str, port: int, api_key: str | None = None
    ) -> None:
        self._engine = engine
        self._host = host
        self._port = port
        self._api_key = api_key
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host
        return f"http://{host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._errors, self._auth], client_max_size=MAX_BODY_BYTES
        )
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{name}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            if error.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"ARENA_INFERENCE__HTTP_PORT: port {self._port} is already in use"
                ) from None
            raise
        self._runner = runner
        self.port = self._port
        log.info("OpenAI-compatible HTTP endpoint listening", extra={"url": self.base_url})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- middleware ----------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as error:
            return error.response()
        except web.HTTPException as error:
            return HttpError(
                error.status, error.reason or "error", "invalid_request_error"
            ).response()
        except Exception as error:  # noqa: BLE001 - every error becomes an OpenAI-style answer
            return http_error_of(error).response()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._api_key:
            sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(sent.encode(), self._api_key.encode()):
                raise HttpError(
                    401,
                    "missing or wrong API key (Authorization: Bearer ...)",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
        return await handler(request)

    # --- routes --------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [self._model_card(info.spec.name) for info in self._engine.registry.list()],
            }
        )

    async def _model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self._engine.registry.info(name)  # NotFoundError -> 404
        return web.json_response(self._model_card(name))

    def _model_card(self, name: str) -> dict[str, Any]:
        info = self._engine.registry.info(name)
        loaded = info.loaded_at.timestamp() if info.loaded_at else time.time()
        return {
            "id": name,
            "object": "model",
            "created": int(loaded),
            "owned_by": "arena",
            "backend": info.spec.backend.value,
            "revision": info.spec.resolved_revision,
            "state": info.state.value,
            "max_model_len": info.context_length,
            "adapters": list(info.loaded_adapters),
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HttpError(
                400, f"the body is not valid JSON: {error}", "invalid_request_error"
            ) from None
        generation_input, policy, stream, include_usage = self._parse(body)
        if not stream:
            generation = await self._engine.generate(generation_input, policy)
            return web.json_response(_completion(generation, body["model"]))
        return await self._stream(request, generation_input, policy, body["model"], include_usage)

    async def _stream(
        self,
        request: web.Request,
        generation_input: GenerationInput,
        policy: CachePolicy,
        model: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        items = self._engine.stream(generation_input, policy)
        # The first item decides between an error response and a stream.
        first = await anext(aiter(items))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        created = int(time.time())
        chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        opened: set[int] = set()

        async def send(payload: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }

        try:
            async for item in _prepend(first, items):
                if isinstance(item, StreamDelta):
                    delta: dict[str, Any] = {"content": item.text}
                    if item.choice_index not in opened:
                        opened.add(item.choice_index)
                        delta["role"] = "assistant"
                    await send(
                        chunk([{"index": item.choice_index, "delta": delta, "finish_reason": None}])
                    )
                    continue
                for choice in item.choices:
                    await send(
                        chunk(
                            [
                                {
                                    "index": choice.index,
                                    "delta": {},
                                    "finish_reason": _FINISH[choice.finish_reason],
                                }
                            ]
                        )
                    )
                if include_usage:
                    final = chunk([])
                    final["usage"] = _usage(item)
                    await send(final)
        except Exception as error:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
            await send({"error": {"message": http_error_of(error).message, "type": "server_error"}})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _parse(self, body: Any) -> tuple[GenerationInput, CachePolicy, bool, bool]:
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise HttpError(
                400, "model is required (a registered model name)", "invalid_request_error", "model"
            )
        ref = ModelRef(model)
        if model not in self._engine.registry.names() and ":" in model:
            base, adapter = model.split(":", 1)
            ref = ModelRef(base, adapter=adapter)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise HttpError(
                400,
                "messages must be a list of {role, content}",
                "invalid_request_error",
                "messages",
            )
        parsed = tuple(_message(item, index) for index, item in enumerate(messages))
        policy_name = body.get("cache", "use")
        try:
            policy = CachePolicy(policy_name)
        except ValueError:
            raise HttpError(
                400, "cache must be one of use, refresh, bypass", "invalid_request_error", "cache"
            ) from None
        stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
        return GenerationInput(ref, parsed, _sampling(body)), policy, stream, include_usage


async def _prepend(
    first: StreamDelta | Generation, rest: AsyncIterator[StreamDelta | Generation]
) -> AsyncIterator[StreamDelta | Generation]:
    yield first
    async for item in rest:
        yield item


def _message(item: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(item, dict):
        raise HttpError(400, "a message must be an object", "invalid_request_error", where)
    role = _ROLES.get(str(item.get("role")))
    if role is None:
        raise HttpError(
            400, f"unknown role {item.get('role')!r}", "invalid_request_error", f"{where}.role"
        )
    content = item.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise HttpError(
                    400,
                    "only text content parts are supported",
                    "invalid_request_error",
                    f"{where}.content",
                )
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise HttpError(400, "content must be text", "invalid_request_error", f"{where}.content")
    return ChatMessage(role, content)


def _sampling(body: dict[str, Any]) -> Sampling:
    values: dict[str, Any] = {}
    for name in _FLOAT_PARAMS:
        value = body.get(name)
        if value is not None:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise HttpError(400, f"{name} must be a number", "invalid_request_error", name)
            values[name] = float(value)
    for name in _INT_PARAMS:
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise HttpError(400, f"{name} must be an integer", "invalid_request_error", name)
            values[name] = value
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise HttpError(
                400, "max_tokens must be an integer", "invalid_request_error", "max_tokens"
            )
        values["max_tokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        values["stop"] = (stop,)
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        values["stop"] = tuple(stop)
    elif stop is not None:
        raise HttpError(
            400, "stop must be a string or a list of strings", "invalid_request_error", "stop"
        )
    return Sampling(**values)


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def _completion(generation: Generation, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{generation.generation_id[:24]}",
        "object": "chat.completion",
        "created": int(generation.created_at.timestamp()),
        "model": model,
        "system_fingerprint": generation.model.revision,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "finish_reason": _FINISH[choice.finish_reason],
            }
            for choice in generation.choices
        ],
        "usage": _usage(generation),
        "arena": {"generation_id": generation.generation_id, "cached": generation.cached},
    }
