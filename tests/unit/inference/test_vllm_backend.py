"""The vLLM backend's code paths with vLLM itself faked (it has no CPU build): engine arguments,
sampling parameters, final and streamed outputs, LoRA attach/detach, shutdown, the import guard,
and a checkpoint swap through the registry. `make gpu-check` runs the same code on a real GPU."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from arena_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arena_inference.backends import vllm_backend
from arena_inference.backends.vllm_backend import VllmApi, VllmBackend, import_vllm
from arena_inference.domain.backend import BackendRequest
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.ports import MemoryAnswerCache
from arena_inference.domain.registry import ModelRegistry
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Completion,
    FinishReason,
    GenerationInput,
    ModelRef,
    ModelSpec,
    Role,
    Sampling,
)


class FakeTokenizer:
    def apply_chat_template(
        self, conversation: list[dict[str, str]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        assert add_generation_prompt
        assert not tokenize
        return " ".join(f"<{turn['role']}> {turn['content']}" for turn in conversation) + " <a>"

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return [len(word) for word in text.split()]


@dataclass
class Output:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    outputs: list[Output]
    prompt_token_ids: list[int]
    finished: bool


class Kind:
    DELTA = "delta"
    FINAL_ONLY = "final"
    CUMULATIVE = "cumulative"


class Params:
    def __init__(self, **values: Any) -> None:
        self.values = values


@dataclass(frozen=True)
class LoRA:
    lora_name: str
    lora_int_id: int
    lora_path: str


class Args:
    KNOWN: ClassVar[set[str]] = {
        "model",
        "tokenizer",
        "enable_prefix_caching",
        "gpu_memory_utilization",
        "tensor_parallel_size",
        "revision",
        "max_model_len",
        "dtype",
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "max_num_seqs",
    }

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - self.KNOWN
        if unknown:
            raise TypeError(f"__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        self.values = values


@dataclass
class FakeEngine:
    args: Args
    requests: list[tuple[Any, Params, str, Any]] = field(default_factory=list)
    loras: dict[int, LoRA] = field(default_factory=dict)
    shut_down: bool = False
    delay: float = 0.0

    created: ClassVar[list[FakeEngine]] = []

    @classmethod
    def from_engine_args(cls, args: Args) -> FakeEngine:
        engine = cls(args)
        FakeEngine.created.append(engine)
        return engine

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    @property
    def model_config(self) -> Any:
        return type("ModelConfig", (), {"max_model_len": 4096})()

    async def generate(
        self,
        prompt: dict[str, list[int]],
        params: Params,
        request_id: str,
        *,
        lora_request: Any = None,
    ) -> AsyncIterator[RequestOutput]:
        self.requests.append((prompt, params, request_id, lora_request))
        if params.values["max_tokens"] > 1000:
            raise ValueError("max_tokens is too large")
        words = [f"w{i}" for i in range(3)]
        if lora_request is not None:
            words[0] = lora_request.lora_name
        ids = prompt["prompt_token_ids"]
        if self.delay:
            await asyncio.sleep(self.delay)
        if params.values["output_kind"] == Kind.DELTA:
            for position, word in enumerate(words):
                last = position == len(words) - 1
                yield RequestOutput(
                    [
                        Output(c, word + " ", [position], "length" if last else None)
                        for c in range(params.values["n"])
                    ],
                    ids,
                    last,
                )
        else:
            yield RequestOutput(
                [Output(c, " ".join(words), [1, 2, 3], "stop") for c in range(params.values["n"])],
                ids,
                True,
            )

    async def add_lora(self, request: LoRA) -> bool:
        self.loras[request.lora_int_id] = request
        return True

    async def remove_lora(self, lora_id: int) -> bool:
        del self.loras[lora_id]
        return True

    def shutdown(self) -> None:
        self.shut_down = True


API = VllmApi(FakeEngine, Args, Params, LoRA, Kind)


@pytest.fixture(autouse=True)
def fresh_engines() -> None:
    FakeEngine.created = []


def spec(**fields: Any) -> ModelSpec:
    values: dict[str, Any] = {"name": "big", "backend": BackendKind.VLLM, "uri": "/models/big"}
    values.update(fields)
    return ModelSpec(**values)


async def loaded(**fields: Any) -> VllmBackend:
    backend = VllmBackend(spec(**fields), gpu_memory_utilization=0.5, api_loader=lambda: API)
    await backend.load()
    return backend


def ask(
    backend: VllmBackend, on_delta: Any = None, adapter: str = "", **sampling: Any
) -> BackendRequest:
    messages = (ChatMessage(Role.SYSTEM, "be brief"), ChatMessage(Role.USER, "hello there"))
    return BackendRequest(
        backend.prepare(messages), Sampling(max_tokens=16, **sampling), adapter, "req-1", on_delta
    )


async def one(backend: VllmBackend, request: BackendRequest) -> Completion:
    (result,) = await backend.generate([request])
    if isinstance(result, Exception):
        raise result
    return result


def test_without_vllm_the_import_guard_explains_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # importing it now fails, as on a CPU node

    with pytest.raises(FailedPreconditionError, match=r"install the \[gpu\] extra"):
        import_vllm()


async def test_without_vllm_a_vllm_model_fails_to_load_and_the_registry_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    registry = ModelRegistry(lambda s: VllmBackend(s))
    await registry.register(spec())

    with pytest.raises(FailedPreconditionError, match="needs vLLM"):
        await registry.load("big")
    assert "needs vLLM" in (registry.info("big").failure or "")


async def test_engine_arguments_turn_on_prefix_caching_and_follow_the_spec() -> None:
    backend = await loaded(
        tensor_parallel_size=2,
        max_model_len=2048,
        dtype="bfloat16",
        revision="abc",
        adapters=(AdapterSpec("style", "/lora/style"),),
        backend_options={
            "max_num_seqs": 64,
            "max_lora_rank": 16,
            "sampling_overrides": {"ignore_eos": True},
        },
    )

    args = FakeEngine.created[0].args.values
    assert args == {
        "model": "/models/big",
        "tokenizer": "/models/big",
        "enable_prefix_caching": True,
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 2,
        "revision": "abc",
        "max_model_len": 2048,
        "dtype": "bfloat16",
        "enable_lora": True,
        "max_loras": 1,
        "max_num_seqs": 64,
        "max_lora_rank": 16,
    }
    assert backend.context_length == 2048


async def test_an_unknown_engine_argument_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="bogus") as caught:
        await loaded(backend_options={"bogus": 1})
    assert caught.value.where == "spec.backend_options"


async def test_a_request_uses_the_chat_template_and_every_sampling_parameter() -> None:
    backend = await loaded()

    result = await one(
        backend,
        ask(
            backend,
            temperature=0.3,
            top_p=0.8,
            top_k=5,
            min_p=0.05,
            seed=7,
            stop=("\n",),
            n=2,
            presence_penalty=0.1,
            frequency_penalty=0.2,
            repetition_penalty=1.1,
        ),
    )

    prompt, params, request_id, lora = FakeEngine.created[0].requests[0]
    # "<system> be brief <user> hello there <a>", one fake token per word (its length)
    assert prompt == {"prompt_token_ids": [8, 2, 5, 6, 5, 5, 3]}
    assert params.values == {
        "n": 2,
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 16,
        "output_kind": Kind.FINAL_ONLY,
        "top_k": 5,
        "stop": ["\n"],
        "min_p": 0.05,
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
    }
    assert request_id == "req-1"
    assert lora is None
    assert [choice.text for choice in result.choices] == ["w0 w1 w2", "w0 w1 w2"]
    assert result.choices[0].finish_reason == FinishReason.STOP
    assert result.completion_tokens == 6
    assert result.prompt_tokens == 7
    assert result.time_to_first_token is None  # not observed with final-only outputs
    assert backend.context_length == 4096  # from the engine's model config


async def test_streaming_asks_for_deltas_and_passes_them_on_in_order() -> None:
    backend = await loaded()
    deltas: list[tuple[int, str]] = []

    result = await one(backend, ask(backend, on_delta=lambda i, t: deltas.append((i, t))))

    assert FakeEngine.created[0].requests[0][1].values["output_kind"] == Kind.DELTA
    assert deltas == [(0, "w0 "), (0, "w1 "), (0, "w2 ")]
    assert result.choices[0].text == "w0 w1 w2 "
    assert result.choices[0].finish_reason == FinishReason.LENGTH
    assert result.completion_tokens == 3
    assert result.time_to_first_token is not None


async def test_vllm_request_validation_errors_become_invalid_arguments() -> None:
    backend = await loaded()

    too_long = BackendRequest(ask(backend).prompt, Sampling(max_tokens=5000), request_id="r")
    (result,) = await backend.generate([too_long])

    assert isinstance(result, InvalidArgumentError)
    assert "max_tokens is too large" in str(result)


async def test_lora_adapters_attach_serve_and_detach_at_run_time() -> None:
    backend = await loaded(backend_options={"enable_lora": True})
    engine = FakeEngine.created[0]

    await backend.load_adapter(AdapterSpec("style", "/lora/style"))
    await backend.load_adapter(AdapterSpec("math", "/lora/math"))
    result = await one(backend, ask(backend, adapter="math"))

    assert sorted(request.lora_name for request in engine.loras.values()) == ["math", "style"]
    assert engine.requests[0][3] == LoRA("math", 2, "/lora/math")
    assert result.choices[0].text.startswith("math")
    await backend.unload_adapter("math")
    assert [request.lora_name for request in engine.loras.values()] == ["style"]
    (missing,) = await backend.generate([ask(backend, adapter="math")])
    assert isinstance(missing, NotFoundError)
    with pytest.raises(NotFoundError):
        await backend.unload_adapter("math")


async def test_adapters_need_an_engine_with_lora_support() -> None:
    backend = await loaded()

    with pytest.raises(FailedPreconditionError, match="enable_lora=true"):
        await backend.load_adapter(AdapterSpec("style", "/lora/style"))


async def test_unload_shuts_the_engine_down() -> None:
    backend = await loaded()

    await backend.unload()

    assert FakeEngine.created[0].shut_down
    with pytest.raises(FailedPreconditionError, match="not loaded"):
        await backend.load_adapter(AdapterSpec("x", "/x"))


async def test_a_new_checkpoint_is_swapped_in_while_the_old_engine_finishes_its_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vllm_backend, "import_vllm", lambda: API)
    registry = ModelRegistry(lambda s: VllmBackend(s, api_loader=lambda: API))
    engine = InferenceEngine(registry, MemoryAnswerCache())
    await registry.register(spec(revision="step-100"), load=True)
    FakeEngine.created[0].delay = 0.05
    question = GenerationInput(ModelRef("big"), (ChatMessage(Role.USER, "hi"),), Sampling(seed=1))

    in_flight = asyncio.create_task(engine.generate(question))
    await asyncio.sleep(0.01)
    await registry.register(spec(revision="step-200", uri="/models/big-200"), replace=True)
    after = await engine.generate(question)
    during = await in_flight
    await asyncio.sleep(0.1)

    old, new = FakeEngine.created
    assert new.args.values["model"] == "/models/big-200"
    assert during.model.revision == "step-100"
    assert after.model.revision == "step-200"
    assert old.shut_down
    assert not new.shut_down
