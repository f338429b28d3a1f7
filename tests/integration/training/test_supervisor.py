"""The run supervisor with real JetStream (KV state, events) and a scripted runner standing in
for worker processes: success, interruption and resume, failures with reasons, cancellation,
idempotent requests, rejections, and recovery after a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from arena.common.v1 import common_pb2
from arena.training.v1 import events_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.bus.events import EventPublisher
from arena_core.bus.topology import domain_streams, ensure_streams
from arena_core.errors import NotFoundError
from arena_core.settings import NatsSettings
from arena_training.clients import DatasetFetcher, NoCatalog
from arena_training.domain import progress as markers
from arena_training.planning import RunPlanner
from arena_training.runners.base import JobHandle, JobPhase, JobStatus, LaunchRequest, LogLine
from arena_training.settings import TrainingOptions
from arena_training.store import (
    CheckpointRegistry,
    RunLeases,
    RunRepository,
    open_leases,
    open_stores,
)
from arena_training.supervisor import RunSupervisor
from tests.integration.bus_support import jetstream
from tests.integration.training.harness import training_events
from tests.integration.training.specs import run_spec
from tests.unit.training.data import sft_records, write_dataset


@dataclass
class Script:
    """One attempt: the lines the worker prints, then how it exits."""

    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    hold: bool = False  # keeps running until cancelled
    checkpoint_step: int | None = None  # leaves a resume point in the output folder


class ScriptedRunner:
    kind = "local"

    def __init__(self, scripts: list[Script], *, detach_on_shutdown: bool = False) -> None:
        self.scripts = scripts
        self.detach_on_shutdown = detach_on_shutdown
        self.started: list[LaunchRequest] = []
        self.cancelled: list[str] = []
        self.attachable: dict[str, JobHandle] = {}
        self._state: dict[str, dict[str, Any]] = {}

    async def start(self, request: LaunchRequest) -> JobHandle:
        script = self.scripts.pop(0)
        self.started.append(request)
        if script.checkpoint_step is not None:
            folder = Path(request.job.output_dir) / f"checkpoint-{script.checkpoint_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "trainer_state.json").write_text("{}")
        name = f"fake-{request.run_id}-{request.attempt}"
        self._state[name] = {
            "script": script,
            "done": asyncio.Event(),
            "cancelled": asyncio.Event(),
            "request": request,
        }
        return JobHandle(self.kind, request.run_id, request.attempt, name)

    async def attach(self, run_id: str, attempt: int, name: str) -> JobHandle | None:
        return self.attachable.get(name)

    async def status(self, handle: JobHandle) -> JobStatus:
        state = self._state[handle.name]
        if not state["done"].is_set():
            return JobStatus(JobPhase.RUNNING)
        code = -15 if state["cancelled"].is_set() else state["script"].exit_code
        return JobStatus(JobPhase.SUCCEEDED if code == 0 else JobPhase.FAILED, exit_code=code)

    async def wait(self, handle: JobHandle) -> JobStatus:
        await self._state[handle.name]["done"].wait()
        return await self.status(handle)

    async def logs(
        self, handle: JobHandle, *, follow: bool, tail_lines: int | None = None
    ) -> AsyncIterator[LogLine]:
        state = self._state.get(handle.name)
        if state is None:
            return
        script: Script = state["script"]
        for line in script.lines:
            await asyncio.sleep(0.01)
            yield LogLine(text=line)
        if script.hold and follow:
            await state["cancelled"].wait()
        state["done"].set()

    async def cancel(self, handle: JobHandle) -> None:
        self.cancelled.append(handle.name)
        self._state[handle.name]["cancelled"].set()

    async def cleanup(self, handle: JobHandle) -> None:
        return None

    async def close(self) -> None:
        return None


def progress_line(step: int, total: int = 4, loss: float = 2.0) -> str:
    return markers.encode(
        markers.Progress(
            step=step,
            total_steps=total,
            loss=loss,
            learning_rate=1e-5,
            tokens_per_second=1000.0,
            eta_seconds=float(total - step),
            metrics={"mean_token_accuracy": 0.5},
        )
    )


def result_line(request_folder: Path, step: int = 4) -> str:
    request_folder.mkdir(parents=True, exist_ok=True)
    return markers.encode(
        markers.Result(
            step=step,
            path=str(request_folder),
            sha256="ab" * 32,
            size_bytes=123,
            final_metrics={"train_loss": 1.5},
        )
    )


def base_model(tmp_path: Path) -> Path:
    """A model folder as the planner checks it (no worker runs here, so no weights)."""
    folder = tmp_path / "base-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@dataclass
class Harness:
    supervisor: RunSupervisor
    runner: ScriptedRunner
    runs: RunRepository
    checkpoints: CheckpointRegistry
    js: JetStreamContext
    spec: pb.TrainingRunSpec
    store: Path


async def make_harness(
    js: JetStreamContext,
    nats_url: str,
    tmp_path: Path,
    scripts: list[Script],
    leases: RunLeases | None = None,
    **options: Any,
) -> Harness:
    settings = NatsSettings(url=nats_url)
    await ensure_streams(js, list(domain_streams("training")), settings)
    runs, checkpoints = await open_stores(js, settings)
    training = TrainingOptions(work_dir=tmp_path / "work", **options)
    runner = ScriptedRunner(scripts)
    planner = RunPlanner(
        training,
        NoCatalog(),
        DatasetFetcher(tmp_path / "work" / "datasets"),
        checkpoints,
        ["local"],
    )
    supervisor = RunSupervisor(
        runs=runs,
        checkpoints=checkpoints,
        planner=planner,
        runners={"local": runner},
        events=EventPublisher(js, "training"),
        options=training,
        leases=leases,
    )
    dataset = write_dataset(tmp_path / "data", "sft", "sft", sft_records(range(8)))
    spec = run_spec("sft", base=pb.ModelSource(uri=str(base_model(tmp_path))), datasets=[dataset])
    return Harness(
        supervisor, runner, runs, checkpoints, js, spec, training.resolved_checkpoint_store()
    )


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    async with jetstream(nats_url) as context:
        yield context


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


async def finished(h: Harness, rid: str, timeout: float = 20) -> pb.TrainingRun:
    async def wait() -> pb.TrainingRun:
        while True:
            run = await h.supervisor.get(rid)
            if run.state in (
                pb.TRAINING_RUN_STATE_SUCCEEDED,
                pb.TRAINING_RUN_STATE_FAILED,
                pb.TRAINING_RUN_STATE_CANCELLED,
                pb.TRAINING_RUN_STATE_REJECTED,
            ):
                return run
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(wait(), timeout)


async def running_state(supervisor: RunSupervisor, rid: str) -> None:
    for _ in range(200):
        if (await supervisor.get(rid)).state == pb.TRAINING_RUN_STATE_RUNNING:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} never started")


def request_for(rid: str, spec: pb.TrainingRunSpec) -> events_pb2.TrainingRequested:
    request = events_pb2.TrainingRequested(run_id=rid)
    request.metadata.event_id = uuid.uuid4().hex
    request.metadata.correlation_id = "flywheel-7"
    request.spec.CopyFrom(spec)
    request.context.run_id = "flywheel-7"
    request.context.iteration = 2
    request.context.stage = common_pb2.TRAINING_STAGE_SFT
    return request


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_successful_run_registers_its_checkpoint_before_it_finishes(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    final = tmp_path / "store-out"
    h = await make_harness(
        js,
        nats_url,
        tmp_path,
        [Script([progress_line(1), "plain text", progress_line(2, loss=1.0), result_line(final)])],
    )
    before = sample("arena_training_runs_total", {"recipe": "sft", "status": "succeeded"}) or 0
    request = request_for(rid, h.spec)
    await h.supervisor.submit(request)
    run = await finished(h, rid)

    assert run.state == pb.TRAINING_RUN_STATE_SUCCEEDED
    assert run.attempt == 1
    assert run.progress.loss == 1.0
    assert run.progress.progress.done == 2
    assert run.progress.progress.total == 4
    assert run.progress.metrics["train_loss"] == 1.5
    checkpoint = await h.checkpoints.get(run.checkpoint_id)
    assert checkpoint is not None
    assert checkpoint.run_id == rid
    assert checkpoint.stage == common_pb2.TRAINING_STAGE_SFT
    assert checkpoint.format == pb.CHECKPOINT_FORMAT_FULL
    assert checkpoint.artifact.uri == final.as_uri()
    assert checkpoint.base.uri == str(base_model(tmp_path))
    assert [d.dataset_id for d in checkpoint.datasets] == [h.spec.datasets[0].dataset_id]
    assert checkpoint.recipe.HasField("sft")

    events = await training_events(js, rid)
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "TrainingRunStarted",
        "TrainingProgressReported",
        "TrainingProgressReported",
        "CheckpointRegistered",
        "TrainingRunFinished",
    ]
    for event in events:
        assert event.metadata.causation_id == request.metadata.event_id
        assert event.metadata.correlation_id == "flywheel-7"
        assert event.context.iteration == 2
    finished_event = events[-1]
    assert finished_event.state == pb.TRAINING_RUN_STATE_SUCCEEDED
    assert finished_event.checkpoint_id == checkpoint.checkpoint_id
    assert not finished_event.HasField("failure")

    assert sample("arena_training_loss", {"run": rid, "recipe": "sft"}) == 1.0
    assert sample("arena_training_eta_seconds", {"run": rid}) is None  # removed at the end
    after = sample("arena_training_runs_total", {"recipe": "sft", "status": "succeeded"})
    assert after == before + 1


async def test_an_interrupted_attempt_resumes_from_its_last_checkpoint(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    h = await make_harness(
        js,
        nats_url,
        tmp_path,
        [
            Script([progress_line(1), progress_line(2)], exit_code=-9, checkpoint_step=2),
            Script([progress_line(3), progress_line(4), result_line(tmp_path / "out")]),
        ],
    )
    await h.supervisor.start_run(h.spec, run_id=rid)
    run = await finished(h, rid)
    assert run.state == pb.TRAINING_RUN_STATE_SUCCEEDED
    assert run.attempt == 2
    assert run.resumed_from_step == 2
    starts = [
        e for e in await training_events(js, rid) if isinstance(e, events_pb2.TrainingRunStarted)
    ]
    assert [(s.attempt, s.HasField("resumed_from_step")) for s in starts] == [(1, False), (2, True)]
    assert starts[1].resumed_from_step == 2
    assert [r.attempt for r in h.runner.started] == [1, 2]


async def test_a_failed_run_reports_why(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    error = markers.encode(
        markers.Failed(reason="OOM", message="CUDA out of memory. Tried to allocate 2.00 GiB")
    )
    rid, crash_id = run_id(), run_id()
    h = await make_harness(
        js,
        nats_url,
        tmp_path,
        [
            Script([progress_line(1), "Traceback ...", error], exit_code=1),
            Script(["ImportError: no module named flash_attn"], exit_code=1),
        ],
    )
    before = sample("arena_training_runs_total", {"recipe": "sft", "status": "failed"}) or 0
    await h.supervisor.start_run(h.spec, run_id=rid)
    run = await finished(h, rid)
    assert run.state == pb.TRAINING_RUN_STATE_FAILED
    assert (run.failure.reason, run.failure.retryable) == ("OOM", False)
    assert "out of memory" in run.failure.message
    assert "Traceback" in run.failure.details["log_tail"]
    assert len(h.runner.started) == 1  # the same configuration would run out of memory again
    finished_event = (await training_events(js, rid))[-1]
    assert finished_event.failure.reason == "OOM"

    await h.supervisor.start_run(h.spec, run_id=crash_id)
    crashed = await finished(h, crash_id)
    assert crashed.failure.reason == "WORKER_CRASHED"
    assert "exited with code 1" in crashed.failure.message
    assert "flash_attn" in crashed.failure.details["log_tail"]
    after = sample("arena_training_runs_total", {"recipe": "sft", "status": "failed"})
    assert after == before + 2


async def test_a_run_interrupted_every_time_fails_after_its_attempts(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    h = await make_harness(
        js, nats_url, tmp_path, [Script(exit_code=-9) for _ in range(2)], max_attempts=2
    )
    await h.supervisor.start_run(h.spec, run_id=rid)
    run = await finished(h, rid)
    assert (run.state, run.failure.reason, run.attempt) == (
        pb.TRAINING_RUN_STATE_FAILED,
        "INTERRUPTED",
        2,
    )
    assert "gave up after 2 attempt(s)" in run.failure.message


async def test_cancel_stops_a_running_and_a_pending_run(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    running, pending = run_id(), run_id()
    h = await make_harness(js, nats_url, tmp_path, [Script([progress_line(1)], hold=True)])
    await h.supervisor.start_run(h.spec, run_id=running)
    await h.supervisor.start_run(h.spec, run_id=pending)  # waits for the only slot
    await running_state(h.supervisor, running)
    assert (await h.supervisor.get(pending)).state == pb.TRAINING_RUN_STATE_PENDING

    cancelled_pending = await h.supervisor.cancel(pending)
    assert cancelled_pending.state == pb.TRAINING_RUN_STATE_CANCELLED
    cancelled = await h.supervisor.cancel(running)
    assert cancelled.state == pb.TRAINING_RUN_STATE_CANCELLED
    assert cancelled.failure.reason == "CANCELLED"
    assert h.runner.cancelled == [f"fake-{running}-1"]
    assert len(h.runner.started) == 1  # the pending run never started
    assert (await h.supervisor.cancel(running)).state == pb.TRAINING_RUN_STATE_CANCELLED
    last = (await training_events(js, running))[-1]
    assert last.state == pb.TRAINING_RUN_STATE_CANCELLED


async def test_a_repeated_request_starts_one_run(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    h = await make_harness(js, nats_url, tmp_path, [Script([result_line(tmp_path / "o")])])
    request = request_for(rid, h.spec)
    first = await h.supervisor.submit(request)
    second = await h.supervisor.submit(request)  # redelivered
    again = await h.supervisor.start_run(h.spec, run_id=rid)  # and by RPC
    assert first.run_id == second.run_id == again.run_id == rid
    await finished(h, rid)
    assert len(h.runner.started) == 1


async def test_an_invalid_work_item_is_recorded_as_rejected_and_answered(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    h = await make_harness(js, nats_url, tmp_path, [])
    spec = pb.TrainingRunSpec()
    spec.CopyFrom(h.spec)
    del spec.datasets[:]
    spec.datasets.add(dataset_id="ds-unknown")
    request = request_for(rid, spec)
    run = await h.supervisor.submit(request)
    assert run.state == pb.TRAINING_RUN_STATE_REJECTED
    assert run.failure.reason == "NOT_FOUND"
    assert "unknown dataset 'ds-unknown'" in run.failure.message
    assert "spec.datasets[0]" in run.failure.message
    events = await training_events(js, rid)
    assert [type(e).__name__ for e in events] == ["TrainingRunFinished"]
    assert events[0].state == pb.TRAINING_RUN_STATE_REJECTED
    assert events[0].metadata.causation_id == request.metadata.event_id
    assert not h.runner.started
    # RPC callers get the error itself, and nothing is stored.
    with pytest.raises(NotFoundError):
        await h.supervisor.start_run(spec, run_id=run_id())


async def test_a_restarted_supervisor_follows_or_resumes_its_runs(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    followed, resumed = run_id(), run_id()
    first = await make_harness(
        js,
        nats_url,
        tmp_path,
        [Script([progress_line(1)], hold=True), Script([progress_line(1)], hold=True)],
        max_concurrent_runs=2,
    )
    first.runner.detach_on_shutdown = True  # jobs outlive the service, as on Kubernetes
    await first.supervisor.start_run(first.spec, run_id=followed)
    await first.supervisor.start_run(first.spec, run_id=resumed)
    for rid in (followed, resumed):
        await running_state(first.supervisor, rid)
    await first.supervisor.close()  # the service stops; the runs stay RUNNING in KV

    second = await make_harness(
        js,
        nats_url,
        tmp_path,
        [Script([progress_line(3), result_line(tmp_path / "r")])],
        max_concurrent_runs=2,
    )
    # The first attempt of the other run had saved a checkpoint before its job was lost.
    saved = tmp_path / "work" / "runs" / resumed / "output" / "checkpoint-1"
    saved.mkdir(parents=True)
    (saved / "trainer_state.json").write_text("{}")
    # The followed run's job still runs; the other one's is gone.
    job = f"fake-{followed}-1"
    second.runner._state[job] = {
        "script": Script([progress_line(4), result_line(tmp_path / "f")]),
        "done": asyncio.Event(),
        "cancelled": asyncio.Event(),
    }
    second.runner.attachable[job] = JobHandle("local", followed, 1, job)
    await second.supervisor.recover()

    run = await finished(second, followed)
    assert (run.state, run.attempt) == (pb.TRAINING_RUN_STATE_SUCCEEDED, 1)
    run = await finished(second, resumed)
    assert (run.state, run.attempt, run.resumed_from_step) == (
        pb.TRAINING_RUN_STATE_SUCCEEDED,
        2,
        1,
    )
    await second.supervisor.close()


async def test_watch_streams_state_changes_and_progress_until_the_end(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    rid = run_id()
    h = await make_harness(js, nats_url, tmp_path, [Script([progress_line(1)], hold=True)])
    await h.supervisor.start_run(h.spec, run_id=rid)
    seen: list[str] = []

    async def watch() -> None:
        async for event in h.supervisor.watch(rid):
            which = event.WhichOneof("event")
            seen.append(pb.TrainingRunState.Name(event.run.state) if which == "run" else "progress")

    watcher = asyncio.create_task(watch())
    for _ in range(200):
        if "progress" in seen:
            break
        await asyncio.sleep(0.05)
    await h.supervisor.cancel(rid)
    await asyncio.wait_for(watcher, 10)
    assert seen[-1] == "TRAINING_RUN_STATE_CANCELLED"
    assert "TRAINING_RUN_STATE_RUNNING" in seen
    assert seen.index("TRAINING_RUN_STATE_RUNNING") < seen.index("progress")


async def test_runs_are_listed_newest_first_and_filtered(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    h = await make_harness(js, nats_url, tmp_path, [Script([result_line(tmp_path / "x")])])
    older, newer = run_id(), run_id()
    await h.supervisor.start_run(h.spec, run_id=older)
    await finished(h, older)
    await h.supervisor.start_run(h.spec, run_id=newer, validate_only=True)
    assert await h.runs.get(newer) is None  # validate_only stores nothing
    runs = await h.supervisor.list(state=pb.TRAINING_RUN_STATE_SUCCEEDED)
    assert older in [r.run_id for r in runs]
    assert all(r.state == pb.TRAINING_RUN_STATE_SUCCEEDED for r in runs)
    created = [(r.created_at.seconds, r.created_at.nanos) for r in runs]
    assert created == sorted(created, reverse=True)


async def test_two_replicas_never_drive_one_run_and_adopt_a_dead_ones_runs(
    js: JetStreamContext, nats_url: str, tmp_path: Path
) -> None:
    settings = NatsSettings(url=nats_url)
    bucket = f"leases-{uuid.uuid4().hex[:8]}"
    lease_a = await open_leases(js, settings, "replica-a", 1.0, bucket=bucket)
    lease_b = await open_leases(js, settings, "replica-b", 1.0, bucket=bucket)
    a = await make_harness(
        js, nats_url, tmp_path, [Script([progress_line(1)], hold=True)], leases=lease_a
    )
    b = await make_harness(
        js,
        nats_url,
        tmp_path,
        [Script([result_line(tmp_path / "adopted")])],
        leases=lease_b,
    )
    cancelled_elsewhere, adopted = run_id(), run_id()

    # A drives the run; B's recovery leaves it alone, and B's CancelRun stops A's job.
    await a.supervisor.start_run(a.spec, run_id=cancelled_elsewhere)
    await running_state(a.supervisor, cancelled_elsewhere)
    await b.supervisor.recover()
    assert not b.runner.started
    run = await b.supervisor.cancel(cancelled_elsewhere)
    assert run.state == pb.TRAINING_RUN_STATE_CANCELLED
    for _ in range(100):
        if a.runner.cancelled:
            break
        await asyncio.sleep(0.05)
    assert a.runner.cancelled == [f"fake-{cancelled_elsewhere}-1"]

    # A dies while driving a run (no lease release); once its lease lapses, B adopts the run.
    a.runner.scripts.append(Script([progress_line(1)], hold=True))
    await a.supervisor.start_run(a.spec, run_id=adopted)
    await running_state(a.supervisor, adopted)
    a.supervisor._closing = True  # a crash: nothing is released, nothing is stopped
    for task in list(a.supervisor._tasks.values()):
        task.cancel()
    await b.supervisor.recover()
    assert len(b.runner.started) == 0  # the lease is still A's
    await asyncio.sleep(2.5)  # the lease (1 s) lapses; expiry is checked about every second
    await b.supervisor.recover()
    run = await finished(b, adopted)
    assert (run.state, run.attempt) == (pb.TRAINING_RUN_STATE_SUCCEEDED, 2)
    assert [r.run_id for r in b.runner.started] == [adopted]
