"""`arena up -d`, `arena status`, `arena down`: the whole local stack as a user runs it."""

from __future__ import annotations

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

from arena_cli.stack import SERVICES
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path / "arena-home")
    yield stack
    stack.arena("down")


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

    wait_until(judge_restarted, 60)

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
        wait_until(lambda: {row["status"] for row in stack.status()} == {"SERVING"}, 60)
        pids = [entry.pid for entry in stack.state().services if entry.pid]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopped." in process.stderr.read()  # type: ignore[union-attr]
    assert not any(_alive(pid) for pid in pids)
    assert not (stack.home / "supervisor.pid").exists()
