"""Run specs for tiny CPU runs: a handful of steps, fp32, no gradient checkpointing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb


def hyperparameters(**overrides: Any) -> pb.Hyperparameters:
    values: dict[str, Any] = {
        "learning_rate": 1e-2,
        "max_steps": 6,
        "per_device_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_length": 96,
        "logging_steps": 1,
        "save_steps": 3,
        "gradient_checkpointing": False,
        "warmup_ratio": 0.0,
        "precision": pb.PRECISION_FP32,
    }
    values.update(overrides)
    return pb.Hyperparameters(**values)


def run_spec(
    stage: str,
    *,
    base: pb.ModelSource,
    datasets: Sequence[common_pb2.DatasetRef],
    name: str = "",
    reward_checkpoint: str = "",
    lora: bool = False,
    **overrides: Any,
) -> pb.TrainingRunSpec:
    recipe = pb.Recipe(hyperparameters=hyperparameters(**overrides))
    if stage == "sft":
        recipe.sft.SetInParent()
    elif stage == "dpo":
        recipe.dpo.beta = 0.3
    elif stage == "reward_model":
        recipe.reward_model.SetInParent()
    else:
        recipe.rl.algorithm = pb.RL_ALGORITHM_RLOO
        recipe.rl.reward_model.checkpoint_id = reward_checkpoint
        recipe.rl.num_generations = 2
        recipe.rl.max_completion_length = 8
    if lora:
        recipe.lora.r = 4
        recipe.lora.alpha = 8
    spec = pb.TrainingRunSpec(recipe=recipe, output_model_name=name)
    spec.base.CopyFrom(base)
    spec.datasets.extend(datasets)
    return spec
