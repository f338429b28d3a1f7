"""DeepSpeed ZeRO-2 / ZeRO-3 configs for the Hugging Face Trainer, generated and checked.

The generated config leaves batch sizes, accumulation, clipping, precision and bucket sizes as
``"auto"``: the Trainer fills them from its own arguments, so a recipe states each number once.
A user-supplied config replaces the generated one and goes through the same checks, so a typo
in a stage or an offload device is rejected before a GPU is requested.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

AUTO = "auto"

# Keys the HF integration may set to "auto" (it fills them from TrainingArguments).
_AUTO_ALLOWED = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "zero_optimization.reduce_bucket_size",
        "zero_optimization.stage3_prefetch_bucket_size",
        "zero_optimization.stage3_param_persistence_threshold",
        "bf16.enabled",
        "fp16.enabled",
        "optimizer.params.lr",
        "optimizer.params.betas",
        "optimizer.params.eps",
        "optimizer.params.weight_decay",
        "scheduler.params.warmup_min_lr",
        "scheduler.params.warmup_max_lr",
        "scheduler.params.warmup_num_steps",
        "scheduler.params.total_num_steps",
    }
)

_TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "zero_optimization",
        "bf16",
        "fp16",
        "optimizer",
        "scheduler",
        "steps_per_print",
        "wall_clock_breakdown",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "activation_checkpointing",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "seq_parallel_communication_data_type",
        "flops_profiler",
        "comms_logger",
        "data_types",
        "memory_breakdown",
        "checkpoint",
        "aio",
        "amp",
        "compile",
        "tensorboard",
        "wandb",
        "csv_monitor",
        "elasticity",
        "sparse_attention",
        "dump_state",
    }
)

_ZERO_KEYS = frozenset(
    {
        "stage",
        "allgather_partitions",
        "allgather_bucket_size",
        "overlap_comm",
        "reduce_scatter",
        "reduce_bucket_size",
        "contiguous_gradients",
        "offload_optimizer",
        "offload_param",
        "sub_group_size",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
        "stage3_gather_16bit_weights_on_model_save",
        "round_robin_gradients",
        "zero_hpz_partition_size",
        "zero_quantized_weights",
        "zero_quantized_gradients",
        "mics_shard_size",
        "mics_hierarchical_params_gather",
        "memory_efficient_linear",
        "ignore_unused_parameters",
        "load_from_fp32_weights",
        "elastic_checkpoint",
        "cpu_offload",
        "module_granularity_threshold",
        "use_all_reduce_for_fetch_params",
        "stage3_module_granularity_threshold",
        "log_trace_cache_warnings",
    }
)

_OFFLOAD_DEVICES = frozenset({"cpu", "nvme", "none"})


def zero_config(
    stage: int, *, offload_optimizer: bool = False, offload_parameters: bool = False
) -> dict[str, Any]:
    """The DeepSpeed config for ZeRO `stage` (2 or 3) with the Trainer filling the numbers."""
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": AUTO,
    }
    if stage == 2:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": 200_000_000}
        zero |= {"reduce_scatter": True, "round_robin_gradients": True}
    else:
        zero |= {
            "stage3_prefetch_bucket_size": AUTO,
            "stage3_param_persistence_threshold": AUTO,
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "sub_group_size": 1_000_000_000,
            # save_model() must gather the shards into one loadable checkpoint.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": AUTO,
        "train_micro_batch_size_per_gpu": AUTO,
        "gradient_accumulation_steps": AUTO,
        "gradient_clipping": AUTO,
        "bf16": {"enabled": AUTO},
        "fp16": {"enabled": AUTO, "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,  # the Trainer logs; DeepSpeed's own prints are noise
        "wall_clock_breakdown": False,
    }


def deepspeed_config_problems(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key path, problem) for everything DeepSpeed or the HF integration would refuse."""
    return list(_problems(config))


def _problems(config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key in sorted(set(config) - _TOP_LEVEL_KEYS):
        yield key, "is not a DeepSpeed config key"
    for path, value in _leaves(config):
        if value == AUTO and path not in _AUTO_ALLOWED:
            yield path, '"auto" is only allowed where the Trainer fills the value'
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
    ):
        value = config.get(key, AUTO)
        if value != AUTO and not (isinstance(value, int) and value >= 1):
            yield key, f'must be a positive integer or "auto" (got {value!r})'
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, Mapping):
        yield "zero_optimization", "must be an object"
        return
    for key in sorted(set(zero) - _ZERO_KEYS):
        yield f"zero_optimization.{key}", "is not a ZeRO option"
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        yield "zero_optimization.stage", f"must be 0, 1, 2 or 3 (got {stage!r})"
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key)
        if offload is None:
            continue
        if not isinstance(offload, Mapping):
            yield f"zero_optimization.{key}", "must be an object"
            continue
        device = offload.get("device", "none")
        if device not in _OFFLOAD_DEVICES:
            yield f"zero_optimization.{key}.device", f"must be cpu, nvme or none (got {device!r})"
        elif device == "nvme" and not offload.get("nvme_path"):
            yield f"zero_optimization.{key}.nvme_path", "is required for nvme offload"
    offload_param = zero.get("offload_param")
    if (
        isinstance(offload_param, Mapping)
        and offload_param.get("device", "none") != "none"
        and (stage != 3)
    ):
        yield "zero_optimization.offload_param", "parameter offload needs ZeRO stage 3"
    if "offload_optimizer" in zero and stage not in (1, 2, 3):
        yield "zero_optimization.offload_optimizer", "optimizer offload needs a ZeRO stage"
    bf16 = _enabled(config.get("bf16"))
    fp16 = _enabled(config.get("fp16"))
    if bf16 is True and fp16 is True:
        yield "bf16.enabled", "bf16 and fp16 cannot both be enabled"


def _enabled(section: Any) -> bool | str | None:
    if isinstance(section, Mapping):
        value = section.get("enabled")
        return value if isinstance(value, bool | str) else None
    return None


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _leaves(child, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value
