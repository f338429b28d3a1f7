"""Where the rating service keeps its state: three JetStream KV buckets.

- battles: one entry per counted battle under ``b.<arena>.<battle identity>``, written with a
  KV create. The effect and its idempotency key are that one keyed write, so a redelivered or
  re-published judgment finds its battle there and counts nothing twice, across replicas and
  restarts. The entry ``epoch`` names this incarnation of the bucket.
- aggregates: per-arena checkpoints of the per-cell counts folded from the battles bucket,
  plus the bucket position they cover (see aggregator.py). Only a start-up shortcut: losing them
  costs a re-read of the battles bucket, never a wrong count.
- snapshots: published leaderboards by snapshot id, immutable.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.errors import NotFoundError as NatsNotFoundError
from nats.js.kv import KeyValue

from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_rating.convert import ARENA_KEY_PREFIX, arena_token

EPOCH_KEY = "epoch"
POSITION_KEY = "position"
CHECKPOINT_PREFIX = "a"
_CHECKPOINT_VERSION = 1


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str = ">") -> str:
    return f"$KV.{bucket}.{key}"


class BattleLedger:
    """Battles keyed by identity; ``add`` writes each once and tells new from already counted."""

    def __init__(self, kv: KeyValue, bucket: str, concurrency: int) -> None:
        self._kv = kv
        self.bucket = bucket
        self._limit = asyncio.Semaphore(concurrency)

    async def epoch(self) -> str:
        """This bucket's incarnation id, created by the first replica that asks."""
        # Another start may have got there first; then read what it wrote.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv.create(EPOCH_KEY, uuid.uuid4().hex.encode())
        entry = await self._kv.get(EPOCH_KEY)
        return (entry.value or b"").decode()

    async def add(self, battles: Sequence[tuple[str, pb.Battle]]) -> list[int | None]:
        """For each (key, battle): its bucket revision when newly written, None when present.

        Each write is a KV create, which JetStream refuses when the key already has an entry;
        up to ``concurrency`` are in flight at once. (Not publish_async: nats-py 2.16 never
        resolves its future when the server refuses the write.)
        """

        async def one(key: str, battle: pb.Battle) -> int | None:
            async with self._limit:
                try:
                    return await self._kv.create(key, battle.SerializeToString(deterministic=True))
                except KeyWrongLastSequenceError:
                    return None

        return list(await asyncio.gather(*(one(key, battle) for key, battle in battles)))

    async def last_sequence(self, js: JetStreamContext) -> int:
        info = await js.stream_info(kv_stream(self.bucket))
        return int(info.state.last_seq or 0)

    async def arena_battles(
        self, js: JetStreamContext, arena: str, *, idle_timeout: float = 10.0
    ) -> AsyncIterator[pb.Battle]:
        """Every stored battle of one arena, in the order they were recorded."""
        subject = kv_subject(self.bucket, f"{ARENA_KEY_PREFIX}.{arena_token(arena)}.>")
        subscription = await js.subscribe(
            subject, stream=kv_stream(self.bucket), ordered_consumer=True
        )
        try:
            info = await subscription.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            if not info.num_pending and not delivered:
                return  # the arena has no stored battles
            while True:
                try:
                    message = await subscription.next_msg(timeout=idle_timeout)
                except (TimeoutError, NatsTimeoutError):
                    raise TimeoutError(f"reading the battles of arena {arena!r} stalled") from None
                if message.data:
                    yield pb.Battle.FromString(message.data)
                if message.metadata.num_pending == 0:
                    return
        finally:
            await subscription.unsubscribe()


@dataclass
class Checkpoint:
    """One arena's folded counts as of bucket position ``covered``."""

    arena: str
    epoch: str
    covered: int
    version: int
    battle_count: int
    updated_at: float
    cells: list[tuple[str, str, str, int, float, int]]

    def encode(self) -> bytes:
        categories = sorted({cell[0] for cell in self.cells})
        models = sorted({name for cell in self.cells for name in cell[1:3]})
        category_index = {name: k for k, name in enumerate(categories)}
        model_index = {name: k for k, name in enumerate(models)}
        document = {
            "v": _CHECKPOINT_VERSION,
            "arena": self.arena,
            "epoch": self.epoch,
            "covered": self.covered,
            "version": self.version,
            "battle_count": self.battle_count,
            "updated_at": self.updated_at,
            "categories": categories,
            "models": models,
            "cells": [
                [category_index[c], model_index[a], model_index[b], o, w, n]
                for c, a, b, o, w, n in self.cells
            ],
        }
        return zlib.compress(orjson.dumps(document), 6)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint | None:
        try:
            document: Any = orjson.loads(zlib.decompress(data))
        except (zlib.error, orjson.JSONDecodeError):
            return None
        if not isinstance(document, dict) or document.get("v") != _CHECKPOINT_VERSION:
            return None
        categories, models = document["categories"], document["models"]
        return cls(
            arena=document["arena"],
            epoch=document["epoch"],
            covered=int(document["covered"]),
            version=int(document["version"]),
            battle_count=int(document["battle_count"]),
            updated_at=float(document["updated_at"]),
            cells=[
                (categories[c], models[a], models[b], int(o), float(w), int(n))
                for c, a, b, o, w, n in document["cells"]
            ],
        )


class CheckpointStore:
    """Arena checkpoints and the position they jointly cover, written only forwards (CAS)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def load(self, epoch: str) -> tuple[int, list[Checkpoint]]:
        """(position, checkpoints) of this battles-bucket epoch; (0, []) when there are none."""
        position = 0
        found = await self._get(POSITION_KEY)
        if found is not None:
            document = orjson.loads(found[0])
            if document.get("epoch") == epoch:
                position = int(document["position"])
        try:
            keys = [k for k in await self._kv.keys() if k.startswith(f"{CHECKPOINT_PREFIX}.")]
        except NoKeysError:
            keys = []
        checkpoints = []
        for key in keys:
            entry = await self._get(key)
            checkpoint = Checkpoint.decode(entry[0]) if entry else None
            if checkpoint is not None and checkpoint.epoch == epoch:
                checkpoints.append(checkpoint)
        return position, checkpoints

    async def save_arena(self, checkpoint: Checkpoint, data: bytes) -> None:
        key = f"{CHECKPOINT_PREFIX}.{arena_token(checkpoint.arena)}"

        def newer(stored: bytes) -> bool:
            other = Checkpoint.decode(stored)
            return (
                other is not None
                and other.epoch == checkpoint.epoch
                and other.covered >= checkpoint.covered
            )

        await self._forward(key, data, newer)

    async def save_position(self, epoch: str, position: int) -> None:
        def newer(stored: bytes) -> bool:
            document = orjson.loads(stored)
            return bool(document.get("epoch") == epoch and document["position"] >= position)

        await self._forward(
            POSITION_KEY, orjson.dumps({"epoch": epoch, "position": position}), newer
        )

    async def _forward(self, key: str, data: bytes, newer: Any) -> None:
        """Write unless what is stored already covers as much; another replica may race us."""
        for _ in range(10):
            found = await self._get(key)
            if found is not None and newer(found[0]):
                return
            try:
                if found is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=found[1])
                return
            except KeyWrongLastSequenceError:
                continue

    async def _get(self, key: str) -> tuple[bytes, int] | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return entry.value, entry.revision or 0


class SnapshotStore:
    """Published leaderboards by snapshot id; a snapshot, once stored, never changes."""

    def __init__(self, kv: KeyValue) -> None:
        self._store = ProtoStore(kv, pb.Leaderboard)

    async def get(self, snapshot_id: str) -> pb.Leaderboard | None:
        found = await self._store.get(snapshot_id)
        return found[0] if found else None

    async def put_once(self, board: pb.Leaderboard) -> pb.Leaderboard:
        """Store under its snapshot id; if that id is taken, the stored one is the answer."""
        if await self._store.create(board.snapshot_id, board):
            return board
        stored = await self.get(board.snapshot_id)
        return stored if stored is not None else board


async def bucket_exists(js: JetStreamContext, bucket: str) -> bool:
    try:
        await js.stream_info(kv_stream(bucket))
    except NatsNotFoundError:
        return False
    return True


def ordered_from(position: int) -> api.ConsumerConfig:
    """Consumer config that starts right after ``position`` (everything when it is 0)."""
    if position <= 0:
        return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
    return api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=position + 1
    )
