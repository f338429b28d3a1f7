"""The demo kit: assets on disk, warm-up runs, stage recipes and the flywheel spec."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml
from google.protobuf import json_format

from arena.training.v1 import training_service_pb2 as training_pb
from arena_cli.demo.models import ModelSize
from arena_cli.demo.warmup import (
    DemoAssets,
    DemoDesign,
    build_demo_assets,
    demo_spec_yaml,
    sft_rows,
    stage_recipes,
)
from arena_flywheel.domain import parse_spec
from arena_training.convert import recipe_from_proto
from arena_training.domain.datasets import Stage, check_records
from arena_training.domain.recipes import JudgeReward, validate_recipe

SMALL = DemoDesign(
    model=ModelSize(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1),
    slice_size=12,
    test_size=16,
    target_data_size=20,
    opponent_data_size=60,
)


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    return build_demo_assets(tmp_path_factory.mktemp("demo"), seed=4, design=SMALL)


def test_data_files_have_their_sizes_and_never_share_an_instruction(assets: DemoAssets) -> None:
    pool, test = _lines(assets.pool), _lines(assets.test_set)
    target, opponents = _lines(assets.target_data), _lines(assets.opponent_data)
    assert len(pool) == SMALL.slice_size * SMALL.pool_slices
    assert (len(test), len(target), len(opponents)) == (16, 20, 60)
    instructions = [
        {row["messages"][0]["content"] for row in rows} for rows in (pool, test, target, opponents)
    ]
    for index, first in enumerate(instructions):
        for second in instructions[index + 1 :]:
            assert not first & second
    assert all(row["meta"]["reference_answer"] for row in pool + test)
    check_records(Stage.SFT, target, where="target")
    check_records(Stage.SFT, opponents, where="opponents")


def test_assets_are_deterministic(assets: DemoAssets, tmp_path: Path) -> None:
    again = build_demo_assets(tmp_path, seed=4, design=SMALL)
    for name in ("pool", "test_set", "target_data", "opponent_data"):
        assert getattr(again, name).read_bytes() == getattr(assets, name).read_bytes()


def test_warmup_runs_train_the_target_and_chain_the_opponents(assets: DemoAssets) -> None:
    target, weak, medium, strong = assets.warmup
    assert target.model_name == "target"
    assert target.base_path == assets.target_base
    assert target.recipe.hyperparameters.max_steps == SMALL.target_steps
    assert weak.base_path == assets.opponent_base
    assert weak.after is None
    assert (medium.after, strong.after) == (weak.model_name, medium.model_name)
    steps = [run.recipe.hyperparameters.max_steps for run in assets.opponent_runs]
    assert [sum(steps[: i + 1]) for i in range(3)] == [n for _, n in SMALL.opponents]
    spec = medium.spec(base_checkpoint_id="ckpt-weak")
    assert spec.base.checkpoint_id == "ckpt-weak"
    assert spec.output_model_name == medium.model_name
    assert spec.datasets[0].files[0].uri == assets.opponent_data.resolve().as_uri()
    assert target.spec().base.uri == str(assets.target_base)
    with pytest.raises(ValueError, match="checkpoint id"):
        strong.spec()


def test_every_recipe_is_valid_for_the_training_service(assets: DemoAssets) -> None:
    judge = JudgeReward(judge={"name": "reference", "protocol": "JUDGE_PROTOCOL_REFERENCE"})
    for stage, recipe in stage_recipes(SMALL).items():
        domain = recipe_from_proto(recipe, reward=judge if stage == "rl" else None)
        validate_recipe(domain)
        assert domain.stage.value == stage
    for run in assets.warmup:
        validate_recipe(recipe_from_proto(run.recipe))


def test_spec_parses_and_its_overrides_rebuild_the_recipes(assets: DemoAssets) -> None:
    paths = {name: f"/ckpt/{name}" for name in assets.opponent_names}
    text = demo_spec_yaml(assets, target_path="/ckpt/target", opponent_paths=paths)
    spec = parse_spec(text, "demo.yaml")
    assert spec.judge.protocol == "reference"
    assert spec.opponents == assets.opponent_names
    assert spec.iterations == 2
    assert spec.stages == ["sft", "dpo", "rl"]
    assert spec.pool.slices == 1 + 2 * 3
    assert spec.models["target"].path == "/ckpt/target"
    assert spec.generation.max_tokens == SMALL.max_new_tokens
    recipes = stage_recipes(SMALL)
    for stage in ("sft", "dpo", "rl"):
        overrides = dict(getattr(spec.training, stage))
        rebuilt = json_format.ParseDict(overrides, training_pb.Recipe())
        assert rebuilt == recipes[stage], stage
    assert yaml.safe_load(text)["training"]["dpo"]["dpo"]["beta"] == recipes["dpo"].dpo.beta


def test_sft_rows_from_pool_records(assets: DemoAssets) -> None:
    rows = sft_rows(_lines(assets.pool)[:5])
    check_records(Stage.SFT, rows, where="d0")
    assert rows[0]["messages"][-1]["content"] == _lines(assets.pool)[0]["meta"]["reference_answer"]
    with pytest.raises(ValueError, match="reference_answer"):
        sft_rows([{"id": "x", "messages": [{"role": "user", "content": "hi"}]}])
