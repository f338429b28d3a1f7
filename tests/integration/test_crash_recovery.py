"""A consumer SIGKILLed in the middle of handling loses nothing and counts nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from arena_core.bus.events import EventPublisher
from arena_core.bus.state import ProcessedLedger
from arena_core.bus.topology import ensure_key_value
from arena_core.settings import NatsSettings
from tests.integration.bus_support import generation_request, jetstream, work_queue_consumer
from tests.integration.idempotent_worker import EFFECTS_BUCKET

REPO_ROOT = Path(__file__).resolve().parents[2]


def _start_worker(url: str, durable: str, attempts_log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.idempotent_worker",
            url,
            durable,
            str(attempts_log),
            "battle 3",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "services")]),
        },
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _wait_for_line(path: Path, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in _lines(path):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{line!r} not seen in {path}: {_lines(path)!r}")


async def test_event_is_handled_exactly_once_across_a_sigkill(
    nats_url: str, tmp_path: Path
) -> None:
    attempts_log = tmp_path / "attempts.log"
    async with jetstream(nats_url) as js:
        # A short ack wait, so the message the killed worker held is redelivered quickly.
        spec = await work_queue_consumer(js, nats_url, durable="crash-test", ack_wait_seconds=2.0)
        bucket = await ensure_key_value(js, EFFECTS_BUCKET, NatsSettings(url=nats_url))
        publisher = EventPublisher(js, "test")
        events = [generation_request(f"battle {index}") for index in range(1, 6)]
        for event in events:
            await publisher.publish(event)

        worker = _start_worker(nats_url, spec.durable, attempts_log)
        try:
            await _wait_for_line(attempts_log, "stalled")
            worker.send_signal(signal.SIGKILL)  # mid-handling: effect written, no ack sent
            worker.wait(10)

            worker = _start_worker(nats_url, spec.durable, attempts_log)
            await _wait_for_line(attempts_log, "attempt battle 5 1")
            await _wait_for_line(attempts_log, "attempt battle 3 2")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                info = await js.consumer_info(spec.stream, spec.durable)
                if (info.num_pending, info.num_ack_pending) == (0, 0):
                    break
                await asyncio.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(10)

        lines = _lines(attempts_log)
        assert "attempt battle 3 1" in lines
        assert "attempt battle 3 2" in lines
        for index in range(1, 6):
            assert lines.count(f"effect battle {index}") == 1, lines
        ledger = ProcessedLedger(bucket)
        for event in events:
            assert await ledger.seen(f"battle.{event.metadata.event_id}")
        recorded = [key for key in await bucket.keys() if key.startswith("battle.")]
        assert sorted(recorded) == sorted(f"battle.{event.metadata.event_id}" for event in events)
        info = await js.consumer_info(spec.stream, spec.durable)
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
