"""Shared fixtures: a real nats-server with JetStream per test session, free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from arena_cli.nats_server import NatsServer, free_port
from tests.support.datasets import SHARED_DATASETS

REPO_ROOT = Path(__file__).resolve().parents[1]
__all__ = ["REPO_ROOT", "SHARED_DATASETS"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("jetstream")
    server = NatsServer(store, free_port(), log_file=store / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server of one test module's own: its durable consumers start from an empty event
    history instead of working through everything earlier tests published."""
    store = tmp_path_factory.mktemp("private-js")
    server = NatsServer(store, free_port(), log_file=store / "nats.log")
    server.start()
    yield server
    server.stop()
