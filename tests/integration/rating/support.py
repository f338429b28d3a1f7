"""Running the rating service in-process or as its own process, judged games as events, and
`arena rate` on the same battles.

Each test module gets its own nats-server: the service's durable consumers read the whole judge
event stream, so sharing the session server with the judge tests would mix their battles in.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import orjson
from click.testing import CliRunner
from grpc import aio

from arena.common.v1 import common_pb2
from arena.judge.v1 import events_pb2 as judge_events
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import rating_service_pb2 as pb
from arena.rating.v1 import rating_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import free_port
from arena_cli.rating_commands import register
from arena_core.rpc.health import check_health
from arena_core.service_host import ServiceHost
from arena_core.settings import ConsumerSettings, GrpcSettings, MetricsSettings, NatsSettings
from arena_rating.app import wiring
from arena_rating.settings import RatingOptions, RatingSettings
from tests.support.hosts import hosted_service

REPO_ROOT = Path(__file__).resolve().parents[3]


def rating_settings(nats_url: str, **options: Any) -> RatingSettings:
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "battles_bucket": f"rating-battles-{suffix}",
        "aggregates_bucket": f"rating-aggregates-{suffix}",
        "snapshots_bucket": f"rating-snapshots-{suffix}",
        "publish_interval_seconds": 0.0,
        "checkpoint_interval_seconds": 0.5,
        "replay_judgments_on_loss": False,
        **options,
    }
    return RatingSettings(
        nats=NatsSettings(url=nats_url),
        grpc=GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
        consumer=ConsumerSettings(max_deliveries=4, retry_backoff_seconds=0.1, ack_wait_seconds=5),
        rating=RatingOptions(**values),
    )


@dataclass
class RunningRating:
    host: ServiceHost
    settings: RatingSettings
    channel: aio.Channel

    @property
    def stub(self) -> pb_grpc.RatingServiceStub:
        return pb_grpc.RatingServiceStub(self.channel)


@asynccontextmanager
async def running_rating(settings: RatingSettings) -> AsyncIterator[RunningRating]:
    """The rating service's real host (gRPC, NATS topology, consumers) in this event loop."""
    async with hosted_service("rating", settings, wiring) as (host, channel):
        yield RunningRating(host, settings, channel)


# --- the service as its own process -------------------------------------------------------


def service_env(settings: RatingSettings) -> dict[str, str]:
    options = settings.rating
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ARENA_NATS__URL": settings.nats.url,
        "ARENA_GRPC__HOST": "127.0.0.1",
        "ARENA_GRPC__PORT": str(settings.grpc.port),
        "ARENA_METRICS__HOST": "127.0.0.1",
        "ARENA_METRICS__PORT": str(settings.metrics.port),
        "ARENA_LOG__LEVEL": "INFO",
        "ARENA_CONSUMER__ACK_WAIT_SECONDS": str(settings.consumer.ack_wait_seconds),
        "ARENA_CONSUMER__RETRY_BACKOFF_SECONDS": "0.1",
        "ARENA_CONSUMER__FETCH_BATCH": "4",
        "ARENA_RATING__BATTLES_BUCKET": options.battles_bucket,
        "ARENA_RATING__AGGREGATES_BUCKET": options.aggregates_bucket,
        "ARENA_RATING__SNAPSHOTS_BUCKET": options.snapshots_bucket,
        "ARENA_RATING__PUBLISH_INTERVAL_SECONDS": str(options.publish_interval_seconds),
        "ARENA_RATING__CHECKPOINT_INTERVAL_SECONDS": str(options.checkpoint_interval_seconds),
        "ARENA_RATING__REPLAY_JUDGMENTS_ON_LOSS": str(options.replay_judgments_on_loss).lower(),
    }


def start_process(settings: RatingSettings, log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "arena_rating"],
            env=service_env(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )


async def wait_serving(address: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        if await check_health(address, timeout=1) == "SERVING":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{address} not SERVING after {timeout}s")


# --- judged games -------------------------------------------------------------------------

VERDICTS = (
    judge_pb.VERDICT_A_MUCH_BETTER,
    judge_pb.VERDICT_A_BETTER,
    judge_pb.VERDICT_TIE,
    judge_pb.VERDICT_B_BETTER,
    judge_pb.VERDICT_B_MUCH_BETTER,
)
STRONG = {judge_pb.VERDICT_A_MUCH_BETTER, judge_pb.VERDICT_B_MUCH_BETTER}
WINNER_OF_VERDICT = {
    judge_pb.VERDICT_A_MUCH_BETTER: "model_a",
    judge_pb.VERDICT_A_BETTER: "model_a",
    judge_pb.VERDICT_TIE: "tie",
    judge_pb.VERDICT_B_BETTER: "model_b",
    judge_pb.VERDICT_B_MUCH_BETTER: "model_b",
}


def judgment(
    arena: str,
    battle_id: str,
    game: int,
    model_a: str,
    model_b: str,
    verdict: int,
    *,
    category: str = "",
    style: tuple[int, int] | None = None,
) -> judge_pb.Judgment:
    """One judged game; ``verdict`` 0 is a parse failure (no verdict)."""
    made = judge_pb.Judgment(
        judgment_id=uuid.uuid4().hex,
        battle_id=battle_id,
        prompt_id=f"q-{battle_id}",
        arena=arena,
        category=category,
        order=game,  # type: ignore[arg-type]
        model_a=model_a,
        model_b=model_b,
        verdict=verdict,  # type: ignore[arg-type]
        parse_status=judge_pb.PARSE_STATUS_OK if verdict else judge_pb.PARSE_STATUS_FAILED,
    )
    if style is not None:
        made.style_a.CopyFrom(common_pb2.StyleFeatures(tokens=style[0], header_count=style[0] % 3))
        made.style_b.CopyFrom(common_pb2.StyleFeatures(tokens=style[1], list_count=style[1] % 4))
    return made


def battle_line(made: judge_pb.Judgment) -> dict[str, Any] | None:
    """The battles-file line `arena rate` reads for a judgment (None when it is no battle)."""
    if not made.verdict or not made.arena:
        return None
    line: dict[str, Any] = {
        "model_a": made.model_a,
        "model_b": made.model_b,
        "winner": WINNER_OF_VERDICT[made.verdict],
    }
    if made.verdict in STRONG:
        line["weight"] = 3.0
    if made.category:
        line["category"] = made.category
    return line


def bt_judgments(
    arena: str, n_battles: int, models: Sequence[str], seed: int, failures: float = 0.05
) -> list[judge_pb.Judgment]:
    """Both games of ``n_battles`` pairs drawn from a Bradley-Terry model; some unparsable."""
    rng = np.random.default_rng(seed)
    strength = rng.normal(0.0, 1.0, len(models))
    out = []
    for index in range(n_battles):
        i, j = rng.choice(len(models), 2, replace=False)
        p = 1.0 / (1.0 + np.exp(strength[j] - strength[i]))
        for game in (1, 2):
            u = rng.random()
            if u < failures:
                verdict = 0
            elif u < 0.15:
                verdict = judge_pb.VERDICT_TIE
            else:
                a_wins = rng.random() < p
                strong = rng.random() < 0.3
                verdict = (
                    (judge_pb.VERDICT_A_MUCH_BETTER if strong else judge_pb.VERDICT_A_BETTER)
                    if a_wins
                    else (judge_pb.VERDICT_B_MUCH_BETTER if strong else judge_pb.VERDICT_B_BETTER)
                )
            out.append(
                judgment(arena, f"{arena}-b{index}", game, models[i], models[j], int(verdict))
            )
    return out


def completed(made: judge_pb.Judgment) -> judge_events.JudgmentCompleted:
    event = judge_events.JudgmentCompleted(judgment=made)
    event.metadata.event_id = uuid.uuid4().hex
    return event


def batch(made: Sequence[judge_pb.Judgment]) -> judge_events.JudgmentBatchCompleted:
    event = judge_events.JudgmentBatchCompleted(judgments=list(made))
    event.metadata.event_id = uuid.uuid4().hex
    return event


# --- `arena rate` on the same battles -----------------------------------------------------


def write_battles(path: Path, lines: Sequence[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def arena_rate(path: Path, *args: str) -> dict[str, Any]:
    """`arena rate PATH --format json ARGS...` through the real click command."""

    @click.group()
    def cli() -> None:
        """Throwaway root."""

    register(cli)
    result = CliRunner().invoke(
        cli, ["rate", str(path), "--format", "json", *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def assert_same_leaderboard(board: pb.Leaderboard, expected: dict[str, Any]) -> None:
    """Exactly the CLI's numbers: same models, order, ratings, MLEs, intervals, ranks, counts."""
    got = [
        {
            "model": e.model,
            "rating": e.rating,
            "mle": e.mle,
            "ci_low": e.ci_low if e.HasField("ci_low") else None,
            "ci_high": e.ci_high if e.HasField("ci_high") else None,
            "rank": e.rank,
            "battles": e.battles,
        }
        for e in board.entries
    ]
    want = [{k: row[k] for k in got[0]} for row in expected["models"]] if got else []
    assert got == want
    assert board.bootstrap_rounds == expected["bootstrap"]


def query(arena: str, **fields: Any) -> pb.LeaderboardQuery:
    return pb.LeaderboardQuery(arena=arena, **fields)
