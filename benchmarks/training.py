"""Training throughput: an SFT run through the training service (gRPC, a local worker process,
progress read from its log, state in JetStream KV) against the same TRL SFTTrainer called
directly, same model, data and steps; printed side by side with ratios.

The model is a small random Llama built here (nothing downloaded) trained on the CPU. What is
compared is steady-state tokens/s (the first steps, with their warm-up, are left out), so the
service's own cost — marker lines, KV writes, events — shows as a ratio below 1.0; the wall time
column adds the worker's start-up (imports), which a real multi-hour run amortises.

    python benchmarks/training.py [--steps 40] [--hidden 64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "services")]

from tests.support.tiny_models import build_tiny_chat_model  # noqa: E402
from tests.unit.training.data import sft_records, write_dataset  # noqa: E402

WARMUP_STEPS = 5


def hyperparameters(steps: int) -> dict[str, Any]:
    return {
        "learning_rate": 1e-3,
        "max_steps": steps,
        "per_device_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_length": 128,
        "logging_steps": 1,
        "save_steps": 10_000,
        "gradient_checkpointing": False,
        "warmup_ratio": 0.0,
    }


def direct(model: Path, data: Path, work: Path, steps: int) -> dict[str, float]:
    """Plain TRL: SFTTrainer with the same arguments the worker would pass."""
    import orjson
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl.trainer.sft_config import SFTConfig
    from trl.trainer.sft_trainer import SFTTrainer

    records = [
        {"messages": orjson.loads(line)["messages"]} for line in data.read_bytes().splitlines()
    ]
    samples: list[tuple[float, float]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs:
                samples.append((time.perf_counter(), float(logs["num_tokens"])))

    h = hyperparameters(steps)
    started = time.perf_counter()
    trainer = SFTTrainer(
        model=str(model),
        args=SFTConfig(
            output_dir=str(work / "direct"),
            learning_rate=h["learning_rate"],
            max_steps=steps,
            per_device_train_batch_size=h["per_device_batch_size"],
            max_length=h["max_length"],
            logging_steps=1,
            save_strategy="no",
            gradient_checkpointing=False,
            bf16=False,
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(records),
        processing_class=AutoTokenizer.from_pretrained(str(model)),
        callbacks=[Clock()],
    )
    trainer.train()
    return {"tokens_per_second": _steady(samples), "wall_seconds": time.perf_counter() - started}


async def through_service(model: Path, data_dir: Path, work: Path, steps: int) -> dict[str, float]:
    from tests.integration.training.harness import settings_for, training_service, wait_for_run
    from tests.integration.training.specs import run_spec

    from arena.training.v1 import training_service_pb2 as pb
    from arena_cli.nats_server import NatsServer, free_port

    dataset = write_dataset(data_dir, "bench", "sft", sft_records(range(256)), parquet=False)
    spec = run_spec("sft", base=pb.ModelSource(uri=str(model)), datasets=[dataset])
    spec.recipe.hyperparameters.CopyFrom(
        pb.Hyperparameters(
            **{k: v for k, v in hyperparameters(steps).items()}, precision=pb.PRECISION_FP32
        )
    )
    nats = NatsServer(work / "js", free_port())
    nats.start()
    try:
        async with training_service(settings_for(nats.url, work / "service")) as service:
            started = time.perf_counter()
            await service.stub.StartRun(pb.StartRunRequest(run_id="bench", spec=spec))
            samples: list[tuple[float, float]] = []
            async for event in service.stub.StreamRunEvents(
                pb.StreamRunEventsRequest(run_id="bench")
            ):
                if event.WhichOneof("event") == "progress" and event.progress.HasField(
                    "tokens_per_second"
                ):
                    samples.append((time.perf_counter(), event.progress.tokens_per_second))
            run = await wait_for_run(service.stub, "bench")
            wall = time.perf_counter() - started
            assert run.state == pb.TRAINING_RUN_STATE_SUCCEEDED, run
    finally:
        nats.stop()
    rates = [rate for _, rate in samples[WARMUP_STEPS:]] or [rate for _, rate in samples]
    return {"tokens_per_second": sum(rates) / len(rates), "wall_seconds": wall}


def _steady(samples: list[tuple[float, float]]) -> float:
    window = samples[WARMUP_STEPS:] if len(samples) > WARMUP_STEPS + 1 else samples
    (t0, n0), (t1, n1) = window[0], window[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arena-bench-training-") as tmp:
        work = Path(tmp)
        model = build_tiny_chat_model(work / "model", hidden_size=args.hidden)
        data = write_dataset(work / "data", "direct", "sft", sft_records(range(256)), parquet=False)
        data_file = Path(data.files[0].uri.removeprefix("file://"))
        results = {
            "direct TRL": direct(model, data_file, work, args.steps),
            "service (local worker)": asyncio.run(
                through_service(model, work / "data", work, args.steps)
            ),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base = results["direct TRL"]
    print(f"SFT, {args.steps} steps, hidden {args.hidden}, CPU")
    print(f"{'path':<24}{'tokens/s':>12}{'ratio':>8}{'wall s':>10}")
    for name, result in results.items():
        ratio = result["tokens_per_second"] / base["tokens_per_second"]
        print(
            f"{name:<24}{result['tokens_per_second']:>12.0f}{ratio:>8.2f}"
            f"{result['wall_seconds']:>10.1f}"
        )


if __name__ == "__main__":
    main()
