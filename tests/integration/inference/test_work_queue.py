"""The generation work queue on a real nats-server: GenerationRequested is answered with
GenerationCompleted (deterministic event id, context copied, answer in the KV cache), bad items
with GenerationFailed, batches with GenerationBatchCompleted, and a duplicate request after a
service restart is served from the cache without loading the model."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import nats
import pytest
from google.protobuf.message import Message
from nats.aio.client import Client

from arena.common.v1 import common_pb2
from arena.inference.v1 import events_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena_cli.nats_server import NatsServer
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.bus.subjects import subject_of
from arena_inference.settings import InferenceSettings

from .service import RunningService, running_service, service_settings, tiny_model_declaration

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Results:
    """Every inference result event, indexed by the work item that caused it."""

    def __init__(self) -> None:
        self.by_cause: dict[str, list[Message]] = {}
        self.arrived = asyncio.Condition()

    async def on_message(self, kind: type[Message], data: bytes) -> None:
        event = kind.FromString(data)
        async with self.arrived:
            self.by_cause.setdefault(event.metadata.causation_id, []).append(event)  # type: ignore[attr-defined]
            self.arrived.notify_all()

    async def first(self, cause: str, timeout: float = 60) -> Message:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: cause in self.by_cause), timeout)
            return self.by_cause[cause][0]


@asynccontextmanager
async def bus(url: str) -> AsyncIterator[tuple[Client, EventPublisher, Results]]:
    client = await nats.connect(url)
    results = Results()
    for kind in (
        events_pb2.GenerationCompleted,
        events_pb2.GenerationFailed,
        events_pb2.GenerationBatchCompleted,
    ):

        async def handler(msg: nats.aio.msg.Msg, kind: type[Message] = kind) -> None:
            await results.on_message(kind, msg.data)

        await client.subscribe(subject_of(kind), cb=handler)
    try:
        yield client, EventPublisher(client.jetstream(), "test"), results
    finally:
        await client.drain()


def task(text: str, model: str = "tiny", item: str = "", **sampling: object) -> pb.GenerationTask:
    return pb.GenerationTask(
        input=pb.GenerationInput(
            model=common_pb2.ModelRef(name=model),
            messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
            sampling=common_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
        ),
        context=common_pb2.WorkContext(run_id="run-7", item_id=item or text, iteration=2),
    )


async def request(publisher: EventPublisher, work: pb.GenerationTask) -> str:
    event = events_pb2.GenerationRequested(task=work)
    event_id = uuid.uuid4().hex
    await publisher.publish(event, event_id=event_id, correlation_id="flywheel-run-7")
    return event_id


def settings_for(nats_server: NatsServer, **options: object) -> InferenceSettings:
    return service_settings(
        nats_server.url,
        models=[tiny_model_declaration(default_sampling={"max_tokens": 10})],
        **options,
    )


async def test_work_items_are_answered_over_the_queue(nats_server: NatsServer) -> None:
    settings = settings_for(nats_server)
    async with (
        running_service(settings) as service,
        bus(nats_server.url) as (_, publisher, results),
    ):
        cause = await request(publisher, task("Answer me from the queue", seed=1))

        completed = await results.first(cause)

        assert isinstance(completed, events_pb2.GenerationCompleted)
        generation = completed.generation
        assert generation.choices[0].text
        assert generation.model.name == "tiny"
        assert generation.context.run_id == "run-7"
        assert generation.context.item_id == "Answer me from the queue"
        assert completed.metadata.event_id == stable_event_id(
            "inference.GenerationCompleted", cause
        )
        assert completed.metadata.correlation_id == "flywheel-run-7"
        assert completed.metadata.producer == "inference"
        # The answer is in the cache under its generation id.
        fetched = await service.stub.GetGenerations(
            pb.GetGenerationsRequest(generation_ids=[generation.generation_id])
        )
        assert fetched.generations[0].choices[0].text == generation.choices[0].text


async def test_bad_work_items_fail_at_once_without_retries(nats_server: NatsServer) -> None:
    async with (
        running_service(settings_for(nats_server)),
        bus(nats_server.url) as (_, publisher, results),
    ):
        unknown = await request(publisher, task("x", model="ghost"))
        zero = await request(publisher, task("x", max_tokens=0))

        missing_model = await results.first(unknown)
        bad_tokens = await results.first(zero)

    assert isinstance(missing_model, events_pb2.GenerationFailed)
    assert missing_model.error.failure.reason == "NOT_FOUND"
    assert "model 'ghost' is not registered" in missing_model.error.failure.message
    assert not missing_model.error.failure.retryable
    assert missing_model.error.attempts == 1
    assert missing_model.error.context.run_id == "run-7"
    assert isinstance(bad_tokens, events_pb2.GenerationFailed)
    assert bad_tokens.error.failure.reason == "INVALID_ARGUMENT"
    assert "task.input.sampling.max_tokens: must be positive" in bad_tokens.error.failure.message
    assert bad_tokens.error.generation_id == ""  # invalid input has no cache key


async def test_many_items_at_once_and_batch_items_are_all_answered(
    nats_server: NatsServer,
) -> None:
    async with (
        running_service(settings_for(nats_server)),
        bus(nats_server.url) as (_, publisher, results),
    ):
        causes = [await request(publisher, task(f"question {i}", seed=i)) for i in range(12)]
        batch = events_pb2.GenerationBatchRequested(
            tasks=[
                task("batch one", seed=1),
                task("batch two", model="ghost"),
                task("batch three", seed=3),
            ]
        )
        batch_id = uuid.uuid4().hex
        await publisher.publish(batch, event_id=batch_id)

        answers = await asyncio.gather(*(results.first(cause) for cause in causes))
        batch_done = await results.first(batch_id)

    assert all(isinstance(answer, events_pb2.GenerationCompleted) for answer in answers)
    assert isinstance(batch_done, events_pb2.GenerationBatchCompleted)
    assert [g.context.item_id for g in batch_done.generations] == ["batch one", "batch three"]
    assert [e.context.item_id for e in batch_done.errors] == ["batch two"]
    assert batch_done.errors[0].failure.reason == "NOT_FOUND"


async def test_a_duplicate_request_is_served_from_the_cache_after_a_restart(
    nats_server: NatsServer,
) -> None:
    first_settings = settings_for(nats_server)
    # The restarted service shares only JetStream (same buckets) and loads nothing up front.
    restarted_settings = settings_for(
        nats_server,
        cache_bucket=first_settings.inference.cache_bucket,
        registry_bucket=first_settings.inference.registry_bucket,
        load_on_start=False,
    )
    work = task("Never generate me twice", seed=123, temperature=0.9)

    async with bus(nats_server.url) as (_, publisher, results):
        async with running_service(first_settings):
            original = await results.first(await request(publisher, work))
        async with running_service(restarted_settings) as restarted:
            repeated = await results.first(await request(publisher, work))
            over_grpc = await restarted.stub.Generate(pb.GenerateRequest(input=work.input))
            model = await restarted.stub.GetModel(pb.GetModelRequest(name="tiny"))

    assert isinstance(original, events_pb2.GenerationCompleted)
    assert isinstance(repeated, events_pb2.GenerationCompleted)
    assert not original.generation.cached
    assert repeated.generation.cached
    assert repeated.generation.generation_id == original.generation.generation_id
    assert repeated.generation.choices[0].text == original.generation.choices[0].text
    assert over_grpc.generation.cached
    # Nothing was generated after the restart: the model was never even loaded.
    assert model.model.state == pb.MODEL_STATE_REGISTERED


async def test_runtime_registrations_survive_a_restart(nats_server: NatsServer) -> None:
    first_settings = settings_for(nats_server)
    restarted_settings = settings_for(
        nats_server,
        cache_bucket=first_settings.inference.cache_bucket,
        registry_bucket=first_settings.inference.registry_bucket,
    )
    spec = pb.ModelSpec(
        name="added-later",
        backend=pb.BACKEND_TRANSFORMERS,
        uri=tiny_model_declaration()["uri"],
        revision="r5",
    )

    async with running_service(first_settings) as service:
        await service.stub.RegisterModel(pb.RegisterModelRequest(spec=spec, load=True))
    async with running_service(restarted_settings) as restarted:
        described = await restarted.stub.GetModel(pb.GetModelRequest(name="added-later"))

    assert described.model.spec.revision == "r5"
    assert described.model.state == pb.MODEL_STATE_READY


async def test_a_registration_on_one_replica_reaches_the_others(nats_server: NatsServer) -> None:
    first_settings = settings_for(nats_server, load_on_start=False)
    second_settings = settings_for(
        nats_server,
        cache_bucket=first_settings.inference.cache_bucket,
        registry_bucket=first_settings.inference.registry_bucket,
        load_on_start=False,
    )
    spec = pb.ModelSpec(
        name="shared", backend=pb.BACKEND_REPLAY, replay_uris=["/data/answers.jsonl"]
    )

    async def names(replica: RunningService) -> set[str]:
        listed = await replica.stub.ListModels(pb.ListModelsRequest())
        return {model.spec.name for model in listed.models}

    async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
        for _ in range(100):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the other replica did not follow")

    async with running_service(first_settings) as one, running_service(second_settings) as two:
        await one.stub.RegisterModel(pb.RegisterModelRequest(spec=spec))
        await eventually(lambda: _contains(names(two), "shared"))
        await one.stub.UnregisterModel(pb.UnregisterModelRequest(name="shared"))
        await eventually(lambda: _lacks(names(two), "shared"))


async def _contains(names: Awaitable[set[str]], name: str) -> bool:
    return name in await names


async def _lacks(names: Awaitable[set[str]], name: str) -> bool:
    return name not in await names
