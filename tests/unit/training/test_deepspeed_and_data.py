"""Generated DeepSpeed configs, dataset shape checks, outcome decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_core.errors import InvalidArgumentError
from arena_training.domain.datasets import (
    DatasetKind,
    FileFormat,
    check_kind,
    check_records,
    file_format,
    read_head,
)
from arena_training.domain.deepspeed import deepspeed_config_problems, zero_config
from arena_training.domain.outcome import AttemptEnd, decide
from arena_training.domain.recipes import Stage

from .data import preference_records, prompt_records, sft_records, write_dataset


@pytest.mark.parametrize("stage", [2, 3])
def test_generated_zero_configs_are_valid_and_leave_numbers_to_the_trainer(stage: int) -> None:
    config = zero_config(stage, offload_optimizer=True, offload_parameters=stage == 3)
    assert deepspeed_config_problems(config) == []
    assert config["zero_optimization"]["stage"] == stage
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
    ):
        assert config[key] == "auto"
    assert config["bf16"] == {"enabled": "auto"}
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    json.dumps(config)  # plain JSON, as the Trainer and accelerate read it


def test_zero3_gathers_weights_when_saving() -> None:
    zero = zero_config(3)["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_param" not in zero


def test_deepspeed_config_mistakes_are_found() -> None:
    problems = dict(
        deepspeed_config_problems(
            {
                "train_batch_size": 0,
                "zero_optimization": {
                    "stage": 2,
                    "offload_param": {"device": "cpu"},
                    "offload_optimizer": {"device": "gpu"},
                    "stage4": True,
                },
                "bf16": {"enabled": True},
                "fp16": {"enabled": True},
                "gradient_clip": 1.0,
                "steps_per_print": "auto",
            }
        )
    )
    assert set(problems) == {
        "train_batch_size",
        "zero_optimization.offload_param",
        "zero_optimization.offload_optimizer.device",
        "zero_optimization.stage4",
        "bf16.enabled",
        "gradient_clip",
        "steps_per_print",
    }


@pytest.mark.parametrize("stage", [2, 3])
def test_the_trainer_fills_every_auto_value_of_the_generated_config(
    stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' own DeepSpeed glue resolves the config against real training arguments
    (DeepSpeed itself is not installed here; only its version check is skipped)."""
    import transformers.integrations.deepspeed as hf_deepspeed
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers import TrainingArguments

    monkeypatch.setattr(hf_deepspeed, "dep_version_check", lambda package: None)

    class TrainerDeepSpeedConfig(hf_deepspeed.HfTrainerDeepSpeedConfig, HfDeepSpeedConfig):  # type: ignore[misc]
        """The Trainer's config class on accelerate's base, as with DeepSpeed installed."""

    config = TrainerDeepSpeedConfig(
        zero_config(stage, offload_optimizer=True, offload_parameters=stage == 3)
    )
    arguments = TrainingArguments(
        output_dir="unused",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=8,
        bf16=True,
        use_cpu=True,
        report_to="none",
    )
    config.trainer_config_process(arguments)

    class Model:
        class config:  # noqa: N801 - mimics a PreTrainedModel's config attribute
            hidden_size = 2048

    config.trainer_config_finalize(arguments, Model(), 1000)
    resolved = config.config
    assert "auto" not in json.dumps(resolved)
    assert (
        resolved["train_micro_batch_size_per_gpu"],
        resolved["gradient_accumulation_steps"],
    ) == (
        4,
        8,
    )
    assert resolved["bf16"]["enabled"] is True
    assert config.is_zero3() == (stage == 3)
    assert config.is_offload()


def test_deepspeed_accepts_the_generated_config() -> None:
    deepspeed = pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    config = zero_config(2)
    resolved = json.loads(json.dumps(config).replace('"auto"', "1"))
    resolved["bf16"]["enabled"] = False
    resolved["fp16"]["enabled"] = False
    DeepSpeedConfig(resolved)
    assert deepspeed.__version__


@pytest.mark.parametrize(
    ("stage", "kind", "accepted"),
    [
        (Stage.SFT, DatasetKind.SFT, True),
        (Stage.SFT, DatasetKind.PREFERENCE, False),
        (Stage.SFT, DatasetKind.POOL, False),
        (Stage.DPO, DatasetKind.PREFERENCE, True),
        (Stage.DPO, DatasetKind.SFT, False),
        (Stage.REWARD_MODEL, DatasetKind.PREFERENCE, True),
        (Stage.RL, DatasetKind.PROMPTS, True),
        (Stage.RL, DatasetKind.PREFERENCE, True),
        (Stage.RL, DatasetKind.TEST_SET, False),
        (Stage.SFT, DatasetKind.UNSPECIFIED, True),
    ],
)
def test_dataset_kinds_per_recipe(stage: Stage, kind: DatasetKind, accepted: bool) -> None:
    if accepted:
        check_kind(stage, kind, where="spec.datasets[0].kind")
        return
    with pytest.raises(InvalidArgumentError) as caught:
        check_kind(stage, kind, where="spec.datasets[0].kind", name="d1")
    assert caught.value.where == "spec.datasets[0].kind"
    assert f"is a {kind.value} dataset, but a {stage.value} run needs" in str(caught.value)


def test_records_in_the_wrong_shape_are_named() -> None:
    check_records(Stage.SFT, sft_records(range(3)), where="w")
    check_records(Stage.DPO, preference_records(range(3)), where="w")
    check_records(Stage.RL, prompt_records(range(3)), where="w")
    check_records(Stage.RL, preference_records(range(3)), where="w")

    with pytest.raises(InvalidArgumentError, match="wrong format for a dpo run") as caught:
        check_records(Stage.DPO, sft_records(range(2)), where="spec.datasets[0]")
    assert caught.value.where == "spec.datasets[0] record 0"
    pool = [{"id": "c1", "source": "sharegpt", "messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(InvalidArgumentError, match="wrong format for a sft run"):
        check_records(Stage.SFT, pool, where="w")
    no_answer = [{"messages": [{"role": "user", "content": "hi"}]}]
    with pytest.raises(InvalidArgumentError, match="no assistant turn"):
        check_records(Stage.SFT, no_answer, where="w")
    bad_role = preference_records(range(1))
    bad_role[0]["chosen"] = [{"role": "robot", "content": "x"}]
    with pytest.raises(InvalidArgumentError, match=r"chosen\[0\].role"):
        check_records(Stage.REWARD_MODEL, bad_role, where="w")
    with pytest.raises(InvalidArgumentError, match="no records"):
        check_records(Stage.SFT, [], where="w")


def test_both_published_copies_read_the_same(tmp_path: Path) -> None:
    ref = write_dataset(tmp_path, "prefs", "preference", preference_records(range(5)))
    jsonl, parquet = (Path(f.uri.removeprefix("file://")) for f in ref.files[:2])
    assert file_format(jsonl.name) is FileFormat.JSONL
    assert file_format("x.bin", "application/vnd.apache.parquet") is FileFormat.PARQUET
    from_jsonl = read_head(jsonl, FileFormat.JSONL, limit=3)
    from_parquet = read_head(parquet, FileFormat.PARQUET, limit=3)
    expected = [
        {k: r[k] for k in ("prompt", "chosen", "rejected")} for r in preference_records(range(3))
    ]
    assert from_jsonl == from_parquet == expected


def test_a_broken_json_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(InvalidArgumentError) as caught:
        read_head(path, FileFormat.JSONL)
    assert caught.value.where == f"{path}:2"


@pytest.mark.parametrize(
    ("end", "attempt", "action", "reason"),
    [
        (AttemptEnd(exit_code=0, result=True), 1, "succeed", ""),
        (AttemptEnd(exit_code=-9), 1, "resume", "INTERRUPTED"),
        (AttemptEnd(exit_code=137, runner_message="node lost"), 2, "resume", "INTERRUPTED"),
        (AttemptEnd(exit_code=-9), 3, "fail", "INTERRUPTED"),
        (AttemptEnd(exit_code=1, error_reason="OOM", error_message="CUDA OOM"), 1, "fail", "OOM"),
        (
            AttemptEnd(exit_code=1, error_reason="JUDGE_UNAVAILABLE", error_retryable=True),
            1,
            "resume",
            "JUDGE_UNAVAILABLE",
        ),
        (AttemptEnd(exit_code=137, runner_reason="OOM"), 1, "fail", "OOM"),
        (AttemptEnd(runner_reason="ImagePullBackOff"), 1, "fail", "IMAGE_PULL_FAILED"),
        (AttemptEnd(runner_reason="DeadlineExceeded"), 1, "fail", "DEADLINE_EXCEEDED"),
        (
            AttemptEnd(runner_reason="Evicted", runner_message="node drained"),
            1,
            "resume",
            "INTERRUPTED",
        ),
        (AttemptEnd(exit_code=1), 1, "fail", "WORKER_CRASHED"),
        (AttemptEnd(exit_code=-15, cancelled=True), 1, "cancel", "CANCELLED"),
    ],
)
def test_what_ends_an_attempt(end: AttemptEnd, attempt: int, action: str, reason: str) -> None:
    decision = decide(end, attempt=attempt, max_attempts=3)
    assert decision.action == action
    assert decision.reason == reason
