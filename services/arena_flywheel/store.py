"""The controller's state in JetStream KV: runs, and the results of the work they asked for.

The runs bucket (`flywheel-runs`) holds one `RunRecord` per run (compare-and-set updates). The
results bucket (`flywheel-results`) holds what came back for each piece of work, under the id the
controller chose when it asked (an event id, a selection job id, a training run id): the event
handlers write it, the step that asked waits for it. Because both the ask and the answer are keyed
by that id, a controller that dies while waiting asks again under the same id after a restart and
finds the answer already there, or still on its way — nothing is done twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence

from google.protobuf import any_pb2
from google.protobuf.message import Message
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena_core.bus.state import ProtoStore


class RunStore(ProtoStore[pb.RunRecord]):
    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, pb.RunRecord)

    async def all(self) -> list[pb.RunRecord]:
        records = []
        for key in await self.keys():
            found = await self.get(key)
            if found is not None:
                records.append(found[0])
        return records


class WorkResults:
    """Answers to the controller's work, by the id it asked under; waiters wake when one lands."""

    def __init__(self, kv: KeyValue, poll_seconds: float = 2.0) -> None:
        self._kv = kv
        self._poll = poll_seconds
        self._arrived: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def put(self, work_id: str, answer: Message) -> None:
        packed = any_pb2.Any()
        packed.Pack(answer)
        await self._kv.put(work_id, packed.SerializeToString(deterministic=True))
        self._arrived[work_id].set()

    async def get(self, work_id: str) -> any_pb2.Any | None:
        try:
            entry = await self._kv.get(work_id)
        except KeyNotFoundError:
            return None
        return any_pb2.Any.FromString(entry.value) if entry.value else None

    async def wait_all(
        self,
        work_ids: Sequence[str],
        on_progress: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> dict[str, any_pb2.Any]:
        """Every answer, once all have arrived. Answers this process's handlers write wake the
        waiter at once; answers written by another replica, or before a restart, are found by a
        sweep of the bucket every `poll_seconds`."""
        found: dict[str, any_pb2.Any] = {}
        missing = set(work_ids)
        total = len(missing)
        to_check = set(missing)
        while True:
            for work_id in to_check:
                payload = await self.get(work_id)
                if payload is not None:
                    found[work_id] = payload
                    missing.discard(work_id)
                    self._arrived.pop(work_id, None)
            if on_progress is not None and to_check:
                await on_progress(len(found), total)
            if not missing:
                return found
            to_check = await self._arrivals(missing) or set(missing)

    async def _arrivals(self, missing: set[str]) -> set[str]:
        """Ids among `missing` whose answers this process saw arrive, or none after the poll."""
        events = {work_id: self._arrived[work_id] for work_id in missing}
        landed = {work_id for work_id, event in events.items() if event.is_set()}
        if landed:
            return landed
        waiters = [asyncio.ensure_future(event.wait()) for event in events.values()]
        try:
            await asyncio.wait(waiters, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waiters, return_exceptions=True)
        return {work_id for work_id, event in events.items() if event.is_set()}
