"""The inference service over gRPC: a tiny transformers model answers, bad input gets clear
INVALID_ARGUMENT / NOT_FOUND errors while the service keeps serving, the registry RPCs work
(including a checkpoint swap and LoRA adapters), and replay serves all of Arena-Hard v0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import click
import grpc
import httpx
import pytest
import pytest_asyncio
from click.testing import CliRunner
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_cli import inference_commands
from arena_cli.nats_server import NatsServer
from tests.conftest import SHARED_DATASETS
from tests.support.tiny_models import build_tiny_chat_model

from .service import RunningService, running_service, service_settings, tiny_model_declaration

pytestmark = pytest.mark.asyncio(loop_scope="module")

ARENA_HARD = SHARED_DATASETS / "arena-hard-auto" / "data" / "arena-hard-v0.1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(nats_server: NatsServer) -> AsyncIterator[RunningService]:
    settings = service_settings(
        nats_server.url,
        models=[
            tiny_model_declaration(default_sampling={"max_tokens": 16}),
            {
                "name": "gpt-4-0314",
                "backend": "replay",
                "replay_uris": [str(ARENA_HARD / "model_answer" / "gpt-4-0314.jsonl")],
                "replay_format": "arena_hard",
            },
        ],
    )
    async with running_service(settings) as running:
        yield running


def user_input(
    text: str = "Explain why the sky is blue.", model: str = "tiny", **sampling: object
) -> pb.GenerationInput:
    return pb.GenerationInput(
        model=common_pb2.ModelRef(name=model),
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        sampling=common_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


async def generate(
    service: RunningService, request: pb.GenerationInput, **options: object
) -> pb.Generation:
    response = await service.stub.Generate(pb.GenerateRequest(input=request, **options))  # type: ignore[arg-type]
    return response.generation


async def test_a_tiny_transformers_model_answers_over_grpc(service: RunningService) -> None:
    generation = await generate(service, user_input(temperature=0.0, seed=1))

    assert generation.choices[0].text
    assert generation.backend == pb.BACKEND_TRANSFORMERS
    assert generation.model.name == "tiny"
    assert generation.model.revision.startswith("loc-")
    assert 0 < generation.usage.completion_tokens <= 16  # the model's default max_tokens
    assert generation.usage.prompt_tokens > 5
    assert generation.latency.ToNanoseconds() > 0
    assert generation.HasField("time_to_first_token")
    assert generation.choices[0].style.characters == len(generation.choices[0].text)
    assert len(generation.generation_id) == 64
    assert len(generation.prompt_sha256) == 64
    assert not generation.cached


async def test_a_repeated_request_comes_from_the_cache_and_can_be_fetched_by_id(
    service: RunningService,
) -> None:
    first = await generate(service, user_input("Repeat me", seed=3))
    again = await generate(service, user_input("Repeat me", seed=3))
    unknown = "0" * 64

    fetched = await service.stub.GetGenerations(
        pb.GetGenerationsRequest(generation_ids=[first.generation_id, unknown])
    )

    assert again.cached
    assert again.choices[0].text == first.choices[0].text
    assert again.latency == first.latency  # the original computation's, not the lookup's
    assert [g.generation_id for g in fetched.generations] == [first.generation_id]
    assert list(fetched.missing_ids) == [unknown]


async def test_generate_batch_answers_each_item_in_place(service: RunningService) -> None:
    empty = pb.GenerationInput(model=common_pb2.ModelRef(name="tiny"))
    response = await service.stub.GenerateBatch(
        pb.GenerateBatchRequest(
            inputs=[
                user_input("first", seed=1),
                user_input(model="nope"),
                empty,
                user_input("last", seed=2),
            ]
        )
    )

    outcomes = [result.WhichOneof("outcome") for result in response.results]
    assert outcomes == ["generation", "failure", "failure", "generation"]
    assert [result.index for result in response.results] == [0, 1, 2, 3]
    assert response.results[1].failure.reason == "NOT_FOUND"
    assert response.results[2].failure.reason == "INVALID_ARGUMENT"
    assert "inputs[2].messages" in response.results[2].failure.message
    assert not response.results[2].failure.retryable


async def test_generate_stream_sends_text_then_the_generation(service: RunningService) -> None:
    responses = [
        response
        async for response in service.stub.GenerateStream(
            pb.GenerateStreamRequest(input=user_input("Stream this", temperature=0.9, seed=4))
        )
    ]

    deltas = [r.delta.text for r in responses if r.WhichOneof("event") == "delta"]
    final = responses[-1]
    assert final.WhichOneof("event") == "generation"
    assert len(deltas) >= 2
    assert "".join(deltas) == final.generation.choices[0].text


LONG_PROMPT = "Please explain in great detail the following words: " + " ".join(
    f"word{i}" for i in range(600)
)


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            user_input(model="no-such-model"),
            grpc.StatusCode.NOT_FOUND,
            "model 'no-such-model' is not registered (registered: gpt-4-0314, tiny)",
        ),
        (
            pb.GenerationInput(model=common_pb2.ModelRef(name="tiny")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.messages: messages is empty",
        ),
        (
            user_input(max_tokens=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.sampling.max_tokens: must be positive (got 0)",
        ),
        (
            user_input(max_tokens=-5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.sampling.max_tokens: must be positive (got -5)",
        ),
        (
            user_input(LONG_PROMPT),
            grpc.StatusCode.INVALID_ARGUMENT,
            "but model 'tiny' accepts at most 512 tokens of context",
        ),
        (
            pb.GenerationInput(
                model=common_pb2.ModelRef(name="tiny"),
                messages=[common_pb2.ChatMessage(content="no role")],
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input.messages[0].role: role is unspecified",
        ),
    ],
    ids=[
        "unknown-model",
        "empty-messages",
        "zero-max-tokens",
        "negative-max-tokens",
        "prompt-longer-than-context",
        "unspecified-role",
    ],
)
async def test_bad_input_gets_a_clear_status_and_the_service_keeps_serving(
    service: RunningService, request_: pb.GenerationInput, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(service, request_)

    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
    assert (await generate(service, user_input("still serving?", seed=9))).choices[0].text


async def test_bad_input_to_the_stream_and_registry_rpcs_is_rejected_too(
    service: RunningService,
) -> None:
    stream = service.stub.GenerateStream(pb.GenerateStreamRequest(input=user_input(max_tokens=0)))
    with pytest.raises(aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(aio.AioRpcError) as caught:
        await service.stub.GetModel(pb.GetModelRequest(name="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(aio.AioRpcError) as caught:
        await service.stub.RegisterModel(pb.RegisterModelRequest(spec=pb.ModelSpec(name="x")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.backend" in (caught.value.details() or "")

    with pytest.raises(aio.AioRpcError) as caught:
        await service.stub.GetGenerations(pb.GetGenerationsRequest(generation_ids=["nope"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_models_are_listed_paged_and_described(service: RunningService) -> None:
    listed = await service.stub.ListModels(pb.ListModelsRequest())
    first = await service.stub.ListModels(
        pb.ListModelsRequest(page=common_pb2.PageRequest(page_size=1))
    )
    second = await service.stub.ListModels(
        pb.ListModelsRequest(
            page=common_pb2.PageRequest(page_size=1, page_token=first.page.next_page_token)
        )
    )
    replays = await service.stub.ListModels(pb.ListModelsRequest(backend=pb.BACKEND_REPLAY))
    described = await service.stub.GetModel(pb.GetModelRequest(name="tiny"))

    names = [model.spec.name for model in listed.models]
    assert {"gpt-4-0314", "tiny"} <= set(names)
    assert names == sorted(names)
    assert [m.spec.name for m in [*first.models, *second.models]] == names[:2]
    assert [m.spec.name for m in replays.models] == ["gpt-4-0314"]
    assert described.model.state == pb.MODEL_STATE_READY  # declared models load at start-up
    assert described.model.context_length == 512
    assert described.model.spec.default_sampling.max_tokens == 16


async def test_register_load_swap_unload_and_unregister_at_run_time(
    service: RunningService, tmp_path: Path
) -> None:
    first = build_tiny_chat_model(tmp_path / "v1", seed=1)
    second = build_tiny_chat_model(tmp_path / "v2", seed=2)
    spec = pb.ModelSpec(
        name="target", backend=pb.BACKEND_TRANSFORMERS, uri=str(first), revision="step-1"
    )
    question = user_input("Which checkpoint?", model="target", temperature=0.0)

    registered = await service.stub.RegisterModel(pb.RegisterModelRequest(spec=spec))
    assert registered.model.state == pb.MODEL_STATE_REGISTERED
    loaded = await service.stub.LoadModel(pb.LoadModelRequest(name="target"))
    assert loaded.model.state == pb.MODEL_STATE_READY
    before = await generate(service, question)

    with pytest.raises(aio.AioRpcError) as caught:
        await service.stub.RegisterModel(
            pb.RegisterModelRequest(
                spec=pb.ModelSpec(name="target", backend=pb.BACKEND_TRANSFORMERS, uri=str(second))
            )
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    swapped_spec = pb.ModelSpec(
        name="target", backend=pb.BACKEND_TRANSFORMERS, uri=str(second), revision="step-2"
    )
    swapped = await service.stub.RegisterModel(
        pb.RegisterModelRequest(spec=swapped_spec, replace=True)
    )
    after = await generate(service, question)

    assert swapped.model.state == pb.MODEL_STATE_READY
    assert before.model.revision == "step-1"
    assert after.model.revision == "step-2"
    assert after.generation_id != before.generation_id
    assert after.choices[0].text != before.choices[0].text

    unloaded = await service.stub.UnloadModel(pb.UnloadModelRequest(name="target"))
    assert unloaded.model.state == pb.MODEL_STATE_REGISTERED
    await service.stub.UnregisterModel(pb.UnregisterModelRequest(name="target"))
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(service, question)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lora_adapters_load_and_unload_over_grpc(
    service: RunningService, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_declaration()["uri"])
    get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "lora")
    adapter = pb.AdapterSpec(name="style", uri=str(tmp_path / "lora"))

    loaded = await service.stub.LoadAdapter(pb.LoadAdapterRequest(model="tiny", adapter=adapter))
    styled = user_input("Adapt me", temperature=0.0)
    styled.model.adapter = "style"
    answer = await generate(service, styled)
    plain = await generate(service, user_input("Adapt me", temperature=0.0))
    unloaded = await service.stub.UnloadAdapter(
        pb.UnloadAdapterRequest(model="tiny", adapter="style")
    )

    assert list(loaded.model.loaded_adapters) == ["style"]
    assert answer.model.adapter == "style"
    assert answer.choices[0].text != plain.choices[0].text
    assert list(unloaded.model.loaded_adapters) == []
    with pytest.raises(aio.AioRpcError) as caught:
        await generate(
            service,
            user_input("Adapt me again", temperature=0.0).__class__(
                model=common_pb2.ModelRef(name="tiny", adapter="style"),
                messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="x")],
            ),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_replay_serves_all_500_arena_hard_questions(service: RunningService) -> None:
    questions = [
        json.loads(line)
        for line in (ARENA_HARD / "question.jsonl").read_text(encoding="utf-8").split("\n")
        if line
    ]
    recorded = {
        row["uid"]: row["messages"][1]["content"]["answer"]
        for row in (
            json.loads(line)
            for line in (ARENA_HARD / "model_answer" / "gpt-4-0314.jsonl")
            .read_text(encoding="utf-8")
            .split("\n")
            if line
        )
    }

    response = await service.stub.GenerateBatch(
        pb.GenerateBatchRequest(
            inputs=[user_input(question["prompt"], model="gpt-4-0314") for question in questions]
        )
    )

    assert len(questions) == 500
    failures = [
        r.failure.message for r in response.results if r.WhichOneof("outcome") != "generation"
    ]
    assert failures == []
    for question, result in zip(questions, response.results, strict=True):
        assert result.generation.choices[0].text == recorded[question["uid"]]
        assert result.generation.backend == pb.BACKEND_REPLAY


async def test_metrics_use_the_dashboard_names(service: RunningService) -> None:
    await generate(service, user_input("Measure me", seed=77))
    await generate(service, user_input("Measure me", seed=77))
    port = service.settings.metrics.port
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text

    for name in (
        'arena_inference_generated_tokens_total{model="tiny"}',
        'arena_inference_time_to_first_token_seconds_count{model="tiny"}',
        'arena_inference_request_seconds_count{model="tiny"}',
        'arena_inference_queue_depth{model="tiny"} 0.0',
        "arena_inference_cache_hits_total",
        "arena_inference_cache_lookups_total",
        'arena_inference_requests_total{backend="transformers",outcome="cached"}',
        'arena_inference_errors_total{backend="transformers",reason="InvalidArgumentError"}',
    ):
        assert name in text, name


async def test_the_cli_lists_models_and_generates(service: RunningService) -> None:
    cli = click.Group()
    inference_commands.register(cli)
    runner = CliRunner()

    listed = await asyncio.to_thread(
        runner.invoke, cli, ["inference", "models", "--json", "--target", service.grpc_address]
    )
    answered = await asyncio.to_thread(
        runner.invoke,
        cli,
        [
            "inference",
            "generate",
            "tiny",
            "Hello from the CLI",
            "--seed",
            "1",
            "--target",
            service.grpc_address,
        ],
    )
    missing = await asyncio.to_thread(
        runner.invoke,
        cli,
        ["inference", "generate", "ghost", "x", "--target", service.grpc_address],
    )

    assert listed.exit_code == 0, listed.output
    assert {row["name"] for row in json.loads(listed.output)} >= {"tiny", "gpt-4-0314"}
    assert answered.exit_code == 0, answered.output
    assert "-- tiny@loc-" in answered.output
    assert missing.exit_code == 1
    assert "NOT_FOUND: model 'ghost' is not registered" in missing.output
