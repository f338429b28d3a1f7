"""Composition root of the selection service: the one place its adapters are wired together.

The selection service curates instruction pools, builds the test set and training data from battles.
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.selection.v1 import events_pb2, selection_service_pb2, selection_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_selection.settings import SelectionSettings

SERVICE_DESCRIPTOR = selection_service_pb2.DESCRIPTOR.services_by_name["SelectionService"]


def wiring(settings: SelectionSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = selection_service_pb2_grpc.SelectionServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    selection_service_pb2_grpc.add_SelectionServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("selection")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on("selection-jobs", [events_pb2.SelectionJobRequested], policy)
                ),
            ],
        )

    return wire
