"""The model registry: registration, lifecycle, adapters and checkpoint swaps without downtime."""

from __future__ import annotations

import asyncio

import pytest

from arena_core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from arena_inference.domain import registry as reg
from arena_inference.domain.engine import InferenceEngine
from arena_inference.domain.ports import MemoryAnswerCache
from arena_inference.domain.registry import ModelRegistry
from arena_inference.domain.types import AdapterSpec, BackendKind, ModelSpec, ModelState

from .fakes import Factory, ask, spec


async def registry_with_events() -> tuple[ModelRegistry, Factory, list[reg.RegistryEvent]]:
    factory = Factory()
    registry = ModelRegistry(factory, instance="replica-1")
    events: list[reg.RegistryEvent] = []

    async def record(event: reg.RegistryEvent) -> None:
        events.append(event)

    registry.add_listener(record)
    return registry, factory, events


async def test_register_list_describe_load_unload() -> None:
    registry, factory, events = await registry_with_events()

    await registry.register(spec("b"))
    info = await registry.register(spec("a"), load=True)

    assert info.state == ModelState.READY
    assert info.instance == "replica-1"
    assert info.context_length == 50
    assert [model.spec.name for model in registry.list()] == ["a", "b"]
    assert registry.info("b").state == ModelState.REGISTERED
    assert registry.list(BackendKind.REPLAY) == []
    unloaded = await registry.unload("a")
    assert unloaded.state == ModelState.REGISTERED
    assert factory.backends[0].unloaded
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["ModelRegistered", "ModelRegistered", "ModelLoaded", "ModelUnloaded"]


async def test_the_same_spec_again_changes_nothing_but_a_different_one_needs_replace() -> None:
    registry, _, events = await registry_with_events()
    await registry.register(spec())

    await registry.register(spec())
    with pytest.raises(AlreadyExistsError, match="set replace"):
        await registry.register(spec(revision="r2"))

    assert len(events) == 1
    assert registry.spec("echo").revision == "r1"


async def test_unknown_models_are_not_found() -> None:
    registry, _, _ = await registry_with_events()
    await registry.register(spec("known"))

    for call in (registry.load("x"), registry.unload("x"), registry.unregister("x")):
        with pytest.raises(NotFoundError, match=r"'x' is not registered \(registered: known\)"):
            await call
    with pytest.raises(NotFoundError):
        registry.info("x")


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        (ModelSpec(name="", backend=BackendKind.TRANSFORMERS, uri="/m"), "spec.name"),
        (ModelSpec(name="a b", backend=BackendKind.TRANSFORMERS, uri="/m"), "spec.name"),
        (ModelSpec(name="m", backend=BackendKind.VLLM), "spec.uri"),
        (ModelSpec(name="m", backend=BackendKind.OPENAI), "spec.endpoint"),
        (ModelSpec(name="m", backend=BackendKind.OPENAI, endpoint="ftp://x"), "spec.endpoint"),
        (ModelSpec(name="m", backend=BackendKind.REPLAY), "spec.replay_uris"),
        (
            ModelSpec(name="m", backend=BackendKind.VLLM, uri="/m", tensor_parallel_size=0),
            "spec.tensor_parallel_size",
        ),
        (
            ModelSpec(
                name="m",
                backend=BackendKind.VLLM,
                uri="/m",
                adapters=(AdapterSpec("a", "/x"), AdapterSpec("a", "/y")),
            ),
            "spec.adapters[0]",
        ),
    ],
)
async def test_invalid_specs_are_rejected_naming_the_field(bad: ModelSpec, where: str) -> None:
    registry, _, _ = await registry_with_events()

    with pytest.raises(InvalidArgumentError) as caught:
        await registry.register(bad)

    assert caught.value.where == where
    assert registry.names() == []


async def test_a_failed_load_is_reported_with_its_reason_and_retried_on_next_use() -> None:
    registry, _, events = await registry_with_events()
    await registry.register(spec(uri="broken"))

    with pytest.raises(FailedPreconditionError, match="no weights at 'broken'"):
        await registry.load("echo")

    info = registry.info("echo")
    assert info.state == ModelState.FAILED
    assert info.failure is not None
    assert "no weights" in info.failure
    failed = [event for event in events if isinstance(event, reg.ModelLoadFailed)]
    assert failed[0].reason == "LOAD_FAILED"
    await registry.register(spec(), replace=True)
    assert (await registry.load("echo")).state == ModelState.READY


async def test_replacing_a_loaded_model_swaps_checkpoints_without_failing_requests() -> None:
    factory = Factory(delay=0.05)
    registry = ModelRegistry(factory)
    engine = InferenceEngine(registry, MemoryAnswerCache())
    await registry.register(spec(), load=True)
    old = factory.backends[0]

    in_flight = asyncio.create_task(engine.generate(ask("during the swap")))
    await asyncio.sleep(0.01)
    info = await registry.register(spec(revision="r2", uri="/models/echo-v2"), replace=True)
    after = await engine.generate(ask("after the swap"))
    during = await in_flight

    assert info.state == ModelState.READY
    assert during.choices[0].text == "r1: during the swap"  # the old checkpoint finished it
    assert after.choices[0].text == "r2: after the swap"
    await asyncio.sleep(0.05)
    assert old.unloaded  # once its request finished
    assert not factory.backends[1].unloaded


async def test_a_replacement_that_fails_to_load_leaves_the_old_checkpoint_serving() -> None:
    registry, factory, _ = await registry_with_events()
    engine = InferenceEngine(registry, MemoryAnswerCache())
    await registry.register(spec(), load=True)

    with pytest.raises(FailedPreconditionError):
        await registry.register(spec(revision="r2", uri="broken"), replace=True)

    assert registry.spec("echo").revision == "r1"
    assert (await engine.generate(ask())).choices[0].text == "r1: hello there"
    assert not factory.backends[0].unloaded


async def test_adapters_attach_and_detach() -> None:
    registry, _, events = await registry_with_events()
    await registry.register(spec(adapters=(AdapterSpec("declared", "/a/declared"),)))

    info = await registry.load_adapter("echo", AdapterSpec("extra", "/a/extra"))
    assert info.loaded_adapters == ("declared", "extra")
    with pytest.raises(AlreadyExistsError):
        await registry.load_adapter("echo", AdapterSpec("extra", "/a/extra"))
    info = await registry.unload_adapter("echo", "extra")
    assert info.loaded_adapters == ("declared",)
    with pytest.raises(NotFoundError, match="adapter 'extra' is not attached"):
        await registry.unload_adapter("echo", "extra")
    loaded = [event.model.adapter for event in events if isinstance(event, reg.ModelLoaded)]
    assert loaded == ["", "extra"]


async def test_unregister_unloads_and_forgets() -> None:
    registry, factory, events = await registry_with_events()
    await registry.register(spec(), load=True)

    await registry.unregister("echo")

    assert registry.names() == []
    assert factory.backends[0].unloaded
    assert isinstance(events[-1], reg.ModelUnregistered)


async def test_concurrent_first_uses_load_the_model_once() -> None:
    factory = Factory()
    registry = ModelRegistry(factory)
    engine = InferenceEngine(registry, MemoryAnswerCache())
    await registry.register(spec())

    await asyncio.gather(*(engine.generate(ask(f"q{i}")) for i in range(5)))

    assert len(factory.backends) == 1


def test_file_uris_load_from_their_local_path() -> None:
    from arena_inference.domain.types import weights_location

    assert weights_location("file:///ckpt/run-1/final") == "/ckpt/run-1/final"
    assert weights_location("/models/tiny") == "/models/tiny"
    assert weights_location("org/model") == "org/model"
