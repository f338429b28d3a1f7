"""The `helm test` script (charts/arena-flywheel/files/helm_test.py) against a real nats-server and
a real gRPC health server: it passes when everything answers and fails when a service does not."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import AsyncIterator
from types import ModuleType

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from tests.chart.support import CHART


@pytest.fixture(scope="module")
def helm_test() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_test", CHART / "files" / "helm_test.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def serving_address() -> AsyncIterator[str]:
    server = aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_passes_with_serving_services_and_nats(
    helm_test: ModuleType,
    serving_address: str,
    nats_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARENA_NATS__URL", nats_url)
    monkeypatch.setenv("ARENA_TEST_TARGETS", f"judge={serving_address},rating={serving_address}")
    monkeypatch.setenv("ARENA_TEST_TIMEOUT_SECONDS", "5")
    assert await helm_test.main() == 0
    output = capsys.readouterr().out
    assert "ok   nats round trip" in output
    assert output.count("ok   grpc health") == 2
    assert output.strip().endswith("3 passed, 0 failed")


async def test_fails_when_a_service_does_not_answer(
    helm_test: ModuleType,
    serving_address: str,
    nats_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARENA_NATS__URL", nats_url)
    monkeypatch.setenv(
        "ARENA_TEST_TARGETS", f"judge={serving_address},rating=127.0.0.1:{_closed_port()}"
    )
    monkeypatch.setenv("ARENA_TEST_TIMEOUT_SECONDS", "1")
    assert await helm_test.main() == 1
    output = capsys.readouterr().out
    assert "FAIL grpc health rating" in output
    assert "UNREACHABLE" in output
    assert output.strip().endswith("2 passed, 1 failed")


async def test_fails_without_nats(
    helm_test: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARENA_NATS__URL", f"nats://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("ARENA_NATS__CONNECT_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("ARENA_TEST_TARGETS", "")
    assert await helm_test.main() == 1
    assert "FAIL nats connect" in capsys.readouterr().out
