"""The worker trains for real with TRL on a tiny random model, in this process.

SFT lowers the loss on its data; DPO raises the implicit reward margin and preference accuracy
on held-out pairs; the reward model ranks held-out chosen answers above rejected ones; the RL
stage takes real RLOO steps with the trained reward model and GRPO steps with the judge's Score
RPC as the reward; LoRA writes a loadable adapter; an interrupted run resumes from its last
checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from arena.judge.v1 import judge_service_pb2, judge_service_pb2_grpc
from arena_cli.nats_server import free_port
from arena_training.domain.chat_templates import has_generation_markers
from arena_training.domain.datasets import FileFormat
from arena_training.domain.job import DataFiles, ModelLocation, TrainingJob
from arena_training.domain.progress import Marker, Progress, Result, Started
from arena_training.domain.recipes import (
    JudgeReward,
    Recipe,
    RewardModelReward,
    Stage,
    build_recipe,
)
from arena_training.worker.main import Reporter, WorkerError
from tests.support.tiny_models import tiny_chat_model

from .data import (
    chosen_text,
    preference_records,
    prompt_records,
    rejected_text,
    sft_records,
    write_dataset,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

TRAIN = range(0, 24)
HELD_OUT = range(100, 116)


class Recorder(Reporter):
    def __init__(self) -> None:
        super().__init__(rank=0)
        self.markers: list[Marker] = []

    def emit(self, marker: Marker, *, every_rank: bool = False) -> None:
        self.markers.append(marker)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.markers if isinstance(m, kind)]


def hyperparameters(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "learning_rate": 1e-2,
        "max_steps": 8,
        "per_device_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_length": 96,
        "logging_steps": 1,
        "save_steps": 4,
        "gradient_checkpointing": False,
        "warmup_ratio": 0.0,
        "precision": "fp32",
    }
    return values | overrides


def data_files(folder: Path, kind: str, records: Sequence[dict[str, Any]]) -> DataFiles:
    ref = write_dataset(folder, f"{kind}-{len(records)}", kind, records)
    return DataFiles(
        dataset_id=ref.dataset_id,
        name=ref.name,
        format=FileFormat.PARQUET,
        files=(ref.files[1].uri.removeprefix("file://"),),
    )


def job_for(
    tmp_path: Path,
    recipe: Recipe,
    datasets: Sequence[DataFiles],
    *,
    base: ModelLocation | None = None,
    attempt: int = 1,
    name: str = "run",
) -> TrainingJob:
    return TrainingJob(
        run_id=name,
        attempt=attempt,
        recipe=recipe,
        base=base or ModelLocation(path=str(tiny_chat_model())),
        datasets=tuple(datasets),
        output_dir=str(tmp_path / name / "output"),
        final_dir=str(tmp_path / name / "final"),
        checkpoint_id=f"ckpt-{name}",
        model_name="tiny",
    )


def run(job: TrainingJob, callbacks: Sequence[Any] = ()) -> tuple[Result, Recorder]:
    from arena_training.worker.train import run_job

    recorder = Recorder()
    result = run_job(job, recorder, callbacks)
    return result, recorder


# --- measurements on held-out data -------------------------------------------------------


def _prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def response_logprob(
    model: Any, tokenizer: Any, prompt: list[dict[str, str]], answer: str
) -> float:
    """log p(answer | prompt) under `model`, summed over the answer's tokens."""
    prompt_ids = _prompt_ids(tokenizer, prompt)
    answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return float(picked[len(prompt_ids) - 1 :].sum())


def mean_nll(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]]) -> float:
    losses = []
    for record in records:
        messages = record["messages"]
        answer = messages[-1]["content"]
        losses.append(-response_logprob(model, tokenizer, messages[:-1], answer))
    return sum(losses) / len(losses)


def load_causal(path: str | Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(str(path)).eval()


# --- tests -------------------------------------------------------------------------------


def test_sft_lowers_the_loss_on_its_data(tmp_path: Path) -> None:
    records = sft_records(TRAIN)
    recipe = build_recipe(Stage.SFT, hyperparameters=hyperparameters(max_steps=10))
    result, recorder = run(job_for(tmp_path, recipe, [data_files(tmp_path, "sft", records)]))

    tokenizer = transformers.AutoTokenizer.from_pretrained(result.path)
    before = mean_nll(load_causal(tiny_chat_model()), tokenizer, records)
    after = mean_nll(load_causal(result.path), tokenizer, records)
    assert after < before * 0.8, (before, after)

    progress = recorder.of(Progress)
    assert [p.step for p in progress] == list(range(1, 11))
    assert progress[-1].total_steps == 10
    assert progress[-1].tokens_per_second is not None
    assert progress[-1].tokens_per_second > 0
    assert progress[-1].eta_seconds == 0.0
    assert recorder.of(Started)[0].resumed_from_step is None
    assert result.sha256
    assert result.size_bytes > 0
    assert not result.adapter
    assert "train_loss" in result.final_metrics


def test_sft_trains_on_assistant_turns_only_and_packs(tmp_path: Path) -> None:
    recipe = build_recipe(
        Stage.SFT,
        hyperparameters=hyperparameters(max_steps=2, save_steps=100),
        options={"assistant_only_loss": True, "packing": True},
    )
    result, _ = run(job_for(tmp_path, recipe, [data_files(tmp_path, "sft", sft_records(TRAIN))]))
    saved = transformers.AutoTokenizer.from_pretrained(result.path)
    # The saved tokenizer keeps the model's own template, not the marked training copy.
    assert not has_generation_markers(saved.chat_template)


def test_dpo_raises_the_implicit_reward_margin_on_held_out_pairs(tmp_path: Path) -> None:
    recipe = build_recipe(Stage.DPO, hyperparameters=hyperparameters(max_steps=8))
    assert recipe.dpo is not None
    beta = recipe.dpo.beta
    result, recorder = run(
        job_for(tmp_path, recipe, [data_files(tmp_path, "preference", preference_records(TRAIN))])
    )

    tokenizer = transformers.AutoTokenizer.from_pretrained(result.path)
    policy, reference = load_causal(result.path), load_causal(tiny_chat_model())
    margins = []
    for record in preference_records(HELD_OUT):
        prompt = record["prompt"]
        chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
        chosen_ratio = response_logprob(policy, tokenizer, prompt, chosen) - response_logprob(
            reference, tokenizer, prompt, chosen
        )
        rejected_ratio = response_logprob(policy, tokenizer, prompt, rejected) - response_logprob(
            reference, tokenizer, prompt, rejected
        )
        margins.append(beta * (chosen_ratio - rejected_ratio))
    accuracy = sum(m > 0 for m in margins) / len(margins)
    # The reference's margin is 0 and its accuracy a coin flip; training moves both.
    assert sum(margins) / len(margins) > 1.0
    assert accuracy >= 0.9
    assert recorder.of(Progress)[-1].metrics["rewards/accuracies"] > 0.5


def test_reward_model_ranks_held_out_chosen_above_rejected(tmp_path: Path) -> None:
    recipe = build_recipe(Stage.REWARD_MODEL, hyperparameters=hyperparameters(max_steps=8))
    result, _ = run(
        job_for(tmp_path, recipe, [data_files(tmp_path, "preference", preference_records(TRAIN))])
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(result.path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(result.path)

    def score(prompt: list[dict[str, str]], answer: str) -> float:
        text = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": answer}], tokenize=False
        )
        with torch.no_grad():
            return float(model(**tokenizer(text, return_tensors="pt")).logits[0, 0])

    wins = [
        score(r["prompt"], chosen_text(i)) > score(r["prompt"], rejected_text(i))
        for i, r in zip(HELD_OUT, preference_records(HELD_OUT), strict=True)
    ]
    assert sum(wins) / len(wins) >= 0.9  # chance is 0.5


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("rm")
    recipe = build_recipe(Stage.REWARD_MODEL, hyperparameters=hyperparameters(max_steps=4))
    result, _ = run(
        job_for(folder, recipe, [data_files(folder, "preference", preference_records(TRAIN))])
    )
    return result.path


def test_rloo_takes_real_steps_with_the_reward_model_as_reward(
    tmp_path: Path, reward_model: str
) -> None:
    recipe = build_recipe(
        Stage.RL,
        hyperparameters=hyperparameters(max_steps=2, learning_rate=1e-3),
        options={
            "reward": RewardModelReward(path=reward_model),
            "num_generations": 2,
            "max_completion_length": 8,
        },
    )
    result, recorder = run(
        job_for(tmp_path, recipe, [data_files(tmp_path, "prompts", prompt_records(TRAIN))])
    )
    assert result.step == 2
    progress = recorder.of(Progress)
    assert [p.step for p in progress] == [1, 2]
    assert any(key.startswith("rewards/") for key in progress[-1].metrics)
    before = load_causal(tiny_chat_model()).state_dict()
    after = load_causal(result.path).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


class ScriptedJudge(judge_service_pb2_grpc.JudgeServiceServicer):
    """Rewards polite answers: +1 when the response contains 'Sure', otherwise -1."""

    def __init__(self) -> None:
        self.requests: list[judge_service_pb2.ScoreRequest] = []

    def Score(self, request: judge_service_pb2.ScoreRequest, context: Any) -> Any:
        self.requests.append(request)
        return judge_service_pb2.ScoreResponse(
            results=[
                judge_service_pb2.ScoreResult(reward=1.0 if "Sure" in item.response else -1.0)
                for item in request.items
            ]
        )


@pytest.fixture
def judge_address() -> Iterator[tuple[str, ScriptedJudge]]:
    judge = ScriptedJudge()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    judge_service_pb2_grpc.add_JudgeServiceServicer_to_server(judge, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}", judge
    finally:
        server.stop(None)


def test_grpo_takes_real_steps_with_the_judge_score_rpc_as_reward(
    tmp_path: Path, judge_address: tuple[str, ScriptedJudge]
) -> None:
    address, judge = judge_address
    recipe = build_recipe(
        Stage.RL,
        hyperparameters=hyperparameters(max_steps=2, learning_rate=1e-3),
        options={
            "algorithm": "grpo",
            "reward": JudgeReward(judge={"name": "arena-pairwise", "version": "1"}, target=address),
            "num_generations": 2,
            "max_completion_length": 8,
        },
    )
    result, recorder = run(
        job_for(tmp_path, recipe, [data_files(tmp_path, "preference", preference_records(TRAIN))])
    )
    assert result.step == 2
    assert judge.requests, "the judge was never asked"
    first = judge.requests[0]
    assert first.judge.name == "arena-pairwise"
    assert first.items[0].prompt[0].content.startswith("Tell me about")
    assert len(first.items) == 4  # 4 completions per batch: 2 prompts x 2 generations
    assert "rewards/judge/mean" in recorder.of(Progress)[-1].metrics


def test_lora_writes_an_adapter_that_loads_on_its_base_and_trains_further(tmp_path: Path) -> None:
    from peft import PeftModel

    recipe = build_recipe(
        Stage.SFT, hyperparameters=hyperparameters(max_steps=4), lora={"r": 4, "alpha": 8}
    )
    result, _ = run(job_for(tmp_path, recipe, [data_files(tmp_path, "sft", sft_records(TRAIN))]))
    assert result.adapter
    final = Path(result.path)
    assert (final / "adapter_config.json").is_file()
    assert not (final / "model.safetensors").exists()  # an adapter, not full weights

    model = PeftModel.from_pretrained(load_causal(tiny_chat_model()), str(final)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(final))
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 2?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]

    # The next stage starts from base + adapter (merged before training).
    dpo = build_recipe(Stage.DPO, hyperparameters=hyperparameters(max_steps=2))
    base = ModelLocation(path=str(tiny_chat_model()), adapter_path=str(final))
    dpo_result, _ = run(
        job_for(
            tmp_path,
            dpo,
            [data_files(tmp_path, "preference", preference_records(TRAIN))],
            base=base,
            name="dpo",
        )
    )
    assert dpo_result.step == 2


class StopAfter(transformers.TrainerCallback):  # type: ignore[misc]
    """Stops training after `step`, as an interrupted run would be cut off."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    recipe = build_recipe(Stage.SFT, hyperparameters=hyperparameters(max_steps=8, save_steps=3))
    datasets = [data_files(tmp_path, "sft", sft_records(TRAIN))]

    with pytest.raises(WorkerError) as stopped:
        run(job_for(tmp_path, recipe, datasets), callbacks=[StopAfter(5)])
    assert stopped.value.reason == "STOPPED"
    assert stopped.value.retryable
    output = tmp_path / "run" / "output"
    assert (output / "checkpoint-3").is_dir()

    result, recorder = run(job_for(tmp_path, recipe, datasets, attempt=2))
    started = recorder.of(Started)[0]
    assert started.attempt == 2
    # Step 5 was never checkpointed; the run continues from step 3's checkpoint.
    assert started.resumed_from_step == 3
    assert [p.step for p in recorder.of(Progress)] == [4, 5, 6, 7, 8]
    assert result.step == 8


def test_a_deepspeed_zero2_run_trains_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = build_recipe(
        Stage.SFT, hyperparameters=hyperparameters(max_steps=2), deepspeed={"zero_stage": 2}
    )
    result, _ = run(job_for(tmp_path, recipe, [data_files(tmp_path, "sft", sft_records(TRAIN))]))
    assert result.step == 2
