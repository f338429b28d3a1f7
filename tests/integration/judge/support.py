"""Running the judge service in-process for tests, and a scripted stand-in for a hosted judge model.

`ScriptedInference` is a real gRPC InferenceService whose "model" is a Python function: it stands
in for a GPU or hosted judge (the only place a fake is allowed). The end-to-end test runs the real
inference service instead.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import nats
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb2
from arena.inference.v1 import inference_service_pb2_grpc as inference_grpc
from arena.judge.v1 import judge_service_pb2_grpc
from arena_cli.nats_server import free_port
from arena_core.hashing import content_hash
from arena_core.service_host import ServiceHost
from arena_core.settings import ConsumerSettings, GrpcSettings, MetricsSettings, NatsSettings
from arena_judge.app import wiring
from arena_judge.settings import JudgeOptions, JudgeSettings
from tests.support.hosts import hosted_service

Script = Callable[[inference_pb2.GenerationInput], str]


def reply(user_prompt: str, label: str) -> str:
    """The text of reply A or B as the built-in paper template shows it."""
    match = re.search(rf"### Reply {label}\n(.*?)\n### End of reply {label}", user_prompt, re.S)
    return match.group(1) if match else ""


def fair_judge(generation_input: inference_pb2.GenerationInput) -> str:
    """Scores a reply 8 when it contains "good", else 3, whatever its position."""
    user = generation_input.messages[-1].content
    a, b = (8 if "good" in reply(user, side) else 3 for side in "AB")
    return f"Compared both.\nScores: [[A={a}, B={b}]]"


def first_position_judge(generation_input: inference_pb2.GenerationInput) -> str:
    return "The first reply is better.\nScores: [[A=9, B=4]]"


def garbage_first_judge(generation_input: inference_pb2.GenerationInput) -> str:
    """Unparsable on the first sample (no seed), parsable on every re-sample (seed set)."""
    if not generation_input.sampling.HasField("seed"):
        return "ĊĠ lorem ipsum ĊĊ"
    return fair_judge(generation_input)


def garbage_judge(generation_input: inference_pb2.GenerationInput) -> str:
    return "ĊĠ lorem ipsum ĊĊ"


@dataclass
class ScriptedInference(inference_grpc.InferenceServiceServicer):
    script: Script = fair_judge
    inputs: list[inference_pb2.GenerationInput] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    answers: dict[str, inference_pb2.Generation] = field(default_factory=dict)
    down: bool = False

    def add_answer(self, model: str, text: str) -> str:
        generation_id = content_hash("answer", model, text)
        generation = inference_pb2.Generation(generation_id=generation_id)
        generation.model.name = model
        generation.choices.add(index=0, text=text)
        self.answers[generation_id] = generation
        return generation_id

    async def GenerateBatch(
        self, request: inference_pb2.GenerateBatchRequest, context: Any
    ) -> inference_pb2.GenerateBatchResponse:
        if self.down:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted overload")
        self.batch_sizes.append(len(request.inputs))
        response = inference_pb2.GenerateBatchResponse()
        for index, generation_input in enumerate(request.inputs):
            self.inputs.append(generation_input)
            text = self.script(generation_input)
            result = response.results.add(index=index)
            result.generation.generation_id = content_hash(generation_input)
            result.generation.choices.add(index=0, text=text)
            result.generation.usage.prompt_tokens = len(generation_input.messages[-1].content)
            result.generation.usage.completion_tokens = len(text.split())
        await asyncio.sleep(0)
        return response

    async def GetGenerations(
        self, request: inference_pb2.GetGenerationsRequest, context: Any
    ) -> inference_pb2.GetGenerationsResponse:
        response = inference_pb2.GetGenerationsResponse()
        for generation_id in request.generation_ids:
            if generation_id in self.answers:
                response.generations.append(self.answers[generation_id])
            else:
                response.missing_ids.append(generation_id)
        return response


@asynccontextmanager
async def scripted_inference(
    script: Script = fair_judge,
) -> AsyncIterator[tuple[ScriptedInference, str]]:
    servicer = ScriptedInference(script)
    server = aio.server()
    inference_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


def judge_settings(nats_url: str, inference_target: str, **options: Any) -> JudgeSettings:
    suffix = uuid.uuid4().hex[:8]
    judge_options = {
        "inference_target": inference_target,
        "cache_bucket": f"judge-test-{suffix}",
        "spec_bucket": f"judge-specs-{suffix}",
        "batch_window_ms": 20.0,
        **options,
    }
    return JudgeSettings(
        nats=NatsSettings(url=nats_url),
        grpc=GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
        consumer=ConsumerSettings(max_deliveries=3, retry_backoff_seconds=0.2, ack_wait_seconds=30),
        judge=JudgeOptions(**judge_options),
    )


@dataclass
class RunningJudge:
    host: ServiceHost
    settings: JudgeSettings
    channel: aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.settings.grpc.port}"

    @property
    def stub(self) -> judge_service_pb2_grpc.JudgeServiceStub:
        return judge_service_pb2_grpc.JudgeServiceStub(self.channel)


@asynccontextmanager
async def running_judge(settings: JudgeSettings) -> AsyncIterator[RunningJudge]:
    """The judge service's real host (gRPC, NATS topology, consumers) in this event loop."""
    async with hosted_service("judge", settings, wiring) as (host, channel):
        yield RunningJudge(host, settings, channel)


@asynccontextmanager
async def judge_events(nats_url: str) -> AsyncIterator[asyncio.Queue[Any]]:
    """Every message published under arena.events.judge.v1.* from now on, as (subject, msg)."""
    client = await nats.connect(nats_url)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def collect(message: Any) -> None:
        await queue.put(message)

    await client.subscribe("arena.events.judge.v1.>", cb=collect)
    try:
        yield queue
    finally:
        await client.drain()


def paper_judge(name: str = "paper", version: str = "1", **fields: Any) -> common_pb2.JudgeSpec:
    spec = common_pb2.JudgeSpec(
        name=name, version=version, protocol=common_pb2.JUDGE_PROTOCOL_PAIRWISE_SCORE, **fields
    )
    if not spec.HasField("model"):
        spec.model.name = "judge-llm"
    return spec
