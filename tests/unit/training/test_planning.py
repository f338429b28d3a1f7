"""Planning a run: bad requests are rejected before any job starts, naming what and where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from arena_training.clients import DatasetFetcher, NoCatalog
from arena_training.domain.datasets import FileFormat
from arena_training.planning import RunPlanner
from arena_training.settings import TrainingOptions
from tests.integration.training.specs import run_spec
from tests.support.tiny_models import tiny_chat_model

from .data import preference_records, prompt_records, sft_records, write_dataset


class Checkpoints:
    def __init__(self, *checkpoints: pb.Checkpoint) -> None:
        self._by_id = {c.checkpoint_id: c for c in checkpoints}

    async def get(self, checkpoint_id: str) -> pb.Checkpoint | None:
        return self._by_id.get(checkpoint_id)


class Catalog:
    def __init__(self, *refs: common_pb2.DatasetRef) -> None:
        self._by_id = {ref.dataset_id: ref for ref in refs}

    async def get(self, dataset_id: str, *, where: str) -> common_pb2.DatasetRef:
        if dataset_id not in self._by_id:
            raise NotFoundError(f"{where}: unknown dataset {dataset_id!r}")
        return self._by_id[dataset_id]

    async def close(self) -> None:
        return None


def planner(
    tmp_path: Path, *, catalog: Any = None, checkpoints: Any = None, **options: Any
) -> RunPlanner:
    settings = TrainingOptions(work_dir=tmp_path / "work", **options)
    return RunPlanner(
        settings,
        catalog or NoCatalog(),
        DatasetFetcher(tmp_path / "work" / "datasets"),
        checkpoints or Checkpoints(),
        runners=["local"],
    )


def base() -> pb.ModelSource:
    return pb.ModelSource(uri=str(tiny_chat_model()))


@pytest.fixture
def data(tmp_path: Path) -> dict[str, common_pb2.DatasetRef]:
    folder = tmp_path / "data"
    return {
        "sft": write_dataset(folder, "sft", "sft", sft_records(range(8))),
        "preference": write_dataset(folder, "pairs", "preference", preference_records(range(8))),
        "prompts": write_dataset(folder, "prompts", "prompts", prompt_records(range(8))),
    }


async def test_a_valid_spec_resolves_files_kinds_and_names(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    catalog = Catalog(data["sft"])
    plan = await planner(tmp_path, catalog=catalog).plan(
        run_spec(
            "sft", base=base(), datasets=[common_pb2.DatasetRef(dataset_id=data["sft"].dataset_id)]
        ),
        "run-1",
    )
    assert plan.model_name == f"{Path(tiny_chat_model()).name}-sft"
    assert plan.datasets[0].format is FileFormat.JSONL  # one copy is enough
    # The records, not the lineage file published next to them.
    assert [Path(f).name for f in plan.datasets[0].files] == ["data.jsonl"]
    assert plan.resolved_datasets[0].files == data["sft"].files  # stored for resumes
    job = plan.job("run-1", 1, tmp_path / "work", tmp_path / "store")
    assert job.final_dir.endswith(plan.checkpoint_id)
    assert job.recipe.hyperparameters.max_steps == 6


async def test_an_unknown_dataset_is_rejected(tmp_path: Path) -> None:
    spec = run_spec("sft", base=base(), datasets=[common_pb2.DatasetRef(dataset_id="nope")])
    with pytest.raises(NotFoundError, match=r"spec.datasets\[0\]: unknown dataset 'nope'"):
        await planner(tmp_path, catalog=Catalog()).plan(spec, "r")
    with pytest.raises(NotFoundError, match="no dataset catalog is configured"):
        await planner(tmp_path).plan(spec, "r")


async def test_a_recipe_field_out_of_range_is_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    spec = run_spec("dpo", base=base(), datasets=[data["preference"]])
    spec.recipe.dpo.beta = -1
    with pytest.raises(InvalidArgumentError) as caught:
        await planner(tmp_path).plan(spec, "r")
    assert caught.value.where == "spec.recipe.dpo.beta"


async def test_a_missing_base_model_is_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    spec = run_spec("sft", base=pb.ModelSource(uri="/models/none"), datasets=[data["sft"]])
    with pytest.raises(
        NotFoundError, match=r"spec\.base\.uri: base model '/models/none' is missing"
    ):
        await planner(tmp_path).plan(spec, "r")
    spec.base.checkpoint_id = "ckpt-unknown"
    with pytest.raises(NotFoundError, match="no checkpoint 'ckpt-unknown' is registered"):
        await planner(tmp_path).plan(spec, "r")
    spec.ClearField("base")
    with pytest.raises(InvalidArgumentError, match="set uri or checkpoint_id"):
        await planner(tmp_path).plan(spec, "r")


async def test_a_hub_model_must_be_cached_when_the_hub_is_offline(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = run_spec("sft", base=pb.ModelSource(uri="org/never-downloaded"), datasets=[data["sft"]])
    with pytest.raises(NotFoundError, match="not in the local Hugging Face cache"):
        await planner(tmp_path).plan(spec, "r")


async def test_a_dataset_in_the_wrong_format_is_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    sft_with_pairs = run_spec("sft", base=base(), datasets=[data["preference"]])
    with pytest.raises(InvalidArgumentError, match="is a preference dataset, but a sft run") as c:
        await planner(tmp_path).plan(sft_with_pairs, "r")
    assert c.value.where == "spec.datasets[0].kind"

    undeclared = common_pb2.DatasetRef()
    undeclared.CopyFrom(data["sft"])
    undeclared.kind = common_pb2.DATASET_KIND_UNSPECIFIED
    dpo_with_sft = run_spec("dpo", base=base(), datasets=[undeclared])
    with pytest.raises(InvalidArgumentError, match="wrong format for a dpo run") as c:
        await planner(tmp_path).plan(dpo_with_sft, "r")
    assert c.value.where is not None
    assert c.value.where.startswith("spec.datasets[0] (data.jsonl) record 0")

    pool = write_dataset(
        tmp_path / "data",
        "pool",
        "pool",
        [{"id": "c1", "source": "sharegpt", "messages": [{"role": "user", "content": "hi"}]}],
    )
    with pytest.raises(InvalidArgumentError, match="is a pool dataset"):
        await planner(tmp_path).plan(run_spec("sft", base=base(), datasets=[pool]), "r")


def _tamper(path: Path) -> None:
    path.write_text(path.read_text().replace("plus", "PLUS"))  # same size, other bytes


async def test_a_changed_dataset_file_is_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    _tamper(Path(data["sft"].files[0].uri.removeprefix("file://")))
    with pytest.raises(InvalidArgumentError, match="does not match its sha256"):
        await planner(tmp_path).plan(run_spec("sft", base=base(), datasets=[data["sft"]]), "r")


async def test_runners_and_rewards_the_service_lacks_are_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    spec = run_spec("sft", base=base(), datasets=[data["sft"]])
    spec.placement.runner = pb.RUNNER_KIND_KUBERNETES
    with pytest.raises(FailedPreconditionError, match="kubernetes runner is not configured"):
        await planner(tmp_path).plan(spec, "r")
    spec.placement.runner = pb.RUNNER_KIND_LOCAL
    spec.placement.gpus_per_node = 2
    with pytest.raises(InvalidArgumentError, match="0 GPU"):
        await planner(tmp_path).plan(spec, "r")

    rl = run_spec("rl", base=base(), datasets=[data["prompts"]])
    rl.recipe.rl.ClearField("reward_model")
    with pytest.raises(InvalidArgumentError, match="needs a reward"):
        await planner(tmp_path).plan(rl, "r")
    rl.recipe.rl.judge.name = "arena-pairwise"
    with pytest.raises(FailedPreconditionError, match="ARENA_TRAINING__JUDGE_TARGET"):
        await planner(tmp_path).plan(rl, "r")
    plan = await planner(tmp_path, judge_target="judge:50051").plan(rl, "r")
    assert plan.recipe.rl is not None
    assert plan.recipe.rl.reward is not None
    assert plan.recipe.rl.reward.kind == "judge"

    sft_checkpoint = pb.Checkpoint(
        checkpoint_id="ckpt-sft", stage=common_pb2.TRAINING_STAGE_SFT, model_name="t"
    )
    sft_checkpoint.artifact.uri = Path(tiny_chat_model()).as_uri()
    rl.recipe.rl.reward_model.checkpoint_id = "ckpt-sft"
    with pytest.raises(InvalidArgumentError, match="is a sft checkpoint, not a reward model"):
        await planner(tmp_path, checkpoints=Checkpoints(sft_checkpoint)).plan(rl, "r")


async def test_an_adapter_checkpoint_loads_on_its_base(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    adapter = pb.Checkpoint(
        checkpoint_id="ckpt-lora",
        stage=common_pb2.TRAINING_STAGE_SFT,
        format=pb.CHECKPOINT_FORMAT_ADAPTER,
        model_name="target-sft",
    )
    adapter.artifact.uri = (tmp_path / "adapter").as_uri()
    adapter.base.uri = str(tiny_chat_model())
    spec = run_spec(
        "dpo", base=pb.ModelSource(checkpoint_id="ckpt-lora"), datasets=[data["preference"]]
    )
    plan = await planner(tmp_path, checkpoints=Checkpoints(adapter)).plan(spec, "r")
    assert plan.base.path == str(tiny_chat_model())
    assert plan.base.adapter_path == str(tmp_path / "adapter")
    assert plan.model_name == "target-sft-dpo"


async def test_unknown_trainer_overrides_are_rejected(
    tmp_path: Path, data: dict[str, common_pb2.DatasetRef]
) -> None:
    spec = run_spec("sft", base=base(), datasets=[data["sft"]])
    spec.recipe.trainer_overrides.update({"optim": "adamw_torch", "learning_rat": 1})
    with pytest.raises(InvalidArgumentError, match=r"\['learning_rat'\] are not arguments"):
        await planner(tmp_path).plan(spec, "r")
