"""The local stack: nats-server and every service as its own process, supervised.

State lives under ``$ARENA_HOME`` (default ``./.arena``): the JetStream store, one log per
process, ``stack.json`` (addresses and pids, rewritten whenever they change) and
``supervisor.pid`` while a stack is up. Several stacks run side by side with different homes and
ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from arena_cli.nats_server import NatsServer, port_is_free
from arena_core.errors import FailedPreconditionError
from arena_core.rpc.health import check_health

log = logging.getLogger(__name__)

SERVICES = ("inference", "judge", "rating", "selection", "training", "flywheel")
STACK_FILE = "stack.json"
PID_FILE = "supervisor.pid"


def arena_home() -> Path:
    return Path(os.environ.get("ARENA_HOME", ".arena")).resolve()


@dataclass(frozen=True)
class StackPorts:
    nats: int = 4222
    grpc_base: int = 50051
    metrics_base: int = 9101

    def grpc(self, service: str) -> int:
        return self.grpc_base + SERVICES.index(service)

    def metrics(self, service: str) -> int:
        return self.metrics_base + SERVICES.index(service)

    @property
    def inference_http(self) -> int:
        """The inference service's OpenAI-compatible endpoint, just above the metrics ports."""
        return self.metrics_base + len(SERVICES)

    def claims(self) -> list[tuple[int, str]]:
        """Every port the stack will listen on, with what it is for."""
        taken = [(self.nats, "NATS"), (self.inference_http, "inference HTTP")]
        for service in SERVICES:
            taken += [
                (self.grpc(service), f"{service} gRPC"),
                (self.metrics(service), f"{service} metrics"),
            ]
        return taken


@dataclass
class ServiceEntry:
    service: str
    grpc: str
    metrics: str
    pid: int | None = None
    restarts: int = 0


@dataclass
class StackState:
    home: str
    nats_url: str
    supervisor_pid: int
    services: list[ServiceEntry] = field(default_factory=list)

    def write(self, home: Path) -> None:
        target = home / STACK_FILE
        staging = target.with_suffix(".tmp")
        staging.write_text(json.dumps(asdict(self), indent=2))
        staging.replace(target)  # atomic: `arena status` never reads half a file

    @classmethod
    def read(cls, home: Path) -> StackState | None:
        try:
            raw = json.loads((home / STACK_FILE).read_text())
        except FileNotFoundError:
            return None
        raw["services"] = [ServiceEntry(**entry) for entry in raw["services"]]
        return cls(**raw)


def planned_state(home: Path, ports: StackPorts) -> StackState:
    return StackState(
        home=str(home),
        nats_url=f"nats://127.0.0.1:{ports.nats}",
        supervisor_pid=os.getpid(),
        services=[
            ServiceEntry(
                service=service,
                grpc=f"127.0.0.1:{ports.grpc(service)}",
                metrics=f"http://127.0.0.1:{ports.metrics(service)}/metrics",
            )
            for service in SERVICES
        ],
    )


def running_supervisor(home: Path) -> int | None:
    """The pid of a live supervisor for this home, if any."""
    try:
        pid = int((home / PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def check_ports_free(ports: StackPorts) -> None:
    busy = [f"{port} ({purpose})" for port, purpose in ports.claims() if not port_is_free(port)]
    if busy:
        raise FailedPreconditionError(
            "ports already in use: "
            + ", ".join(busy)
            + ". Choose others with --nats-port/--grpc-base-port/--metrics-base-port "
            "or stop what holds them."
        )


def all_serving(rows: list[dict[str, str]]) -> bool:
    return all(row["status"] == "SERVING" for row in rows)


async def service_health(state: StackState) -> list[dict[str, str]]:
    """`arena status` rows: each service's gRPC health status name and its addresses."""

    async def one(entry: ServiceEntry) -> dict[str, str]:
        status = await check_health(entry.grpc, timeout=1.5)
        return {
            "service": entry.service,
            "status": status,
            "grpc": entry.grpc,
            "metrics": entry.metrics,
        }

    return list(await asyncio.gather(*(one(entry) for entry in state.services)))


class ServiceProcess:
    """One service process, restartable, logging to its own file."""

    def __init__(self, entry: ServiceEntry, env: dict[str, str], log_file: Path) -> None:
        self.entry = entry
        self._env = env
        self._log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.next_start_at = 0.0
        self._backoff = 1.0

    def start(self) -> None:
        with open(self._log_file, "ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"arena_{self.entry.service}"],
                env=self._env,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        self.entry.pid = self.process.pid

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def schedule_restart(self) -> None:
        """Crash-looping services back off, up to 30 s between attempts."""
        self.entry.restarts += 1
        self.entry.pid = None
        self.next_start_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def mark_healthy(self) -> None:
        self._backoff = 1.0

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_or_kill(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


Observer = Callable[[StackState, list[dict[str, str]]], None]


class Supervisor:
    """Starts the stack, keeps every service running, and stops it all on request."""

    def __init__(
        self, home: Path, ports: StackPorts, extra_env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.ports = ports
        self.state = planned_state(home, ports)
        self._extra_env = extra_env or {}
        self._nats = NatsServer(home / "jetstream", ports.nats, home / "logs" / "nats.log")
        self._services: list[ServiceProcess] = []

    def _environment(self, service: str) -> dict[str, str]:
        return {
            **os.environ,
            "ARENA_HOME": str(self.home),
            "ARENA_NATS__URL": self.state.nats_url,
            "ARENA_GRPC__HOST": "127.0.0.1",
            "ARENA_GRPC__PORT": str(self.ports.grpc(service)),
            "ARENA_METRICS__HOST": "127.0.0.1",
            "ARENA_METRICS__PORT": str(self.ports.metrics(service)),
            "ARENA_INFERENCE__HTTP_HOST": "127.0.0.1",
            "ARENA_INFERENCE__HTTP_PORT": str(self.ports.inference_http),
            "ARENA_FLYWHEEL__REPORTS_DIR": str(self.home / "flywheel"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            # Where this service finds the others, e.g. ARENA_JUDGE__INFERENCE_TARGET.
            **{
                f"ARENA_{service.upper()}__{other.upper()}_TARGET": self._grpc_address(other)
                for other in SERVICES
                if other != service
            },
            **self._extra_env,
        }

    def _grpc_address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports.grpc(service)}"

    def start(self) -> None:
        if (pid := running_supervisor(self.home)) is not None:
            raise FailedPreconditionError(
                f"a stack is already running from {self.home} (supervisor pid {pid}); "
                "run `arena down` first or set ARENA_HOME to another folder"
            )
        check_ports_free(self.ports)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        (self.home / PID_FILE).write_text(str(os.getpid()))
        self._nats.start()
        for entry in self.state.services:
            process = ServiceProcess(
                entry, self._environment(entry.service), self.home / "logs" / f"{entry.service}.log"
            )
            process.start()
            self._services.append(process)
        self.state.write(self.home)

    async def supervise(self, stop: asyncio.Event, observe: Observer | None = None) -> None:
        """Restarts services that exit, until `stop` is set."""
        while not stop.is_set():
            changed = False
            for process in self._services:
                if process.exited() and process.entry.pid is not None:
                    log.warning("%s exited; restarting", process.entry.service)
                    process.schedule_restart()
                    changed = True
                if process.entry.pid is None and time.monotonic() >= process.next_start_at:
                    process.start()
                    changed = True
            if changed:
                self.state.write(self.home)
            rows = await service_health(self.state)
            for process, row in zip(self._services, rows, strict=True):
                if row["status"] == "SERVING":
                    process.mark_healthy()
            if observe is not None:
                observe(self.state, rows)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def wait_healthy(
        self, timeout: float, observe: Observer | None = None
    ) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        rows = await service_health(self.state)
        while time.monotonic() < deadline:
            rows = await service_health(self.state)
            if observe is not None:
                observe(self.state, rows)
            if all_serving(rows):
                return rows
            crashed = [p.entry.service for p in self._services if p.exited()]
            if crashed:
                raise FailedPreconditionError(
                    f"{', '.join(crashed)} exited during start-up; see {self.home / 'logs'}"
                )
            await asyncio.sleep(0.5)
        unhealthy = [
            f"{row['service']}={row['status']}" for row in rows if row["status"] != "SERVING"
        ]
        raise FailedPreconditionError(
            f"not healthy after {timeout:.0f}s: {', '.join(unhealthy)}; see {self.home / 'logs'}"
        )

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every service at once, wait, SIGKILL stragglers, then stop NATS last."""
        for process in self._services:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in self._services:
            process.wait_or_kill(deadline)
        self._nats.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.home / PID_FILE).unlink()
        for entry in self.state.services:
            entry.pid = None
        self.state.write(self.home)


def stop_background_stack(home: Path, timeout: float = 60.0) -> bool:
    """Signals a background supervisor to stop and waits for it; False if none was running."""
    pid = running_supervisor(home)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_supervisor(home) is None:
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True
