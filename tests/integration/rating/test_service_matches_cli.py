"""The service's Done-when: judgments published as events — re-published under new event ids,
redelivered after a SIGKILL mid-stream, replayed after the service's KV state is lost — give
exactly the leaderboard `arena rate` gives for the same battles.

The service runs as its own process (`python -m arena_rating`) against a real nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import rating_service_pb2 as pb
from arena.rating.v1 import rating_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import NatsServer
from arena_core.bus.events import EventPublisher
from arena_core.bus.topology import ensure_streams, stream_for
from arena_core.rpc.client import service_channel
from arena_core.settings import ConsumerSettings, NatsSettings
from arena_rating.domain import cells_from_battles, load_battles
from tests.integration.rating.support import (
    arena_rate,
    assert_same_leaderboard,
    batch,
    battle_line,
    bt_judgments,
    completed,
    judgment,
    query,
    rating_settings,
    start_process,
    wait_serving,
    write_battles,
)

ARENA = "wizard-arena"
MODELS = ("gpt-4", "llama-2-70b-chat", "target-i0", "vicuna-33b", "wizardlm-70b")
ROUNDS, SEED = 200, 7


async def _arena_count(stub: pb_grpc.RatingServiceStub) -> int:
    response = await stub.ListArenas(pb.ListArenasRequest())
    return next((a.battle_count for a in response.arenas if a.arena == ARENA), 0)


async def _drained(js: JetStreamContext, expected: int, stub: pb_grpc.RatingServiceStub) -> None:
    """Every judgment event handled and acknowledged, and the arena holding what it should."""
    deadline = time.monotonic() + 60
    count = -1
    while time.monotonic() < deadline:
        info = await js.consumer_info("ARENA_EVENTS_JUDGE", "rating-judgments")
        count = await _arena_count(stub)
        if (info.num_pending, info.num_ack_pending, count) == (0, 0, expected):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not drained: {count} of {expected} battles")


async def _first_checkpoint(js: JetStreamContext, bucket: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFoundError, KeyNotFoundError):
            if (await (await js.key_value(bucket)).get("position")).value:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("no checkpoint written")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        process.wait(30)


def _loaded_position(log_file: Path) -> int:
    """The bucket position the last start resumed from (its checkpoints)."""
    positions = [
        entry["position"]
        for line in log_file.read_text().splitlines()
        if line.startswith("{") and (entry := json.loads(line)).get("msg") == "aggregates loaded"
    ]
    return int(positions[-1])


async def test_events_redeliveries_restarts_and_lost_state_give_the_cli_leaderboard(
    private_nats: NatsServer, tmp_path: Path
) -> None:
    settings = rating_settings(
        private_nats.url, checkpoint_interval_seconds=0.1, replay_judgments_on_loss=True
    )
    # A short ack wait: what the killed process held is redelivered to its successor quickly.
    settings.consumer = ConsumerSettings(ack_wait_seconds=2.0)
    games = bt_judgments(ARENA, 330, MODELS, seed=11)
    unrated = [
        judgment("", "no-arena", 1, "gpt-4", "target-i0", judge_pb.VERDICT_A_BETTER),
        judgment(ARENA, "single", 1, "gpt-4", "", judge_pb.VERDICT_A_BETTER),
    ]
    rng = random.Random(3)
    singles = [completed(g) for g in games[:420]]  # a backlog handled one event at a time
    batches = [batch(games[k : k + 30]) for k in range(420, len(games), 30)]
    # The same judgments again under new event ids (a producer retry, a re-run of a round).
    again = [completed(g) for g in rng.sample(games, 60)] + [batch(rng.sample(games, 40))]
    expected_lines = [line for g in games if (line := battle_line(g)) is not None]
    battles_file = write_battles(tmp_path / "battles.jsonl", expected_lines)
    # Many battles per distinct cell: the multinomial bootstrap, which row order cannot change.
    cells = cells_from_battles(load_battles(battles_file))
    assert cells.n_battles >= 8 * len(cells.count)

    client = await nats.connect(private_nats.url)
    js = client.jetstream()
    await ensure_streams(js, [stream_for("events", "judge")], NatsSettings(url=private_nats.url))
    publisher = EventPublisher(js, "judge")
    address = f"127.0.0.1:{settings.grpc.port}"
    log_file = tmp_path / "rating.log"
    channel = service_channel(address)
    stub = pb_grpc.RatingServiceStub(channel)
    process = None
    try:
        for event in [*singles, completed(unrated[0])]:
            await publisher.publish(event)

        # First process: SIGKILLed mid-stream, holding unacknowledged judgments.
        process = start_process(settings, log_file)
        await wait_serving(address, process)
        await _first_checkpoint(js, settings.rating.aggregates_bucket)
        seen = await _arena_count(stub)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert 0 < seen < len(expected_lines)

        for event in [*again[:30], *batches[:3], completed(unrated[1])]:
            await publisher.publish(event)

        # Second process: resumes from its checkpoints; redeliveries and repeats count once.
        process = start_process(settings, log_file)
        await wait_serving(address, process)
        assert _loaded_position(log_file) > 0
        for event in [*batches[3:], *again[30:]]:
            await publisher.publish(event)
        await _drained(js, len(expected_lines), stub)

        board = await stub.GetLeaderboard(
            pb.GetLeaderboardRequest(query=query(ARENA, bootstrap_rounds=ROUNDS, seed=SEED))
        )
        expected = arena_rate(battles_file, "--bootstrap", str(ROUNDS), "--seed", str(SEED))
        assert_same_leaderboard(board.leaderboard, expected)
        assert board.leaderboard.battle_count == len(expected_lines)
        await _assert_other_fits_match(stub, battles_file)
        _stop(process)

        # Third process: the KV buckets are gone; the judge event stream is read again.
        await js.delete_key_value(settings.rating.battles_bucket)
        await js.delete_key_value(settings.rating.aggregates_bucket)
        process = start_process(settings, log_file)
        await wait_serving(address, process)
        await _drained(js, len(expected_lines), stub)
        again_board = await stub.GetLeaderboard(
            pb.GetLeaderboardRequest(query=query(ARENA, bootstrap_rounds=ROUNDS, seed=SEED))
        )
        assert_same_leaderboard(again_board.leaderboard, expected)
    finally:
        await channel.close()
        if process is not None:
            _stop(process)
        await client.drain()


async def _assert_other_fits_match(stub: pb_grpc.RatingServiceStub, battles_file: Path) -> None:
    """The MLE alone, the analytic interval and an anchored, baselined fit match as well."""
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        ({"bootstrap_rounds": 0}, ("--bootstrap", "0")),
        ({"ci_method": pb.CI_METHOD_ANALYTIC}, ("--ci", "analytic")),
        (
            {
                "anchors": [pb.Anchor(model="llama-2-70b-chat", rating=1100.0)],
                "baseline": "gpt-4",
                "bootstrap_rounds": 50,
                "seed": 1,
            },
            (
                "--anchor",
                "llama-2-70b-chat=1100",
                "--baseline",
                "gpt-4",
                "--bootstrap",
                "50",
                "--seed",
                "1",
            ),
        ),
    ]
    for fields, args in cases:
        response = await stub.GetLeaderboard(pb.GetLeaderboardRequest(query=query(ARENA, **fields)))
        expected = arena_rate(battles_file, *args)
        assert_same_leaderboard(response.leaderboard, expected)
        if "--baseline" in args:
            got = {e.model: e.win_rate for e in response.leaderboard.entries}
            assert got == {row["model"]: row["win_rate"] for row in expected["models"]}
            assert got["gpt-4"] == pytest.approx(50.0)
