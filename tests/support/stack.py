"""The local stack (`arena up`) as tests drive it: a home folder, free ports, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from arena_cli.nats_server import free_port
from arena_cli.stack import SERVICES, ServiceEntry, StackState


def free_block(size: int) -> int:
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
        self.grpc_base = free_block(len(SERVICES))
        self.ports = [
            "--nats-port",
            str(free_block(1)),
            "--grpc-base-port",
            str(self.grpc_base),
            "--metrics-base-port",
            str(free_block(len(SERVICES))),
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

    def up(self) -> None:
        result = self.arena("up", "-d", "--timeout", "120", *self.ports, timeout=180)
        assert result.returncode == 0, result.stderr

    def status(self) -> list[dict[str, str]]:
        result = self.arena("status", "--format", "json", *self.ports)
        rows: list[dict[str, str]] = json.loads(result.stdout)
        return rows

    def state(self) -> StackState:
        state = StackState.read(self.home)
        assert state is not None
        return state

    def service(self, name: str) -> ServiceEntry:
        return next(entry for entry in self.state().services if entry.service == name)

    def grpc_address(self, name: str) -> str:
        return f"127.0.0.1:{self.grpc_base + SERVICES.index(name)}"


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
