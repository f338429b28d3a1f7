"""Inference throughput: the service (gRPC and the work queue) against calling the same backend
directly, same prompts and seeds, in one run; printed side by side with ratios.

On a CPU this uses a small random Llama (built here, nothing downloaded) on the transformers
backend; the goal is service >= 0.9x direct. The service runs as its own process (as deployed),
and every path is measured once per round, interleaved, best round reported. Both sides decode in
the backend's worker process (its default). Besides tokens/s the table shows tokens per CPU second
of the processes that generated (the benchmark and its worker for the direct path, the service and
its worker for the others), which is robust to load from other tenants of the machine.
With ``--vllm MODEL_DIR`` on a GPU node the vLLM backend is also measured against vLLM's own
offline ``LLM.generate`` (goal >= 0.95x); ``make gpu-check`` does the same on a ~1B model.

    python benchmarks/inference.py [--prompts 128] [--max-tokens 48] [--rounds 5] [--json]

``BENCH_SERVICE_LOG=DEBUG`` shows the service's log (one line per decoded batch).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "services")]

from tests.support.tiny_models import build_tiny_chat_model  # noqa: E402

from arena.common.v1 import common_pb2  # noqa: E402
from arena.inference.v1 import events_pb2  # noqa: E402
from arena.inference.v1 import inference_service_pb2 as pb  # noqa: E402
from arena.inference.v1 import inference_service_pb2_grpc as pb_grpc  # noqa: E402
from arena_cli.nats_server import NatsServer, free_port  # noqa: E402
from arena_core.bus.events import EventPublisher  # noqa: E402
from arena_core.bus.subjects import subject_of  # noqa: E402
from arena_core.rpc.client import service_channel  # noqa: E402
from arena_core.rpc.health import check_health  # noqa: E402
from arena_inference.backends.transformers_backend import TransformersBackend  # noqa: E402
from arena_inference.domain.backend import BackendRequest  # noqa: E402
from arena_inference.domain.types import (  # noqa: E402
    BackendKind,
    ChatMessage,
    Completion,
    ModelSpec,
    Role,
    Sampling,
)

TOPICS = [
    "the sea",
    "prime numbers",
    "a sorting algorithm",
    "the French revolution",
    "photosynthesis",
    "a haiku",
    "rust ownership",
    "the moon landing",
]


@dataclass
class Row:
    path: str
    seconds: float
    tokens: int
    # CPU time of the processes that generated (this one and its decoding worker for the direct
    # path, the service and its worker for the others): tokens per CPU second is robust to load
    # from other tenants of the machine.
    cpu_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.tokens / self.cpu_seconds if self.cpu_seconds else 0.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its running descendants (the service's decoding worker
    is a grandchild: the service starts a fork server, which starts the worker)."""
    total = process_cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            total += sum(tree_cpu_seconds(int(child)) for child in task.read_text().split())
    return total


def prompts(count: int) -> list[str]:
    return [
        f"Question {i}: explain {TOPICS[i % len(TOPICS)]} in simple words." for i in range(count)
    ]


def sampling(index: int, max_tokens: int) -> Sampling:
    return Sampling(temperature=0.8, top_p=0.95, seed=index, max_tokens=max_tokens)


async def timed(path: str, run: Callable[[], Awaitable[int]], cpu: Callable[[], float]) -> Row:
    cpu_before = cpu()
    started = time.perf_counter()
    tokens = await run()
    seconds = time.perf_counter() - started
    return Row(path, seconds, tokens, cpu() - cpu_before)


class DirectBackend:
    """The transformers backend called directly: the reference path. It decodes in a worker
    process of its own, as in the service (the backend's default)."""

    def __init__(self, model: Path, batch: int) -> None:
        self.backend = TransformersBackend(
            ModelSpec("bench", BackendKind.TRANSFORMERS, uri=str(model)),
            max_batch_size=batch,
            batch_window_seconds=0.005,
        )

    def cpu_seconds(self) -> float:
        """This process's CPU time and its decoding worker's."""
        worker = self.backend.worker_pid
        return time.process_time() + (process_cpu_seconds(worker) if worker else 0.0)

    async def run(self, items: list[str], max_tokens: int) -> int:
        requests = [
            BackendRequest(
                self.backend.prepare((ChatMessage(Role.USER, text),)), sampling(i, max_tokens)
            )
            for i, text in enumerate(items)
        ]
        results = await self.backend.generate(requests)
        return sum(r.completion_tokens for r in results if isinstance(r, Completion))


def generation_input(index: int, text: str, max_tokens: int) -> pb.GenerationInput:
    values = sampling(index, max_tokens).as_dict()
    return pb.GenerationInput(
        model=common_pb2.ModelRef(name="bench"),
        messages=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        sampling=common_pb2.SamplingParams(**values),
    )


@dataclass
class Service:
    """nats-server and the inference service as its own process, as deployed: the benchmark's
    client work must not share an interpreter (and its GIL) with the decoding loop."""

    nats: NatsServer
    process: subprocess.Popen[bytes]
    grpc_port: int

    @classmethod
    def start(cls, model: Path, batch: int, home: Path) -> Service:
        nats_server = NatsServer(home / "jetstream", free_port(), log_file=home / "nats.log")
        nats_server.start()
        grpc_port = free_port()
        models = [{"name": "bench", "backend": "transformers", "uri": str(model)}]
        process = subprocess.Popen(
            [sys.executable, "-m", "arena_inference"],
            env={
                **os.environ,
                "PYTHONPATH": str(REPO / "services"),
                "ARENA_NATS__URL": nats_server.url,
                "ARENA_GRPC__HOST": "127.0.0.1",
                "ARENA_GRPC__PORT": str(grpc_port),
                "ARENA_METRICS__HOST": "127.0.0.1",
                "ARENA_METRICS__PORT": str(free_port()),
                "ARENA_LOG__LEVEL": os.environ.get("BENCH_SERVICE_LOG", "WARNING"),
                "ARENA_INFERENCE__MODELS": json.dumps(models),
                "ARENA_INFERENCE__MAX_BATCH_SIZE": str(batch),
                "ARENA_INFERENCE__BATCH_WINDOW_MS": "5",
                "ARENA_INFERENCE__HTTP_PORT": "0",
                # More handlers than one batch, so the next batch queues while one decodes.
                "ARENA_INFERENCE__QUEUE_CONCURRENCY": str(2 * batch),
            },
        )
        return cls(nats_server, process, grpc_port)

    async def wait_serving(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while await check_health(f"127.0.0.1:{self.grpc_port}") != "SERVING":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start (exit {self.process.poll()})")
            await asyncio.sleep(0.5)

    def cpu_seconds(self) -> float:
        """The service's CPU time, its decoding worker's included."""
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.nats.stop()


async def measure(
    service: Service, model: Path, texts: list[str], max_tokens: int, batch: int, rounds: int
) -> list[Row]:
    """Every path once per round, interleaved, so load from elsewhere hits them alike; the best
    round of each path is reported."""
    await service.wait_serving()
    nats_server = service.nats
    grpc_port = service.grpc_port
    channel = service_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.InferenceServiceStub(channel)
    refresh = common_pb2.CACHE_POLICY_REFRESH  # compute every time, and write the cache
    direct = DirectBackend(model, batch)
    await direct.backend.load()

    async def batch_rpc(items: list[str]) -> int:
        response = await stub.GenerateBatch(
            pb.GenerateBatchRequest(
                inputs=[generation_input(i, text, max_tokens) for i, text in enumerate(items)],
                cache_policy=refresh,
            )
        )
        return sum(r.generation.usage.completion_tokens for r in response.results)

    async def concurrent_rpcs(items: list[str]) -> int:
        responses = await asyncio.gather(
            *(
                stub.Generate(
                    pb.GenerateRequest(
                        input=generation_input(i, text, max_tokens), cache_policy=refresh
                    )
                )
                for i, text in enumerate(items)
            )
        )
        return sum(r.generation.usage.completion_tokens for r in responses)

    import nats

    client = await nats.connect(nats_server.url)
    publisher = EventPublisher(client.jetstream(), "benchmark")
    done: dict[str, asyncio.Future[int]] = {}

    async def on_completed(msg: Any) -> None:
        event = events_pb2.GenerationCompleted.FromString(msg.data)
        future = done.get(event.metadata.causation_id)
        if future is not None and not future.done():
            future.set_result(event.generation.usage.completion_tokens)

    await client.subscribe(subject_of(events_pb2.GenerationCompleted), cb=on_completed)

    async def work_queue(items: list[str]) -> int:
        loop = asyncio.get_running_loop()
        ids = [uuid.uuid4().hex for _ in items]
        for event_id in ids:
            done[event_id] = loop.create_future()
        await asyncio.gather(
            *(
                publisher.publish(
                    events_pb2.GenerationRequested(
                        task=pb.GenerationTask(
                            input=generation_input(i, text, max_tokens), cache_policy=refresh
                        )
                    ),
                    event_id=event_id,
                )
                for i, (event_id, text) in enumerate(zip(ids, items, strict=True))
            )
        )
        return sum(await asyncio.gather(*(done[event_id] for event_id in ids)))

    paths: list[tuple[str, Callable[[list[str]], Awaitable[int]]]] = [
        ("direct backend (transformers)", lambda items: direct.run(items, max_tokens)),
        ("service gRPC GenerateBatch", batch_rpc),
        ("service gRPC concurrent Generate", concurrent_rpcs),
        ("service work queue", work_queue),
    ]
    best: dict[str, Row] = {}
    try:
        for _, run in paths:
            await run(texts[:batch])  # warm-up
        for _ in range(rounds):
            for path, run in paths:
                cpu = direct.cpu_seconds if path.startswith("direct") else service.cpu_seconds
                row = await timed(path, lambda run=run: run(texts), cpu)  # type: ignore[misc]
                if path not in best or row.seconds < best[path].seconds:
                    best[path] = row
    finally:
        await client.drain()
        await channel.close()
        await direct.backend.unload()
    return [best[path] for path, _ in paths]


def vllm_rows(model: Path, texts: list[str], max_tokens: int) -> list[Row]:
    """vLLM backend vs vLLM's offline LLM.generate (GPU nodes with the [gpu] extra)."""
    sys.path.insert(0, str(REPO / "tools"))
    from gpu_check import raw_vllm_throughput, vllm_backend_throughput

    raw = raw_vllm_throughput(model, texts, max_tokens)
    ours = asyncio.run(vllm_backend_throughput(model, texts, max_tokens))
    return [
        Row("raw vLLM LLM.generate", raw[0], raw[1], raw[0]),
        Row("vLLM backend (AsyncLLM)", ours[0], ours[1], ours[0]),
    ]


def report(rows: list[Row], reference: Row, as_json: bool) -> None:
    def ratio(row: Row) -> float:
        return row.tokens_per_second / reference.tokens_per_second

    def cpu_ratio(row: Row) -> float:
        return row.tokens_per_cpu_second / reference.tokens_per_cpu_second

    if as_json:
        print(
            json.dumps(
                [
                    {
                        "path": r.path,
                        "seconds": round(r.seconds, 3),
                        "tokens": r.tokens,
                        "tokens_per_second": round(r.tokens_per_second, 1),
                        "ratio": round(ratio(r), 3),
                        "cpu_seconds": round(r.cpu_seconds, 3),
                        "cpu_ratio": round(cpu_ratio(r), 3),
                    }
                    for r in rows
                ]
            )
        )
        return
    print(
        f"{'path':34} {'seconds':>7} {'tokens':>6} {'tokens/s':>8} {'ratio':>6}"
        f" {'cpu s':>6} {'tok/cpu-s':>9} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r.path:34} {r.seconds:7.2f} {r.tokens:6d} {r.tokens_per_second:8.1f}"
            f" {ratio(r):6.3f} {r.cpu_seconds:6.2f} {r.tokens_per_cpu_second:9.1f}"
            f" {cpu_ratio(r):6.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16, help="backend max batch size")
    parser.add_argument("--rounds", type=int, default=5, help="best of this many, interleaved")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the CPU model")
    parser.add_argument("--vllm", type=Path, help="a model folder to benchmark vLLM with (GPU)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    texts = prompts(arguments.prompts)

    with tempfile.TemporaryDirectory(prefix="arena-bench-") as folder:
        home = Path(folder)
        model = build_tiny_chat_model(home / "model", hidden_size=arguments.hidden, num_layers=2)
        service = Service.start(model, arguments.batch, home)
        try:
            rows = asyncio.run(
                measure(
                    service, model, texts, arguments.max_tokens, arguments.batch, arguments.rounds
                )
            )
        finally:
            service.stop()
        reference = rows[0]
    print(
        f"inference: {arguments.prompts} prompts x {arguments.max_tokens} tokens, "
        f"random Llama hidden={arguments.hidden}, batch {arguments.batch}, CPU, "
        f"best of {arguments.rounds} interleaved rounds"
    )
    report(rows, reference, arguments.json)
    worst = min(row.tokens_per_second / reference.tokens_per_second for row in rows[1:])
    worst_cpu = min(row.tokens_per_cpu_second / reference.tokens_per_cpu_second for row in rows[1:])
    print(
        f"service / direct, worst path: {worst:.3f} in tokens/s, {worst_cpu:.3f} in tokens per"
        " CPU second  (goal >= 0.9)"
    )
    if arguments.vllm is not None:
        gpu = vllm_rows(arguments.vllm, texts, arguments.max_tokens)
        print("vLLM on GPU:")
        report(gpu, gpu[0], arguments.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
