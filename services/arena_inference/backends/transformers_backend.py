"""Hugging Face transformers on the CPU (or one GPU), for development and tests.

Concurrent requests are batched dynamically (a short collection window, left padding) and decoded
together by one loop with a KV cache. Sampling happens per row with the row's own random
generator, so a seeded request gives the same answer whatever it was batched with. Every sampling
parameter of the contract is honoured: temperature (0 = greedy), top_p, top_k, min_p, seed, stop
strings, n, presence / frequency / repetition penalties, max_tokens.

Backend options (``ModelSpec.backend_options``): ``max_batch_size``, ``batch_window_ms``,
``batch_max_wait_ms``, ``device`` ("cpu", "cuda", "cuda:1"), ``trust_remote_code`` (default false).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_core.errors import FailedPreconditionError, InvalidArgumentError
from arena_inference.domain.backend import BackendRequest, ModelBackend, Prompt
from arena_inference.domain.batching import DynamicBatcher
from arena_inference.domain.requests import check_context
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Choice,
    Completion,
    FinishReason,
    ModelSpec,
    Sampling,
    weights_location,
)

log = logging.getLogger(__name__)

# Used when a tokenizer has no chat template (base models): plain "role: content" turns.
_FALLBACK_ROLE_PREFIX = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class _Row:
    """One completion being decoded (a request with n > 1 has n rows)."""

    item: int
    choice: int
    prompt_ids: list[int]
    max_new: int
    stop: tuple[str, ...]
    stream: bool
    generator: Any
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    prefix_offset: int = 0
    read_offset: int = 0
    finish: FinishReason | None = None
    stop_hit: bool = False
    first_token_at: float | None = None


class TransformersBackend(ModelBackend):
    kind = BackendKind.TRANSFORMERS

    def __init__(
        self,
        spec: ModelSpec,
        *,
        max_batch_size: int = 16,
        batch_window_seconds: float = 0.005,
        batch_max_wait_seconds: float = 0.05,
        device: str = "cpu",
    ) -> None:
        super().__init__(spec)
        options = dict(spec.backend_options)
        self._max_batch = int(options.get("max_batch_size", max_batch_size))
        self._window = float(options.get("batch_window_ms", batch_window_seconds * 1000)) / 1000
        self._max_wait = (
            float(options.get("batch_max_wait_ms", batch_max_wait_seconds * 1000)) / 1000
        )
        self._device = str(options.get("device", device))
        self._trust_remote_code = bool(options.get("trust_remote_code", False))
        self._model: Any = None
        self._tokenizer: Any = None
        self._context: int | None = None
        self._eos_ids: set[int] = set()
        self._pad_id = 0
        self._adapters: dict[str, AdapterSpec] = {}
        self._batcher: DynamicBatcher[BackendRequest, Completion] | None = None
        self._compute_lock = asyncio.Lock()
        # One thread decodes every batch: torch's per-thread state and caches stay warm.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{spec.name}")

    # --- lifecycle -----------------------------------------------------------------------------

    async def load(self) -> None:
        await asyncio.to_thread(self._load_sync)
        self._batcher = DynamicBatcher(
            self._run_batch,
            max_batch_size=self._max_batch,
            window_seconds=self._window,
            max_wait_seconds=self._max_wait,
            key=lambda request: request.adapter,
        )

    def _load_sync(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location = weights_location(self.spec.uri)
        local = Path(location).expanduser()
        kwargs: dict[str, Any] = {"trust_remote_code": self._trust_remote_code}
        if local.exists():
            location = str(local)
        elif self.spec.revision:
            kwargs["revision"] = self.spec.revision
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            self._model = AutoModelForCausalLM.from_pretrained(
                location, dtype=_torch_dtype(self.spec.dtype), **kwargs
            )
        except OSError as error:
            raise FailedPreconditionError(
                f"cannot load weights for model {self.spec.name!r} from {location!r}: {error}"
            ) from None
        self._model.to(self._device).eval()
        config = self._model.config
        self._context = self.spec.max_model_len or getattr(config, "max_position_embeddings", None)
        eos = self._model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        if self._tokenizer.eos_token_id is not None:
            eos_ids.append(self._tokenizer.eos_token_id)
        self._eos_ids = {int(token) for token in eos_ids if token is not None}
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids, default=0))

    async def unload(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        async with self._compute_lock:
            self._model = None
            self._tokenizer = None
            await asyncio.to_thread(gc.collect)
        self._executor.shutdown(wait=False)

    @property
    def context_length(self) -> int | None:
        return self._context

    @property
    def queued(self) -> int:
        return self._batcher.queued if self._batcher else 0

    # --- adapters ------------------------------------------------------------------------------

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        async with self._compute_lock:
            try:
                await asyncio.to_thread(
                    self._model.load_adapter,
                    weights_location(adapter.uri),
                    adapter_name=adapter.name,
                )
            except (OSError, ValueError) as error:
                raise FailedPreconditionError(
                    f"cannot attach adapter {adapter.name!r} from {adapter.uri!r}: {error}"
                ) from None
            self._adapters[adapter.name] = adapter

    async def unload_adapter(self, name: str) -> None:
        async with self._compute_lock:
            await asyncio.to_thread(self._model.delete_adapter, name)
            del self._adapters[name]

    # --- generation ----------------------------------------------------------------------------

    def prepare(self, messages: Sequence[ChatMessage]) -> Prompt:
        # Deferred: the chat template and tokenizer run in the decoding thread, batch by batch,
        # where they do not compete with the event loop; the context is checked there too.
        return Prompt(tuple(messages))

    def encode(self, messages: Sequence[ChatMessage]) -> Prompt:
        """The prompt with its token ids and count (what the decoding thread computes)."""
        ids = self._encode(messages)
        return Prompt(tuple(messages), len(ids), ids)

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        conversation = [message.as_dict() for message in messages]
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        else:
            text = (
                "".join(
                    f"{_FALLBACK_ROLE_PREFIX.get(turn['role'], turn['role'])}: {turn['content']}\n"
                    for turn in conversation
                )
                + "Assistant:"
            )
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    async def generate(self, requests: Sequence[BackendRequest]) -> list[Completion | Exception]:
        if self._batcher is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        for request in requests:
            if request.adapter and request.adapter not in self._adapters:
                raise InvalidArgumentError(
                    f"adapter {request.adapter!r} is not attached to model {self.spec.name!r}"
                )
        futures = self._batcher.submit_many(requests)
        results = await asyncio.gather(*futures, return_exceptions=True)
        out: list[Completion | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            out.append(result)
        return out

    async def _run_batch(self, batch: Sequence[BackendRequest]) -> list[Completion | Exception]:
        async with self._compute_lock:
            if self._model is None:
                raise FailedPreconditionError(f"model {self.spec.name!r} was unloaded")
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._decode, list(batch))

    def _decode(self, batch: list[BackendRequest]) -> list[Completion | Exception]:
        """Runs in a worker thread: one batched decoding loop over every row of the batch."""
        import torch

        # Grad mode is per thread, and worker threads vary: no autograd bookkeeping, ever.
        started = time.perf_counter()
        with torch.inference_mode():
            results = self._decode_batch(batch)
        log.debug(
            "decoded a batch",
            extra={
                "model": self.spec.name,
                "requests": len(batch),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return results

    def _decode_batch(self, batch: list[BackendRequest]) -> list[Completion | Exception]:
        import torch

        started = time.perf_counter()
        self._select_adapter(batch[0].adapter)
        prompts: list[list[int]] = []
        rooms: dict[int, int] = {}
        failures: dict[int, Exception] = {}
        for item, request in enumerate(batch):
            data = request.prompt.data
            ids = data if isinstance(data, list) else self._encode(request.prompt.messages)
            prompts.append(ids)
            try:
                rooms[item] = (
                    check_context(self.spec.name, len(ids), self._context)
                    if self._context
                    else 1 << 30
                )
            except InvalidArgumentError as error:
                failures[item] = error
        rows: list[_Row] = []
        for item, request in enumerate(batch):
            if item in failures:
                continue
            sampling = request.sampling
            for choice in range(sampling.n_or_default):
                generator = torch.Generator()
                seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
                generator.manual_seed((seed + choice) % 2**63)
                rows.append(
                    _Row(
                        item=item,
                        choice=choice,
                        prompt_ids=prompts[item],
                        max_new=max(1, min(sampling.max_tokens or 1, rooms[item])),
                        stop=sampling.stop,
                        stream=request.on_delta is not None,
                        generator=generator,
                    )
                )
        if not rows:
            return [failures[item] for item in range(len(batch))]
        sampler = _Sampler.for_rows([batch[row.item].sampling for row in rows], self._vocab_size())
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[index, width - len(row.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        device = self._device
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        sampler.see_prompts(input_ids, mask)
        cache = None
        steps = max(row.max_new for row in rows)
        for _ in range(steps):
            output = self._model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = output.past_key_values
            logits = output.logits[:, -1, :].float().cpu()
            tokens = sampler.sample(logits, [row.generator for row in rows])
            now = time.perf_counter()
            for row, token in zip(rows, tokens.tolist(), strict=True):
                if row.finish is None:
                    self._advance(row, token, now, batch[row.item])
            if all(row.finish is not None for row in rows):
                break
            sampler.record(tokens, [row.finish is None for row in rows])
            input_ids = tokens.view(-1, 1).to(device)
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], 1)
            positions = positions[:, -1:] + 1
        return self._completions(batch, rows, started, failures)

    def _advance(self, row: _Row, token: int, now: float, request: BackendRequest) -> None:
        if row.first_token_at is None:
            row.first_token_at = now
        # Text is followed token by token only when someone needs it before the end.
        incremental = bool(row.stop) or row.stream
        if token in self._eos_ids:
            row.finish = FinishReason.STOP
        else:
            row.tokens.append(token)
            if incremental:
                self._extend(row, self._text_delta(row))
            if row.finish is None and len(row.tokens) >= row.max_new:
                row.finish = FinishReason.LENGTH
        if row.finish is not None and not row.stop_hit:
            if incremental:
                self._extend(row, self._text_delta(row, final=True))
            else:
                row.text = self._decode_text(row.tokens)
        if row.stream and request.on_delta is not None:
            end = len(row.text) if row.finish is not None else _safe_end(row.text, row.stop)
            if end > row.emitted:
                request.on_delta(row.choice, row.text[row.emitted : end])
                row.emitted = end

    def _extend(self, row: _Row, delta: str) -> None:
        """Appends new text, cutting it at the first stop string that appears."""
        if not delta:
            return
        searched = max(0, len(row.text) - max((len(stop) for stop in row.stop), default=0))
        row.text += delta
        found = [p for p in (row.text.find(stop, searched) for stop in row.stop) if p >= 0]
        if found:
            row.text = row.text[: min(found)]
            row.finish, row.stop_hit = FinishReason.STOP, True

    def _text_delta(self, row: _Row, final: bool = False) -> str:
        """Incremental detokenization: new text since the last call, holding back a partial
        UTF-8 character until the tokens that complete it arrive."""
        before = self._decode_text(row.tokens[row.prefix_offset : row.read_offset])
        after = self._decode_text(row.tokens[row.prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            row.prefix_offset, row.read_offset = row.read_offset, len(row.tokens)
            return after[len(before) :]
        return ""

    def _decode_text(self, tokens: list[int]) -> str:
        text: str = self._tokenizer.decode(
            tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    def _completions(
        self,
        batch: list[BackendRequest],
        rows: list[_Row],
        started: float,
        failures: dict[int, Exception],
    ) -> list[Completion | Exception]:
        results: list[Completion | Exception] = []
        for item in range(len(batch)):
            if item in failures:
                results.append(failures[item])
                continue
            mine = [row for row in rows if row.item == item]
            firsts = [row.first_token_at for row in mine if row.first_token_at is not None]
            results.append(
                Completion(
                    choices=tuple(
                        Choice(
                            index=row.choice,
                            text=row.text,
                            finish_reason=row.finish or FinishReason.LENGTH,
                            completion_tokens=len(row.tokens),
                        )
                        for row in mine
                    ),
                    prompt_tokens=len(mine[0].prompt_ids),
                    time_to_first_token=(min(firsts) - started) if firsts else None,
                )
            )
        return results

    def _select_adapter(self, adapter: str) -> None:
        if not self._adapters:
            return
        if adapter:
            self._model.set_adapter(adapter)
            self._model.enable_adapters()
        else:
            self._model.disable_adapters()

    def _vocab_size(self) -> int:
        return int(self._model.get_output_embeddings().weight.shape[0])


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be streamed: all but a tail that could begin a stop string."""
    if not stops:
        return len(text)
    for hold in range(min(len(text), max(len(stop) for stop in stops) - 1), 0, -1):
        tail = text[-hold:]
        if any(stop.startswith(tail) for stop in stops):
            return len(text) - hold
    return len(text)


def _torch_dtype(name: str) -> Any:
    import torch

    if not name or name == "auto":
        return "auto" if name == "auto" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise InvalidArgumentError(f"{name!r} is not a torch dtype", where="spec.dtype")
    return dtype


class _Sampler:
    """Turns a batch of logits into next tokens, each row under its own sampling settings.

    Which processing steps run is decided once per batch, so a step costs few tensor operations
    (the tiny models this backend serves are bound by per-operation overhead).
    """

    # Random numbers are drawn for this many steps at a time, per row (bounded in memory).
    NOISE_FLOATS = 262_144

    def __init__(self, rows: int, vocab: int, settings: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.vocab = vocab
        self.temperature = settings["temperature"].clamp(min=1e-5).view(-1, 1)
        self.top_k = settings["top_k"]
        self.top_p = settings["top_p"].view(-1, 1)
        self.min_p = settings["min_p"].view(-1, 1)
        self.repetition = settings["repetition"].view(-1, 1)
        self.presence = settings["presence"].view(-1, 1)
        self.frequency = settings["frequency"].view(-1, 1)
        self.greedy = settings["temperature"] <= 0
        self.all_greedy = bool(self.greedy.all())
        self.use_repetition = bool((settings["repetition"] != 1).any())
        self.use_counts_penalty = bool(
            (settings["presence"] != 0).any() or (settings["frequency"] != 0).any()
        )
        self.use_top_k = bool((self.top_k > 0).any())
        self.use_min_p = bool((self.min_p > 0).any())
        self.use_top_p = bool((self.top_p < 1).any())
        self.counts = torch.zeros((rows, vocab), dtype=torch.float32)
        self.seen = torch.zeros((rows, vocab), dtype=torch.bool)
        # The chunk depends on the vocabulary only, so a row's random stream (and its answer)
        # is the same whatever it is batched with.
        self.chunk = max(1, min(32, self.NOISE_FLOATS // vocab))
        self.noise: Any = None
        self.step = 0

    @classmethod
    def for_rows(cls, samplings: list[Sampling], vocab: int) -> _Sampler:
        import torch

        def column(values: list[float]) -> Any:
            return torch.tensor(values, dtype=torch.float32)

        settings = {
            "temperature": column([s.temperature_or_default for s in samplings]),
            "top_k": torch.tensor([s.top_k or 0 for s in samplings], dtype=torch.long),
            "top_p": column([s.top_p_or_default for s in samplings]),
            "min_p": column([s.min_p or 0.0 for s in samplings]),
            "repetition": column([s.repetition_penalty or 1.0 for s in samplings]),
            "presence": column([s.presence_penalty or 0.0 for s in samplings]),
            "frequency": column([s.frequency_penalty or 0.0 for s in samplings]),
        }
        return cls(len(samplings), vocab, settings)

    def see_prompts(self, input_ids: Any, mask: Any) -> None:
        if self.use_repetition:
            ids = input_ids.cpu().clamp(max=self.vocab - 1)
            # Counted, not assigned: a padding id may also occur in a prompt.
            present = self.torch.zeros_like(self.counts).scatter_add_(1, ids, mask.cpu().float())
            self.seen = present > 0

    def record(self, tokens: Any, active: list[bool]) -> None:
        if self.use_repetition or self.use_counts_penalty:
            weights = self.torch.tensor(active, dtype=self.torch.float32).view(-1, 1)
            self.counts.scatter_add_(1, tokens.view(-1, 1), weights)

    def sample(self, logits: Any, generators: list[Any]) -> Any:
        torch = self.torch
        logits = logits[:, : self.vocab]
        if self.use_repetition:
            seen = self.seen | (self.counts > 0)
            penalty = self.repetition
            penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
            logits = torch.where(seen, penalized, logits)
        if self.use_counts_penalty:
            logits = logits - self.presence * (self.counts > 0) - self.frequency * self.counts
        greedy_tokens = logits.argmax(-1)
        if self.all_greedy:
            return greedy_tokens
        scaled = logits / self.temperature
        if self.use_top_k:
            ordered = scaled.sort(dim=-1, descending=True).values
            kth = ordered.gather(1, (self.top_k.clamp(1, self.vocab) - 1).view(-1, 1))
            drop = (self.top_k.view(-1, 1) > 0) & (scaled < kth)
            scaled = scaled.masked_fill(drop, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if self.use_min_p:
            floor = self.min_p * probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < floor, 0.0)
        if self.use_top_p:
            ordered, order = probs.sort(dim=-1, descending=True)
            before = ordered.cumsum(-1) - ordered  # mass ranked above each token
            ordered = ordered.masked_fill(before > self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter(1, order, ordered)
        # Exponential race: argmax(p / E), E ~ Exp(1) from the row's own generator, samples
        # token i with probability p_i, independent of the other rows in the batch.
        sampled = (probs / self._noise(generators)).argmax(-1)
        return torch.where(self.greedy, greedy_tokens, sampled)

    def _noise(self, generators: list[Any]) -> Any:
        torch = self.torch
        offset = self.step % self.chunk
        if offset == 0:
            self.noise = torch.stack(
                [
                    torch.ones((self.chunk, self.vocab))
                    if greedy
                    else torch.empty((self.chunk, self.vocab)).exponential_(generator=generator)
                    for greedy, generator in zip(self.greedy.tolist(), generators, strict=True)
                ]
            )
        self.step += 1
        return self.noise[:, offset]
