"""Hugging Face transformers on the CPU (or one GPU), for development and tests.

Concurrent requests are batched dynamically (a short collection window) and each batch is decoded
by :class:`~arena_inference.backends.transformers_worker.Decoder` (KV cache, left padding, every
sampling parameter of the contract, per-row seeds). The decoder runs in a worker process of its
own by default, so its Python-bound loop never waits for the GIL behind the service's event loop;
the worker is started from a fork server that has torch and transformers imported already, so a
model loads in about the time its weights take. A full batch is handed over while the previous
one decodes, so the worker goes from one batch to the next without waiting for the event loop.
A worker that dies (killed for memory, say) fails the batches it held with UNAVAILABLE and is
started again, adapters and all, for the next one.

Backend options (``ModelSpec.backend_options``): ``max_batch_size``, ``batch_window_ms``,
``batch_max_wait_ms``, ``device`` ("cpu", "cuda", "cuda:1"), ``trust_remote_code`` (default
false), ``worker`` ("process", the default, or "thread": decode in a thread of the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from arena_core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from arena_inference.backends import transformers_worker as decoding
from arena_inference.domain.backend import BackendRequest, DeltaSink, ModelBackend, Prompt
from arena_inference.domain.batching import DynamicBatcher
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ChatMessage,
    Completion,
    ModelSpec,
    weights_location,
)

log = logging.getLogger(__name__)

WorkerKind = Literal["process", "thread"]
WORKER_KINDS: tuple[WorkerKind, ...] = ("process", "thread")


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
        worker: WorkerKind = "process",
    ) -> None:
        super().__init__(spec)
        options = dict(spec.backend_options)
        self._max_batch = int(options.get("max_batch_size", max_batch_size))
        self._window = float(options.get("batch_window_ms", batch_window_seconds * 1000)) / 1000
        self._max_wait = (
            float(options.get("batch_max_wait_ms", batch_max_wait_seconds * 1000)) / 1000
        )
        self._worker_kind = str(options.get("worker", worker))
        if self._worker_kind not in WORKER_KINDS:
            raise InvalidArgumentError(
                f"worker {self._worker_kind!r} is not one of {', '.join(WORKER_KINDS)}",
                where="spec.backend_options.worker",
            )
        location = weights_location(spec.uri)
        local = Path(location).expanduser()
        self._config = decoding.DecoderConfig(
            name=spec.name,
            location=str(local) if local.exists() else location,
            revision=spec.revision,
            dtype=spec.dtype,
            device=str(options.get("device", device)),
            trust_remote_code=bool(options.get("trust_remote_code", False)),
            max_model_len=spec.max_model_len,
        )
        self._worker: _ThreadWorker | _ProcessWorker | None = None
        self._context: int | None = None
        self._tokenizer: Any = None  # the service side's own, for encode() (process workers)
        self._adapters: dict[str, AdapterSpec] = {}
        self._batcher: DynamicBatcher[BackendRequest, Completion] | None = None
        # Held while the worker is replaced (a restart, an unload); commands themselves queue in
        # the worker, which runs them in order.
        self._worker_lock = asyncio.Lock()

    # --- lifecycle -----------------------------------------------------------------------------

    async def load(self) -> None:
        self._worker = await self._start_worker()
        self._batcher = DynamicBatcher(
            self._run_batch,
            max_batch_size=self._max_batch,
            window_seconds=self._window,
            max_wait_seconds=self._max_wait,
            key=lambda request: request.adapter,
            # A full batch waits in the worker's queue while the previous one decodes, so the
            # worker never idles until the event loop gets round to handing it the next one.
            max_in_flight=2,
        )

    async def _start_worker(self) -> _ThreadWorker | _ProcessWorker:
        started = _ThreadWorker(self._config) if self._worker_kind == "thread" else None
        instance = started or _ProcessWorker(self._config)
        self._context = await instance.start()
        return instance

    async def unload(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        async with self._worker_lock:
            if self._worker is not None:
                await self._worker.stop()
            self._worker = None
            self._tokenizer = None
            await asyncio.to_thread(gc.collect)

    @property
    def context_length(self) -> int | None:
        return self._context

    @property
    def queued(self) -> int:
        return self._batcher.queued if self._batcher else 0

    @property
    def worker_kind(self) -> str:
        """Where batches are decoded: "process" (a worker process) or "thread"."""
        return self._worker_kind

    @property
    def worker_pid(self) -> int | None:
        """The decoding process's id (None when decoding in a thread or not loaded)."""
        return self._worker.pid if isinstance(self._worker, _ProcessWorker) else None

    # --- adapters ------------------------------------------------------------------------------

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self._adapters)

    async def load_adapter(self, adapter: AdapterSpec) -> None:
        # Queued behind the batches handed over before it, like every command.
        await (await self._live_worker()).call(
            "load_adapter", adapter.name, weights_location(adapter.uri)
        )
        self._adapters[adapter.name] = adapter

    async def unload_adapter(self, name: str) -> None:
        await (await self._live_worker()).call("unload_adapter", name)
        del self._adapters[name]

    # --- generation ----------------------------------------------------------------------------

    def prepare(self, messages: Sequence[ChatMessage]) -> Prompt:
        # Deferred: the chat template and tokenizer run where the batch is decoded, batch by
        # batch, off the event loop; the context is checked there too.
        return Prompt(tuple(messages))

    def encode(self, messages: Sequence[ChatMessage]) -> Prompt:
        """The prompt with its token ids and count (what the decoder computes)."""
        if self._worker is None:
            raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
        if self._tokenizer is None:
            self._tokenizer = decoding.load_tokenizer(self._config)
        ids = decoding.encode_messages(self._tokenizer, messages)
        return Prompt(tuple(messages), len(ids), ids)

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
        current = await self._live_worker()
        items = [
            decoding.WorkItem(
                request.prompt.messages,
                request.sampling,
                request.prompt.data if isinstance(request.prompt.data, list) else None,
                request.on_delta is not None,
            )
            for request in batch
        ]
        sinks = [request.on_delta for request in batch]
        report: decoding.BatchReport = await current.call(
            "decode", items, batch[0].adapter, sinks=sinks
        )
        log.debug(
            "decoded a batch",
            extra={
                "model": self.spec.name,
                "requests": len(batch),
                "seconds": round(report.seconds, 4),
                "cpu_seconds": round(report.cpu_seconds, 4),
                "worker_idle_seconds": round(report.idle_seconds, 4),
            },
        )
        return report.results

    async def _restart_worker(
        self, dead: _ThreadWorker | _ProcessWorker
    ) -> _ThreadWorker | _ProcessWorker:
        log.warning("the decoding process of model %r is gone; starting a new one", self.spec.name)
        await dead.stop()
        fresh = await self._start_worker()
        for adapter in self._adapters.values():
            await fresh.call("load_adapter", adapter.name, weights_location(adapter.uri))
        return fresh

    async def _live_worker(self) -> _ThreadWorker | _ProcessWorker:
        """The worker, started again first if it died."""
        async with self._worker_lock:
            if self._worker is None:
                raise FailedPreconditionError(f"model {self.spec.name!r} is not loaded")
            if not self._worker.alive:
                self._worker = await self._restart_worker(self._worker)
            return self._worker


class _ThreadWorker:
    """The decoder in one thread of this process: torch's per-thread state stays warm."""

    def __init__(self, config: decoding.DecoderConfig) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{config.name}")
        self._decoder: decoding.Decoder | None = None
        self.alive = True
        self.pid = None

    async def start(self) -> int | None:
        loop = asyncio.get_running_loop()
        self._decoder = await loop.run_in_executor(self._executor, decoding.Decoder, self._config)
        return self._decoder.context_length

    async def call(self, kind: str, *arguments: Any, sinks: Sequence[DeltaSink | None] = ()) -> Any:
        decoder = self._decoder
        assert decoder is not None
        loop = asyncio.get_running_loop()
        if kind == "decode":

            def emit(item: int, choice: int, text: str) -> None:
                sink = sinks[item]
                if sink is not None:
                    sink(choice, text)

            items, adapter = arguments
            return await loop.run_in_executor(self._executor, decoder.decode, items, adapter, emit)
        method = decoder.load_adapter if kind == "load_adapter" else decoder.unload_adapter
        return await loop.run_in_executor(self._executor, method, *arguments)

    async def stop(self) -> None:
        self._decoder = None
        self._executor.shutdown(wait=False)


class _ProcessWorker:
    """The decoder in a worker process. Commands go over a pipe and queue there; the worker runs
    them in order and answers each by its call number.

    A reader thread takes every answer off the pipe: streamed text goes straight to the request's
    sink (sinks may be called from any thread), results are handed to the event loop.
    """

    def __init__(self, config: decoding.DecoderConfig) -> None:
        self._config = config
        self._numbers = itertools.count(1)
        # Commands awaiting their answer: call number -> (answer, sinks of a decode's items).
        self._calls: dict[int, tuple[asyncio.Future[Any], Sequence[DeltaSink | None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: Any = None
        self._connection: Any = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.alive = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> int | None:
        self._loop = asyncio.get_running_loop()
        context = _process_context()
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=decoding.serve,
            args=(theirs, self._config),
            name=f"decode-{self._config.name}",
            daemon=True,
        )
        loaded: asyncio.Future[Any] = self._loop.create_future()
        self._calls[0] = (loaded, ())  # the worker's first answer says whether the model loaded
        try:
            # Blocking: the first start launches the fork server (torch, transformers imports).
            await asyncio.to_thread(self._process.start)
        except BaseException:
            self._calls.clear()
            ours.close()
            raise
        finally:
            theirs.close()
        self._connection = ours
        self.alive = True
        self._reader = threading.Thread(
            target=self._read, name=f"decode-{self._config.name}-answers", daemon=True
        )
        self._reader.start()
        try:
            context_length: int | None = await loaded
        except BaseException:
            await self.stop()
            raise
        finally:
            self._calls.pop(0, None)
        return context_length

    async def call(self, kind: str, *arguments: Any, sinks: Sequence[DeltaSink | None] = ()) -> Any:
        assert self._loop is not None
        if not self.alive:
            raise self._gone()
        number = next(self._numbers)
        answer: asyncio.Future[Any] = self._loop.create_future()
        self._calls[number] = (answer, sinks)
        try:
            self._connection.send((kind, number, *arguments))
            return await answer
        except (OSError, ValueError):  # the pipe broke under the send
            raise self._gone() from None
        finally:
            self._calls.pop(number, None)

    async def stop(self) -> None:
        """Asks the worker to exit (killing it if it does not within 30 s) and waits for it.
        The reader thread alone reaps the process: it sees the pipe close, then joins it."""
        self._stopping = True
        process, connection, reader = self._process, self._connection, self._reader
        if process is None or connection is None or reader is None:
            return
        if self.alive:
            with contextlib.suppress(OSError, ValueError):
                connection.send(("stop", 0))
        await asyncio.to_thread(reader.join, 30)
        if reader.is_alive():
            log.warning("the decoding process of model %r did not stop; killing it", self._name)
            process.kill()
            await asyncio.to_thread(reader.join, 10)
        connection.close()
        self.alive = False

    @property
    def _name(self) -> str:
        return self._config.name

    def _read(self) -> None:
        """The reader thread: every answer of the worker, until its end of the pipe closes."""
        while True:
            try:
                kind, number, *rest = self._connection.recv()
            except (EOFError, OSError):
                break
            if kind == "delta":
                item, choice, text = rest
                entry = self._calls.get(number)
                if entry is not None and item < len(entry[1]):
                    sink = entry[1][item]
                    if sink is not None:
                        sink(choice, text)
                continue
            self._hand_over(self._settle, number, kind == "ok", rest[0])
        self._process.join(10)  # the pipe closes as the process exits
        self._hand_over(self._lost)

    def _hand_over(self, callback: Any, *arguments: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody waits
            self._loop.call_soon_threadsafe(callback, *arguments)

    def _settle(self, number: int, ok: bool, value: Any) -> None:
        entry = self._calls.get(number)
        if entry is None or entry[0].done():
            return  # the answer to a command whose caller gave up
        if ok:
            entry[0].set_result(value)
        else:
            entry[0].set_exception(value)

    def _lost(self) -> None:
        self.alive = False
        if not self._stopping:
            log.error(
                "the decoding process of model %r exited (code %s)",
                self._name,
                self._process.exitcode,
            )
        for answer, _ in list(self._calls.values()):
            if not answer.done():
                answer.set_exception(self._gone())

    def _gone(self) -> UnavailableError:
        code = self._process.exitcode if self._process is not None else None
        return UnavailableError(
            f"the decoding process of model {self._name!r} exited (code {code}); "
            "it is started again for the next batch"
        )


_context_lock = threading.Lock()
_PRELOAD = (
    "torch",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
)


def _process_context() -> Any:
    """Worker processes come from a fork server with torch and transformers imported (each
    worker starts in a moment, and none inherits this process's threads, sockets or CUDA
    state); where there is no fork server, they are spawned."""
    with _context_lock:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("spawn")
        context = multiprocessing.get_context("forkserver")
        # '__main__' too: then a worker need not import the main script again. The auto
        # classes are what takes seconds to import (transformers' top level is lazy).
        context.set_forkserver_preload(["__main__", decoding.__name__, *_PRELOAD])
        return context
