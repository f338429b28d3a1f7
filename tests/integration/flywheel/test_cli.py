"""`arena flywheel ...` against a real grpc.aio server on a free port.

The server hosts a small FlywheelService of this module's own (canned runs, a canned report, a
scripted progress stream) behind the project's error-mapping interceptor, so the command line's
whole gRPC path runs: channel, stubs, status codes, streaming. The real controller is tested in
its own module; this one pins what the command line does with what a controller answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from grpc import aio
from rich.console import Console

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena_cli import flywheel_commands
from arena_cli.nats_server import free_port
from arena_core.errors import NotFoundError
from arena_core.rpc.interceptors import ErrorMappingInterceptor
from arena_flywheel.domain.spec import SpecError, SpecViolation, parse_spec

SPEC: dict[str, Any] = {
    "name": "cli-demo",
    "models": {
        "target": {"backend": "transformers", "path": "/models/target"},
        "strong": {"backend": "transformers", "path": "/models/strong"},
        "weak": {"backend": "transformers", "path": "/models/weak"},
    },
    "target": {"model": "target", "base": "/models/target"},
    "opponents": ["strong", "weak"],
    "judge": {"name": "reference", "protocol": "reference"},
    "pool": {"dataset": "pool-v1", "slices": 7},
    "evaluation": {"test_set": "tests-v1", "anchor": {"model": "weak", "rating": 1000}},
    "iterations": 2,
}
# Models the fake service "serves"; a spec naming another is valid here but not there.
SERVED = {"target", "strong", "weak"}


def _entry(model: str, rating: float, rank: int) -> common_pb2.LeaderboardEntry:
    return common_pb2.LeaderboardEntry(
        model=model,
        rating=rating,
        mle=rating,
        ci_low=rating - 20,
        ci_high=rating + 20,
        rank=rank,
        battles=120,
    )


def canned_report(run_id: str) -> pb.RunReport:
    report = pb.RunReport(run_id=run_id)
    report.generated_at.FromSeconds(1_700_000_000)
    for iteration, rating in ((0, 900.0), (1, 1000.0), (2, 1100.0)):
        target = "target" if iteration == 0 else f"target-i{iteration}"
        board = sorted(
            [(target, rating), ("strong", 1200.0), ("weak", 1000.0 - iteration)],
            key=lambda pair: -pair[1],
        )
        item = report.iterations.add(
            iteration=iteration,
            target=_entry(target, rating, [m for m, _ in board].index(target) + 1),
            snapshot_id=f"snap-{iteration}",
        )
        item.leaderboard.extend(_entry(m, r, rank) for rank, (m, r) in enumerate(board, 1))
        if iteration:
            item.data.add(
                stage=common_pb2.TRAINING_STAGE_SFT,
                dataset=common_pb2.DatasetRef(dataset_id=f"sft-{iteration}", record_count=40),
                threshold=1.0,
                model_shares=[common_pb2.ModelShare(model="strong", chosen=30)],
            )
            item.promotions.add(
                iteration=iteration,
                candidate_model=target,
                incumbent_model="target" if iteration == 1 else "target-i1",
                promoted=True,
                rule="ci_lower_above_incumbent",
                candidate=_entry(target, rating, 2),
                reason=f"{target}: lower bound {rating - 20:.1f} above incumbent",
            )
    report.judges.add(
        judge_name="reference",
        judge_version="1",
        judgments=960,
        position_inconsistency_rate=0.05,
        parse_failure_rate=0.0,
    )
    return report


def _run(
    run_id: str, state: int, iteration: int, step: int, completed: int = 0, stage: int = 0
) -> pb.FlywheelRun:
    run = pb.FlywheelRun(
        run_id=run_id,
        name="cli-demo",
        state=state,  # type: ignore[arg-type]
        incumbent_model="target",
        iterations_completed=completed,
        iterations_planned=2,
        position=pb.RunPosition(iteration=iteration, stage=stage, step=step),  # type: ignore[arg-type]
    )
    run.budget.battles = 240
    run.budget.battles_limit = 10_000
    return run


def _step(
    iteration: int, stage: int, step: int, state: int, done: int, total: int, unit: str
) -> pb.StepStatus:
    return pb.StepStatus(
        position=pb.RunPosition(iteration=iteration, stage=stage, step=step),  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        progress=common_pb2.Progress(done=done, total=total, unit=unit),
    )


def progress_script(run_id: str, doomed: bool) -> list[pb.StreamRunProgressResponse]:
    """A short run: the baseline, two iterations of one visible stage, then the end."""
    sft = common_pb2.TRAINING_STAGE_SFT
    running = pb.FLYWHEEL_RUN_STATE_RUNNING
    updates: list[pb.FlywheelRun | pb.StepStatus] = [
        _run(run_id, running, 0, pb.STEP_SPLIT),
        _step(0, 0, pb.STEP_SPLIT, pb.STEP_STATE_COMPLETED, 7, 7, "slices"),
        _run(run_id, running, 0, pb.STEP_RATE),
        _run(run_id, running, 1, pb.STEP_BATTLE, stage=sft),
        _step(1, sft, pb.STEP_BATTLE, pb.STEP_STATE_RUNNING, 5, 12, "battles"),
        _step(1, sft, pb.STEP_BATTLE, pb.STEP_STATE_RUNNING, 9, 12, "battles"),
        _step(1, sft, pb.STEP_BATTLE, pb.STEP_STATE_COMPLETED, 12, 12, "battles"),
        _run(run_id, running, 2, pb.STEP_BATTLE, completed=1, stage=sft),
    ]
    if doomed:
        last = _run(run_id, pb.FLYWHEEL_RUN_STATE_FAILED, 2, pb.STEP_TRAIN, completed=1)
        last.failure.reason = "OOM"
        last.failure.message = "training ran out of GPU memory"
    else:
        last = _run(run_id, pb.FLYWHEEL_RUN_STATE_SUCCEEDED, 2, pb.STEP_PROMOTE, completed=2)
        last.steps.append(_step(2, 0, pb.STEP_PROMOTE, pb.STEP_STATE_COMPLETED, 1, 1, "decisions"))
    updates.append(last)
    return [
        pb.StreamRunProgressResponse(run=u)
        if isinstance(u, pb.FlywheelRun)
        else pb.StreamRunProgressResponse(step=u)
        for u in updates
    ]


@dataclass
class FakeFlywheel(pb_grpc.FlywheelServiceServicer):
    """Just enough of a controller: runs in memory, canned report, scripted progress."""

    runs: dict[str, pb.FlywheelRun] = field(default_factory=dict)
    requests: list[tuple[str, Any]] = field(default_factory=list)

    def _find(self, run_id: str) -> pb.FlywheelRun:
        if run_id == "latest" and self.runs:
            return list(self.runs.values())[-1]
        if run_id not in self.runs:
            raise NotFoundError(f"no run {run_id!r}")
        return self.runs[run_id]

    @staticmethod
    def _violations(spec_yaml: str) -> list[SpecViolation]:
        try:
            spec = parse_spec(spec_yaml, "StartRunRequest.spec_yaml")
        except SpecError as error:
            return error.violations
        return [
            SpecViolation(f"opponents[{index}]", f"model {name!r} is not served")
            for index, name in enumerate(spec.opponents)
            if name not in SERVED
        ]

    async def ValidateSpec(
        self, request: pb.ValidateSpecRequest, context: Any
    ) -> pb.ValidateSpecResponse:
        found = self._violations(request.spec_yaml)
        return pb.ValidateSpecResponse(
            valid=not found,
            violations=[pb.SpecViolation(field=v.field, message=v.message) for v in found],
        )

    async def StartRun(self, request: pb.StartRunRequest, context: Any) -> pb.StartRunResponse:
        self.requests.append(("StartRun", request))
        found = self._violations(request.spec_yaml)
        if found:
            raise SpecError("StartRunRequest.spec_yaml", found)
        run_id = request.run_id or f"run-{len(self.runs) + 1}"
        run = self.runs.get(run_id) or _run(run_id, pb.FLYWHEEL_RUN_STATE_PENDING, 0, 0)
        run.spec_yaml = request.spec_yaml
        self.runs[run_id] = run
        return pb.StartRunResponse(run=run)

    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=self._find(request.run_id))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        self.requests.append(("ListRuns", request))
        runs = [
            run
            for run in reversed(self.runs.values())
            if not request.state or run.state == request.state
        ]
        return pb.ListRunsResponse(runs=runs[: request.page.page_size or None])

    async def PauseRun(self, request: pb.PauseRunRequest, context: Any) -> pb.PauseRunResponse:
        run = self._find(request.run_id)
        run.state = pb.FLYWHEEL_RUN_STATE_PAUSED
        run.pause_reason = request.reason
        return pb.PauseRunResponse(run=run)

    async def ResumeRun(self, request: pb.ResumeRunRequest, context: Any) -> pb.ResumeRunResponse:
        run = self._find(request.run_id)
        run.state = pb.FLYWHEEL_RUN_STATE_RUNNING
        run.pause_reason = ""
        return pb.ResumeRunResponse(run=run)

    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.CancelRunResponse:
        self.requests.append(("CancelRun", request))
        run = self._find(request.run_id)
        run.state = pb.FLYWHEEL_RUN_STATE_CANCELLED
        return pb.CancelRunResponse(run=run)

    async def StreamRunProgress(
        self, request: pb.StreamRunProgressRequest, context: Any
    ) -> AsyncIterator[pb.StreamRunProgressResponse]:
        run = self._find(request.run_id)
        for update in progress_script(run.run_id, doomed=run.run_id == "doomed"):
            await asyncio.sleep(0)
            yield update
        self.runs[run.run_id] = update.run

    async def GetRunReport(
        self, request: pb.GetRunReportRequest, context: Any
    ) -> pb.GetRunReportResponse:
        run = self._find(request.run_id)
        return pb.GetRunReportResponse(report=canned_report(run.run_id))


@dataclass
class Service:
    address: str
    fake: FakeFlywheel


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    """The fake service on a free port, in its own thread and event loop, because the command
    line runs its own loop (asyncio.run) the way it does from a shell."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = FakeFlywheel()
    port = free_port()

    async def start() -> aio.Server:
        server = aio.server(interceptors=[ErrorMappingInterceptor()])
        pb_grpc.add_FlywheelServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield Service(f"127.0.0.1:{port}", fake)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture
def arena() -> click.Group:
    @click.group()
    def cli() -> None:
        pass

    flywheel_commands.register(cli)
    return cli


def invoke(arena: click.Group, service: Service, *args: str) -> Result:
    return CliRunner().invoke(arena, ["flywheel", *args, "--target", service.address])


def spec_file(tmp_path: Path, **changes: Any) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def test_the_arena_command_has_the_flywheel_group() -> None:
    from arena_cli.main import cli

    assert set(cli.commands["flywheel"].commands) >= {  # type: ignore[attr-defined]
        "start",
        "status",
        "pause",
        "resume",
        "cancel",
        "report",
        "watch",
        "validate",
    }


def test_start_detached_sends_the_spec_and_run_id(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    path = spec_file(tmp_path)
    result = invoke(arena, service, "start", str(path), "--run-id", "run-a", "--detach")
    assert result.exit_code == 0, result.output
    assert "flywheel run run-a (cli-demo): pending" in result.stdout
    assert "arena flywheel watch run-a" in result.stderr
    name, request = service.fake.requests[-1]
    assert name == "StartRun"
    assert request.run_id == "run-a"
    assert request.spec_yaml == path.read_text()


def test_an_invalid_spec_is_rejected_before_the_service_hears_of_it(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    before = len(service.fake.requests)
    path = spec_file(tmp_path, opponents=["strong", "gpt-9"])
    result = invoke(arena, service, "start", str(path), "--detach")
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr
    assert "opponents[1]: unknown model 'gpt-9'" in result.stderr
    assert len(service.fake.requests) == before


def test_invalid_argument_from_the_service_lists_its_violations_and_exits_2(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    models = {**SPEC["models"], "hosted": {"backend": "openai", "uri": "https://x.example/v1"}}
    path = spec_file(tmp_path, models=models, opponents=["strong", "hosted"])
    result = invoke(arena, service, "start", str(path), "--detach")
    assert result.exit_code == 2, result.output
    assert "rejected the spec" in result.stderr
    assert "opponents[1]: model 'hosted' is not served" in result.stderr
    assert service.fake.requests[-1][0] == "StartRun"


def test_an_unknown_run_is_not_found_with_exit_1(arena: click.Group, service: Service) -> None:
    result = invoke(arena, service, "status", "no-such-run")
    assert result.exit_code == 1
    assert "flywheel run 'no-such-run' not found" in result.stderr
    report = invoke(arena, service, "report", "no-such-run", "--format", "json")
    assert report.exit_code == 1
    assert report.stdout == ""


def test_status_of_one_run_the_latest_and_the_list(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-s", "--detach")
    one = invoke(arena, service, "status", "run-s", "--format", "json")
    assert one.exit_code == 0, one.output
    document = json.loads(one.stdout)
    assert document["runId"] == "run-s"
    assert document["state"] == "FLYWHEEL_RUN_STATE_PENDING"
    latest = invoke(arena, service, "status", "latest")
    assert latest.exit_code == 0, latest.output
    assert "run-s (cli-demo)" in latest.stdout
    assert "battles 240/10000" in latest.stdout
    listing = invoke(arena, service, "status", "--state", "pending", "--limit", "5")
    assert listing.exit_code == 0, listing.output
    assert "run-s" in listing.stdout
    request = service.fake.requests[-1][1]
    assert request.state == pb.FLYWHEEL_RUN_STATE_PENDING
    assert request.page.page_size == 5


def test_pause_resume_cancel(arena: click.Group, service: Service, tmp_path: Path) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-p", "--detach")
    paused = invoke(arena, service, "pause", "run-p", "--reason", "GPU maintenance")
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.strip() == "flywheel run run-p: paused (GPU maintenance)"
    resumed = invoke(arena, service, "resume", "run-p")
    assert resumed.stdout.strip() == "flywheel run run-p: running"
    cancelled = invoke(arena, service, "cancel", "run-p", "--reason", "wrong pool")
    assert cancelled.stdout.strip() == "flywheel run run-p: cancelled"
    assert service.fake.requests[-1][1].reason == "wrong pool"


def test_report_json_prints_exactly_the_report_shape(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-r", "--detach")
    result = invoke(arena, service, "report", "latest", "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run"] == "run-r"
    assert [item["iteration"] for item in document["iterations"]] == [0, 1, 2]
    assert document["iterations"][0]["target"] == {
        "model": "target",
        "rating": 900.0,
        "ci_low": 880.0,
        "ci_high": 920.0,
    }
    assert document["iterations"][2]["target"]["model"] == "target-i2"
    assert set(document["iterations"][1]) == {"iteration", "target", "leaderboard"}
    assert [row["model"] for row in document["iterations"][1]["leaderboard"]] == [
        "strong",
        "target-i1",
        "weak",
    ]
    assert document["data"][0]["models"] == [{"model": "strong", "chosen": 30, "rejected": 0}]
    assert document["judges"][0]["position_inconsistency_rate"] == 0.05
    assert [p["promoted"] for p in document["promotions"]] == [True, True]


def test_report_html_table_and_files(arena: click.Group, service: Service, tmp_path: Path) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-h", "--detach")
    page = invoke(arena, service, "report", "run-h", "--format", "html")
    assert page.exit_code == 0, page.output
    assert page.stdout.startswith("<!DOCTYPE html>")
    assert "<svg" in page.stdout
    out = tmp_path / "report"
    table = invoke(arena, service, "report", "run-h", "--output", str(out))
    assert table.exit_code == 0, table.output
    assert "Iteration 0: the target before the loop" in table.stdout
    assert "Promotions" in table.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "elo.png",
        "elo.svg",
        "report.html",
        "report.json",
    ]
    assert json.loads((out / "report.json").read_text())["run"] == "run-h"
    assert f"wrote {out / 'report.json'}" in table.stderr


def test_start_follow_shows_steps_and_each_leaderboard_once(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    path = spec_file(tmp_path)
    result = invoke(arena, service, "start", str(path), "--run-id", "run-f", "--follow")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "run run-f: running, iteration 0, split" in out
    assert "  iteration 0 split: completed 7/7 slices" in out
    assert "  iteration 1 sft battle: running 5/12 battles" in out
    assert "9/12" not in out  # a tick within the same state is not a new line
    assert "  iteration 1 sft battle: completed 12/12 battles" in out
    titles = [
        "Iteration 0: the target before the loop",
        "Iteration 1: after training",
        "Iteration 2: after training",
    ]
    positions = [out.index(title) for title in titles]
    assert positions == sorted(positions)
    assert all(out.count(title) == 1 for title in titles)
    # Iteration 0's board comes once iteration 1 has begun, not before.
    assert out.index("run run-f: running, iteration 1, sft battle") < positions[0]
    assert "run run-f: succeeded" in out


def test_following_a_failed_run_exits_1_with_the_failure(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "doomed", "--detach")
    result = invoke(arena, service, "watch", "doomed")
    assert result.exit_code == 1
    assert "run doomed: failed" in result.stdout
    assert "flywheel run doomed failed: OOM: training ran out of GPU memory" in result.stderr


def test_the_target_comes_from_the_environment(
    arena: click.Group, service: Service, tmp_path: Path
) -> None:
    invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-e", "--detach")
    result = CliRunner().invoke(
        arena,
        ["flywheel", "status", "run-e"],
        env={flywheel_commands.TARGET_ENV: service.address},
    )
    assert result.exit_code == 0, result.output
    assert "run-e (cli-demo)" in result.stdout


def test_an_unreachable_service_is_named(arena: click.Group) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(arena, ["flywheel", "status", "latest", "--target", address])
    assert result.exit_code == 1
    assert f"cannot reach the flywheel service at {address}" in result.stderr


def test_on_a_terminal_start_follows_with_progress_bars(
    arena: click.Group, service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --follow/--detach: a terminal follows, with bars per step and the boards above them."""

    def terminal(**options: Any) -> Console:
        return Console(force_terminal=True, width=120, **options)

    monkeypatch.setattr(flywheel_commands, "Console", terminal)
    result = invoke(arena, service, "start", str(spec_file(tmp_path)), "--run-id", "run-t")
    assert result.exit_code == 0, result.output
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)  # colours and cursor moves
    # The last frame stays on screen: the run's bar and the bars of its last iteration's steps.
    last_frame = out.rsplit("\r", 1)[-1]
    assert re.search(r"cli-demo \[succeeded\] iterations .* 2/2", last_frame)
    assert re.search(r"2: promote \[completed\] .* 1/1 decisions", last_frame)
    assert out.count("Iteration 0: the target before the loop") == 1
    assert "Iteration 2: after training" in out
    assert "run run-t:" not in out  # the plain-line view is for pipes
