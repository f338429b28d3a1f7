"""Bus handlers: the answers to the work the controller asked for.

Each answer is recorded in `WorkResults` under the id the controller asked with — the causing
event's id for generations, judgments and ratings, the job id for selection jobs, the run id for
training runs. Answers to work anyone else asked for are acknowledged and ignored. Recording is a
KV put under a fixed key, so a redelivered answer changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf.message import Message

from arena.common.v1 import common_pb2
from arena.selection.v1 import events_pb2 as selection_events
from arena.training.v1 import events_pb2 as training_events
from arena_core.bus.consumer import Delivery
from arena_core.bus.events import metadata_of
from arena_flywheel.store import WorkResults

# Every id the controller asks under starts with this (see domain.battles.work_id).
OURS = "fw-"


class PoolWatcher:
    """`DatasetPublished` of a pool: in continuous mode, a new batch of data for the runs that
    battle on that pool."""

    def __init__(self, on_pool: Callable[[common_pb2.DatasetRef], Awaitable[None]]) -> None:
        self._on_pool = on_pool

    async def __call__(self, event: selection_events.DatasetPublished, delivery: Delivery) -> None:
        if event.dataset.ref.kind == common_pb2.DATASET_KIND_POOL:
            await self._on_pool(event.dataset.ref)


class AnswerRecorder:
    def __init__(self, results: WorkResults) -> None:
        self._results = results

    async def _record(self, work_id: str, answer: Message) -> None:
        if work_id.startswith(OURS):
            await self._results.put(work_id, answer)

    async def by_cause(self, event: Message, delivery: Delivery) -> None:
        """Batches of answers or judgments, and ratings: keyed by the request's event id."""
        await self._record(metadata_of(event).causation_id, event)

    async def ignore(self, event: Message, delivery: Delivery) -> None:
        """Single-item results: the controller asks in batches only."""

    async def selection_job(
        self, event: selection_events.SelectionJobFinished, delivery: Delivery
    ) -> None:
        await self._record(event.job.job_id, event.job)

    async def training_run(
        self, event: training_events.TrainingRunFinished, delivery: Delivery
    ) -> None:
        await self._record(event.run_id, event)
