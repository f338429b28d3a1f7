"""The `FlywheelService` gRPC servicer: translates requests to controller calls and back.

Domain errors become status codes in the shared interceptors: an invalid spec is
INVALID_ARGUMENT with every violation named by field, an unknown run NOT_FOUND, pausing a run that
is not running FAILED_PRECONDITION. A rejected StartRun stores nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format, struct_pb2

from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena_core.errors import InvalidArgumentError
from arena_flywheel.controller import Controller, validate
from arena_flywheel.domain.spec import SpecError
from arena_flywheel.reporting import Reports

PAGE_LIMIT = 1000


class FlywheelServicer(pb_grpc.FlywheelServiceServicer):
    def __init__(self, controller: Controller, reports: Reports) -> None:
        self._controller = controller
        self._reports = reports

    async def ValidateSpec(
        self, request: pb.ValidateSpecRequest, context: Any
    ) -> pb.ValidateSpecResponse:

        try:
            spec = validate(request.spec_yaml)
        except SpecError as error:
            return pb.ValidateSpecResponse(
                valid=False,
                violations=[
                    pb.SpecViolation(field=violation.field, message=violation.message)
                    for violation in error.violations
                ],
            )
        normalized = struct_pb2.Struct()
        json_format.ParseDict(spec.model_dump(mode="json"), normalized)
        return pb.ValidateSpecResponse(
            valid=True,
            spec_sha256=hashlib.sha256(request.spec_yaml.encode()).hexdigest(),
            normalized_spec=normalized,
        )

    async def StartRun(self, request: pb.StartRunRequest, context: Any) -> pb.StartRunResponse:
        if not request.spec_yaml.strip():
            raise InvalidArgumentError("is empty; send a FlywheelSpec as YAML", where="spec_yaml")
        run = await self._controller.start_run(request.spec_yaml, request.run_id)
        return pb.StartRunResponse(run=run)

    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=await self._controller.get(request.run_id))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.ListRunsResponse:
        runs = await self._controller.list(request.state)
        token = request.page.page_token
        if token and not token.isdigit():
            raise InvalidArgumentError(
                "is not a page token from this service", where="page.page_token"
            )
        offset = int(token or 0)
        size = min(request.page.page_size or 100, PAGE_LIMIT)
        response = pb.ListRunsResponse(runs=runs[offset : offset + size])
        if offset + size < len(runs):
            response.page.next_page_token = str(offset + size)
        return response

    async def PauseRun(self, request: pb.PauseRunRequest, context: Any) -> pb.PauseRunResponse:
        return pb.PauseRunResponse(run=await self._controller.pause(request.run_id, request.reason))

    async def ResumeRun(self, request: pb.ResumeRunRequest, context: Any) -> pb.ResumeRunResponse:
        return pb.ResumeRunResponse(run=await self._controller.resume(request.run_id))

    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.CancelRunResponse:
        return pb.CancelRunResponse(
            run=await self._controller.cancel(request.run_id, request.reason)
        )

    async def StreamRunProgress(
        self, request: pb.StreamRunProgressRequest, context: Any
    ) -> AsyncIterator[pb.StreamRunProgressResponse]:
        async for update in self._controller.watch(request.run_id):
            yield update

    async def GetRunReport(
        self, request: pb.GetRunReportRequest, context: Any
    ) -> pb.GetRunReportResponse:
        record = await self._controller.record(request.run_id)
        return pb.GetRunReportResponse(report=await self._reports.write(record))
