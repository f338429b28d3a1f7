"""The decoding side of the transformers backend: the model, the tokenizer and the batch loop.

:class:`Decoder` is plain synchronous code. The backend runs it in a worker process of its own
(:func:`serve`, the default) or in one thread of the service. A process is the default because
the decoding loop of a small model is mostly Python, and in a thread it competes for the GIL with
the service's event loop (gRPC, NATS, the answer cache): every hand-over of the GIL stalls the
loop that decodes, which cost the service a fifth of its throughput under load. In a process of
its own the loop keeps a core to itself and the event loop works beside it.

Batches are decoded together with a KV cache and left padding. Sampling happens per row with the
row's own random generator, so a seeded request gives the same answer whatever it was batched
with. Every sampling parameter of the contract is honoured: temperature (0 = greedy), top_p,
top_k, min_p, seed, stop strings, n, presence / frequency / repetition penalties, max_tokens.
"""

from __future__ import annotations

import dataclasses
import gc
import pickle
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_core.errors import ArenaError, FailedPreconditionError, InvalidArgumentError
from arena_inference.domain.requests import check_context
from arena_inference.domain.types import ChatMessage, Choice, Completion, FinishReason, Sampling

# Used when a tokenizer has no chat template (base models): plain "role: content" turns.
_FALLBACK_ROLE_PREFIX = {"system": "System", "user": "User", "assistant": "Assistant"}

# (item index in the batch, choice index, new text): streamed text, called as it is produced.
Emit = Callable[[int, int, str], None]


@dataclass(frozen=True)
class DecoderConfig:
    """What the decoder needs to load a model; picklable, so it can travel to a worker."""

    name: str
    location: str  # a local folder or a hub id
    revision: str = ""
    dtype: str = ""
    device: str = "cpu"
    trust_remote_code: bool = False
    max_model_len: int | None = None


@dataclass(frozen=True)
class WorkItem:
    """One request of a batch, as the decoder sees it (no callbacks: it may cross processes)."""

    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    token_ids: list[int] | None = None  # when the caller has already tokenized the prompt
    stream: bool = False


@dataclass(frozen=True)
class BatchReport:
    results: list[Completion | Exception]
    seconds: float
    # Less than seconds when the decoding thread waited (for the GIL, for a CPU).
    cpu_seconds: float
    # How long the worker process sat idle between answering one batch and receiving this one.
    idle_seconds: float = 0.0


def load_tokenizer(config: DecoderConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(config.location, **_load_kwargs(config))


def encode_messages(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """The prompt's token ids: the chat template (or plain turns) applied, then tokenized."""
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


def _load_kwargs(config: DecoderConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
    if config.revision and not Path(config.location).exists():
        kwargs["revision"] = config.revision
    return kwargs


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


class Decoder:
    """One loaded model and its tokenizer; not thread-safe (one thread calls it at a time)."""

    def __init__(self, config: DecoderConfig) -> None:
        from transformers import AutoModelForCausalLM

        self.config = config
        self._tokenizer: Any = None
        self._model: Any = None
        try:
            self._tokenizer = load_tokenizer(config)
            self._model = AutoModelForCausalLM.from_pretrained(
                config.location, dtype=_torch_dtype(config.dtype), **_load_kwargs(config)
            )
        except (OSError, ValueError) as error:  # what transformers raises for a bad folder
            raise FailedPreconditionError(
                f"cannot load weights for model {config.name!r} from {config.location!r}: {error}"
            ) from None
        self._model.to(config.device).eval()
        model_config = self._model.config
        self.context_length: int | None = config.max_model_len or getattr(
            model_config, "max_position_embeddings", None
        )
        eos = self._model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        if self._tokenizer.eos_token_id is not None:
            eos_ids.append(self._tokenizer.eos_token_id)
        self._eos_ids = {int(token) for token in eos_ids if token is not None}
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(self._eos_ids, default=0))
        self._adapters: set[str] = set()

    # --- adapters ------------------------------------------------------------------------------

    def load_adapter(self, name: str, location: str) -> None:
        try:
            self._model.load_adapter(location, adapter_name=name)
        except (OSError, ValueError) as error:
            raise FailedPreconditionError(
                f"cannot attach adapter {name!r} from {location!r}: {error}"
            ) from None
        self._adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        self._model.delete_adapter(name)
        self._adapters.discard(name)

    # --- decoding ------------------------------------------------------------------------------

    def encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return encode_messages(self._tokenizer, messages)

    def decode(self, items: list[WorkItem], adapter: str, emit: Emit) -> BatchReport:
        """One batched decoding loop over every row of the batch; one result per item."""
        import torch

        started, cpu = time.perf_counter(), time.thread_time()
        # Grad mode is per thread: no autograd bookkeeping, whichever thread this is.
        with torch.inference_mode():
            results = self._decode_batch(items, adapter, emit)
        return BatchReport(results, time.perf_counter() - started, time.thread_time() - cpu)

    def _decode_batch(
        self, batch: list[WorkItem], adapter: str, emit: Emit
    ) -> list[Completion | Exception]:
        import torch

        started = time.perf_counter()
        self._select_adapter(adapter)
        prompts: list[list[int]] = []
        rooms: dict[int, int] = {}
        failures: dict[int, Exception] = {}
        for item, request in enumerate(batch):
            ids = (
                request.token_ids
                if request.token_ids is not None
                else self.encode(request.messages)
            )
            prompts.append(ids)
            try:
                rooms[item] = (
                    check_context(self.config.name, len(ids), self.context_length)
                    if self.context_length
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
                        stream=request.stream,
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
        device = self.config.device
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
                    self._advance(row, token, now, emit)
            if all(row.finish is not None for row in rows):
                break
            sampler.record(tokens, [row.finish is None for row in rows])
            input_ids = tokens.view(-1, 1).to(device)
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], 1)
            positions = positions[:, -1:] + 1
        return _completions(len(batch), rows, started, failures)

    def _advance(self, row: _Row, token: int, now: float, emit: Emit) -> None:
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
        if row.stream:
            end = len(row.text) if row.finish is not None else _safe_end(row.text, row.stop)
            if end > row.emitted:
                emit(row.item, row.choice, row.text[row.emitted : end])
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


def _completions(
    count: int, rows: list[_Row], started: float, failures: dict[int, Exception]
) -> list[Completion | Exception]:
    results: list[Completion | Exception] = []
    for item in range(count):
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


# --- the worker process ---------------------------------------------------------------------------
#
# Commands queue in the pipe and run one at a time, in order: ("decode", call, items, adapter),
# ("load_adapter", call, name, location), ("unload_adapter", call, name), ("stop", call). Each is
# answered ("ok", call, value) or ("error", call, exception); a decode also sends
# ("delta", call, item, choice, text) for streamed text before its answer. The first answer,
# ("ok", 0, context_length) or ("error", 0, exception), says whether the model loaded.


def serve(connection: Any, config: DecoderConfig) -> None:
    """The worker process's main: loads the model, then answers commands until told to stop or
    until the backend's end of the pipe closes (the service exited)."""
    # Ctrl-C reaches the whole process group; the service decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        decoder = Decoder(config)
    except Exception as error:  # noqa: BLE001 - reported to the backend, which raises it
        connection.send(("error", 0, portable(error)))
        return
    # Torch, transformers and the model live as long as this process: keep them out of the
    # collector's full passes, which would otherwise pause decoding to walk them all.
    gc.freeze()
    connection.send(("ok", 0, decoder.context_length))
    answered = time.perf_counter()
    while True:
        try:
            kind, call, *arguments = connection.recv()
        except (EOFError, OSError):
            return
        idle = time.perf_counter() - answered
        if kind == "stop":
            return
        try:
            value = _run_command(decoder, connection, kind, call, arguments)
        except Exception as error:  # noqa: BLE001 - the backend raises it to the caller
            connection.send(("error", call, portable(error)))
        else:
            if isinstance(value, BatchReport):
                value = dataclasses.replace(value, idle_seconds=idle)
            connection.send(("ok", call, value))
        answered = time.perf_counter()


def _run_command(
    decoder: Decoder, connection: Any, kind: str, call: int, arguments: list[Any]
) -> Any:
    if kind == "decode":
        items, adapter = arguments

        def emit(item: int, choice: int, text: str) -> None:
            connection.send(("delta", call, item, choice, text))

        report = decoder.decode(items, adapter, emit)
        return BatchReport(
            [portable(r) if isinstance(r, Exception) else r for r in report.results],
            report.seconds,
            report.cpu_seconds,
        )
    if kind == "load_adapter":
        decoder.load_adapter(*arguments)
        return None
    if kind == "unload_adapter":
        decoder.unload_adapter(*arguments)
        return None
    raise ValueError(f"unknown command {kind!r}")


def portable(error: Exception) -> Exception:
    """An exception that survives pickling: the project's errors as they are, others as a
    RuntimeError naming the original type (a torch or CUDA error class may not unpickle)."""
    if isinstance(error, ArenaError):
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - fall through to the generic form
            pass
        else:
            return error
    return RuntimeError(f"{type(error).__name__}: {error}")
