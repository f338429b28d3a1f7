"""Composition root of the training service: the one place its adapters are wired together.

The service runs TRL SFT, DPO, reward-model and RL jobs as local processes or Kubernetes jobs,
keeps run state and the checkpoint registry in JetStream KV, publishes progress and checkpoints,
answers the `TrainingService` RPCs and consumes `TrainingRequested` from its work queue.
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import AsyncExitStack

from arena.training.v1 import events_pb2, training_service_pb2, training_service_pb2_grpc
from arena_core.bus.topology import ConsumerSpec, domain_streams, ensure_streams
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_training.clients import DatasetCatalog, DatasetFetcher, NoCatalog, SelectionCatalog
from arena_training.event_handlers import TrainingRequestedHandler
from arena_training.grpc_api import TrainingServicer
from arena_training.planning import RunPlanner
from arena_training.runners.base import JobRunner
from arena_training.runners.local import LocalProcessRunner
from arena_training.settings import TrainingOptions, TrainingSettings
from arena_training.store import open_leases, open_stores
from arena_training.supervisor import RunSupervisor

SERVICE_DESCRIPTOR = training_service_pb2.DESCRIPTOR.services_by_name["TrainingService"]


def build_runners(options: TrainingOptions) -> dict[str, JobRunner]:
    """The local runner always; the Kubernetes runner when it is the configured default."""
    work_dir = options.resolved_work_dir()
    runners: dict[str, JobRunner] = {"local": LocalProcessRunner(options.local, work_dir)}
    if options.runner == "kubernetes":
        from arena_training.k8s.api import KubeApi
        from arena_training.runners.kubernetes import KubernetesRunner

        api = KubeApi.from_environment(options.kubernetes)
        runners["kubernetes"] = KubernetesRunner(api, options.kubernetes, work_dir)
    return runners


def wiring(settings: TrainingSettings) -> Wiring:
    policy = settings.consumer
    options = settings.training

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        work_dir = options.resolved_work_dir()
        work_dir.mkdir(parents=True, exist_ok=True)
        options.resolved_checkpoint_store().mkdir(parents=True, exist_ok=True)
        runs, checkpoints = await open_stores(bus.js, settings.nats)
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        leases = await open_leases(bus.js, settings.nats, owner, options.lease_seconds)
        catalog: DatasetCatalog = (
            SelectionCatalog(options.selection_target) if options.selection_target else NoCatalog()
        )
        stack.push_async_callback(catalog.close)
        runners = build_runners(options)
        planner = RunPlanner(
            options,
            catalog,
            DatasetFetcher(work_dir / "datasets", bus.js),
            checkpoints,
            runners=list(runners),
        )
        supervisor = RunSupervisor(
            runs=runs,
            checkpoints=checkpoints,
            planner=planner,
            runners=runners,
            events=bus.publisher,
            options=options,
            leases=leases,
        )
        stack.push_async_callback(supervisor.close)
        # Runs left pending or running by the last process resume now. Not a `background` job:
        # the host waits for those at shutdown, and a local worker must stop at once.
        await ensure_streams(bus.js, list(domain_streams("training")), settings.nats)
        supervisor.start_recovery()
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    TrainingServicer(supervisor, checkpoints),
                    training_service_pb2_grpc.add_TrainingServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("training")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on("training-runs", [events_pb2.TrainingRequested], policy),
                    {events_pb2.TrainingRequested: TrainingRequestedHandler(supervisor)},
                ),
            ],
        )

    return wire
