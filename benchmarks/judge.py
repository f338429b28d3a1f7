"""Judging throughput: the judge service (gRPC JudgeBatch, the work queue, the cache) against
calling the judge model one judgment at a time, same pairs, one run; printed side by side.

The judge model is a stand-in InferenceService whose GenerateBatch costs what a batched GPU call
costs: a fixed overhead plus a little per input (``--call-ms``, ``--input-ms``). What is measured
is the judge service's own work: prompts, batching, concurrency, parsing, KV cache, events.
Also: parser speed over the 2,616 recorded judge outputs in ../shared/datasets.

    python benchmarks/judge.py [--pairs 64] [--call-ms 20] [--input-ms 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "services")]

import nats  # noqa: E402
from grpc import aio  # noqa: E402

from arena.common.v1 import common_pb2  # noqa: E402
from arena.inference.v1 import inference_service_pb2 as inference_pb2  # noqa: E402
from arena.inference.v1 import inference_service_pb2_grpc as inference_grpc  # noqa: E402
from arena.judge.v1 import events_pb2  # noqa: E402
from arena.judge.v1 import judge_service_pb2 as pb  # noqa: E402
from arena.judge.v1 import judge_service_pb2_grpc as pb_grpc  # noqa: E402
from arena_cli.nats_server import NatsServer, free_port  # noqa: E402
from arena_core.bus.events import EventPublisher  # noqa: E402
from arena_core.hashing import content_hash  # noqa: E402
from arena_core.rpc.client import service_channel  # noqa: E402
from arena_core.service_host import ServiceHost  # noqa: E402
from arena_core.settings import GrpcSettings, MetricsSettings, NatsSettings  # noqa: E402
from arena_judge.app import wiring  # noqa: E402
from arena_judge.domain.parsing import parse_arena_hard, parse_mt_bench_pair  # noqa: E402
from arena_judge.settings import JudgeOptions, JudgeSettings  # noqa: E402

DATASETS = REPO.parent / "shared" / "datasets"


class StandInJudgeModel(inference_grpc.InferenceServiceServicer):
    """Scores reply A 8 and reply B 3 after a batched-call delay."""

    def __init__(self, call_seconds: float, input_seconds: float) -> None:
        self.call_seconds = call_seconds
        self.input_seconds = input_seconds
        self.calls = 0
        self.inputs = 0

    async def GenerateBatch(
        self, request: inference_pb2.GenerateBatchRequest, context: Any
    ) -> inference_pb2.GenerateBatchResponse:
        self.calls += 1
        self.inputs += len(request.inputs)
        await asyncio.sleep(self.call_seconds + self.input_seconds * len(request.inputs))
        response = inference_pb2.GenerateBatchResponse()
        for index, generation_input in enumerate(request.inputs):
            result = response.results.add(index=index)
            result.generation.generation_id = content_hash(generation_input)
            result.generation.choices.add(text="Reply A is clearer.\nScores: [[A=8, B=3]]")
        return response


def judge_spec() -> common_pb2.JudgeSpec:
    return common_pb2.JudgeSpec(
        name="bench",
        version=uuid.uuid4().hex[:8],  # a fresh judge each run: nothing cached
        protocol=common_pb2.JUDGE_PROTOCOL_PAIRWISE_SCORE,
        model=common_pb2.ModelRef(name="stand-in"),
    )


def items(count: int, tag: str) -> list[pb.JudgeItem]:
    return [
        pb.JudgeItem(
            battle_id=f"{tag}-{i}",
            prompt=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=f"Question {i}?")],
            a=pb.Candidate(model="a", text=f"answer a to {i} " * 20),
            b=pb.Candidate(model="b", text=f"answer b to {i} " * 20),
        )
        for i in range(count)
    ]


async def one_at_a_time(target: str, pairs: Sequence[pb.JudgeItem]) -> float:
    """The baseline: each order of each pair is one model call, made one after the other."""
    started = time.perf_counter()
    async with service_channel(target) as channel:
        stub = inference_grpc.InferenceServiceStub(channel)
        for item in pairs:
            for first, second in ((item.a.text, item.b.text), (item.b.text, item.a.text)):
                prompt = f"{item.prompt[0].content}\n### Reply A\n{first}\n### Reply B\n{second}"
                generation_input = inference_pb2.GenerationInput(
                    model=common_pb2.ModelRef(name="stand-in"),
                    messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
                )
                response = await stub.GenerateBatch(
                    inference_pb2.GenerateBatchRequest(inputs=[generation_input])
                )
                assert re.search(r"\[\[A=\d", response.results[0].generation.choices[0].text)
    return time.perf_counter() - started


async def through_queue(
    nats_url: str, spec: common_pb2.JudgeSpec, pairs: Sequence[pb.JudgeItem]
) -> float:
    client = await nats.connect(nats_url)
    done = asyncio.Event()

    async def on_event(message: Any) -> None:
        if message.subject.endswith("JudgmentBatchCompleted"):
            done.set()

    await client.subscribe("arena.events.judge.v1.>", cb=on_event)
    batch = events_pb2.JudgmentBatchRequested(
        tasks=[
            pb.JudgmentTask(judge=spec, item=item, order=order)
            for item in pairs
            for order in (pb.JUDGE_ORDER_AB, pb.JUDGE_ORDER_BA)
        ]
    )
    started = time.perf_counter()
    await EventPublisher(client.jetstream(), "bench").publish(batch)
    await asyncio.wait_for(done.wait(), 300)
    elapsed = time.perf_counter() - started
    await client.drain()
    return elapsed


def parser_speed() -> tuple[int, float]:
    texts: list[tuple[str, str]] = []
    for path in sorted(
        (DATASETS / "mt_bench_repro/data/en/judgments/gpt/judge_gpt4omini/pairwise").glob("*.jsonl")
    ):
        for line in path.read_bytes().split(b"\n"):
            if line.strip():
                record = json.loads(line)
                texts += [("pair", record["judgment_ab"]), ("pair", record["judgment_ba"])]
    hard = DATASETS / (
        "arena-hard-auto-fork-zeppombal/data/arena-hard-v0.1/model_judgment/gpt-3.5-turbo-0125/"
        "Nexusflow__Athene-V2-Chat.jsonl"
    )
    for line in hard.read_bytes().split(b"\n"):
        if line.strip():
            texts += [("hard", game["judgment"]) for game in json.loads(line)["games"]]
    started = time.perf_counter()
    for kind, text in texts:
        parse_mt_bench_pair(text) if kind == "pair" else parse_arena_hard(text)
    return len(texts), time.perf_counter() - started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pairs = items(args.pairs, "bench")
    judgments = 2 * len(pairs)
    model = StandInJudgeModel(args.call_ms / 1000, args.input_ms / 1000)
    server = aio.server()
    inference_grpc.add_InferenceServiceServicer_to_server(model, server)
    target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    results: dict[str, Any] = {"pairs": len(pairs), "judgments": judgments}
    with tempfile.TemporaryDirectory() as store:
        nats_server = NatsServer(Path(store), free_port())
        nats_server.start()
        suffix = uuid.uuid4().hex[:8]
        settings = JudgeSettings(
            nats=NatsSettings(url=nats_server.url),
            grpc=GrpcSettings(host="127.0.0.1", port=free_port()),
            metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
            judge=JudgeOptions(
                inference_target=target,
                cache_bucket=f"bench-{suffix}",
                spec_bucket=f"bench-specs-{suffix}",
            ),
        )
        stop = asyncio.Event()
        host = ServiceHost("judge", settings, wiring(settings))
        task = asyncio.create_task(host.run(stop))
        await asyncio.wait_for(host.ready.wait(), 60)
        try:
            results["one_at_a_time_s"] = await one_at_a_time(target, pairs)
            async with service_channel(f"127.0.0.1:{settings.grpc.port}") as channel:
                stub = pb_grpc.JudgeServiceStub(channel)
                spec = judge_spec()
                request = pb.JudgeBatchRequest(judge=spec, items=pairs)
                calls_before = model.calls
                started = time.perf_counter()
                response = await stub.JudgeBatch(request)
                results["service_grpc_s"] = time.perf_counter() - started
                results["service_grpc_model_calls"] = model.calls - calls_before
                assert all(r.outcome.position_consistent is False for r in response.results)
                started = time.perf_counter()
                cached = await stub.JudgeBatch(request)
                results["service_cached_s"] = time.perf_counter() - started
                assert all(j.cached for r in cached.results for j in r.judgments)
            results["service_queue_s"] = await through_queue(
                nats_server.url, judge_spec(), items(args.pairs, "queue")
            )
        finally:
            stop.set()
            await task
            nats_server.stop()
            await server.stop(0)
    count, seconds = parser_speed()
    results["parser_outputs"] = count
    results["parser_s"] = seconds
    return results


def report(results: dict[str, Any]) -> None:
    n = results["judgments"]
    base = results["one_at_a_time_s"]
    print(f"{n} judgments ({results['pairs']} pairs x 2 orders)")
    print(f"{'path':<34}{'seconds':>9}{'judgments/s':>14}{'vs one-at-a-time':>19}")
    for label, key in (
        ("model, one judgment at a time", "one_at_a_time_s"),
        ("judge service, gRPC JudgeBatch", "service_grpc_s"),
        ("judge service, work queue", "service_queue_s"),
        ("judge service, all cached", "service_cached_s"),
    ):
        seconds = results[key]
        print(f"{label:<34}{seconds:>9.3f}{n / seconds:>14.1f}{base / seconds:>18.1f}x")
    print(
        f"model calls for the gRPC batch: {results['service_grpc_model_calls']} (for {n} judgments)"
    )
    rate = results["parser_outputs"] / results["parser_s"]
    print(f"parsers: {results['parser_outputs']} recorded judge outputs, {rate:,.0f} outputs/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--call-ms", type=float, default=20.0)
    parser.add_argument("--input-ms", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    measured = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(measured, indent=2))
    else:
        report(measured)
