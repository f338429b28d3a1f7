"""Composition root of the rating service: the one place its adapters are wired together.

The rating service turns judged battles into Bradley-Terry Elo leaderboards with bootstrap CIs.
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.judge.v1 import events_pb2 as judge_events_pb2
from arena.rating.v1 import events_pb2, rating_service_pb2, rating_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams, stream_for
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_rating.settings import RatingSettings

SERVICE_DESCRIPTOR = rating_service_pb2.DESCRIPTOR.services_by_name["RatingService"]


def wiring(settings: RatingSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = rating_service_pb2_grpc.RatingServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    rating_service_pb2_grpc.add_RatingServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("rating"), stream_for("events", "judge")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on(
                        "rating-judgments", [judge_events_pb2.JudgmentCompleted], policy
                    )
                ),
                Subscription(
                    ConsumerSpec.on("rating-requests", [events_pb2.RatingsRequested], policy)
                ),
            ],
        )

    return wire
