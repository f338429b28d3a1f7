"""The JudgeService servicer: contract in, use case, contract out. Domain errors raised here
become status codes in the shared interceptors."""

from __future__ import annotations

from typing import Any

from arena.judge.v1 import judge_service_pb2 as pb
from arena.judge.v1 import judge_service_pb2_grpc as pb_grpc
from arena_judge.service import JudgeApplication


class JudgeServicer(pb_grpc.JudgeServiceServicer):
    def __init__(self, app: JudgeApplication) -> None:
        self._app = app

    async def JudgePair(self, request: pb.JudgePairRequest, context: Any) -> pb.JudgePairResponse:
        return await self._app.judge_pair(request)

    async def JudgeBatch(
        self, request: pb.JudgeBatchRequest, context: Any
    ) -> pb.JudgeBatchResponse:
        return await self._app.judge_batch(request)

    async def Grade(self, request: pb.GradeRequest, context: Any) -> pb.GradeResponse:
        return await self._app.grade(request)

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        return await self._app.score(request)

    async def GetJudgment(
        self, request: pb.GetJudgmentRequest, context: Any
    ) -> pb.GetJudgmentResponse:
        return pb.GetJudgmentResponse(judgment=await self._app.get_judgment(request.judgment_id))

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Any
    ) -> pb.ListTemplatesResponse:
        return self._app.list_templates(request)

    async def GetJudgeQuality(
        self, request: pb.GetJudgeQualityRequest, context: Any
    ) -> pb.GetJudgeQualityResponse:
        return pb.GetJudgeQualityResponse(report=await self._app.quality(request))
