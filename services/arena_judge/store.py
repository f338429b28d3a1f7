"""Where judgments and judge specs are kept: JetStream KV, or memory for tests and tools.

Judgments are stored under their judgment_id (a content hash), so a redelivered work item, a
restarted replica or another replica finds the judgment instead of calling the judge again.
Judge specs are stored under (name, version): one name and version means one definition.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from nats.js.kv import KeyValue

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_core.errors import FailedPreconditionError
from arena_core.hashing import content_hash


class JudgmentCache(Protocol):
    async def get(self, judgment_id: str) -> pb.Judgment | None: ...

    async def put(self, judgment: pb.Judgment) -> None: ...

    def scan(self) -> AsyncIterator[pb.Judgment]: ...


class KvJudgmentCache:
    def __init__(self, kv: KeyValue) -> None:
        self._store = ProtoStore(kv, pb.Judgment)

    async def get(self, judgment_id: str) -> pb.Judgment | None:
        found = await self._store.get(judgment_id)
        return found[0] if found else None

    async def put(self, judgment: pb.Judgment) -> None:
        await self._store.put(judgment.judgment_id, judgment)

    async def scan(self) -> AsyncIterator[pb.Judgment]:
        for key in await self._store.keys():
            found = await self._store.get(key)
            if found is not None:
                yield found[0]


class MemoryJudgmentCache:
    def __init__(self) -> None:
        self.entries: dict[str, pb.Judgment] = {}

    async def get(self, judgment_id: str) -> pb.Judgment | None:
        found = self.entries.get(judgment_id)
        if found is None:
            return None
        copy = pb.Judgment()
        copy.CopyFrom(found)
        return copy

    async def put(self, judgment: pb.Judgment) -> None:
        copy = pb.Judgment()
        copy.CopyFrom(judgment)
        self.entries[judgment.judgment_id] = copy

    async def scan(self) -> AsyncIterator[pb.Judgment]:
        for judgment in list(self.entries.values()):
            yield judgment


def spec_key(name: str, version: str) -> str:
    # Names may hold characters KV keys do not allow; the key is a hash, the value the spec.
    return content_hash("arena.judge.spec/v1", name, version)


class SpecRegistry:
    """Judge specs by name and version; a second definition under the same pair is refused."""

    def __init__(self, kv: KeyValue | None = None) -> None:
        self._store = ProtoStore(kv, common_pb2.JudgeSpec) if kv is not None else None
        self._known: dict[str, bytes] = {}
        self._lock = asyncio.Lock()  # a batch registers its spec once, not once per task

    async def register(self, spec: common_pb2.JudgeSpec) -> None:
        key = spec_key(spec.name, spec.version)
        encoded = spec.SerializeToString(deterministic=True)
        known = self._known.get(key)
        if known is None:
            async with self._lock:
                known = self._known.get(key) or await self._register(key, spec, encoded)
        if known != encoded:
            raise FailedPreconditionError(
                f"judge {spec.name}@{spec.version} is already defined differently; a changed "
                "judge needs a new version so old and new judgments never mix"
            )

    async def _register(self, key: str, spec: common_pb2.JudgeSpec, encoded: bytes) -> bytes:
        stored = await self._load(key)
        if stored is None and self._store is not None:
            await self._store.create(key, spec)
            stored = await self._load(key)  # another replica may have won the race
        known = encoded if stored is None else stored.SerializeToString(deterministic=True)
        self._known[key] = known
        return known

    async def lookup(self, name: str, version: str) -> common_pb2.JudgeSpec | None:
        key = spec_key(name, version)
        stored = await self._load(key)
        if stored is None and key in self._known:
            stored = common_pb2.JudgeSpec.FromString(self._known[key])
        return stored

    async def _load(self, key: str) -> common_pb2.JudgeSpec | None:
        if self._store is None:
            return None
        found = await self._store.get(key)
        return found[0] if found else None
