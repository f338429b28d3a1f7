"""`make gpu-check`: the inference service's vLLM backend on a real GPU, measured.

For a machine with an NVIDIA GPU and no network. It

1. reports the CUDA devices torch sees (and exits non-zero when there is none);
2. saves a random-weight Llama-style model of about 1B parameters, with a byte-level BPE tokenizer
   trained here on generated text and a ChatML chat template (nothing is downloaded);
3. generates the same prompts through raw vLLM (offline ``LLM.generate``, in a child process so
   its GPU memory is returned) and through the service's vLLM backend (``AsyncLLM`` behind the
   registry and engine, as the service runs it), and prints tokens/s for both and their ratio
   (goal: service >= 0.95x raw vLLM);
4. attaches a LoRA adapter at run time, checks that it changes greedy answers, detaches it, and
   checks that requests naming it are then refused;
5. swaps in a new checkpoint under the same model name while requests are in flight, and checks
   that none failed and that later answers come from the new revision.

Every figure is printed as one JSON object (``--json``) and written to ``--record`` (default
``gpu-check.json``), so each run leaves its numbers behind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO / "services") not in sys.path:
    sys.path.insert(0, str(REPO / "services"))

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"]
# About 1.0B parameters: 16 layers of hidden 2048 (GQA 32/8 heads, MLP 8192), vocabulary 8192.
ONE_BILLION = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
SMALLER = {  # the second checkpoint of the swap check: any architecture will do
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
}


# --- devices --------------------------------------------------------------------------------------


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


# --- a local ~1B model ----------------------------------------------------------------------------


def train_tokenizer(
    folder: Path, vocab_size: int, max_length: int, corpus_lines: int = 4000
) -> Any:
    """A byte-level BPE trained on generated pseudo-words (every byte stays encodable)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    letters = "etaoinshrdlucmfwypvbgkjqxz"

    def word() -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))

    corpus = [" ".join(word() for _ in range(40)) for _ in range(corpus_lines)]
    bpe = Tokenizer(models.BPE(unk_token="<|unk|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(
    folder: Path, shape: dict[str, int], seed: int, vocab_size: int = 8192, context: int = 2048
) -> dict[str, Any]:
    """Saves a random bf16 Llama of `shape` with its tokenizer; initialised on the GPU (fast)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = train_tokenizer(folder, vocab_size, context)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=context,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        **shape,
    )
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def build_lora(model_dir: Path, folder: Path) -> Path:
    """A random (non-zero) LoRA adapter on q/v projections, so it visibly changes answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    lora = get_peft_model(
        base,
        LoraConfig(
            r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(folder)
    del base, lora
    gc.collect()
    return folder


# --- throughput -----------------------------------------------------------------------------------


def prompts(count: int) -> list[str]:
    return [f"Question {i}: write a long story about topic number {i % 17}." for i in range(count)]


def chat_prompt_ids(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """The exact token ids the backend feeds, so raw vLLM gets identical prompts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for text in texts:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        out.append(tokenizer.encode(rendered, add_special_tokens=False))
    return out


def _raw_vllm_child(
    model_dir: str, texts: list[str], max_tokens: int, utilization: float, queue: Any
) -> None:
    from vllm import LLM, SamplingParams

    ids = chat_prompt_ids(Path(model_dir), texts)
    llm = LLM(model=model_dir, enable_prefix_caching=True, gpu_memory_utilization=utilization)
    params = [
        SamplingParams(temperature=0.8, top_p=0.95, seed=i, max_tokens=max_tokens, ignore_eos=True)
        for i in range(len(texts))
    ]
    batch = [{"prompt_token_ids": prompt} for prompt in ids]
    llm.generate(batch[:8], params[:8])  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(batch, params)
    seconds = time.perf_counter() - started
    queue.put((seconds, sum(len(output.outputs[0].token_ids) for output in outputs)))


def raw_vllm_throughput(
    model_dir: Path, texts: list[str], max_tokens: int, utilization: float = 0.35
) -> tuple[float, int]:
    """(seconds, generated tokens) of vLLM's offline LLM.generate, in a child process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_raw_vllm_child, args=(str(model_dir), texts, max_tokens, utilization, queue)
    )
    child.start()
    result = queue.get(timeout=1800)
    child.join(timeout=120)
    seconds, tokens = result
    return float(seconds), int(tokens)


def _spec(
    name: str, model_dir: Path, revision: str, utilization: float, enable_lora: bool = False
) -> Any:
    from arena_inference.domain.types import BackendKind, ModelSpec

    options: dict[str, Any] = {
        "gpu_memory_utilization": utilization,
        "sampling_overrides": {"ignore_eos": True},  # equal token counts on both paths
    }
    if enable_lora:
        options.update({"enable_lora": True, "max_lora_rank": 8, "max_loras": 2})
    return ModelSpec(
        name, BackendKind.VLLM, uri=str(model_dir), revision=revision, backend_options=options
    )


def _engine(utilization: float) -> Any:
    from arena_inference.backends.vllm_backend import VllmBackend
    from arena_inference.domain.engine import InferenceEngine
    from arena_inference.domain.ports import MemoryAnswerCache
    from arena_inference.domain.registry import ModelRegistry

    registry = ModelRegistry(lambda spec: VllmBackend(spec, gpu_memory_utilization=utilization))
    return InferenceEngine(registry, MemoryAnswerCache())


def _inputs(model: str, texts: list[str], max_tokens: int, **sampling: Any) -> list[Any]:
    from arena_inference.domain.types import ChatMessage, GenerationInput, ModelRef, Role, Sampling

    values = {"temperature": 0.8, "top_p": 0.95, "max_tokens": max_tokens, **sampling}
    return [
        GenerationInput(
            ModelRef(model),
            (ChatMessage(Role.USER, text),),
            Sampling(**{"seed": i, **values}),
        )
        for i, text in enumerate(texts)
    ]


async def vllm_backend_throughput(
    model_dir: Path, texts: list[str], max_tokens: int, utilization: float = 0.35
) -> tuple[float, int]:
    """(seconds, generated tokens) through the engine and the vLLM backend, cache bypassed."""
    from arena_inference.domain.types import CachePolicy, Generation

    engine = _engine(utilization)
    await engine.registry.register(_spec("bench", model_dir, "r1", utilization), load=True)
    try:
        await engine.generate_batch(_inputs("bench", texts[:8], max_tokens), CachePolicy.BYPASS)
        started = time.perf_counter()
        results = await engine.generate_batch(
            _inputs("bench", texts, max_tokens), CachePolicy.BYPASS
        )
        seconds = time.perf_counter() - started
    finally:
        await engine.registry.close()
    failures = [r for r in results if not isinstance(r, Generation)]
    if failures:
        raise RuntimeError(f"{len(failures)} generations failed, first: {failures[0]!r}")
    return seconds, sum(r.completion_tokens for r in results if isinstance(r, Generation))


# --- LoRA and swap --------------------------------------------------------------------------------


async def lora_check(model_dir: Path, lora_dir: Path, utilization: float) -> dict[str, Any]:
    from arena_core.errors import NotFoundError
    from arena_inference.domain.types import AdapterSpec, CachePolicy, ModelRef

    engine = _engine(utilization)
    registry = engine.registry
    await registry.register(_spec("lora-base", model_dir, "r1", utilization, True), load=True)
    try:
        question = _inputs("lora-base", ["Tell me about adapters."], 24, temperature=0.0)[0]
        base = await engine.generate(question, CachePolicy.BYPASS)
        started = time.perf_counter()
        info = await registry.load_adapter("lora-base", AdapterSpec("style", str(lora_dir)))
        load_seconds = time.perf_counter() - started
        styled_input = type(question)(
            ModelRef("lora-base", adapter="style"), question.messages, question.sampling
        )
        styled = await engine.generate(styled_input, CachePolicy.BYPASS)
        await registry.unload_adapter("lora-base", "style")
        refused = False
        try:
            await engine.generate(styled_input, CachePolicy.BYPASS)
        except NotFoundError:
            refused = True
        again = await engine.generate(question, CachePolicy.BYPASS)
    finally:
        await registry.close()
    ok = (
        info.loaded_adapters == ("style",)
        and styled.choices[0].text != base.choices[0].text
        and again.choices[0].text == base.choices[0].text
        and refused
    )
    return {
        "ok": ok,
        "adapter_load_seconds": round(load_seconds, 2),
        "answer_changed_with_adapter": styled.choices[0].text != base.choices[0].text,
        "refused_after_unload": refused,
        "base_answer_unchanged": again.choices[0].text == base.choices[0].text,
    }


async def swap_check(
    first: Path, second: Path, utilization: float, settle_seconds: float = 2.0
) -> dict[str, Any]:
    """Replaces the registration while requests stream in; none may fail."""
    from arena_inference.domain.types import CachePolicy, Generation

    engine = _engine(utilization)
    registry = engine.registry
    await registry.register(_spec("target", first, "step-1", utilization), load=True)
    stop = asyncio.Event()
    revisions: list[str] = []
    failures: list[str] = []

    async def traffic(worker: int) -> None:
        count = 0
        while not stop.is_set():
            question = _inputs("target", [f"worker {worker} question {count}"], 16)[0]
            try:
                result = await engine.generate(question, CachePolicy.BYPASS)
            except Exception as error:  # noqa: BLE001 - any failure during the swap counts
                failures.append(repr(error))
            else:
                assert isinstance(result, Generation)
                revisions.append(result.model.revision)
            count += 1

    workers = [asyncio.create_task(traffic(i)) for i in range(8)]
    try:
        await asyncio.sleep(settle_seconds)
        started = time.perf_counter()
        await registry.register(_spec("target", second, "step-2", utilization), replace=True)
        swap_seconds = time.perf_counter() - started
        await asyncio.sleep(settle_seconds)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await registry.close()
    tail = revisions[-8:]
    return {
        "ok": not failures and "step-1" in revisions and tail == ["step-2"] * len(tail),
        "swap_seconds": round(swap_seconds, 1),
        "requests_during_check": len(revisions),
        "failed_requests": failures[:5],
        "served_by_old": revisions.count("step-1"),
        "served_by_new": revisions.count("step-2"),
    }


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--utilization",
        type=float,
        default=0.35,
        help="GPU memory share of each vLLM engine (two run during the swap)",
    )
    parser.add_argument("--workdir", type=Path, help="where to save the models (default: tmp)")
    parser.add_argument("--record", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args()

    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report.update(cuda_report())
    if not report["devices"]:
        print(json.dumps(report, indent=2))
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 1
    try:
        import vllm
    except ImportError:
        report["error"] = "vLLM is not installed: pip install '.[gpu]' on this node"
        print(json.dumps(report, indent=2))
        return 1
    report["vllm"] = vllm.__version__

    ok = True
    with tempfile.TemporaryDirectory(prefix="arena-gpu-check-", dir=arguments.workdir) as tmp:
        root = Path(tmp)
        report["model"] = build_model(root / "model-1b", ONE_BILLION, seed=0)
        texts = prompts(arguments.prompts)
        raw = raw_vllm_throughput(
            root / "model-1b", texts, arguments.max_tokens, arguments.utilization
        )
        ours = asyncio.run(
            vllm_backend_throughput(
                root / "model-1b", texts, arguments.max_tokens, arguments.utilization
            )
        )
        raw_rate, our_rate = raw[1] / raw[0], ours[1] / ours[0]
        report["throughput"] = {
            "prompts": len(texts),
            "max_tokens": arguments.max_tokens,
            "raw_vllm_tokens_per_second": round(raw_rate, 1),
            "service_backend_tokens_per_second": round(our_rate, 1),
            "ratio": round(our_rate / raw_rate, 3),
            "goal": 0.95,
        }
        lora_dir = build_lora(root / "model-1b", root / "lora")
        report["lora"] = asyncio.run(lora_check(root / "model-1b", lora_dir, arguments.utilization))
        report["second_checkpoint"] = build_model(root / "model-swap", SMALLER, seed=1)
        report["swap"] = asyncio.run(
            swap_check(root / "model-1b", root / "model-swap", arguments.utilization)
        )
        ok = report["lora"]["ok"] and report["swap"]["ok"]
    report["ok"] = ok
    text = json.dumps(report, indent=None if arguments.json else 2)
    print(text)
    arguments.record.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
