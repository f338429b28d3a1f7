"""``python -m arena_training.gpu_check``: an SFT and a DPO run of a few steps with DeepSpeed
ZeRO-2 on the GPU, through the same worker code as real runs, with a random ~1B-parameter
Llama-shaped model and a tokenizer trained on the fly (nothing is downloaded). Prints one JSON
line per stage with tokens/s, step time and peak GPU memory; exits non-zero without a GPU or
without DeepSpeed. `make gpu-check` runs it on GPU nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from arena_training.domain.datasets import FileFormat
from arena_training.domain.job import DataFiles, ModelLocation, TrainingJob
from arena_training.domain.progress import Marker, Progress
from arena_training.domain.recipes import Stage, build_recipe
from arena_training.worker.main import Reporter

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def model_config(vocab_size: int = 8192) -> Any:
    """TinyLlama's shape (22 layers, hidden 2048, grouped-query attention): ~1.1B parameters."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def build_model(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        f"Instruction {i}: explain step {i} of the proof in plain words." for i in range(2000)
    ]
    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=8192,
            special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token="<|unk|>"
    )
    tokenizer.chat_template = CHATML
    config = model_config(len(tokenizer))
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    LlamaForCausalLM(config).save_pretrained(folder)  # type: ignore[no-untyped-call]
    tokenizer.save_pretrained(folder)
    return folder


def write_data(folder: Path) -> tuple[DataFiles, DataFiles]:
    def user(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    def assistant(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    long_answer = " ".join(f"Step {i} follows from step {i - 1}." for i in range(1, 60))
    sft = [{"messages": user(f"Prove claim {i}.") + assistant(long_answer)} for i in range(512)]
    pairs = [
        {
            "prompt": user(f"Prove claim {i}."),
            "chosen": assistant(long_answer),
            "rejected": assistant("No. " * 40),
        }
        for i in range(512)
    ]
    files = []
    for name, records in (("sft", sft), ("pairs", pairs)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        files.append(DataFiles(dataset_id=name, format=FileFormat.JSONL, files=(str(path),)))
    return files[0], files[1]


class _Recorder(Reporter):
    def __init__(self) -> None:
        super().__init__(rank=0)
        self.progress: list[Progress] = []

    def emit(self, marker: Marker, *, every_rank: bool = False) -> None:
        if isinstance(marker, Progress):
            self.progress.append(marker)


def run_stage(stage: Stage, model: Path, data: DataFiles, work: Path, steps: int) -> dict[str, Any]:
    import torch

    from arena_training.worker.train import run_job

    recipe = build_recipe(
        stage,
        hyperparameters={
            "max_steps": steps,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_length": 1024,
            "logging_steps": 1,
            "save_steps": 10_000,
            "learning_rate": 1e-5,
        },
        deepspeed={"zero_stage": 2},
    )
    job = TrainingJob(
        run_id=f"gpu-check-{stage.value}",
        attempt=1,
        recipe=recipe,
        base=ModelLocation(path=str(model)),
        datasets=(data,),
        output_dir=str(work / stage.value / "output"),
        final_dir=str(work / stage.value / "final"),
        checkpoint_id=f"gpu-check-{stage.value}",
        model_name="gpu-check",
    )
    torch.cuda.reset_peak_memory_stats()
    recorder = _Recorder()
    started = time.perf_counter()
    run_job(job, recorder)
    seconds = time.perf_counter() - started
    rates = [p.tokens_per_second for p in recorder.progress[1:] if p.tokens_per_second]
    return {
        "stage": stage.value,
        "deepspeed": "zero-2",
        "steps": steps,
        "tokens_per_second": round(sum(rates) / len(rates), 1) if rates else None,
        "seconds": round(seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": recorder.progress[-1].loss if recorder.progress else None,
    }


def _single_process_distributed() -> None:
    """DeepSpeed initialises torch.distributed even for one process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible", file=sys.stderr)
        return 1
    if importlib.util.find_spec("deepspeed") is None:
        print("gpu-check: DeepSpeed is not installed (the GPU image has it)", file=sys.stderr)
        return 1
    _single_process_distributed()
    with tempfile.TemporaryDirectory(prefix="arena-gpu-check-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model")
        sft, pairs = write_data(work)
        for stage, data in ((Stage.SFT, sft), (Stage.DPO, pairs)):
            print(json.dumps(run_stage(stage, model, data, work, args.steps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
