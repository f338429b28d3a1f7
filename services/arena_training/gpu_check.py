"""``python -m arena_training.gpu_check``: an SFT and a DPO run of a few steps on the GPU, through
the same worker code as real runs, with a random ~1B-parameter Llama-shaped model and a tokenizer
trained on the fly (nothing is downloaded), under DeepSpeed ZeRO-2.

What cannot run is reported rather than crashed on. Without DeepSpeed (a machine that cannot
install it) the stages run without ZeRO, in bf16 on the one GPU, and the report says
``"deepspeed": {"available": false, "reason": ...}``; without TRL no stage can run and the report
says that instead. Prints one JSON line per stage (tokens/s, step time, peak GPU memory), then the
whole report, which ``--record`` also writes to a file after every stage. Exits non-zero without
a GPU, when no stage could run, or when a stage failed. `make gpu-check` runs it on GPU nodes;
``--cpu`` rehearses it on the CPU with a tiny model (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
import tempfile
import time
import traceback
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
# TinyLlama's shape (22 layers, hidden 2048, grouped-query attention): ~1.1B parameters.
ONE_BILLION: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
}
REHEARSAL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def model_config(vocab_size: int = 8192, shape: dict[str, Any] | None = None) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **(shape or ONE_BILLION),
    )


def availability(module: str) -> dict[str, Any]:
    """Whether `module` imports here, with its version or the reason it does not."""
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        return {"available": False, "reason": f"{type(error).__name__}: {error}"}
    return {"available": True, "version": str(getattr(imported, "__version__", "unknown"))}


def build_model(folder: Path, shape: dict[str, Any] | None = None) -> Path:
    import torch
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
    config = model_config(len(tokenizer), shape)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    # Initialised on the GPU where there is one: a CPU takes many seconds over 1B weights.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
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


def run_stage(
    stage: Stage,
    model: Path,
    data: DataFiles,
    work: Path,
    steps: int,
    *,
    zero: bool = True,
    batch_size: int = 4,
    max_length: int = 1024,
) -> dict[str, Any]:
    import torch

    from arena_training.worker.train import run_job

    recipe = build_recipe(
        stage,
        hyperparameters={
            "max_steps": steps,
            "per_device_batch_size": batch_size,
            "gradient_accumulation_steps": 1,
            "max_length": max_length,
            "logging_steps": 1,
            "save_steps": 10_000,
            "learning_rate": 1e-5,
        },
        deepspeed={"zero_stage": 2} if zero else None,
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
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    recorder = _Recorder()
    started = time.perf_counter()
    run_job(job, recorder)
    seconds = time.perf_counter() - started
    rates = [p.tokens_per_second for p in recorder.progress[1:] if p.tokens_per_second]
    return {
        "ok": True,
        "stage": stage.value,
        "deepspeed": "zero-2" if zero else "off",
        "precision": "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32",
        "steps": steps,
        "tokens_per_second": round(sum(rates) / len(rates), 1) if rates else None,
        "seconds": round(seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
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
    parser.add_argument("--stages", default="sft,dpo", help="comma-separated: sft, dpo")
    parser.add_argument("--record", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--cpu", action="store_true", help="rehearse on the CPU with a tiny model (no figures)"
    )
    args = parser.parse_args(argv)
    import torch

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "stages": {},
    }

    def save() -> None:
        if args.record is not None:
            args.record.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if args.cpu:
        report["rehearsal"] = "on the CPU with a tiny model: the script is checked, not measured"
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible", file=sys.stderr)
        report["error"] = "no CUDA device is visible"
        save()
        return 1
    else:
        report["device"] = torch.cuda.get_device_name(0)
    report["trl"] = availability("trl")
    report["deepspeed"] = availability("deepspeed")
    save()
    if not report["trl"]["available"]:
        print(f"gpu-check: TRL is not importable ({report['trl']['reason']})", file=sys.stderr)
        print(json.dumps(report))
        return 1
    zero = bool(report["deepspeed"]["available"]) and not args.cpu
    if zero:
        _single_process_distributed()
    else:
        print(
            "gpu-check: running without ZeRO: "
            + (report["deepspeed"].get("reason") or "a CPU rehearsal"),
            file=sys.stderr,
        )
    shape = REHEARSAL if args.cpu else None
    size = {"batch_size": 2, "max_length": 128} if args.cpu else {}
    with tempfile.TemporaryDirectory(prefix="arena-gpu-check-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model", shape)
        sft, pairs = write_data(work)
        for name in args.stages.split(","):
            stage, data = {"sft": (Stage.SFT, sft), "dpo": (Stage.DPO, pairs)}[name.strip()]
            try:
                result = run_stage(stage, model, data, work, args.steps, zero=zero, **size)
            except Exception as error:  # noqa: BLE001 - reported; the next stage still runs
                traceback.print_exc()
                result = {
                    "ok": False,
                    "stage": stage.value,
                    "error": f"{type(error).__name__}: {error}",
                }
            report["stages"][stage.value] = result
            print(json.dumps(result), flush=True)
            save()
    report["ok"] = bool(report["stages"]) and all(r["ok"] for r in report["stages"].values())
    save()
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
