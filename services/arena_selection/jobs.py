"""Selection jobs: created once per job id, run in the background, observable while they run.

A job's record (``SelectionJob``) lives in JetStream KV, so every replica can answer GetJob,
ListJobs and WatchJob. Starting a job whose id exists returns the existing job (idempotent), and
the spec is validated before any job exists, so a bad request leaves nothing behind. Progress
is reported at most once per interval as ``SelectionJobProgressed``; a finished job publishes
``SelectionJobFinished``, and only a successful one publishes its ``DatasetPublished`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import struct_pb2

from arena.common.v1 import common_pb2
from arena.selection.v1 import events_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.bus.state import ProtoStore
from arena_core.errors import (
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_selection import metrics

log = logging.getLogger(__name__)

TERMINAL = {
    pb.SELECTION_JOB_STATE_SUCCEEDED,
    pb.SELECTION_JOB_STATE_FAILED,
    pb.SELECTION_JOB_STATE_CANCELLED,
}
STATE_LABELS = {
    pb.SELECTION_JOB_STATE_SUCCEEDED: "succeeded",
    pb.SELECTION_JOB_STATE_FAILED: "failed",
    pb.SELECTION_JOB_STATE_CANCELLED: "cancelled",
}
KIND_NAMES = {
    pb.SELECTION_JOB_KIND_INGEST: "ingest",
    pb.SELECTION_JOB_KIND_CLEAN: "clean",
    pb.SELECTION_JOB_KIND_SPLIT: "split",
    pb.SELECTION_JOB_KIND_TEST_SET: "test_set",
    pb.SELECTION_JOB_KIND_TRAINING_DATA: "training_data",
}
SPEC_KIND = {
    "ingest": pb.SELECTION_JOB_KIND_INGEST,
    "cleaning": pb.SELECTION_JOB_KIND_CLEAN,
    "split": pb.SELECTION_JOB_KIND_SPLIT,
    "test_set": pb.SELECTION_JOB_KIND_TEST_SET,
    "training_data": pb.SELECTION_JOB_KIND_TRAINING_DATA,
}


class Cancelled(Exception):
    """The job was asked to stop."""


@dataclass
class JobOutcome:
    outputs: list[pb.Dataset] = field(default_factory=list)
    removals: dict[str, int] = field(default_factory=dict)
    report: common_pb2.ArtifactRef | None = None


class JobContext:
    """Handed to the work: thread-safe progress reporting and cancellation checks."""

    def __init__(self, job: pb.SelectionJob) -> None:
        self.job = job
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self.latest: tuple[str, int, int | None] = ("queued", 0, None)
        self.version = 0
        self.reported = 0

    def progress(self, step: str, done: int, total: int | None) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        with self._lock:
            self.latest = (step, done, total)
            self.version += 1

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()


Work = Callable[[pb.SelectionJob, JobContext], Awaitable[JobOutcome]]
Validate = Callable[[pb.SelectionJobSpec], Awaitable[None]]


def spec_kind(spec: pb.SelectionJobSpec) -> int:
    which = spec.WhichOneof("spec")
    if which is None:
        raise InvalidArgumentError("the job spec is empty", where="spec")
    return SPEC_KIND[which]


class JobManager:
    def __init__(
        self,
        jobs: ProtoStore[pb.SelectionJob],
        publisher: EventPublisher,
        validate: Validate,
        work: Work,
        *,
        max_concurrent: int = 2,
        progress_interval: float = 1.0,
    ) -> None:
        self._jobs = jobs
        self._publisher = publisher
        self._validate = validate
        self._work = work
        self._slots = asyncio.Semaphore(max_concurrent)
        self._interval = progress_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._contexts: dict[str, JobContext] = {}

    async def submit(
        self,
        spec: pb.SelectionJobSpec,
        job_id: str = "",
        context: common_pb2.WorkContext | None = None,
        *,
        correlation_id: str = "",
    ) -> pb.SelectionJob:
        """Validates, records and starts a job; an existing job id returns that job."""
        if job_id:
            existing = await self._jobs.get(job_id)
            if existing is not None:
                return existing[0]
        kind = spec_kind(spec)
        await self._validate(spec)
        job = pb.SelectionJob(
            job_id=job_id or uuid.uuid4().hex,
            kind=kind,  # type: ignore[arg-type]
            state=pb.SELECTION_JOB_STATE_PENDING,
            spec=spec,
            step="queued",
        )
        if context is not None:
            job.context.CopyFrom(context)
        job.created_at.FromDatetime(datetime.now(UTC))
        if not await self._jobs.create(job.job_id, job):
            stored = await self._jobs.get(job.job_id)
            assert stored is not None
            return stored[0]
        self._start(job, correlation_id)
        return job

    def _start(self, job: pb.SelectionJob, correlation_id: str) -> None:
        task = asyncio.create_task(self._run(job, correlation_id), name=f"job-{job.job_id}")
        self._tasks[job.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.job_id, None))

    async def run_to_completion(
        self,
        spec: pb.SelectionJobSpec,
        job_id: str,
        context: common_pb2.WorkContext | None,
        correlation_id: str = "",
    ) -> pb.SelectionJob:
        """For the work queue: start (or resume after a crash) and wait for the terminal state."""
        job = await self.submit(spec, job_id, context, correlation_id=correlation_id)
        if job.state not in TERMINAL and job.job_id not in self._tasks:
            # Recorded by a replica that died before finishing: run it here.
            self._start(job, correlation_id)
        task = self._tasks.get(job.job_id)
        if task is not None:
            await asyncio.shield(task)
        return await self.get(job.job_id)

    async def get(self, job_id: str) -> pb.SelectionJob:
        if not job_id:
            raise InvalidArgumentError("give a job id", where="job_id")
        found = await self._jobs.get(job_id)
        if found is None:
            raise NotFoundError(f"job_id: job {job_id!r} does not exist")
        return found[0]

    async def list_jobs(self, kind: int = 0, state: int = 0) -> list[pb.SelectionJob]:
        jobs = []
        for key in await self._jobs.keys():
            found = await self._jobs.get(key)
            if found is None:
                continue
            job = found[0]
            if (kind and job.kind != kind) or (state and job.state != state):
                continue
            jobs.append(job)
        jobs.sort(key=lambda job: (-job.created_at.seconds, -job.created_at.nanos, job.job_id))
        return jobs

    async def watch(self, job_id: str, poll: float = 0.2) -> AsyncIterator[pb.SelectionJob]:
        last = b""
        while True:
            job = await self.get(job_id)
            encoded = job.SerializeToString(deterministic=True)
            if encoded != last:
                last = encoded
                yield job
            if job.state in TERMINAL:
                return
            await asyncio.sleep(poll)

    async def cancel(self, job_id: str) -> pb.SelectionJob:
        job = await self.get(job_id)
        if job.state in TERMINAL:
            return job
        context = self._contexts.get(job_id)
        if context is not None:
            context.cancelled.set()
            task = self._tasks.get(job_id)
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), timeout=30)
            return await self.get(job_id)

        # Not running here: pending in a queue, or its replica is gone.
        def cancelled(current: pb.SelectionJob | None) -> pb.SelectionJob:
            assert current is not None
            if current.state not in TERMINAL:
                current.state = pb.SELECTION_JOB_STATE_CANCELLED
                current.finished_at.FromDatetime(datetime.now(UTC))
            return current

        return await self._jobs.update(job_id, cancelled)

    async def close(self) -> None:
        for context in self._contexts.values():
            context.cancelled.set()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- running -----------------------------------------------------------------------------

    async def _update(
        self, job_id: str, change: Callable[[pb.SelectionJob], None]
    ) -> pb.SelectionJob:
        def apply(current: pb.SelectionJob | None) -> pb.SelectionJob:
            assert current is not None
            change(current)
            return current

        return await self._jobs.update(job_id, apply)

    async def _run(self, job: pb.SelectionJob, correlation_id: str) -> None:
        kind = KIND_NAMES.get(job.kind, "unknown")
        context = JobContext(job)
        self._contexts[job.job_id] = context
        try:
            async with self._slots:
                current = await self.get(job.job_id)
                if current.state in TERMINAL:  # cancelled while it waited for a slot
                    return
                await self._execute(job, context, kind, correlation_id)
        finally:
            self._contexts.pop(job.job_id, None)

    async def _execute(
        self, job: pb.SelectionJob, context: JobContext, kind: str, correlation_id: str
    ) -> None:
        started = time.monotonic()

        def running(current: pb.SelectionJob) -> None:
            current.state = pb.SELECTION_JOB_STATE_RUNNING
            current.started_at.FromDatetime(datetime.now(UTC))
            current.step = "started"

        await self._update(job.job_id, running)
        metrics.JOBS_RUNNING.labels(kind).inc()
        reporter = asyncio.create_task(self._report_progress(job, context, correlation_id))
        outcome: JobOutcome | None = None
        failure: common_pb2.Failure | None = None
        state = pb.SELECTION_JOB_STATE_SUCCEEDED
        try:
            outcome = await self._work(job, context)
            context.check()
        except Cancelled:
            state = pb.SELECTION_JOB_STATE_CANCELLED
        except ArenaError as error:
            state = pb.SELECTION_JOB_STATE_FAILED
            failure = _failure(error)
        except Exception as error:
            log.exception("selection job %s failed", job.job_id)
            state = pb.SELECTION_JOB_STATE_FAILED
            failure = common_pb2.Failure(reason="INTERNAL", message=repr(error), retryable=True)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            # The last steps of a quick job fall between two ticks: report them too.
            await self._flush_progress(job, context, correlation_id)
            metrics.JOBS_RUNNING.labels(kind).dec()

        def finished(current: pb.SelectionJob) -> None:
            current.state = state
            current.finished_at.FromDatetime(datetime.now(UTC))
            current.step = "done" if state == pb.SELECTION_JOB_STATE_SUCCEEDED else current.step
            if failure is not None:
                current.failure.CopyFrom(failure)
            if outcome is not None and state == pb.SELECTION_JOB_STATE_SUCCEEDED:
                del current.outputs[:]
                current.outputs.extend(dataset.ref for dataset in outcome.outputs)
                for reason, removed in outcome.removals.items():
                    current.removals.add(reason=reason, removed=removed)
                if outcome.report is not None:
                    current.report.CopyFrom(outcome.report)
                if current.progress.HasField("total"):
                    current.progress.done = current.progress.total

        final = await self._update(job.job_id, finished)
        metrics.JOBS_FINISHED.labels(kind, STATE_LABELS[state]).inc()
        metrics.JOB_SECONDS.labels(kind).observe(time.monotonic() - started)
        if outcome is not None and state == pb.SELECTION_JOB_STATE_SUCCEEDED:
            for dataset in outcome.outputs:
                await self._publisher.publish(
                    events_pb2.DatasetPublished(
                        dataset=dataset, job_id=job.job_id, context=job.context
                    ),
                    event_id=stable_event_id(
                        "dataset-published", job.job_id, dataset.ref.dataset_id
                    ),
                    correlation_id=correlation_id or job.context.run_id,
                )
        await self._publisher.publish(
            events_pb2.SelectionJobFinished(job=final),
            event_id=stable_event_id("selection-job-finished", job.job_id),
            correlation_id=correlation_id or job.context.run_id,
        )

    async def _report_progress(
        self, job: pb.SelectionJob, context: JobContext, correlation_id: str
    ) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._flush_progress(job, context, correlation_id)

    async def _flush_progress(
        self, job: pb.SelectionJob, context: JobContext, correlation_id: str
    ) -> None:
        """Records and announces the latest progress, if it moved since the last report."""
        if context.version == context.reported:
            return
        context.reported = context.version
        step, done, total = context.latest
        progress = common_pb2.Progress(done=done, unit="records")
        if total is not None:
            progress.total = total

        def moved(current: pb.SelectionJob) -> None:
            if current.state not in TERMINAL:
                current.step = step
                current.progress.CopyFrom(progress)

        try:
            await self._update(job.job_id, moved)
            await self._publisher.publish(
                events_pb2.SelectionJobProgressed(
                    job_id=job.job_id,
                    kind=job.kind,
                    step=step,
                    progress=progress,
                    context=job.context,
                ),
                correlation_id=correlation_id or job.context.run_id,
            )
        except Exception as error:  # noqa: BLE001 - progress is best effort; the job goes on
            log.warning("could not report progress of %s: %r", job.job_id, error)


def _failure(error: ArenaError) -> common_pb2.Failure:
    reason = {
        InvalidArgumentError: "INVALID_ARGUMENT",
        NotFoundError: "NOT_FOUND",
        FailedPreconditionError: "FAILED_PRECONDITION",
        UnavailableError: "UNAVAILABLE",
    }.get(type(error), type(error).__name__.removesuffix("Error").upper() or "ERROR")
    failure = common_pb2.Failure(
        reason=reason, message=str(error), retryable=isinstance(error, UnavailableError)
    )
    where = getattr(error, "where", None)
    if where:
        failure.details.CopyFrom(
            struct_pb2.Struct(fields={"where": struct_pb2.Value(string_value=where)})
        )
    return failure
