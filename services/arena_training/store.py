"""Run state and the checkpoint registry in JetStream KV, so a restart loses nothing.

Bucket ``training-runs``: ``run.<run_id>`` holds the `TrainingRun` (spec, state, progress,
attempt, job name); ``origin.<run_id>`` the metadata of the request that started it (for the
causation and correlation ids of every event the run publishes, however late). Bucket
``training-checkpoints``: ``<checkpoint_id>`` holds each registered `Checkpoint`. Bucket
``training-run-leases`` (entries expire) says which replica drives which run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as NatsNotFoundError
from nats.js.kv import KeyValue

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_core.bus.topology import ensure_key_value
from arena_core.settings import NatsSettings

RUNS_BUCKET = "training-runs"
CHECKPOINTS_BUCKET = "training-checkpoints"
LEASES_BUCKET = "training-run-leases"

TERMINAL_STATES = frozenset(
    {
        pb.TRAINING_RUN_STATE_SUCCEEDED,
        pb.TRAINING_RUN_STATE_FAILED,
        pb.TRAINING_RUN_STATE_CANCELLED,
        pb.TRAINING_RUN_STATE_REJECTED,
    }
)


def is_terminal(state: pb.TrainingRunState.ValueType) -> bool:
    return state in TERMINAL_STATES


class RunRepository:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._runs = ProtoStore(kv, pb.TrainingRun)
        self._origins = ProtoStore(kv, common_pb2.EventMetadata)

    async def get(self, run_id: str) -> pb.TrainingRun | None:
        found = await self._runs.get(f"run.{run_id}")
        return found[0] if found else None

    async def create(
        self, run: pb.TrainingRun, origin: common_pb2.EventMetadata | None = None
    ) -> bool:
        """Stores a new run; False when a run with its id exists (the request is a repeat)."""
        if origin is not None:
            # Written first: a run never exists without its origin.
            await self._origins.put(f"origin.{run.run_id}", origin)
        return await self._runs.create(f"run.{run.run_id}", run)

    async def update(self, run_id: str, change: Callable[[pb.TrainingRun], None]) -> pb.TrainingRun:
        """Applies `change` to a copy of the stored run, compare-and-set."""

        def apply(current: pb.TrainingRun | None) -> pb.TrainingRun:
            if current is None:
                raise KeyError(run_id)
            updated = pb.TrainingRun()
            updated.CopyFrom(current)
            change(updated)
            return updated

        return await self._runs.update(f"run.{run_id}", apply)

    async def origin(self, run_id: str) -> common_pb2.EventMetadata | None:
        found = await self._origins.get(f"origin.{run_id}")
        return found[0] if found else None

    async def list(self) -> list[pb.TrainingRun]:
        runs = []
        for key in await self._runs.keys():
            if key.startswith("run."):
                found = await self._runs.get(key)
                if found:
                    runs.append(found[0])
        return runs

    async def watch(self, run_id: str) -> AsyncIterator[pb.TrainingRun]:
        """The run now, then every stored change, until the caller stops iterating."""
        watcher = await self._kv.watch(f"run.{run_id}")
        try:
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue  # the end-of-history marker, or a delete
                yield pb.TrainingRun.FromString(entry.value)
        finally:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await watcher.stop()  # type: ignore[no-untyped-call]


class CheckpointRegistry:
    def __init__(self, kv: KeyValue) -> None:
        self._store = ProtoStore(kv, pb.Checkpoint)

    async def get(self, checkpoint_id: str) -> pb.Checkpoint | None:
        found = await self._store.get(checkpoint_id)
        return found[0] if found else None

    async def register(self, checkpoint: pb.Checkpoint) -> pb.Checkpoint:
        """Stores the checkpoint once; a repeat returns the first registration unchanged."""
        if await self._store.create(checkpoint.checkpoint_id, checkpoint):
            return checkpoint
        existing = await self.get(checkpoint.checkpoint_id)
        assert existing is not None
        return existing

    async def list(self, model_name: str = "") -> list[pb.Checkpoint]:
        checkpoints = []
        for key in await self._store.keys():
            found = await self._store.get(key)
            if found and (not model_name or found[0].model_name == model_name):
                checkpoints.append(found[0])
        return checkpoints


class RunLeases:
    """Which replica drives which run: a key per run in a bucket whose entries expire.

    The driving replica renews its leases every `ttl / 3`; when it dies they lapse after `ttl`
    and another replica adopts the runs. Creating a lease is a compare-and-set, so two replicas
    never drive one run.
    """

    def __init__(self, kv: KeyValue, owner: str) -> None:
        self._kv = kv
        self.owner = owner

    async def acquire(self, run_id: str) -> bool:
        """True when this replica holds the run's lease (new, or already its own)."""
        try:
            await self._kv.create(run_id, self.owner.encode())
            return True
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self._kv.get(run_id)
        except KeyNotFoundError:
            return await self._create(run_id)
        if entry.value is None or entry.value == b"":
            # Deleted or expired: take it over only if nobody else did in between.
            try:
                await self._kv.update(run_id, self.owner.encode(), last=entry.revision or 0)
                return True
            except KeyWrongLastSequenceError:
                return False
        return entry.value.decode() == self.owner

    async def _create(self, run_id: str) -> bool:
        try:
            await self._kv.create(run_id, self.owner.encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def renew(self, run_id: str) -> None:
        await self._kv.put(run_id, self.owner.encode())

    async def release(self, run_id: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.delete(run_id)


async def open_stores(
    js: JetStreamContext, settings: NatsSettings
) -> tuple[RunRepository, CheckpointRegistry]:
    runs = await ensure_key_value(js, RUNS_BUCKET, settings)
    checkpoints = await ensure_key_value(js, CHECKPOINTS_BUCKET, settings)
    return RunRepository(runs), CheckpointRegistry(checkpoints)


async def open_leases(
    js: JetStreamContext,
    settings: NatsSettings,
    owner: str,
    ttl_seconds: float,
    bucket: str = LEASES_BUCKET,
) -> RunLeases:
    try:
        kv = await js.key_value(bucket)
    except NatsNotFoundError:
        kv = await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=ttl_seconds,
                storage=api.StorageType.FILE,
                replicas=settings.stream_replicas,
            )
        )
    return RunLeases(kv, owner)
