"""`make gpu-check`: what a GPU node offers this project, measured.

Prints the CUDA devices torch sees and their memory, times a bf16 matmul, and — when the `[gpu]`
extra (vLLM) is installed — runs a real vLLM generation on a tiny model built here from a config
(random weights, a tokenizer trained on the fly), so nothing is fetched from a model hub. Exits
non-zero when no GPU is visible, so a mis-scheduled pod or a broken driver is obvious.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def cuda_report() -> dict[str, Any]:
    import torch

    devices = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        devices.append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "memory_total_gib": round(total / 2**30, 1),
                "memory_free_gib": round(free / 2**30, 1),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            }
        )
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "devices": devices}


def matmul_tflops(size: int = 8192, repeats: int = 20) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    torch.matmul(a, b)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return 2 * size**3 * repeats / seconds / 1e12


def build_tiny_model(folder: Path) -> Path:
    """A small Llama-shaped model with a byte-level BPE tokenizer trained on a few sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [f"instruction {i}: explain why the sky is blue in {i} words." for i in range(200)]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def vllm_generation(model_dir: Path, prompts: int = 256, max_tokens: int = 128) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(model=str(model_dir), enable_prefix_caching=True, gpu_memory_utilization=0.3)
    load_seconds = time.perf_counter() - started
    params = SamplingParams(temperature=0.8, max_tokens=max_tokens, ignore_eos=True, seed=0)
    batch = [f"instruction {i}: explain" for i in range(prompts)]
    started = time.perf_counter()
    outputs = llm.generate(batch, params)
    seconds = time.perf_counter() - started
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    return {
        "engine_load_seconds": round(load_seconds, 1),
        "prompts": prompts,
        "generated_tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()

    report: dict[str, Any] = cuda_report()
    if not report["devices"]:
        print(json.dumps(report, indent=2))
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 1
    report["bf16_matmul_tflops"] = round(matmul_tflops(), 1)
    if importlib.util.find_spec("vllm") is None:
        report["vllm"] = "not installed (pip install '.[gpu]')"
    else:
        with tempfile.TemporaryDirectory() as folder:
            report["vllm"] = vllm_generation(build_tiny_model(Path(folder)))
    print(json.dumps(report, indent=None if arguments.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
