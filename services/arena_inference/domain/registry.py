"""The model registry: what models exist (declared in settings or registered at run time), which
backend serves each, and their lifecycle on this replica (load, unload, adapters, swap).

A replaced registration keeps serving its old checkpoint until the new one has loaded; then
requests go to the new one and the old is unloaded once its in-flight requests finish, so a new
checkpoint is swapped in without a restart and without failing a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from arena_core.errors import (
    AlreadyExistsError,
    ArenaError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from arena_inference.domain.backend import BackendFactory, ModelBackend
from arena_inference.domain.types import (
    AdapterSpec,
    BackendKind,
    ModelInfo,
    ModelRef,
    ModelSpec,
    ModelState,
)

log = logging.getLogger(__name__)


# Facts the registry reports, published by the service as ModelRegistered, ModelLoaded, ...
@dataclass(frozen=True)
class ModelRegistered:
    spec: ModelSpec
    replaced: bool


@dataclass(frozen=True)
class ModelUnregistered:
    name: str


@dataclass(frozen=True)
class ModelLoaded:
    model: ModelRef
    backend: BackendKind
    load_seconds: float


@dataclass(frozen=True)
class ModelLoadFailed:
    model: ModelRef
    backend: BackendKind
    reason: str
    message: str


@dataclass(frozen=True)
class ModelUnloaded:
    model: ModelRef


RegistryEvent = ModelRegistered | ModelUnregistered | ModelLoaded | ModelLoadFailed | ModelUnloaded
Listener = Callable[[RegistryEvent], Awaitable[None]]


@dataclass
class _Entry:
    spec: ModelSpec
    state: ModelState = ModelState.REGISTERED
    backend: ModelBackend | None = None
    loaded_at: datetime | None = None
    failure: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def validate_spec(spec: ModelSpec, where: str = "spec") -> None:
    """Every backend's required fields, checked before anything is registered."""
    if not spec.name.strip():
        raise InvalidArgumentError("model name is empty", where=f"{where}.name")
    if any(char.isspace() for char in spec.name):
        raise InvalidArgumentError(
            f"model name {spec.name!r} contains whitespace", where=f"{where}.name"
        )
    if spec.backend in (BackendKind.TRANSFORMERS, BackendKind.VLLM) and not spec.uri:
        raise InvalidArgumentError(
            f"a {spec.backend.value} model needs the weights location in uri", where=f"{where}.uri"
        )
    if spec.backend == BackendKind.OPENAI:
        if not spec.endpoint:
            raise InvalidArgumentError(
                "an OpenAI-compatible model needs the endpoint's base URL",
                where=f"{where}.endpoint",
            )
        if not spec.endpoint.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"endpoint {spec.endpoint!r} is not an http(s) URL", where=f"{where}.endpoint"
            )
    if spec.backend == BackendKind.REPLAY and not spec.replay_uris:
        raise InvalidArgumentError(
            "a replay model needs at least one recorded-answer file", where=f"{where}.replay_uris"
        )
    if spec.tensor_parallel_size is not None and spec.tensor_parallel_size < 1:
        raise InvalidArgumentError(
            f"must be at least 1 (got {spec.tensor_parallel_size})",
            where=f"{where}.tensor_parallel_size",
        )
    if spec.max_model_len is not None and spec.max_model_len < 1:
        raise InvalidArgumentError(
            f"must be positive (got {spec.max_model_len})", where=f"{where}.max_model_len"
        )
    names = [adapter.name for adapter in spec.adapters]
    for index, adapter in enumerate(spec.adapters):
        if not adapter.name or not adapter.uri:
            raise InvalidArgumentError(
                "an adapter needs a name and a uri", where=f"{where}.adapters[{index}]"
            )
        if names.count(adapter.name) > 1:
            raise InvalidArgumentError(
                f"adapter {adapter.name!r} is listed twice", where=f"{where}.adapters[{index}]"
            )


class ModelRegistry:
    def __init__(
        self,
        factory: BackendFactory,
        *,
        instance: str = "",
        drain_timeout_seconds: float = 300.0,
    ) -> None:
        self._factory = factory
        self._instance = instance
        self._drain_timeout = drain_timeout_seconds
        self._entries: dict[str, _Entry] = {}
        self._listeners: list[Listener] = []
        self._leases: dict[int, int] = {}  # id(backend) -> requests using it
        self._lease_change = asyncio.Condition()
        self._retired: set[asyncio.Task[None]] = set()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- queries -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def info(self, name: str) -> ModelInfo:
        return self._info(self._entry(name))

    def list(self, backend: BackendKind | None = None) -> list[ModelInfo]:
        return [
            self._info(self._entries[name])
            for name in sorted(self._entries)
            if backend is None or self._entries[name].spec.backend == backend
        ]

    def spec(self, name: str) -> ModelSpec:
        return self._entry(name).spec

    # --- registration --------------------------------------------------------------------------

    async def register(
        self, spec: ModelSpec, *, load: bool = False, replace: bool = False
    ) -> ModelInfo:
        validate_spec(spec)
        entry = self._entries.get(spec.name)
        if entry is None:
            entry = self._entries[spec.name] = _Entry(spec)
            await self._emit(ModelRegistered(spec, replaced=False))
        elif entry.spec == spec:
            pass  # the same registration again: nothing changes
        elif not replace:
            raise AlreadyExistsError(
                f"model {spec.name!r} is already registered with a different spec "
                "(set replace to swap in the new one)"
            )
        else:
            await self._replace(entry, spec)
            await self._emit(ModelRegistered(spec, replaced=True))
        if load:
            await self.load(spec.name)
        return self._info(entry)

    async def _replace(self, entry: _Entry, spec: ModelSpec) -> None:
        async with entry.lock:
            old = entry.backend
            if old is None or entry.state != ModelState.READY:
                entry.spec, entry.state, entry.failure = spec, ModelState.REGISTERED, None
                return
            # The old checkpoint keeps serving while the new one loads.
            new = await self._start_backend(spec)
            entry.spec, entry.backend = spec, new
            entry.loaded_at, entry.failure = datetime.now(UTC), None
            self._retire(old)

    async def unregister(self, name: str) -> None:
        entry = self._entry(name)
        await self.unload(name)
        if self._entries.get(name) is entry:
            del self._entries[name]
        await self._emit(ModelUnregistered(name))

    # --- lifecycle -----------------------------------------------------------------------------

    async def load(self, name: str) -> ModelInfo:
        entry = self._entry(name)
        async with entry.lock:
            if entry.state == ModelState.READY:
                return self._info(entry)
            entry.state, entry.failure = ModelState.LOADING, None
            try:
                entry.backend = await self._start_backend(entry.spec)
            except ArenaError as error:
                entry.state, entry.failure = ModelState.FAILED, str(error)
                raise
            entry.state, entry.loaded_at = ModelState.READY, datetime.now(UTC)
        return self._info(entry)

    async def _start_backend(self, spec: ModelSpec) -> ModelBackend:
        """Creates and loads a backend (with the spec's adapters); wraps unexpected failures."""
        started = time.perf_counter()
        ref = ModelRef(spec.name, spec.resolved_revision)
        backend: ModelBackend | None = None
        try:
            backend = self._factory(spec)
            await backend.load()
            for adapter in spec.adapters:
                await backend.load_adapter(adapter)
        except Exception as error:
            if backend is not None:
                with contextlib.suppress(Exception):
                    await backend.unload()
            reason = "LOAD_FAILED" if not isinstance(error, ArenaError) else type(error).__name__
            message = f"loading model {spec.name!r} ({spec.backend.value}) failed: {error}"
            log.error(message)
            await self._emit(ModelLoadFailed(ref, spec.backend, reason, message))
            if isinstance(error, ArenaError):
                raise
            raise FailedPreconditionError(message) from error
        await self._emit(ModelLoaded(ref, spec.backend, time.perf_counter() - started))
        return backend

    async def unload(self, name: str) -> ModelInfo:
        entry = self._entry(name)
        async with entry.lock:
            backend = entry.backend
            if backend is None:
                entry.state = ModelState.REGISTERED
                return self._info(entry)
            entry.state = ModelState.UNLOADING
            entry.backend = None
            await self._drain_and_unload(backend, entry.spec)
            entry.state, entry.loaded_at = ModelState.REGISTERED, None
        return self._info(entry)

    async def load_adapter(self, name: str, adapter: AdapterSpec) -> ModelInfo:
        if not adapter.name or not adapter.uri:
            raise InvalidArgumentError("an adapter needs a name and a uri", where="adapter")
        await self.load(name)
        entry = self._entry(name)
        async with entry.lock:
            backend = self._ready_backend(entry)
            if adapter.name in backend.loaded_adapters:
                raise AlreadyExistsError(
                    f"adapter {adapter.name!r} is already attached to model {name!r}"
                )
            await backend.load_adapter(adapter)
        await self._emit(
            ModelLoaded(
                ModelRef(name, entry.spec.resolved_revision, adapter.name), entry.spec.backend, 0.0
            )
        )
        return self._info(entry)

    async def unload_adapter(self, name: str, adapter: str) -> ModelInfo:
        entry = self._entry(name)
        async with entry.lock:
            backend = entry.backend
            if backend is None or adapter not in backend.loaded_adapters:
                raise NotFoundError(f"adapter {adapter!r} is not attached to model {name!r}")
            await backend.unload_adapter(adapter)
        await self._emit(ModelUnloaded(ModelRef(name, entry.spec.resolved_revision, adapter)))
        return self._info(entry)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[tuple[ModelSpec, ModelBackend]]:
        """The model's spec and loaded backend (loading it on first use), kept loaded while held."""
        entry = self._entry(name)
        if entry.state != ModelState.READY:
            await self.load(name)
        spec, backend = entry.spec, self._ready_backend(entry)
        key = id(backend)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield spec, backend
        finally:
            async with self._lease_change:
                self._leases[key] -= 1
                if not self._leases[key]:
                    del self._leases[key]
                self._lease_change.notify_all()

    async def close(self) -> None:
        for name in list(self._entries):
            with contextlib.suppress(Exception):
                await self.unload(name)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    # --- internals -----------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise NotFoundError(f"model {name!r} is not registered (registered: {known})")
        return entry

    def _ready_backend(self, entry: _Entry) -> ModelBackend:
        if entry.backend is None or entry.state != ModelState.READY:
            raise FailedPreconditionError(
                f"model {entry.spec.name!r} is {entry.state.value}, not ready"
                + (f": {entry.failure}" if entry.failure else "")
            )
        return entry.backend

    def _retire(self, backend: ModelBackend) -> None:
        task = asyncio.create_task(self._drain_and_unload(backend, backend.spec))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _drain_and_unload(self, backend: ModelBackend, spec: ModelSpec) -> None:
        key = id(backend)
        async with self._lease_change:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._lease_change.wait_for(lambda: not self._leases.get(key)),
                    self._drain_timeout,
                )
        try:
            await backend.unload()
        except Exception:
            log.exception("unloading model %r failed", spec.name)
        await self._emit(ModelUnloaded(ModelRef(spec.name, spec.resolved_revision)))

    def _info(self, entry: _Entry) -> ModelInfo:
        backend = entry.backend
        return ModelInfo(
            spec=entry.spec,
            state=entry.state,
            loaded_adapters=backend.loaded_adapters if backend else (),
            context_length=(backend.context_length if backend else None)
            or entry.spec.max_model_len,
            loaded_at=entry.loaded_at,
            failure=entry.failure,
            instance=self._instance,
        )

    async def _emit(self, event: RegistryEvent) -> None:
        for listener in self._listeners:
            try:
                await listener(event)
            except Exception:  # reporting must never break serving
                log.exception("registry listener failed on %s", type(event).__name__)
