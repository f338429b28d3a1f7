"""`arena up -d`, `arena status`, `arena down`: the whole local stack as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from arena_cli.nats_server import free_port
from arena_cli.stack import SERVICES, StackState

pytestmark = pytest.mark.slow


def _free_block(size: int) -> int:
    """A base port with `size` free ports above it."""
    for _ in range(50):
        base = free_port()
        if base + size < 65000 and all(_is_free(base + offset) for offset in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = [
            "--nats-port",
            str(_free_block(1)),
            "--grpc-base-port",
            str(_free_block(len(SERVICES))),
            "--metrics-base-port",
            str(_free_block(len(SERVICES))),
        ]
        self.env = {**os.environ, "ARENA_HOME": str(home)}

    def arena(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "arena_cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self) -> list[dict[str, str]]:
        result = self.arena("status", "--format", "json", *self.ports)
        rows: list[dict[str, str]] = json.loads(result.stdout)
        return rows

    def state(self) -> StackState:
        state = StackState.read(self.home)
        assert state is not None
        return state


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "arena-home")
    yield stack
    stack.arena("down")


def _wait_until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stack_comes_up_heals_a_killed_service_and_goes_down(stack: Stack) -> None:
    started = time.monotonic()
    up = stack.arena("up", "-d", "--timeout", "60", *stack.ports)
    assert up.returncode == 0, up.stderr
    assert time.monotonic() - started < 60

    rows = stack.status()
    assert [row["service"] for row in rows] == list(SERVICES)
    assert {row["status"] for row in rows} == {"SERVING"}
    for row in rows:
        body = urllib.request.urlopen(row["metrics"], timeout=5).read().decode()
        assert f'arena_service_serving{{service="{row["service"]}"}} 1.0' in body
        assert "arena_grpc_server_handled_total" in body

    judge = next(entry for entry in stack.state().services if entry.service == "judge")
    assert judge.pid is not None
    os.kill(judge.pid, signal.SIGKILL)

    def judge_restarted() -> bool:
        entry = next(entry for entry in stack.state().services if entry.service == "judge")
        serving = {row["service"]: row["status"] for row in stack.status()}
        return entry.restarts == 1 and entry.pid != judge.pid and serving["judge"] == "SERVING"

    _wait_until(judge_restarted, 60)

    pids = [entry.pid for entry in stack.state().services if entry.pid]
    down = stack.arena("down")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids)
    assert {row["status"] for row in stack.status()} == {"UNREACHABLE"}


def test_taken_port_is_reported_before_anything_starts(stack: Stack) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = list(stack.ports)
        ports[ports.index("--nats-port") + 1] = str(taken)

        result = stack.arena("up", "--exit-when-healthy", *ports)

    assert result.returncode != 0
    assert f"{taken} (NATS)" in result.stderr
    assert not (stack.home / "stack.json").exists()


def test_foreground_stack_stops_everything_on_ctrl_c(stack: Stack) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "arena_cli.main", "up", *stack.ports],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: {row["status"] for row in stack.status()} == {"SERVING"}, 60)
        pids = [entry.pid for entry in stack.state().services if entry.pid]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopped." in process.stderr.read()  # type: ignore[union-attr]
    assert not any(_alive(pid) for pid in pids)
    assert not (stack.home / "supervisor.pid").exists()
