"""End to end with real parts only: a tiny transformers model served by the inference service
(its own process) judges pairs through the judge service; work items and results flow through the
session's nats-server.

The tiny model's weights are random, so its judgments are gibberish: they exercise re-sampling
and the recorded-failure path. The reference judge scores a verifiable task without a model.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as inference_pb2
from arena.inference.v1 import inference_service_pb2_grpc as inference_grpc
from arena.judge.v1 import events_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_cli.nats_server import free_port
from arena_core.bus.events import EventPublisher
from arena_core.bus.topology import ensure_streams, stream_for
from arena_core.rpc.client import service_channel
from arena_core.rpc.health import check_health
from arena_core.settings import NatsSettings
from arena_judge.domain.reference import reference_score
from arena_judge.domain.verdicts import ReferenceMatch
from tests.integration.judge.support import judge_events, judge_settings, running_judge

pytestmark = pytest.mark.slow

MODEL = "tiny-judge"
USER = common_pb2.ROLE_USER


def _tiny_model() -> Path:
    from tests.support.tiny_models import tiny_chat_model

    # Judge prompts quote two answers: a longer context than the default 512 tokens.
    return tiny_chat_model(max_position_embeddings=4096)


@pytest.fixture(scope="module")
def inference_service(
    nats_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """`python -m arena_inference` serving the tiny model, on free ports."""
    grpc_port, metrics_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    models = [{"name": MODEL, "backend": "transformers", "uri": str(_tiny_model())}]
    log = tmp_path_factory.mktemp("inference") / "inference.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "arena_inference"],
            env={
                **os.environ,
                "OMP_NUM_THREADS": "1",
                "ARENA_NATS__URL": nats_server.url,
                "ARENA_GRPC__HOST": "127.0.0.1",
                "ARENA_GRPC__PORT": str(grpc_port),
                "ARENA_METRICS__HOST": "127.0.0.1",
                "ARENA_METRICS__PORT": str(metrics_port),
                "ARENA_INFERENCE__MODELS": json.dumps(models),
                "ARENA_INFERENCE__HTTP_PORT": "0",
                "ARENA_INFERENCE__CACHE_BUCKET": f"e2e-generations-{suffix}",
                "ARENA_INFERENCE__REGISTRY_BUCKET": f"e2e-models-{suffix}",
            },
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 120
        while asyncio.run(check_health(address, timeout=1)) != "SERVING":
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"inference service did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"address": address, "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def inference_requests(metrics_url: str) -> float:
    """Generations the inference service was asked for, whatever their outcome."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("arena_inference_requests_total{")
    )


async def generate_answers(address: str, prompts: list[str]) -> list[tuple[str, str]]:
    """Two answers per prompt from the tiny model (seeds 1 and 2): their generation ids."""
    inputs = [
        inference_pb2.GenerationInput(
            model=common_pb2.ModelRef(name=MODEL),
            messages=[common_pb2.ChatMessage(role=USER, content=prompt)],
            sampling=common_pb2.SamplingParams(max_tokens=12, seed=seed, temperature=1.0),
        )
        for prompt in prompts
        for seed in (1, 2)
    ]
    async with service_channel(address) as channel:
        response = await inference_grpc.InferenceServiceStub(channel).GenerateBatch(
            inference_pb2.GenerateBatchRequest(inputs=inputs), timeout=120
        )
    ids = [result.generation.generation_id for result in response.results]
    assert all(ids), response
    return [(ids[2 * i], ids[2 * i + 1]) for i in range(len(prompts))]


def tiny_judge(version: str, retries: int) -> common_pb2.JudgeSpec:
    return common_pb2.JudgeSpec(
        name="tiny-paper-judge",
        version=version,
        protocol=common_pb2.JUDGE_PROTOCOL_PAIRWISE_SCORE,
        model=common_pb2.ModelRef(name=MODEL),
        sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0.0),
        max_parse_retries=retries,
    )


def pair_task(
    spec: common_pb2.JudgeSpec, prompt: str, ids: tuple[str, str], order: int, index: int
) -> pb.JudgmentTask:
    item = pb.JudgeItem(
        battle_id=f"e2e-{index}",
        prompt_id=f"p{index}",
        prompt=[common_pb2.ChatMessage(role=USER, content=prompt)],
        a=pb.Candidate(model="tiny-seed-1", generation_id=ids[0]),
        b=pb.Candidate(model="tiny-seed-2", generation_id=ids[1]),
        arena="e2e",
    )
    return pb.JudgmentTask(judge=spec, item=item, order=order)  # type: ignore[arg-type]


@asynccontextmanager
async def work_queue(nats_url: str) -> AsyncIterator[EventPublisher]:
    client = await nats.connect(nats_url)
    js = client.jetstream()
    work = stream_for("work", "judge")
    await ensure_streams(js, [work, stream_for("events", "judge")], NatsSettings(url=nats_url))
    await js.purge_stream(work.name)
    try:
        yield EventPublisher(js, "e2e-test")
    finally:
        await client.drain()


class JudgeResults:
    """Events from the judge's event stream, found by the work item that caused them.

    The judge's queue workers finish work items side by side, so results arrive in whatever order
    they were finished: an event that is not the one awaited now is kept for a later wait, never
    dropped (dropping it made a test that awaited results in request order wait forever).
    """

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self._backlog: list[Any] = []

    async def caused_by(self, kind: type[Any], cause: str, timeout: float = 120) -> Any:
        """The event of `kind` caused by the work item `cause`, whenever it arrived."""

        def matching(message: Any) -> Any:
            if not message.subject.endswith(f".{kind.DESCRIPTOR.name}"):
                return None
            event = kind.FromString(message.data)
            return event if event.metadata.causation_id == cause else None

        for message in self._backlog:
            if (event := matching(message)) is not None:
                self._backlog.remove(message)
                return event

        async def wait() -> Any:
            while True:
                message = await self._queue.get()
                if (event := matching(message)) is not None:
                    return event
                self._backlog.append(message)

        return await asyncio.wait_for(wait(), timeout)


async def test_results_that_arrive_out_of_order_are_kept_for_their_wait() -> None:
    """The hang of issue #3: the second order's result came first and was thrown away."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    events = JudgeResults(queue)
    for cause in ("second", "first"):
        event = events_pb2.JudgmentCompleted()
        event.metadata.causation_id = cause
        subject = "arena.events.judge.v1.JudgmentCompleted"
        queue.put_nowait(SimpleNamespace(subject=subject, data=event.SerializeToString()))
    first = await events.caused_by(events_pb2.JudgmentCompleted, "first", timeout=1)
    second = await events.caused_by(events_pb2.JudgmentCompleted, "second", timeout=1)
    assert (first.metadata.causation_id, second.metadata.causation_id) == ("first", "second")
    with pytest.raises(TimeoutError):
        await events.caused_by(events_pb2.JudgmentCompleted, "first", timeout=0.1)


ORDERS = (pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA)
PROMPTS = ["What is the capital of France?", "Write a poem about the sea.", "Solve 12 + 30."]


async def test_tiny_model_judges_through_the_queue_with_retries_failures_and_the_cache(
    nats_url: str, inference_service: dict[str, str]
) -> None:
    address, metrics_url = inference_service["address"], inference_service["metrics"]
    answers = await generate_answers(address, PROMPTS)
    settings = judge_settings(nats_url, address, batch_window_ms=20.0)

    async with judge_events(nats_url) as queue, work_queue(nats_url) as publisher:
        events = JudgeResults(queue)
        async with running_judge(settings):
            # 1. One pair, both orders, as single work items: the output does not parse, is
            #    re-sampled twice, and is recorded as failed with its raw text.
            spec = tiny_judge("retry-1", retries=2)
            before = inference_requests(metrics_url)
            requests = [
                events_pb2.JudgmentRequested(task=pair_task(spec, PROMPTS[0], answers[0], o, 0))
                for o in ORDERS
            ]
            for request in requests:
                await publisher.publish(request, correlation_id="e2e-run")
            # Awaited in request order; the judge may finish them in either order.
            results = [
                await events.caused_by(events_pb2.JudgmentCompleted, r.metadata.event_id)
                for r in requests
            ]
            judgments = [event.judgment for event in results]
            failed = [j for j in judgments if j.parse_status == pb.PARSE_STATUS_FAILED]
            assert failed, "a random-weight model should not produce a parsable verdict"
            for judgment in failed:
                assert judgment.attempts == 3
                assert judgment.raw_output
                assert judgment.verdict == pb.VERDICT_UNSPECIFIED
            assert all(j.usage.completion_tokens > 0 for j in judgments)
            assert inference_requests(metrics_url) - before == sum(j.attempts for j in judgments)

            # A duplicate request (new event id, same content) is served from the cache.
            duplicate = events_pb2.JudgmentRequested(task=requests[0].task)
            before = inference_requests(metrics_url)
            await publisher.publish(duplicate)
            again = await events.caused_by(
                events_pb2.JudgmentCompleted, duplicate.metadata.event_id
            )
            assert again.judgment.cached
            assert again.judgment.judgment_id == judgments[0].judgment_id
            assert again.judgment.raw_output == judgments[0].raw_output
            assert inference_requests(metrics_url) == before

            # 2. A batch of N pairs costs one inference call per order per pair.
            spec = tiny_judge("once-1", retries=0)
            batch = events_pb2.JudgmentBatchRequested(
                tasks=[
                    pair_task(spec, prompt, ids, order, index)
                    for index, (prompt, ids) in enumerate(zip(PROMPTS, answers, strict=True))
                    for order in ORDERS
                ]
            )
            before = inference_requests(metrics_url)
            await publisher.publish(batch)
            done = await events.caused_by(
                events_pb2.JudgmentBatchCompleted, batch.metadata.event_id
            )
            assert len(done.judgments) == 2 * len(PROMPTS)
            assert not done.errors
            assert inference_requests(metrics_url) - before == 2 * len(PROMPTS)
            assert {j.generation_id_a for j in done.judgments} == {ids[0] for ids in answers}

        # 3. After a restart of the judge service, the same batch costs nothing.
        async with running_judge(settings):
            repeat = events_pb2.JudgmentBatchRequested(tasks=batch.tasks)
            before = inference_requests(metrics_url)
            await publisher.publish(repeat)
            done = await events.caused_by(
                events_pb2.JudgmentBatchCompleted, repeat.metadata.event_id
            )
            assert all(j.cached for j in done.judgments)
            assert len(done.judgments) == 6
            assert inference_requests(metrics_url) == before


async def test_reference_judge_scores_a_verifiable_task_through_the_queue(
    nats_url: str, inference_service: dict[str, str]
) -> None:
    address = inference_service["address"]
    [(generated, _)] = await generate_answers(address, ["What is 6 x 7? Answer with a number."])
    spec = common_pb2.JudgeSpec(
        name="exact-number",
        version="1",
        protocol=common_pb2.JUDGE_PROTOCOL_REFERENCE,
        reference_match=common_pb2.REFERENCE_MATCH_NUMERIC,
    )
    item = pb.JudgeItem(
        battle_id="verifiable",
        prompt=[common_pb2.ChatMessage(role=USER, content="What is 6 x 7? Answer with a number.")],
        a=pb.Candidate(model="tiny", generation_id=generated),
        b=pb.Candidate(model="oracle", text="6 x 7 = 42, so the answer is 42."),
        reference_answer="42",
    )
    async with (
        judge_events(nats_url) as queue,
        work_queue(nats_url) as publisher,
        running_judge(judge_settings(nats_url, address)) as judge,
    ):
        events = JudgeResults(queue)
        request = events_pb2.JudgmentRequested(
            task=pb.JudgmentTask(judge=spec, item=item, order=pb.JUDGE_ORDER_BA)
        )
        await publisher.publish(request)
        event = await events.caused_by(events_pb2.JudgmentCompleted, request.metadata.event_id)
        judgment = event.judgment
        assert judgment.parse_status == pb.PARSE_STATUS_OK
        assert judgment.attempts == 0
        assert judgment.score_b == 10  # "... the answer is 42."
        # The tiny model's answer, read back from the answer cache, decides A's score.
        async with service_channel(address) as channel:
            found = await inference_grpc.InferenceServiceStub(channel).GetGenerations(
                inference_pb2.GetGenerationsRequest(generation_ids=[generated])
            )
        text = found.generations[0].choices[0].text
        expected = reference_score(text, "42", ReferenceMatch.NUMERIC).score
        assert judgment.score_a == expected
        assert judgment.verdict == (pb.VERDICT_TIE if expected == 10 else pb.VERDICT_B_BETTER)

        scored = await judge.stub.Score(
            pb.ScoreRequest(
                judge=spec,
                items=[
                    pb.ScoreItem(prompt=item.prompt, response="42", reference_answer="42"),
                    pb.ScoreItem(prompt=item.prompt, response="forty", reference_answer="42"),
                ],
            )
        )
        assert [r.reward for r in scored.results] == [1.0, -1.0]
