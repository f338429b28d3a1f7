"""Bus handlers: selection work items, and judged battles collected per round."""

from __future__ import annotations

import logging

from nats.js.kv import KeyValue

from arena.judge.v1 import events_pb2 as judge_events
from arena.selection.v1 import events_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena_core.bus.consumer import Delivery, PermanentError
from arena_core.bus.events import metadata_of
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_selection.jobs import JobManager
from arena_selection.work import round_prefix

log = logging.getLogger(__name__)


class SelectionJobHandler:
    """`SelectionJobRequested`: run the job to its end before acknowledging (a crash means
    redelivery, and the same job id resumes rather than starting a second job)."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    async def __call__(self, event: events_pb2.SelectionJobRequested, delivery: Delivery) -> None:
        try:
            job = await self._jobs.run_to_completion(
                event.spec,
                event.job_id,
                event.context,
                correlation_id=metadata_of(event).correlation_id,
            )
        except (InvalidArgumentError, NotFoundError) as error:
            raise PermanentError(str(error)) from error
        if job.state == pb.SELECTION_JOB_STATE_FAILED and job.failure.retryable:
            raise RuntimeError(f"job {job.job_id} failed: {job.failure.message}")


class RoundJudgmentCollector:
    """`JudgmentCompleted` with a round id: kept (keyed by judgment id, so redelivery is a no-op)
    until a training-data job reads the round."""

    def __init__(self, rounds: KeyValue) -> None:
        self._rounds = rounds

    async def __call__(self, event: judge_events.JudgmentCompleted, delivery: Delivery) -> None:
        judgment = event.judgment
        if not judgment.round_id or not judgment.judgment_id:
            return
        key = round_prefix(judgment.round_id) + judgment.judgment_id
        await self._rounds.put(key, judgment.SerializeToString(deterministic=True))
