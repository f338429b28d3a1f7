"""Pipeline throughput: judged battles per second through the whole running stack, batched work
items against one message per item, in one run; printed side by side with ratios.

The stack is the real one: nats-server, and the inference, judge and rating services each as its
own process. Inference serves four replay models (recorded answers, written here: no model time),
the judge is a reference judge (scores 1-10 against the known answer: no model time), so what is
measured is the system's own cost per battle: work queues, events, the answer and judgment caches
in KV, and rating (every game recorded once, the leaderboard fitted at the end).

A battle is one prompt answered by two models and judged in both position orders; rating counts
it as two games. One battle is two generations, two judgments and two recorded games. Paths:

- batched: `GenerationBatchRequested` for a chunk of battles, then `JudgmentBatchRequested` for
  the chunk; rating ingests each `JudgmentBatchCompleted` as one batch.
- per message: one `GenerationRequested` per answer, one `JudgmentRequested` per order; rating
  ingests one `JudgmentCompleted` at a time.

Each path ends with a `RatingsRequested` (min_battles = every game it produced) answered by
`RatingsPublished`; the clock runs from the first request to that leaderboard ("judged" is when
the last judgment came back). The goal on a 2-core machine is 500 judged battles/s for the
batched path. Besides wall time the table shows the CPU milliseconds every process of the stack
spent per battle, and the battles per CPU second they add up to: both are robust to load from
other tenants of the machine, which wall time is not.

    python benchmarks/pipeline.py [--battles 15000] [--per-message 1000] [--chunk 100] [--json]

``BENCH_SERVICE_LOG=INFO`` makes the services log more (shown when one fails to start);
``BENCH_PROFILE_DIR=/some/dir`` writes a cProfile of each service there when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "services")]

import nats  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from arena.common.v1 import common_pb2  # noqa: E402
from arena.inference.v1 import events_pb2 as inference_events  # noqa: E402
from arena.inference.v1 import inference_service_pb2 as inference_pb  # noqa: E402
from arena.judge.v1 import events_pb2 as judge_events  # noqa: E402
from arena.judge.v1 import judge_service_pb2 as judge_pb  # noqa: E402
from arena.rating.v1 import events_pb2 as rating_events  # noqa: E402
from arena.rating.v1 import rating_service_pb2 as rating_pb  # noqa: E402
from arena_cli.nats_server import NatsServer, free_port  # noqa: E402
from arena_core.bus.events import EventPublisher, metadata_of  # noqa: E402
from arena_core.bus.subjects import subject_of  # noqa: E402
from arena_core.rpc.health import check_health  # noqa: E402

GOAL_BATTLES_PER_SECOND = 500.0
MODELS = ("replay-strong", "replay-good", "replay-fair", "replay-weak")
# How often each model's recorded answer is right; the leaderboard must come out in this order.
ACCURACY = (0.9, 0.7, 0.5, 0.3)
PAIRS = [(a, b) for a in range(len(MODELS)) for b in range(a + 1, len(MODELS))]
ORDERS = (judge_pb.JUDGE_ORDER_AB, judge_pb.JUDGE_ORDER_BA)
USER = common_pb2.ROLE_USER

# Results the driver waits for, by the name that ends their subject.
RESULT_TYPES: dict[str, type[Message]] = {
    kind.DESCRIPTOR.name: kind
    for kind in (
        inference_events.GenerationCompleted,
        inference_events.GenerationBatchCompleted,
        inference_events.GenerationFailed,
        judge_events.JudgmentCompleted,
        judge_events.JudgmentBatchCompleted,
        judge_events.JudgmentFailed,
        rating_events.RatingsPublished,
        rating_events.RatingsFailed,
    )
}


# --- the battles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Battle:
    battle_id: str
    prompt: str
    reference: str
    model_a: str
    model_b: str


def _right(model: int, index: int) -> bool:
    """Deterministic: model `model` answers battle `index` correctly ACCURACY[model] of the time."""
    return (index * 7919 + model * 104729) % 1000 < ACCURACY[model] * 1000


def make_battles(tag: str, count: int) -> list[Battle]:
    battles = []
    for index in range(count):
        a, b = PAIRS[index % len(PAIRS)]
        x, y = index % 997, index // 997 + 11
        battles.append(
            Battle(
                battle_id=f"{tag}-{index}",
                prompt=f"[{tag} {index}] What is {x} + {y}? Answer with a number.",
                reference=str(x + y),
                model_a=MODELS[a],
                model_b=MODELS[b],
            )
        )
    return battles


def write_recordings(folder: Path, battles: Sequence[Battle]) -> dict[str, Path]:
    """One AlpacaEval answer file per model, with its answer to every prompt it plays on."""
    rows: dict[str, list[dict[str, str]]] = {model: [] for model in MODELS}
    for battle in battles:
        index = int(battle.battle_id.rsplit("-", 1)[1])
        value = int(battle.reference)
        for model in (battle.model_a, battle.model_b):
            right = _right(MODELS.index(model), index)
            text = f"The sum is {value}." if right else f"I believe it is {value + 1 + index % 5}."
            rows[model].append({"instruction": battle.prompt, "output": text, "generator": model})
    files = {}
    for model, records in rows.items():
        files[model] = folder / f"{model}.json"
        files[model].write_text(json.dumps(records))
    return files


def reference_judge(version: str) -> common_pb2.JudgeSpec:
    return common_pb2.JudgeSpec(
        name="bench-reference",
        version=version,
        protocol=common_pb2.JUDGE_PROTOCOL_REFERENCE,
        reference_match=common_pb2.REFERENCE_MATCH_NUMERIC,
    )


def generation_task(battle: Battle, model: str) -> inference_pb.GenerationTask:
    return inference_pb.GenerationTask(
        input=inference_pb.GenerationInput(
            model=common_pb2.ModelRef(name=model),
            messages=[common_pb2.ChatMessage(role=USER, content=battle.prompt)],
        ),
        context=common_pb2.WorkContext(item_id=f"{battle.battle_id}/{model}"),
    )


def judgment_tasks(
    battle: Battle, arena: str, spec: common_pb2.JudgeSpec, answers: dict[str, str]
) -> list[judge_pb.JudgmentTask]:
    item = judge_pb.JudgeItem(
        battle_id=battle.battle_id,
        prompt_id=battle.battle_id,
        prompt=[common_pb2.ChatMessage(role=USER, content=battle.prompt)],
        a=judge_pb.Candidate(
            model=battle.model_a, generation_id=answers[f"{battle.battle_id}/{battle.model_a}"]
        ),
        b=judge_pb.Candidate(
            model=battle.model_b, generation_id=answers[f"{battle.battle_id}/{battle.model_b}"]
        ),
        reference_answer=battle.reference,
        arena=arena,
    )
    return [judge_pb.JudgmentTask(judge=spec, item=item, order=order) for order in ORDERS]


# --- the stack --------------------------------------------------------------------------------


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one when pid is None)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    """nats-server and the inference, judge and rating services, each its own process."""

    nats: NatsServer
    processes: dict[str, subprocess.Popen[bytes]]
    grpc_ports: dict[str, int]
    logs: dict[str, Path]

    @classmethod
    def start(cls, home: Path, recordings: dict[str, Path]) -> Stack:
        nats_server = NatsServer(home / "jetstream", free_port(), log_file=home / "nats.log")
        nats_server.start()
        ports = {name: free_port() for name in ("inference", "judge", "rating")}
        models = [
            {
                "name": model,
                "backend": "replay",
                "replay_uris": [str(path)],
                "replay_format": "alpaca_eval",
            }
            for model, path in recordings.items()
        ]
        extra = {
            "inference": {
                "ARENA_INFERENCE__MODELS": json.dumps(models),
                "ARENA_INFERENCE__HTTP_PORT": "0",
            },
            "judge": {"ARENA_JUDGE__INFERENCE_TARGET": f"127.0.0.1:{ports['inference']}"},
            "rating": {"ARENA_RATING__PUBLISH_INTERVAL_SECONDS": "0"},
        }
        processes = {}
        logs = {}
        for name, port in ports.items():
            logs[name] = home / f"{name}.log"
            with logs[name].open("wb") as sink:
                profile = os.environ.get("BENCH_PROFILE_DIR")
                prefix = ["-m", "cProfile", "-o", f"{profile}/{name}.prof"] if profile else []
                processes[name] = subprocess.Popen(
                    [sys.executable, *prefix, "-m", f"arena_{name}"],
                    env={
                        **os.environ,
                        "PYTHONPATH": str(REPO / "services"),
                        "ARENA_NATS__URL": nats_server.url,
                        "ARENA_GRPC__HOST": "127.0.0.1",
                        "ARENA_GRPC__PORT": str(port),
                        "ARENA_GRPC__GRACE_SECONDS": "1",
                        "ARENA_METRICS__HOST": "127.0.0.1",
                        "ARENA_METRICS__PORT": str(free_port()),
                        "ARENA_LOG__LEVEL": os.environ.get("BENCH_SERVICE_LOG", "WARNING"),
                        **extra[name],
                    },
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
        return cls(nats_server, processes, ports, logs)

    async def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for name, port in self.grpc_ports.items():
            while await check_health(f"127.0.0.1:{port}", timeout=1) != "SERVING":
                process = self.processes[name]
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = self.logs[name].read_text()[-2000:]
                    raise RuntimeError(f"the {name} service did not start:\n{tail}")
                await asyncio.sleep(0.2)

    def cpu_seconds(self) -> dict[str, float]:
        pids: dict[str, int | None] = {name: p.pid for name, p in self.processes.items()}
        assert self.nats.process is not None
        pids["nats-server"] = self.nats.process.pid
        pids["driver"] = None
        return {name: process_cpu_seconds(pid) for name, pid in pids.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.nats.stop()


# --- the driver -------------------------------------------------------------------------------


class Results:
    """Results of the work items the driver published, by the event id of their cause."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    def expect(self, cause: str) -> asyncio.Future[Message]:
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[cause] = future
        return future

    async def on_message(self, message: Msg) -> None:
        kind = RESULT_TYPES.get(message.subject.rsplit(".", 1)[-1])
        if kind is None:
            return
        event = kind.FromString(message.data)
        future = self._waiting.pop(metadata_of(event).causation_id, None)
        if future is not None and not future.done():
            future.set_result(event)


@dataclass
class Run:
    """What one path did: its timing, and what the stack answered, for the correctness checks."""

    path: str
    battles: int
    seconds: float = 0.0
    judged_seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    judged: Counter[tuple[str, int]] = field(default_factory=Counter)
    leaderboard: rating_pb.Leaderboard | None = None

    @property
    def battles_per_second(self) -> float:
        return self.battles / self.seconds

    @property
    def cpu_ms_per_battle(self) -> float:
        return 1000 * sum(self.cpu.values()) / self.battles

    @property
    def battles_per_cpu_second(self) -> float:
        """What the stack's processes together get through per second of CPU they use."""
        return 1000 / self.cpu_ms_per_battle


class Driver:
    """Publishes the work items a flywheel controller would, and waits for their results."""

    def __init__(self, client: Client, results: Results, timeout: float) -> None:
        self._publisher = EventPublisher(client.jetstream(), "benchmark")
        self._results = results
        self._timeout = timeout

    async def request(self, work: Message) -> Message:
        """Publishes a work item and returns the event that answers it."""
        event_id = uuid.uuid4().hex
        answer = self._results.expect(event_id)
        await self._publisher.publish(work, event_id=event_id)
        return await asyncio.wait_for(answer, self._timeout)

    async def batched(self, run: Run, battles: Sequence[Battle], arena: str, spec: Any) -> None:
        """One battle chunk: a generation batch, then a judgment batch."""
        tasks = [generation_task(b, model) for b in battles for model in (b.model_a, b.model_b)]
        generated = await self.request(inference_events.GenerationBatchRequested(tasks=tasks))
        if not isinstance(generated, inference_events.GenerationBatchCompleted):
            raise RuntimeError(f"generation batch answered with {generated}")
        if generated.errors:
            raise RuntimeError(f"generation failed: {generated.errors[0].failure}")
        answers = {g.context.item_id: g.generation_id for g in generated.generations}
        judgment = judge_events.JudgmentBatchRequested(
            tasks=[task for b in battles for task in judgment_tasks(b, arena, spec, answers)]
        )
        judged = await self.request(judgment)
        if not isinstance(judged, judge_events.JudgmentBatchCompleted):
            raise RuntimeError(f"judgment batch answered with {judged}")
        if judged.errors:
            raise RuntimeError(f"judging failed: {judged.errors[0].failure}")
        run.judged.update((j.battle_id, j.order) for j in judged.judgments)

    async def per_message(self, run: Run, battle: Battle, arena: str, spec: Any) -> None:
        """One battle: a work item per answer, then one per judgment order."""
        generated = await asyncio.gather(
            *(
                self.request(
                    inference_events.GenerationRequested(task=generation_task(battle, model))
                )
                for model in (battle.model_a, battle.model_b)
            )
        )
        answers = {}
        for event in generated:
            if not isinstance(event, inference_events.GenerationCompleted):
                raise RuntimeError(f"generation answered with {event}")
            answers[event.generation.context.item_id] = event.generation.generation_id
        judged = await asyncio.gather(
            *(
                self.request(judge_events.JudgmentRequested(task=task))
                for task in judgment_tasks(battle, arena, spec, answers)
            )
        )
        for event in judged:
            if not isinstance(event, judge_events.JudgmentCompleted):
                raise RuntimeError(f"judgment answered with {event}")
            run.judged[(event.judgment.battle_id, event.judgment.order)] += 1

    async def leaderboard(self, arena: str, games: int) -> rating_pb.Leaderboard:
        request = rating_events.RatingsRequested(
            query=rating_pb.LeaderboardQuery(arena=arena, bootstrap_rounds=20, seed=1),
            min_battles=games,
        )
        published = await self.request(request)
        if not isinstance(published, rating_events.RatingsPublished):
            raise RuntimeError(f"ratings request answered with {published}")
        return published.leaderboard


Unit = Callable[[], Awaitable[None]]


async def run_path(
    stack: Stack, driver: Driver, path: str, battles: Sequence[Battle], chunk: int, window: int
) -> Run:
    """All battles through one path, `window` units (chunks or battles) in flight at once."""
    arena = f"bench-{path}-{uuid.uuid4().hex[:6]}"
    spec = reference_judge(uuid.uuid4().hex[:8])  # a fresh judge: nothing cached
    run = Run(path, len(battles))
    units: list[Unit]
    if path == "batched":
        chunks = [battles[i : i + chunk] for i in range(0, len(battles), chunk)]
        units = [partial(driver.batched, run, c, arena, spec) for c in chunks]
    else:
        units = [partial(driver.per_message, run, b, arena, spec) for b in battles]
    queue = iter(units)

    async def worker() -> None:
        for unit in queue:
            await unit()

    cpu = stack.cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    run.judged_seconds = time.perf_counter() - started
    run.leaderboard = await driver.leaderboard(arena, 2 * len(battles))
    run.seconds = time.perf_counter() - started
    after = stack.cpu_seconds()
    run.cpu = {name: after[name] - cpu[name] for name in cpu}
    check(run, battles)
    return run


def check(run: Run, battles: Sequence[Battle]) -> None:
    """Every battle judged once in each order, every game rated once, the known order found."""
    expected = {(b.battle_id, order) for b in battles for order in ORDERS}
    if set(run.judged) != expected or any(count != 1 for count in run.judged.values()):
        duplicated = [key for key, count in run.judged.items() if count != 1][:3]
        missing = sorted(expected - set(run.judged))[:3]
        raise AssertionError(f"{run.path}: judged twice {duplicated}, never {missing}")
    board = run.leaderboard
    assert board is not None
    if board.battle_count != 2 * len(battles):
        raise AssertionError(
            f"{run.path}: the leaderboard counts {board.battle_count} games of {2 * len(battles)}"
        )
    ranked = [entry.model for entry in board.entries]
    if len(battles) >= 200 * len(PAIRS) and ranked != list(MODELS):
        raise AssertionError(f"{run.path}: leaderboard order {ranked}, expected {list(MODELS)}")


async def measure(
    home: Path, battles: int, per_message: int, chunk: int, window: int, battle_window: int
) -> list[Run]:
    plans = {"batched": make_battles("b", battles), "per-message": make_battles("m", per_message)}
    warm_up = make_battles("w", 2 * chunk)
    recordings = write_recordings(home, [b for plan in (warm_up, *plans.values()) for b in plan])
    stack = Stack.start(home, recordings)
    runs = []
    try:
        await stack.wait_serving()
        results = Results()
        client = await nats.connect(stack.nats.url, pending_size=256 * 1024 * 1024)
        for kind in RESULT_TYPES.values():
            await client.subscribe(subject_of(kind), cb=results.on_message, pending_msgs_limit=-1)
        await client.flush()
        driver = Driver(client, results, timeout=300)
        # Warm-up: first calls load code paths and open channels in every service.
        await run_path(stack, driver, "batched", warm_up, chunk, 2)
        for path, plan in plans.items():
            if plan:
                unit_window = window if path == "batched" else battle_window
                runs.append(await run_path(stack, driver, path, plan, chunk, unit_window))
        await client.drain()
    finally:
        stack.stop()
    return runs


def as_dict(run: Run) -> dict[str, Any]:
    return {
        "path": run.path,
        "battles": run.battles,
        "seconds": round(run.seconds, 3),
        "judged_seconds": round(run.judged_seconds, 3),
        "battles_per_second": round(run.battles_per_second, 1),
        "vs_goal": round(run.battles_per_second / GOAL_BATTLES_PER_SECOND, 3),
        "cpu_ms_per_battle": round(run.cpu_ms_per_battle, 4),
        "battles_per_cpu_second": round(run.battles_per_cpu_second, 1),
        "cpu_ms_per_battle_by_process": {
            name: round(1000 * seconds / run.battles, 4) for name, seconds in run.cpu.items()
        },
    }


def report(runs: Sequence[Run], chunk: int) -> None:
    print(
        f"{'path':<12}{'battles':>8}{'judged s':>10}{'total s':>9}{'battles/s':>11}"
        f"{'vs goal':>9}{'CPU ms/battle':>15}{'battles/CPU-s':>15}"
    )
    for run in runs:
        print(
            f"{run.path:<12}{run.battles:>8}{run.judged_seconds:>10.2f}{run.seconds:>9.2f}"
            f"{run.battles_per_second:>11.1f}"
            f"{run.battles_per_second / GOAL_BATTLES_PER_SECOND:>8.2f}x"
            f"{run.cpu_ms_per_battle:>15.3f}{run.battles_per_cpu_second:>15.1f}"
        )
    processes = list(runs[0].cpu)
    print(f"{'CPU ms/battle':<14}" + "".join(f"{name:>13}" for name in processes))
    for run in runs:
        print(
            f"{run.path:<14}"
            + "".join(f"{1000 * run.cpu[name] / run.battles:>13.3f}" for name in processes)
        )
    by_path = {run.path: run for run in runs}
    if "batched" in by_path and "per-message" in by_path:
        batched, single = by_path["batched"], by_path["per-message"]
        print(
            f"batched / per message: {batched.battles_per_second / single.battles_per_second:.1f}x"
            f" battles/s, {batched.battles_per_cpu_second / single.battles_per_cpu_second:.1f}x"
            " battles per CPU second"
        )
    if "batched" in by_path:
        batched = by_path["batched"]
        rate = batched.battles_per_second
        verdict = "met" if rate >= GOAL_BATTLES_PER_SECOND else "NOT met"
        print(
            f"goal {GOAL_BATTLES_PER_SECOND:.0f} judged battles/s, batched ({chunk} battles per"
            f" work item): {rate:.0f}/s = {rate / GOAL_BATTLES_PER_SECOND:.2f}x, {verdict};"
            f" the stack needs {batched.cpu_ms_per_battle:.2f} CPU ms per battle, so two idle"
            f" cores would carry about {2 * batched.battles_per_cpu_second:.0f}/s"
        )
        board = batched.leaderboard
        assert board is not None
        print(
            "leaderboard: "
            + ", ".join(f"{e.model} {e.rating:.0f}" for e in board.entries)
            + f" ({board.battle_count} games)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--battles", type=int, default=15_000, help="battles, batched path")
    parser.add_argument(
        "--per-message", type=int, default=1_000, help="battles, per-message path (0: skip)"
    )
    parser.add_argument("--chunk", type=int, default=100, help="battles per batched work item")
    parser.add_argument("--window", type=int, default=16, help="chunks in flight, batched path")
    parser.add_argument(
        "--battle-window", type=int, default=64, help="battles in flight, per-message path"
    )
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="arena-bench-pipeline-") as folder:
        runs = asyncio.run(
            measure(
                Path(folder),
                arguments.battles,
                arguments.per_message,
                arguments.chunk,
                arguments.window,
                arguments.battle_window,
            )
        )
    if arguments.json:
        print(json.dumps([as_dict(run) for run in runs], indent=2))
        return 0
    print(
        f"pipeline: replay answers, reference judge, rating; the services as processes on"
        f" {os.cpu_count()} CPUs; a battle = 2 generations + 2 judgments + 2 rated games"
    )
    report(runs, arguments.chunk)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
