"""The answer cache in JetStream KV: one `Generation` per generation id, shared by every replica
and kept across restarts, so the same request is never generated twice."""

from __future__ import annotations

import logging

from nats.errors import Error as NatsError
from nats.js.kv import KeyValue

from arena.inference.v1 import inference_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_inference.convert import generation_from_proto, generation_to_proto
from arena_inference.domain.ports import AnswerCache
from arena_inference.domain.types import Generation

log = logging.getLogger(__name__)


class KvAnswerCache(AnswerCache):
    """While JetStream is unreachable a lookup counts as a miss and a write is skipped (both
    logged): answers keep flowing, at the price of possibly computing one again."""

    def __init__(self, kv: KeyValue) -> None:
        self._store = ProtoStore(kv, pb.Generation)

    async def get(self, generation_id: str) -> Generation | None:
        try:
            found = await self._store.get(generation_id)
        except (NatsError, TimeoutError) as error:
            log.warning("answer cache unreachable, treating %s as a miss: %r", generation_id, error)
            return None
        return generation_from_proto(found[0]) if found else None

    async def put(self, generation: Generation) -> None:
        stored = generation_to_proto(generation)
        stored.cached = False
        try:
            await self._store.put(generation.generation_id, stored)
        except (NatsError, TimeoutError) as error:
            log.warning(
                "answer cache unreachable, %s not stored: %r", generation.generation_id, error
            )
