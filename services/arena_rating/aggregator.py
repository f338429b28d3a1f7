"""Per-arena aggregates: the battles bucket folded, in bucket order, into per-cell counts.

The battles bucket is the source of truth (one keyed entry per counted battle). Every replica
tails it with an ordered consumer and folds each new entry into counts of distinct
``(category, model_a, model_b, outcome, weight)`` cells; the fold is a pure function of the
bucket's prefix, so every replica holds the same counts at the same position.

Checkpoints make restarts cheap: each arena's counts are written to the aggregates bucket with
the position they cover, then the position itself. All of them are taken at one instant and only
ever move forwards (compare-and-set), so after a crash anywhere in between, a restart that folds
from the stored position — skipping, per arena, entries its checkpoint already covers — counts
every battle exactly once. A checkpoint from another incarnation of the battles bucket (its
``epoch`` differs) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE

from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.errors import UnavailableError
from arena_rating import metrics
from arena_rating.convert import ARENA_KEY_PREFIX, OUTCOME_OF_WINNER, battle_weight
from arena_rating.store import (
    BattleLedger,
    Checkpoint,
    CheckpointStore,
    kv_stream,
    kv_subject,
    ordered_from,
)

log = logging.getLogger(__name__)

_STALLED_ROUNDS = 3  # checkpoint rounds without progress before the tail is restarted
CellKey = tuple[str, str, str, int, float]  # category, model_a, model_b, outcome, weight


@dataclass
class ArenaState:
    """One arena's counts; ``version`` is the bucket revision of its latest battle."""

    arena: str
    cells: dict[CellKey, int] = field(default_factory=dict)
    battle_count: int = 0
    version: int = 0
    covered: int = 0  # entries at or below this position are already in `cells`
    updated_at: float = 0.0
    models: dict[str, int] = field(default_factory=dict)  # battles per model
    categories: set[str] = field(default_factory=set)

    def add(self, cell: CellKey, count: int) -> None:
        self.cells[cell] = self.cells.get(cell, 0) + count
        self.battle_count += count
        for model in (cell[1], cell[2]):
            self.models[model] = self.models.get(model, 0) + count
        if cell[0]:
            self.categories.add(cell[0])

    def checkpoint(self, epoch: str, position: int) -> Checkpoint:
        return Checkpoint(
            arena=self.arena,
            epoch=epoch,
            covered=max(position, self.covered),
            version=self.version,
            battle_count=self.battle_count,
            updated_at=self.updated_at,
            cells=[(*key, count) for key, count in sorted(self.cells.items())],
        )


class Aggregates:
    """The folded arenas of one replica, kept current by tailing the battles bucket."""

    def __init__(
        self,
        js: JetStreamContext,
        ledger: BattleLedger,
        checkpoints: CheckpointStore,
        *,
        max_payload: int,
        catch_up_timeout: float,
    ) -> None:
        self._js = js
        self._ledger = ledger
        self._checkpoints = checkpoints
        self._max_payload = max_payload
        self._timeout = catch_up_timeout
        self.arenas: dict[str, ArenaState] = {}
        self.position = 0
        self.epoch = ""
        self._dirty: set[str] = set()
        self._tick = asyncio.Event()
        self._subscription: object | None = None
        self._too_big: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the checkpoints of this bucket incarnation, then tail from where they end."""
        self.epoch = await self._ledger.epoch()
        position, checkpoints = await self._checkpoints.load(self.epoch)
        for checkpoint in checkpoints:
            state = ArenaState(
                checkpoint.arena,
                version=checkpoint.version,
                covered=checkpoint.covered,
                updated_at=checkpoint.updated_at,
            )
            for category, a, b, outcome, weight, count in checkpoint.cells:
                state.add((category, a, b, outcome, weight), count)
            self.arenas[checkpoint.arena] = state
            metrics.MODELS_RATED.labels(checkpoint.arena).set(len(state.models))
        self.position = position
        log.info(
            "aggregates loaded",
            extra={"position": position, "arenas": len(self.arenas), "epoch": self.epoch},
        )
        await self._subscribe()

    async def _subscribe(self) -> None:
        self._subscription = await self._js.subscribe(
            kv_subject(self._ledger.bucket),
            stream=kv_stream(self._ledger.bucket),
            cb=self._on_entry,
            ordered_consumer=True,
            config=ordered_from(self.position),
            pending_msgs_limit=1_000_000,
        )

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await self.checkpoint()

    # --- folding ----------------------------------------------------------------------------

    async def _on_entry(self, message: Msg) -> None:
        sequence = message.metadata.sequence.stream
        if sequence <= self.position:
            return  # the ordered consumer restarted below what is folded
        try:
            self._fold(message, sequence)
        except Exception:
            log.exception("could not fold battle entry", extra={"sequence": sequence})
        self.position = sequence
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _fold(self, message: Msg, sequence: int) -> None:
        key = message.subject.split(".", 2)[2]
        headers = message.headers or {}
        deleted = headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers
        if not key.startswith(f"{ARENA_KEY_PREFIX}.") or deleted or not message.data:
            return  # the epoch entry, or a delete marker (battles are never deleted)
        battle = pb.Battle.FromString(message.data)
        state = self.arenas.get(battle.arena)
        if state is None:
            state = self.arenas[battle.arena] = ArenaState(battle.arena)
        if sequence <= state.covered:
            return  # in this arena's checkpoint already
        outcome = int(OUTCOME_OF_WINNER[battle.winner])
        cell = (battle.category, battle.model_a, battle.model_b, outcome, battle_weight(battle))
        known_models = len(state.models)
        state.add(cell, 1)
        state.version = sequence
        state.updated_at = message.metadata.timestamp.timestamp()
        self._dirty.add(battle.arena)
        if len(state.models) != known_models:
            metrics.MODELS_RATED.labels(battle.arena).set(len(state.models))

    # --- waiting ----------------------------------------------------------------------------

    async def wait_for(self, sequence: int, timeout: float | None = None) -> None:
        """Return once every bucket entry up to ``sequence`` is folded."""
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        while self.position < sequence:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(
                    f"battle aggregates are behind the battles bucket (folded {self.position}, "
                    f"need {sequence}); try again shortly"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), min(left, 1.0))

    async def catch_up(self) -> None:
        """Fold everything already in the bucket, whichever replica wrote it."""
        await self.wait_for(await self._ledger.last_sequence(self._js))

    async def changed(self, arena: str, version: int, timeout: float) -> int:
        """The arena's version once it differs from ``version`` (or the same after timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.arenas.get(arena)
            current = state.version if state is not None else 0
            left = deadline - time.monotonic()
            if current != version or left <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tick.wait(), left)

    # --- checkpoints ------------------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Write the changed arenas, then the position they jointly cover."""
        # Taken without awaiting, so every document describes the same instant.
        position, dirty = self.position, sorted(self._dirty)
        documents = [(self.arenas[name].checkpoint(self.epoch, position)) for name in dirty]
        encoded = [(doc, doc.encode()) for doc in documents]
        self._dirty.clear()
        complete = True
        try:
            for doc, data in encoded:
                if len(data) > self._max_payload - 1024:
                    if doc.arena not in self._too_big:
                        log.warning(
                            "arena checkpoint exceeds the NATS payload limit; this arena is "
                            "rebuilt from the battles bucket on restart",
                            extra={"arena": doc.arena, "bytes": len(data)},
                        )
                        self._too_big.add(doc.arena)
                    complete = False
                    continue
                await self._checkpoints.save_arena(doc, data)
        except BaseException:
            self._dirty.update(dirty)
            raise
        if complete and not self._too_big:
            await self._checkpoints.save_position(self.epoch, position)

    async def run_checkpoints(self, interval: float) -> None:
        """Background job: checkpoint whatever changed, every ``interval`` seconds, and restart
        the tail if it stopped moving while the bucket holds entries it has not folded."""
        stalled_rounds, last_position = 0, self.position
        while True:
            await asyncio.sleep(interval)
            try:
                if self._dirty:
                    await self.checkpoint()
                behind = await self._ledger.last_sequence(self._js) > self.position
                stalled = behind and self.position == last_position
                stalled_rounds = stalled_rounds + 1 if stalled else 0
                last_position = self.position
                if stalled_rounds >= _STALLED_ROUNDS:
                    log.warning("battle tail stalled; resubscribing at %d", self.position + 1)
                    await self._resubscribe()
                    stalled_rounds = 0
            except Exception:
                log.warning("checkpoint or tail check failed; retrying next round", exc_info=True)

    async def _resubscribe(self) -> None:
        old, self._subscription = self._subscription, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()  # type: ignore[attr-defined]
        await self._subscribe()
