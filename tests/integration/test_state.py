"""Typed KV helpers against a real JetStream: compare-and-set updates and the idempotency ledger."""

from __future__ import annotations

import asyncio
import uuid

from arena.common.v1 import common_pb2
from arena_core.bus.state import ProcessedLedger, ProtoStore
from arena_core.bus.topology import ensure_key_value, ensure_object_store
from arena_core.settings import NatsSettings
from tests.integration.bus_support import jetstream


async def test_concurrent_updates_never_lose_an_increment(nats_url: str) -> None:
    async with jetstream(nats_url) as js:
        kv = await ensure_key_value(js, f"test_{uuid.uuid4().hex[:8]}", NatsSettings(url=nats_url))
        store = ProtoStore(kv, common_pb2.Progress)

        def increment(current: common_pb2.Progress | None) -> common_pb2.Progress:
            done = current.done if current else 0
            return common_pb2.Progress(done=done + 1)

        await asyncio.gather(*(store.update("counter", increment) for _ in range(20)))

        stored = await store.get("counter")
        assert stored is not None
        assert stored[0].done == 20
        assert await store.keys() == ["counter"]
        assert not await store.create("counter", common_pb2.Progress())


async def test_ledger_claims_a_key_once_and_buckets_are_reopened_not_recreated(
    nats_url: str,
) -> None:
    async with jetstream(nats_url) as js:
        settings = NatsSettings(url=nats_url)
        bucket = f"ledger_{uuid.uuid4().hex[:8]}"
        ledger = ProcessedLedger(await ensure_key_value(js, bucket, settings))
        assert await ledger.claim("battle-1")
        assert not await ledger.claim("battle-1")

        reopened = ProcessedLedger(await ensure_key_value(js, bucket, settings))
        assert await reopened.seen("battle-1")
        assert not await reopened.seen("battle-2")

        objects = await ensure_object_store(js, f"objects_{uuid.uuid4().hex[:8]}", settings)
        await objects.put("report.json", b'{"ok": true}')
        assert (await objects.get("report.json")).data == b'{"ok": true}'
