"""The transformers backend on a tiny random Llama: batching, chat template, every sampling
parameter, seeds, stop strings, streaming and LoRA adapters, decoding in a worker process and in
a thread; a worker process that dies is started again."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from arena_core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from arena_inference.backends.transformers_backend import WORKER_KINDS, TransformersBackend
from arena_inference.domain.backend import BackendRequest, DeltaSink
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
from tests.support.tiny_models import tiny_chat_model

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=WORKER_KINDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[TransformersBackend]:
    """Every test runs against both workers: a process of its own (the default) and a thread."""
    spec = ModelSpec("tiny", BackendKind.TRANSFORMERS, uri=str(tiny_chat_model()))
    instance = TransformersBackend(
        spec, max_batch_size=8, batch_window_seconds=0.01, worker=request.param
    )
    await instance.load()
    yield instance
    await instance.unload()


def ask(
    backend: TransformersBackend,
    text: str = "Explain why the sky is blue.",
    on_delta: DeltaSink | None = None,
    adapter: str = "",
    **sampling: object,
) -> BackendRequest:
    messages = (ChatMessage(Role.SYSTEM, "You are helpful."), ChatMessage(Role.USER, text))
    values: dict[str, object] = {"max_tokens": 12, **sampling}
    return BackendRequest(
        backend.prepare(messages),
        Sampling(**values),
        adapter,
        on_delta=on_delta,  # type: ignore[arg-type]
    )


async def run(backend: TransformersBackend, *requests: BackendRequest) -> list[Completion]:
    results = await backend.generate(list(requests))
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]


async def test_the_chat_template_is_applied(backend: TransformersBackend) -> None:
    from transformers import AutoTokenizer

    prompt = backend.encode((ChatMessage(Role.USER, "hi"),))
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model())
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )

    assert expected == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.data == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert prompt.token_count == len(prompt.data)
    assert backend.context_length == 512


async def test_greedy_decoding_is_deterministic_and_respects_max_tokens(
    backend: TransformersBackend,
) -> None:
    first, second = await run(backend, ask(backend, temperature=0.0), ask(backend, temperature=0.0))

    assert first.choices[0].text == second.choices[0].text
    assert first.choices[0].completion_tokens <= 12
    if first.choices[0].completion_tokens == 12:
        assert first.choices[0].finish_reason == FinishReason.LENGTH
    assert (
        first.prompt_tokens
        == backend.encode(
            (
                ChatMessage(Role.SYSTEM, "You are helpful."),
                ChatMessage(Role.USER, "Explain why the sky is blue."),
            )
        ).token_count
    )
    assert first.time_to_first_token is not None


async def test_a_seed_gives_the_same_answer_whatever_the_batch(
    backend: TransformersBackend,
) -> None:
    (alone,) = await run(backend, ask(backend, temperature=1.0, seed=42))
    batched = await run(
        backend,
        ask(
            backend,
            "a much longer prompt that pads the others to the left",
            temperature=0.7,
            seed=1,
        ),
        ask(backend, temperature=1.0, seed=42),
        ask(backend, "short", temperature=0.0),
    )
    (other_seed,) = await run(backend, ask(backend, temperature=1.0, seed=43))

    assert batched[1].choices[0].text == alone.choices[0].text
    assert other_seed.choices[0].text != alone.choices[0].text


async def test_concurrent_requests_are_batched_together(backend: TransformersBackend) -> None:
    before = backend._batcher.batches_run  # type: ignore[union-attr]

    results = await asyncio.gather(
        *(run(backend, ask(backend, f"question {i}", seed=i, temperature=0.8)) for i in range(6))
    )

    assert len(results) == 6
    assert backend._batcher.batches_run - before == 1  # type: ignore[union-attr]


async def test_top_k_one_is_greedy_and_n_gives_distinct_choices(
    backend: TransformersBackend,
) -> None:
    greedy, top1, several = await run(
        backend,
        ask(backend, temperature=0.0),
        ask(backend, temperature=1.5, top_k=1, seed=5),
        ask(backend, temperature=1.0, seed=9, n=3),
    )

    assert top1.choices[0].text == greedy.choices[0].text
    assert [choice.index for choice in several.choices] == [0, 1, 2]
    assert len({choice.text for choice in several.choices}) == 3


async def test_penalties_and_nucleus_settings_change_sampling(
    backend: TransformersBackend,
) -> None:
    plain, penalized, nucleus = await run(
        backend,
        ask(backend, temperature=0.0, max_tokens=24),
        ask(
            backend,
            temperature=0.0,
            max_tokens=24,
            repetition_penalty=3.0,
            frequency_penalty=2.0,
            presence_penalty=2.0,
        ),
        ask(backend, temperature=1.0, seed=3, top_p=0.01, min_p=0.5, max_tokens=24),
    )

    assert penalized.choices[0].text != plain.choices[0].text
    # A tiny nucleus leaves only the most likely token: sampling becomes greedy.
    assert nucleus.choices[0].text == plain.choices[0].text


async def test_a_stop_string_ends_the_answer_before_it(backend: TransformersBackend) -> None:
    (full,) = await run(backend, ask(backend, temperature=0.0, max_tokens=16))
    text = full.choices[0].text
    stop = text[4:6]
    assert len(stop) == 2

    (stopped,) = await run(backend, ask(backend, temperature=0.0, max_tokens=16, stop=(stop,)))

    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == FinishReason.STOP


async def test_streamed_deltas_add_up_to_the_answer(backend: TransformersBackend) -> None:
    deltas: list[tuple[int, str]] = []

    (result,) = await run(
        backend,
        ask(
            backend,
            temperature=1.0,
            seed=11,
            n=2,
            max_tokens=16,
            on_delta=lambda index, text: deltas.append((index, text)),
        ),
    )

    for choice in result.choices:
        streamed = "".join(text for index, text in deltas if index == choice.index)
        assert streamed == choice.text
    assert len(deltas) > 2


async def test_lora_adapters_attach_change_the_answer_and_detach(
    backend: TransformersBackend, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model())
    lora = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "style")
    (plain,) = await run(backend, ask(backend, temperature=0.0, max_tokens=16))

    await backend.load_adapter(AdapterSpec("style", str(tmp_path / "style")))
    with_adapter, without = await run(
        backend,
        ask(backend, temperature=0.0, max_tokens=16, adapter="style"),
        ask(backend, temperature=0.0, max_tokens=16),
    )
    await backend.unload_adapter("style")
    (after,) = await run(backend, ask(backend, temperature=0.0, max_tokens=16))

    assert backend.loaded_adapters == ()
    assert with_adapter.choices[0].text != plain.choices[0].text
    assert without.choices[0].text == plain.choices[0].text
    assert after.choices[0].text == plain.choices[0].text


async def test_a_prompt_beyond_the_context_fails_alone_and_max_tokens_fits_the_room(
    backend: TransformersBackend,
) -> None:
    too_long = ask(backend, "word " * 600)
    near_limit = ask(backend, "x " * 240, temperature=0.0, max_tokens=100)
    too_long_tokens = backend.encode(too_long.prompt.messages).token_count
    near_tokens = backend.encode(near_limit.prompt.messages).token_count

    results = await backend.generate([too_long, ask(backend, temperature=0.0), near_limit])

    assert too_long_tokens is not None
    assert too_long_tokens > 512
    assert near_tokens == 509  # 3 tokens of room in the 512-token context
    assert isinstance(results[0], InvalidArgumentError)
    assert f"the prompt is {too_long_tokens} tokens" in str(results[0])
    assert isinstance(results[1], Completion)
    assert isinstance(results[2], Completion)
    assert results[2].completion_tokens <= 3


async def test_the_default_worker_is_a_process_of_its_own() -> None:
    spec = ModelSpec("tiny-pid", BackendKind.TRANSFORMERS, uri=str(tiny_chat_model()))
    instance = TransformersBackend(spec)
    await instance.load()
    try:
        pid = instance.worker_pid
        assert pid is not None
        assert pid != os.getpid()
    finally:
        await instance.unload()
    assert instance.worker_pid is None


async def test_a_killed_worker_fails_its_batch_and_a_new_one_serves_the_next(
    tmp_path: Path,
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_chat_model()),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(tmp_path / "style")
    spec = ModelSpec("tiny-restart", BackendKind.TRANSFORMERS, uri=str(tiny_chat_model()))
    instance = TransformersBackend(spec, max_batch_size=4, batch_window_seconds=0.001)
    await instance.load()
    try:
        await instance.load_adapter(AdapterSpec("style", str(tmp_path / "style")))
        (styled,) = await run(instance, ask(instance, temperature=0.0, adapter="style"))
        # Long enough that the kill below lands while it decodes (checked, not assumed).
        long = {"temperature": 1.0, "seed": 7, "n": 4, "max_tokens": 450}
        (full,) = await run(instance, ask(instance, **long))
        assert max(choice.completion_tokens for choice in full.choices) >= 300
        first_pid = instance.worker_pid
        assert first_pid is not None
        loop = asyncio.get_running_loop()
        decoding = asyncio.Event()

        def started(index: int, text: str) -> None:
            loop.call_soon_threadsafe(decoding.set)

        task = asyncio.create_task(instance.generate([ask(instance, on_delta=started, **long)]))
        await asyncio.wait_for(decoding.wait(), 60)
        os.kill(first_pid, signal.SIGKILL)
        (lost,) = await asyncio.wait_for(task, 60)

        assert isinstance(lost, UnavailableError)
        (again,) = await run(instance, ask(instance, temperature=0.0, adapter="style"))
        assert instance.worker_pid not in (None, first_pid)
        assert again.choices[0].text == styled.choices[0].text  # the adapter is back too
    finally:
        await instance.unload()


async def test_weights_that_do_not_load_fail_the_load_with_the_reason(tmp_path: Path) -> None:
    spec = ModelSpec("no-weights", BackendKind.TRANSFORMERS, uri=str(tmp_path))
    instance = TransformersBackend(spec)

    with pytest.raises(FailedPreconditionError, match="cannot load weights for model 'no-weights'"):
        await instance.load()
    assert instance.worker_pid is None
