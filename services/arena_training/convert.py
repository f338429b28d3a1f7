"""Translation between the training contracts (protobuf) and the domain's typed recipes.

An unset optional field in a request means "the paper's default", so only fields a request set
reach the domain as overrides.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from pydantic import ValidationError

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.errors import InvalidArgumentError
from arena_training.domain.datasets import DatasetKind
from arena_training.domain.recipes import (
    JudgeReward,
    Precision,
    Recipe,
    RewardModelReward,
    RlAlgorithm,
    Stage,
    build_recipe,
)

STAGE_TO_PROTO: dict[Stage, common_pb2.TrainingStage.ValueType] = {
    Stage.SFT: common_pb2.TRAINING_STAGE_SFT,
    Stage.DPO: common_pb2.TRAINING_STAGE_DPO,
    Stage.REWARD_MODEL: common_pb2.TRAINING_STAGE_REWARD_MODEL,
    Stage.RL: common_pb2.TRAINING_STAGE_RL,
}
STAGE_FROM_PROTO = {value: key for key, value in STAGE_TO_PROTO.items()}

KIND_FROM_PROTO: dict[common_pb2.DatasetKind.ValueType, DatasetKind] = {
    common_pb2.DATASET_KIND_UNSPECIFIED: DatasetKind.UNSPECIFIED,
    common_pb2.DATASET_KIND_POOL: DatasetKind.POOL,
    common_pb2.DATASET_KIND_SPLIT: DatasetKind.SPLIT,
    common_pb2.DATASET_KIND_TEST_SET: DatasetKind.TEST_SET,
    common_pb2.DATASET_KIND_SFT: DatasetKind.SFT,
    common_pb2.DATASET_KIND_PREFERENCE: DatasetKind.PREFERENCE,
    common_pb2.DATASET_KIND_PROMPTS: DatasetKind.PROMPTS,
}

_PRECISION = {
    pb.PRECISION_UNSPECIFIED: Precision.AUTO,
    pb.PRECISION_FP32: Precision.FP32,
    pb.PRECISION_FP16: Precision.FP16,
    pb.PRECISION_BF16: Precision.BF16,
}

_ZERO_STAGE = {
    pb.ZERO_STAGE_UNSPECIFIED: 0,
    pb.ZERO_STAGE_DISABLED: 0,
    pb.ZERO_STAGE_2: 2,
    pb.ZERO_STAGE_3: 3,
}

_STAGE_FIELD = {
    "sft": Stage.SFT,
    "dpo": Stage.DPO,
    "reward_model": Stage.REWARD_MODEL,
    "rl": Stage.RL,
}

# Optional hyperparameter fields whose names match the domain's.
_HYPERPARAMETER_FIELDS = (
    "learning_rate",
    "num_epochs",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "max_steps",
    "seed",
    "gradient_checkpointing",
    "save_steps",
    "logging_steps",
)


def _has(message: Message, name: str) -> bool:
    return bool(message.HasField(name))


def _set_fields(message: Message, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(message, name) for name in names if _has(message, name)}


def stage_of(recipe: pb.Recipe) -> Stage | None:
    which = recipe.WhichOneof("stage")
    return _STAGE_FIELD[which] if which else None


def struct_to_python(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values; whole numbers come back as ints (Struct stores doubles)."""
    value = _integral(json_format.MessageToDict(struct))
    assert isinstance(value, dict)
    return value


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_integral(child) for child in value]
    return value


def recipe_from_proto(
    recipe: pb.Recipe,
    *,
    reward: RewardModelReward | JudgeReward | None = None,
    where: str = "spec.recipe",
) -> Recipe:
    """The domain recipe: paper defaults, replaced by every field the request set."""
    stage = stage_of(recipe)
    if stage is None:
        raise InvalidArgumentError(
            "choose the stage: set one of sft, dpo, reward_model or rl", where=where
        )
    h = recipe.hyperparameters
    hyperparameters = _set_fields(h, _HYPERPARAMETER_FIELDS)
    if h.lr_scheduler:
        hyperparameters["lr_scheduler"] = h.lr_scheduler
    hyperparameters["precision"] = _PRECISION[h.precision]
    options: dict[str, Any] = {}
    if stage is Stage.SFT:
        options = _set_fields(recipe.sft, ("packing", "assistant_only_loss"))
        if recipe.sft.chat_template:
            options["chat_template"] = recipe.sft.chat_template
    elif stage is Stage.DPO:
        options = _set_fields(recipe.dpo, ("beta", "max_prompt_length"))
        if recipe.dpo.loss_type:
            options["loss_type"] = recipe.dpo.loss_type
    elif stage is Stage.REWARD_MODEL:
        options = _set_fields(recipe.reward_model, ("center_rewards_coefficient",))
    else:
        rl = recipe.rl
        options = _set_fields(
            rl, ("kl_coef", "num_generations", "max_completion_length", "temperature")
        )
        options["algorithm"] = (
            RlAlgorithm.GRPO if rl.algorithm == pb.RL_ALGORITHM_GRPO else RlAlgorithm.RLOO
        )
        options["reward"] = reward
    lora = None
    if _has(recipe, "lora"):
        lora = _set_fields(recipe.lora, ("r", "alpha", "dropout"))
        if recipe.lora.target_modules:
            lora["target_modules"] = tuple(recipe.lora.target_modules)
    deepspeed: dict[str, Any] = {
        "zero_stage": _ZERO_STAGE[recipe.deepspeed.zero_stage],
        **_set_fields(recipe.deepspeed, ("offload_optimizer", "offload_parameters")),
    }
    if _has(recipe.deepspeed, "config"):
        deepspeed["config"] = struct_to_python(recipe.deepspeed.config)
    overrides = (
        struct_to_python(recipe.trainer_overrides) if _has(recipe, "trainer_overrides") else {}
    )
    try:
        return build_recipe(
            stage,
            hyperparameters=hyperparameters,
            options=options,
            lora=lora,
            deepspeed=deepspeed,
            trainer_overrides=overrides,
        )
    except ValidationError as error:
        first = error.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        raise InvalidArgumentError(first["msg"], where=f"{where}.{path}") from None


def judge_spec_to_json(judge: common_pb2.JudgeSpec) -> dict[str, Any]:
    return json_format.MessageToDict(judge, preserving_proto_field_name=True)
