"""Composition root of the flywheel service: the one place its adapters are wired together.

The flywheel service drives the Arena Learning loop: battle, judge, select, train, evaluate,
promote.
For now its RPCs answer UNIMPLEMENTED and its durable consumers hold their messages until the
handlers land; health, metrics and the bus topology are live.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.flywheel.v1 import flywheel_service_pb2, flywheel_service_pb2_grpc
from arena.inference.v1 import events_pb2 as inference_events_pb2
from arena.judge.v1 import events_pb2 as judge_events_pb2
from arena.rating.v1 import events_pb2 as rating_events_pb2
from arena.selection.v1 import events_pb2 as selection_events_pb2
from arena.training.v1 import events_pb2 as training_events_pb2
from arena_core.bus.topology import ConsumerSpec, domain_streams, stream_for
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_flywheel.settings import FlywheelSettings

SERVICE_DESCRIPTOR = flywheel_service_pb2.DESCRIPTOR.services_by_name["FlywheelService"]


def wiring(settings: FlywheelSettings) -> Wiring:
    policy = settings.consumer

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        # The generated base servicer answers UNIMPLEMENTED until the RPC bodies land.
        servicer = flywheel_service_pb2_grpc.FlywheelServiceServicer()  # type: ignore[abstract]
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    flywheel_service_pb2_grpc.add_FlywheelServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[
                *domain_streams("flywheel"),
                stream_for("events", "inference"),
                stream_for("events", "judge"),
                stream_for("events", "rating"),
                stream_for("events", "selection"),
                stream_for("events", "training"),
            ],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-generations",
                        [
                            inference_events_pb2.GenerationCompleted,
                            inference_events_pb2.GenerationFailed,
                            inference_events_pb2.GenerationBatchCompleted,
                        ],
                        policy,
                    )
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-judgments",
                        [
                            judge_events_pb2.JudgmentCompleted,
                            judge_events_pb2.JudgmentFailed,
                            judge_events_pb2.JudgmentBatchCompleted,
                        ],
                        policy,
                    )
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-ratings",
                        [rating_events_pb2.RatingsPublished, rating_events_pb2.RatingsFailed],
                        policy,
                    )
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-selection",
                        [
                            selection_events_pb2.SelectionJobFinished,
                            selection_events_pb2.DatasetPublished,
                        ],
                        policy,
                    )
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-training",
                        [
                            training_events_pb2.TrainingRunFinished,
                            training_events_pb2.CheckpointRegistered,
                        ],
                        policy,
                    )
                ),
            ],
        )

    return wire
