"""Outbound adapters: the dataset catalog (the selection service) and dataset file fetching.

A `DatasetRef` with files is used as given; one with only an id is looked up in the catalog,
the selection service's ``GetDataset``. Files are read where they are (``file://`` or a plain
path) or copied once into the shared work directory (``nats-obj://<bucket>/<name>``, the
JetStream object store the selection service publishes to), checked against their SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import grpc
from grpc import aio
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError as NatsNotFoundError

from arena.common.v1 import common_pb2
from arena.selection.v1 import selection_service_pb2, selection_service_pb2_grpc
from arena_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from arena_core.rpc.client import service_channel
from arena_training.domain.artifacts import file_sha256


class DatasetCatalog(Protocol):
    async def get(self, dataset_id: str, *, where: str) -> common_pb2.DatasetRef: ...

    async def close(self) -> None: ...


class SelectionCatalog:
    """The selection service's dataset catalog over gRPC."""

    def __init__(self, target: str, timeout_seconds: float = 10.0) -> None:
        self._target = target
        self._channel: aio.Channel | None = None
        self._timeout = timeout_seconds

    def _stub(self) -> selection_service_pb2_grpc.SelectionServiceAsyncStub:
        if self._channel is None:
            self._channel = service_channel(self._target)
        return selection_service_pb2_grpc.SelectionServiceStub(self._channel)

    async def get(self, dataset_id: str, *, where: str) -> common_pb2.DatasetRef:
        try:
            response = await self._stub().GetDataset(
                selection_service_pb2.GetDatasetRequest(dataset_id=dataset_id),
                timeout=self._timeout,
            )
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(
                    f"{where}: unknown dataset {dataset_id!r}: the dataset catalog has no such id"
                ) from None
            if code in (grpc.StatusCode.INVALID_ARGUMENT,):
                raise InvalidArgumentError(
                    f"the catalog rejected dataset id {dataset_id!r}: {error.details()}",
                    where=where,
                ) from None
            raise UnavailableError(
                f"the dataset catalog at {self._target} did not answer: {code.name}"
            ) from None
        return response.dataset.ref

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class NoCatalog:
    """No catalog configured: datasets must come with their files."""

    async def get(self, dataset_id: str, *, where: str) -> common_pb2.DatasetRef:
        raise NotFoundError(
            f"{where}: unknown dataset {dataset_id!r}: it has no files and no dataset catalog is "
            "configured (ARENA_TRAINING__SELECTION_TARGET)"
        )

    async def close(self) -> None:
        return None


class DatasetFetcher:
    """Makes a dataset file readable by the worker: a local path in the shared work directory."""

    def __init__(self, staging_dir: Path, js: JetStreamContext | None = None) -> None:
        self._staging_dir = staging_dir
        self._js = js
        self._locks: dict[str, asyncio.Lock] = {}

    async def local_path(
        self, artifact: common_pb2.ArtifactRef, *, dataset_id: str, where: str
    ) -> Path:
        uri = artifact.uri
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            path = Path(unquote(parsed.path) if parsed.scheme else uri)
            if not await asyncio.to_thread(path.is_file):
                raise NotFoundError(f"{where}: dataset file {uri!r} does not exist")
            await self._verify(path, artifact, where)
            return path
        if parsed.scheme == "nats-obj":
            return await self._fetch_object(
                parsed.netloc, parsed.path.lstrip("/"), artifact, dataset_id, where
            )
        raise InvalidArgumentError(
            f"dataset file {uri!r}: only file:// paths and nats-obj:// objects can be read",
            where=where,
        )

    async def _fetch_object(
        self,
        bucket: str,
        name: str,
        artifact: common_pb2.ArtifactRef,
        dataset_id: str,
        where: str,
    ) -> Path:
        if self._js is None:
            raise FailedPreconditionError(
                f"{where}: no JetStream connection to read {artifact.uri}"
            )
        target = self._staging_dir / dataset_id / Path(name).name
        lock = self._locks.setdefault(str(target), asyncio.Lock())
        async with lock:
            if target.is_file() and (
                not artifact.sha256
                or await asyncio.to_thread(file_sha256, target) == artifact.sha256
            ):
                return target
            try:
                store = await self._js.object_store(bucket)
            except NatsNotFoundError:
                raise NotFoundError(
                    f"{where}: object store bucket {bucket!r} does not exist"
                ) from None
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".partial")
            try:
                with partial.open("wb") as handle:
                    await store.get(name, writeinto=handle)
            except NatsNotFoundError:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise NotFoundError(
                    f"{where}: dataset file {artifact.uri!r} does not exist"
                ) from None
            partial.replace(target)
        await self._verify(target, artifact, where)
        return target

    async def _verify(self, path: Path, artifact: common_pb2.ArtifactRef, where: str) -> None:
        size = (await asyncio.to_thread(path.stat)).st_size
        if artifact.size_bytes and size != artifact.size_bytes:
            raise InvalidArgumentError(
                f"dataset file {artifact.uri!r} has {size} bytes, "
                f"the reference says {artifact.size_bytes}",
                where=where,
            )
        if artifact.sha256 and await asyncio.to_thread(file_sha256, path) != artifact.sha256:
            raise InvalidArgumentError(
                f"dataset file {artifact.uri!r} does not match its sha256", where=where
            )
