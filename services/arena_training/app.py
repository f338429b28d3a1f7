"""Composition root of the training service: the one place its adapters are wired together.

The training service runs TRL SFT, DPO, reward-model and RL jobs and registers checkpoints.
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.training.v1 import events_pb2, training_service_pb2, training_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_training.settings import TrainingSettings

SERVICE_DESCRIPTOR = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"]


def wiring(settings: TrainingSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = training_service_pb2_grpc.TrainingServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    training_service_pb2_grpc.add_TrainingServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("training")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on("training-runs", [events_pb2.TrainingRequested], policy)
                ),
            ],
        )

    return wire
