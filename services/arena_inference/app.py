"""Composition root of the inference service: the one place its adapters are wired together.

The inference service serves many models behind one gRPC API (vLLM, transformers, OpenAI-
compatible, replay).
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.inference.v1 import events_pb2, inference_service_pb2, inference_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_inference.settings import InferenceSettings

SERVICE_DESCRIPTOR = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]


def wiring(settings: InferenceSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = inference_service_pb2_grpc.InferenceServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("inference")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on(
                        "inference-generation",
                        [events_pb2.GenerationRequested, events_pb2.GenerationBatchRequested],
                        policy,
                    )
                ),
            ],
        )

    return wire
