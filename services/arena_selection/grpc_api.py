"""The SelectionService servicer: RPCs start jobs, report on them, and serve datasets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2

from arena.common.v1 import common_pb2
from arena.selection.v1 import selection_service_pb2 as pb
from arena.selection.v1 import selection_service_pb2_grpc as pb_grpc
from arena_core.errors import InvalidArgumentError
from arena_selection.clients import ROLE_TO_PROTO
from arena_selection.domain.records import Record
from arena_selection.jobs import JobManager
from arena_selection.store import DatasetStore

DEFAULT_PAGE = 50
MAX_PAGE = 1000
READ_CHUNK = 100
T = TypeVar("T")


def conversation(record: Record) -> common_pb2.Conversation:
    message = common_pb2.Conversation(id=record.id, source=record.source)
    for turn in record.messages:
        message.messages.add(role=ROLE_TO_PROTO[turn.role], content=turn.content)
    if record.category is not None:
        message.category = record.category
    if record.meta:
        meta = struct_pb2.Struct()
        json_format.ParseDict(record.meta, meta)
        message.meta.CopyFrom(meta)
    return message


def _page(items: Sequence[T], page: common_pb2.PageRequest) -> tuple[list[T], str]:
    size = page.page_size or DEFAULT_PAGE
    if not 0 < size <= MAX_PAGE:
        raise InvalidArgumentError(f"must be in [1, {MAX_PAGE}]", where="page.page_size")
    try:
        start = int(page.page_token or 0)
    except ValueError:
        raise InvalidArgumentError(
            "not a token this service issued", where="page.page_token"
        ) from None
    end = start + size
    return list(items[start:end]), str(end) if end < len(items) else ""


class SelectionServicer(pb_grpc.SelectionServiceServicer):
    def __init__(self, jobs: JobManager, store: DatasetStore) -> None:
        self._jobs = jobs
        self._store = store

    async def IngestPool(
        self, request: pb.IngestPoolRequest, context: Any
    ) -> pb.IngestPoolResponse:
        job = await self._jobs.submit(pb.SelectionJobSpec(ingest=request.spec), request.job_id)
        return pb.IngestPoolResponse(job=job)

    async def CleanPool(self, request: pb.CleanPoolRequest, context: Any) -> pb.CleanPoolResponse:
        job = await self._jobs.submit(pb.SelectionJobSpec(cleaning=request.spec), request.job_id)
        return pb.CleanPoolResponse(job=job)

    async def SplitPool(self, request: pb.SplitPoolRequest, context: Any) -> pb.SplitPoolResponse:
        job = await self._jobs.submit(pb.SelectionJobSpec(split=request.spec), request.job_id)
        return pb.SplitPoolResponse(job=job)

    async def BuildTestSet(
        self, request: pb.BuildTestSetRequest, context: Any
    ) -> pb.BuildTestSetResponse:
        job = await self._jobs.submit(pb.SelectionJobSpec(test_set=request.spec), request.job_id)
        return pb.BuildTestSetResponse(job=job)

    async def SelectTrainingData(
        self, request: pb.SelectTrainingDataRequest, context: Any
    ) -> pb.SelectTrainingDataResponse:
        job = await self._jobs.submit(
            pb.SelectionJobSpec(training_data=request.spec), request.job_id
        )
        return pb.SelectTrainingDataResponse(job=job)

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=await self._jobs.get(request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        jobs = await self._jobs.list_jobs(request.kind, request.state)
        page, token = _page(jobs, request.page)
        return pb.ListJobsResponse(jobs=page, page=common_pb2.PageResponse(next_page_token=token))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Any
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for job in self._jobs.watch(request.job_id):
            yield pb.WatchJobResponse(job=job)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.CancelJobResponse:
        return pb.CancelJobResponse(job=await self._jobs.cancel(request.job_id))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Any
    ) -> pb.GetDatasetResponse:
        if request.dataset_id:
            dataset = await self._store.get(request.dataset_id)
        elif request.name:
            version = request.version if request.HasField("version") else None
            dataset = await self._store.get_by_name(request.name, version)
        else:
            raise InvalidArgumentError("give dataset_id, or name (and version)", where="dataset_id")
        return pb.GetDatasetResponse(dataset=dataset)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Any
    ) -> pb.ListDatasetsResponse:
        datasets = await self._store.list_datasets(request.kind, request.name)
        page, token = _page(datasets, request.page)
        return pb.ListDatasetsResponse(
            datasets=page, page=common_pb2.PageResponse(next_page_token=token)
        )

    async def ReadDataset(
        self, request: pb.ReadDatasetRequest, context: Any
    ) -> AsyncIterator[pb.ReadDatasetResponse]:
        records = await self._store.records(request.dataset_id)
        offset = request.offset if request.HasField("offset") else 0
        if offset < 0:
            raise InvalidArgumentError("must be >= 0", where="offset")
        end = offset + request.limit if request.HasField("limit") else len(records)
        chosen = records[offset:end]
        for start in range(0, len(chosen), READ_CHUNK):
            yield pb.ReadDatasetResponse(
                records=[conversation(record) for record in chosen[start : start + READ_CHUNK]]
            )
