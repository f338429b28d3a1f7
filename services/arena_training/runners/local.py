"""Local processes: ``python -m arena_training.worker``, ``torchrun`` or ``accelerate launch``
next to the service, on its CPUs or GPUs.

Each attempt writes its job file and one combined log (`attempt-<n>.log`, stdout and stderr in
order) into the run's folder, and runs in its own process group so a cancel stops every rank.
The worker's output goes to the file, not a pipe, so the log survives the service and a
restarted service can re-attach to a worker that is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from arena_training.domain.job import run_dir as run_folder
from arena_training.domain.launch import launch_command
from arena_training.runners.base import (
    JobHandle,
    JobPhase,
    JobStatus,
    LaunchRequest,
    LogLine,
)
from arena_training.settings import LocalRunnerOptions

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2


class LocalProcessRunner:
    kind = "local"
    # A restarted service cannot wait for a worker it did not start; stopping it keeps the
    # resume logic in one place (the next attempt continues from the last checkpoint).
    detach_on_shutdown = False

    def __init__(self, options: LocalRunnerOptions, work_dir: Path) -> None:
        self._options = options
        self._work_dir = work_dir
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, run_id: str, attempt: int) -> Path:
        return run_folder(self._work_dir, run_id) / f"attempt-{attempt}.log"

    def job_path(self, run_id: str, attempt: int) -> Path:
        return run_folder(self._work_dir, run_id) / f"job-{attempt}.json"

    async def start(self, request: LaunchRequest) -> JobHandle:
        request.run_dir.mkdir(parents=True, exist_ok=True)
        job_file = self.job_path(request.run_id, request.attempt)
        job_file.write_text(request.job.to_json())
        gpus = request.placement.gpus_per_node
        command = launch_command(
            self._options.launcher,
            python=self._options.python,
            processes_per_node=max(gpus, 1),
            job_file=str(job_file),
        )
        env = {
            **os.environ,
            **self._options.env,
            "PYTHONUNBUFFERED": "1",
            "ARENA_TRAINING_RUN_ID": request.run_id,
        }
        if gpus == 0:
            env["CUDA_VISIBLE_DEVICES"] = ""
        log_file = self.log_path(request.run_id, request.attempt)
        with log_file.open("ab") as output:
            process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; never waited on here
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=request.run_dir,
                env=env,
                start_new_session=True,  # its own process group: cancel reaches every rank
            )
        name = str(process.pid)
        self._children[name] = process
        log.info(
            "started local training process",
            extra={"run_id": request.run_id, "attempt": request.attempt, "pid": process.pid},
        )
        return JobHandle(self.kind, request.run_id, request.attempt, name)

    async def attach(self, run_id: str, attempt: int, name: str) -> JobHandle | None:
        if name in self._children:
            return JobHandle(self.kind, run_id, attempt, name)
        job_file = str(self.job_path(run_id, attempt))
        if name.isdigit() and _is_running(int(name), job_file):
            return JobHandle(self.kind, run_id, attempt, name)
        return None

    async def status(self, handle: JobHandle) -> JobStatus:
        child = self._children.get(handle.name)
        if child is not None:
            code = child.poll()
            if code is None:
                return JobStatus(JobPhase.RUNNING)
            return JobStatus(JobPhase.SUCCEEDED if code == 0 else JobPhase.FAILED, exit_code=code)
        job_file = str(self.job_path(handle.run_id, handle.attempt))
        if handle.name.isdigit() and _is_running(int(handle.name), job_file):
            return JobStatus(JobPhase.RUNNING)
        # Not our child: its exit code is unknowable; the log's markers tell what happened.
        return JobStatus(JobPhase.GONE)

    async def wait(self, handle: JobHandle) -> JobStatus:
        while True:
            status = await self.status(handle)
            if status.finished:
                self._children.pop(handle.name, None)
                return status
            await asyncio.sleep(_POLL_SECONDS)

    async def logs(
        self, handle: JobHandle, *, follow: bool, tail_lines: int | None = None
    ) -> AsyncIterator[LogLine]:
        path = self.log_path(handle.run_id, handle.attempt)
        if not path.exists():
            if not follow:
                return
            while not path.exists():
                if (await self.status(handle)).finished:
                    return
                await asyncio.sleep(_POLL_SECONDS)
        with path.open("rb") as source:
            if tail_lines is not None:
                for line in deque(source, maxlen=max(tail_lines, 0)):
                    yield _line(line)
            pending = b""
            while True:
                chunk = source.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith(b"\n"):
                        yield _line(pending)
                        pending = b""
                    continue
                if not follow:
                    break
                if (await self.status(handle)).finished:
                    # One last read: the process may have written right before exiting.
                    rest = source.read()
                    for line in (pending + rest).splitlines():
                        yield _line(line)
                    pending = b""
                    break
                await asyncio.sleep(_POLL_SECONDS)
            if pending:
                yield _line(pending)

    async def cancel(self, handle: JobHandle) -> None:
        if not handle.name.isdigit():
            return
        pid = int(handle.name)
        job_file = str(self.job_path(handle.run_id, handle.attempt))
        if handle.name not in self._children and not _is_running(pid, job_file):
            return
        _signal_group(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + self._options.cancel_grace_seconds
        while asyncio.get_running_loop().time() < deadline:
            if (await self.status(handle)).finished:
                break
            await asyncio.sleep(_POLL_SECONDS)
        else:
            _signal_group(pid, signal.SIGKILL)
        # Kept until wait() or cleanup(): its exit code is still to be read.
        child = self._children.get(handle.name)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.wait, 10)

    async def cleanup(self, handle: JobHandle) -> None:
        self._children.pop(handle.name, None)

    async def close(self) -> None:
        self._children.clear()


def _line(raw: bytes) -> LogLine:
    return LogLine(
        text=raw.decode("utf-8", "replace").rstrip("\r\n"),
        stream="stdout",
        time=datetime.now(UTC),
    )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig)


def _is_running(pid: int, job_file: str) -> bool:
    """Whether `pid` is alive and is the worker of `job_file` (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; it only waits for its parent to reap it.
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else ""
    return state != "Z" and job_file.encode() in cmdline
