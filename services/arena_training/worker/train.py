"""Runs one `TrainingJob` with TRL 1.16: SFTTrainer, DPOTrainer, RewardTrainer, RLOOTrainer or
GRPOTrainer, full fine-tuning or LoRA, optionally under DeepSpeed ZeRO-2/3.

PPOTrainer is gone from TRL 1.16, so the paper's PPO stage runs RLOO (default) or GRPO with the
paper's KL coefficient as ``beta``; the reward is a trained reward model or the judge service.

The job resumes by itself: when its output folder holds a ``checkpoint-<step>``, training
continues from the newest one (model, optimizer, scheduler, RNG and data position).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from transformers import TrainerCallback

from arena_training.domain.artifacts import directory_digest
from arena_training.domain.chat_templates import has_generation_markers, marked_template
from arena_training.domain.datasets import FileFormat
from arena_training.domain.deepspeed import zero_config
from arena_training.domain.job import DataFiles, TrainingJob
from arena_training.domain.progress import (
    CheckpointSaved,
    Progress,
    Result,
    Started,
    ThroughputMeter,
)
from arena_training.domain.recipes import (
    JudgeReward,
    Precision,
    Recipe,
    RewardModelReward,
    RlAlgorithm,
    Stage,
)
from arena_training.worker.main import Reporter, WorkerError

log = logging.getLogger("arena_training.worker")

# Test hook: seconds to sleep after every optimizer step, so a test can interrupt a run midway.
STEP_DELAY_ENV = "ARENA_TRAINING_STEP_DELAY_SECONDS"

# Log keys that are bookkeeping rather than metrics.
_NOT_METRICS = frozenset({"epoch", "step", "total_flos", "num_tokens"})


def run_job(job: TrainingJob, reporter: Reporter, callbacks: Sequence[Any] = ()) -> Result:
    """Trains, writes the final model into `job.final_dir`, reports and returns the result."""
    import torch

    recipe = job.recipe
    cuda = torch.cuda.is_available()
    tokenizer = _load_tokenizer(job)
    original_template = tokenizer.chat_template
    train_dataset = _load_datasets(job.datasets, recipe, tokenizer)
    eval_dataset = (
        _load_datasets(job.eval_datasets, recipe, tokenizer) if job.eval_datasets else None
    )
    model = _load_model(job, cuda)
    trainer = _build_trainer(job, model, tokenizer, train_dataset, eval_dataset, cuda)
    marker_callback = MarkerCallback(job, reporter)
    trainer.add_callback(marker_callback)
    for callback in callbacks:
        trainer.add_callback(callback)

    resume_from = last_checkpoint(Path(job.output_dir))
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    train_output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if trainer.state.global_step < trainer.state.max_steps and marker_callback.stopped_early:
        raise WorkerError("STOPPED", "training was stopped before its last step", retryable=True)

    final_metrics = dict(marker_callback.last_metrics)
    final_metrics.update({k: float(v) for k, v in train_output.metrics.items() if _is_number(v)})
    if eval_dataset is not None:
        final_metrics.update({k: float(v) for k, v in trainer.evaluate().items() if _is_number(v)})

    final_dir = Path(job.final_dir)
    # Inference loads the tokenizer's own template, not the one marked for assistant-only loss.
    tokenizer.chat_template = original_template
    if reporter.is_main and final_dir.exists():
        shutil.rmtree(final_dir)  # a half-written copy from an interrupted earlier save
    trainer.save_model(str(final_dir))
    trainer.accelerator.wait_for_everyone()
    result = Result(
        step=trainer.state.global_step, path=str(final_dir), adapter=recipe.lora is not None
    )
    if reporter.is_main:
        tokenizer.save_pretrained(str(final_dir))
        (final_dir / "arena_training.json").write_bytes(
            orjson.dumps(
                {
                    "run_id": job.run_id,
                    "checkpoint_id": job.checkpoint_id,
                    "stage": recipe.stage.value,
                    "base": job.base.model_dump(),
                    "step": trainer.state.global_step,
                },
                option=orjson.OPT_INDENT_2,
            )
        )
        sha256, size = directory_digest(final_dir)
        result = Result(
            step=trainer.state.global_step,
            path=str(final_dir),
            sha256=sha256,
            size_bytes=size,
            adapter=recipe.lora is not None,
            final_metrics=final_metrics,
        )
        reporter.emit(result)
    return result


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder, or None for a fresh start."""
    if not output_dir.is_dir():
        return None
    candidates = []
    for path in output_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        # A folder without trainer_state.json was cut off while being written.
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            candidates.append((int(suffix), path))
    return max(candidates)[1] if candidates else None


# --- model, tokenizer, data ------------------------------------------------------------------


def _load_tokenizer(job: TrainingJob) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        job.base.path, revision=job.base.revision or None, trust_remote_code=False
    )
    recipe = job.recipe
    if recipe.sft is not None and recipe.sft.chat_template:
        tokenizer.chat_template = recipe.sft.chat_template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise WorkerError(
            "CHAT_TEMPLATE_MISSING",
            f"the tokenizer of {job.base.path} has no chat template; set recipe.sft.chat_template",
        )
    return tokenizer


def _load_model(job: TrainingJob, cuda: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "revision": job.base.revision or None,
        "dtype": "auto" if cuda else torch.float32,
    }
    if job.stage is Stage.REWARD_MODEL:
        # A causal LM checkpoint gets a fresh one-output score head.
        model = AutoModelForSequenceClassification.from_pretrained(
            job.base.path, num_labels=1, **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(job.base.path, **kwargs)
    if job.base.adapter_path:
        # A registered LoRA adapter is merged in, so the next stage trains on base + adapter.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, job.base.adapter_path).merge_and_unload()
        # PEFT loads for inference (frozen); the merged weights are what this stage trains.
        model.requires_grad_(True)
    return model


def _columns_for(recipe: Recipe, record: dict[str, Any]) -> list[str]:
    if recipe.stage is Stage.SFT:
        return ["messages"] if "messages" in record else ["prompt", "completion"]
    if recipe.stage in (Stage.DPO, Stage.REWARD_MODEL):
        return [c for c in ("prompt", "chosen", "rejected") if c in record]
    return ["prompt"]


def _read_records(files: DataFiles) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for name in files.files:
        path = Path(name)
        if files.format is FileFormat.PARQUET:
            import pyarrow.parquet as pq  # type: ignore[import-untyped]

            records.extend(pq.read_table(path).to_pylist())
        else:
            with path.open("rb") as handle:
                records.extend(orjson.loads(line) for line in handle if line.strip())
    return records


REFERENCE_COLUMN = "reference_answer"


def _load_datasets(sources: Sequence[DataFiles], recipe: Recipe, tokenizer: Any) -> Any:
    """The records of every dataset, reduced to the columns the trainer reads."""
    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for source in sources:
        records = _read_records(source)
        if not records:
            raise WorkerError("EMPTY_DATASET", f"dataset {source.dataset_id} has no records")
        columns = _columns_for(recipe, records[0])
        for index, record in enumerate(records):
            missing = [c for c in columns if c not in record]
            if missing:
                raise WorkerError(
                    "BAD_DATASET",
                    f"dataset {source.dataset_id} record {index} lacks {missing}",
                )
            row = {c: record[c] for c in columns}
            if recipe.rl is not None:
                # The known answer rides along to the reward (TRL passes extra columns to reward
                # functions), so a reference judge can score verifiable prompts.
                row[REFERENCE_COLUMN] = record.get(REFERENCE_COLUMN)
            rows.append(row)
    if recipe.dpo is not None and recipe.dpo.max_prompt_length is not None:
        rows = _drop_long_prompts(rows, tokenizer, recipe.dpo.max_prompt_length)
    if not rows:
        raise WorkerError("EMPTY_DATASET", "no training records are left")
    return Dataset.from_list(rows)


def _drop_long_prompts(
    rows: list[dict[str, Any]], tokenizer: Any, limit: int
) -> list[dict[str, Any]]:
    """TRL 1.16 no longer truncates DPO prompts; pairs with a longer prompt are left out."""
    kept = []
    for row in rows:
        prompt = row.get("prompt")
        if prompt is None:
            kept.append(row)
            continue
        text = (
            prompt
            if isinstance(prompt, str)
            else tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        )
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length <= limit:
            kept.append(row)
    log.info("max_prompt_length=%d kept %d of %d pairs", limit, len(kept), len(rows))
    return kept


# --- trainer ---------------------------------------------------------------------------------


def _precision(precision: Precision, cuda: bool) -> dict[str, bool]:
    import torch

    if precision is Precision.AUTO:
        bf16 = cuda and torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": False}
    return {"bf16": precision is Precision.BF16, "fp16": precision is Precision.FP16}


def _deepspeed(recipe: Recipe) -> dict[str, Any] | None:
    ds = recipe.deepspeed
    if ds.config is not None:
        return dict(ds.config)
    if ds.zero_stage in (2, 3):
        return zero_config(
            ds.zero_stage,
            offload_optimizer=ds.offload_optimizer,
            offload_parameters=ds.offload_parameters,
        )
    return None


def training_arguments(job: TrainingJob, cuda: bool, has_eval: bool) -> dict[str, Any]:
    """Arguments every TRL config shares, from the recipe's hyperparameters."""
    h = job.recipe.hyperparameters
    arguments: dict[str, Any] = {
        "output_dir": job.output_dir,
        "learning_rate": h.learning_rate,
        "num_train_epochs": h.num_epochs,
        "per_device_train_batch_size": h.per_device_batch_size,
        "per_device_eval_batch_size": h.per_device_batch_size,
        "gradient_accumulation_steps": h.accumulation_for(job.world_size),
        "max_steps": h.max_steps if h.max_steps is not None else -1,
        # transformers 5 reads a float in [0, 1) as a ratio of the total steps.
        "warmup_steps": h.warmup_ratio,
        "lr_scheduler_type": h.lr_scheduler,
        "weight_decay": h.weight_decay,
        "seed": h.seed,
        "gradient_checkpointing": h.gradient_checkpointing,
        "save_strategy": "steps",
        "save_steps": h.save_steps,
        # Two resume points: the newest may be cut off if the process dies while saving.
        "save_total_limit": 2,
        "logging_steps": h.logging_steps,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not cuda,
        "deepspeed": _deepspeed(job.recipe),
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": h.save_steps if has_eval else None,
        **_precision(h.precision, cuda),
    }
    arguments.update(job.recipe.trainer_overrides)
    return arguments


def _peft_config(recipe: Recipe, task_type: str) -> Any:
    if recipe.lora is None:
        return None
    from peft import LoraConfig

    lora = recipe.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) or None,
        task_type=task_type,
    )


def _build_trainer(
    job: TrainingJob,
    model: Any,
    tokenizer: Any,
    train_dataset: Any,
    eval_dataset: Any,
    cuda: bool,
) -> Any:
    recipe = job.recipe
    arguments = training_arguments(job, cuda, eval_dataset is not None)
    h = recipe.hyperparameters
    common = {
        "model": model,
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "processing_class": tokenizer,
    }
    if recipe.stage is Stage.SFT:
        from trl.trainer.sft_config import SFTConfig
        from trl.trainer.sft_trainer import SFTTrainer

        assert recipe.sft is not None
        assistant_only = _assistant_only_loss(recipe, tokenizer, train_dataset)
        sft_config = SFTConfig(
            **arguments,
            max_length=h.max_length,
            packing=recipe.sft.packing,
            assistant_only_loss=assistant_only,
        )
        return SFTTrainer(args=sft_config, peft_config=_peft_config(recipe, "CAUSAL_LM"), **common)
    if recipe.stage is Stage.DPO:
        from trl.trainer.dpo_config import DPOConfig
        from trl.trainer.dpo_trainer import DPOTrainer

        assert recipe.dpo is not None
        dpo_config = DPOConfig(
            **arguments,
            max_length=h.max_length,
            beta=recipe.dpo.beta,
            loss_type=[recipe.dpo.loss_type],
        )
        return DPOTrainer(args=dpo_config, peft_config=_peft_config(recipe, "CAUSAL_LM"), **common)
    if recipe.stage is Stage.REWARD_MODEL:
        from trl.trainer.reward_config import RewardConfig
        from trl.trainer.reward_trainer import RewardTrainer

        assert recipe.reward_model is not None
        model.config.pad_token_id = tokenizer.pad_token_id
        reward_config = RewardConfig(
            **arguments,
            max_length=h.max_length,
            center_rewards_coefficient=recipe.reward_model.center_rewards_coefficient,
        )
        return RewardTrainer(
            args=reward_config, peft_config=_peft_config(recipe, "SEQ_CLS"), **common
        )
    return _rl_trainer(job, arguments, common)


def _assistant_only_loss(recipe: Recipe, tokenizer: Any, dataset: Any) -> bool:
    """On when asked (or by default) and the chat template can mark assistant turns."""
    assert recipe.sft is not None
    requested = recipe.sft.assistant_only_loss
    if requested is False:
        return False
    conversational = "messages" in dataset.column_names
    marked = marked_template(tokenizer.chat_template)
    if marked is None and conversational:
        try:
            from trl.chat_template_utils import get_training_chat_template

            patched = get_training_chat_template(tokenizer)
            marked = patched or tokenizer.chat_template
        except Exception:  # noqa: BLE001 - TRL raises for templates it has no training version of
            marked = None
    if conversational and marked is not None and has_generation_markers(marked):
        tokenizer.chat_template = marked
        return True
    if requested:
        raise WorkerError(
            "ASSISTANT_ONLY_LOSS_UNSUPPORTED",
            "assistant_only_loss needs conversational `messages` data and a chat template that "
            "marks assistant turns ({% generation %}); set recipe.sft.chat_template or turn it off",
        )
    log.info("assistant-only loss is off: the chat template cannot mark assistant turns")
    return False


def _rl_trainer(job: TrainingJob, arguments: dict[str, Any], common: dict[str, Any]) -> Any:
    recipe = job.recipe
    rl = recipe.rl
    assert rl is not None
    assert rl.reward is not None
    reward_funcs, reward_tokenizers = _reward(rl.reward)
    rl_arguments = {
        **arguments,
        "beta": rl.kl_coef,
        "num_generations": rl.num_generations,
        "max_completion_length": rl.max_completion_length,
        "temperature": rl.temperature,
    }
    if rl_arguments["max_steps"] <= 0:
        rl_arguments["max_steps"] = rl_steps(job, len(common["train_dataset"]))
    if rl.algorithm is RlAlgorithm.GRPO:
        from trl.trainer.grpo_config import GRPOConfig
        from trl.trainer.grpo_trainer import GRPOTrainer

        return GRPOTrainer(
            args=GRPOConfig(**rl_arguments),
            reward_funcs=reward_funcs,
            reward_processing_classes=reward_tokenizers,
            peft_config=_peft_config(recipe, "CAUSAL_LM"),
            **common,
        )
    from trl.trainer.rloo_config import RLOOConfig
    from trl.trainer.rloo_trainer import RLOOTrainer

    return RLOOTrainer(
        args=RLOOConfig(**rl_arguments),
        reward_funcs=reward_funcs,
        reward_processing_classes=reward_tokenizers,
        peft_config=_peft_config(recipe, "CAUSAL_LM"),
        **common,
    )


def rl_steps(job: TrainingJob, prompts: int) -> int:
    """Optimizer steps for `num_epochs` passes over the prompts. TRL's RL trainers sample
    prompts from an endless loader, so they need `max_steps`; each step consumes
    batch x accumulation x processes completions, `num_generations` per prompt."""
    h = job.recipe.hyperparameters
    assert job.recipe.rl is not None
    completions_per_step = (
        h.per_device_batch_size * h.accumulation_for(job.world_size) * max(job.world_size, 1)
    )
    per_epoch = prompts * job.recipe.rl.num_generations
    if per_epoch < completions_per_step:
        # TRL drops an incomplete generation batch, so such a run would train on nothing.
        raise WorkerError(
            "BAD_DATASET",
            f"{prompts} prompts x {job.recipe.rl.num_generations} generations make "
            f"{per_epoch} completions, fewer than one step's batch of {completions_per_step} "
            "(per-device batch x accumulation x processes); lower the batch or add prompts",
        )
    return max(1, math.ceil(per_epoch * h.num_epochs / completions_per_step))


def _reward(reward: RewardModelReward | JudgeReward) -> tuple[Any, Any]:
    if isinstance(reward, JudgeReward):
        from arena_training.worker.rewards import JudgeScoreReward

        return JudgeScoreReward.from_options(reward), None
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward.path, revision=reward.revision or None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        reward.path, num_labels=1, revision=reward.revision or None
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# --- progress ----------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class MarkerCallback(TrainerCallback):
    """Turns the Trainer's logs and saves into marker lines; remembers the last metrics."""

    def __init__(self, job: TrainingJob, reporter: Reporter) -> None:
        self._job = job
        self._reporter = reporter
        self._meter: ThroughputMeter | None = None
        self.last_metrics: dict[str, float] = {}
        self.stopped_early = False
        self._step_delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._meter = ThroughputMeter(total_steps=state.max_steps or None)
        self._reporter.emit(
            Started(
                attempt=self._job.attempt,
                total_steps=state.max_steps or None,
                resumed_from_step=state.global_step or None,
                world_size=self._job.world_size,
            )
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_delay:
            time.sleep(self._step_delay)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        if "train_runtime" in logs:
            return  # the end-of-training summary; reported with the result
        metrics = {
            k: float(v)
            for k, v in logs.items()
            if _is_number(v)
            and k not in _NOT_METRICS
            and k not in ("loss", "learning_rate", "grad_norm")
        }
        self.last_metrics.update(metrics)
        tokens_per_second = eta = None
        if self._meter is not None:
            tokens = logs.get("num_tokens")
            tokens_per_second, eta = self._meter.observe(state.global_step, _number(tokens))
        loss = logs.get("loss")
        if (value := _number(loss)) is not None:
            self.last_metrics["loss"] = value
        self._reporter.emit(
            Progress(
                step=state.global_step,
                total_steps=state.max_steps or None,
                epoch=float(state.epoch or 0.0),
                loss=_number(loss),
                learning_rate=_number(logs.get("learning_rate")),
                grad_norm=_number(logs.get("grad_norm")),
                tokens_per_second=tokens_per_second,
                eta_seconds=eta,
                metrics=metrics,
            )
        )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self._reporter.emit(CheckpointSaved(step=state.global_step, path=str(path)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.stopped_early = bool(control.should_training_stop) and (
            state.max_steps > 0 and state.global_step < state.max_steps
        )


def _number(value: Any) -> float | None:
    return float(value) if _is_number(value) else None
