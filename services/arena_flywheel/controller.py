"""The controller: one driver per running run, stepping it through its plan.

A run's record in KV is the truth. A driver reads it, finds the next position (a pure function of
the spec and the completed positions), runs that step, and writes the result with compare-and-set.
Pausing stops a driver after its current step; cancelling stops it at once. On start-up the
controller resumes a driver for every run the record says is running, and that driver re-runs the
step it was in — under the same work ids, so the services answer from what they already did.

One controller replica drives the runs (the chart deploys one); more would need a lease per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from nats.errors import Error as NatsError

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import events_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena_core.bus.events import EventPublisher, stable_event_id
from arena_core.errors import (
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_flywheel import metrics
from arena_flywheel.clients import TrainingClient
from arena_flywheel.domain.battles import work_id
from arena_flywheel.domain.plan import (
    Position,
    Step,
    iteration_positions,
    next_position,
    planned_iterations,
)
from arena_flywheel.domain.spec import FlywheelSpec, SpecError, SpecViolation, Stage, parse_spec
from arena_flywheel.settings import FlywheelOptions
from arena_flywheel.steps import (
    POOL_NAME,
    STAGE_TO_PROTO,
    RunView,
    StepFailedError,
    StepRunner,
    number,
    recipe_problems,
)
from arena_flywheel.store import RunStore

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
TERMINAL = {
    pb.FLYWHEEL_RUN_STATE_SUCCEEDED,
    pb.FLYWHEEL_RUN_STATE_FAILED,
    pb.FLYWHEEL_RUN_STATE_CANCELLED,
}
STEP_TO_PROTO = {
    Step.SPLIT: pb.STEP_SPLIT,
    Step.BUILD_TEST_SET: pb.STEP_BUILD_TEST_SET,
    Step.BATTLE: pb.STEP_BATTLE,
    Step.JUDGE: pb.STEP_JUDGE,
    Step.SELECT: pb.STEP_SELECT,
    Step.TRAIN: pb.STEP_TRAIN,
    Step.REGISTER_CHECKPOINT: pb.STEP_REGISTER_CHECKPOINT,
    Step.LOAD_CHECKPOINT: pb.STEP_LOAD_CHECKPOINT,
    Step.EVALUATE: pb.STEP_EVALUATE,
    Step.RATE: pb.STEP_RATE,
    Step.PROMOTE: pb.STEP_PROMOTE,
}
# Least time between two StepProgressed events of one step.
PROGRESS_EVENT_INTERVAL = 1.0

Update = pb.StreamRunProgressResponse
OnReport = Callable[[pb.RunRecord], Awaitable[None]]


def validate(spec_yaml: str, source: str = "spec_yaml") -> FlywheelSpec:
    """The spec, or SpecError naming every problem, recipe overrides included."""
    spec = parse_spec(spec_yaml, source)
    problems = recipe_problems(spec)
    if problems:
        raise SpecError(source, [SpecViolation(field, message) for field, message in problems])
    return spec


class Controller:
    def __init__(
        self,
        runs: RunStore,
        steps: StepRunner,
        publisher: EventPublisher,
        training: TrainingClient,
        options: FlywheelOptions,
        on_report: OnReport | None = None,
    ) -> None:
        self._runs = runs
        self._steps = steps
        self._publisher = publisher
        self._training = training
        self._options = options
        self._on_report = on_report
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._watchers: defaultdict[str, set[asyncio.Queue[Update]]] = defaultdict(set)
        self._live: dict[str, pb.StepStatus] = {}
        self._last_progress_event: dict[str, float] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def resume_all(self) -> None:
        """Drivers for every run the records say is running (after a restart)."""
        for record in await self._runs.all():
            if record.run.state == pb.FLYWHEEL_RUN_STATE_RUNNING:
                log.info("resuming run %s at %s", record.run.run_id, record.run.position)
                self._spawn(record.run.run_id)

    async def close(self) -> None:
        drivers = list(self._drivers.values())
        for driver in drivers:
            driver.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)

    # --- commands -----------------------------------------------------------------------------

    async def start_run(self, spec_yaml: str, run_id: str = "") -> pb.FlywheelRun:
        spec = validate(spec_yaml)
        if run_id and not RUN_ID.match(run_id):
            raise InvalidArgumentError(
                "must be 1-32 lowercase letters, digits or dashes, starting with a letter or digit",
                where="run_id",
            )
        run_id = run_id or uuid.uuid4().hex[:12]
        sha = hashlib.sha256(spec_yaml.encode()).hexdigest()
        now = _now()
        run = pb.FlywheelRun(
            run_id=run_id,
            name=spec.name,
            spec_yaml=spec_yaml,
            spec_sha256=sha,
            state=pb.FLYWHEEL_RUN_STATE_RUNNING,
            position=pb.RunPosition(iteration=0, step=pb.STEP_SPLIT),
            incumbent_model=spec.target.model,
            continuous=spec.continuous,
            created_at=now,
            updated_at=now,
        )
        if not spec.continuous:
            run.iterations_planned = planned_iterations(spec)
        _set_limits(run.budget, spec)
        record = pb.RunRecord(run=run)
        _refresh_steps(record, spec, 0)
        if not await self._runs.create(run_id, record):
            existing = await self._record(run_id)
            if existing.run.spec_sha256 != sha:
                raise FailedPreconditionError(
                    f"run {run_id} exists with another spec; choose another run id"
                )
            return existing.run  # the same request again: the run it started
        started = events_pb2.FlywheelRunStarted(
            run_id=run_id, name=spec.name, spec_sha256=sha, continuous=spec.continuous
        )
        if not spec.continuous:
            started.iterations_planned = planned_iterations(spec)
        await self._publish(started, run_id, "started")
        await self._publish(
            events_pb2.IterationAdvanced(
                run_id=run_id,
                iteration=0,
                trigger=pb.ADVANCE_TRIGGER_RUN_STARTED,
                incumbent_model=spec.target.model,
            ),
            run_id,
            "iteration-0",
        )
        self._spawn(run_id)
        return run

    async def get(self, run_id: str) -> pb.FlywheelRun:
        record = await self._record(run_id)
        return self._with_live_progress(record.run)

    async def record(self, run_id: str) -> pb.RunRecord:
        return await self._record(run_id)

    async def list(self, state: int = 0) -> list[pb.FlywheelRun]:
        runs = [record.run for record in await self._runs.all()]
        if state:
            runs = [run for run in runs if run.state == state]
        runs.sort(key=lambda run: (run.created_at.seconds, run.created_at.nanos), reverse=True)
        return [self._with_live_progress(run) for run in runs]

    async def pause(self, run_id: str, reason: str) -> pb.FlywheelRun:
        run_id = await self._resolve(run_id)

        def change(current: pb.RunRecord | None) -> pb.RunRecord:
            record = _existing(current, run_id)
            if record.run.state not in (
                pb.FLYWHEEL_RUN_STATE_RUNNING,
                pb.FLYWHEEL_RUN_STATE_WAITING_FOR_DATA,
            ):
                raise FailedPreconditionError(
                    f"run {run_id} is {_state_name(record.run.state)}; only a running run pauses"
                )
            record.run.state = pb.FLYWHEEL_RUN_STATE_PAUSED
            record.run.pause_reason = reason or "paused by an operator"
            record.run.updated_at.CopyFrom(_now())
            return record

        record = await self._runs.update(run_id, change)
        await self._publish(
            events_pb2.FlywheelRunPaused(
                run_id=run_id, position=record.run.position, reason=record.run.pause_reason
            ),
            run_id,
            f"paused-{record.run.updated_at.seconds}",
        )
        self._broadcast(run_id, Update(run=record.run))
        return record.run

    async def resume(self, run_id: str) -> pb.FlywheelRun:
        run_id = await self._resolve(run_id)

        def change(current: pb.RunRecord | None) -> pb.RunRecord:
            record = _existing(current, run_id)
            if record.run.state != pb.FLYWHEEL_RUN_STATE_PAUSED:
                raise FailedPreconditionError(
                    f"run {run_id} is {_state_name(record.run.state)}; only a paused run resumes"
                )
            record.run.state = pb.FLYWHEEL_RUN_STATE_RUNNING
            record.run.pause_reason = ""
            record.run.updated_at.CopyFrom(_now())
            return record

        record = await self._runs.update(run_id, change)
        await self._publish(
            events_pb2.FlywheelRunResumed(run_id=run_id, position=record.run.position),
            run_id,
            f"resumed-{record.run.updated_at.seconds}",
        )
        self._broadcast(run_id, Update(run=record.run))
        self._spawn(run_id)
        return record.run

    async def cancel(self, run_id: str, reason: str) -> pb.FlywheelRun:
        run_id = await self._resolve(run_id)

        def change(current: pb.RunRecord | None) -> pb.RunRecord:
            record = _existing(current, run_id)
            if record.run.state in TERMINAL:
                raise FailedPreconditionError(
                    f"run {run_id} already ended ({_state_name(record.run.state)})"
                )
            record.run.state = pb.FLYWHEEL_RUN_STATE_CANCELLED
            record.run.failure.CopyFrom(
                common_pb2.Failure(reason="CANCELLED", message=reason or "cancelled by an operator")
            )
            record.run.updated_at.CopyFrom(_now())
            return record

        record = await self._runs.update(run_id, change)
        driver = self._drivers.pop(run_id, None)
        if driver is not None:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        position = record.run.position
        if position.step == pb.STEP_TRAIN:
            await self._training.cancel(work_id(run_id, _position_of(position)))
        await self._finished(record)
        return record.run

    async def pool_data_published(self, dataset: common_pb2.DatasetRef) -> None:
        """Continuous mode: a new version of a run's pool is a new batch, and a new iteration.

        Recorded once per dataset id (a redelivered event changes nothing); a run waiting for
        data starts its next iteration at once, a running or paused one when it gets there.
        """
        for record in await self._runs.all():
            run = record.run
            initial = record.results.get(Position(0, None, Step.SPLIT).key())
            if not run.continuous or run.state in TERMINAL or initial is None:
                continue
            published_as = initial.summary.fields.get(POOL_NAME)
            if published_as is None or published_as.string_value != dataset.name:
                continue
            known = {record.pool_dataset_id, *(batch.dataset_id for batch in record.pool_batches)}
            if dataset.dataset_id in known:
                continue
            updated = await self._runs.update(
                run.run_id, lambda current: _add_batch(current, dataset)
            )
            log.info("run %s: new pool batch %s", run.run_id, dataset.dataset_id)
            if updated.run.state == pb.FLYWHEEL_RUN_STATE_RUNNING:
                iteration = updated.run.iterations_completed + 1
                await self._publish(
                    events_pb2.IterationAdvanced(
                        run_id=run.run_id,
                        iteration=iteration,
                        trigger=pb.ADVANCE_TRIGGER_NEW_POOL_DATA,
                        incumbent_model=updated.run.incumbent_model,
                        pool_dataset_id=dataset.dataset_id,
                    ),
                    run.run_id,
                    f"batch-{dataset.dataset_id}",
                )
                self._broadcast(run.run_id, Update(run=updated.run))
                self._spawn(run.run_id)

    async def watch(self, run_id: str) -> AsyncIterator[Update]:
        """The run now, then every change and step progress until it ends."""
        run_id = await self._resolve(run_id)
        queue: asyncio.Queue[Update] = asyncio.Queue(maxsize=1000)
        self._watchers[run_id].add(queue)
        try:
            run = await self.get(run_id)
            yield Update(run=run)
            if run.state in TERMINAL:
                return
            while True:
                update = await queue.get()
                yield update
                if update.HasField("run") and update.run.state in TERMINAL:
                    return
        finally:
            self._watchers[run_id].discard(queue)

    # --- the driver ---------------------------------------------------------------------------

    def _spawn(self, run_id: str) -> None:
        current = self._drivers.get(run_id)
        if current is not None and not current.done():
            return
        self._drivers[run_id] = asyncio.create_task(self._drive(run_id), name=f"run-{run_id}")

    async def _drive(self, run_id: str) -> None:
        try:
            while await self._advance(run_id):
                pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not a step failure: leave the run resumable and say so
            log.exception("driver of run %s stopped unexpectedly", run_id)
        finally:
            if self._drivers.get(run_id) is asyncio.current_task():
                del self._drivers[run_id]

    async def _advance(self, run_id: str) -> bool:
        """Runs the next step; False when the driver should stop."""
        record = await self._record(run_id)
        if record.run.state != pb.FLYWHEEL_RUN_STATE_RUNNING:
            return False
        spec = parse_spec(record.run.spec_yaml)
        position = next_position(spec, set(record.results), len(record.pool_batches))
        if position is None:
            await self._succeed(run_id)
            return False
        exhausted = _exhausted_budget(record.run.budget)
        if exhausted:
            await self.pause(run_id, f"budget exhausted: {exhausted}")
            return False
        record = await self._runs.update(run_id, lambda current: _begin(current, spec, position))
        await self._announce_start(record, position)
        started = time.monotonic()
        try:
            result = await self._steps.run(
                RunView(run_id, spec, record), position, self._progress_reporter(run_id, position)
            )
        except StepFailedError as error:
            await self._fail(run_id, position, error.reason, str(error), time.monotonic() - started)
            return False
        except (InvalidArgumentError, NotFoundError, FailedPreconditionError) as error:
            await self._fail(
                run_id, position, _reason(error), str(error), time.monotonic() - started
            )
            return False
        except (UnavailableError, ArenaError, TimeoutError, ConnectionError, NatsError) as error:
            log.warning(
                "run %s: %s failed (%s); trying again in %.0fs",
                run_id,
                position.key(),
                error,
                self._options.retry_seconds,
            )
            await asyncio.sleep(self._options.retry_seconds)
            return True
        result.finished_at.CopyFrom(_now())
        record = await self._runs.update(
            run_id, lambda current: _complete(current, spec, position, result)
        )
        await self._announce_finish(record, spec, position, result, time.monotonic() - started)
        return True

    def _progress_reporter(
        self, run_id: str, position: Position
    ) -> Callable[[int, int, str], Awaitable[None]]:
        async def report(done: int, total: int, unit: str) -> None:
            status = self._live.get(run_id)
            if status is None:
                return
            status.progress.CopyFrom(common_pb2.Progress(done=done, total=total, unit=unit))
            metrics.progressed(run_id)
            self._broadcast(run_id, Update(step=status))
            now = time.monotonic()
            if done == total or now - self._last_progress_event.get(run_id, 0.0) >= (
                PROGRESS_EVENT_INTERVAL
            ):
                self._last_progress_event[run_id] = now
                await self._publisher.publish(
                    events_pb2.StepProgressed(
                        run_id=run_id, position=status.position, progress=status.progress
                    ),
                    correlation_id=run_id,
                )

        return report

    async def _announce_start(self, record: pb.RunRecord, position: Position) -> None:
        run_id = record.run.run_id
        status = pb.StepStatus(
            position=_position_proto(position),
            state=pb.STEP_STATE_RUNNING,
            started_at=_now(),
        )
        self._live[run_id] = status
        metrics.enter_stage(run_id, _stage_label(position), position.iteration)
        await self._publish(
            events_pb2.StepStarted(run_id=run_id, position=status.position),
            run_id,
            f"step-{position.key()}-started",
        )
        self._broadcast(run_id, Update(run=record.run))

    async def _announce_finish(
        self,
        record: pb.RunRecord,
        spec: FlywheelSpec,
        position: Position,
        result: pb.StepResult,
        seconds: float,
    ) -> None:
        run_id = record.run.run_id
        self._live.pop(run_id, None)
        finished = events_pb2.StepFinished(
            run_id=run_id,
            position=_position_proto(position),
            state=pb.STEP_STATE_COMPLETED,
            summary=result.summary,
        )
        finished.duration.FromSeconds(int(seconds))
        await self._publish(finished, run_id, f"step-{position.key()}")
        if position.step in (Step.JUDGE, Step.EVALUATE):
            metrics.battles_judged(run_id, int(number(result.summary, "judgments")))
        if position.step == Step.PROMOTE:
            await self._publish(
                events_pb2.PromotionDecided(run_id=run_id, decision=result.decision),
                run_id,
                f"promotion-{position.iteration}",
            )
        if _closes_iteration(spec, position):
            await self._iteration_completed(record, position.iteration)
        self._broadcast(run_id, Update(run=record.run))

    async def _iteration_completed(self, record: pb.RunRecord, iteration: int) -> None:
        run_id = record.run.run_id
        rated = record.results[Position(iteration, None, Step.RATE).key()]
        target = next(
            (entry for entry in rated.leaderboard if entry.model == rated.model),
            common_pb2.LeaderboardEntry(model=rated.model),
        )
        await self._publish(
            events_pb2.IterationCompleted(
                run_id=run_id,
                iteration=iteration,
                target=target,
                snapshot_id=rated.snapshot_id,
                incumbent_model=record.run.incumbent_model,
            ),
            run_id,
            f"iteration-{iteration}-completed",
        )
        if self._on_report is not None:
            await self._on_report(record)
        spec = parse_spec(record.run.spec_yaml)
        if next_position(spec, set(record.results), len(record.pool_batches)) is not None:
            await self._publish(
                events_pb2.IterationAdvanced(
                    run_id=run_id,
                    iteration=iteration + 1,
                    trigger=pb.ADVANCE_TRIGGER_ITERATION_COMPLETED,
                    incumbent_model=record.run.incumbent_model,
                ),
                run_id,
                f"iteration-{iteration + 1}",
            )

    async def _fail(
        self, run_id: str, position: Position, reason: str, message: str, seconds: float
    ) -> None:
        log.error("run %s failed at %s: %s", run_id, position.key(), message)
        failure = common_pb2.Failure(reason=reason, message=message)

        def change(current: pb.RunRecord | None) -> pb.RunRecord:
            record = _existing(current, run_id)
            for status in record.run.steps:
                if _position_of(status.position) == position:
                    status.state = pb.STEP_STATE_FAILED
                    status.failure.CopyFrom(failure)
                    status.finished_at.CopyFrom(_now())
            if record.run.state == pb.FLYWHEEL_RUN_STATE_RUNNING:
                record.run.state = pb.FLYWHEEL_RUN_STATE_FAILED
                record.run.failure.CopyFrom(failure)
            record.run.updated_at.CopyFrom(_now())
            return record

        record = await self._runs.update(run_id, change)
        self._live.pop(run_id, None)
        finished = events_pb2.StepFinished(
            run_id=run_id,
            position=_position_proto(position),
            state=pb.STEP_STATE_FAILED,
            failure=failure,
        )
        finished.duration.FromSeconds(int(seconds))
        await self._publish(finished, run_id, f"step-{position.key()}")
        await self._finished(record)

    async def _succeed(self, run_id: str) -> None:
        def change(current: pb.RunRecord | None) -> pb.RunRecord:
            record = _existing(current, run_id)
            if record.run.state == pb.FLYWHEEL_RUN_STATE_RUNNING:
                record.run.state = (
                    pb.FLYWHEEL_RUN_STATE_WAITING_FOR_DATA
                    if record.run.continuous
                    else pb.FLYWHEEL_RUN_STATE_SUCCEEDED
                )
                record.run.updated_at.CopyFrom(_now())
            return record

        record = await self._runs.update(run_id, change)
        if record.run.state == pb.FLYWHEEL_RUN_STATE_WAITING_FOR_DATA:
            metrics.enter_stage(run_id, "waiting")
            self._broadcast(run_id, Update(run=record.run))
            return
        await self._finished(record)

    async def _finished(self, record: pb.RunRecord) -> None:
        run = record.run
        metrics.enter_stage(
            run.run_id, "done" if run.state == pb.FLYWHEEL_RUN_STATE_SUCCEEDED else "failed"
        )
        finished = events_pb2.FlywheelRunFinished(
            run_id=run.run_id,
            state=run.state,
            position=run.position,
            iterations_completed=run.iterations_completed,
            incumbent_model=run.incumbent_model,
            budget=run.budget,
        )
        if run.HasField("failure"):
            finished.failure.CopyFrom(run.failure)
        await self._publish(finished, run.run_id, "finished")
        if self._on_report is not None:
            await self._on_report(record)
        self._broadcast(run.run_id, Update(run=run))

    # --- helpers ------------------------------------------------------------------------------

    async def _resolve(self, run_id: str) -> str:
        if run_id != "latest":
            return run_id
        runs = await self.list()
        if not runs:
            raise NotFoundError("there are no runs yet")
        return runs[0].run_id

    async def _record(self, run_id: str) -> pb.RunRecord:
        run_id = await self._resolve(run_id)
        if not run_id:
            raise InvalidArgumentError("must name a run, or `latest`", where="run_id")
        if not RUN_ID.match(run_id):
            raise NotFoundError(f"no run {run_id!r}")
        found = await self._runs.get(run_id)
        if found is None:
            raise NotFoundError(f"no run {run_id!r}")
        return found[0]

    def _with_live_progress(self, run: pb.FlywheelRun) -> pb.FlywheelRun:
        live = self._live.get(run.run_id)
        if live is None:
            return run
        view = pb.FlywheelRun()
        view.CopyFrom(run)
        for status in view.steps:
            if status.position == live.position:
                status.progress.CopyFrom(live.progress)
        return view

    def _broadcast(self, run_id: str, update: Update) -> None:
        for queue in list(self._watchers.get(run_id, ())):
            with contextlib.suppress(asyncio.QueueFull):  # a stalled watcher misses updates
                queue.put_nowait(update)

    async def _publish(self, event: object, run_id: str, what: str) -> None:
        await self._publisher.publish(
            event,  # type: ignore[arg-type]
            event_id=stable_event_id("flywheel", run_id, what),
            correlation_id=run_id,
        )


# --- record changes (pure functions of the stored record) --------------------------------------


def _existing(current: pb.RunRecord | None, run_id: str) -> pb.RunRecord:
    if current is None:
        raise NotFoundError(f"no run {run_id!r}")
    return current


def _begin(current: pb.RunRecord | None, spec: FlywheelSpec, position: Position) -> pb.RunRecord:
    record = _existing(current, "")
    record.run.position.CopyFrom(_position_proto(position))
    _refresh_steps(record, spec, position.iteration)
    for status in record.run.steps:
        if _position_of(status.position) == position:
            status.state = pb.STEP_STATE_RUNNING
            if not status.HasField("started_at"):
                status.started_at.CopyFrom(_now())
    record.run.updated_at.CopyFrom(_now())
    return record


def _complete(
    current: pb.RunRecord | None, spec: FlywheelSpec, position: Position, result: pb.StepResult
) -> pb.RunRecord:
    record = _existing(current, "")
    record.results[position.key()].CopyFrom(result)
    if position == Position(0, None, Step.SPLIT):
        record.pool_dataset_id = result.input_dataset_id
    for status in record.run.steps:
        if _position_of(status.position) == position:
            status.state = pb.STEP_STATE_COMPLETED
            status.finished_at.CopyFrom(result.finished_at)
    budget = record.run.budget
    if position.step in (Step.JUDGE, Step.EVALUATE):
        budget.battles += int(number(result.summary, "judgments")) // 2
        budget.judge_tokens += int(number(result.summary, "judge_tokens"))
    if position.step == Step.TRAIN and spec.training.gpus_per_node:
        gpus = spec.training.gpus_per_node * spec.training.num_nodes
        budget.gpu_hours += number(result.summary, "seconds") * gpus / 3600
    if position.step == Step.PROMOTE and result.decision.promoted:
        record.run.incumbent_model = result.decision.candidate_model
    if _closes_iteration(spec, position):
        record.run.iterations_completed = position.iteration
    record.run.updated_at.CopyFrom(_now())
    return record


def _add_batch(current: pb.RunRecord | None, dataset: common_pb2.DatasetRef) -> pb.RunRecord:
    record = _existing(current, "")
    if any(batch.dataset_id == dataset.dataset_id for batch in record.pool_batches):
        return record
    record.pool_batches.append(dataset)
    if record.run.state == pb.FLYWHEEL_RUN_STATE_WAITING_FOR_DATA:
        record.run.state = pb.FLYWHEEL_RUN_STATE_RUNNING
    record.run.updated_at.CopyFrom(_now())
    return record


def _refresh_steps(record: pb.RunRecord, spec: FlywheelSpec, iteration: int) -> None:
    """`run.steps` lists the positions of the current iteration with their states."""
    known = {_position_of(status.position): status for status in record.run.steps}
    steps = []
    for position in iteration_positions(spec, iteration):
        status = known.get(position) or pb.StepStatus(
            position=_position_proto(position), state=pb.STEP_STATE_PENDING
        )
        if position.key() in record.results:
            status.state = pb.STEP_STATE_COMPLETED
        steps.append(status)
    del record.run.steps[:]
    record.run.steps.extend(steps)


def _closes_iteration(spec: FlywheelSpec, position: Position) -> bool:
    return position == list(iteration_positions(spec, position.iteration))[-1]


def _set_limits(budget: pb.BudgetUsage, spec: FlywheelSpec) -> None:
    if spec.budgets.battles is not None:
        budget.battles_limit = spec.budgets.battles
    if spec.budgets.judge_tokens is not None:
        budget.judge_tokens_limit = spec.budgets.judge_tokens
    if spec.budgets.gpu_hours is not None:
        budget.gpu_hours_limit = spec.budgets.gpu_hours


def _exhausted_budget(budget: pb.BudgetUsage) -> str:
    if budget.HasField("battles_limit") and budget.battles >= budget.battles_limit:
        return f"{budget.battles} battles of {budget.battles_limit}"
    if budget.HasField("judge_tokens_limit") and budget.judge_tokens >= budget.judge_tokens_limit:
        return f"{budget.judge_tokens} judge tokens of {budget.judge_tokens_limit}"
    if budget.HasField("gpu_hours_limit") and budget.gpu_hours >= budget.gpu_hours_limit:
        return f"{budget.gpu_hours:.2f} GPU hours of {budget.gpu_hours_limit}"
    return ""


STAGE_FROM_PROTO: dict[int, Stage] = {value: key for key, value in STAGE_TO_PROTO.items()}
STEP_FROM_PROTO = {value: key for key, value in STEP_TO_PROTO.items()}


def _position_proto(position: Position) -> pb.RunPosition:
    proto = pb.RunPosition(iteration=position.iteration, step=STEP_TO_PROTO[position.step])
    if position.stage is not None:
        proto.stage = STAGE_TO_PROTO[position.stage]
    return proto


def _position_of(proto: pb.RunPosition) -> Position:
    return Position(proto.iteration, STAGE_FROM_PROTO.get(proto.stage), STEP_FROM_PROTO[proto.step])


def _stage_label(position: Position) -> str:
    return f"{position.stage}.{position.step.value}" if position.stage else position.step.value


def _state_name(state: int) -> str:
    name: str = pb.FlywheelRunState.Name(state)  # type: ignore[arg-type]
    return name.removeprefix("FLYWHEEL_RUN_STATE_").lower()


def _reason(error: ArenaError) -> str:
    return type(error).__name__.removesuffix("Error").upper() or "FAILED"


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    return stamp
