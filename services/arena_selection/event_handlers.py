"""Bus handlers: selection work items, and judged battles collected per round."""

from __future__ import annotations

import logging

from nats.js.kv import KeyValue

from arena.judge.v1 import events_pb2 as judge_events
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.selection.v1 import events_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena_core.bus.consumer import Delivery, PermanentError
from arena_core.bus.events import metadata_of
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_core.hashing import content_hash
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
    """Judgments with a round id (`JudgmentCompleted`, or each of a `JudgmentBatchCompleted`):
    kept until a training-data job reads the round.

    The key is the battle and the judgment id together: the judge caches by content, so two
    battles whose answers happen to be identical share a judgment id, yet each is its own battle
    (another opponent, another prompt). Redelivery rewrites the same keys: a no-op.
    """

    def __init__(self, rounds: KeyValue) -> None:
        self._rounds = rounds

    async def __call__(self, event: judge_events.JudgmentCompleted, delivery: Delivery) -> None:
        await self._keep(event.judgment)

    async def on_batch(
        self, event: judge_events.JudgmentBatchCompleted, delivery: Delivery
    ) -> None:
        for judgment in event.judgments:
            await self._keep(judgment)

    async def _keep(self, judgment: judge_pb.Judgment) -> None:
        if not judgment.round_id or not judgment.judgment_id:
            return
        key = round_prefix(judgment.round_id) + judgment_key(judgment)
        await self._rounds.put(key, judgment.SerializeToString(deterministic=True))


def judgment_key(judgment: judge_pb.Judgment) -> str:
    if not judgment.battle_id:
        return judgment.judgment_id
    return content_hash("round-judgment", judgment.battle_id, judgment.judgment_id)[:40]
