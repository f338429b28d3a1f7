"""`arena flywheel ...`: start, steer and report on flywheel runs of a running flywheel service.

`validate` checks a spec offline. Every other command talks to the flywheel service over gRPC:
`--target host:port`, else `ARENA_FLYWHEEL_TARGET`, else the local stack's flywheel service
(`arena up`), else 127.0.0.1 on the stack's default flywheel port. RUN is a run id or `latest`.

Exit codes: 0 done; 1 the service said no (NOT_FOUND, FAILED_PRECONDITION, unreachable, ...) or
a followed run failed or was cancelled; 2 an invalid spec (checked here first, then by the
service) or invalid options; 130 Ctrl-C while following (the run itself goes on).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
import grpc
from google.protobuf import json_format
from grpc import aio
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena_cli.stack import StackPorts, StackState, arena_home
from arena_core.rpc.client import service_channel
from arena_flywheel.domain.report import (
    IterationResult,
    LeaderboardRow,
    RunReport,
    render_html,
    report_json,
)
from arena_flywheel.domain.spec import SpecError, parse_spec
from arena_flywheel.report_files import (
    plot_svg,
    report_from_proto,
    stage_name,
    write_report_files,
)

T = TypeVar("T")
TARGET_ENV = "ARENA_FLYWHEEL_TARGET"
_UNARY_TIMEOUT_SECONDS = 60.0
_RECONNECTS = 10  # a restarted controller comes back within this many tries of the stream

_STATES: dict[int, str] = {
    value: name.removeprefix("FLYWHEEL_RUN_STATE_").lower()
    for name, value in pb.FlywheelRunState.items()
}
_STATE_VALUES: dict[str, int] = {
    name: value for value, name in _STATES.items() if name != "unspecified"
}
_TERMINAL = {
    pb.FLYWHEEL_RUN_STATE_SUCCEEDED,
    pb.FLYWHEEL_RUN_STATE_FAILED,
    pb.FLYWHEEL_RUN_STATE_CANCELLED,
}
_STEP_STATES: dict[int, str] = {
    value: name.removeprefix("STEP_STATE_").lower() for name, value in pb.StepState.items()
}


class FlywheelCliError(click.ClickException):
    """The service said no, or a followed run did not succeed: exit code 1."""

    exit_code = 1


class InvalidInputError(FlywheelCliError):
    """An invalid spec or argument, found here or by the service: exit code 2."""

    exit_code = 2


def _failure(message: str, exit_code: int = 1) -> FlywheelCliError:
    return InvalidInputError(message) if exit_code == 2 else FlywheelCliError(message)


def register(cli: click.Group) -> None:
    cli.add_command(flywheel)


@click.group()
def flywheel() -> None:
    """Flywheel runs: battle, judge, select, train, evaluate, promote, repeat."""


def default_target() -> str:
    """The local stack's flywheel service, or its default address when no stack state exists."""
    state = StackState.read(arena_home())
    if state is not None:
        for entry in state.services:
            if entry.service == "flywheel":
                return entry.grpc
    return f"127.0.0.1:{StackPorts().grpc('flywheel')}"


def _target_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--target",
        "--service",
        "target",
        envvar=TARGET_ENV,
        default=None,
        metavar="HOST:PORT",
        help=f"Flywheel service address (default: ${TARGET_ENV}, else the local stack's).",
    )(function)


_RUN = click.argument("run_id", metavar="RUN")


# --- calling the service ---------------------------------------------------------------------


@asynccontextmanager
async def _stub(target: str) -> AsyncIterator[pb_grpc.FlywheelServiceAsyncStub]:
    async with service_channel(target) as channel:
        yield pb_grpc.FlywheelServiceStub(channel)


def _rpc_failure(error: aio.AioRpcError, target: str, run_id: str | None) -> FlywheelCliError:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND and run_id is not None:
        if run_id == "latest":
            return FlywheelCliError(f"no flywheel runs yet at {target} ({details})")
        return FlywheelCliError(f"flywheel run {run_id!r} not found at {target} ({details})")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return FlywheelCliError(
            f"cannot reach the flywheel service at {target} ({code.name}: {details}); "
            f"start the stack with `arena up`, or point --target / ${TARGET_ENV} at it"
        )
    exit_code = 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1
    return _failure(f"flywheel service {target}: {code.name}: {details}", exit_code)


def _call(
    target: str | None,
    body: Callable[[pb_grpc.FlywheelServiceAsyncStub, str], Awaitable[T]],
    run_id: str | None = None,
) -> T:
    address = target or default_target()

    async def run() -> T:
        async with _stub(address) as stub:
            try:
                return await body(stub, address)
            except aio.AioRpcError as error:
                raise _rpc_failure(error, address, run_id) from None

    return asyncio.run(run())


# --- names ------------------------------------------------------------------------------------


def state_name(state: int) -> str:
    return _STATES.get(state, str(state))


def _step_label(position: pb.RunPosition) -> str:
    step = pb.Step.Name(position.step).removeprefix("STEP_").lower()
    stage = stage_name(position.stage)
    return f"{stage} {step}" if stage else step


def _position_text(run: pb.FlywheelRun) -> str:
    if not run.HasField("position"):
        return "-"
    return f"iteration {run.position.iteration}, {_step_label(run.position)}"


def _iterations_text(run: pb.FlywheelRun) -> str:
    if run.continuous:
        return f"{run.iterations_completed} completed (continuous)"
    planned = run.iterations_planned if run.HasField("iterations_planned") else "?"
    return f"{run.iterations_completed}/{planned} completed"


def _progress_text(progress: common_pb2.Progress) -> str:
    total = progress.total if progress.HasField("total") else "?"
    return f"{progress.done}/{total} {progress.unit}".rstrip()


def _message_json(message: Any) -> Any:
    return json_format.MessageToDict(message)


# --- validate / start -------------------------------------------------------------------------


_SPEC = click.argument(
    "spec_path", metavar="SPEC.yaml", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)


def _read_spec(path: Path) -> str:
    """The spec's text, validated here so that nothing starts from an invalid spec."""
    text = path.read_text(encoding="utf-8")
    try:
        parse_spec(text, source=str(path))
    except SpecError as error:
        raise InvalidInputError(str(error)) from None
    return text


@flywheel.command()
@_SPEC
def validate(spec_path: Path) -> None:
    """Checks SPEC.yaml offline; every problem is listed with its field."""
    text = spec_path.read_text(encoding="utf-8")
    try:
        spec = parse_spec(text, source=str(spec_path))
    except SpecError as error:
        raise InvalidInputError(str(error)) from None
    iterations = spec.iterations if not spec.continuous else "continuous"
    click.echo(
        f"{spec_path}: valid: {spec.name}, target {spec.target.model} vs "
        f"{', '.join(spec.opponents)}, stages {'/'.join(spec.stages)}, iterations {iterations}"
    )


@flywheel.command()
@_SPEC
@click.option("--run-id", default="", help="Idempotency key: a known id returns that run.")
@click.option(
    "--follow/--detach",
    default=None,
    help="Show live progress until the run ends, or return once it started. "
    "Default: follow on a terminal, detach otherwise.",
)
@_target_option
def start(spec_path: Path, run_id: str, follow: bool | None, target: str | None) -> None:
    """Starts a run from SPEC.yaml (validated here first); on a terminal, follows it."""
    text = _read_spec(spec_path)
    console = Console()
    follow = console.is_terminal if follow is None else follow

    async def body(stub: pb_grpc.FlywheelServiceAsyncStub, address: str) -> pb.FlywheelRun:
        request = pb.StartRunRequest(spec_yaml=text, run_id=run_id)
        try:
            response = await stub.StartRun(request, timeout=_UNARY_TIMEOUT_SECONDS)
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            lines = await _server_violations(stub, text) or [error.details() or ""]
            raise InvalidInputError(
                f"{spec_path}: the flywheel service at {address} rejected the spec:\n  "
                + "\n  ".join(lines)
            ) from None
        run = response.run
        click.echo(f"flywheel run {run.run_id} ({run.name}): {state_name(run.state)}", err=follow)
        if not follow:
            click.echo(f"follow it with: arena flywheel watch {run.run_id}", err=True)
            return run
        return await follow_run(stub, address, run.run_id, console)

    final = _run_followed(target, body, run_id or None)
    if follow:
        _exit_for(final)


async def _server_violations(stub: pb_grpc.FlywheelServiceAsyncStub, text: str) -> list[str]:
    """The service's own list of problems with their fields, when it has one."""
    try:
        verdict = await stub.ValidateSpec(
            pb.ValidateSpecRequest(spec_yaml=text), timeout=_UNARY_TIMEOUT_SECONDS
        )
    except aio.AioRpcError:
        return []
    return [f"{violation.field}: {violation.message}" for violation in verdict.violations]


@flywheel.command()
@_RUN
@_target_option
def watch(run_id: str, target: str | None) -> None:
    """Follows RUN's progress until it ends (Ctrl-C detaches; the run goes on)."""
    final = _run_followed(
        target, lambda stub, address: follow_run(stub, address, run_id, Console()), run_id
    )
    _exit_for(final)


def _run_followed(
    target: str | None,
    body: Callable[[pb_grpc.FlywheelServiceAsyncStub, str], Awaitable[pb.FlywheelRun]],
    run_id: str | None,
) -> pb.FlywheelRun:
    try:
        return _call(target, body, run_id)
    except KeyboardInterrupt:
        click.echo("\ndetached; the run goes on (arena flywheel status latest)", err=True)
        raise click.exceptions.Exit(130) from None


def _exit_for(run: pb.FlywheelRun) -> None:
    if run.state == pb.FLYWHEEL_RUN_STATE_SUCCEEDED:
        return
    failure = f": {run.failure.reason}: {run.failure.message}" if run.failure.reason else ""
    raise FlywheelCliError(f"flywheel run {run.run_id} {state_name(run.state)}{failure}")


# --- following a run --------------------------------------------------------------------------


class _View(Protocol):
    def run(self, run: pb.FlywheelRun) -> None: ...
    def step(self, status: pb.StepStatus) -> None: ...
    def note(self, renderable: RenderableType) -> None: ...


class _Bars:
    """Live progress on a terminal: the iterations, then one bar per step of this iteration."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._overall: TaskID | None = None
        self._iteration: int | None = None
        self._steps: dict[str, TaskID] = {}

    def run(self, run: pb.FlywheelRun) -> None:
        planned = run.iterations_planned if run.HasField("iterations_planned") else None
        description = escape(f"{run.name or run.run_id} [{state_name(run.state)}] iterations")
        if self._overall is None:
            self._overall = self._progress.add_task(description, total=planned, unit="")
        self._progress.update(
            self._overall,
            description=description,
            total=planned,
            completed=run.iterations_completed,
        )
        if run.HasField("position") and run.position.iteration != self._iteration:
            for task in self._steps.values():
                self._progress.remove_task(task)
            self._steps.clear()
            self._iteration = run.position.iteration
        for status in run.steps:
            self.step(status)

    def step(self, status: pb.StepStatus) -> None:
        iteration = status.position.iteration
        if self._iteration is not None and iteration < self._iteration:
            return  # a late update of an iteration that is over
        key = _step_label(status.position)
        state = _STEP_STATES.get(status.state, "?")
        description = escape(f"  {iteration}: {key} [{state}]")
        total = status.progress.total if status.progress.HasField("total") else None
        done = status.progress.done
        if status.state in (pb.STEP_STATE_COMPLETED, pb.STEP_STATE_SKIPPED) and not total:
            total, done = 1, 1
        if key not in self._steps:
            self._steps[key] = self._progress.add_task(description, total=total, unit="")
        self._progress.update(
            self._steps[key],
            description=description,
            total=total,
            completed=done,
            unit=status.progress.unit,
        )

    def note(self, renderable: RenderableType) -> None:
        self._progress.console.print(renderable)


class _Lines:
    """Plain lines when stdout is not a terminal: one per state change, none per tick."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._run_seen: tuple[int, str] | None = None
        self._steps_seen: dict[tuple[int, str], int] = {}

    def run(self, run: pb.FlywheelRun) -> None:
        seen = (run.state, _position_text(run))
        if seen != self._run_seen:
            self._run_seen = seen
            paused = f" ({run.pause_reason})" if run.pause_reason else ""
            click.echo(f"run {run.run_id}: {state_name(run.state)}{paused}, {seen[1]}")
        for status in run.steps:
            self.step(status)

    def step(self, status: pb.StepStatus) -> None:
        key = (status.position.iteration, _step_label(status.position))
        if self._steps_seen.get(key) == status.state:
            return
        self._steps_seen[key] = status.state
        failure = (
            f" {status.failure.reason}: {status.failure.message}" if status.failure.reason else ""
        )
        click.echo(
            f"  iteration {key[0]} {key[1]}: {_STEP_STATES.get(status.state, '?')} "
            f"{_progress_text(status.progress)}{failure}".rstrip()
        )

    def note(self, renderable: RenderableType) -> None:
        self._console.print(renderable)


@dataclass
class _Leaderboards:
    """Prints each iteration's leaderboard once, as soon as the iteration is over."""

    stub: pb_grpc.FlywheelServiceAsyncStub
    run_id: str
    view: _View
    printed: set[int]
    checked: tuple[int, int, int] | None = None

    async def after(self, run: pb.FlywheelRun) -> None:
        marker = (run.state, run.iterations_completed, run.position.iteration)
        if marker == self.checked:
            return
        self.checked = marker
        try:
            response = await self.stub.GetRunReport(
                pb.GetRunReportRequest(run_id=self.run_id), timeout=_UNARY_TIMEOUT_SECONDS
            )
        except aio.AioRpcError:
            return  # no report yet; the next state change asks again
        done = run.state in _TERMINAL
        for result in report_from_proto(response.report).ordered():
            over = done or result.iteration < run.position.iteration
            if result.iteration in self.printed or not result.leaderboard or not over:
                continue
            self.printed.add(result.iteration)
            self.view.note(leaderboard_table(result))


async def follow_run(
    stub: pb_grpc.FlywheelServiceAsyncStub, address: str, run_id: str, console: Console
) -> pb.FlywheelRun:
    """Streams RUN's progress into bars (or lines) until a terminal state; reconnects when the
    service restarts mid-run, as the controller is built to do."""
    if console.is_terminal:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            return await _stream(stub, address, run_id, _Bars(progress))
    return await _stream(stub, address, run_id, _Lines(console))


async def _stream(
    stub: pb_grpc.FlywheelServiceAsyncStub, address: str, run_id: str, view: _View
) -> pb.FlywheelRun:
    run: pb.FlywheelRun | None = None
    boards: _Leaderboards | None = None
    failures = 0
    while True:
        try:
            request = pb.StreamRunProgressRequest(run_id=run.run_id if run else run_id)
            async for update in stub.StreamRunProgress(request):
                failures = 0
                if update.WhichOneof("update") == "step":
                    view.step(update.step)
                    continue
                run = update.run
                view.run(run)
                boards = boards or _Leaderboards(stub, run.run_id, view, set())
                await boards.after(run)
                if run.state in _TERMINAL:
                    return run
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= _RECONNECTS:
                raise
            failures += 1
        # The stream ended without a terminal state (or the service went away): look again.
        try:
            response = await stub.GetRun(
                pb.GetRunRequest(run_id=run.run_id if run else run_id),
                timeout=_UNARY_TIMEOUT_SECONDS,
            )
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or failures >= _RECONNECTS:
                raise
            failures += 1
        else:
            run = response.run
            view.run(run)
            boards = boards or _Leaderboards(stub, run.run_id, view, set())
            await boards.after(run)
            if run.state in _TERMINAL:
                return run
        await asyncio.sleep(min(0.5 * 2**failures, 5.0))


# --- status / pause / resume / cancel ---------------------------------------------------------


_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)


@flywheel.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@_FORMAT
@click.option("--state", type=click.Choice(sorted(_STATE_VALUES)), help="List only these runs.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_target_option
def status(run_id: str | None, fmt: str, state: str | None, limit: int, target: str | None) -> None:
    """RUN's state, position, steps and budget; without RUN, the runs, newest first."""
    if run_id is None:
        request = pb.ListRunsRequest(page=common_pb2.PageRequest(page_size=limit))
        if state:
            request.state = pb.FlywheelRunState.Value(f"FLYWHEEL_RUN_STATE_{state.upper()}")

        async def runs(stub: pb_grpc.FlywheelServiceAsyncStub, _: str) -> pb.ListRunsResponse:
            return await stub.ListRuns(request, timeout=_UNARY_TIMEOUT_SECONDS)

        listing = _call(target, runs)
        if fmt == "json":
            click.echo(json.dumps({"runs": [_message_json(r) for r in listing.runs]}, indent=2))
        else:
            Console().print(runs_table(listing.runs))
        return
    if state:
        raise click.UsageError("--state filters the list of runs; leave out RUN to use it")

    async def one(stub: pb_grpc.FlywheelServiceAsyncStub, _: str) -> pb.FlywheelRun:
        response = await stub.GetRun(
            pb.GetRunRequest(run_id=run_id), timeout=_UNARY_TIMEOUT_SECONDS
        )
        return response.run

    run = _call(target, one, run_id)
    if fmt == "json":
        click.echo(json.dumps(_message_json(run), indent=2))
    else:
        console = Console()
        console.print(run_summary(run))
        if run.steps:
            console.print(steps_table(run))


def _steer(run_id: str, target: str | None, method: str, request: Any) -> None:
    async def body(stub: pb_grpc.FlywheelServiceAsyncStub, _: str) -> pb.FlywheelRun:
        response = await getattr(stub, method)(request, timeout=_UNARY_TIMEOUT_SECONDS)
        run: pb.FlywheelRun = response.run
        return run

    run = _call(target, body, run_id)
    reason = f" ({run.pause_reason})" if run.pause_reason else ""
    click.echo(f"flywheel run {run.run_id}: {state_name(run.state)}{reason}")


@flywheel.command()
@_RUN
@click.option("--reason", default="", help="Why, kept with the run.")
@_target_option
def pause(run_id: str, reason: str, target: str | None) -> None:
    """Stops dispatching new work after the steps in flight; `resume` continues."""
    _steer(run_id, target, "PauseRun", pb.PauseRunRequest(run_id=run_id, reason=reason))


@flywheel.command()
@_RUN
@_target_option
def resume(run_id: str, target: str | None) -> None:
    """Continues a paused run where it stopped."""
    _steer(run_id, target, "ResumeRun", pb.ResumeRunRequest(run_id=run_id))


@flywheel.command()
@_RUN
@click.option("--reason", default="", help="Why, kept with the run.")
@_target_option
def cancel(run_id: str, reason: str, target: str | None) -> None:
    """Ends a run for good, cancelling the work it started."""
    _steer(run_id, target, "CancelRun", pb.CancelRunRequest(run_id=run_id, reason=reason))


# --- report -----------------------------------------------------------------------------------


@flywheel.command()
@_RUN
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "html"]),
    default="table",
    show_default=True,
    help="json: the report.json document; html: the self-contained page.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write report.json, report.html, elo.svg and elo.png into this folder.",
)
@_target_option
def report(run_id: str, fmt: str, output: Path | None, target: str | None) -> None:
    """RUN's report: leaderboards per iteration with CIs, the target's Elo over iterations,
    the data selected per stage and opponent, judge statistics, promotion decisions."""

    async def body(stub: pb_grpc.FlywheelServiceAsyncStub, _: str) -> pb.RunReport:
        response = await stub.GetRunReport(
            pb.GetRunReportRequest(run_id=run_id), timeout=_UNARY_TIMEOUT_SECONDS
        )
        return response.report

    message = _call(target, body, run_id)
    domain = report_from_proto(message)
    if fmt == "json":
        click.echo(json.dumps(report_json(domain), indent=2))
    elif fmt == "html":
        click.echo(render_html(domain, plot_svg(domain)), nl=False)
    else:
        print_report(domain, Console())
    if output is not None:
        files = write_report_files(domain, output)
        for path in (files.json, files.html, files.svg, files.png):
            click.echo(f"wrote {path}", err=True)


# --- presentation -----------------------------------------------------------------------------


def runs_table(runs: Any) -> Table:
    table = Table("run", "name", "state", "position", "iterations", "incumbent", "updated")
    for run in runs:
        table.add_row(
            run.run_id,
            run.name,
            state_name(run.state),
            _position_text(run),
            _iterations_text(run),
            run.incumbent_model,
            run.updated_at.ToDatetime().isoformat(timespec="seconds")
            if run.HasField("updated_at")
            else "",
        )
    return table


def run_summary(run: pb.FlywheelRun) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", f"{run.run_id} ({run.name})")
    table.add_row("state", state_name(run.state))
    if run.pause_reason:
        table.add_row("paused because", run.pause_reason)
    if run.failure.reason:
        table.add_row("failure", f"{run.failure.reason}: {run.failure.message}")
    table.add_row("position", _position_text(run))
    table.add_row("iterations", _iterations_text(run))
    table.add_row("incumbent", run.incumbent_model or "-")
    budget = run.budget
    table.add_row(
        "budget",
        f"battles {budget.battles}"
        + (f"/{budget.battles_limit}" if budget.HasField("battles_limit") else "")
        + f", judge tokens {budget.judge_tokens}"
        + (f"/{budget.judge_tokens_limit}" if budget.HasField("judge_tokens_limit") else "")
        + f", GPU hours {budget.gpu_hours:.1f}"
        + (f"/{budget.gpu_hours_limit:g}" if budget.HasField("gpu_hours_limit") else ""),
    )
    return table


def steps_table(run: pb.FlywheelRun) -> Table:
    table = Table("iteration", "step", "state", "progress", title="steps of this iteration")
    for status in run.steps:
        failure = f" {status.failure.reason}" if status.failure.reason else ""
        table.add_row(
            str(status.position.iteration),
            _step_label(status.position),
            _STEP_STATES.get(status.state, "?") + failure,
            _progress_text(status.progress),
        )
    return table


def leaderboard_table(result: IterationResult) -> Table:
    """One iteration's leaderboard with 95% CIs; the target's row in bold."""
    label = "the target before the loop" if result.iteration == 0 else "after training"
    table = Table(title=f"Iteration {result.iteration}: {label}")
    table.add_column("Rank", justify="right")
    table.add_column("Model")
    table.add_column("Elo", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("Battles", justify="right")
    for row in result.leaderboard:
        table.add_row(
            str(row.rank),
            row.model,
            f"{row.rating:.1f}",
            _ci_text(row),
            str(row.battles),
            style="bold" if row.model == result.target.model else None,
        )
    return table


def _ci_text(row: LeaderboardRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return "-"
    return f"+{row.ci_high - row.rating:.1f}/-{row.rating - row.ci_low:.1f}"


def print_report(report: RunReport, console: Console) -> None:
    iterations = report.ordered()
    elo = Table("Iteration", "Model", "Elo", "95% CI", title=f"Run {report.run_id}: target Elo")
    for result in iterations:
        target = result.target
        interval = (
            f"{target.ci_low:.1f} to {target.ci_high:.1f}"
            if target.ci_low is not None and target.ci_high is not None
            else "-"
        )
        elo.add_row(str(result.iteration), target.model, f"{target.rating:.1f}", interval)
    console.print(elo)
    for result in iterations:
        console.print(leaderboard_table(result))
    data = Table("Iteration", "Stage", "K", "Records", "Per model (chosen/rejected)", title="Data")
    for result in iterations:
        for selection in result.data:
            shares = ", ".join(f"{s.model} {s.chosen}/{s.rejected}" for s in selection.model_shares)
            data.add_row(
                str(result.iteration),
                selection.stage,
                f"{selection.threshold:g}",
                str(selection.records),
                shares or "-",
            )
    if data.row_count:
        console.print(data)
    if report.judges:
        judges = Table(
            "Judge", "Judgments", "Position inconsistency", "Parse failures", title="Judges"
        )
        for judge in report.judges:
            judges.add_row(
                f"{judge.name} v{judge.version}",
                str(judge.judgments),
                f"{100 * judge.position_inconsistency_rate:.1f}%",
                f"{100 * judge.parse_failure_rate:.1f}%",
            )
        console.print(judges)
    promotions = Table(
        "Iteration", "Candidate", "Incumbent", "Decision", "Reason", title="Promotions"
    )
    for result in iterations:
        for record in result.promotions:
            promotions.add_row(
                str(record.iteration),
                record.candidate_model,
                record.incumbent_model,
                "promoted" if record.promoted else "rejected",
                record.reason,
            )
    if promotions.row_count:
        console.print(promotions)
