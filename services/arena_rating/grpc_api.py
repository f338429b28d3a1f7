"""The RatingService servicer: contract in, use case, contract out. Domain errors raised here
become status codes in the shared interceptors (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from arena.rating.v1 import rating_service_pb2 as pb
from arena.rating.v1 import rating_service_pb2_grpc as pb_grpc
from arena_rating.service import RatingApplication


class RatingServicer(pb_grpc.RatingServiceServicer):
    def __init__(self, app: RatingApplication) -> None:
        self._app = app

    async def RecordBattles(
        self, request: pb.RecordBattlesRequest, context: Any
    ) -> pb.RecordBattlesResponse:
        return await self._app.record_battles(request)

    async def GetLeaderboard(
        self, request: pb.GetLeaderboardRequest, context: Any
    ) -> pb.GetLeaderboardResponse:
        return pb.GetLeaderboardResponse(leaderboard=await self._app.leaderboard(request.query))

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: Any
    ) -> pb.GetSnapshotResponse:
        return pb.GetSnapshotResponse(leaderboard=await self._app.snapshot(request.snapshot_id))

    async def PublishRatings(
        self, request: pb.PublishRatingsRequest, context: Any
    ) -> pb.PublishRatingsResponse:
        board = await self._app.publish(
            request.query, pb.PUBLISH_TRIGGER_RPC, snapshot_id=_new_snapshot_id()
        )
        return pb.PublishRatingsResponse(leaderboard=board)

    async def StreamLeaderboard(
        self, request: pb.StreamLeaderboardRequest, context: Any
    ) -> AsyncIterator[pb.StreamLeaderboardResponse]:
        async for board in self._app.stream(request):
            yield pb.StreamLeaderboardResponse(leaderboard=board)

    async def CompareLeaderboards(
        self, request: pb.CompareLeaderboardsRequest, context: Any
    ) -> pb.CompareLeaderboardsResponse:
        return await self._app.compare(request)

    async def ListArenas(
        self, request: pb.ListArenasRequest, context: Any
    ) -> pb.ListArenasResponse:
        return await self._app.list_arenas(request)

    async def ComputeBenchmarkScores(
        self, request: pb.ComputeBenchmarkScoresRequest, context: Any
    ) -> pb.ComputeBenchmarkScoresResponse:
        return await self._app.benchmark_scores(request)


def _new_snapshot_id() -> str:
    return uuid.uuid4().hex
