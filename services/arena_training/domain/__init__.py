"""Training domain: recipes with the paper's defaults, dataset shapes, DeepSpeed configs, the job
document a worker runs, the worker's progress markers and what ends an attempt.

Pure Python and pydantic: no gRPC, NATS, Prometheus or generated protobuf code, and no torch —
the worker (``arena_training.worker``) is where TRL runs.
"""

from .datasets import ACCEPTED_KINDS, DatasetKind, FileFormat, check_kind, check_records
from .deepspeed import deepspeed_config_problems, zero_config
from .job import DataFiles, ModelLocation, TrainingJob, checkpoint_id_for, valid_run_id
from .outcome import AttemptEnd, Decision, decide
from .recipes import (
    DeepSpeedOptions,
    DpoOptions,
    Hyperparameters,
    JudgeReward,
    LoraOptions,
    Precision,
    Recipe,
    RewardModelOptions,
    RewardModelReward,
    RlAlgorithm,
    RlOptions,
    SftOptions,
    Stage,
    build_recipe,
    defaults_for,
    validate_recipe,
)

__all__ = [
    "ACCEPTED_KINDS",
    "AttemptEnd",
    "DataFiles",
    "DatasetKind",
    "Decision",
    "DeepSpeedOptions",
    "DpoOptions",
    "FileFormat",
    "Hyperparameters",
    "JudgeReward",
    "LoraOptions",
    "ModelLocation",
    "Precision",
    "Recipe",
    "RewardModelOptions",
    "RewardModelReward",
    "RlAlgorithm",
    "RlOptions",
    "SftOptions",
    "Stage",
    "TrainingJob",
    "build_recipe",
    "check_kind",
    "check_records",
    "checkpoint_id_for",
    "decide",
    "deepspeed_config_problems",
    "defaults_for",
    "valid_run_id",
    "validate_recipe",
    "zero_config",
]
