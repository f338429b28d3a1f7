"""A nats-server of the rating tests' own (see support.py for why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from arena_cli.nats_server import NatsServer, free_port


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("rating-js")
    server = NatsServer(store, free_port(), log_file=store / "nats.log")
    server.start()
    yield server
    server.stop()
