"""Every RatingService RPC against the real service (gRPC, NATS, KV), and its bad inputs.

One service for the module; each test rates its own arena.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import numpy as np
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration

from arena.common.v1 import common_pb2
from arena.rating.v1 import events_pb2
from arena.rating.v1 import rating_service_pb2 as pb
from arena_cli.nats_server import NatsServer
from arena_core.bus.topology import ensure_object_store
from arena_core.settings import NatsSettings
from arena_rating.domain import (
    ScoredModel,
    battles_from_records,
    compare_leaderboards,
    online_elo,
    parse_alpaca_annotations,
    parse_mt_bench_jsonl,
    score_alpaca_eval,
    score_mt_bench,
)
from tests.integration.rating.support import (
    RunningRating,
    arena_rate,
    assert_same_leaderboard,
    query,
    rating_settings,
    running_rating,
    write_battles,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODELS = ("alpha", "beta", "gamma", "delta")
WINNER = {"model_a": pb.WINNER_MODEL_A, "model_b": pb.WINNER_MODEL_B, "tie": pb.WINNER_TIE}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(private_nats: NatsServer) -> AsyncIterator[RunningRating]:
    async with running_rating(rating_settings(private_nats.url)) as running:
        yield running


def _arena() -> str:
    return f"arena-{uuid.uuid4().hex[:8]}"


def synthetic(arena: str, n: int, seed: int, *, style: bool = False) -> list[pb.Battle]:
    """Battles from a Bradley-Terry model over MODELS, some weighted, two categories."""
    rng = np.random.default_rng(seed)
    strength = np.array([0.8, 0.3, 0.0, -0.6])
    out = []
    for index in range(n):
        i, j = rng.choice(len(MODELS), 2, replace=False)
        u = rng.random()
        p = 1.0 / (1.0 + np.exp(strength[j] - strength[i]))
        winner = "tie" if u < 0.1 else ("model_a" if rng.random() < p else "model_b")
        battle = pb.Battle(
            battle_id=f"{arena}-{index}",
            arena=arena,
            model_a=MODELS[i],
            model_b=MODELS[j],
            winner=WINNER[winner],  # type: ignore[arg-type]
            category="coding" if index % 3 == 0 else "writing",
            game=1,
        )
        if rng.random() < 0.2:
            battle.weight = 3.0
        if style:
            battle.style_a.CopyFrom(
                common_pb2.StyleFeatures(
                    tokens=int(rng.integers(50, 500)), header_count=int(rng.integers(0, 4))
                )
            )
            battle.style_b.CopyFrom(
                common_pb2.StyleFeatures(
                    tokens=int(rng.integers(50, 500)), list_count=int(rng.integers(0, 6))
                )
            )
        out.append(battle)
    return out


def lines_of(battles: list[pb.Battle]) -> list[dict[str, Any]]:
    out = []
    for b in battles:
        line: dict[str, Any] = {
            "model_a": b.model_a,
            "model_b": b.model_b,
            "winner": {v: k for k, v in WINNER.items()}[b.winner],
            "weight": b.weight if b.HasField("weight") else 1.0,
            "category": b.category,
        }
        if b.HasField("style_a"):
            line["conv_metadata"] = {
                "sum_assistant_a_tokens": b.style_a.tokens,
                "header_count_a": b.style_a.header_count,
                "list_count_a": b.style_a.list_count,
                "bold_count_a": b.style_a.bold_count,
                "sum_assistant_b_tokens": b.style_b.tokens,
                "header_count_b": b.style_b.header_count,
                "list_count_b": b.style_b.list_count,
                "bold_count_b": b.style_b.bold_count,
            }
        out.append(line)
    return out


async def record(service: RunningRating, battles: list[pb.Battle]) -> pb.RecordBattlesResponse:
    response: pb.RecordBattlesResponse = await service.stub.RecordBattles(
        pb.RecordBattlesRequest(battles=battles)
    )
    return response


async def leaderboard(service: RunningRating, **fields: Any) -> pb.Leaderboard:
    response = await service.stub.GetLeaderboard(pb.GetLeaderboardRequest(query=query(**fields)))
    board: pb.Leaderboard = response.leaderboard
    return board


async def assert_status(call: Any, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for word in words:
        assert word in details, details
    return details


# --- RecordBattles ------------------------------------------------------------------------


async def test_record_battles_counts_each_battle_once(service: RunningRating) -> None:
    arena = _arena()
    battles = synthetic(arena, 40, seed=1)
    first = await record(service, battles)
    assert (first.accepted, first.duplicates) == (40, 0)
    again = await record(service, battles[:15])
    assert (again.accepted, again.duplicates) == (0, 15)
    # The same battle id in the other position order is another game, so another battle.
    swapped = [pb.Battle(**{**_fields(battles[0]), "game": 2})]
    assert (await record(service, swapped)).accepted == 1
    # Without a battle or judgment id a battle is never deduplicated.
    anonymous = pb.Battle(**{**_fields(battles[1]), "battle_id": ""})
    assert (await record(service, [anonymous, anonymous])).accepted == 2
    board = await leaderboard(service, arena=arena, bootstrap_rounds=0)
    assert board.battle_count == 43


def _fields(battle: pb.Battle) -> dict[str, Any]:
    return {f.name: v for f, v in battle.ListFields()}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"arena": ""}, ("battles[1].arena", "required")),
        ({"model_b": "alpha", "model_a": "alpha"}, ("battles[1]", "same model 'alpha'")),
        ({"winner": pb.WINNER_UNSPECIFIED}, ("battles[1].winner",)),
        ({"weight": -1.0}, ("battles[1].weight", "positive")),
        ({"game": 7}, ("battles[1].game",)),
    ],
)
async def test_record_battles_rejects_bad_battles_and_records_nothing(
    service: RunningRating, change: dict[str, Any], words: tuple[str, ...]
) -> None:
    arena = _arena()
    good = synthetic(arena, 3, seed=2)
    bad = pb.Battle(**{**_fields(good[1]), **change})
    await assert_status(
        record(service, [good[0], bad, good[2]]), grpc.StatusCode.INVALID_ARGUMENT, *words
    )
    arenas = await service.stub.ListArenas(pb.ListArenasRequest(page=common_pb2.PageRequest()))
    assert arena not in [a.arena for a in arenas.arenas]  # nothing of the call was kept


async def test_record_battles_needs_battles(service: RunningRating) -> None:
    await assert_status(record(service, []), grpc.StatusCode.INVALID_ARGUMENT, "battles")


# --- GetLeaderboard -----------------------------------------------------------------------


async def test_leaderboard_options_match_the_cli(service: RunningRating, tmp_path: Path) -> None:
    arena = _arena()
    battles = synthetic(arena, 900, seed=3, style=True)
    await record(service, battles)
    path = write_battles(tmp_path / "battles.jsonl", lines_of(battles))

    by_category = await leaderboard(
        service, arena=arena, category="coding", bootstrap_rounds=30, seed=5
    )
    expected = arena_rate(path, "--category", "coding", "--bootstrap", "30", "--seed", "5")
    assert_same_leaderboard(by_category, expected)
    assert by_category.query.category == "coding"

    # Style control fits per battle row, read back in the order the battles were recorded.
    styled = await leaderboard(service, arena=arena, style_control=True, bootstrap_rounds=8, seed=2)
    expected = arena_rate(path, "--style-control", "--bootstrap", "8", "--seed", "2")
    assert_same_leaderboard(styled, expected)
    assert dict(styled.style_coefficients) == expected["style_coefficients"]

    board = await leaderboard(service, arena=arena, bootstrap_rounds=20, seed=9)
    assert [e.rank for e in board.entries] == sorted(e.rank for e in board.entries)
    top = board.entries[0]
    assert top.wins + top.losses + top.ties > 0
    assert board.query.bootstrap_rounds == 20
    assert board.query.seed == 9
    assert board.computed_at.seconds > 0

    only = await leaderboard(service, arena=arena, models=["alpha", "gamma"], bootstrap_rounds=0)
    assert sorted(e.model for e in only.entries) == ["alpha", "gamma"]


async def test_online_elo_follows_recorded_order(service: RunningRating) -> None:
    arena = _arena()
    battles = synthetic(arena, 200, seed=4)
    await record(service, battles)
    board = await leaderboard(
        service, arena=arena, method=pb.RATING_METHOD_ONLINE_ELO, k_factor=16.0, baseline="beta"
    )
    expected = online_elo(battles_from_records(lines_of(battles)), k=16.0)
    assert {e.model: e.rating for e in board.entries} == expected
    assert not any(e.HasField("ci_low") for e in board.entries)
    beta = next(e for e in board.entries if e.model == "beta")
    assert beta.win_rate == pytest.approx(50.0)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"arena": ""}, grpc.StatusCode.INVALID_ARGUMENT, ("query.arena", "required")),
        ({"arena": "no-such-arena"}, grpc.StatusCode.NOT_FOUND, ("no-such-arena",)),
        ({"category": "poetry"}, grpc.StatusCode.INVALID_ARGUMENT, ("query.category", "poetry")),
        ({"models": ["alpha", "omega"]}, grpc.StatusCode.INVALID_ARGUMENT, ("query.models[1]",)),
        (
            {"anchors": [pb.Anchor(model="omega", rating=1100)]},
            grpc.StatusCode.INVALID_ARGUMENT,
            ("anchor", "omega"),
        ),
        (
            {"anchors": [pb.Anchor(model="alpha", rating=float("nan"))]},
            grpc.StatusCode.INVALID_ARGUMENT,
            ("query.anchors[0].rating",),
        ),
        ({"baseline": "omega"}, grpc.StatusCode.INVALID_ARGUMENT, ("baseline", "omega")),
        (
            {"bootstrap_rounds": 10_000_000},
            grpc.StatusCode.INVALID_ARGUMENT,
            ("query.bootstrap_rounds",),
        ),
        ({"k_factor": 4.0}, grpc.StatusCode.INVALID_ARGUMENT, ("query.k_factor",)),
        (
            {"style_control": True, "ci_method": pb.CI_METHOD_ANALYTIC},
            grpc.StatusCode.INVALID_ARGUMENT,
            ("query.ci_method",),
        ),
        ({"style_control": True}, grpc.StatusCode.INVALID_ARGUMENT, ("query.style_control",)),
        (
            {"method": pb.RATING_METHOD_ONLINE_ELO, "ci_method": pb.CI_METHOD_BOOTSTRAP},
            grpc.StatusCode.INVALID_ARGUMENT,
            ("query.ci_method",),
        ),
    ],
)
async def test_leaderboard_bad_queries(
    service: RunningRating,
    fields: dict[str, Any],
    code: grpc.StatusCode,
    words: tuple[str, ...],
) -> None:
    arena = _arena()
    await record(service, synthetic(arena, 30, seed=6))  # no style features
    await assert_status(leaderboard(service, **{"arena": arena, **fields}), code, *words)


# --- PublishRatings, GetSnapshot, StreamLeaderboard ---------------------------------------


async def test_publish_stores_a_snapshot_and_announces_it(
    service: RunningRating, private_nats: NatsServer
) -> None:
    arena = _arena()
    await record(service, synthetic(arena, 60, seed=7))
    client = await nats.connect(private_nats.url)
    announced: asyncio.Queue[events_pb2.RatingsPublished] = asyncio.Queue()

    async def collect(message: Any) -> None:
        await announced.put(events_pb2.RatingsPublished.FromString(message.data))

    await client.subscribe("arena.events.rating.v1.RatingsPublished", cb=collect)
    try:
        published = await service.stub.PublishRatings(
            pb.PublishRatingsRequest(query=query(arena, bootstrap_rounds=10, seed=1))
        )
        board = published.leaderboard
        assert board.snapshot_id
        event = await asyncio.wait_for(announced.get(), 10)
        assert event.trigger == pb.PUBLISH_TRIGGER_RPC
        assert event.leaderboard == board
        stored = await service.stub.GetSnapshot(
            pb.GetSnapshotRequest(snapshot_id=board.snapshot_id)
        )
        assert stored.leaderboard == board
    finally:
        await client.drain()
    await assert_status(
        service.stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_id="0" * 32)),
        grpc.StatusCode.NOT_FOUND,
        "0" * 32,
    )
    await assert_status(
        service.stub.GetSnapshot(pb.GetSnapshotRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "snapshot_id",
    )
    await assert_status(
        service.stub.PublishRatings(pb.PublishRatingsRequest(query=query("nowhere"))),
        grpc.StatusCode.NOT_FOUND,
        "nowhere",
    )


async def test_stream_sends_a_new_leaderboard_when_battles_arrive(service: RunningRating) -> None:
    arena = _arena()
    battles = synthetic(arena, 80, seed=8)
    await record(service, battles[:40])
    request = pb.StreamLeaderboardRequest(
        query=query(arena, bootstrap_rounds=0), min_interval=Duration(nanos=50_000_000)
    )
    call = service.stub.StreamLeaderboard(request)
    try:
        first = await asyncio.wait_for(call.read(), 10)
        assert first.leaderboard.battle_count == 40
        await record(service, battles[40:])
        second = await asyncio.wait_for(call.read(), 10)
        assert second.leaderboard.battle_count == 80
    finally:
        call.cancel()
    bad = service.stub.StreamLeaderboard(
        pb.StreamLeaderboardRequest(query=query(arena), min_interval=Duration(seconds=-1))
    )
    await assert_status(bad.read(), grpc.StatusCode.INVALID_ARGUMENT, "min_interval")
    missing = service.stub.StreamLeaderboard(pb.StreamLeaderboardRequest(query=query("nowhere")))
    await assert_status(missing.read(), grpc.StatusCode.NOT_FOUND, "nowhere")


# --- CompareLeaderboards ------------------------------------------------------------------


async def test_compare_leaderboards_from_snapshot_query_and_inline(
    service: RunningRating,
) -> None:
    arena = _arena()
    await record(service, synthetic(arena, 600, seed=9))
    reference = (
        await service.stub.PublishRatings(
            pb.PublishRatingsRequest(query=query(arena, bootstrap_rounds=40, seed=3))
        )
    ).leaderboard
    candidate_query = query(arena, category="coding", bootstrap_rounds=40, seed=4)
    candidate = await leaderboard(service, **_query_fields(candidate_query))
    response = await service.stub.CompareLeaderboards(
        pb.CompareLeaderboardsRequest(
            reference=pb.LeaderboardSource(snapshot_id=reference.snapshot_id),
            candidate=pb.LeaderboardSource(query=candidate_query),
        )
    )
    expected = compare_leaderboards(_scored(candidate), _scored(reference))
    got = response.metrics
    assert got.common_models == expected.common_models == 4
    for name in ("spearman", "kendall", "agreement", "separability", "brier", "average"):
        want = getattr(expected, name)
        assert getattr(got, name) == pytest.approx(want, nan_ok=True), name
    inline = await service.stub.CompareLeaderboards(
        pb.CompareLeaderboardsRequest(
            reference=pb.LeaderboardSource(leaderboard=reference),
            candidate=pb.LeaderboardSource(leaderboard=reference),
        )
    )
    assert inline.metrics.spearman == pytest.approx(1.0)

    await assert_status(
        service.stub.CompareLeaderboards(
            pb.CompareLeaderboardsRequest(reference=pb.LeaderboardSource(leaderboard=reference))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidate",
    )
    await assert_status(
        service.stub.CompareLeaderboards(
            pb.CompareLeaderboardsRequest(
                reference=pb.LeaderboardSource(snapshot_id="f" * 32),
                candidate=pb.LeaderboardSource(leaderboard=reference),
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "reference.snapshot_id",
    )
    lonely = pb.Leaderboard(entries=[common_pb2.LeaderboardEntry(model="alpha", rating=1000)])
    await assert_status(
        service.stub.CompareLeaderboards(
            pb.CompareLeaderboardsRequest(
                reference=pb.LeaderboardSource(leaderboard=reference),
                candidate=pb.LeaderboardSource(leaderboard=lonely),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "share 1 model",
    )


def _query_fields(q: pb.LeaderboardQuery) -> dict[str, Any]:
    return {f.name: v for f, v in q.ListFields()}


def _scored(board: pb.Leaderboard) -> list[ScoredModel]:
    return [ScoredModel(e.model, e.rating, e.ci_low, e.ci_high) for e in board.entries]


# --- ListArenas ---------------------------------------------------------------------------


async def test_list_arenas_pages_through_every_arena(service: RunningRating) -> None:
    mine = sorted(f"zz-list-{k}-{uuid.uuid4().hex[:4]}" for k in range(3))
    for index, arena in enumerate(mine):
        await record(service, synthetic(arena, 10 + index, seed=index))
    seen: list[pb.ArenaSummary] = []
    token = ""
    while True:
        page = await service.stub.ListArenas(
            pb.ListArenasRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
        )
        seen += page.arenas
        token = page.page.next_page_token
        if not token:
            break
    names = [a.arena for a in seen]
    assert names == sorted(names)
    assert len(names) == len(set(names))
    summaries = {a.arena: a for a in seen if a.arena in mine}
    assert [summaries[a].battle_count for a in mine] == [10, 11, 12]
    assert summaries[mine[0]].categories == ["coding", "writing"]
    assert set(summaries[mine[0]].models) <= set(MODELS)
    assert summaries[mine[0]].updated_at.seconds > 0
    await assert_status(
        service.stub.ListArenas(pb.ListArenasRequest(page=common_pb2.PageRequest(page_size=5000))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page.page_size",
    )
    await assert_status(
        service.stub.ListArenas(
            pb.ListArenasRequest(page=common_pb2.PageRequest(page_token="%%%"))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page.page_token",
    )


# --- ComputeBenchmarkScores ---------------------------------------------------------------


def _mt_bench_lines(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rows = []
    for model in ("model-x", "model-y"):
        for question in range(81, 101):
            for turn in (1, 2):
                score = -1 if rng.random() < 0.05 else int(rng.integers(1, 11))
                rows.append({"model": model, "question_id": question, "turn": turn, "score": score})
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _alpaca(model: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rows = [
        {
            "instruction": f"instruction {k}",
            "generator_1": "gpt4_turbo",
            "generator_2": model,
            "output_1": "x" * int(rng.integers(100, 900)),
            "output_2": "y" * int(rng.integers(100, 900)),
            "preference": float(rng.uniform(1, 2)),
        }
        for k in range(60)
    ]
    return json.dumps(rows).encode()


def _ref(path: Path, data: bytes | None = None) -> common_pb2.ArtifactRef:
    sha = hashlib.sha256(data if data is not None else path.read_bytes()).hexdigest()
    return common_pb2.ArtifactRef(uri=f"file://{path}", sha256=sha)


async def test_benchmark_scores_from_files_and_the_object_store(
    service: RunningRating, private_nats: NatsServer, tmp_path: Path
) -> None:
    mt = tmp_path / "gpt-4_single.jsonl"
    mt.write_bytes(_mt_bench_lines(1))
    response = await service.stub.ComputeBenchmarkScores(
        pb.ComputeBenchmarkScoresRequest(
            benchmark=pb.BENCHMARK_MT_BENCH, inputs=[_ref(mt)], bootstrap_rounds=200, seed=3
        )
    )
    expected = score_mt_bench(parse_mt_bench_jsonl(mt.read_bytes()), bootstrap_rounds=200, seed=3)
    assert [(s.model, s.score, s.ci_low, s.ci_high, s.n) for s in response.scores] == [
        (e.model, e.score, e.ci_low, e.ci_high, e.n) for e in expected
    ]

    first, second = _alpaca("model-x", 1), _alpaca("model-y", 2)
    (tmp_path / "x.json").write_bytes(first)
    client = await nats.connect(private_nats.url)
    try:
        store = await ensure_object_store(
            client.jetstream(), "rating-test-files", NatsSettings(url=private_nats.url)
        )
        await store.put("annotations/y.json", second)
    finally:
        await client.drain()
    response = await service.stub.ComputeBenchmarkScores(
        pb.ComputeBenchmarkScoresRequest(
            benchmark=pb.BENCHMARK_ALPACA_EVAL,
            inputs=[
                _ref(tmp_path / "x.json"),
                common_pb2.ArtifactRef(uri="nats-obj://rating-test-files/annotations/y.json"),
            ],
            length_controlled=True,
        )
    )
    sets = parse_alpaca_annotations([("x", first), ("y", second)])
    expected_alpaca = score_alpaca_eval(sets, length_controlled=True)
    assert [(s.model, s.win_rate, s.standard_error, s.n) for s in response.scores] == [
        (e.model, e.win_rate, e.standard_error, e.n) for e in expected_alpaca
    ]
    assert [s.length_controlled_win_rate for s in response.scores] == pytest.approx(
        [e.length_controlled_win_rate for e in expected_alpaca]
    )


async def test_benchmark_scores_bad_inputs(service: RunningRating, tmp_path: Path) -> None:
    good = tmp_path / "ok.jsonl"
    good.write_bytes(_mt_bench_lines(2))
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(_mt_bench_lines(3) + b'{"model": "m", "question_id": 1, "score": 42}\n')

    def call(benchmark: int, *refs: common_pb2.ArtifactRef) -> Any:
        return service.stub.ComputeBenchmarkScores(
            pb.ComputeBenchmarkScoresRequest(benchmark=benchmark, inputs=list(refs))  # type: ignore[arg-type]
        )

    mt = pb.BENCHMARK_MT_BENCH
    await assert_status(call(0, _ref(good)), grpc.StatusCode.INVALID_ARGUMENT, "benchmark")
    await assert_status(call(mt), grpc.StatusCode.INVALID_ARGUMENT, "inputs")
    await assert_status(
        call(mt, common_pb2.ArtifactRef(uri=f"file://{tmp_path}/missing.jsonl")),
        grpc.StatusCode.NOT_FOUND,
        "inputs[0].uri",
    )
    await assert_status(
        call(mt, common_pb2.ArtifactRef(uri="s3://bucket/file.jsonl")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[0].uri",
    )
    await assert_status(
        call(mt, _ref(good), _ref(good, b"other bytes")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs[1].sha256",
    )
    lines = len(broken.read_bytes().splitlines())
    await assert_status(
        call(mt, _ref(broken)), grpc.StatusCode.INVALID_ARGUMENT, f"broken.jsonl:{lines}"
    )
    await assert_status(
        call(mt, common_pb2.ArtifactRef(uri="nats-obj://no-such-bucket/x.json")),
        grpc.StatusCode.NOT_FOUND,
        "nats-obj://no-such-bucket/x.json",
    )
