"""The local process runner, with a stand-in interpreter script instead of the real worker:
logs captured (stdout and stderr, in order), exit codes, cancellation of the whole process
group, and re-attaching to a worker that outlived a restart."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from arena_training.domain.job import TrainingJob
from arena_training.runners.base import JobPhase
from arena_training.runners.local import LocalProcessRunner
from arena_training.settings import LocalRunnerOptions

from .kube_fakes import launch_request

FAKE_PYTHON = """#!/bin/sh
# Called as: <python> -m arena_training.worker <job file>
echo "worker for $3"
echo '@@arena {"kind":"progress","step":1}'
echo "a warning" >&2
if [ -n "$FAKE_SLEEP" ]; then sleep "$FAKE_SLEEP" & echo $! > "$3.child"; wait; fi
echo "bye"
exit "${FAKE_EXIT:-0}"
"""


def runner_for(tmp_path: Path, **env: str) -> LocalProcessRunner:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    options = LocalRunnerOptions(python=str(script), env=env, cancel_grace_seconds=5)
    return LocalProcessRunner(options, tmp_path / "work")


def request(tmp_path: Path, run_id: str = "run-1", attempt: int = 1):  # type: ignore[no-untyped-def]
    base = launch_request(tmp_path, run_id=run_id, attempt=attempt, gpus=0)
    return type(base)(
        run_id=base.run_id,
        attempt=base.attempt,
        job=base.job,
        run_dir=tmp_path / "work" / "runs" / run_id,
        placement=base.placement,
    )


async def test_logs_and_exit_code_of_a_finished_worker(tmp_path: Path) -> None:
    runner = runner_for(tmp_path)
    handle = await runner.start(request(tmp_path))
    lines = [line.text async for line in runner.logs(handle, follow=True)]
    status = await runner.wait(handle)
    job_file = runner.job_path("run-1", 1)
    assert lines == [
        f"worker for {job_file}",
        '@@arena {"kind":"progress","step":1}',
        "a warning",
        "bye",
    ]
    assert (status.phase, status.exit_code) == (JobPhase.SUCCEEDED, 0)
    assert TrainingJob.from_json(job_file.read_text()).run_id == "run-1"
    tail = [line.text async for line in runner.logs(handle, follow=False, tail_lines=2)]
    assert tail == ["a warning", "bye"]


async def test_a_failing_worker_reports_its_exit_code(tmp_path: Path) -> None:
    runner = runner_for(tmp_path, FAKE_EXIT="3")
    handle = await runner.start(request(tmp_path))
    status = await runner.wait(handle)
    assert (status.phase, status.exit_code) == (JobPhase.FAILED, 3)


async def test_cancel_stops_the_worker_and_its_children(tmp_path: Path) -> None:
    runner = runner_for(tmp_path, FAKE_SLEEP="60")
    handle = await runner.start(request(tmp_path))
    child_file = Path(f"{runner.job_path('run-1', 1)}.child")
    for _ in range(100):
        if _read(child_file):
            break
        await asyncio.sleep(0.05)
    child = int(_read(child_file))
    await runner.cancel(handle)
    status = await runner.wait(handle)
    assert status.phase is JobPhase.FAILED
    assert status.exit_code is not None
    assert status.exit_code < 0  # killed by a signal
    await asyncio.sleep(0.2)
    assert not _alive(child), "the worker's child process survived the cancel"


async def test_a_new_runner_attaches_to_a_worker_still_running(tmp_path: Path) -> None:
    first = runner_for(tmp_path, FAKE_SLEEP="60")
    handle = await first.start(request(tmp_path))
    async for line in first.logs(handle, follow=True):
        if line.text == "a warning":
            break  # the worker is up (its command line is readable only once exec is done)
    restarted = runner_for(tmp_path)
    attached = await restarted.attach("run-1", 1, handle.name)
    assert attached is not None
    assert (await restarted.status(attached)).phase is JobPhase.RUNNING
    assert await restarted.attach("run-1", 2, handle.name) is None  # another attempt's job file
    assert await restarted.attach("run-1", 1, "999999999") is None
    await restarted.cancel(attached)
    await first.wait(handle)
    assert (await restarted.status(attached)).phase is JobPhase.GONE


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return stat_line.rsplit(")", 1)[-1].split()[0] != "Z"
