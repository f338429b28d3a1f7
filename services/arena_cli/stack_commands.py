"""`arena up`, `arena down`, `arena status` and `arena serve`: the local stack from the shell."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from arena_cli.stack import (
    SERVICES,
    StackPorts,
    StackState,
    Supervisor,
    all_serving,
    arena_home,
    planned_state,
    running_supervisor,
    service_health,
    stop_background_stack,
)
from arena_core.errors import ArenaError
from arena_core.lifecycle import install_stop_signals

console = Console(stderr=True)

STATUS_STYLE = {"SERVING": "green", "NOT_SERVING": "yellow"}


def status_table(state: StackState, rows: list[dict[str, str]]) -> Table:
    table = Table(title=f"arena stack ({state.home})")
    for column in ("service", "status", "pid", "restarts", "grpc", "metrics"):
        table.add_column(column)
    entries = {entry.service: entry for entry in state.services}
    for row in rows:
        entry = entries[row["service"]]
        style = STATUS_STYLE.get(row["status"], "red")
        table.add_row(
            row["service"],
            f"[{style}]{row['status']}[/{style}]",
            str(entry.pid or "-"),
            str(entry.restarts),
            row["grpc"],
            row["metrics"],
        )
    return table


def _ports_options(function: click.decorators.FC) -> click.decorators.FC:
    function = click.option(
        "--metrics-base-port",
        type=int,
        default=9101,
        show_default=True,
        envvar="ARENA_STACK_METRICS_BASE_PORT",
        help="First /metrics port; one per service.",
    )(function)
    function = click.option(
        "--grpc-base-port",
        type=int,
        default=50051,
        show_default=True,
        envvar="ARENA_STACK_GRPC_BASE_PORT",
        help="First gRPC port; one per service in order " + ", ".join(SERVICES) + ".",
    )(function)
    function = click.option(
        "--nats-port",
        type=int,
        default=4222,
        show_default=True,
        envvar="ARENA_STACK_NATS_PORT",
        help="Port of the local nats-server.",
    )(function)
    return function


@click.command()
@_ports_options
@click.option("-d", "--detach", is_flag=True, help="Run in the background; stop with `arena down`.")
@click.option(
    "--exit-when-healthy",
    is_flag=True,
    help="Start everything, print the status once all services are SERVING, then stop.",
)
@click.option(
    "--timeout", type=float, default=90.0, show_default=True, help="Seconds to become healthy."
)
def up(
    nats_port: int,
    grpc_base_port: int,
    metrics_base_port: int,
    detach: bool,
    exit_when_healthy: bool,
    timeout: float,
) -> None:
    """Start nats-server and every service as local processes, and keep them running."""
    ports = StackPorts(nats=nats_port, grpc_base=grpc_base_port, metrics_base=metrics_base_port)
    home = arena_home()
    if detach:
        _start_detached(home, ports, timeout)
        return
    try:
        asyncio.run(_run_foreground(home, ports, timeout, exit_when_healthy))
    except ArenaError as error:
        raise click.ClickException(str(error)) from None


async def _run_foreground(home: Path, ports: StackPorts, timeout: float, once: bool) -> None:
    supervisor = Supervisor(home, ports)
    stop = asyncio.Event()
    install_stop_signals(stop)
    supervisor.start()
    try:
        with Live(console=console, refresh_per_second=4, transient=once) as live:

            def observe(state: StackState, rows: list[dict[str, str]]) -> None:
                live.update(status_table(state, rows))

            started = time.monotonic()
            rows = await supervisor.wait_healthy(timeout, observe)
            console.print(
                f"all {len(rows)} services SERVING after {time.monotonic() - started:.1f}s"
            )
            if once:
                console.print(status_table(supervisor.state, rows))
                return
            console.print("Ctrl-C stops the stack.")
            await supervisor.supervise(stop, observe)
    finally:
        console.print("stopping the stack ...")
        supervisor.stop()
        console.print("stopped.")


def _start_detached(home_path: Path, ports: StackPorts, timeout: float) -> None:
    if (pid := running_supervisor(home_path)) is not None:
        raise click.ClickException(f"a stack is already running from {home_path} (pid {pid})")
    home_path.mkdir(parents=True, exist_ok=True)
    (home_path / "logs").mkdir(exist_ok=True)
    with open(home_path / "logs" / "supervisor.log", "ab") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arena_cli.main",
                "up",
                "--nats-port",
                str(ports.nats),
                "--grpc-base-port",
                str(ports.grpc_base),
                "--metrics-base-port",
                str(ports.metrics_base),
                "--timeout",
                str(timeout),
            ],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "ARENA_HOME": str(home_path), "TERM": "dumb"},
        )
    deadline = time.monotonic() + timeout
    state = planned_state(home_path, ports)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(
                f"the stack failed to start; see {home_path / 'logs' / 'supervisor.log'}"
            )
        rows = asyncio.run(service_health(state))
        if all_serving(rows):
            console.print(status_table(StackState.read(home_path) or state, rows))
            console.print(
                f"stack running in the background (pid {process.pid}); `arena down` stops it"
            )
            return
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    raise click.ClickException(f"not healthy after {timeout:.0f}s; see {home_path / 'logs'}")


@click.command()
def down() -> None:
    """Stop a stack started with `arena up -d`."""
    home = arena_home()
    if not stop_background_stack(home):
        raise click.ClickException(f"no stack is running from {home}")
    console.print("stopped.")


@click.command()
@_ports_options
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table")
def status(nats_port: int, grpc_base_port: int, metrics_base_port: int, output_format: str) -> None:
    """Health, gRPC address and metrics URL of every service of the local stack."""
    home = arena_home()
    ports = StackPorts(nats=nats_port, grpc_base=grpc_base_port, metrics_base=metrics_base_port)
    state = StackState.read(home) or planned_state(home, ports)
    rows = asyncio.run(service_health(state))
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        Console().print(status_table(state, rows))
    if not all_serving(rows):
        sys.exit(1)


@click.command()
@click.argument("service", type=click.Choice(SERVICES))
def serve(service: str) -> None:
    """Run one service in this process (what `python -m arena_<service>` does)."""
    importlib.import_module(f"arena_{service}.__main__").main()


def register(cli: click.Group) -> None:
    for command in (up, down, status, serve):
        cli.add_command(command)
