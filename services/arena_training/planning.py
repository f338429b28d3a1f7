"""Turns a `TrainingRunSpec` into a plan the runners can execute, or rejects it before any job
starts: an unknown dataset, a field out of range, a base model that is missing, a dataset in the
wrong format for the recipe, a runner this service does not have. Every error names the field.

Planning is repeatable: the supervisor plans again before each attempt (a resume after a restart
needs nothing but the stored spec, whose datasets carry their resolved files).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arena_core.hashing import content_hash
from arena_training.clients import DatasetCatalog, DatasetFetcher
from arena_training.convert import (
    KIND_FROM_PROTO,
    STAGE_FROM_PROTO,
    judge_spec_to_json,
    recipe_from_proto,
    stage_of,
)
from arena_training.domain.datasets import (
    DatasetKind,
    FileFormat,
    check_kind,
    check_records,
    file_format,
    read_head,
)
from arena_training.domain.job import (
    DataFiles,
    ModelLocation,
    TrainingJob,
    checkpoint_dir,
    checkpoint_id_for,
    run_dir,
)
from arena_training.domain.recipes import (
    JudgeReward,
    Recipe,
    RewardModelReward,
    Stage,
    validate_recipe,
)
from arena_training.runners.base import Placement
from arena_training.settings import TrainingOptions
from arena_training.store import CheckpointRegistry

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

RUNNER_NAMES = {pb.RUNNER_KIND_LOCAL: "local", pb.RUNNER_KIND_KUBERNETES: "kubernetes"}
RUNNER_KINDS = {name: kind for kind, name in RUNNER_NAMES.items()}


@dataclass(frozen=True)
class Plan:
    stage: Stage
    recipe: Recipe
    base: ModelLocation
    datasets: tuple[DataFiles, ...]
    eval_datasets: tuple[DataFiles, ...]
    # The request's dataset references with kinds and files filled in (stored with the run).
    resolved_datasets: tuple[common_pb2.DatasetRef, ...]
    resolved_eval_datasets: tuple[common_pb2.DatasetRef, ...]
    placement: Placement
    model_name: str
    checkpoint_id: str

    def job(self, run_id: str, attempt: int, work_dir: Path, store_dir: Path) -> TrainingJob:
        return TrainingJob(
            run_id=run_id,
            attempt=attempt,
            recipe=self.recipe,
            base=self.base,
            datasets=self.datasets,
            eval_datasets=self.eval_datasets,
            output_dir=str(run_dir(work_dir, run_id) / "output"),
            final_dir=str(checkpoint_dir(store_dir, self.model_name, self.checkpoint_id)),
            checkpoint_id=self.checkpoint_id,
            model_name=self.model_name,
            world_size=self.placement.world_size,
        )


class RunPlanner:
    def __init__(
        self,
        options: TrainingOptions,
        catalog: DatasetCatalog,
        fetcher: DatasetFetcher,
        checkpoints: CheckpointRegistry,
        runners: Sequence[str],
    ) -> None:
        self._options = options
        self._catalog = catalog
        self._fetcher = fetcher
        self._checkpoints = checkpoints
        self._runners = frozenset(runners)
        self._work_dir = options.resolved_work_dir()

    async def plan(self, spec: pb.TrainingRunSpec, run_id: str, where: str = "spec") -> Plan:
        stage = stage_of(spec.recipe)
        if stage is None:
            raise InvalidArgumentError(
                "choose the stage: set one of sft, dpo, reward_model or rl",
                where=f"{where}.recipe",
            )
        placement = self.placement(spec.placement, where=f"{where}.placement")
        reward = await self._reward(spec.recipe, stage, placement, where=f"{where}.recipe.rl")
        recipe = recipe_from_proto(spec.recipe, reward=reward, where=f"{where}.recipe")
        validate_recipe(recipe, world_size=placement.world_size, where=f"{where}.recipe")
        await _check_overrides(stage, recipe.trainer_overrides, f"{where}.recipe.trainer_overrides")
        base, base_name = await self.model_location(spec.base, placement, where=f"{where}.base")
        resolved, files = await self._datasets(spec.datasets, stage, where=f"{where}.datasets")
        resolved_eval, eval_files = await self._datasets(
            spec.eval_datasets, stage, where=f"{where}.eval_datasets", required=False
        )
        model_name = spec.output_model_name or f"{base_name}-{stage.value.replace('_', '-')}"
        return Plan(
            stage=stage,
            recipe=recipe,
            base=base,
            datasets=files,
            eval_datasets=eval_files,
            resolved_datasets=resolved,
            resolved_eval_datasets=resolved_eval,
            placement=placement,
            model_name=model_name,
            checkpoint_id=checkpoint_id_for(run_id),
        )

    # --- placement ---------------------------------------------------------------------------

    def placement(self, requested: pb.Placement, *, where: str) -> Placement:
        runner = RUNNER_NAMES.get(requested.runner, self._options.runner)
        if runner not in self._runners:
            raise FailedPreconditionError(
                f"{where}.runner: the {runner} runner is not configured on this service "
                f"(available: {', '.join(sorted(self._runners))})"
            )
        num_nodes = requested.num_nodes if requested.HasField("num_nodes") else 1
        if not 1 <= num_nodes <= 1024:
            raise InvalidArgumentError(
                f"must be in [1, 1024] (got {num_nodes})", where=f"{where}.num_nodes"
            )
        tolerations = tuple(_toleration(t) for t in requested.tolerations)
        if runner == "local":
            gpus = (
                requested.gpus_per_node
                if requested.HasField("gpus_per_node")
                else self._options.local.gpus
            )
            if num_nodes != 1:
                raise InvalidArgumentError(
                    "a local run has one node; use the kubernetes runner for several",
                    where=f"{where}.num_nodes",
                )
            if not 0 <= gpus <= self._options.local.gpus:
                raise InvalidArgumentError(
                    f"this service has {self._options.local.gpus} GPU(s) for local runs "
                    f"(got {gpus})",
                    where=f"{where}.gpus_per_node",
                )
            return Placement(runner="local", num_nodes=1, gpus_per_node=gpus)
        kube = self._options.kubernetes
        gpus = (
            requested.gpus_per_node if requested.HasField("gpus_per_node") else kube.gpus_per_node
        )
        if not 0 <= gpus <= 64:
            raise InvalidArgumentError(
                f"must be in [0, 64] (got {gpus})", where=f"{where}.gpus_per_node"
            )
        image = requested.image or kube.image
        if not image:
            raise FailedPreconditionError(
                f"{where}.image: no training image is configured "
                "(ARENA_TRAINING__KUBERNETES__IMAGE)"
            )
        settings_tolerations = tuple(
            t.model_dump(by_alias=True, exclude_none=True) for t in kube.tolerations
        )
        return Placement(
            runner="kubernetes",
            num_nodes=num_nodes,
            gpus_per_node=gpus,
            cpu=requested.cpu or kube.cpu,
            memory=requested.memory or kube.memory,
            node_selector={**kube.node_selector, **dict(requested.node_selector)},
            tolerations=settings_tolerations + tolerations,
            image=image,
            priority_class_name=requested.priority_class_name or kube.priority_class_name,
        )

    # --- models ------------------------------------------------------------------------------

    async def model_location(
        self, source: pb.ModelSource, placement: Placement, *, where: str, depth: int = 0
    ) -> tuple[ModelLocation, str]:
        """Where the weights are, and a short name for them (for the default model name)."""
        which = source.WhichOneof("source")
        if which is None:
            raise InvalidArgumentError("set uri or checkpoint_id", where=where)
        if which == "checkpoint_id":
            checkpoint = await self._checkpoints.get(source.checkpoint_id)
            if checkpoint is None:
                raise NotFoundError(
                    f"{where}.checkpoint_id: no checkpoint {source.checkpoint_id!r} is registered"
                )
            path = _path_of(checkpoint.artifact.uri)
            if checkpoint.format == pb.CHECKPOINT_FORMAT_ADAPTER:
                if depth > 0:
                    raise InvalidArgumentError(
                        "an adapter trained on another adapter cannot be loaded; train the "
                        "earlier stage without LoRA or start from its base",
                        where=f"{where}.checkpoint_id",
                    )
                base, _ = await self.model_location(
                    checkpoint.base,
                    placement,
                    where=f"{where} (base of {checkpoint.checkpoint_id})",
                    depth=1,
                )
                return (
                    ModelLocation(path=base.path, revision=base.revision, adapter_path=str(path)),
                    checkpoint.model_name,
                )
            return ModelLocation(path=str(path)), checkpoint.model_name
        return self._uri_location(source.uri, source.revision, placement, where=f"{where}.uri")

    def _uri_location(
        self, uri: str, revision: str, placement: Placement, *, where: str
    ) -> tuple[ModelLocation, str]:
        parsed = urlparse(uri)
        if parsed.scheme == "hf" or (
            not parsed.scheme and _HUB_ID.match(uri) and not Path(uri).exists()
        ):
            repo = (parsed.netloc + parsed.path) if parsed.scheme == "hf" else uri
            return self._hub_location(repo, revision, where=where), repo.rsplit("/", 1)[-1]
        if parsed.scheme not in ("", "file"):
            raise InvalidArgumentError(
                f"cannot train from {uri!r}: use a local or volume path, a file:// URI, a "
                "registered checkpoint_id or a Hugging Face id",
                where=where,
            )
        path = Path(unquote(parsed.path) if parsed.scheme else uri).expanduser()
        visible = placement.runner == "local" or _is_within(path, self._work_dir)
        if visible and not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise NotFoundError(f"{where}: base model {uri!r} is missing: {path} {what}")
        return ModelLocation(path=str(path), revision=revision), path.name or "model"

    def _hub_location(self, repo: str, revision: str, *, where: str) -> ModelLocation:
        if not self._options.allow_hub_models:
            raise InvalidArgumentError(
                f"hub models are not allowed here (ARENA_TRAINING__ALLOW_HUB_MODELS); got {repo!r}",
                where=where,
            )
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(repo, "config.json", revision=revision or None)
            if not isinstance(cached, str):
                raise NotFoundError(
                    f"{where}: base model {repo!r} is missing: not in the local Hugging Face "
                    "cache, and the hub is offline (HF_HUB_OFFLINE)"
                )
        return ModelLocation(path=repo, revision=revision)

    # --- rewards -----------------------------------------------------------------------------

    async def _reward(
        self, recipe: pb.Recipe, stage: Stage, placement: Placement, *, where: str
    ) -> RewardModelReward | JudgeReward | None:
        if stage is not Stage.RL:
            return None
        which = recipe.rl.WhichOneof("reward")
        if which is None:
            raise InvalidArgumentError(
                "needs a reward: set reward_model (a trained reward model) or judge", where=where
            )
        if which == "judge":
            judge = recipe.rl.judge
            if not judge.name:
                raise InvalidArgumentError("the judge needs a name", where=f"{where}.judge.name")
            if not self._options.judge_target:
                raise FailedPreconditionError(
                    f"{where}.judge: no judge service is configured for RL rewards "
                    "(ARENA_TRAINING__JUDGE_TARGET)"
                )
            return JudgeReward(judge=judge_spec_to_json(judge), target=self._options.judge_target)
        source = recipe.rl.reward_model
        if source.WhichOneof("source") == "checkpoint_id":
            checkpoint = await self._checkpoints.get(source.checkpoint_id)
            if checkpoint is not None and checkpoint.stage != STAGE_TO_REWARD:
                stage_name = STAGE_FROM_PROTO.get(checkpoint.stage)
                found = stage_name.value if stage_name else "unknown"
                raise InvalidArgumentError(
                    f"checkpoint {source.checkpoint_id!r} is a {found} checkpoint, "
                    "not a reward model",
                    where=f"{where}.reward_model.checkpoint_id",
                )
        location, _ = await self.model_location(source, placement, where=f"{where}.reward_model")
        if location.adapter_path:
            raise InvalidArgumentError(
                "a LoRA reward model cannot score rollouts directly; train the reward model "
                "without LoRA",
                where=f"{where}.reward_model",
            )
        return RewardModelReward(path=location.path, revision=location.revision)

    # --- datasets ----------------------------------------------------------------------------

    async def _datasets(
        self,
        refs: Sequence[common_pb2.DatasetRef],
        stage: Stage,
        *,
        where: str,
        required: bool = True,
    ) -> tuple[tuple[common_pb2.DatasetRef, ...], tuple[DataFiles, ...]]:
        if required and not refs:
            raise InvalidArgumentError("at least one training dataset is required", where=where)
        resolved: list[common_pb2.DatasetRef] = []
        files: list[DataFiles] = []
        for index, ref in enumerate(refs):
            at = f"{where}[{index}]"
            if ref.files:
                full = ref
            elif ref.dataset_id:
                full = await self._catalog.get(ref.dataset_id, where=at)
            else:
                raise InvalidArgumentError("set dataset_id or files", where=at)
            label = full.name or ref.name or full.dataset_id or ref.dataset_id
            check_kind(
                stage,
                KIND_FROM_PROTO.get(full.kind, DatasetKind.UNSPECIFIED),
                where=f"{at}.kind",
                name=label,
            )
            data = await self._data_files(full, stage, at, label)
            merged = common_pb2.DatasetRef()
            merged.CopyFrom(full)
            merged.dataset_id = merged.dataset_id or ref.dataset_id or data.dataset_id
            resolved.append(merged)
            files.append(data)
        return tuple(resolved), tuple(files)

    async def _data_files(
        self, ref: common_pb2.DatasetRef, stage: Stage, where: str, label: str
    ) -> DataFiles:
        by_format: dict[FileFormat, list[tuple[int, common_pb2.ArtifactRef]]] = {}
        for index, artifact in data_files_of(ref.files):
            fmt = file_format(artifact.uri, artifact.media_type)
            if fmt is not None:
                by_format.setdefault(fmt, []).append((index, artifact))
        if not by_format:
            raise InvalidArgumentError(
                f"dataset {label!r} has no JSON Lines or Parquet file", where=f"{where}.files"
            )
        # JSONL and Parquet files hold the same records; one format is enough.
        fmt = FileFormat.JSONL if FileFormat.JSONL in by_format else FileFormat.PARQUET
        dataset_id = ref.dataset_id or "inline-" + content_hash(*(a.uri for a in ref.files))[:16]
        paths = [
            await self._fetcher.local_path(
                artifact, dataset_id=dataset_id, where=f"{where}.files[{index}]"
            )
            for index, artifact in by_format[fmt]
        ]
        head = await asyncio.to_thread(read_head, paths[0], fmt)
        check_records(stage, head, where=f"{where} ({paths[0].name})", name=label)
        return DataFiles(
            dataset_id=dataset_id, name=label, format=fmt, files=tuple(str(p) for p in paths)
        )


STAGE_TO_REWARD = common_pb2.TRAINING_STAGE_REWARD_MODEL

# Files a published dataset carries besides its records (the selection service's layout:
# data.jsonl / data.parquet with the records, lineage.jsonl, the manifest).
_NOT_RECORDS = frozenset({"lineage", "manifest", "dataset", "report"})


def data_files_of(
    files: Sequence[common_pb2.ArtifactRef],
) -> list[tuple[int, common_pb2.ArtifactRef]]:
    """The files that hold a dataset's records: `data.*` (or `data-<shard>.*`) when the dataset
    names them so, otherwise every file but lineage and manifests."""
    indexed = [
        (index, artifact)
        for index, artifact in enumerate(files)
        if Path(urlparse(artifact.uri).path).stem.lower() not in _NOT_RECORDS
    ]
    named = [
        (index, artifact)
        for index, artifact in indexed
        if re.fullmatch(r"data(-\d+(-of-\d+)?)?", Path(urlparse(artifact.uri).path).stem.lower())
    ]
    return named or indexed


def _toleration(toleration: pb.Toleration) -> dict[str, Any]:
    value: dict[str, Any] = {"key": toleration.key, "operator": toleration.operator or "Equal"}
    if toleration.value:
        value["value"] = toleration.value
    if toleration.effect:
        value["effect"] = toleration.effect
    if toleration.HasField("toleration_seconds"):
        value["tolerationSeconds"] = toleration.toleration_seconds
    return value


def _path_of(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


@functools.cache
def _config_fields(stage: Stage) -> frozenset[str]:
    """Argument names of the TRL config class a stage uses (imports TRL: slow, cached)."""
    import dataclasses

    configs: tuple[Any, ...]
    if stage is Stage.SFT:
        from trl.trainer.sft_config import SFTConfig

        configs = (SFTConfig,)
    elif stage is Stage.DPO:
        from trl.trainer.dpo_config import DPOConfig

        configs = (DPOConfig,)
    elif stage is Stage.REWARD_MODEL:
        from trl.trainer.reward_config import RewardConfig

        configs = (RewardConfig,)
    else:
        from trl.trainer.grpo_config import GRPOConfig
        from trl.trainer.rloo_config import RLOOConfig

        configs = (RLOOConfig, GRPOConfig)
    return frozenset(field.name for config in configs for field in dataclasses.fields(config))


async def _check_overrides(stage: Stage, overrides: dict[str, Any], where: str) -> None:
    if not overrides:
        return
    known = await asyncio.to_thread(_config_fields, stage)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidArgumentError(
            f"{unknown} are not arguments of TRL's {stage.value} trainer config", where=where
        )
