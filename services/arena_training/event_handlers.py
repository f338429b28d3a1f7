"""The `training-runs` work-queue consumer: each `TrainingRequested` becomes a run.

The handler stores and schedules the run (or records it as REJECTED and answers with
`TrainingRunFinished`) and acknowledges; the run itself outlives the message. A redelivered or
re-published request with a known run id changes nothing.
"""

from __future__ import annotations

import logging

from arena.training.v1 import events_pb2
from arena_core.bus.consumer import Delivery
from arena_training.supervisor import RunSupervisor

log = logging.getLogger(__name__)


class TrainingRequestedHandler:
    def __init__(self, supervisor: RunSupervisor) -> None:
        self._supervisor = supervisor

    async def __call__(self, event: events_pb2.TrainingRequested, delivery: Delivery) -> None:
        run = await self._supervisor.submit(event)
        log.info(
            "training request handled",
            extra={"run_id": run.run_id, "state": run.state, "delivery": delivery.attempt},
        )
