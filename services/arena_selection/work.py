"""What each selection job does: proto specs in, domain calls (in worker threads), datasets out.

Input datasets, evaluation sets and judged rounds are checked in `validate` before a job is
recorded, so a request naming a missing dataset or an impossible threshold fails at once with
INVALID_ARGUMENT / NOT_FOUND and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena_core.errors import FailedPreconditionError, InvalidArgumentError
from arena_core.hashing import content_hash
from arena_selection import metrics
from arena_selection.clients import InferenceClient, JudgeClient
from arena_selection.domain import artifacts, ingest, training
from arena_selection.domain.artifacts import DatasetKind
from arena_selection.domain.cleaning import CleaningConfig, LengthUnit, clean_pool
from arena_selection.domain.decontamination import (
    DecontaminationConfig,
    DecontaminationMode,
    EvalSet,
)
from arena_selection.domain.embeddings import Embedder, embedder_for
from arena_selection.domain.minhash import MinHashConfig
from arena_selection.domain.records import Message, Record
from arena_selection.domain.splits import split_pool
from arena_selection.domain.testset import TestSetConfig, build_test_set
from arena_selection.jobs import JobContext, JobOutcome
from arena_selection.settings import SelectionOptions
from arena_selection.store import DatasetStore

DATASET_URI_PREFIX = "dataset:"

FORMAT_FROM_PROTO = {
    pb.SOURCE_FORMAT_UNSPECIFIED: ingest.SourceFormat.AUTO,
    pb.SOURCE_FORMAT_SHAREGPT: ingest.SourceFormat.SHAREGPT,
    pb.SOURCE_FORMAT_ALPACA: ingest.SourceFormat.ALPACA,
    pb.SOURCE_FORMAT_MESSAGES: ingest.SourceFormat.MESSAGES,
    pb.SOURCE_FORMAT_FASTCHAT_QUESTIONS: ingest.SourceFormat.FASTCHAT_QUESTIONS,
    pb.SOURCE_FORMAT_ARENA_HARD_QUESTIONS: ingest.SourceFormat.ARENA_HARD_QUESTIONS,
    pb.SOURCE_FORMAT_ALPACA_EVAL: ingest.SourceFormat.ALPACA_EVAL,
    pb.SOURCE_FORMAT_CANONICAL: ingest.SourceFormat.CANONICAL,
}
UNIT_FROM_PROTO = {
    pb.LENGTH_UNIT_UNSPECIFIED: LengthUnit.WORDS,
    pb.LENGTH_UNIT_CHARACTERS: LengthUnit.CHARACTERS,
    pb.LENGTH_UNIT_WORDS: LengthUnit.WORDS,
    pb.LENGTH_UNIT_TOKENS: LengthUnit.TOKENS,
}
STAGE_FROM_PROTO = {
    common_pb2.TRAINING_STAGE_SFT: training.Stage.SFT,
    common_pb2.TRAINING_STAGE_DPO: training.Stage.DPO,
    common_pb2.TRAINING_STAGE_REWARD_MODEL: training.Stage.REWARD_MODEL,
    common_pb2.TRAINING_STAGE_RL: training.Stage.RL,
}
PAIRING_FROM_PROTO = {
    pb.PREFERENCE_PAIRING_UNSPECIFIED: training.Pairing.BEST_WORST,
    pb.PREFERENCE_PAIRING_BEST_WORST: training.Pairing.BEST_WORST,
    pb.PREFERENCE_PAIRING_WINNER_LOSER: training.Pairing.WINNER_LOSER,
    pb.PREFERENCE_PAIRING_BEST_VS_TARGET: training.Pairing.BEST_VS_TARGET,
}
COMPARISON_FROM_PROTO = {
    pb.THRESHOLD_COMPARISON_UNSPECIFIED: training.Comparison.AT_LEAST,
    pb.THRESHOLD_COMPARISON_AT_LEAST: training.Comparison.AT_LEAST,
    pb.THRESHOLD_COMPARISON_GREATER_THAN: training.Comparison.GREATER_THAN,
}
ROLE_FROM_PROTO = {1: "system", 2: "user", 3: "assistant", 4: "tool"}


def round_prefix(round_id: str) -> str:
    return f"r{content_hash('round', round_id)[:40]}."


class SelectionWork:
    def __init__(
        self,
        store: DatasetStore,
        rounds: KeyValue,
        options: SelectionOptions,
        judge: JudgeClient,
        inference: InferenceClient,
    ) -> None:
        self._store = store
        self._rounds = rounds
        self._options = options
        self._judge = judge
        self._inference = inference

    def _embedder(self, name: str) -> Embedder:
        return embedder_for(
            name or self._options.embedding_model,
            device=self._options.embedding_device,
            max_seq_length=self._options.embedding_max_tokens,
        )

    # --- validation --------------------------------------------------------------------------

    async def validate(self, spec: pb.SelectionJobSpec) -> None:
        which = spec.WhichOneof("spec")
        if which == "ingest":
            if not spec.ingest.sources:
                raise InvalidArgumentError("name at least one source", where="spec.sources")
            for index, source in enumerate(spec.ingest.sources):
                self._check_source(source, f"spec.sources[{index}].uri")
            _need_name(spec.ingest.output_name)
        elif which == "cleaning":
            await self._store.get(spec.cleaning.input_dataset_id, "spec.input_dataset_id")
            self._cleaning_config(spec.cleaning).validate()
            for index, source in enumerate(spec.cleaning.decontamination.evaluation_sets):
                where = f"spec.decontamination.evaluation_sets[{index}].uri"
                if source.uri.startswith(DATASET_URI_PREFIX):
                    await self._store.get(source.uri.removeprefix(DATASET_URI_PREFIX), where)
                else:
                    self._check_source(source, where)
            _need_name(spec.cleaning.output_name)
        elif which == "split":
            await self._store.get(spec.split.input_dataset_id, "spec.input_dataset_id")
            if spec.split.num_slices < 1:
                raise InvalidArgumentError(
                    f"must be >= 1, got {spec.split.num_slices}", where="spec.num_slices"
                )
            _need_name(spec.split.output_name)
        elif which == "test_set":
            await self._store.get(spec.test_set.input_dataset_id, "spec.input_dataset_id")
            _need_name(spec.test_set.output_name)
        elif which == "training_data":
            data = spec.training_data
            self._selection_config(data).validate()
            judged = data.WhichOneof("judgments")
            if judged is None:
                raise InvalidArgumentError("give round_id or judgments_uri", where="spec.judgments")
            if judged == "judgments_uri":
                _local_path(data.judgments_uri, "spec.judgments_uri")
            for index, dataset_id in enumerate(data.accumulate_dataset_ids):
                earlier = await self._store.get(dataset_id, f"spec.accumulate_dataset_ids[{index}]")
                if earlier.stage != data.stage:
                    raise InvalidArgumentError(
                        f"dataset {dataset_id} is stage "
                        f"{common_pb2.TrainingStage.Name(earlier.stage)}, not "
                        f"{common_pb2.TrainingStage.Name(data.stage)}",
                        where=f"spec.accumulate_dataset_ids[{index}]",
                    )
            _need_name(data.output_name)

    def _check_source(self, source: pb.IngestSource, where: str) -> None:
        _local_path(source.uri, where)
        if source.format not in FORMAT_FROM_PROTO:
            raise InvalidArgumentError(f"unknown format {source.format}", where=where)

    # --- execution ---------------------------------------------------------------------------

    async def execute(self, job: pb.SelectionJob, context: JobContext) -> JobOutcome:
        which = job.spec.WhichOneof("spec")
        if which == "ingest":
            return await self._ingest(job.spec.ingest, context)
        if which == "cleaning":
            return await self._clean(job, context)
        if which == "split":
            return await self._split(job.spec.split, context)
        if which == "test_set":
            return await self._test_set(job.spec.test_set, context)
        if which == "training_data":
            return await self._training(job.spec.training_data, context)
        raise InvalidArgumentError("the job spec is empty", where="spec")

    async def _publish(self, rendered: artifacts.RenderedDataset, **options: Any) -> pb.Dataset:
        dataset, new = await self._store.publish(rendered, **options)
        if new:
            metrics.DATASETS_PUBLISHED.labels(rendered.kind.value).inc()
        return dataset

    async def _ingest(self, spec: pb.IngestSpec, context: JobContext) -> JobOutcome:
        sources = [
            ingest.IngestSource(
                _local_path(source.uri, "uri"),
                FORMAT_FROM_PROTO[source.format],
                source.source_name,
                source.default_category,
            )
            for source in spec.sources
        ]
        result = await asyncio.to_thread(
            ingest.ingest, sources, lambda done, total: context.progress("ingest", done, total)
        )
        rendered = artifacts.records_dataset(
            spec.output_name,
            DatasetKind.POOL,
            result.records,
            params={
                "sources": [
                    {
                        "path": s.path,
                        "format": s.format.value,
                        "source": s.source,
                        "records": s.records,
                    }
                    for s in result.sources
                ]
            },
            stats={"duplicates_dropped": result.duplicates},
        )
        context.check()
        return JobOutcome(outputs=[await self._publish(rendered)])

    def _cleaning_config(self, spec: pb.CleaningSpec) -> CleaningConfig:
        minhash = None
        if not spec.minhash.HasField("enabled") or spec.minhash.enabled:
            defaults = MinHashConfig()
            minhash = MinHashConfig(
                threshold=spec.minhash.threshold
                if spec.minhash.HasField("threshold")
                else defaults.threshold,
                num_perm=spec.minhash.num_permutations
                if spec.minhash.HasField("num_permutations")
                else defaults.num_perm,
                shingle_size=spec.minhash.shingle_size
                if spec.minhash.HasField("shingle_size")
                else defaults.shingle_size,
            )
        options = spec.decontamination
        defaults_d = DecontaminationConfig()
        decontamination = DecontaminationConfig(
            mode=DecontaminationMode.TOP_K
            if options.mode == pb.DECONTAMINATION_MODE_TOP_K
            else DecontaminationMode.THRESHOLD,
            top_k=options.top_k if options.HasField("top_k") else defaults_d.top_k,
            similarity_threshold=options.similarity_threshold
            if options.HasField("similarity_threshold")
            else None,
            # Unset keeps the default check (13 words); 0 turns it off.
            ngram_size=(options.ngram_size or None)
            if options.HasField("ngram_size")
            else defaults_d.ngram_size,
            embedding_model=options.embedding_model,
        )
        defaults_c = CleaningConfig()
        return CleaningConfig(
            min_instruction_length=spec.min_instruction_length
            if spec.HasField("min_instruction_length")
            else defaults_c.min_instruction_length,
            length_unit=UNIT_FROM_PROTO[spec.length_unit],
            english_only=spec.english_only if spec.HasField("english_only") else True,
            prefix_dedup_length=spec.prefix_dedup_length
            if spec.HasField("prefix_dedup_length")
            else defaults_c.prefix_dedup_length,
            minhash=minhash,
            decontamination=decontamination,
        )

    async def _eval_sets(self, sources: Sequence[pb.IngestSource]) -> list[EvalSet]:
        sets = []
        for source in sources:
            if source.uri.startswith(DATASET_URI_PREFIX):
                dataset_id = source.uri.removeprefix(DATASET_URI_PREFIX)
                records = await self._store.records(dataset_id, "evaluation_sets.uri")
                dataset = await self._store.get(dataset_id)
                sets.append(EvalSet(source.source_name or dataset.ref.name, records))
                continue
            item = ingest.IngestSource(
                _local_path(source.uri, "evaluation_sets.uri"),
                FORMAT_FROM_PROTO[source.format],
                source.source_name,
            )
            records, _ = await asyncio.to_thread(ingest.read_source, item)
            sets.append(EvalSet(ingest.source_name(item), records))
        return sets

    async def _clean(self, job: pb.SelectionJob, context: JobContext) -> JobOutcome:
        spec = job.spec.cleaning
        records = await self._store.records(spec.input_dataset_id, "spec.input_dataset_id")
        eval_sets = await self._eval_sets(spec.decontamination.evaluation_sets)
        config = self._cleaning_config(spec)
        embedder = self._embedder(spec.decontamination.embedding_model) if eval_sets else None
        kept, report = await asyncio.to_thread(
            clean_pool,
            records,
            config,
            eval_sets=eval_sets,
            embedder=embedder,
            progress=context.progress,
        )
        context.check()
        removals = report.removed_by_reason()
        for reason, count in removals.items():
            metrics.RECORDS_REMOVED.labels(reason).inc(count)
        rendered = artifacts.records_dataset(
            spec.output_name,
            DatasetKind.POOL,
            kept,
            parents=[spec.input_dataset_id],
            params=report.config,
            stats={"input": len(records), "removed": removals},
        )
        dataset = await self._publish(rendered, parents=[spec.input_dataset_id])
        report_ref = await self._store.put_report(job.job_id, report.to_dict())
        return JobOutcome(outputs=[dataset], removals=removals, report=report_ref)

    async def _split(self, spec: pb.SplitSpec, context: JobContext) -> JobOutcome:
        records = await self._store.records(spec.input_dataset_id, "spec.input_dataset_id")
        initial = spec.initial_slice_size if spec.HasField("initial_slice_size") else None
        seed = spec.seed if spec.HasField("seed") else 0
        slices = await asyncio.to_thread(
            split_pool, records, spec.num_slices, seed=seed, initial_slice_size=initial
        )
        outputs = []
        for part in slices:
            context.progress("publish", part.index, len(slices))
            rendered = artifacts.records_dataset(
                f"{spec.output_name}-{part.name}",
                DatasetKind.SPLIT,
                part.records,
                parents=[spec.input_dataset_id],
                params={
                    "seed": seed,
                    "num_slices": spec.num_slices,
                    "initial_slice_size": initial,
                    "slice_index": part.index,
                },
            )
            outputs.append(
                await self._publish(
                    rendered, parents=[spec.input_dataset_id], slice_index=part.index
                )
            )
        return JobOutcome(outputs=outputs)

    async def _test_set(self, spec: pb.TestSetSpec, context: JobContext) -> JobOutcome:
        records = await self._store.records(spec.input_dataset_id, "spec.input_dataset_id")
        defaults = TestSetConfig()
        config = TestSetConfig(
            num_clusters=spec.num_clusters
            if spec.HasField("num_clusters")
            else defaults.num_clusters,
            diverse_per_cluster=spec.diverse_per_cluster
            if spec.HasField("diverse_per_cluster")
            else defaults.diverse_per_cluster,
            hard_candidates_per_cluster=spec.hard_candidates_per_cluster
            if spec.HasField("hard_candidates_per_cluster")
            else defaults.hard_candidates_per_cluster,
            hard_size=spec.hard_size if spec.HasField("hard_size") else defaults.hard_size,
            seed=spec.seed if spec.HasField("seed") else 0,
        )
        loop = asyncio.get_running_loop()
        judge = spec.difficulty_judge
        if judge.protocol == common_pb2.JUDGE_PROTOCOL_UNSPECIFIED:
            judge.protocol = common_pb2.JUDGE_PROTOCOL_DIFFICULTY

        def rate(candidates: Sequence[Record]) -> list[float]:
            # Runs in the worker thread; the gRPC calls run on the service's event loop.
            context.progress("rate", 0, len(candidates))
            future = asyncio.run_coroutine_threadsafe(self._judge.rate(judge, candidates), loop)
            return future.result()

        result = await asyncio.to_thread(
            build_test_set,
            records,
            self._embedder(spec.embedding_model),
            config,
            rate,
            context.progress,
        )
        context.check()
        outputs = []
        for variant, subset, proto_variant in (
            ("diverse", result.diverse, pb.TEST_SET_VARIANT_DIVERSE),
            ("hard", result.hard, pb.TEST_SET_VARIANT_HARD),
            ("mix", result.mix, pb.TEST_SET_VARIANT_MIX),
        ):
            rendered = artifacts.records_dataset(
                f"{spec.output_name}-{variant}",
                DatasetKind.TEST_SET,
                subset,
                parents=[spec.input_dataset_id],
                params={
                    "variant": variant,
                    "judge": judge.name,
                    "judge_version": judge.version,
                    **{k: v for k, v in result.report.items() if k != "difficulty"},
                },
            )
            outputs.append(
                await self._publish(
                    rendered, parents=[spec.input_dataset_id], variant=proto_variant
                )
            )
        return JobOutcome(outputs=outputs)

    def _selection_config(self, spec: pb.TrainingDataSpec) -> training.SelectionConfig:
        stage = STAGE_FROM_PROTO.get(spec.stage)
        if stage is None:
            raise InvalidArgumentError("choose SFT, DPO, REWARD_MODEL or RL", where="spec.stage")
        return training.SelectionConfig(
            stage,
            spec.threshold,
            spec.target_model,
            COMPARISON_FROM_PROTO[spec.comparison],
            PAIRING_FROM_PROTO[spec.pairing],
        )

    async def _training(self, spec: pb.TrainingDataSpec, context: JobContext) -> JobOutcome:
        config = self._selection_config(spec)
        if spec.WhichOneof("judgments") == "judgments_uri":
            path = _local_path(spec.judgments_uri, "spec.judgments_uri")
            data = await asyncio.to_thread(path.read_bytes)
            prompts = training.read_judged_round(data, str(path))
            source = spec.judgments_uri
        else:
            prompts = await self._round_prompts(spec, context)
            source = f"round:{spec.round_id}"
        context.progress("select", 0, len(prompts))
        selection = await asyncio.to_thread(training.select_training_data, prompts, config)
        for entry in selection.lineage:
            metrics.EXAMPLES_SELECTED.labels(config.stage.value, entry["chosen_model"]).inc()
        earlier = []
        for dataset_id in spec.accumulate_dataset_ids:
            dataset = await self._store.get(dataset_id)
            rows = _jsonl(await self._store.file(dataset, artifacts.DATA_JSONL))
            lineage = _jsonl(await self._store.file(dataset, artifacts.LINEAGE))
            earlier.append((rows, lineage))
        if earlier:
            selection = training.accumulate(earlier, selection)
        rendered = training.render_selection(
            spec.output_name,
            selection,
            config,
            parents=list(spec.accumulate_dataset_ids),
            source=source,
        )
        context.check()
        shares = selection.model_shares()
        outputs = [
            await self._publish(
                rendered,
                parents=list(spec.accumulate_dataset_ids),
                stage=spec.stage,
                model_shares=shares,
                threshold=spec.threshold,
            )
        ]
        if selection.prompts:
            prompts_rendered = artifacts.render_dataset(
                f"{spec.output_name}-prompts",
                DatasetKind.PROMPTS,
                selection.prompts,
                params={"judged_round": source},
            )
            outputs.append(await self._publish(prompts_rendered, stage=spec.stage))
        return JobOutcome(outputs=outputs)

    async def _round_prompts(
        self, spec: pb.TrainingDataSpec, context: JobContext
    ) -> list[training.JudgedPrompt]:
        """The round's judgments (collected from JudgmentCompleted), the prompts they judged
        (looked up in the stored datasets) and the answers (from the inference service)."""
        prefix = round_prefix(spec.round_id)
        deadline = time.monotonic() + self._options.round_wait_seconds
        while True:
            try:
                keys = [key for key in await self._rounds.keys() if key.startswith(prefix)]
            except NoKeysError:
                keys = []
            expected = spec.expected_judgments if spec.HasField("expected_judgments") else 0
            context.progress("wait_judgments", len(keys), expected or None)
            if len(keys) >= max(expected, 1):
                break
            if time.monotonic() > deadline:
                raise FailedPreconditionError(
                    f"round {spec.round_id!r} holds {len(keys)} judgments, expected "
                    f"{max(expected, 1)}, after {self._options.round_wait_seconds:g}s"
                )
            await asyncio.sleep(1.0)
        judgments = []
        for key in keys:
            try:
                entry = await self._rounds.get(key)
            except KeyNotFoundError:
                continue
            judgments.append(judge_service_pb2.Judgment.FromString(entry.value or b""))
        by_prompt: dict[str, list[judge_service_pb2.Judgment]] = defaultdict(list)
        for judgment in judgments:
            by_prompt[judgment.prompt_id].append(judgment)
        records = await self._find_records(set(by_prompt))
        generation_ids = {
            gid
            for judgment in judgments
            for gid in (judgment.generation_id_a, judgment.generation_id_b)
            if gid
        }
        texts = await self._inference.texts(sorted(generation_ids))
        missing = sorted(generation_ids - set(texts))
        if missing:
            raise FailedPreconditionError(
                f"{len(missing)} answers of round {spec.round_id!r} are not in the inference "
                f"cache, e.g. {missing[0]}"
            )
        prompts = []
        for prompt_id in sorted(by_prompt):
            record = records[prompt_id]
            responses: dict[str, training.Response] = {}
            entries = []
            for judgment in sorted(by_prompt[prompt_id], key=lambda j: j.judgment_id):
                for model, gid in (
                    (judgment.model_a, judgment.generation_id_a),
                    (judgment.model_b, judgment.generation_id_b),
                ):
                    if not gid:
                        raise FailedPreconditionError(
                            f"judgment {judgment.judgment_id} judged an inline answer of "
                            f"{model}; selection needs cached generations"
                        )
                    responses[model] = training.Response(model, texts[gid], gid)
                entries.append(
                    training.JudgmentRecord(
                        judgment.judgment_id,
                        judgment.battle_id or judgment.judgment_id,
                        judgment.model_a,
                        judgment.model_b,
                        judgment.score_a if judgment.HasField("score_a") else None,
                        judgment.score_b if judgment.HasField("score_b") else None,
                        "BA" if judgment.order == judge_service_pb2.JUDGE_ORDER_BA else "AB",
                        f"{judgment.judge.name}@{judgment.judge.version}",
                    )
                )
            prompts.append(
                training.JudgedPrompt(
                    prompt_id,
                    tuple(record.prompt_messages),
                    responses,
                    tuple(entries),
                    record.category,
                    spec.round_id,
                    _reference_answer(record.meta),
                )
            )
        return prompts

    async def _find_records(self, prompt_ids: set[str]) -> dict[str, Record]:
        found: dict[str, Record] = {}
        for kind in (
            common_pb2.DATASET_KIND_SPLIT,
            common_pb2.DATASET_KIND_TEST_SET,
            common_pb2.DATASET_KIND_POOL,
        ):
            for dataset in await self._store.list_datasets(kind=kind):
                if len(found) == len(prompt_ids):
                    return found
                for record in await self._store.records(dataset.ref.dataset_id):
                    if record.id in prompt_ids and record.id not in found:
                        found[record.id] = record
        missing = sorted(prompt_ids - set(found))
        if missing:
            raise FailedPreconditionError(
                f"{len(missing)} judged prompts are in no stored dataset, e.g. {missing[0]}"
            )
        return found


def _need_name(name: str) -> None:
    if not name.strip():
        raise InvalidArgumentError("name the output dataset", where="spec.output_name")


def _local_path(uri: str, where: str) -> Path:
    if not uri:
        raise InvalidArgumentError("must not be empty", where=where)
    if "://" in uri and not uri.startswith("file://"):
        raise InvalidArgumentError(
            f"{uri!r}: only local files (a path or file://) are read here", where=where
        )
    path = Path(uri.removeprefix("file://"))
    if not path.exists():
        raise InvalidArgumentError(f"{path} does not exist on the selection service", where=where)
    return path


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def messages_from_proto(messages: Sequence[common_pb2.ChatMessage]) -> list[Message]:
    return [Message(ROLE_FROM_PROTO.get(m.role, "user"), m.content) for m in messages]


def _reference_answer(meta: dict[str, Any]) -> str | None:
    value = meta.get("reference_answer")
    return None if value in (None, "") else str(value)
