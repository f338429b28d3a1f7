"""Typed training recipes with the Arena Learning paper's defaults, and their validation.

Every field has a default and every default can be overridden. The numbers the paper states
(§5.4 of the design notes, "Implementation Details") are used as given:

| stage        | paper                                           |
|--------------|-------------------------------------------------|
| SFT          | 3 epochs, lr 5e-6, batch size 128, length 4096  |
| DPO          | 2 epochs, lr 5e-7, β = 0.3                      |
| reward model | 1 epoch, lr 1e-6                                |
| PPO (RL)     | 1 epoch, lr 1e-7, KL coefficient 0.4            |

What the paper leaves open (optimizer, warmup, schedule, the DPO/RM/RL batch size, rollout
settings) takes common open-source values, marked "not from the paper" below: AdamW, 3 % warmup,
cosine decay, the same global batch of 128 for every stage, 4 completions per prompt.

PPO itself is gone from TRL 1.16, so the RL stage runs one of the PPO-family trainers TRL has:
RLOO (REINFORCE leave-one-out, the default) or GRPO, with the KL coefficient as their ``beta``
and either a trained reward model or the judge service's ``Score`` RPC as the reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from arena_core.errors import InvalidArgumentError


class Stage(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    REWARD_MODEL = "reward_model"
    RL = "rl"


class Precision(StrEnum):
    # bf16 where the GPU supports it, fp32 otherwise (CPU).
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class RlAlgorithm(StrEnum):
    RLOO = "rloo"
    GRPO = "grpo"


# The paper's global batch (per-device batch x accumulation x processes) for every stage.
PAPER_GLOBAL_BATCH_SIZE = 128

# Scheduler names transformers 5 accepts for `lr_scheduler_type`.
LR_SCHEDULERS = frozenset(
    {
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "cosine_warmup_with_min_lr",
        "warmup_stable_decay",
    }
)

# Loss types TRL 1.16's DPOTrainer implements.
DPO_LOSS_TYPES = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    }
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Hyperparameters(BaseModel):
    """What every recipe shares; `defaults_for(stage)` gives the paper's values."""

    model_config = _FROZEN

    learning_rate: float
    num_epochs: float
    per_device_batch_size: int = 1
    # None: derived so that the global batch is `global_batch_size` for the run's world size.
    gradient_accumulation_steps: int | None = None
    global_batch_size: int = PAPER_GLOBAL_BATCH_SIZE
    max_length: int = 4096
    warmup_ratio: float = 0.03  # not from the paper
    lr_scheduler: str = "cosine"  # not from the paper
    weight_decay: float = 0.0  # not from the paper
    max_steps: int | None = None
    seed: int = 42
    precision: Precision = Precision.AUTO
    # TRL's default: trades ~20 % speed for the memory a 7B model needs.
    gradient_checkpointing: bool = True
    save_steps: int = 200
    logging_steps: int = 10

    def accumulation_for(self, world_size: int) -> int:
        """Gradient accumulation steps: as given, or what reaches the global batch size."""
        if self.gradient_accumulation_steps is not None:
            return self.gradient_accumulation_steps
        per_step = self.per_device_batch_size * max(world_size, 1)
        return max(1, math.ceil(self.global_batch_size / per_step))


class SftOptions(BaseModel):
    model_config = _FROZEN

    packing: bool = False
    # None: on when the chat template can mark assistant turns, off otherwise.
    assistant_only_loss: bool | None = None
    # Jinja chat template replacing the tokenizer's; empty keeps the tokenizer's.
    chat_template: str = ""


class DpoOptions(BaseModel):
    model_config = _FROZEN

    beta: float = 0.3
    loss_type: str = "sigmoid"
    # TRL 1.16 dropped prompt truncation; pairs whose prompt is longer are left out instead.
    max_prompt_length: int | None = None


class RewardModelOptions(BaseModel):
    model_config = _FROZEN

    center_rewards_coefficient: float | None = None


class RewardModelReward(BaseModel):
    """A trained sequence-classification reward model scores each completion."""

    model_config = _FROZEN

    kind: str = "reward_model"
    path: str
    revision: str = ""


class JudgeReward(BaseModel):
    """The judge service's ``Score`` RPC turns each completion into a reward in [-1, 1]."""

    model_config = _FROZEN

    kind: str = "judge"
    # arena.common.v1.JudgeSpec as protobuf JSON (the domain stays free of generated code).
    judge: dict[str, Any]
    target: str = ""
    parse_failure_reward: float = -1.0
    timeout_seconds: float = 300.0


class RlOptions(BaseModel):
    model_config = _FROZEN

    algorithm: RlAlgorithm = RlAlgorithm.RLOO
    reward: RewardModelReward | JudgeReward | None = None
    kl_coef: float = 0.4
    num_generations: int = 4  # not from the paper
    max_completion_length: int = 512  # not from the paper
    temperature: float = 1.0  # not from the paper


class LoraOptions(BaseModel):
    model_config = _FROZEN

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # Empty: PEFT's default modules for the architecture.
    target_modules: tuple[str, ...] = ()


class DeepSpeedOptions(BaseModel):
    model_config = _FROZEN

    # 0 means DeepSpeed is off.
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_parameters: bool = False
    # A complete DeepSpeed config replacing the generated one.
    config: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.zero_stage in (2, 3) or self.config is not None


class Recipe(BaseModel):
    """A fully resolved recipe: the stage, its options, and everything shared."""

    model_config = _FROZEN

    stage: Stage
    hyperparameters: Hyperparameters
    sft: SftOptions | None = None
    dpo: DpoOptions | None = None
    reward_model: RewardModelOptions | None = None
    rl: RlOptions | None = None
    lora: LoraOptions | None = None
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)
    trainer_overrides: dict[str, Any] = Field(default_factory=dict)


_PAPER_HYPERPARAMETERS: dict[Stage, dict[str, Any]] = {
    Stage.SFT: {"learning_rate": 5e-6, "num_epochs": 3.0, "max_length": 4096},
    Stage.DPO: {"learning_rate": 5e-7, "num_epochs": 2.0},
    Stage.REWARD_MODEL: {"learning_rate": 1e-6, "num_epochs": 1.0},
    Stage.RL: {"learning_rate": 1e-7, "num_epochs": 1.0},
}


def defaults_for(stage: Stage) -> Hyperparameters:
    """The paper's hyperparameters for `stage`, open points filled with common values."""
    return Hyperparameters(**_PAPER_HYPERPARAMETERS[stage])


def resolve_hyperparameters(stage: Stage, overrides: Mapping[str, Any]) -> Hyperparameters:
    """The stage's defaults with the fields a request set replaced."""
    unknown = set(overrides) - set(Hyperparameters.model_fields)
    if unknown:
        raise InvalidArgumentError(f"unknown fields {sorted(unknown)}", where="hyperparameters")
    return defaults_for(stage).model_copy(update=dict(overrides))


# Training-argument names the recipe or the runner own; a pass-through override may not set them.
RESERVED_OVERRIDES = frozenset(
    {
        "output_dir",
        "deepspeed",
        "report_to",
        "resume_from_checkpoint",
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "max_steps",
        "seed",
        "bf16",
        "fp16",
        "save_steps",
        "logging_steps",
        "beta",
        "loss_type",
        "packing",
        "assistant_only_loss",
        "num_generations",
        "max_completion_length",
        "temperature",
        "center_rewards_coefficient",
        "use_cpu",
        "push_to_hub",
        "hub_token",
    }
)


Check = tuple[str, Any, Callable[[Any], bool], str]


def _checks(recipe: Recipe, world_size: int) -> Iterator[Check]:
    """(field path, value, predicate, what is allowed) for every bounded field."""
    h = recipe.hyperparameters
    hp = "hyperparameters."
    yield hp + "learning_rate", h.learning_rate, lambda v: 0 < v <= 1, "in (0, 1]"
    yield hp + "num_epochs", h.num_epochs, lambda v: 0 < v <= 1000, "in (0, 1000]"
    yield (
        hp + "per_device_batch_size",
        h.per_device_batch_size,
        lambda v: 1 <= v <= 65536,
        "in [1, 65536]",
    )
    yield (
        hp + "gradient_accumulation_steps",
        h.gradient_accumulation_steps,
        lambda v: v is None or 1 <= v <= 65536,
        "in [1, 65536]",
    )
    yield hp + "max_length", h.max_length, lambda v: 8 <= v <= 1 << 20, "in [8, 1048576]"
    yield hp + "warmup_ratio", h.warmup_ratio, lambda v: 0 <= v < 1, "in [0, 1)"
    yield (
        hp + "lr_scheduler",
        h.lr_scheduler,
        lambda v: v in LR_SCHEDULERS,
        f"one of {sorted(LR_SCHEDULERS)}",
    )
    yield hp + "weight_decay", h.weight_decay, lambda v: 0 <= v <= 1, "in [0, 1]"
    yield hp + "max_steps", h.max_steps, lambda v: v is None or v >= 1, "at least 1"
    yield hp + "seed", h.seed, lambda v: 0 <= v < 2**32, "in [0, 2^32)"
    yield hp + "save_steps", h.save_steps, lambda v: v >= 1, "at least 1"
    yield hp + "logging_steps", h.logging_steps, lambda v: v >= 1, "at least 1"
    if recipe.dpo is not None:
        d = recipe.dpo
        yield "dpo.beta", d.beta, lambda v: 0 < v <= 100, "in (0, 100]"
        yield (
            "dpo.loss_type",
            d.loss_type,
            lambda v: v in DPO_LOSS_TYPES,
            f"one of {sorted(DPO_LOSS_TYPES)}",
        )
        yield (
            "dpo.max_prompt_length",
            d.max_prompt_length,
            lambda v: v is None or 1 <= v < h.max_length,
            f"in [1, max_length={h.max_length})",
        )
    if recipe.reward_model is not None:
        yield (
            "reward_model.center_rewards_coefficient",
            recipe.reward_model.center_rewards_coefficient,
            lambda v: v is None or 0 <= v <= 1,
            "in [0, 1]",
        )
    if recipe.rl is not None:
        rl = recipe.rl
        yield "rl.kl_coef", rl.kl_coef, lambda v: 0 <= v <= 100, "in [0, 100]"
        yield "rl.num_generations", rl.num_generations, lambda v: 2 <= v <= 1024, "in [2, 1024]"
        yield (
            "rl.max_completion_length",
            rl.max_completion_length,
            lambda v: 1 <= v < h.max_length,
            f"in [1, max_length={h.max_length})",
        )
        yield "rl.temperature", rl.temperature, lambda v: 0 < v <= 10, "in (0, 10]"
        generation_batch = h.per_device_batch_size * h.accumulation_for(world_size) * world_size
        yield (
            "rl.num_generations",
            rl.num_generations,
            lambda v: generation_batch % v == 0,
            f"a divisor of the generation batch (per_device_batch_size x "
            f"gradient_accumulation_steps x processes = {generation_batch}), so every prompt's "
            "completions land in one batch",
        )
    if recipe.lora is not None:
        lora = recipe.lora
        yield "lora.r", lora.r, lambda v: 1 <= v <= 4096, "in [1, 4096]"
        yield "lora.alpha", lora.alpha, lambda v: 1 <= v <= 65536, "in [1, 65536]"
        yield "lora.dropout", lora.dropout, lambda v: 0 <= v < 1, "in [0, 1)"
    ds = recipe.deepspeed
    yield "deepspeed.zero_stage", ds.zero_stage, lambda v: v in (0, 2, 3), "disabled, 2 or 3"
    yield (
        "deepspeed.offload_optimizer",
        ds.offload_optimizer,
        lambda v: not v or ds.zero_stage in (2, 3),
        "only with ZeRO-2 or ZeRO-3",
    )
    yield (
        "deepspeed.offload_parameters",
        ds.offload_parameters,
        lambda v: not v or ds.zero_stage == 3,
        "only with ZeRO-3",
    )
    yield (
        "trainer_overrides",
        sorted(set(recipe.trainer_overrides) & RESERVED_OVERRIDES),
        lambda v: not v,
        "free of fields the recipe sets itself (use the typed field instead)",
    )


def validate_recipe(recipe: Recipe, *, world_size: int = 1, where: str = "recipe") -> None:
    """Raises InvalidArgumentError naming every field out of range, before anything runs."""
    problems: list[tuple[str, str]] = []
    for path, value, allowed, description in _checks(recipe, world_size):
        if not allowed(value):
            problems.append((f"{where}.{path}", f"must be {description} (got {value!r})"))
    options = {
        Stage.SFT: recipe.sft,
        Stage.DPO: recipe.dpo,
        Stage.REWARD_MODEL: recipe.reward_model,
        Stage.RL: recipe.rl,
    }
    if options[recipe.stage] is None:
        problems.append((f"{where}.{recipe.stage.value}", "the stage's options are missing"))
    if recipe.stage is Stage.RL and recipe.rl is not None and recipe.rl.reward is None:
        problems.append((f"{where}.rl", "needs a reward: set reward_model or judge"))
    if recipe.deepspeed.config is not None:
        from .deepspeed import deepspeed_config_problems

        problems += [
            (f"{where}.deepspeed.config.{path}", message)
            for path, message in deepspeed_config_problems(recipe.deepspeed.config)
        ]
    if problems:
        error = InvalidArgumentError("; ".join(f"{path}: {message}" for path, message in problems))
        error.where = problems[0][0]
        raise error


def build_recipe(
    stage: Stage,
    *,
    hyperparameters: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    lora: Mapping[str, Any] | None = None,
    deepspeed: Mapping[str, Any] | None = None,
    trainer_overrides: Mapping[str, Any] | None = None,
) -> Recipe:
    """A recipe for `stage` from the fields a request set; everything else takes its default."""
    option_class: dict[Stage, type[BaseModel]] = {
        Stage.SFT: SftOptions,
        Stage.DPO: DpoOptions,
        Stage.REWARD_MODEL: RewardModelOptions,
        Stage.RL: RlOptions,
    }
    stage_options = option_class[stage](**dict(options or {}))
    return Recipe(
        stage=stage,
        hyperparameters=resolve_hyperparameters(stage, hyperparameters or {}),
        lora=LoraOptions(**dict(lora)) if lora is not None else None,
        deepspeed=DeepSpeedOptions(**dict(deepspeed or {})),
        trainer_overrides=dict(trainer_overrides or {}),
        **{stage.value: stage_options},
    )
