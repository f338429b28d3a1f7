"""`arena demo` (what `make run` runs): a real Arena Learning flywheel on this machine's CPU.

1. Starts the local stack (nats-server and the six services) under `$ARENA_HOME`.
2. Writes verifiable tasks (arithmetic, reversal, sorting, counting) with their known answers:
   a pool D0..D6, a held-out test set, the target's initial data and the opponents' data.
3. Warms up real tiny transformer models through the training service: the target briefly on its
   initial data, three opponents to clearly different strengths.
4. Runs the flywheel through the flywheel service: iteration 0 rates the target, then two
   iterations of SFT → DPO → RL on the battles the target lost, each evaluated on the test set by
   the reference judge and rated (Bradley–Terry with bootstrap CIs).
5. Prints the leaderboard after each iteration and the target's Elo and 95% CI per iteration, and
   exits non-zero unless the final target beats the initial one with non-overlapping CIs.

The stack stops at the end unless `--keep-stack`; the report stays under the run's folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import click
from grpc import aio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena.training.v1 import training_service_pb2 as training_pb
from arena.training.v1 import training_service_pb2_grpc as training_grpc
from arena_cli.demo.warmup import DemoAssets, WarmupRun, build_demo_assets, demo_spec_yaml
from arena_cli.flywheel_commands import follow_run
from arena_cli.stack import StackPorts, Supervisor, arena_home
from arena_core.lifecycle import install_stop_signals
from arena_core.rpc.client import service_channel

console = Console()
TERMINAL_TRAINING = {
    training_pb.TRAINING_RUN_STATE_SUCCEEDED,
    training_pb.TRAINING_RUN_STATE_FAILED,
    training_pb.TRAINING_RUN_STATE_CANCELLED,
}


class DemoError(click.ClickException):
    """The demo could not show what it promises; exit 1 with the reason."""


@click.command()
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of tasks and models.")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the demo's data and models go (default: $ARENA_HOME/demo).",
)
@click.option("--keep-stack", is_flag=True, help="Leave the stack running afterwards.")
@click.option("--nats-port", type=int, default=4222, show_default=True)
@click.option("--grpc-base-port", type=int, default=50051, show_default=True)
@click.option("--metrics-base-port", type=int, default=9101, show_default=True)
def demo(
    seed: int,
    workdir: Path | None,
    keep_stack: bool,
    nats_port: int,
    grpc_base_port: int,
    metrics_base_port: int,
) -> None:
    """Run a real flywheel end to end on the CPU: tiny models, verifiable tasks, two iterations."""
    home = arena_home()
    ports = StackPorts(nats=nats_port, grpc_base=grpc_base_port, metrics_base=metrics_base_port)
    asyncio.run(_demo(home, ports, (workdir or home / "demo").resolve(), seed, keep_stack))


async def _demo(home: Path, ports: StackPorts, workdir: Path, seed: int, keep: bool) -> None:
    supervisor = Supervisor(home, ports)
    stop = asyncio.Event()
    install_stop_signals(stop)
    console.rule("Arena Learning demo")
    supervisor.start()
    # The supervisor restarts a service that dies while the demo runs, as `arena up` does.
    supervising = asyncio.create_task(supervisor.supervise(stop))
    body = asyncio.create_task(_show(home, ports, workdir, seed, supervisor))
    try:
        await asyncio.wait([body, supervising], return_when=asyncio.FIRST_COMPLETED)
        if not body.done():
            body.cancel()
            raise click.Abort()
        body.result()
        if keep:
            console.print("the stack keeps running; Ctrl-C stops it")
            await supervising
    finally:
        stop.set()
        await asyncio.gather(supervising, return_exceptions=True)
        console.print("stopping the stack ...")
        supervisor.stop()


async def _show(
    home: Path, ports: StackPorts, workdir: Path, seed: int, supervisor: Supervisor
) -> None:
    started = time.monotonic()
    rows = await supervisor.wait_healthy(120)
    console.print(f"stack: {len(rows)} services SERVING under {home}")
    assets = await asyncio.to_thread(build_demo_assets, workdir, seed)
    console.print(
        f"tasks: pool of {assets.design.slice_size * assets.design.pool_slices} instructions "
        f"(D0..D{assets.design.pool_slices - 1}), test set of {assets.design.test_size}, "
        f"under {workdir / 'data'}"
    )
    paths = await _warm_up(ports, assets, seed)
    spec_yaml = demo_spec_yaml(
        assets,
        target_path=paths["target"],
        opponent_paths={name: paths[name] for name in assets.opponent_names},
    )
    spec_file = workdir / "flywheel.yaml"
    spec_file.write_text(spec_yaml)
    console.print(f"flywheel spec: {spec_file}")
    # One run per spec: running the demo again resumes or re-reports the same run, and every
    # answer, judgment and training run it already made is reused.
    data = _digest(spec_yaml.encode(), assets.pool.read_bytes(), assets.test_set.read_bytes())
    run_id = f"demo-{seed}-{data}"
    report = await _run_flywheel(ports, spec_yaml, run_id)
    _verdict(report)
    console.print(f"done in {time.monotonic() - started:.0f}s")


async def _warm_up(ports: StackPorts, assets: DemoAssets, seed: int) -> dict[str, Path]:
    """The target and the opponents, trained through the training service; their folders."""
    channel = service_channel(f"127.0.0.1:{ports.grpc('training')}")
    stub: training_grpc.TrainingServiceAsyncStub = training_grpc.TrainingServiceStub(channel)
    checkpoints: dict[str, str] = {}
    paths: dict[str, Path] = {}
    try:
        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bars:
            for run in assets.warmup:
                base = checkpoints.get(run.after or "", "")
                # Named by what it trains on, so changed data or recipes train anew.
                inputs = _digest(
                    run.spec(base or "base").SerializeToString(deterministic=True),
                    run.dataset.read_bytes(),
                )
                run_id = f"demo-{seed}-{run.model_name}-{inputs}"
                checkpoint = await _train(stub, run, base, run_id, bars)
                checkpoints[run.model_name] = checkpoint.checkpoint_id
                paths[run.model_name] = _local_path(checkpoint.artifact.uri)
    finally:
        await channel.close()
    return paths


async def _train(
    stub: training_grpc.TrainingServiceAsyncStub,
    run: WarmupRun,
    base_checkpoint: str,
    run_id: str,
    bars: Progress,
) -> training_pb.Checkpoint:
    task = bars.add_task(f"warm-up {run.model_name}", total=None)
    request = training_pb.StartRunRequest(spec=run.spec(base_checkpoint), run_id=run_id)
    await stub.StartRun(request, timeout=120)
    while True:
        current = (await stub.GetRun(training_pb.GetRunRequest(run_id=run_id), timeout=30)).run
        progress = current.progress.progress
        if progress.HasField("total"):
            bars.update(task, completed=progress.done, total=progress.total)
        if current.state in TERMINAL_TRAINING:
            break
        await asyncio.sleep(0.5)
    if current.state != training_pb.TRAINING_RUN_STATE_SUCCEEDED:
        raise DemoError(
            f"warm-up of {run.model_name} did not succeed: "
            f"{current.failure.reason}: {current.failure.message}"
        )
    bars.update(task, completed=bars.tasks[task].total or 1, total=bars.tasks[task].total or 1)
    response = await stub.GetCheckpoint(
        training_pb.GetCheckpointRequest(checkpoint_id=current.checkpoint_id), timeout=30
    )
    return response.checkpoint


async def _run_flywheel(ports: StackPorts, spec_yaml: str, run_id: str) -> pb.RunReport:
    address = f"127.0.0.1:{ports.grpc('flywheel')}"
    channel = service_channel(address)
    stub: pb_grpc.FlywheelServiceAsyncStub = pb_grpc.FlywheelServiceStub(channel)
    try:
        run = (await stub.StartRun(pb.StartRunRequest(spec_yaml=spec_yaml, run_id=run_id))).run
        console.print(f"flywheel run {run.run_id}: {run.iterations_planned} iterations planned")
        final = await follow_run(stub, address, run.run_id, console)
        if final.state != pb.FLYWHEEL_RUN_STATE_SUCCEEDED:
            raise DemoError(
                f"flywheel run {run_id} ended {pb.FlywheelRunState.Name(final.state)}: "
                f"{final.failure.reason}: {final.failure.message}"
            )
        report = (await stub.GetRunReport(pb.GetRunReportRequest(run_id=run_id))).report
    except aio.AioRpcError as error:
        raise DemoError(f"flywheel service at {address}: {error.details()}") from None
    finally:
        await channel.close()
    console.print(f"report: {report.html.uri}")
    return report


def _verdict(report: pb.RunReport) -> None:
    """The target's Elo per iteration; the demo fails unless the CIs show it improved."""
    table = Table(title="The target across iterations (Elo, 95% CI)")
    for column in ("iteration", "model", "Elo", "95% CI"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for iteration in report.iterations:
        target = iteration.target
        table.add_row(
            str(iteration.iteration),
            target.model,
            f"{target.rating:.1f}",
            f"[{target.ci_low:.1f}, {target.ci_high:.1f}]",
        )
    console.print(table)
    if len(report.iterations) < 2:
        raise DemoError("the run has no iteration after the baseline to compare")
    first, last = report.iterations[0].target, report.iterations[-1].target
    if not last.ci_low > first.ci_high:
        raise DemoError(
            f"the target did not improve clearly: final CI [{last.ci_low:.1f}, "
            f"{last.ci_high:.1f}] overlaps the initial [{first.ci_low:.1f}, {first.ci_high:.1f}]"
        )
    console.print(
        f"[bold green]the target improved[/]: Elo {first.rating:.1f} → {last.rating:.1f}, "
        f"95% CIs apart ({first.ci_high:.1f} < {last.ci_low:.1f})"
    )


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:8]


def _local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def register(cli: click.Group) -> None:
    cli.add_command(demo)
