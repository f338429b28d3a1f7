"""Typed access to JetStream KV: protobuf values, compare-and-set updates, and an idempotency
ledger that makes event handlers safe against redelivery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

MessageT = TypeVar("MessageT", bound=Message)


class ProtoStore(Generic[MessageT]):
    """A KV bucket whose values are one protobuf message type."""

    def __init__(self, kv: KeyValue, message_type: type[MessageT]) -> None:
        self._kv = kv
        self._type = message_type

    async def get(self, key: str) -> tuple[MessageT, int] | None:
        """The value and its revision, or None when absent or deleted."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return self._type.FromString(entry.value), entry.revision or 0

    async def put(self, key: str, value: MessageT) -> int:
        return await self._kv.put(key, value.SerializeToString())

    async def create(self, key: str, value: MessageT) -> bool:
        """Writes only if the key is new; False if it already exists."""
        try:
            await self._kv.create(key, value.SerializeToString())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def update(
        self, key: str, change: Callable[[MessageT | None], MessageT], attempts: int = 20
    ) -> MessageT:
        """Read-modify-write with compare-and-set, retried when another writer got there first."""
        for _ in range(attempts):
            current = await self.get(key)
            value = change(current[0] if current else None)
            try:
                if current is None:
                    await self._kv.create(key, value.SerializeToString())
                else:
                    await self._kv.update(key, value.SerializeToString(), last=current[1])
            except KeyWrongLastSequenceError:
                continue
            return value
        raise RuntimeError(f"KV key {key!r} kept changing under {attempts} update attempts")

    async def keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except NoKeysError:  # how nats-py says "the bucket is empty"
            return []


class ProcessedLedger:
    """Remembers which idempotency keys have taken effect, so a redelivered event is a no-op.

    `claim(key)` succeeds once per key across all replicas and restarts (a KV create). Make the
    claim part of the effect — write the effect under the same key or claim after a keyed write —
    so a crash between the two never loses or doubles anything.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def seen(self, key: str) -> bool:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return False
        return entry.value is not None

    async def claim(self, key: str) -> bool:
        try:
            await self._kv.create(key, b"1")
        except KeyWrongLastSequenceError:
            return False
        return True
