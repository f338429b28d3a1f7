"""`make gpu-check`: the inference service's backends on a real GPU, measured.

For a machine with an NVIDIA GPU and no network. It

1. reports the CUDA devices torch sees (and exits non-zero when there is none);
2. saves a random-weight Llama-style model of about 1B parameters, with a byte-level BPE tokenizer
   trained here on generated text and a ChatML chat template (nothing is downloaded);
3. measures throughput on the same prompts and sampling, as tokens/s and their ratio:
   - with vLLM importable, raw vLLM (offline ``LLM.generate``, in a child process so its GPU
     memory is returned) against the service's vLLM backend (``AsyncLLM`` behind the registry and
     engine, as the service runs it); goal: service >= 0.95x raw vLLM;
   - without vLLM (a machine that cannot install it: its wheel is far larger than what can be
     carried to a lent GPU), the JSON says so, ``"vllm": {"available": false, "reason": ...}``,
     and the service's transformers backend is measured instead: the prompts go through the
     registry, the engine and dynamic batching and are decoded in the backend's worker process,
     against Hugging Face ``generate`` called directly on the same model, batch for batch;
     goal: service >= 0.9x direct;
4. attaches a LoRA adapter at run time, checks that it changes greedy answers, detaches it, and
   checks that requests naming it are then refused;
5. swaps in a new checkpoint under the same model name while requests are in flight, and checks
   that none failed and that later answers come from the new revision.

Steps 4 and 5 run on whichever backend step 3 measured. A step that fails is reported with its
error and the others still run. Every figure is printed as one JSON object (``--json``) and
written to ``--record`` (default ``gpu-check.json``) after every step, so even a run cut short
leaves its numbers behind. ``--cpu`` rehearses the whole script on the CPU with a small model
(``--backend transformers`` there, since vLLM has no CPU build): a check of the script, not a
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
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
# --cpu: a rehearsal of the script, small enough for a laptop.
REHEARSAL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
REHEARSAL_SWAP = {**REHEARSAL, "hidden_size": 32, "num_attention_heads": 2}
TEMPERATURE, TOP_P = 0.8, 0.95  # the sampling of every throughput run, on both sides


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


def vllm_status() -> dict[str, Any]:
    """Whether vLLM can be imported here, with its version or the reason it cannot."""
    try:
        vllm = importlib.import_module("vllm")
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        return {"available": False, "reason": f"{type(error).__name__}: {error}"}
    return {"available": True, "version": str(getattr(vllm, "__version__", "unknown"))}


# --- a local model --------------------------------------------------------------------------------


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
    folder: Path,
    shape: dict[str, int],
    seed: int,
    vocab_size: int = 8192,
    context: int = 2048,
    device: str = "cuda",
    corpus_lines: int = 4000,
) -> dict[str, Any]:
    """Saves a random Llama of `shape` with its tokenizer: bf16, initialised on the GPU (fast);
    float32 on the CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = train_tokenizer(folder, vocab_size, context, corpus_lines)
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
    with torch.device(device):
        model = LlamaForCausalLM(config)
    if device != "cpu":
        model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def build_lora(model_dir: Path, folder: Path, rank: int = 8, dtype: str = "bfloat16") -> Path:
    """A random (non-zero) LoRA adapter on q/v projections, so it visibly changes answers; in
    the dtype the base model is served in."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype) if dtype else torch.float32
    )
    lora = get_peft_model(
        base,
        LoraConfig(
            r=rank, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(folder)
    del base, lora
    gc.collect()
    return folder


# --- which backend the checks run on --------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The backend the throughput, LoRA and swap checks run on, and how its specs and engines
    are made: vLLM (``utilization`` is each engine's share of GPU memory; two run during the
    swap) or transformers (on ``device`` in ``dtype``, batches of up to ``batch``)."""

    kind: str  # "vllm" or "transformers"
    utilization: float = 0.35
    device: str = "cuda"
    dtype: str = "bfloat16"
    batch: int = 64

    def spec(self, name: str, model_dir: Path, revision: str, lora: bool = False) -> Any:
        from arena_inference.domain.types import BackendKind, ModelSpec

        if self.kind == "transformers":
            return ModelSpec(
                name,
                BackendKind.TRANSFORMERS,
                uri=str(model_dir),
                revision=revision,
                dtype=self.dtype,
                backend_options={"device": self.device, "max_batch_size": self.batch},
            )
        options: dict[str, Any] = {
            "gpu_memory_utilization": self.utilization,
            "sampling_overrides": {"ignore_eos": True},  # equal token counts on both paths
        }
        if lora:
            options.update({"enable_lora": True, "max_lora_rank": 8, "max_loras": 2})
        return ModelSpec(
            name, BackendKind.VLLM, uri=str(model_dir), revision=revision, backend_options=options
        )

    def engine(self) -> Any:
        """The registry and engine the service runs, with an in-memory answer cache."""
        from arena_inference.domain.engine import InferenceEngine
        from arena_inference.domain.ports import MemoryAnswerCache
        from arena_inference.domain.registry import ModelRegistry

        factory: Callable[[Any], Any]
        if self.kind == "transformers":
            from arena_inference.backends.transformers_backend import TransformersBackend

            factory = TransformersBackend
        else:
            from arena_inference.backends.vllm_backend import VllmBackend

            def factory(spec: Any) -> Any:
                return VllmBackend(spec, gpu_memory_utilization=self.utilization)

        return InferenceEngine(ModelRegistry(factory), MemoryAnswerCache())


# --- throughput -----------------------------------------------------------------------------------


def prompts(count: int) -> list[str]:
    return [f"Question {i}: write a long story about topic number {i % 17}." for i in range(count)]


def chat_prompt_ids(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """The exact token ids the backends feed, so the reference gets identical prompts."""
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
        SamplingParams(
            temperature=TEMPERATURE, top_p=TOP_P, seed=i, max_tokens=max_tokens, ignore_eos=True
        )
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


def hf_generate_throughput(
    model_dir: Path,
    texts: list[str],
    max_tokens: int,
    batch: int,
    device: str = "cuda",
    dtype: str = "bfloat16",
) -> tuple[float, int]:
    """(seconds, generated tokens) of Hugging Face ``generate`` called directly: the same
    prompts in batches of `batch` (left-padded), the same sampling (temperature, top_p and no
    top_k, as the backend samples); tokens after a row's end of sequence are not counted."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype) if dtype else torch.float32
    )
    model.to(device).eval()
    ids = chat_prompt_ids(model_dir, texts)
    eos = tokenizer.eos_token_id

    def generate(model: Any, chunk: list[list[int]]) -> int:
        padded = tokenizer.pad({"input_ids": chunk}, return_tensors="pt").to(device)
        with torch.inference_mode():
            output = model.generate(
                **padded,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=max_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[:, padded["input_ids"].shape[1] :].tolist()
        return sum(row.index(eos) if eos in row else len(row) for row in new)

    torch.manual_seed(0)
    generate(model, ids[: min(8, len(ids))])  # warm-up
    _synchronize(device)
    started = time.perf_counter()
    tokens = sum(generate(model, ids[i : i + batch]) for i in range(0, len(ids), batch))
    _synchronize(device)
    seconds = time.perf_counter() - started
    del model
    gc.collect()
    if device != "cpu":
        torch.cuda.empty_cache()
    return seconds, tokens


def _synchronize(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def _inputs(model: str, texts: list[str], max_tokens: int, **sampling: Any) -> list[Any]:
    from arena_inference.domain.types import ChatMessage, GenerationInput, ModelRef, Role, Sampling

    values = {"temperature": TEMPERATURE, "top_p": TOP_P, "max_tokens": max_tokens, **sampling}
    return [
        GenerationInput(
            ModelRef(model),
            (ChatMessage(Role.USER, text),),
            Sampling(**{"seed": i, **values}),
        )
        for i, text in enumerate(texts)
    ]


async def backend_throughput(
    target: Target, model_dir: Path, texts: list[str], max_tokens: int
) -> tuple[float, int]:
    """(seconds, generated tokens) through the engine and the target's backend, cache
    bypassed, every prompt submitted at once (the backend batches them)."""
    from arena_inference.domain.types import CachePolicy, Generation

    engine = target.engine()
    await engine.registry.register(target.spec("bench", model_dir, "r1"), load=True)
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


async def vllm_backend_throughput(
    model_dir: Path, texts: list[str], max_tokens: int, utilization: float = 0.35
) -> tuple[float, int]:
    """(seconds, generated tokens) through the engine and the vLLM backend, cache bypassed."""
    return await backend_throughput(
        Target("vllm", utilization=utilization), model_dir, texts, max_tokens
    )


def throughput(
    target: Target, model_dir: Path, texts: list[str], max_tokens: int
) -> dict[str, Any]:
    """The target's backend against the reference on the same prompts and sampling."""
    if target.kind == "vllm":
        reference_name, goal = "raw_vllm", 0.95
        reference = raw_vllm_throughput(model_dir, texts, max_tokens, target.utilization)
    else:
        reference_name, goal = "direct_hf_generate", 0.9
        reference = hf_generate_throughput(
            model_dir, texts, max_tokens, target.batch, target.device, target.dtype
        )
    ours = asyncio.run(backend_throughput(target, model_dir, texts, max_tokens))
    reference_rate, our_rate = reference[1] / reference[0], ours[1] / ours[0]
    return {
        "backend": target.kind,
        "prompts": len(texts),
        "max_tokens": max_tokens,
        **({"batch_size": target.batch} if target.kind == "transformers" else {}),
        f"{reference_name}_tokens": reference[1],
        f"{reference_name}_tokens_per_second": round(reference_rate, 1),
        "service_backend_tokens": ours[1],
        "service_backend_tokens_per_second": round(our_rate, 1),
        "ratio": round(our_rate / reference_rate, 3),
        "goal": goal,
    }


# --- LoRA and swap --------------------------------------------------------------------------------


async def lora_check(target: Target, model_dir: Path, lora_dir: Path) -> dict[str, Any]:
    from arena_core.errors import NotFoundError
    from arena_inference.domain.types import AdapterSpec, CachePolicy, ModelRef

    engine = target.engine()
    registry = engine.registry
    await registry.register(target.spec("lora-base", model_dir, "r1", lora=True), load=True)
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
        "backend": target.kind,
        "adapter_load_seconds": round(load_seconds, 2),
        "answer_changed_with_adapter": styled.choices[0].text != base.choices[0].text,
        "refused_after_unload": refused,
        "base_answer_unchanged": again.choices[0].text == base.choices[0].text,
    }


async def swap_check(
    target: Target, first: Path, second: Path, settle_seconds: float = 2.0
) -> dict[str, Any]:
    """Replaces the registration while requests stream in; none may fail."""
    from arena_inference.domain.types import CachePolicy, Generation

    engine = target.engine()
    registry = engine.registry
    await registry.register(target.spec("target", first, "step-1"), load=True)
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
        await registry.register(target.spec("target", second, "step-2"), replace=True)
        swap_seconds = time.perf_counter() - started
        await asyncio.sleep(settle_seconds)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        await registry.close()
    tail = revisions[-8:]
    return {
        "ok": not failures and "step-1" in revisions and tail == ["step-2"] * len(tail),
        "backend": target.kind,
        "swap_seconds": round(swap_seconds, 1),
        "requests_during_check": len(revisions),
        "failed_requests": failures[:5],
        "served_by_old": revisions.count("step-1"),
        "served_by_new": revisions.count("step-2"),
    }


# --- main -----------------------------------------------------------------------------------------


class Record:
    """The report, written to its file after every step (a run cut short keeps what it has)."""

    def __init__(self, path: Path, report: dict[str, Any]) -> None:
        self.path = path
        self.report = report
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")

    def step(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Runs one step; its failure is recorded in its place and the next steps still run."""
        started = time.perf_counter()
        print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
        try:
            result: dict[str, Any] | None = run()
        except Exception as error:  # noqa: BLE001 - reported; the other steps still run
            traceback.print_exc()
            result = None
            self.report[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        else:
            self.report[name] = result
        self.report.setdefault("step_seconds", {})[name] = round(time.perf_counter() - started, 1)
        self.save()
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--backend",
        choices=["auto", "vllm", "transformers"],
        default="auto",
        help="auto: vLLM when it can be imported, else the transformers backend",
    )
    parser.add_argument(
        "--utilization",
        type=float,
        default=0.35,
        help="GPU memory share of each vLLM engine (two run during the swap)",
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="the transformers backend's max batch size"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="rehearse on the CPU with a small model (no figures)"
    )
    parser.add_argument("--workdir", type=Path, help="where to save the models (default: tmp)")
    parser.add_argument("--record", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    arguments = parser.parse_args(argv)

    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report.update(cuda_report())
    if arguments.cpu:
        report["rehearsal"] = "on the CPU with a small model: the script is checked, not measured"
    elif not report["devices"]:
        print(json.dumps(report, indent=2))
        print("error: no CUDA device visible to torch", file=sys.stderr)
        return 1
    report["vllm"] = vllm_status()
    kind = arguments.backend
    if kind == "auto":
        kind = "vllm" if report["vllm"]["available"] and not arguments.cpu else "transformers"
    if kind == "vllm" and not report["vllm"]["available"]:
        print(json.dumps(report, indent=2))
        print("error: --backend vllm, but vLLM cannot be imported here", file=sys.stderr)
        return 1
    device = "cpu" if arguments.cpu else "cuda"
    target = Target(
        kind,
        utilization=arguments.utilization,
        device=device,
        dtype="" if arguments.cpu else "bfloat16",
        batch=arguments.batch,
    )
    report["backend"] = kind
    record = Record(arguments.record, report)
    size: dict[str, Any] = (
        {"vocab_size": 512, "context": 512, "device": device, "corpus_lines": 300}
        if arguments.cpu
        else {}
    )
    first_shape, second_shape = (
        (REHEARSAL, REHEARSAL_SWAP) if arguments.cpu else (ONE_BILLION, SMALLER)
    )

    with tempfile.TemporaryDirectory(prefix="arena-gpu-check-", dir=arguments.workdir) as tmp:
        root = Path(tmp)
        first, second = root / "model-1", root / "model-2"
        texts = prompts(arguments.prompts)
        model = record.step("model", lambda: build_model(first, first_shape, seed=0, **size))
        if model is not None:
            record.step(
                "throughput", lambda: throughput(target, first, texts, arguments.max_tokens)
            )
            lora_dir = root / "lora"
            record.step(
                "lora",
                lambda: asyncio.run(
                    lora_check(target, first, build_lora(first, lora_dir, dtype=target.dtype))
                ),
            )
            if record.step(
                "second_checkpoint", lambda: build_model(second, second_shape, seed=1, **size)
            ):
                record.step("swap", lambda: asyncio.run(swap_check(target, first, second)))
    steps = ("throughput", "lora", "swap")
    report["ok"] = all(
        isinstance(report.get(name), dict) and report[name].get("ok", True) is True
        for name in steps
    )
    record.save()
    print(json.dumps(report, indent=None if arguments.json else 2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
