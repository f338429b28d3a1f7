"""Recipes: the paper's defaults, every field overridable, out-of-range fields named."""

from __future__ import annotations

import doctest

import pytest
from google.protobuf import struct_pb2

from arena.training.v1 import training_service_pb2 as pb
from arena_core.errors import InvalidArgumentError
from arena_training.convert import recipe_from_proto
from arena_training.domain import launch, outcome, progress
from arena_training.domain.recipes import (
    Precision,
    RewardModelReward,
    RlAlgorithm,
    Stage,
    build_recipe,
    defaults_for,
    validate_recipe,
)

REWARD = RewardModelReward(path="/models/rm")


def test_paper_hyperparameters_are_the_defaults() -> None:
    sft, dpo, rm, rl = (defaults_for(stage) for stage in Stage)
    assert (sft.num_epochs, sft.learning_rate, sft.max_length) == (3.0, 5e-6, 4096)
    assert sft.global_batch_size == 128
    assert (dpo.num_epochs, dpo.learning_rate) == (2.0, 5e-7)
    assert (rm.num_epochs, rm.learning_rate) == (1.0, 1e-6)
    assert (rl.num_epochs, rl.learning_rate) == (1.0, 1e-7)
    assert build_recipe(Stage.DPO).dpo is not None
    assert build_recipe(Stage.DPO).dpo.beta == 0.3  # type: ignore[union-attr]
    rl_recipe = build_recipe(Stage.RL, options={"reward": REWARD})
    assert rl_recipe.rl is not None
    assert rl_recipe.rl.kl_coef == 0.4
    assert rl_recipe.rl.algorithm is RlAlgorithm.RLOO


def test_the_global_batch_of_128_sets_gradient_accumulation_per_world_size() -> None:
    h = build_recipe(Stage.SFT, hyperparameters={"per_device_batch_size": 4}).hyperparameters
    assert h.accumulation_for(1) == 32
    assert h.accumulation_for(8) == 4
    assert h.accumulation_for(64) == 1
    explicit = build_recipe(Stage.SFT, hyperparameters={"gradient_accumulation_steps": 3})
    assert explicit.hyperparameters.accumulation_for(8) == 3


def test_every_proto_field_overrides_its_default() -> None:
    recipe = pb.Recipe()
    recipe.dpo.beta = 0.1
    recipe.dpo.loss_type = "ipo"
    recipe.dpo.max_prompt_length = 512
    h = recipe.hyperparameters
    h.learning_rate, h.num_epochs, h.per_device_batch_size = 1e-6, 1.5, 2
    h.gradient_accumulation_steps, h.max_length, h.warmup_ratio = 8, 2048, 0.1
    h.lr_scheduler, h.weight_decay, h.max_steps, h.seed = "linear", 0.01, 100, 7
    h.precision, h.gradient_checkpointing, h.save_steps, h.logging_steps = (
        pb.PRECISION_BF16,
        False,
        50,
        5,
    )
    recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout = 8, 16, 0.1
    recipe.lora.target_modules.extend(["q_proj", "v_proj"])
    recipe.deepspeed.zero_stage = pb.ZERO_STAGE_3
    recipe.deepspeed.offload_parameters = True
    recipe.trainer_overrides.update({"optim": "adamw_torch", "dataloader_num_workers": 2})

    result = recipe_from_proto(recipe)

    assert result.stage is Stage.DPO
    assert result.dpo is not None
    assert (result.dpo.beta, result.dpo.loss_type, result.dpo.max_prompt_length) == (
        0.1,
        "ipo",
        512,
    )
    hp = result.hyperparameters
    assert (hp.learning_rate, hp.num_epochs, hp.per_device_batch_size) == (1e-6, 1.5, 2)
    assert (hp.gradient_accumulation_steps, hp.max_length, hp.lr_scheduler) == (8, 2048, "linear")
    assert (hp.max_steps, hp.seed, hp.precision) == (100, 7, Precision.BF16)
    assert hp.gradient_checkpointing is False
    assert result.lora is not None
    assert result.lora.target_modules == ("q_proj", "v_proj")
    assert (result.deepspeed.zero_stage, result.deepspeed.offload_parameters) == (3, True)
    # Struct stores numbers as doubles; whole numbers come back as ints.
    assert result.trainer_overrides == {"optim": "adamw_torch", "dataloader_num_workers": 2}


def test_unset_proto_fields_keep_the_paper_defaults() -> None:
    recipe = pb.Recipe()
    recipe.sft.SetInParent()
    result = recipe_from_proto(recipe)
    assert result.hyperparameters == defaults_for(Stage.SFT)
    assert result.sft is not None
    assert result.sft.assistant_only_loss is None  # decided by the chat template
    assert result.lora is None
    assert not result.deepspeed.enabled


def test_a_recipe_without_a_stage_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="choose the stage") as caught:
        recipe_from_proto(pb.Recipe())
    assert caught.value.where == "spec.recipe"


@pytest.mark.parametrize(
    ("stage", "fields", "path"),
    [
        (Stage.SFT, {"hyperparameters": {"learning_rate": 0.0}}, "hyperparameters.learning_rate"),
        (Stage.SFT, {"hyperparameters": {"warmup_ratio": 1.5}}, "hyperparameters.warmup_ratio"),
        (Stage.SFT, {"hyperparameters": {"lr_scheduler": "cosin"}}, "hyperparameters.lr_scheduler"),
        (Stage.SFT, {"hyperparameters": {"max_length": 4}}, "hyperparameters.max_length"),
        (Stage.DPO, {"options": {"beta": -0.3}}, "dpo.beta"),
        (Stage.DPO, {"options": {"loss_type": "dpo"}}, "dpo.loss_type"),
        (Stage.RL, {"options": {"num_generations": 1, "reward": REWARD}}, "rl.num_generations"),
        (Stage.RL, {"options": {"kl_coef": -1.0, "reward": REWARD}}, "rl.kl_coef"),
        (Stage.SFT, {"lora": {"r": 0}}, "lora.r"),
        (Stage.SFT, {"deepspeed": {"zero_stage": 1}}, "deepspeed.zero_stage"),
        (
            Stage.SFT,
            {"deepspeed": {"zero_stage": 2, "offload_parameters": True}},
            "deepspeed.offload_parameters",
        ),
        (Stage.SFT, {"trainer_overrides": {"learning_rate": 1.0}}, "trainer_overrides"),
        (
            Stage.SFT,
            {"deepspeed": {"config": {"zero_optimization": {"stage": 5}}}},
            "deepspeed.config.zero_optimization.stage",
        ),
    ],
)
def test_fields_out_of_range_are_named(
    stage: Stage, fields: dict[str, dict[str, object]], path: str
) -> None:
    recipe = build_recipe(stage, **fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError) as caught:
        validate_recipe(recipe, where="spec.recipe")
    assert caught.value.where == f"spec.recipe.{path}"
    assert f"spec.recipe.{path}" in str(caught.value)


def test_rl_completions_per_prompt_must_fill_whole_batches() -> None:
    recipe = build_recipe(
        Stage.RL,
        hyperparameters={"per_device_batch_size": 3, "gradient_accumulation_steps": 1},
        options={"num_generations": 4, "reward": REWARD},
    )
    with pytest.raises(InvalidArgumentError, match="divisor of the generation batch"):
        validate_recipe(recipe, world_size=1)
    validate_recipe(recipe, world_size=4)  # 3 x 1 x 4 = 12 completions: three prompts of four


def test_rl_needs_a_reward() -> None:
    with pytest.raises(InvalidArgumentError, match="needs a reward"):
        validate_recipe(build_recipe(Stage.RL))


def test_several_problems_are_reported_together() -> None:
    recipe = build_recipe(
        Stage.SFT, hyperparameters={"learning_rate": 2.0, "save_steps": 0}, lora={"dropout": 1.0}
    )
    with pytest.raises(InvalidArgumentError) as caught:
        validate_recipe(recipe)
    message = str(caught.value)
    for path in ("learning_rate", "save_steps", "lora.dropout"):
        assert path in message


def test_the_default_recipes_are_valid() -> None:
    for stage in Stage:
        options = {"reward": REWARD} if stage is Stage.RL else {}
        validate_recipe(build_recipe(stage, options=options), world_size=8)


def test_struct_whole_numbers_become_ints() -> None:
    from arena_training.convert import struct_to_python

    struct = struct_pb2.Struct()
    struct.update({"a": 2, "b": 0.5, "c": [1, 2.5], "d": {"e": 3}})
    assert struct_to_python(struct) == {"a": 2, "b": 0.5, "c": [1, 2.5], "d": {"e": 3}}


@pytest.mark.parametrize("module", [progress, outcome, launch])
def test_domain_examples(module: object) -> None:
    failures, tested = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert tested > 0
    assert failures == 0
