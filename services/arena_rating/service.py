"""The rating service's use cases: record battles, fit, publish and compare leaderboards.

Transport-free apart from the stores it is given: the gRPC servicer and the event handlers
translate to and from these methods. Fits run in worker threads (the bootstrap uses its own
threads too), at most ``max_concurrent_fits`` at once, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.duration_pb2 import Duration
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as NatsNotFoundError

from arena.common.v1 import common_pb2
from arena.rating.v1 import events_pb2
from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_core.hashing import content_hash
from arena_rating import metrics
from arena_rating.aggregator import Aggregates, ArenaState
from arena_rating.convert import (
    ResolvedQuery,
    battle_key,
    battle_record,
    check_battles,
    copy_of,
    leaderboard_proto,
    resolve_query,
)
from arena_rating.domain import (
    DEFAULT_K,
    Battles,
    Leaderboard,
    ModelRating,
    RatingInputError,
    ScoredModel,
    baseline_win_rate,
    battles_from_counts,
    battles_from_records,
    compare_leaderboards,
    online_elo,
    parse_alpaca_annotations,
    parse_mt_bench_jsonl,
    rank_by_intervals,
    rate_battles,
    score_alpaca_eval,
    score_mt_bench,
)
from arena_rating.settings import RatingOptions
from arena_rating.store import BattleLedger, SnapshotStore

log = logging.getLogger(__name__)

DEFAULT_PAGE = 100
MAX_PAGE = 1000
_CACHE_SIZE = 32
_MT_BENCH_ROUNDS = 1000  # the CLI's default
_TRIGGER_LABEL = {
    pb.PUBLISH_TRIGGER_SCHEDULE: "schedule",
    pb.PUBLISH_TRIGGER_RPC: "rpc",
    pb.PUBLISH_TRIGGER_WORK_ITEM: "work_item",
}


@dataclass(frozen=True)
class Recorded:
    """What one ingestion changed in one arena."""

    arena: str
    accepted: int
    duplicates: int
    total: int


class RatingApplication:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: EventPublisher,
        ledger: BattleLedger,
        aggregates: Aggregates,
        snapshots: SnapshotStore,
        options: RatingOptions,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._ledger = ledger
        self.aggregates = aggregates
        self._snapshots = snapshots
        self.options = options
        self._fits = asyncio.Semaphore(options.max_concurrent_fits)
        self._cache: OrderedDict[tuple[str, int, bytes], pb.Leaderboard] = OrderedDict()

    # --- recording --------------------------------------------------------------------------

    async def record(
        self,
        battles: Sequence[tuple[str, pb.Battle]],
        source: pb.BattleSource.ValueType,
        *,
        event_id_base: str | None = None,
        caused_by: Any = None,
    ) -> list[Recorded]:
        """Write each (key, battle) once; announce what changed per arena (BattlesRecorded)."""
        revisions = await self._ledger.add(battles)
        per_arena: dict[str, list[int]] = {}
        for (_, battle), revision in zip(battles, revisions, strict=True):
            counts = per_arena.setdefault(battle.arena, [0, 0])
            counts[0 if revision is not None else 1] += 1
        newest = max((r for r in revisions if r is not None), default=0)
        await self.aggregates.wait_for(newest)
        results = []
        for arena, (accepted, duplicates) in sorted(per_arena.items()):
            metrics.BATTLES_INGESTED.labels(arena).inc(accepted)
            if duplicates:
                metrics.BATTLES_DUPLICATE.labels(arena).inc(duplicates)
            state = self.aggregates.arenas.get(arena)
            total = state.battle_count if state is not None else 0
            results.append(Recorded(arena, accepted, duplicates, total))
            event = events_pb2.BattlesRecorded(
                arena=arena,
                source=source,
                accepted=accepted,
                duplicates=duplicates,
                total_battles=total,
            )
            event_id = (
                stable_event_id("arena.rating.v1", "BattlesRecorded", event_id_base, arena)
                if event_id_base
                else None
            )
            await self._publisher.publish(event, event_id=event_id, caused_by=caused_by)
        return results

    async def record_battles(self, request: pb.RecordBattlesRequest) -> pb.RecordBattlesResponse:
        if not request.battles:
            raise InvalidArgumentError("at least one battle is required", where="battles")
        if len(request.battles) > self.options.max_battles_per_call:
            raise InvalidArgumentError(
                f"at most {self.options.max_battles_per_call} battles per call, got "
                f"{len(request.battles)}",
                where="battles",
            )
        check_battles(request.battles)  # all or nothing: a bad battle changes nothing
        keyed = [(battle_key(b, uuid.uuid4().hex), b) for b in request.battles]
        results = await self.record(keyed, pb.BATTLE_SOURCE_RPC)
        return pb.RecordBattlesResponse(
            accepted=sum(r.accepted for r in results),
            duplicates=sum(r.duplicates for r in results),
        )

    # --- leaderboards -----------------------------------------------------------------------

    def resolve(self, query: pb.LeaderboardQuery, where: str = "query") -> ResolvedQuery:
        return resolve_query(
            query,
            default_rounds=self.options.default_bootstrap_rounds,
            max_rounds=self.options.max_bootstrap_rounds,
            default_seed=self.options.default_seed,
            default_k=DEFAULT_K,
            where=where,
        )

    async def leaderboard(self, query: pb.LeaderboardQuery, where: str = "query") -> pb.Leaderboard:
        resolved = self.resolve(query, where)
        await self.aggregates.catch_up()
        board, _ = await self._fit(resolved, where)
        return board

    async def _fit(self, query: ResolvedQuery, where: str) -> tuple[pb.Leaderboard, int]:
        """The leaderboard of the arena as folded now, and the arena version it reflects."""
        state = self._arena(query.arena, where)
        self._check_names(state, query, where)
        version = state.version
        cache_key = (query.arena, version, query.cache_key())
        per_battle = query.method == "online_elo" or query.style_control
        seeded = query.seed is not None or query.ci != "bootstrap" or not query.rounds
        # Rows read from the bucket may run ahead of `version`: only count-based fits are cached.
        deterministic = seeded and not per_battle
        if deterministic and cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return copy_of(self._cache[cache_key]), version
        if per_battle:
            battles = await self._battles_from_records(query, state, where)
        else:
            battles = self._battles_from_cells(query, state, where)
        async with self._fits:
            started = time.perf_counter()
            try:
                board = await asyncio.to_thread(self._rate, battles, query)
            except RatingInputError as error:
                raise InvalidArgumentError(str(error), where=where) from None
            elapsed = time.perf_counter() - started
        metrics.FIT_SECONDS.labels(query.fit_label).observe(elapsed)
        out = leaderboard_proto(board, battles, query)
        out.computed_at.GetCurrentTime()
        out.fit_duration.CopyFrom(_duration(elapsed))
        if deterministic:
            self._cache[cache_key] = copy_of(out)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return out, version

    def _arena(self, arena: str, where: str) -> ArenaState:
        state = self.aggregates.arenas.get(arena)
        if state is None or not state.battle_count:
            raise NotFoundError(f"{where}.arena: arena {arena!r} has no battles")
        return state

    @staticmethod
    def _check_names(state: ArenaState, query: ResolvedQuery, where: str) -> None:
        if query.category is not None and query.category not in state.categories:
            known = ", ".join(sorted(state.categories)) or "none"
            raise InvalidArgumentError(
                f"unknown category {query.category!r} in arena {query.arena!r} (known: {known})",
                where=f"{where}.category",
            )
        for index, model in enumerate(query.models):
            if model not in state.models:
                raise InvalidArgumentError(
                    f"model {model!r} has no battles in arena {query.arena!r}",
                    where=f"{where}.models[{index}]",
                )

    def _battles_from_cells(self, query: ResolvedQuery, state: ArenaState, where: str) -> Battles:
        chosen = set(query.models)
        cells = [
            (key, count)
            for key, count in state.cells.items()
            if (query.category is None or key[0] == query.category)
            and (not chosen or (key[1] in chosen and key[2] in chosen))
        ]
        if not cells:
            raise InvalidArgumentError("no battles match the query", where=where)
        return battles_from_counts(
            [key[1] for key, _ in cells],
            [key[2] for key, _ in cells],
            [key[3] for key, _ in cells],
            [key[4] for key, _ in cells],
            [count for _, count in cells],
        )

    async def _battles_from_records(
        self, query: ResolvedQuery, state: ArenaState, where: str
    ) -> Battles:
        """Per-battle rows in recorded order: style covariates and online Elo need them."""
        chosen = set(query.models)
        records = []
        async for battle in self._ledger.arena_battles(self._js, query.arena):
            if query.category is not None and battle.category != query.category:
                continue
            if chosen and not (battle.model_a in chosen and battle.model_b in chosen):
                continue
            record = battle_record(battle)
            record.pop("category", None)  # filtered above
            if query.style_control and "conv_metadata" not in record:
                raise InvalidArgumentError(
                    "style control needs style features (style_a and style_b) on every battle; "
                    f"battle {battle.battle_id or battle.judgment_id or '?'} has none",
                    where=f"{where}.style_control",
                )
            records.append(record)
        if not records:
            raise InvalidArgumentError("no battles match the query", where=where)
        return battles_from_records(records, source=f"arena {query.arena!r}")

    def _rate(self, battles: Battles, query: ResolvedQuery) -> Leaderboard:
        if query.method == "online_elo":
            return _online_leaderboard(battles, query)
        return rate_battles(
            battles,
            anchors=dict(query.anchors),
            baseline=query.baseline,
            bootstrap_rounds=query.rounds,
            seed=query.seed,
            ci="analytic" if query.ci == "analytic" else "bootstrap",
            style_control=query.style_control,
            workers=self.options.bootstrap_workers,
        )

    # --- snapshots --------------------------------------------------------------------------

    async def publish(
        self,
        query: pb.LeaderboardQuery,
        trigger: pb.PublishTrigger.ValueType,
        *,
        snapshot_id: str | None = None,
        context: common_pb2.WorkContext | None = None,
        caused_by: Any = None,
        where: str = "query",
    ) -> pb.Leaderboard:
        """Fit, store as an immutable snapshot and announce it with RatingsPublished.

        Without a snapshot id the id is derived from the query and the arena's version, so
        replicas publishing the same scheduled snapshot store and announce it once.
        """
        resolved = self.resolve(query, where)
        await self.aggregates.catch_up()
        board, version = await self._fit(resolved, where)
        board.snapshot_id = snapshot_id or content_hash(
            "arena.rating.snapshot/v1", resolved.cache_key(), version
        )
        stored = await self._snapshots.put_once(board)
        event = events_pb2.RatingsPublished(leaderboard=stored, trigger=trigger)
        if context is not None:
            event.context.CopyFrom(context)
        await self._publisher.publish(
            event,
            event_id=stable_event_id("arena.rating.v1", "RatingsPublished", stored.snapshot_id),
            caused_by=caused_by,
        )
        metrics.SNAPSHOTS_PUBLISHED.labels(_TRIGGER_LABEL.get(trigger, "other")).inc()
        if resolved.is_main:
            _export_ratings(stored)
        return stored

    async def snapshot(self, snapshot_id: str, where: str = "snapshot_id") -> pb.Leaderboard:
        if not snapshot_id:
            raise InvalidArgumentError("is required", where=where)
        board = await self._snapshots.get(snapshot_id) if _valid_key(snapshot_id) else None
        if board is None:
            raise NotFoundError(f"{where}: no snapshot {snapshot_id!r}")
        return board

    async def run_schedule(self) -> None:
        """Background job: snapshot every arena whose battles changed, every interval."""
        interval = self.options.publish_interval_seconds
        if interval <= 0:
            await asyncio.Event().wait()  # turned off; a background job must not return
        published: dict[str, int] = {}
        while True:
            await asyncio.sleep(interval)
            try:
                await self.aggregates.catch_up()
            except Exception:
                log.warning("scheduled publish skipped: aggregates behind", exc_info=True)
                continue
            for arena, state in sorted(self.aggregates.arenas.items()):
                version = state.version
                if not state.battle_count or published.get(arena) == version:
                    continue
                try:
                    await self.publish(
                        pb.LeaderboardQuery(arena=arena), pb.PUBLISH_TRIGGER_SCHEDULE
                    )
                except Exception:
                    log.warning("scheduled publish failed", extra={"arena": arena}, exc_info=True)
                    continue
                published[arena] = version

    # --- streaming --------------------------------------------------------------------------

    async def stream(self, request: pb.StreamLeaderboardRequest) -> AsyncIterator[pb.Leaderboard]:
        """The leaderboard now, then again whenever the arena changes, at most once per interval."""
        resolved = self.resolve(request.query)
        interval = self.options.stream_min_interval_seconds
        if request.HasField("min_interval"):
            interval = request.min_interval.ToTimedelta().total_seconds()
            if interval < 0:
                raise InvalidArgumentError("must not be negative", where="min_interval")
        await self.aggregates.catch_up()
        while True:
            board, version = await self._fit(resolved, "query")
            yield board
            await asyncio.sleep(interval)
            while await self.aggregates.changed(resolved.arena, version, 300.0) == version:
                pass

    # --- comparing --------------------------------------------------------------------------

    async def compare(
        self, request: pb.CompareLeaderboardsRequest
    ) -> pb.CompareLeaderboardsResponse:
        reference = await self._scored(request.reference, "reference")
        candidate = await self._scored(request.candidate, "candidate")
        result = compare_leaderboards(candidate, reference)
        if result.common_models < 2:
            raise InvalidArgumentError(
                f"the leaderboards share {result.common_models} model(s); at least 2 are needed",
                where="candidate",
            )
        return pb.CompareLeaderboardsResponse(
            metrics=pb.ConsistencyMetrics(
                spearman=result.spearman,
                kendall=result.kendall,
                agreement=result.agreement,
                separability=result.separability,
                brier=result.brier,
                average=result.average,
                common_models=result.common_models,
            )
        )

    async def _scored(self, source: pb.LeaderboardSource, where: str) -> list[ScoredModel]:
        kind = source.WhichOneof("source")
        if kind == "leaderboard":
            board = source.leaderboard
            if not board.entries:
                raise InvalidArgumentError("has no entries", where=f"{where}.leaderboard")
        elif kind == "snapshot_id":
            board = await self.snapshot(source.snapshot_id, f"{where}.snapshot_id")
        elif kind == "query":
            board = await self.leaderboard(source.query, f"{where}.query")
        else:
            raise InvalidArgumentError("set one of leaderboard, snapshot_id or query", where=where)
        out = []
        for index, entry in enumerate(board.entries):
            if not entry.model or not math.isfinite(entry.rating):
                raise InvalidArgumentError(
                    "needs a model name and a finite rating", where=f"{where}.entries[{index}]"
                )
            out.append(
                ScoredModel(
                    model=entry.model,
                    score=entry.rating,
                    ci_low=entry.ci_low if entry.HasField("ci_low") else None,
                    ci_high=entry.ci_high if entry.HasField("ci_high") else None,
                )
            )
        return out

    # --- arenas -----------------------------------------------------------------------------

    async def list_arenas(self, request: pb.ListArenasRequest) -> pb.ListArenasResponse:
        size = request.page.page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgumentError(f"must be in [1, {MAX_PAGE}]", where="page.page_size")
        after = _decode_token(request.page.page_token)
        await self.aggregates.catch_up()
        names = sorted(name for name, s in self.aggregates.arenas.items() if s.battle_count)
        start = bisect.bisect_right(names, after) if after is not None else 0
        page = names[start : start + size]
        response = pb.ListArenasResponse()
        for name in page:
            state = self.aggregates.arenas[name]
            summary = response.arenas.add(
                arena=name,
                battle_count=state.battle_count,
                models=sorted(state.models),
                categories=sorted(state.categories),
            )
            summary.updated_at.FromNanoseconds(int(state.updated_at * 1e9))
        if start + size < len(names):
            response.page.next_page_token = _encode_token(page[-1])
        return response

    # --- reference benchmarks ---------------------------------------------------------------

    async def benchmark_scores(
        self, request: pb.ComputeBenchmarkScoresRequest
    ) -> pb.ComputeBenchmarkScoresResponse:
        if request.benchmark not in (pb.BENCHMARK_MT_BENCH, pb.BENCHMARK_ALPACA_EVAL):
            raise InvalidArgumentError(
                "must be BENCHMARK_MT_BENCH or BENCHMARK_ALPACA_EVAL", where="benchmark"
            )
        if not request.inputs:
            raise InvalidArgumentError("at least one file is required", where="inputs")
        if request.HasField("bootstrap_rounds") and not (
            0 <= request.bootstrap_rounds <= self.options.max_bootstrap_rounds
        ):
            raise InvalidArgumentError(
                f"must be in [0, {self.options.max_bootstrap_rounds}]", where="bootstrap_rounds"
            )
        documents = [
            await self._read_artifact(ref, f"inputs[{index}]")
            for index, ref in enumerate(request.inputs)
        ]
        response = pb.ComputeBenchmarkScoresResponse()
        try:
            if request.benchmark == pb.BENCHMARK_MT_BENCH:
                await self._mt_bench(request, documents, response)
            else:
                await self._alpaca_eval(request, documents, response)
        except RatingInputError as error:
            raise InvalidArgumentError(str(error), where="inputs") from None
        return response

    async def _mt_bench(
        self,
        request: pb.ComputeBenchmarkScoresRequest,
        documents: list[tuple[str, bytes]],
        response: pb.ComputeBenchmarkScoresResponse,
    ) -> None:
        for source, data in documents:  # each on its own first, so errors name file:line
            parse_mt_bench_jsonl(data, source=source)
        joined = b"\n".join(data.rstrip(b"\n") for _, data in documents)
        judgments = parse_mt_bench_jsonl(joined, source="inputs")
        rounds = request.bootstrap_rounds if request.HasField("bootstrap_rounds") else None
        scores = await asyncio.to_thread(
            score_mt_bench,
            judgments,
            bootstrap_rounds=_MT_BENCH_ROUNDS if rounds is None else rounds,
            seed=request.seed if request.HasField("seed") else 0,
        )
        for score in scores:
            row = response.scores.add(model=score.model, n=score.n)
            if math.isfinite(score.score):
                row.score = score.score
            if score.ci_low is not None and score.ci_high is not None:
                row.ci_low, row.ci_high = score.ci_low, score.ci_high

    async def _alpaca_eval(
        self,
        request: pb.ComputeBenchmarkScoresRequest,
        documents: list[tuple[str, bytes]],
        response: pb.ComputeBenchmarkScoresResponse,
    ) -> None:
        sets = parse_alpaca_annotations(documents)
        scores = await asyncio.to_thread(
            score_alpaca_eval, sets, length_controlled=request.length_controlled
        )
        for score in scores:
            row = response.scores.add(model=score.model, n=score.n)
            if math.isfinite(score.win_rate):
                row.win_rate = score.win_rate
            if score.standard_error is not None:
                row.standard_error = score.standard_error
            lc = score.length_controlled_win_rate
            if lc is not None and math.isfinite(lc):
                row.length_controlled_win_rate = lc

    async def _read_artifact(self, ref: common_pb2.ArtifactRef, where: str) -> tuple[str, bytes]:
        uri = ref.uri
        if uri.startswith("file://"):
            path = Path(uri.removeprefix("file://"))
            if not path.is_absolute():
                raise InvalidArgumentError(
                    f"file URIs must hold an absolute path, got {uri!r}", where=f"{where}.uri"
                )
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                raise NotFoundError(f"{where}.uri: no file {uri!r}") from None
            except OSError as error:
                raise InvalidArgumentError(
                    f"cannot read {uri!r}: {error.strerror}", where=f"{where}.uri"
                ) from None
        elif uri.startswith("nats-obj://"):
            bucket, _, name = uri.removeprefix("nats-obj://").partition("/")
            if not bucket or not name:
                raise InvalidArgumentError(
                    f"expected nats-obj://<bucket>/<name>, got {uri!r}", where=f"{where}.uri"
                )
            try:
                store = await self._js.object_store(bucket)
                result = await store.get(name)
            except NatsNotFoundError:
                raise NotFoundError(f"{where}.uri: no object {uri!r}") from None
            data = bytes(result.data or b"")
        else:
            raise InvalidArgumentError(
                f"unsupported URI {uri!r}; use file:///path or nats-obj://bucket/name",
                where=f"{where}.uri",
            )
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256.lower():
            raise InvalidArgumentError(
                f"the bytes of {uri!r} do not match this SHA-256", where=f"{where}.sha256"
            )
        return uri, data


def _online_leaderboard(battles: Battles, query: ResolvedQuery) -> Leaderboard:
    """Online Elo over the battles in recorded order, as a leaderboard without intervals."""
    ratings = online_elo(battles, k=query.k_factor)
    names = battles.models
    values = [ratings[name] for name in names]
    array = np.asarray(values, dtype=np.float64)
    ranks = rank_by_intervals(array, array)
    if query.baseline is not None and query.baseline not in ratings:
        raise RatingInputError(f"baseline model {query.baseline!r} has no battles")
    wins = (
        None if query.baseline is None else baseline_win_rate(array, float(ratings[query.baseline]))
    )
    counts = battles.battle_counts()
    rows = [
        ModelRating(
            model=names[k],
            rating=values[k],
            mle=values[k],
            ci_low=None,
            ci_high=None,
            rank=int(ranks[k]),
            battles=int(counts[k]),
            win_rate=None if wins is None else float(wins[k]),
        )
        for k in range(len(names))
    ]
    rows.sort(key=lambda r: (-r.rating, r.model))
    return Leaderboard(models=tuple(rows), bootstrap_rounds=0, ci_method=None)


def _export_ratings(board: pb.Leaderboard) -> None:
    arena = board.query.arena
    for entry in board.entries:
        metrics.MODEL_RATING.labels(arena, entry.model).set(entry.rating)
        if entry.HasField("ci_low"):
            metrics.MODEL_RATING_CI_LOW.labels(arena, entry.model).set(entry.ci_low)
        if entry.HasField("ci_high"):
            metrics.MODEL_RATING_CI_HIGH.labels(arena, entry.model).set(entry.ci_high)


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _valid_key(key: str) -> bool:
    return all(c.isalnum() or c in "-_=" for c in key)


def _encode_token(arena: str) -> str:
    return base64.urlsafe_b64encode(arena.encode()).decode()


def _decode_token(token: str) -> str | None:
    if not token:
        return None
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        raise InvalidArgumentError(
            "not a token this service issued", where="page.page_token"
        ) from None


__all__ = ["RatingApplication", "Recorded"]
