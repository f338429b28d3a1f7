"""The steps of an iteration, each turning a position into a `StepResult`.

Every step asks other services for work under ids derived from (run, position), then waits for
the answers in `WorkResults`. Asking twice is harmless: JetStream drops a re-published event with
a known id, selection jobs and training runs with a known id return the first one, and answers
and judgments come from the services' content-addressed caches. That is what lets the controller
re-run a step it was in the middle of when it died.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import Message

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.inference.v1 import events_pb2 as inference_events
from arena.inference.v1 import inference_service_pb2 as inference_pb
from arena.judge.v1 import events_pb2 as judge_events
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import events_pb2 as rating_events
from arena.rating.v1 import rating_service_pb2 as rating_pb
from arena.selection.v1 import events_pb2 as selection_events
from arena.selection.v1 import selection_service_pb2 as selection_pb
from arena.training.v1 import events_pb2 as training_events
from arena.training.v1 import training_service_pb2 as training_pb
from arena_core.bus.events import EventPublisher
from arena_core.bus.subjects import partition_token
from arena_core.errors import AlreadyExistsError, FailedPreconditionError
from arena_flywheel.clients import InferenceClient, SelectionClient, TrainingClient
from arena_flywheel.domain.battles import (
    Pairing,
    battle_id,
    chunks,
    evaluation_pairs,
    training_pairs,
    work_id,
)
from arena_flywheel.domain.plan import (
    Position,
    Step,
    candidate_at,
    from_new_batch,
    initial_iterations,
    trained_model_name,
)
from arena_flywheel.domain.promotion import Standing, decide
from arena_flywheel.domain.spec import FlywheelSpec, Stage
from arena_flywheel.settings import FlywheelOptions

log = logging.getLogger(__name__)

STAGE_TO_PROTO: dict[Stage, common_pb2.TrainingStage.ValueType] = {
    "sft": common_pb2.TRAINING_STAGE_SFT,
    "dpo": common_pb2.TRAINING_STAGE_DPO,
    "rl": common_pb2.TRAINING_STAGE_RL,
}
JUDGE_PROTOCOLS = {
    "paper": common_pb2.JUDGE_PROTOCOL_PAIRWISE_SCORE,
    "arena-hard": common_pb2.JUDGE_PROTOCOL_ARENA_HARD,
    "mt-bench-pair": common_pb2.JUDGE_PROTOCOL_MT_BENCH_PAIRWISE,
    "reference": common_pb2.JUDGE_PROTOCOL_REFERENCE,
}
BACKENDS = {
    "transformers": inference_pb.BACKEND_TRANSFORMERS,
    "vllm": inference_pb.BACKEND_VLLM,
    "openai": inference_pb.BACKEND_OPENAI_COMPATIBLE,
    "replay": inference_pb.BACKEND_REPLAY,
}
RUNNERS = {"local": training_pb.RUNNER_KIND_LOCAL, "kubernetes": training_pb.RUNNER_KIND_KUBERNETES}
# Summary key of the initial split: the name new batches of pool data are published under.
POOL_NAME = "pool_name"
# Where a pool record keeps the known answer of a verifiable instruction.
REFERENCE_KEYS = ("reference_answer", "reference", "answer")

Progress = Callable[[int, int, str], Awaitable[None]]
MessageT = TypeVar("MessageT", bound=Message)


class WorkResultsPort(Protocol):
    """What steps need of `WorkResults`."""

    async def wait_all(
        self,
        work_ids: Sequence[str],
        on_progress: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> dict[str, any_pb2.Any]: ...


class StepFailedError(Exception):
    """The step cannot succeed by being tried again; the run fails with this reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RunView:
    """What a step reads about its run."""

    run_id: str
    spec: FlywheelSpec
    record: pb.RunRecord

    def result(self, position: Position) -> pb.StepResult:
        return self.record.results[position.key()]

    def produced_models(self) -> dict[str, str]:
        return {
            key: result.model
            for key, result in self.record.results.items()
            if key.endswith(f".{Step.LOAD_CHECKPOINT.value}")
        }

    def candidate(self, position: Position) -> str:
        return candidate_at(
            self.spec, position, self.produced_models(), self.record.run.incumbent_model
        )

    @property
    def arena(self) -> str:
        return f"flywheel-{self.run_id}"


@dataclass(frozen=True)
class Answers:
    """Generation ids by (prompt id, model); prompts that failed for a model are absent."""

    ids: dict[tuple[str, str], str]
    failed: int


class StepRunner:
    def __init__(
        self,
        options: FlywheelOptions,
        publisher: EventPublisher,
        results: WorkResultsPort,
        selection: SelectionClient,
        training: TrainingClient,
        inference: InferenceClient,
    ) -> None:
        self._options = options
        self._publisher = publisher
        self._results = results
        self._selection = selection
        self._training = training
        self._inference = inference
        self._batch_size = options.generation_batch_size

    async def run(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        steps = {
            Step.SPLIT: self._split,
            Step.BUILD_TEST_SET: self._build_test_set,
            Step.BATTLE: self._battle,
            Step.JUDGE: self._judge,
            Step.SELECT: self._select,
            Step.TRAIN: self._train,
            Step.REGISTER_CHECKPOINT: self._register,
            Step.LOAD_CHECKPOINT: self._load,
            Step.EVALUATE: self._evaluate,
            Step.RATE: self._rate,
            Step.PROMOTE: self._promote,
        }
        return await steps[position.step](view, position, progress)

    # --- data ---------------------------------------------------------------------------------

    async def _split(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        spec = view.spec
        split = selection_pb.SplitSpec(output_name=pool_name(spec), seed=spec.pool.seed)
        published_as = ""
        if position.iteration == 0:
            await self._declare_models(view)
            split.input_dataset_id = await self._dataset_id(
                view, position, spec.pool.dataset, "pool"
            )
            pool = await self._selection.dataset(split.input_dataset_id)
            published_as = pool.ref.name
            # D0 (the target's own data, never battled) and equal slices D1.. after it.
            split.num_slices = spec.pool.slices - 1
            split.initial_slice_size = max(1, pool.ref.record_count // spec.pool.slices)
        else:  # continuous mode: the new batch that started this iteration, one slice per stage
            batch = view.record.pool_batches[position.iteration - initial_iterations(spec) - 1]
            split.input_dataset_id = batch.dataset_id
            split.output_name = f"{pool_name(spec)}-i{position.iteration}"
            split.num_slices = len(spec.stages)
        job = await self._selection_job(
            view, position, selection_pb.SelectionJobSpec(split=split), "split", progress
        )
        result = pb.StepResult(datasets=job.outputs, input_dataset_id=split.input_dataset_id)
        result.summary.update(
            {"records": sum(ref.record_count for ref in job.outputs), "slices": len(job.outputs)}
        )
        if published_as:  # new versions under this name are new batches (continuous mode)
            result.summary.update({POOL_NAME: published_as})
        return result

    async def _declare_models(self, view: RunView) -> None:
        """The spec's models, made known to the inference service. A model the deployment
        already declares keeps its declaration (a vLLM server per model, say)."""
        for name, model in view.spec.models.items():
            declared = inference_pb.ModelSpec(
                name=name,
                backend=BACKENDS[model.backend],
                uri=model.path or "",
                endpoint=model.uri or "",
                revision=model.revision or "",
                api_key_secret=model.api_key_secret or "",
            )
            if model.backend == "replay":
                declared.replay_uris.append(model.path or "")
                declared.uri = ""
            try:
                await self._inference.register(declared, replace=False)
            except AlreadyExistsError:
                log.info("model %s is already declared; keeping that declaration", name)

    async def _build_test_set(
        self, view: RunView, position: Position, progress: Progress
    ) -> pb.StepResult:
        evaluation = view.spec.evaluation
        if evaluation.test_set != "build":
            test_id = await self._dataset_id(view, position, evaluation.test_set, "test")
            dataset = await self._selection.dataset(test_id)
            return pb.StepResult(datasets=[dataset.ref])
        assert evaluation.source is not None  # the spec requires it with `build`
        source_id = await self._dataset_id(view, position, evaluation.source, "source")
        test_set = selection_pb.TestSetSpec(
            input_dataset_id=source_id, output_name=f"{view.spec.name}-wizardarena", seed=0
        )
        if evaluation.difficulty_judge:
            test_set.difficulty_judge.CopyFrom(
                common_pb2.JudgeSpec(
                    name=f"{evaluation.difficulty_judge}-difficulty",
                    protocol=common_pb2.JUDGE_PROTOCOL_DIFFICULTY,
                    model=common_pb2.ModelRef(name=evaluation.difficulty_judge),
                )
            )
        job = await self._selection_job(
            view, position, selection_pb.SelectionJobSpec(test_set=test_set), "build", progress
        )
        mix = [ref for ref in job.outputs if "mix" in ref.name] or list(job.outputs[-1:])
        return pb.StepResult(datasets=mix)

    async def _dataset_id(self, view: RunView, position: Position, given: str, part: str) -> str:
        """A dataset id as given, or the id of the dataset a file ingests into."""
        if is_dataset_name(given):
            return given
        path = Path(given).expanduser().absolute()  # noqa: ASYNC240 (no I/O: names only)
        job = await self._selection_job(
            view,
            position,
            selection_pb.SelectionJobSpec(
                ingest=selection_pb.IngestSpec(
                    sources=[selection_pb.IngestSource(uri=str(path))],
                    output_name=pool_name(view.spec)
                    if part == "pool"
                    else f"{view.spec.name}-{part}",
                )
            ),
            f"ingest-{part}",
            None,
        )
        return job.outputs[0].dataset_id

    async def _selection_job(
        self,
        view: RunView,
        position: Position,
        spec: selection_pb.SelectionJobSpec,
        part: str,
        progress: Progress | None,
    ) -> selection_pb.SelectionJob:
        job_id = work_id(view.run_id, position, part)
        await self._publisher.publish(
            selection_events.SelectionJobRequested(
                job_id=job_id, spec=spec, context=_context(view, position, job_id)
            ),
            event_id=job_id,
            correlation_id=view.run_id,
        )
        if progress is not None:
            await progress(0, 1, "jobs")
        answers = await self._results.wait_all([job_id])
        job = _unpack(answers[job_id], selection_pb.SelectionJob)
        if job.state != selection_pb.SELECTION_JOB_STATE_SUCCEEDED:
            raise StepFailedError(
                job.failure.reason or "SELECTION_FAILED",
                f"selection job {job_id}: {job.failure.message or 'did not succeed'}",
            )
        if progress is not None:
            await progress(1, 1, "jobs")
        return job

    # --- battles ------------------------------------------------------------------------------

    async def _battle(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        assert position.stage is not None
        records = await self._slice_records(view, position.iteration, position.stage)
        target = view.candidate(position)
        answers = await self._generate(
            view, position, records, [target, *view.spec.opponents], progress, "gen"
        )
        result = pb.StepResult(model=target)
        result.summary.update(
            {"prompts": len(records), "answers": len(answers.ids), "failed": answers.failed}
        )
        return result

    async def _judge(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        assert position.stage is not None
        records = await self._slice_records(view, position.iteration, position.stage)
        battle = Position(position.iteration, position.stage, Step.BATTLE)
        target = view.result(battle).model
        # The battle step's answers, read back under the ids it asked with: already recorded,
        # so nothing is asked of the inference service again.
        asked = [
            event_id
            for event_id, _, _ in _generation_batches(
                view, battle, records, [target, *view.spec.opponents], self._batch_size
            )
        ]
        answers = await self._answers(asked, None)
        pairs = training_pairs(target, view.spec.opponents)
        judgments = await self._judge_pairs(
            view, position, records, pairs, answers, progress, arena=""
        )
        result = pb.StepResult(model=target, battle_count=len(judgments))
        result.summary.update(_judgment_summary(judgments))
        return result

    async def _slice_records(
        self, view: RunView, iteration: int, stage: Stage
    ) -> list[common_pb2.Conversation]:
        if from_new_batch(view.spec, iteration):
            slices = view.result(Position(iteration, None, Step.SPLIT)).datasets
            index = view.spec.stages.index(stage)
            return await self._selection.records(slices[index].dataset_id)
        slices = view.result(Position(0, None, Step.SPLIT)).datasets
        index = view.spec.slice_for(iteration, stage)
        if index >= len(slices):
            raise StepFailedError(
                "SLICE_MISSING", f"slice D{index} does not exist; the pool has {len(slices)}"
            )
        return await self._selection.records(slices[index].dataset_id)

    async def _generate(
        self,
        view: RunView,
        position: Position,
        records: Sequence[common_pb2.Conversation],
        models: Sequence[str],
        progress: Progress | None,
        part: str,
    ) -> Answers:
        sampling = common_pb2.SamplingParams(
            temperature=view.spec.generation.temperature,
            max_tokens=view.spec.generation.max_tokens,
        )
        if view.spec.generation.seed is not None:
            sampling.seed = view.spec.generation.seed
        asked: list[str] = []
        for event_id, model, chunk in _generation_batches(
            view, position, records, models, self._batch_size, part
        ):
            tasks = [
                inference_pb.GenerationTask(
                    input=inference_pb.GenerationInput(
                        model=common_pb2.ModelRef(name=model),
                        messages=_prompt_messages(record),
                        sampling=sampling,
                    ),
                    context=_context(view, position, record.id),
                )
                for record in chunk
            ]
            await self._publisher.publish(
                inference_events.GenerationBatchRequested(tasks=tasks),
                event_id=event_id,
                correlation_id=view.run_id,
                partition=partition_token(model),
            )
            asked.append(event_id)
        return await self._answers(asked, progress)

    async def _answers(self, asked: Sequence[str], progress: Progress | None) -> Answers:
        """The generation ids the answered batches hold, by (prompt id, model)."""
        found = await self._results.wait_all(asked, _scaled(progress, "batches"))
        ids: dict[tuple[str, str], str] = {}
        failed = 0
        for payload in found.values():
            batch = _unpack(payload, inference_events.GenerationBatchCompleted)
            for generation in batch.generations:
                ids[(generation.context.item_id, generation.model.name)] = generation.generation_id
            failed += len(batch.errors)
        return Answers(ids, failed)

    async def _judge_pairs(
        self,
        view: RunView,
        position: Position,
        records: Sequence[common_pb2.Conversation],
        pairs: Sequence[Pairing],
        answers: Answers,
        progress: Progress | None,
        arena: str,
    ) -> list[judge_pb.Judgment]:
        judge = _judge_spec(view.spec)
        round_id = "" if arena else f"{view.run_id}.{position.key()}"
        tasks: list[judge_pb.JudgmentTask] = []
        for record in records:
            reference = _reference_answer(record)
            for pairing in pairs:
                answer_a = answers.ids.get((record.id, pairing.model_a))
                answer_b = answers.ids.get((record.id, pairing.model_b))
                if answer_a is None or answer_b is None:
                    continue  # one side has no answer: no battle
                item = judge_pb.JudgeItem(
                    battle_id=battle_id(view.run_id, position, record.id, pairing),
                    prompt_id=record.id,
                    prompt=_prompt_messages(record),
                    a=judge_pb.Candidate(model=pairing.model_a, generation_id=answer_a),
                    b=judge_pb.Candidate(model=pairing.model_b, generation_id=answer_b),
                    arena=arena,
                    round_id=round_id,
                    category=record.category if record.HasField("category") else "",
                )
                if reference is not None:
                    item.reference_answer = reference
                for order in (judge_pb.JUDGE_ORDER_AB, judge_pb.JUDGE_ORDER_BA):
                    tasks.append(
                        judge_pb.JudgmentTask(
                            judge=judge,
                            item=item,
                            order=order,
                            context=_context(view, position, item.battle_id),
                        )
                    )
        asked = []
        for number, chunk in enumerate(chunks(tasks, self._options.judge_batch_size)):
            event_id = work_id(view.run_id, position, f"judge-{number}")
            await self._publisher.publish(
                judge_events.JudgmentBatchRequested(tasks=chunk),
                event_id=event_id,
                correlation_id=view.run_id,
            )
            asked.append(event_id)
        found = await self._results.wait_all(asked, _scaled(progress, "batches"))
        judgments: list[judge_pb.Judgment] = []
        for event_id in asked:
            batch = _unpack(found[event_id], judge_events.JudgmentBatchCompleted)
            judgments.extend(batch.judgments)
        return judgments

    # --- training -----------------------------------------------------------------------------

    async def _select(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        stage = position.stage
        assert stage is not None
        judged = view.result(Position(position.iteration, stage, Step.JUDGE))
        earlier = [
            view.result(Position(iteration, stage, Step.SELECT)).datasets[0].dataset_id
            for iteration in range(1, position.iteration)
            if Position(iteration, stage, Step.SELECT).key() in view.record.results
        ]
        threshold = view.spec.threshold(position.iteration, stage)
        spec = selection_pb.TrainingDataSpec(
            stage=STAGE_TO_PROTO[stage],
            threshold=threshold,
            target_model=judged.model,
            round_id=f"{view.run_id}.{Position(position.iteration, stage, Step.JUDGE).key()}",
            expected_judgments=judged.battle_count,
            accumulate_dataset_ids=earlier,
            output_name=f"{view.spec.name}-i{position.iteration}-{stage}",
        )
        job = await self._selection_job(
            view,
            position,
            selection_pb.SelectionJobSpec(training_data=spec),
            "select",
            progress,
        )
        selected = await self._selection.dataset(job.outputs[0].dataset_id)
        result = pb.StepResult(
            datasets=job.outputs, model=judged.model, model_shares=selected.model_shares
        )
        result.summary.update({"selected": job.outputs[0].record_count, "threshold": threshold})
        if not job.outputs[0].record_count:
            raise StepFailedError(
                "NO_TRAINING_DATA",
                f"no {stage} example passed threshold K={threshold} in iteration "
                f"{position.iteration}; lower the threshold or add opponents",
            )
        return result

    async def _train(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        stage = position.stage
        assert stage is not None
        selected = view.result(Position(position.iteration, stage, Step.SELECT))
        run_id = work_id(view.run_id, position)
        spec = training_pb.TrainingRunSpec(
            recipe=_recipe(view.spec, stage),
            base=self._base_of(view, selected.model),
            datasets=[_training_data(selected, stage)],
            placement=training_pb.Placement(
                runner=RUNNERS[view.spec.training.runner],
                num_nodes=view.spec.training.num_nodes,
                gpus_per_node=view.spec.training.gpus_per_node,
            ),
            output_model_name=trained_model_name(view.spec, view.run_id, position.iteration, stage),
        )
        await self._publisher.publish(
            training_events.TrainingRequested(
                run_id=run_id, spec=spec, context=_context(view, position, run_id)
            ),
            event_id=run_id,
            correlation_id=view.run_id,
        )
        await progress(0, 1, "runs")
        answers = await self._results.wait_all([run_id])
        finished = _unpack(answers[run_id], training_events.TrainingRunFinished)
        if finished.state != training_pb.TRAINING_RUN_STATE_SUCCEEDED:
            raise StepFailedError(
                finished.failure.reason or "TRAINING_FAILED",
                f"training run {run_id}: {finished.failure.message or 'did not succeed'}",
            )
        await progress(1, 1, "runs")
        result = pb.StepResult(model=spec.output_model_name, checkpoint_id=finished.checkpoint_id)
        result.summary.update(dict(finished.final_metrics))
        result.summary.update({"seconds": finished.duration.ToTimedelta().total_seconds()})
        return result

    def _base_of(self, view: RunView, model: str) -> training_pb.ModelSource:
        """Where a model's weights are: its checkpoint when the flywheel trained it."""
        for result in view.record.results.values():
            if result.model == model and result.checkpoint_id:
                return training_pb.ModelSource(checkpoint_id=result.checkpoint_id)
        return training_pb.ModelSource(uri=view.spec.target.base)

    async def _register(
        self, view: RunView, position: Position, progress: Progress
    ) -> pb.StepResult:
        assert position.stage is not None
        trained = view.result(Position(position.iteration, position.stage, Step.TRAIN))
        checkpoint = await self._training.checkpoint(trained.checkpoint_id)
        declared = view.spec.models[view.spec.target.model]
        await self._inference.register(
            inference_pb.ModelSpec(
                name=trained.model,
                backend=BACKENDS[declared.backend],
                uri=checkpoint.artifact.uri,
                revision=checkpoint.revision or checkpoint.checkpoint_id,
            )
        )
        await progress(1, 1, "models")
        return pb.StepResult(
            model=trained.model,
            checkpoint_id=trained.checkpoint_id,
            checkpoint_uri=checkpoint.artifact.uri,
        )

    async def _load(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        assert position.stage is not None
        registered = view.result(
            Position(position.iteration, position.stage, Step.REGISTER_CHECKPOINT)
        )
        await self._inference.load(registered.model)
        await progress(1, 1, "models")
        return pb.StepResult(model=registered.model, checkpoint_id=registered.checkpoint_id)

    # --- evaluation ---------------------------------------------------------------------------

    async def _evaluate(
        self, view: RunView, position: Position, progress: Progress
    ) -> pb.StepResult:
        test_set = view.result(Position(0, None, Step.BUILD_TEST_SET)).datasets[0]
        records = await self._selection.records(test_set.dataset_id)
        candidate = view.candidate(position)
        field = [*view.spec.opponents, *view.spec.evaluation.references]
        if view.spec.evaluation.anchor is not None:
            field.append(view.spec.evaluation.anchor.model)
        pairs = evaluation_pairs(candidate, field, everyone_plays_everyone=position.iteration == 0)
        models = list(dict.fromkeys([candidate, *field]))
        answers = await self._generate(view, position, records, models, progress, "gen")
        judgments = await self._judge_pairs(
            view, position, records, pairs, answers, progress, arena=view.arena
        )
        counted = sum(
            1 for judgment in judgments if judgment.verdict != judge_pb.VERDICT_UNSPECIFIED
        )
        result = pb.StepResult(model=candidate, battle_count=counted)
        result.summary.update(_judgment_summary(judgments))
        return result

    async def _rate(self, view: RunView, position: Position, progress: Progress) -> pb.StepResult:
        games = sum(
            result.battle_count
            for key, result in view.record.results.items()
            if key.endswith(f".{Step.EVALUATE.value}")
        )
        evaluation = view.spec.evaluation
        query = rating_pb.LeaderboardQuery(
            arena=view.arena,
            method=rating_pb.RATING_METHOD_BRADLEY_TERRY,
            ci_method=rating_pb.CI_METHOD_BOOTSTRAP,
            bootstrap_rounds=evaluation.bootstrap_rounds,
            seed=position.iteration,
        )
        if evaluation.anchor is not None:
            query.anchors.add(model=evaluation.anchor.model, rating=evaluation.anchor.rating)
        request_id = work_id(view.run_id, position)
        await self._publisher.publish(
            rating_events.RatingsRequested(
                query=query, min_battles=games, context=_context(view, position, request_id)
            ),
            event_id=request_id,
            correlation_id=view.run_id,
        )
        await progress(0, 1, "leaderboards")
        answer = (await self._results.wait_all([request_id]))[request_id]
        if answer.Is(rating_events.RatingsFailed.DESCRIPTOR):
            failed = _unpack(answer, rating_events.RatingsFailed)
            raise StepFailedError(
                failed.failure.reason or "RATING_FAILED", failed.failure.message or "no ratings"
            )
        published = _unpack(answer, rating_events.RatingsPublished)
        await progress(1, 1, "leaderboards")
        leaderboard = published.leaderboard
        return pb.StepResult(
            model=view.candidate(position),
            snapshot_id=leaderboard.snapshot_id,
            leaderboard=leaderboard.entries,
            battle_count=leaderboard.battle_count,
        )

    async def _promote(
        self, view: RunView, position: Position, progress: Progress
    ) -> pb.StepResult:
        rated = view.result(Position(position.iteration, None, Step.RATE))
        candidate_model = rated.model
        incumbent_model = view.record.run.incumbent_model
        rows = {entry.model: entry for entry in rated.leaderboard}
        for model in (candidate_model, incumbent_model):
            if model not in rows:
                raise StepFailedError(
                    "NOT_RATED", f"{model} has no row on leaderboard {rated.snapshot_id}"
                )
        candidate, incumbent = rows[candidate_model], rows[incumbent_model]
        decision = decide(view.spec.promotion, _standing(candidate), _standing(incumbent))
        await progress(1, 1, "decisions")
        return pb.StepResult(
            model=candidate_model if decision.promoted else incumbent_model,
            snapshot_id=rated.snapshot_id,
            decision=pb.PromotionDecision(
                iteration=position.iteration,
                candidate_model=candidate_model,
                incumbent_model=incumbent_model,
                promoted=decision.promoted,
                rule=decision.rule,
                candidate=candidate,
                incumbent=incumbent,
                snapshot_id=rated.snapshot_id,
                reason=decision.reason,
            ),
        )


def pool_name(spec: FlywheelSpec) -> str:
    """The name a run's pool is published under: the spec's dataset when it names one, else
    "<run name>-pool". In continuous mode every new version of it is a new batch of data."""
    given = spec.pool.dataset
    return given if is_dataset_name(given) else f"{spec.name}-pool"


def is_dataset_name(given: str) -> bool:
    return "/" not in given and not given.endswith((".jsonl", ".json", ".parquet"))


def _training_data(selected: pb.StepResult, stage: Stage) -> common_pb2.DatasetRef:
    """RL rolls out on the round's prompts (they carry known answers for a reference reward);
    the other stages train on the selected examples."""
    if stage == "rl":
        for dataset in selected.datasets:
            if dataset.kind == common_pb2.DATASET_KIND_PROMPTS:
                return dataset
    return selected.datasets[0]


def number(summary: struct_pb2.Struct, key: str) -> float:
    """A count from a step summary; 0 when the step did not record it."""
    value = summary.fields[key].number_value if key in summary.fields else 0.0
    return float(value)


def _standing(entry: common_pb2.LeaderboardEntry) -> Standing:
    return Standing(
        model=entry.model,
        rating=entry.rating,
        ci_low=entry.ci_low if entry.HasField("ci_low") else entry.rating,
        ci_high=entry.ci_high if entry.HasField("ci_high") else entry.rating,
        battles=entry.battles,
    )


def _context(view: RunView, position: Position, item_id: str) -> common_pb2.WorkContext:
    context = common_pb2.WorkContext(
        run_id=view.run_id,
        iteration=position.iteration,
        item_id=item_id,
        labels={"position": position.key()},
    )
    if position.stage is not None:
        context.stage = STAGE_TO_PROTO[position.stage]
    return context


def _generation_batches(
    view: RunView,
    position: Position,
    records: Sequence[common_pb2.Conversation],
    models: Sequence[str],
    batch_size: int,
    part: str = "gen",
) -> Iterator[tuple[str, str, Sequence[common_pb2.Conversation]]]:
    """(event id, model, prompts) of each generation batch a step asks for, in a stable order."""
    for model in dict.fromkeys(models):
        for number, chunk in enumerate(chunks(records, batch_size)):
            yield work_id(view.run_id, position, f"{part}-{_short(model)}-{number}"), model, chunk


def _prompt_messages(record: common_pb2.Conversation) -> list[common_pb2.ChatMessage]:
    """The conversation up to its last user turn: what every model answers."""
    messages = list(record.messages)
    while messages and messages[-1].role != common_pb2.ROLE_USER:
        messages.pop()
    if not messages:
        raise FailedPreconditionError(f"record {record.id} has no user turn to answer")
    return messages


def _reference_answer(record: common_pb2.Conversation) -> str | None:
    meta = json_format.MessageToDict(record.meta) if record.HasField("meta") else {}
    for key in REFERENCE_KEYS:
        value = meta.get(key)
        if isinstance(value, str | int | float) and str(value):
            return str(value)
    return None


def _judge_spec(spec: FlywheelSpec) -> common_pb2.JudgeSpec:
    judge = spec.judge
    proto = common_pb2.JudgeSpec(
        name=judge.name,
        version=judge.version,
        protocol=JUDGE_PROTOCOLS[judge.protocol],
        template_id=judge.template or "",
        sampling=common_pb2.SamplingParams(
            temperature=judge.sampling.temperature, max_tokens=judge.sampling.max_tokens
        ),
    )
    if judge.model:
        proto.model.name = judge.model
    if judge.sampling.seed is not None:
        proto.sampling.seed = judge.sampling.seed
    return proto


def _recipe(spec: FlywheelSpec, stage: Stage) -> training_pb.Recipe:
    """The stage's recipe: the spec's overrides on the training service's paper defaults."""
    overrides: dict[str, object] = dict(getattr(spec.training, stage))
    body = overrides.pop(stage, {})
    recipe = training_pb.Recipe()
    try:
        json_format.ParseDict({**overrides, stage: body}, recipe)
    except json_format.ParseError as error:
        raise StepFailedError("INVALID_RECIPE", f"training.{stage}: {error}") from None
    if stage == "rl" and not recipe.rl.HasField("reward_model") and not recipe.rl.HasField("judge"):
        # RL's reward is the run's judge scoring each rollout, unless the spec names another.
        recipe.rl.judge.CopyFrom(_judge_spec(spec))
    return recipe


def recipe_problems(spec: FlywheelSpec) -> list[tuple[str, str]]:
    """Recipe overrides the training service's contract cannot hold, by field."""
    problems = []
    for stage in spec.stages:
        try:
            _recipe(spec, stage)
        except StepFailedError as error:
            problems.append((f"training.{stage}", str(error).split(": ", 1)[-1]))
    return problems


def _judgment_summary(judgments: Sequence[judge_pb.Judgment]) -> dict[str, float]:
    failures = sum(1 for j in judgments if j.parse_status == judge_pb.PARSE_STATUS_FAILED)
    tokens = sum(j.usage.prompt_tokens + j.usage.completion_tokens for j in judgments)
    # Position consistency: both orders of a battle name the same winner (or both a tie).
    sides: dict[str, list[str]] = {}
    for judgment in judgments:
        if judgment.verdict != judge_pb.VERDICT_UNSPECIFIED:
            sides.setdefault(judgment.battle_id, []).append(_side(judgment.verdict))
    pairs = [games for games in sides.values() if len(games) == 2]
    return {
        "judgments": len(judgments),
        "parse_failures": failures,
        "judge_tokens": tokens,
        "cached": sum(1 for j in judgments if j.cached),
        "valid_pairs": len(pairs),
        "inconsistent_pairs": sum(1 for games in pairs if games[0] != games[1]),
    }


def _side(verdict: int) -> str:
    if verdict in (judge_pb.VERDICT_A_MUCH_BETTER, judge_pb.VERDICT_A_BETTER):
        return "a"
    if verdict in (judge_pb.VERDICT_B_MUCH_BETTER, judge_pb.VERDICT_B_BETTER):
        return "b"
    return "tie"


def _scaled(progress: Progress | None, unit: str) -> Callable[[int, int], Awaitable[None]] | None:
    if progress is None:
        return None

    async def report(done: int, total: int) -> None:
        await progress(done, total, unit)

    return report


def _short(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()[:10]


def _unpack(answer: any_pb2.Any, message_type: type[MessageT]) -> MessageT:
    message = message_type()
    if not answer.Unpack(message):
        raise StepFailedError(
            "UNEXPECTED_ANSWER",
            f"expected {message_type.DESCRIPTOR.full_name}, got {answer.TypeName()}",
        )
    return message
