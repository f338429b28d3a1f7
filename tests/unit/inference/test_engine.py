"""The engine: validation, cache keys, the answer cache, single flight, context, streaming."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from arena_core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from arena_inference.domain.requests import generation_id
from arena_inference.domain.types import (
    AdapterSpec,
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

from .fakes import ask, engine_with, spec


async def test_generate_answers_and_records_usage_and_timing() -> None:
    engine, factory = await engine_with()

    generation = await engine.generate(ask("hello there", max_tokens=10))

    assert generation.choices[0].text == "r1: hello there"
    assert generation.choices[0].finish_reason == FinishReason.STOP
    assert generation.model == ModelRef("echo", "r1", "")
    assert generation.prompt_tokens == 2
    assert generation.completion_tokens == 3
    assert generation.latency_seconds > 0
    assert generation.time_to_first_token is not None
    assert not generation.cached
    assert len(generation.generation_id) == 64
    assert factory.backends[0].loaded  # loaded on first use


async def test_a_repeated_request_is_served_from_the_cache() -> None:
    engine, factory = await engine_with()

    first = await engine.generate(ask(seed=1))
    second = await engine.generate(ask(seed=1))

    assert second.cached
    assert second.generation_id == first.generation_id
    assert second.choices == first.choices
    assert len(factory.backends[0].calls) == 1


async def test_refresh_recomputes_and_bypass_neither_reads_nor_writes() -> None:
    engine, factory = await engine_with()
    await engine.generate(ask())

    refreshed = await engine.generate(ask(), CachePolicy.REFRESH)
    bypassed = await engine.generate(ask("other words"), CachePolicy.BYPASS)

    assert not refreshed.cached
    assert not bypassed.cached
    assert len(factory.backends[0].calls) == 3
    _, missing = await engine.lookup([bypassed.generation_id])
    assert missing == [bypassed.generation_id]


async def test_identical_requests_in_flight_are_computed_once() -> None:
    engine, factory = await engine_with(delay=0.05)

    results = await asyncio.gather(*(engine.generate(ask()) for _ in range(5)))

    assert len({result.generation_id for result in results}) == 1
    assert len(factory.backends[0].calls) == 1


async def test_the_cache_key_covers_model_revision_messages_and_sampling() -> None:
    engine, _ = await engine_with(spec("a"), spec("b"))
    keys = {
        engine.generation_id_of(ask(model="a")),
        engine.generation_id_of(ask(model="b")),
        engine.generation_id_of(ask("other", model="a")),
        engine.generation_id_of(ask(model="a", seed=1)),
        engine.generation_id_of(ask(model="a", seed=2)),
        engine.generation_id_of(ask(model="a", temperature=0.5)),
    }
    assert len(keys) == 6
    # The same request always gets the same key.
    assert engine.generation_id_of(ask(model="a", seed=1)) == engine.generation_id_of(
        ask(model="a", seed=1)
    )


async def test_model_defaults_fill_unset_sampling_and_are_part_of_the_key() -> None:
    engine, factory = await engine_with(
        spec(default_sampling=Sampling(max_tokens=2, temperature=0.0))
    )

    generation = await engine.generate(ask("one two three"))

    request = factory.backends[0].calls[0][0]
    assert request.sampling.max_tokens == 2
    assert request.sampling.temperature == 0.0
    assert generation.choices[0].finish_reason == FinishReason.LENGTH
    assert generation.generation_id == generation_id(
        ModelRef("echo", "r1"),
        (ChatMessage(Role.USER, "one two three"),),
        Sampling(max_tokens=2, temperature=0.0),
    )


async def test_unknown_model_is_not_found_naming_the_registered_ones() -> None:
    engine, _ = await engine_with()

    with pytest.raises(NotFoundError, match=r"model 'nope' is not registered \(registered: echo\)"):
        await engine.generate(ask(model="nope"))


@pytest.mark.parametrize(
    ("request_", "where", "message"),
    [
        (GenerationInput(ModelRef("echo"), ()), "input.messages", "messages is empty"),
        (ask(max_tokens=0), "input.sampling.max_tokens", "must be positive"),
        (ask(max_tokens=-3), "input.sampling.max_tokens", "must be positive"),
        (ask(temperature=-1.0), "input.sampling.temperature", ">= 0"),
        (ask(top_p=0.0), "input.sampling.top_p", "(0, 1]"),
        (ask(n=0), "input.sampling.n", "between 1"),
        (
            GenerationInput(ModelRef("echo"), (ChatMessage(Role.ASSISTANT, "hi"),)),
            "input.messages[0].role",
            "assistant",
        ),
    ],
)
async def test_bad_input_is_an_invalid_argument_naming_the_field(
    request_: GenerationInput, where: str, message: str
) -> None:
    engine, factory = await engine_with()

    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as caught:
        await engine.generate(request_)

    assert caught.value.where == where
    assert not factory.backends  # nothing was loaded or computed


async def test_a_prompt_longer_than_the_context_is_rejected_and_the_engine_keeps_serving() -> None:
    engine, factory = await engine_with(context=5)

    with pytest.raises(InvalidArgumentError, match="6 tokens but model 'echo' accepts at most 5"):
        await engine.generate(ask("one two three four five six"))

    assert (await engine.generate(ask("short"))).choices[0].text == "r1: short"
    assert len(factory.backends[0].calls) == 1


async def test_max_tokens_is_clamped_to_the_room_left_in_the_context() -> None:
    engine, factory = await engine_with(context=5)

    await engine.generate(ask("one two three", max_tokens=100))

    assert factory.backends[0].calls[0][0].sampling.max_tokens == 2


async def test_batch_failures_stay_in_their_place() -> None:
    engine, _ = await engine_with()

    results = await engine.generate_batch(
        [ask("first"), ask(model="missing"), ask(max_tokens=0), ask("last")]
    )

    assert isinstance(results[0], Generation)
    assert isinstance(results[1], NotFoundError)
    assert isinstance(results[2], InvalidArgumentError)
    assert results[2].where == "inputs[2].sampling.max_tokens"
    assert isinstance(results[3], Generation)


async def test_a_backend_failure_is_raised_and_nothing_is_cached() -> None:
    engine, factory = await engine_with()
    await engine.registry.load("echo")
    factory.backends[0].fail_next.append(UnavailableError("GPU fell off"))

    with pytest.raises(UnavailableError):
        await engine.generate(ask())

    assert not (await engine.generate(ask())).cached


async def test_stream_yields_deltas_then_the_generation() -> None:
    engine, _ = await engine_with()

    items = [item async for item in engine.stream(ask("streamed words"))]

    deltas = [item for item in items if isinstance(item, StreamDelta)]
    assert "".join(delta.text for delta in deltas).strip() == "r1: streamed words"
    assert isinstance(items[-1], Generation)
    # A second stream of the same request comes from the cache, still as a delta first.
    again = [item async for item in engine.stream(ask("streamed words"))]
    assert isinstance(again[-1], Generation)
    assert again[-1].cached
    assert isinstance(again[0], StreamDelta)


async def test_a_pinned_revision_is_served_from_the_cache_only() -> None:
    engine, _ = await engine_with()
    old = await engine.generate(ask())
    await engine.registry.register(spec(revision="r2"), replace=True)
    pinned = replace(ask(), model=ModelRef("echo", "r1"))

    assert (await engine.generate(pinned)).generation_id == old.generation_id
    with pytest.raises(NotFoundError, match="revision 'r1'"):
        await engine.generate(replace(ask("new"), model=ModelRef("echo", "r1")))
    assert (await engine.generate(ask("new"))).model.revision == "r2"


async def test_an_adapter_must_be_attached() -> None:
    engine, _ = await engine_with()
    with_adapter = replace(ask(), model=ModelRef("echo", adapter="style"))

    with pytest.raises(NotFoundError, match="adapter 'style' is not attached"):
        await engine.generate(with_adapter)
    await engine.registry.load_adapter("echo", AdapterSpec("style", "/adapters/style"))
    generation = await engine.generate(with_adapter)

    assert generation.choices[0].text.startswith("[style]")
    assert generation.model.adapter == "style"
