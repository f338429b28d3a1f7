"""vLLM in-process (the ``AsyncLLM`` engine) for GPU nodes: continuous batching, prefix caching,
tensor parallelism, LoRA adapters attached and detached at run time.

vLLM is imported only when a vLLM model loads, so the service (and its tests) run where vLLM is not
installed; `import_vllm` is the one place that touches the package and tests replace it.

``ModelSpec.backend_options`` are passed to ``AsyncEngineArgs`` unchanged (e.g.
``gpu_memory_utilization``, ``enable_lora``, ``max_lora_rank``, ``max_num_seqs``), except
``sampling_overrides``: extra ``SamplingParams`` fields for every request (e.g.
``{"ignore_eos": true}`` for benchmarks). A model declared with adapters gets LoRA support turned
on; attaching adapters at run time needs ``enable_lora: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from arena_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arena_inference.domain.backend import BackendRequest, ModelBackend, Prompt
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Choice,
    Completion,
    FinishReason,
    ModelSpec,
    weights_location,
)

log = logging.getLogger(__name__)

_RESERVED_OPTIONS = {"sampling_overrides"}
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORTED}


@dataclass(frozen=True)
class VllmApi:
    """The few vLLM names the backend uses."""

    AsyncLLM: Any
    AsyncEngineArgs: Any
    SamplingParams: Any
    LoRARequest: Any
    RequestOutputKind: Any


def import_vllm() -> VllmApi:
    """vLLM's API, or a clear FailedPreconditionError where it is not installed."""
    try:
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as error:
        raise FailedPreconditionError(
            f"the vLLM backend needs vLLM, which is not importable here ({error}); install the "
            "[gpu] extra on a GPU node, or serve the model with the transformers backend"
        ) from None
    return VllmApi(AsyncLLM, AsyncEngineArgs, SamplingParams, LoRARequest, RequestOutputKind)


class VllmBackend(ModelBackend):
    kind = BackendKind.VLLM

    def __init__(
        self,
        spec: ModelSpec,
        *,
        gpu_memory_utilization: float = 0.9,
        api_loader: Callable[[], VllmApi] | None = None,
    ) -> None:
        super().__init__(spec)
        self._gpu_memory_utilization = gpu_memory_utilization
        # Looked up at creation, not at import, so tests can stand in for vLLM.
        self._api_loader = api_loader or import_vllm
        self._api: VllmApi | None = None
        self._engine: Any = None
        self._tokenizer: Any = None
        self._context: int | None = None
        self._loras: dict[str, Any] = {}
        self._lora_ids = itertools.count(1)
        self._sampling_overrides = dict(spec.backend_options.get("sampling_overrides", {}))
        self._lora_enabled = False

    # --- lifecycle -----------------------------------------------------------------------------

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for AsyncEngineArgs, from the spec and its backend options."""
        spec = self.spec
        args: dict[str, Any] = {
            "model": weights_location(spec.uri),
            "tokenizer": weights_location(spec.uri),
            "enable_prefix_caching": True,
            "gpu_memory_utilization": self._gpu_memory_utilization,
            "tensor_parallel_size": spec.tensor_parallel_size or 1,
        }
        if spec.revision:
            args["revision"] = spec.revision
        if spec.max_model_len:
            args["max_model_len"] = spec.max_model_len
        if spec.dtype:
            args["dtype"] = spec.dtype
        if spec.adapters:
            args["enable_lora"] = True
            args["max_loras"] = max(len(spec.adapters), 1)
        for key, value in spec.backend_options.items():
            if key not in _RESERVED_OPTIONS:
                args[key] = value
        return args

    async def load(self) -> None:
        api = self._api = self._api_loader()
        args = self.engine_args()
        self._lora_enabled = bool(args.get("enable_lora"))
        try:
            engine_args = api.AsyncEngineArgs(**args)
        except TypeError as error:
            raise InvalidArgumentError(
                f"not a vLLM engine argument: {error}", where="spec.backend_options"
            ) from None
        # Building the engine loads weights and profiles memory: keep the event loop free.
        self._engine = await asyncio.to_thread(api.AsyncLLM.from_engine_args, engine_args)
        tokenizer = self._engine.get_tokenizer()
        self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        model_config = getattr(self._engine, "model_config", None)
        self._context = self.spec.max_model_len or getattr(model_config, "max_model_len", None)

    async def unload(self) -> None:
        engine, self._engine = self._engine, None
        self._loras.clear()
        if engine is None:
            return
        await asyncio.to_thread(engine.shutdown)
        del engine
        await asyncio.to_thread(_release_gpu_memory)

    @property
    def context_length(self) -> int | None:
        return self._context

    # --- adapters ------------------------------------------------------------------------------

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self._loras)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        api, engine = self._loaded()
        if not self._lora_enabled:
            raise FailedPreconditionError(
                f"model {self.spec.name!r} was loaded without LoRA support; register it with "
                "backend_options.enable_lora=true (and max_lora_rank) to attach adapters"
            )
        request = api.LoRARequest(
            lora_name=adapter.name,
            lora_int_id=next(self._lora_ids),
            lora_path=weights_location(adapter.uri),
        )
        try:
            await engine.add_lora(request)
        except (ValueError, OSError) as error:
            raise FailedPreconditionError(
                f"vLLM could not load adapter {adapter.name!r} from {adapter.uri!r}: {error}"
            ) from None
        self._loras[adapter.name] = request

    async def unload_adapter(self, name: str) -> None:
        _, engine = self._loaded()
        request = self._loras.pop(name, None)
        if request is None:
            raise NotFoundError(f"adapter {name!r} is not attached to model {self.spec.name!r}")
        await engine.remove_lora(request.lora_int_id)

    # --- generation ----------------------------------------------------------------------------

    def prepare(self, messages: Sequence[ChatMessage]) -> Prompt:
        if self._tokenizer is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        text = self._tokenizer.apply_chat_template(
            [message.as_dict() for message in messages], add_generation_prompt=True, tokenize=False
        )
        ids = list(self._tokenizer.encode(text, add_special_tokens=False))
        return Prompt(tuple(messages), len(ids), ids)

    def sampling_params(self, request: BackendRequest) -> Any:
        api, _ = self._loaded()
        sampling = request.sampling
        values: dict[str, Any] = {
            "n": sampling.n_or_default,
            "temperature": sampling.temperature_or_default,
            "top_p": sampling.top_p_or_default,
            "max_tokens": sampling.max_tokens,
            "output_kind": (
                api.RequestOutputKind.DELTA
                if request.on_delta is not None
                else api.RequestOutputKind.FINAL_ONLY
            ),
        }
        if sampling.top_k:
            values["top_k"] = sampling.top_k
        if sampling.stop:
            values["stop"] = list(sampling.stop)
        for name in (
            "min_p",
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ):
            value = getattr(sampling, name)
            if value is not None:
                values[name] = value
        values.update(self._sampling_overrides)
        return api.SamplingParams(**values)

    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        # vLLM batches continuously across everything submitted, so submit all at once.
        results = await asyncio.gather(
            *(self._one(request) for request in requests), return_exceptions=True
        )
        out: list[Completion | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    async def _one(self, request: BackendRequest) -> Completion:
        _, engine = self._loaded()
        lora = None
        if request.adapter:
            lora = self._loras.get(request.adapter)
            if lora is None:
                raise NotFoundError(
                    f"adapter {request.adapter!r} is not attached to model {self.spec.name!r}"
                )
        ids = request.prompt.data
        if not isinstance(ids, list):
            ids = self.prepare(request.prompt.messages).data
        params = self.sampling_params(request)
        texts: dict[int, list[str]] = {}
        tokens: dict[int, int] = {}
        finishes: dict[int, FinishReason] = {}
        prompt_tokens = len(ids)
        first: float | None = None
        started = time.perf_counter()
        try:
            async for output in engine.generate(
                {"prompt_token_ids": ids}, params, request.request_id, lora_request=lora
            ):
                for completion in output.outputs:
                    index = int(completion.index)
                    text = completion.text or ""
                    if completion.token_ids and first is None:
                        first = time.perf_counter()
                    texts.setdefault(index, []).append(text)
                    tokens[index] = tokens.get(index, 0) + len(completion.token_ids or ())
                    if completion.finish_reason:
                        finishes[index] = _FINISH.get(completion.finish_reason, FinishReason.STOP)
                    if request.on_delta is not None and text:
                        request.on_delta(index, text)
                if output.prompt_token_ids:
                    prompt_tokens = len(output.prompt_token_ids)
        except ValueError as error:  # vLLM's request validation (VLLMValidationError included)
            raise InvalidArgumentError(f"vLLM rejected the request: {error}") from None
        ttft = _first_token_seconds(first, started, request.on_delta is None)
        return Completion(
            choices=tuple(
                Choice(
                    index,
                    "".join(texts[index]),
                    finishes.get(index, FinishReason.LENGTH),
                    tokens.get(index, 0),
                )
                for index in sorted(texts)
            ),
            prompt_tokens=prompt_tokens,
            time_to_first_token=ttft,
        )

    def _loaded(self) -> tuple[VllmApi, Any]:
        if self._api is None or self._engine is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        return self._api, self._engine


def _first_token_seconds(first: float | None, started: float, final_only: bool) -> float | None:
    # With FINAL_ONLY outputs the first token's time is not observed; report none rather than
    # the whole latency.
    if first is None or final_only:
        return None
    return first - started


def _release_gpu_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
