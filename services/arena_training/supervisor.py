"""The run supervisor: accepts runs, schedules them, drives each attempt through a runner, and
turns what the worker reports into state, events and metrics.

A run's life: PENDING (stored, waiting for a slot) → RUNNING (an attempt's job started) → the
worker's markers update progress → on its result the checkpoint is registered and
`CheckpointRegistered` published, then SUCCEEDED and `TrainingRunFinished`. An attempt that
ends without a result is decided by `domain.outcome.decide`: failed with the worker's reason,
or resumed from the last checkpoint as the next attempt. Everything is in JetStream KV first and
published with deterministic event ids, so a crash at any point repeats nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from arena.common.v1 import common_pb2
from arena.training.v1 import events_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.bus.events import stable_event_id
from arena_core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from arena_core.hashing import content_hash
from arena_training import metrics
from arena_training.convert import STAGE_TO_PROTO
from arena_training.domain import progress as markers
from arena_training.domain.job import run_dir, valid_run_id
from arena_training.domain.outcome import AttemptEnd, decide
from arena_training.planning import RUNNER_KINDS, RUNNER_NAMES, Plan, RunPlanner
from arena_training.runners.base import JobHandle, JobRunner, LaunchRequest, LogLine
from arena_training.settings import TrainingOptions
from arena_training.store import CheckpointRegistry, RunLeases, RunRepository, is_terminal

log = logging.getLogger(__name__)

# Errors that mean "this request can never run as given": the run is REJECTED.
REJECTIONS = (InvalidArgumentError, NotFoundError, FailedPreconditionError, AlreadyExistsError)

_STATUS_LABEL = {
    pb.TRAINING_RUN_STATE_SUCCEEDED: "succeeded",
    pb.TRAINING_RUN_STATE_FAILED: "failed",
    pb.TRAINING_RUN_STATE_CANCELLED: "cancelled",
    pb.TRAINING_RUN_STATE_REJECTED: "rejected",
}

_LAUNCH_RETRIES = 5


class EventSink(Protocol):
    async def publish(
        self,
        event: Message,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        caused_by: Message | None = None,
    ) -> bool: ...


def _now() -> datetime:
    return datetime.now(UTC)


def recipe_label(stage: common_pb2.TrainingStage.ValueType) -> str:
    return {
        common_pb2.TRAINING_STAGE_SFT: "sft",
        common_pb2.TRAINING_STAGE_DPO: "dpo",
        common_pb2.TRAINING_STAGE_REWARD_MODEL: "reward_model",
        common_pb2.TRAINING_STAGE_RL: "rl",
    }.get(stage, "unknown")


class _Attempt:
    """What the monitor learned from one attempt's log."""

    def __init__(self, failure_lines: int) -> None:
        self.result: markers.Result | None = None
        self.error: markers.Failed | None = None
        self.tail: deque[str] = deque(maxlen=max(failure_lines, 1))


class RunSupervisor:
    def __init__(
        self,
        *,
        runs: RunRepository,
        checkpoints: CheckpointRegistry,
        planner: RunPlanner,
        runners: Mapping[str, JobRunner],
        events: EventSink,
        options: TrainingOptions,
        leases: RunLeases | None = None,
    ) -> None:
        self._runs = runs
        self._checkpoints = checkpoints
        self._planner = planner
        self._runners = dict(runners)
        self._events = events
        self._options = options
        self._work_dir = options.resolved_work_dir()
        self._store_dir = options.resolved_checkpoint_store()
        self._slots = asyncio.Semaphore(options.max_concurrent_runs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._handles: dict[str, JobHandle] = {}
        self._cancel_requested: set[str] = set()
        self._closing = False
        self._recovery: asyncio.Task[None] | None = None
        self._leases = leases

    # --- accepting runs ----------------------------------------------------------------------

    async def start_run(
        self,
        spec: pb.TrainingRunSpec,
        *,
        run_id: str = "",
        validate_only: bool = False,
        context: common_pb2.WorkContext | None = None,
        origin: common_pb2.EventMetadata | None = None,
    ) -> pb.TrainingRun:
        """Validates and stores a run, then schedules it; a known run id returns that run."""
        if run_id:
            _check_run_id(run_id, where="run_id")
            existing = await self._runs.get(run_id)
            if existing is not None:
                return existing
        else:
            run_id = "run-" + uuid.uuid4().hex[:16]
        plan = await self._planner.plan(spec, run_id)
        run = self._new_run(run_id, spec, plan, context)
        if validate_only:
            run.state = pb.TRAINING_RUN_STATE_UNSPECIFIED
            return run
        if self._leases is not None:
            # Held before the run exists, so no other replica's recovery adopts it meanwhile.
            await self._leases.acquire(run_id)
        if not await self._runs.create(run, origin):
            existing = await self._runs.get(run_id)
            assert existing is not None
            return existing
        self._schedule(run_id)
        return run

    async def submit(self, request: events_pb2.TrainingRequested) -> pb.TrainingRun:
        """The work-queue path: like StartRun, but an invalid request is recorded as REJECTED
        and answered with `TrainingRunFinished`, so the requester always hears back."""
        run_id = (
            request.run_id
            or "run-" + content_hash("training-request", request.metadata.event_id)[:16]
        )
        _check_run_id(run_id, where="TrainingRequested.run_id")
        existing = await self._runs.get(run_id)
        if existing is not None:
            return existing
        try:
            return await self.start_run(
                request.spec, run_id=run_id, context=request.context, origin=request.metadata
            )
        except REJECTIONS as error:
            log.warning("training request rejected", extra={"run_id": run_id, "error": str(error)})
            return await self._reject(run_id, request, error)

    async def _reject(
        self, run_id: str, request: events_pb2.TrainingRequested, error: Exception
    ) -> pb.TrainingRun:
        run = pb.TrainingRun(run_id=run_id, state=pb.TRAINING_RUN_STATE_REJECTED)
        run.spec.CopyFrom(request.spec)
        run.context.CopyFrom(request.context)
        stage = _stage_of_spec(request.spec)
        run.stage = stage
        run.failure.CopyFrom(
            _failure(
                _reason_of(error),
                str(error),
                retryable=False,
                details={"where": getattr(error, "where", None) or ""},
            )
        )
        now = _now()
        run.created_at.FromDatetime(now)
        run.finished_at.FromDatetime(now)
        if await self._runs.create(run, request.metadata):
            metrics.observe_finished(run_id, recipe_label(stage), "rejected")
        stored = await self._runs.get(run_id)
        assert stored is not None
        await self._publish_finished(stored)
        return stored

    def _new_run(
        self,
        run_id: str,
        spec: pb.TrainingRunSpec,
        plan: Plan,
        context: common_pb2.WorkContext | None,
    ) -> pb.TrainingRun:
        run = pb.TrainingRun(run_id=run_id, state=pb.TRAINING_RUN_STATE_PENDING)
        run.spec.CopyFrom(spec)
        # The stored spec carries resolved datasets, so a resume needs no catalog lookup.
        del run.spec.datasets[:]
        run.spec.datasets.extend(plan.resolved_datasets)
        del run.spec.eval_datasets[:]
        run.spec.eval_datasets.extend(plan.resolved_eval_datasets)
        run.spec.output_model_name = plan.model_name
        run.spec.placement.runner = RUNNER_KINDS[plan.placement.runner]
        run.stage = STAGE_TO_PROTO[plan.stage]
        run.runner = RUNNER_KINDS[plan.placement.runner]
        run.created_at.FromDatetime(_now())
        if context is not None:
            run.context.CopyFrom(context)
        return run

    # --- reading -----------------------------------------------------------------------------

    async def get(self, run_id: str) -> pb.TrainingRun:
        run = await self._runs.get(run_id)
        if run is None:
            raise NotFoundError(f"run_id: no training run {run_id!r}")
        return run

    async def list(
        self,
        *,
        state: pb.TrainingRunState.ValueType = pb.TRAINING_RUN_STATE_UNSPECIFIED,
        stage: common_pb2.TrainingStage.ValueType = common_pb2.TRAINING_STAGE_UNSPECIFIED,
    ) -> list[pb.TrainingRun]:
        runs = [
            run
            for run in await self._runs.list()
            if (not state or run.state == state) and (not stage or run.stage == stage)
        ]
        runs.sort(key=lambda r: (r.created_at.seconds, r.created_at.nanos, r.run_id), reverse=True)
        return runs

    async def watch(self, run_id: str) -> AsyncIterator[pb.StreamRunEventsResponse]:
        """The run, then each state change (whole run) or progress report, until it ends."""
        await self.get(run_id)
        last: pb.TrainingRun | None = None
        async for run in self._runs.watch(run_id):
            if last is None or _state_changed(last, run):
                yield pb.StreamRunEventsResponse(run=run)
            elif run.progress != last.progress:
                yield pb.StreamRunEventsResponse(progress=run.progress)
            last = run
            if is_terminal(run.state):
                return

    async def logs(
        self, run_id: str, *, follow: bool, tail_lines: int | None
    ) -> AsyncIterator[LogLine]:
        run = await self.get(run_id)
        if follow:
            # A pending run has no log yet: wait for its first attempt (or its end).
            while run.attempt == 0 and not is_terminal(run.state):
                await asyncio.sleep(0.5)
                run = await self.get(run_id)
        if run.attempt == 0:
            return
        runner = self._runner_for(run)
        attempts = [run.attempt] if tail_lines is not None else range(1, run.attempt + 1)
        for attempt in attempts:
            current = attempt == run.attempt
            handle = JobHandle(
                runner=runner.kind,
                run_id=run_id,
                attempt=attempt,
                name=run.job_name if current else "",
                kind="",
                num_nodes=run.spec.placement.num_nodes or 1,
            )
            async for line in runner.logs(
                handle,
                follow=follow and current and not is_terminal(run.state),
                tail_lines=tail_lines if current else None,
            ):
                yield line

    # --- cancelling --------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> pb.TrainingRun:
        run = await self.get(run_id)
        if is_terminal(run.state):
            return run
        self._cancel_requested.add(run_id)
        handle = self._handles.get(run_id)
        task = self._tasks.get(run_id)
        if handle is not None:
            await self._runners[handle.runner].cancel(handle)
        if task is not None and not task.done():
            if handle is None:
                task.cancel()  # still waiting for a slot: nothing runs yet
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=120)
        run = await self.get(run_id)
        if not is_terminal(run.state):
            # Not driven here (another replica, or between attempts): stop its job by name.
            if run.job_name and run.attempt:
                runner = self._runner_for(run)
                attached = await runner.attach(run_id, run.attempt, run.job_name)
                if attached is not None:
                    await runner.cancel(attached)
            run = await self._finish(
                run_id,
                pb.TRAINING_RUN_STATE_CANCELLED,
                failure=_failure("CANCELLED", "cancelled on request", retryable=False),
            )
        return run

    # --- driving -----------------------------------------------------------------------------

    def start_recovery(self) -> None:
        """Re-adopts stored runs, then keeps this replica's leases fresh and adopts the runs of
        replicas that stopped renewing theirs; in the background (the service must not wait)."""
        self._recovery = asyncio.create_task(self._maintain(), name="training-recovery")

    async def _maintain(self) -> None:
        await self.recover()
        interval = self._options.lease_seconds / 3
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            rounds += 1
            try:
                if self._leases is not None:
                    for run_id in list(self._tasks):
                        await self._leases.renew(run_id)
                if rounds % 3 == 0:
                    await self.recover()
            except Exception:
                log.exception("lease renewal or recovery failed; retrying")

    async def recover(self) -> None:
        """After a restart: re-adopt every run that was pending or running."""
        for run in await self._runs.list():
            if is_terminal(run.state) or run.run_id in self._tasks:
                continue
            if self._leases is not None and not await self._leases.acquire(run.run_id):
                continue  # another replica drives it
            attached = None
            if run.state == pb.TRAINING_RUN_STATE_RUNNING and run.job_name:
                runner = self._runners.get(RUNNER_NAMES.get(run.runner, ""))
                if runner is not None:
                    attached = await runner.attach(run.run_id, run.attempt, run.job_name)
            log.info(
                "recovering run",
                extra={"run_id": run.run_id, "attached": attached is not None},
            )
            self._schedule(run.run_id, attached)

    def _schedule(self, run_id: str, attached: JobHandle | None = None) -> None:
        task = asyncio.create_task(self._drive(run_id, attached), name=f"training-run-{run_id}")
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    async def close(self) -> None:
        """Stops driving runs, leaving them RUNNING in KV for the next start to recover; jobs
        of runners that cannot be re-attached (local processes) are stopped."""
        if self._closing:
            return
        self._closing = True
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        handles = dict(self._handles)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run_id, handle in handles.items():
            runner = self._runners[handle.runner]
            if not runner.detach_on_shutdown:
                log.info("stopping the job of a run for shutdown", extra={"run_id": run_id})
                with contextlib.suppress(Exception):
                    await runner.cancel(handle)
        if self._leases is not None:
            # Let another replica adopt the runs at once instead of after the lease lapses.
            for run_id in handles:
                with contextlib.suppress(Exception):
                    await self._leases.release(run_id)
        for runner in self._runners.values():
            with contextlib.suppress(Exception):
                await runner.close()

    async def _drive(self, run_id: str, attached: JobHandle | None) -> None:
        async with self._slots:
            run = await self._runs.get(run_id)
            if run is None or is_terminal(run.state):
                return
            label = recipe_label(run.stage)
            metrics.TRAINING_RUNS_ACTIVE.labels(label).inc()
            try:
                await self._attempts(run, attached)
            except asyncio.CancelledError:
                if not self._closing and run_id in self._cancel_requested:
                    await self._finish(
                        run_id,
                        pb.TRAINING_RUN_STATE_CANCELLED,
                        failure=_failure("CANCELLED", "cancelled on request", retryable=False),
                    )
                raise
            except Exception as error:
                log.exception("training run failed in the supervisor", extra={"run_id": run_id})
                await self._finish(
                    run_id,
                    pb.TRAINING_RUN_STATE_FAILED,
                    failure=_failure(_reason_of(error), str(error), retryable=False),
                )
            finally:
                metrics.TRAINING_RUNS_ACTIVE.labels(label).dec()
                self._handles.pop(run_id, None)
                self._cancel_requested.discard(run_id)
                if self._leases is not None and not self._closing:
                    with contextlib.suppress(Exception):
                        await self._leases.release(run_id)

    async def _attempts(self, run: pb.TrainingRun, attached: JobHandle | None) -> None:
        run_id = run.run_id
        while True:
            run = await self.get(run_id)
            if is_terminal(run.state):
                return
            if run_id in self._cancel_requested:
                await self._finish(
                    run_id,
                    pb.TRAINING_RUN_STATE_CANCELLED,
                    failure=_failure("CANCELLED", "cancelled on request", retryable=False),
                )
                return
            try:
                plan = await self._planner.plan(run.spec, run_id)
            except REJECTIONS as error:
                # Valid when accepted; something it needs is gone now (a deleted dataset file).
                await self._finish(
                    run_id,
                    pb.TRAINING_RUN_STATE_FAILED,
                    failure=_failure(_reason_of(error), str(error), retryable=False),
                )
                return
            if await self._checkpoints.get(plan.checkpoint_id) is not None:
                # Registered before a restart cut the run short: only the ending is missing.
                await self._succeed_registered(run_id, plan.checkpoint_id)
                return
            handle = attached or await self._launch(run, plan)
            attached = None
            self._handles[run_id] = handle
            if run_id in self._cancel_requested:
                await self._runners[handle.runner].cancel(handle)
            attempt, end = await self._monitor(run_id, handle)
            if self._closing:
                return  # shutting down: the next start recovers the run from its state
            self._handles.pop(run_id, None)
            current = await self.get(run_id)
            if is_terminal(current.state):
                await self._runners[handle.runner].cleanup(handle)
                return  # cancelled (or finished) elsewhere while it ran
            decision = decide(end, attempt=handle.attempt, max_attempts=self._options.max_attempts)
            await self._runners[handle.runner].cleanup(handle)
            if decision.action == "succeed":
                assert attempt.result is not None
                await self._succeed(run_id, plan, attempt.result)
                return
            if decision.action == "cancel":
                await self._finish(
                    run_id,
                    pb.TRAINING_RUN_STATE_CANCELLED,
                    failure=_failure("CANCELLED", "cancelled on request", retryable=False),
                )
                return
            if decision.action == "fail":
                await self._finish(
                    run_id,
                    pb.TRAINING_RUN_STATE_FAILED,
                    failure=_failure(
                        decision.reason,
                        decision.message,
                        retryable=decision.retryable,
                        details={
                            "attempt": str(handle.attempt),
                            "exit_code": "" if end.exit_code is None else str(end.exit_code),
                            "log_tail": "\n".join(attempt.tail),
                        },
                    ),
                )
                return
            log.warning(
                "training attempt interrupted; resuming from the last checkpoint",
                extra={"run_id": run_id, "attempt": handle.attempt, "why": decision.message},
            )

    async def _launch(self, run: pb.TrainingRun, plan: Plan) -> JobHandle:
        attempt = run.attempt + 1
        runner = self._runners[plan.placement.runner]
        folder = run_dir(self._work_dir, run.run_id)
        job = plan.job(run.run_id, attempt, self._work_dir, self._store_dir)
        resumed_from = _last_checkpoint_step(Path(job.output_dir))
        request = LaunchRequest(
            run_id=run.run_id,
            attempt=attempt,
            job=job,
            run_dir=folder,
            placement=plan.placement,
            labels=dict(run.spec.labels),
        )
        delay = 1.0
        for retry in range(_LAUNCH_RETRIES):
            try:
                handle = await runner.start(request)
                break
            except REJECTIONS:
                raise
            except Exception as error:
                if retry == _LAUNCH_RETRIES - 1:
                    raise
                log.warning(
                    "could not start a training job; retrying",
                    extra={"run_id": run.run_id, "error": repr(error)},
                )
                await asyncio.sleep(delay)
                delay *= 2

        def started(stored: pb.TrainingRun) -> None:
            stored.state = pb.TRAINING_RUN_STATE_RUNNING
            stored.attempt = attempt
            stored.job_name = handle.name
            stored.runner = RUNNER_KINDS[plan.placement.runner]
            if resumed_from is None:
                stored.ClearField("resumed_from_step")
            else:
                stored.resumed_from_step = resumed_from
            if not stored.HasField("started_at"):
                stored.started_at.FromDatetime(_now())

        updated = await self._runs.update(run.run_id, started)
        event = events_pb2.TrainingRunStarted(
            run_id=run.run_id,
            stage=updated.stage,
            runner=updated.runner,
            job_name=handle.name,
            attempt=attempt,
        )
        if resumed_from is not None:
            event.resumed_from_step = resumed_from
        event.context.CopyFrom(updated.context)
        await self._publish(event, run.run_id, "started", str(attempt))
        log.info(
            "training attempt started",
            extra={"run_id": run.run_id, "attempt": attempt, "job": handle.name},
        )
        return handle

    async def _monitor(self, run_id: str, handle: JobHandle) -> tuple[_Attempt, AttemptEnd]:
        stop_watch = asyncio.create_task(self._stop_when_ended_elsewhere(run_id, handle))
        try:
            return await self._follow(run_id, handle)
        finally:
            stop_watch.cancel()
            await asyncio.gather(stop_watch, return_exceptions=True)

    async def _stop_when_ended_elsewhere(self, run_id: str, handle: JobHandle) -> None:
        """A CancelRun answered by another replica marks the run; this one stops its job."""
        async for run in self._runs.watch(run_id):
            if is_terminal(run.state):
                log.info("run ended elsewhere; stopping its job", extra={"run_id": run_id})
                await self._runners[handle.runner].cancel(handle)
                return

    async def _follow(self, run_id: str, handle: JobHandle) -> tuple[_Attempt, AttemptEnd]:
        runner = self._runners[handle.runner]
        attempt = _Attempt(self._options.failure_log_lines)
        async for line in runner.logs(handle, follow=True):
            marker = markers.decode(line.text)
            if marker is None:
                if line.text.strip():
                    attempt.tail.append(line.text)
                continue
            if isinstance(marker, markers.Progress):
                await self._progress(run_id, handle, marker)
            elif isinstance(marker, markers.Result):
                attempt.result = marker
            elif isinstance(marker, markers.Failed):
                attempt.error = attempt.error or marker
        status = await runner.wait(handle)
        error = attempt.error
        return attempt, AttemptEnd(
            exit_code=status.exit_code,
            result=attempt.result is not None,
            error_reason=error.reason if error else None,
            error_message=error.message if error else "",
            error_retryable=error.retryable if error else False,
            runner_reason=status.reason,
            runner_message=status.message,
            cancelled=run_id in self._cancel_requested,
        )

    async def _progress(self, run_id: str, handle: JobHandle, marker: markers.Progress) -> None:
        progress = _progress_proto(marker)

        def update(stored: pb.TrainingRun) -> None:
            stored.progress.CopyFrom(progress)

        run = await self._runs.update(run_id, update)
        metrics.observe_progress(
            run_id,
            recipe_label(run.stage),
            loss=marker.loss,
            tokens_per_second=marker.tokens_per_second,
            eta_seconds=marker.eta_seconds,
        )
        event = events_pb2.TrainingProgressReported(run_id=run_id, stage=run.stage)
        event.progress.CopyFrom(progress)
        event.context.CopyFrom(run.context)
        await self._publish(event, run_id, "progress", str(handle.attempt), str(marker.step))

    # --- endings -----------------------------------------------------------------------------

    async def _succeed(self, run_id: str, plan: Plan, result: markers.Result) -> None:
        run = await self.get(run_id)
        path = Path(result.path)
        if await asyncio.to_thread(_reported_but_missing, path):
            await self._finish(
                run_id,
                pb.TRAINING_RUN_STATE_FAILED,
                failure=_failure(
                    "CHECKPOINT_MISSING",
                    f"the worker reported {path} but it is not there",
                    retryable=True,
                ),
            )
            return
        checkpoint = pb.Checkpoint(
            checkpoint_id=plan.checkpoint_id,
            run_id=run_id,
            stage=run.stage,
            format=pb.CHECKPOINT_FORMAT_ADAPTER if result.adapter else pb.CHECKPOINT_FORMAT_FULL,
            model_name=plan.model_name,
            revision=plan.checkpoint_id,
            step=result.step,
        )
        checkpoint.artifact.uri = path.as_uri() if path.is_absolute() else str(path)
        checkpoint.artifact.sha256 = result.sha256
        checkpoint.artifact.size_bytes = result.size_bytes
        checkpoint.artifact.media_type = "inode/directory"
        checkpoint.base.CopyFrom(run.spec.base)
        checkpoint.datasets.extend(run.spec.datasets)
        checkpoint.recipe.CopyFrom(run.spec.recipe)
        checkpoint.final_metrics.update(result.final_metrics)
        checkpoint.created_at.FromDatetime(_now())
        registered = await self._checkpoints.register(checkpoint)
        await self._publish_checkpoint(run_id, registered, run.context)
        if not self._options.keep_trainer_checkpoints:
            await asyncio.to_thread(_remove_trainer_checkpoints, run_dir(self._work_dir, run_id))
        await self._finish(
            run_id,
            pb.TRAINING_RUN_STATE_SUCCEEDED,
            checkpoint_id=registered.checkpoint_id,
            final_metrics=dict(registered.final_metrics),
        )

    async def _succeed_registered(self, run_id: str, checkpoint_id: str) -> None:
        checkpoint = await self._checkpoints.get(checkpoint_id)
        assert checkpoint is not None
        run = await self.get(run_id)
        await self._publish_checkpoint(run_id, checkpoint, run.context)
        await self._finish(
            run_id,
            pb.TRAINING_RUN_STATE_SUCCEEDED,
            checkpoint_id=checkpoint_id,
            final_metrics=dict(checkpoint.final_metrics),
        )

    async def _publish_checkpoint(
        self, run_id: str, checkpoint: pb.Checkpoint, context: common_pb2.WorkContext
    ) -> None:
        event = events_pb2.CheckpointRegistered()
        event.checkpoint.CopyFrom(checkpoint)
        event.context.CopyFrom(context)
        await self._publish(event, run_id, "checkpoint", checkpoint.checkpoint_id)

    async def _finish(
        self,
        run_id: str,
        state: pb.TrainingRunState.ValueType,
        *,
        failure: common_pb2.Failure | None = None,
        checkpoint_id: str = "",
        final_metrics: Mapping[str, float] | None = None,
    ) -> pb.TrainingRun:
        changed = False

        def finish(stored: pb.TrainingRun) -> None:
            nonlocal changed
            if is_terminal(stored.state):
                changed = False
                return
            changed = True
            stored.state = state
            if failure is not None:
                stored.failure.CopyFrom(failure)
            if checkpoint_id:
                stored.checkpoint_id = checkpoint_id
            if final_metrics:
                stored.progress.metrics.update(final_metrics)
            stored.finished_at.FromDatetime(_now())

        run = await self._runs.update(run_id, finish)
        if changed:
            metrics.observe_finished(run_id, recipe_label(run.stage), _STATUS_LABEL[state])
            log.info(
                "training run finished",
                extra={"run_id": run_id, "state": pb.TrainingRunState.Name(run.state)},
            )
        await self._publish_finished(run)
        return run

    async def _publish_finished(self, run: pb.TrainingRun) -> None:
        event = events_pb2.TrainingRunFinished(
            run_id=run.run_id,
            stage=run.stage,
            state=run.state,
            checkpoint_id=run.checkpoint_id,
        )
        if run.state != pb.TRAINING_RUN_STATE_SUCCEEDED and run.HasField("failure"):
            event.failure.CopyFrom(run.failure)
        event.final_metrics.update(dict(run.progress.metrics))
        start = run.started_at if run.HasField("started_at") else run.created_at
        if run.HasField("finished_at") and start.seconds:
            event.duration.FromTimedelta(run.finished_at.ToDatetime() - start.ToDatetime())
        event.context.CopyFrom(run.context)
        await self._publish(event, run.run_id, "finished")

    async def _publish(self, event: Message, run_id: str, *parts: str) -> None:
        origin = await self._runs.origin(run_id)
        metadata = event.metadata  # type: ignore[attr-defined]
        if origin is not None:
            metadata.causation_id = origin.event_id
            metadata.correlation_id = origin.correlation_id
        await self._events.publish(event, event_id=stable_event_id("training", run_id, *parts))

    def _runner_for(self, run: pb.TrainingRun) -> JobRunner:
        name = RUNNER_NAMES.get(run.runner, self._options.runner)
        runner = self._runners.get(name)
        if runner is None:
            raise FailedPreconditionError(
                f"the {name} runner of run {run.run_id} is not configured"
            )
        return runner


def _check_run_id(run_id: str, *, where: str) -> None:
    if not valid_run_id(run_id):
        raise InvalidArgumentError(
            f"{run_id!r} is not a valid run id (letters, digits, '-' and '_', at most 100)",
            where=where,
        )


def _stage_of_spec(spec: pb.TrainingRunSpec) -> common_pb2.TrainingStage.ValueType:
    from arena_training.convert import stage_of

    stage = stage_of(spec.recipe)
    return STAGE_TO_PROTO[stage] if stage else common_pb2.TRAINING_STAGE_UNSPECIFIED


def _reason_of(error: BaseException) -> str:
    if isinstance(error, NotFoundError):
        return "NOT_FOUND"
    if isinstance(error, InvalidArgumentError):
        return "INVALID_ARGUMENT"
    if isinstance(error, FailedPreconditionError):
        return "FAILED_PRECONDITION"
    if isinstance(error, AlreadyExistsError):
        return "ALREADY_EXISTS"
    return "INTERNAL"


def _failure(
    reason: str, message: str, *, retryable: bool, details: Mapping[str, str] | None = None
) -> common_pb2.Failure:
    failure = common_pb2.Failure(reason=reason, message=message, retryable=retryable)
    present = {k: v for k, v in (details or {}).items() if v}
    if present:
        failure.details.CopyFrom(_struct(present))
    return failure


def _struct(values: Mapping[str, str]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(values))
    return struct


def _progress_proto(marker: markers.Progress) -> pb.TrainingProgress:
    progress = pb.TrainingProgress(epoch=marker.epoch)
    progress.progress.done = marker.step
    progress.progress.unit = "steps"
    if marker.total_steps is not None:
        progress.progress.total = marker.total_steps
    if marker.eta_seconds is not None:
        progress.progress.eta.FromSeconds(int(marker.eta_seconds))
        if marker.total_steps is not None and marker.eta_seconds > 0:
            progress.progress.rate_per_second = (
                marker.total_steps - marker.step
            ) / marker.eta_seconds
    if marker.loss is not None:
        progress.loss = marker.loss
    if marker.learning_rate is not None:
        progress.learning_rate = marker.learning_rate
    if marker.tokens_per_second is not None:
        progress.tokens_per_second = marker.tokens_per_second
    if marker.grad_norm is not None:
        progress.grad_norm = marker.grad_norm
    progress.metrics.update(marker.metrics)
    return progress


def _state_changed(before: pb.TrainingRun, after: pb.TrainingRun) -> bool:
    return (
        before.state != after.state
        or before.attempt != after.attempt
        or before.job_name != after.job_name
        or before.checkpoint_id != after.checkpoint_id
    )


def _last_checkpoint_step(output_dir: Path) -> int | None:
    steps = [
        int(path.name.removeprefix("checkpoint-"))
        for path in output_dir.glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit()
        and (path / "trainer_state.json").is_file()
    ]
    return max(steps) if steps else None


def _reported_but_missing(path: Path) -> bool:
    """The worker's output is not where it said, on a volume this service can see."""
    return path.parent.exists() and not path.is_dir()


def _remove_trainer_checkpoints(folder: Path) -> None:
    for path in (folder / "output").glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


def sequence_page(
    items: Sequence[Message], page_size: int, token: str, *, where: str
) -> tuple[list[Message], str]:
    """One page of `items` and the next page's token (an offset)."""
    if token and not token.isdigit():
        raise InvalidArgumentError("is not a page token from this service", where=where)
    offset = int(token or 0)
    size = page_size if page_size > 0 else 100
    size = min(size, 1000)
    page = list(items[offset : offset + size])
    next_token = str(offset + size) if offset + size < len(items) else ""
    return page, next_token
