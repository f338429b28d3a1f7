"""Runtime model registrations kept in JetStream KV, so they survive restarts and every replica
follows them: a RegisterModel, UnregisterModel, LoadModel or UnloadModel on one replica is
applied by all (each one watches the bucket and brings its own registry in line).

Each key holds a `RegisterModelRequest`: the spec and whether the model should be loaded.
Declared models (settings) are registered first at start-up; a stored runtime registration of
the same name replaces the declaration.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import re

from nats.js.kv import KeyValue

from arena.inference.v1 import inference_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_core.errors import ArenaError, NotFoundError
from arena_inference.convert import spec_from_proto, spec_to_proto
from arena_inference.domain.registry import ModelRegistry
from arena_inference.domain.types import ModelSpec, ModelState

log = logging.getLogger(__name__)

_PLAIN_KEY = re.compile(r"[-_=.a-zA-Z0-9]+")


def key_of(name: str) -> str:
    """A KV key for a model name (names outside the KV alphabet are hex-encoded)."""
    if _PLAIN_KEY.fullmatch(name) and not name.startswith("x-"):
        return name
    return "x-" + binascii.hexlify(name.encode()).decode()


def name_of(key: str) -> str:
    return binascii.unhexlify(key[2:]).decode() if key.startswith("x-") else key


class RegistryStore:
    def __init__(self, kv: KeyValue, registry: ModelRegistry) -> None:
        self._kv = kv
        self._store = ProtoStore(kv, pb.RegisterModelRequest)
        self._registry = registry

    async def save(self, spec: ModelSpec, *, load: bool) -> None:
        await self._store.put(
            key_of(spec.name), pb.RegisterModelRequest(spec=spec_to_proto(spec), load=load)
        )

    async def delete(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self._kv.delete(key_of(name))

    async def restore(self) -> set[str]:
        """Applies every stored registration (at start-up, before serving); returns their names,
        whose stored desired state (loaded or not) wins over load-on-start."""
        names: set[str] = set()
        for key in await self._store.keys():
            found = await self._store.get(key)
            if found is not None:
                await self._apply(name_of(key), found[0])
                names.add(name_of(key))
        return names

    async def follow(self) -> None:
        """Background job: applies registrations made on other replicas as they happen (the
        current values come first; applying them again changes nothing)."""
        watcher = await self._kv.watchall(include_history=False)
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values; changes follow
                    continue
                name = name_of(entry.key)
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    with contextlib.suppress(NotFoundError):
                        await self._registry.unregister(name)
                    continue
                await self._apply(name, pb.RegisterModelRequest.FromString(entry.value))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _apply(self, name: str, stored: pb.RegisterModelRequest) -> None:
        try:
            spec = spec_from_proto(stored.spec)
            await self._registry.register(spec, replace=True)
            state = self._registry.info(name).state
            if stored.load and state != ModelState.READY:
                await self._registry.load(name)
            elif not stored.load and state == ModelState.READY:
                await self._registry.unload(name)
        except ArenaError as error:  # one bad registration must not stop the others
            log.error("cannot apply the stored registration of model %r: %s", name, error)
