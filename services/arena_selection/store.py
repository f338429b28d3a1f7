"""Dataset storage: files in the JetStream object store (or a folder), a catalog in JetStream KV.

Datasets are immutable and content-addressed: files live under ``datasets/<dataset_id>/`` and are
never overwritten; publishing a dataset whose id exists returns the stored one. Each name has
versions 1, 2, ... in publication order (a compare-and-set update of the name's index, so two
replicas never hand out the same version).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.errors import NotFoundError as NatsNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from arena.common.v1 import common_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena_core.bus.state import ProtoStore
from arena_core.bus.topology import ensure_key_value, ensure_object_store
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_core.hashing import content_hash
from arena_core.settings import NatsSettings
from arena_selection.domain import artifacts
from arena_selection.domain.artifacts import DatasetKind, RenderedDataset

CATALOG_BUCKET = "arena-selection-catalog"
JOBS_BUCKET = "arena-selection-jobs"
ROUNDS_BUCKET = "arena-selection-rounds"

KIND_TO_PROTO = {
    DatasetKind.POOL: common_pb2.DATASET_KIND_POOL,
    DatasetKind.SPLIT: common_pb2.DATASET_KIND_SPLIT,
    DatasetKind.TEST_SET: common_pb2.DATASET_KIND_TEST_SET,
    DatasetKind.SFT: common_pb2.DATASET_KIND_SFT,
    DatasetKind.PREFERENCE: common_pb2.DATASET_KIND_PREFERENCE,
    DatasetKind.PROMPTS: common_pb2.DATASET_KIND_PROMPTS,
}


class Blobs(Protocol):
    def uri(self, name: str) -> str: ...

    async def put_new(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes: ...


class ObjectStoreBlobs:
    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self._store = store
        self._bucket = bucket

    def uri(self, name: str) -> str:
        return f"nats-obj://{self._bucket}/{name}"

    async def put_new(self, name: str, data: bytes) -> None:
        try:
            await self._store.get_info(name)
            return  # content-addressed: an existing object already holds these bytes
        except NatsNotFoundError:
            pass
        await self._store.put(name, data)

    async def get(self, name: str) -> bytes:
        try:
            result = await self._store.get(name)
        except NatsNotFoundError:
            raise NotFoundError(f"object {self.uri(name)} is missing") from None
        return bytes(result.data or b"")


class FileBlobs:
    def __init__(self, root: Path) -> None:
        self._root = root

    def uri(self, name: str) -> str:
        return (self._root / name).resolve().as_uri()

    async def put_new(self, name: str, data: bytes) -> None:
        path = self._root / name
        if not path.exists():
            await asyncio.to_thread(artifacts.atomic_write, path, data)

    async def get(self, name: str) -> bytes:
        path = self._root / name
        if not path.exists():
            raise NotFoundError(f"file {path} is missing")
        return await asyncio.to_thread(path.read_bytes)


async def open_blobs(js: JetStreamContext, uri: str, settings: NatsSettings) -> Blobs:
    if uri.startswith("file://"):
        return FileBlobs(Path(uri.removeprefix("file://")))
    bucket = uri.removeprefix("nats-obj://").strip("/")
    return ObjectStoreBlobs(await ensure_object_store(js, bucket, settings), bucket)


def _name_key(name: str) -> str:
    return f"name.{content_hash('dataset-name', name)[:40]}"


class DatasetStore:
    """Publishes, finds and reads dataset versions."""

    def __init__(self, blobs: Blobs, catalog: KeyValue) -> None:
        self._blobs = blobs
        self._kv = catalog
        self._datasets = ProtoStore(catalog, pb.Dataset)

    async def publish(
        self,
        rendered: RenderedDataset,
        *,
        parents: Sequence[str] = (),
        stage: int = common_pb2.TRAINING_STAGE_UNSPECIFIED,
        slice_index: int | None = None,
        variant: int = pb.TEST_SET_VARIANT_UNSPECIFIED,
        model_shares: dict[str, dict[str, int]] | None = None,
        threshold: float | None = None,
        labels: dict[str, str] | None = None,
    ) -> tuple[pb.Dataset, bool]:
        """Stores the files and catalog entry; (dataset, False) when it was already there."""
        dataset_id = rendered.dataset_id
        existing = await self._datasets.get(f"dataset.{dataset_id}")
        if existing is not None:
            return existing[0], False
        prefix = f"datasets/{dataset_id}"
        manifest_bytes = json.dumps(rendered.manifest, indent=2, ensure_ascii=False).encode()
        for file_name, data in [*rendered.files.items(), (artifacts.MANIFEST, manifest_bytes)]:
            await self._blobs.put_new(f"{prefix}/{file_name}", data)
        version = await self._next_version(rendered.name, dataset_id)
        dataset = pb.Dataset(
            parent_dataset_ids=list(parents),
            stage=stage,  # type: ignore[arg-type]
            test_set_variant=variant,  # type: ignore[arg-type]
            labels=labels or {},
        )
        dataset.created_at.FromDatetime(datetime.now(UTC))
        ref = dataset.ref
        ref.dataset_id, ref.name, ref.version = dataset_id, rendered.name, version
        ref.kind = KIND_TO_PROTO[rendered.kind]
        ref.record_count = rendered.record_count
        for file_name, data in sorted(rendered.files.items()):
            ref.files.append(_artifact(self._blobs.uri(f"{prefix}/{file_name}"), file_name, data))
        ref.manifest.CopyFrom(
            _artifact(self._blobs.uri(f"{prefix}/{artifacts.MANIFEST}"), "m.json", manifest_bytes)
        )
        if slice_index is not None:
            dataset.slice_index = slice_index
        if threshold is not None:
            dataset.threshold = threshold
        for model, share in sorted((model_shares or {}).items()):
            dataset.model_shares.add(
                model=model, chosen=share["chosen"], rejected=share["rejected"]
            )
        created = await self._datasets.create(f"dataset.{dataset_id}", dataset)
        if not created:  # another replica published the same content first
            stored = await self._datasets.get(f"dataset.{dataset_id}")
            assert stored is not None
            return stored[0], False
        return dataset, True

    async def _next_version(self, name: str, dataset_id: str) -> int:
        key = _name_key(name)
        for _ in range(50):
            try:
                entry = await self._kv.get(key)
                ids: list[str] = json.loads(entry.value or b"[]")
                revision = entry.revision
            except KeyNotFoundError:
                ids, revision = [], None
            if dataset_id in ids:
                return ids.index(dataset_id) + 1
            value = json.dumps([*ids, dataset_id]).encode()
            try:
                if revision is None:
                    await self._kv.create(key, value)
                else:
                    await self._kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                continue
            return len(ids) + 1
        raise RuntimeError(f"could not assign a version to {name!r}")

    async def get(self, dataset_id: str, where: str = "dataset_id") -> pb.Dataset:
        if not dataset_id.strip():
            raise InvalidArgumentError("give a dataset id", where=where)
        found = await self._datasets.get(f"dataset.{dataset_id}")
        if found is None:
            raise NotFoundError(f"{where}: dataset {dataset_id!r} does not exist")
        return found[0]

    async def get_by_name(self, name: str, version: int | None) -> pb.Dataset:
        try:
            entry = await self._kv.get(_name_key(name))
            ids: list[str] = json.loads(entry.value or b"[]")
        except KeyNotFoundError:
            ids = []
        if not ids:
            raise NotFoundError(f"name: no dataset is named {name!r}")
        if version is None:
            return await self.get(ids[-1])
        if not 1 <= version <= len(ids):
            raise NotFoundError(f"version: {name!r} has versions 1..{len(ids)}, not {version}")
        return await self.get(ids[version - 1])

    async def list_datasets(self, kind: int = 0, name: str = "") -> list[pb.Dataset]:
        try:
            keys = [key for key in await self._kv.keys() if key.startswith("dataset.")]
        except NoKeysError:
            keys = []
        datasets = []
        for key in keys:
            found = await self._datasets.get(key)
            if found is None:
                continue
            dataset = found[0]
            if kind and dataset.ref.kind != kind:
                continue
            if name and dataset.ref.name != name:
                continue
            datasets.append(dataset)
        datasets.sort(key=lambda d: (-d.created_at.seconds, -d.created_at.nanos, d.ref.name))
        return datasets

    async def put_report(self, job_id: str, report: dict[str, Any]) -> common_pb2.ArtifactRef:
        data = json.dumps(report, indent=2, ensure_ascii=False).encode()
        name = f"reports/{job_id}/{hashlib.sha256(data).hexdigest()[:16]}.json"
        await self._blobs.put_new(name, data)
        return _artifact(self._blobs.uri(name), name, data)

    async def file(self, dataset: pb.Dataset, file_name: str) -> bytes:
        return await self._blobs.get(f"datasets/{dataset.ref.dataset_id}/{file_name}")

    async def records(self, dataset_id: str, where: str = "dataset_id") -> list[Any]:
        """Canonical records of a pool, split or test-set dataset."""
        from arena_selection.domain.records import read_jsonl

        dataset = await self.get(dataset_id, where)
        if dataset.ref.kind not in (
            common_pb2.DATASET_KIND_POOL,
            common_pb2.DATASET_KIND_SPLIT,
            common_pb2.DATASET_KIND_TEST_SET,
        ):
            raise InvalidArgumentError(
                f"dataset {dataset_id} is {common_pb2.DatasetKind.Name(dataset.ref.kind)}, "
                "not a pool, split or test set",
                where=where,
            )
        data = await self.file(dataset, artifacts.DATA_JSONL)
        return await asyncio.to_thread(read_jsonl, data, f"dataset {dataset_id}")


def _artifact(uri: str, file_name: str, data: bytes) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        media_type=artifacts.MEDIA_TYPES.get(Path(file_name).suffix, "application/octet-stream"),
    )


async def open_store(js: JetStreamContext, uri: str, settings: NatsSettings) -> DatasetStore:
    blobs = await open_blobs(js, uri, settings)
    catalog = await ensure_key_value(js, CATALOG_BUCKET, settings)
    return DatasetStore(blobs, catalog)
