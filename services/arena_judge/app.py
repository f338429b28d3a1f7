"""Composition root of the judge service: the one place its adapters are wired together.

The judge service judges answer pairs in both position orders with LLM and reference judges.
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.judge.v1 import events_pb2, judge_service_pb2, judge_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams, stream_for
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_judge.settings import JudgeSettings

SERVICE_DESCRIPTOR = judge_service_pb2.DESCRIPTOR.services_by_name["JudgeService"]


def wiring(settings: JudgeSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = judge_service_pb2_grpc.JudgeServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    judge_service_pb2_grpc.add_JudgeServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("judge"), stream_for("events", "inference")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on(
                        "judge-judgment",
                        [events_pb2.JudgmentRequested, events_pb2.JudgmentBatchRequested],
                        policy,
                    )
                ),
            ],
        )

    return wire
