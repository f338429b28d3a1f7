"""The rating service on the bus: judgments in (with failures and redeliveries), ratings work
items answered, scheduled snapshots with their metrics, and two replicas sharing the state."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from google.protobuf.message import Message
from prometheus_client import REGISTRY

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import events_pb2
from arena.rating.v1 import rating_service_pb2 as pb
from arena_cli.nats_server import NatsServer, free_port
from arena_core.bus.events import EventPublisher
from arena_core.errors import UnavailableError
from arena_core.settings import ConsumerSettings, GrpcSettings, MetricsSettings
from arena_rating.aggregator import Aggregates
from arena_rating.store import BattleLedger
from tests.integration.rating.support import (
    RunningRating,
    batch,
    battle_line,
    bt_judgments,
    completed,
    judgment,
    query,
    rating_settings,
    running_rating,
)

MODELS = ("m-one", "m-two", "m-three", "m-four")
EVENT_TYPES = {
    "RatingsPublished": events_pb2.RatingsPublished,
    "RatingsFailed": events_pb2.RatingsFailed,
    "BattlesRecorded": events_pb2.BattlesRecorded,
}


def _arena() -> str:
    return f"arena-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def rating_events(url: str) -> AsyncIterator[asyncio.Queue[Message]]:
    """Every rating event published from now on, decoded."""
    client = await nats.connect(url)
    queue: asyncio.Queue[Message] = asyncio.Queue()

    async def collect(message: Any) -> None:
        await queue.put(EVENT_TYPES[message.subject.rsplit(".", 1)[-1]].FromString(message.data))

    await client.subscribe("arena.events.rating.v1.>", cb=collect)
    try:
        yield queue
    finally:
        await client.drain()


async def next_event(
    queue: asyncio.Queue[Message], wanted: Callable[[Message], bool], timeout: float = 20
) -> Any:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = await asyncio.wait_for(queue.get(), left)
        if wanted(event):
            return event
    raise AssertionError("no such event")


async def publisher(url: str) -> tuple[Any, EventPublisher]:
    client = await nats.connect(url)
    return client, EventPublisher(client.jetstream(), "judge")


async def wait_battles(service: RunningRating, arena: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        arenas = await service.stub.ListArenas(pb.ListArenasRequest())
        seen = next((a.battle_count for a in arenas.arenas if a.arena == arena), 0)
        if seen == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{seen} battles in {arena}, expected {count}")


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_failure_after_the_writes_is_redelivered_and_counts_once(
    private_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena = _arena()
    games = bt_judgments(arena, 60, MODELS, seed=5)
    expected = [line for g in games if (line := battle_line(g)) is not None]
    original = BattleLedger.add
    failed: set[str] = set()

    async def fail_once_after_writing(
        self: BattleLedger, battles: list[tuple[str, pb.Battle]]
    ) -> list[int | None]:
        result = await original(self, battles)
        if battles[0][0] not in failed:
            failed.add(battles[0][0])
            raise UnavailableError("injected: the battles are written, the ack never comes")
        return result

    monkeypatch.setattr(BattleLedger, "add", fail_once_after_writing)
    retried = {"service": "rating", "consumer": "rating-judgments", "outcome": "retried"}
    before = sample("arena_events_consumed_total", retried)
    client, events = await publisher(private_nats.url)
    try:
        async with running_rating(rating_settings(private_nats.url)) as service:
            for k in range(0, 40):
                await events.publish(completed(games[k]))
            await events.publish(batch(games[40:]))
            await wait_battles(service, arena, len(expected))
            board = await service.stub.GetLeaderboard(
                pb.GetLeaderboardRequest(query=query(arena, bootstrap_rounds=0))
            )
    finally:
        await client.drain()
    rated_events = sum(battle_line(g) is not None for g in games[:40]) + 1
    assert sample("arena_events_consumed_total", retried) - before >= rated_events
    assert board.leaderboard.battle_count == len(expected)
    weights = sum(line.get("weight", 1.0) for line in expected)
    played = sum(e.wins + e.losses + e.ties for e in board.leaderboard.entries)
    assert played == pytest.approx(2 * weights)  # both sides of every weighted battle, once


async def test_judgments_that_are_not_battles_are_skipped(private_nats: NatsServer) -> None:
    arena = _arena()
    good = judgment(arena, "b1", 1, "m-one", "m-two", judge_pb.VERDICT_A_MUCH_BETTER)
    not_battles = [
        judgment(arena, "b1", 2, "m-one", "m-two", 0),  # parse failure: no verdict
        judgment("", "b2", 1, "m-one", "m-two", judge_pb.VERDICT_TIE),  # not rated
        judgment(arena, "b3", 1, "m-one", "", judge_pb.VERDICT_A_BETTER),  # single answer
        judgment(arena, "b4", 1, "m-one", "m-one", judge_pb.VERDICT_TIE),  # self-play
    ]
    client, events = await publisher(private_nats.url)
    try:
        async with (
            rating_events(private_nats.url) as announced,
            running_rating(rating_settings(private_nats.url)) as service,
        ):
            first = completed(good)
            await events.publish(first)
            await events.publish(batch(not_battles))
            recorded = await next_event(
                announced, lambda e: isinstance(e, events_pb2.BattlesRecorded) and e.arena == arena
            )
            assert (recorded.accepted, recorded.duplicates, recorded.total_battles) == (1, 0, 1)
            assert recorded.source == pb.BATTLE_SOURCE_JUDGMENTS
            assert recorded.metadata.causation_id == first.metadata.event_id
            await events.publish(completed(good))  # the same game again, another event id
            repeat = await next_event(
                announced, lambda e: isinstance(e, events_pb2.BattlesRecorded) and e.arena == arena
            )
            assert (repeat.accepted, repeat.duplicates, repeat.total_battles) == (0, 1, 1)
            board = await service.stub.GetLeaderboard(
                pb.GetLeaderboardRequest(query=query(arena, bootstrap_rounds=0))
            )
    finally:
        await client.drain()
    assert board.leaderboard.battle_count == 1
    winner = board.leaderboard.entries[0]
    assert (winner.model, winner.wins) == ("m-one", 3.0)  # a strong verdict weighs 3


async def test_ratings_requested_waits_for_its_battles_then_publishes(
    private_nats: NatsServer,
) -> None:
    arena = _arena()
    games = bt_judgments(arena, 40, MODELS, seed=8, failures=0.0)
    settings = rating_settings(private_nats.url, request_wait_seconds=0.3)
    settings.consumer = ConsumerSettings(max_deliveries=3, retry_backoff_seconds=0.1)
    client, events = await publisher(private_nats.url)
    requests = EventPublisher(client.jetstream(), "flywheel")
    request = events_pb2.RatingsRequested(
        query=query(arena, bootstrap_rounds=20, seed=4),
        min_battles=len(games),
        context=common_pb2.WorkContext(run_id="run-7", item_id="eval"),
    )
    try:
        async with (
            rating_events(private_nats.url) as announced,
            running_rating(settings) as service,
        ):
            await requests.publish(request)
            await asyncio.sleep(0.5)  # the request is waiting: no battles yet
            await events.publish(batch(games))
            published = await next_event(
                announced, lambda e: isinstance(e, events_pb2.RatingsPublished)
            )
            assert published.trigger == pb.PUBLISH_TRIGGER_WORK_ITEM
            assert published.context == request.context
            assert published.metadata.causation_id == request.metadata.event_id
            assert published.leaderboard.battle_count == len(games)
            stored = await service.stub.GetSnapshot(
                pb.GetSnapshotRequest(snapshot_id=published.leaderboard.snapshot_id)
            )
            assert stored.leaderboard == published.leaderboard

            bad = events_pb2.RatingsRequested(query=query(""))
            unknown = events_pb2.RatingsRequested(query=query("no-such-arena"))
            starved = events_pb2.RatingsRequested(query=query(arena), min_battles=10_000)
            for item in (bad, unknown, starved):
                await requests.publish(item)
            reasons = {}
            for _ in range(3):
                failed = await next_event(
                    announced, lambda e: isinstance(e, events_pb2.RatingsFailed)
                )
                reasons[failed.metadata.causation_id] = failed.failure
    finally:
        await client.drain()
    assert reasons[bad.metadata.event_id].reason == "INVALID_ARGUMENT"
    assert "query.arena" in reasons[bad.metadata.event_id].message
    assert reasons[unknown.metadata.event_id].reason == "NOT_FOUND"
    assert reasons[starved.metadata.event_id].reason == "NOT_ENOUGH_BATTLES"
    assert reasons[starved.metadata.event_id].retryable


async def test_scheduled_snapshots_and_their_metrics(private_nats: NatsServer) -> None:
    arena = _arena()
    games = bt_judgments(arena, 50, MODELS, seed=9, failures=0.0)
    before = sample("arena_rating_battles_ingested_total", {"arena": arena})
    async with (
        rating_events(private_nats.url) as announced,
        running_rating(rating_settings(private_nats.url, publish_interval_seconds=0.3)) as service,
    ):
        battles = [
            pb.Battle(
                battle_id=g.battle_id,
                game=g.order,
                arena=arena,
                model_a=g.model_a,
                model_b=g.model_b,
                winner=pb.WINNER_MODEL_A if g.verdict < 3 else pb.WINNER_MODEL_B,
            )
            for g in games
            if g.verdict != judge_pb.VERDICT_TIE
        ]
        await service.stub.RecordBattles(pb.RecordBattlesRequest(battles=battles))
        snapshot = await next_event(
            announced,
            lambda e: (
                isinstance(e, events_pb2.RatingsPublished) and e.leaderboard.query.arena == arena
            ),
        )
    board = snapshot.leaderboard
    assert snapshot.trigger == pb.PUBLISH_TRIGGER_SCHEDULE
    assert board.bootstrap_rounds == 100  # the service's default
    assert sample("arena_rating_battles_ingested_total", {"arena": arena}) - before == len(battles)
    assert sample("arena_rating_models_rated", {"arena": arena}) == len(MODELS)
    assert sample("arena_rating_fit_seconds_count", {"method": "bootstrap"}) >= 1
    for entry in board.entries:
        labels = {"arena": arena, "model": entry.model}
        assert sample("arena_rating_model_rating_elo", labels) == entry.rating
        assert sample("arena_rating_model_rating_ci_low_elo", labels) == entry.ci_low
        assert sample("arena_rating_model_rating_ci_high_elo", labels) == entry.ci_high


async def test_two_replicas_share_the_battles(private_nats: NatsServer) -> None:
    arena = _arena()
    games = bt_judgments(arena, 80, MODELS, seed=10)
    expected = sum(1 for g in games if battle_line(g) is not None)
    first = rating_settings(private_nats.url)
    second = first.model_copy(
        update={
            "grpc": GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
            "metrics": MetricsSettings(host="127.0.0.1", port=free_port()),
        }
    )
    client, events = await publisher(private_nats.url)
    try:
        async with running_rating(first) as one, running_rating(second) as two:
            for k in range(0, len(games), 8):
                await events.publish(batch(games[k : k + 8]))
            await wait_battles(one, arena, expected)
            await wait_battles(two, arena, expected)
            extra = pb.Battle(
                battle_id="rpc-1", arena=arena, model_a="m-one", model_b="m-four", winner=1
            )
            await one.stub.RecordBattles(pb.RecordBattlesRequest(battles=[extra]))
            again = await two.stub.RecordBattles(pb.RecordBattlesRequest(battles=[extra]))
            assert again.duplicates == 1
            seeded = pb.GetLeaderboardRequest(query=query(arena, bootstrap_rounds=30, seed=2))
            board_one = (await one.stub.GetLeaderboard(seeded)).leaderboard
            board_two = (await two.stub.GetLeaderboard(seeded)).leaderboard
    finally:
        await client.drain()
    assert board_one.battle_count == board_two.battle_count == expected + 1
    assert list(board_one.entries) == list(board_two.entries)


async def test_a_stalled_tail_is_restarted(
    private_nats: NatsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    arena = _arena()
    started: list[Aggregates] = []
    original = Aggregates.start

    async def remember(self: Aggregates) -> None:
        started.append(self)
        await original(self)

    monkeypatch.setattr(Aggregates, "start", remember)
    settings = rating_settings(private_nats.url, checkpoint_interval_seconds=0.1)
    async with running_rating(settings) as service:
        await started[0]._subscription.unsubscribe()  # type: ignore[union-attr]
        battle = pb.Battle(battle_id="b", arena=arena, model_a="x", model_b="y", winner=1)
        # The write waits for the fold, which resumes once the watchdog resubscribes.
        response = await service.stub.RecordBattles(pb.RecordBattlesRequest(battles=[battle]))
        assert response.accepted == 1
        await wait_battles(service, arena, 1)
    assert "battle tail stalled" in caplog.text
