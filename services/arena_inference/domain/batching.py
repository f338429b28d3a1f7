"""Dynamic batching: concurrent requests that arrive within a short window run as one batch.

A batch is collected while requests keep arriving: it goes once no request has arrived for
`window_seconds`, once it is full, or `max_wait_seconds` after its first request, whichever comes
first (a lone request waits one window). Requests that arrive while a batch runs form the next
one and go as soon as it is done.
Batches are computed one at a time, since one model serves them all. With ``max_in_flight`` above
one, a full batch is handed over while the previous one is still being computed, so a backend
that queues its work (a worker process) starts the next batch the moment it finishes one instead
of idling until this event loop gets round to handing it over; only a full batch goes ahead of
time, so batches never get smaller than they would have been. Items with different keys (e.g.
different LoRA adapters) never share a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

RunBatch = Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT | BaseException]]]


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    key: Hashable
    future: asyncio.Future[ResultT] = field(repr=False)


class DynamicBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: RunBatch[ItemT, ResultT],
        *,
        max_batch_size: int,
        window_seconds: float,
        max_wait_seconds: float | None = None,
        key: Callable[[ItemT], Hashable] = lambda _: None,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._run_batch = run_batch
        self._max = max_batch_size
        self._window = window_seconds
        self._max_wait = 10 * window_seconds if max_wait_seconds is None else max_wait_seconds
        self._key = key
        self._max_in_flight = max_in_flight
        self._waiting: list[_Pending[ItemT, ResultT]] = []
        self._arrived = asyncio.Event()
        # Set on every arrival and every finished batch: what the worker waits for while a
        # batch is being computed.
        self._changed = asyncio.Event()
        self._running: dict[asyncio.Task[None], list[_Pending[ItemT, ResultT]]] = {}
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def submit(self, item: ItemT) -> ResultT:
        return await self.submit_many([item])[0]

    def submit_many(self, items: Sequence[ItemT]) -> list[asyncio.Future[ResultT]]:
        """Queues items together (so they can share a batch); one future per item."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[ResultT]] = []
        for item in items:
            future: asyncio.Future[ResultT] = loop.create_future()
            self._waiting.append(_Pending(item, self._key(item), future))
            futures.append(future)
        self._arrived.set()
        self._changed.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="dynamic-batcher")
        return futures

    async def close(self) -> None:
        """Cancels every request, waiting or being computed."""
        unanswered = [*self._waiting, *(p for batch in self._running.values() for p in batch)]
        tasks = [task for task in (self._worker, *self._running) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in unanswered:
            if not pending.future.done():
                pending.future.cancel()
        self._waiting.clear()
        self._running.clear()

    async def _work(self) -> None:
        while self._waiting:
            if self._running:
                # A batch is being computed: the next one goes ahead of time only when there is
                # room for it and it is full; otherwise wait for an arrival or the end of a batch.
                self._changed.clear()
                if len(self._running) >= self._max_in_flight or not self._first_key_full():
                    await self._changed.wait()
                    continue
            else:
                await self._collect()
            batch = self._take()
            if batch:
                self._launch(batch)
        self._arrived.clear()

    def _launch(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        task = asyncio.create_task(self._run(batch), name="dynamic-batch")
        self._running[task] = batch
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._changed.set()

    def _first_key_full(self) -> bool:
        return bool(self._waiting) and self._count_of(self._waiting[0].key) >= self._max

    async def _collect(self) -> None:
        """Waits while requests keep arriving, until the first key's batch is full."""
        if self._window <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while self._count_of(self._waiting[0].key) < self._max:
            wait = min(self._window, deadline - loop.time())
            if wait <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return  # a quiet gap: go with what has arrived

    def _count_of(self, key: Hashable) -> int:
        return sum(1 for pending in self._waiting if pending.key == key)

    def _take(self) -> list[_Pending[ItemT, ResultT]]:
        key = self._waiting[0].key
        batch: list[_Pending[ItemT, ResultT]] = []
        rest: list[_Pending[ItemT, ResultT]] = []
        for pending in self._waiting:
            if pending.future.cancelled():
                continue  # the caller gave up; never spend compute on it
            if pending.key == key and len(batch) < self._max:
                batch.append(pending)
            else:
                rest.append(pending)
        self._waiting = rest
        return batch

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        self.batches_run += 1
        try:
            results = await self._run_batch([pending.item for pending in batch])
        except Exception as error:  # noqa: BLE001 - the whole batch failed: every caller gets it
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if len(results) != len(batch):
            mismatch = RuntimeError(f"batch of {len(batch)} returned {len(results)} results")
            results = [mismatch] * len(batch)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
