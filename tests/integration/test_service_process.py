"""A service as its own process: fail-fast config, SERVING only with NATS, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats

from arena_cli.nats_server import NatsServer, free_port
from arena_core.rpc.health import UNREACHABLE, check_health


def _service(
    name: str, nats_url: str, grpc_port: int, metrics_port: int, **env: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", f"arena_{name}"],
        env={
            **os.environ,
            "ARENA_NATS__URL": nats_url,
            "ARENA_GRPC__HOST": "127.0.0.1",
            "ARENA_GRPC__PORT": str(grpc_port),
            "ARENA_METRICS__HOST": "127.0.0.1",
            "ARENA_METRICS__PORT": str(metrics_port),
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def _wait_status(address: str, wanted: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    status = UNREACHABLE
    while time.monotonic() < deadline:
        status = await check_health(address, timeout=1)
        if status == wanted:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{address} is {status}, not {wanted}, after {timeout}s")


def test_bad_config_value_stops_the_service_naming_the_variable() -> None:
    process = _service(
        "judge", "nats://127.0.0.1:1", free_port(), free_port(), ARENA_GRPC__PORT="fifty"
    )
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 2
    assert "ARENA_GRPC__PORT" in stderr
    assert "fifty" in stderr
    assert "Traceback" not in stderr


async def test_serving_only_once_nats_is_up_and_topology_exists(tmp_path: Path) -> None:
    nats_port = free_port()
    grpc_port, metrics_port = free_port(), free_port()
    process = _service("rating", f"nats://127.0.0.1:{nats_port}", grpc_port, metrics_port)
    address = f"127.0.0.1:{grpc_port}"
    server = NatsServer(tmp_path / "js", nats_port)
    try:
        await asyncio.sleep(3)
        assert process.poll() is None  # keeps retrying NATS instead of crashing
        assert await check_health(address) != "SERVING"

        server.start()
        await _wait_status(address, "SERVING")

        client = await nats.connect(server.url)
        js = client.jetstream()
        consumer = await js.consumer_info("ARENA_EVENTS_JUDGE", "rating-judgments")
        assert "arena.events.judge.v1.JudgmentCompleted" in (consumer.config.filter_subjects or [])
        assert (await js.stream_info("ARENA_WORK_RATING")).config.retention == "workqueue"
        await client.close()

        metrics = await asyncio.to_thread(_scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        assert 'arena_nats_connected{service="rating"} 1.0' in metrics

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        _, stderr = process.communicate()
        assert '"msg":"stopped"' in stderr
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()


async def test_health_follows_the_nats_connection(tmp_path: Path) -> None:
    nats_port, grpc_port = free_port(), free_port()
    server = NatsServer(tmp_path / "js", nats_port)
    server.start()
    process = _service("judge", server.url, grpc_port, free_port())
    address = f"127.0.0.1:{grpc_port}"
    try:
        await _wait_status(address, "SERVING")
        server.kill()
        await _wait_status(address, "NOT_SERVING")
        server.start()
        await _wait_status(address, "SERVING")
    finally:
        process.terminate()
        process.wait(timeout=30)
        server.stop()
