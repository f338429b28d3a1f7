"""Composition root of the flywheel service: the one place its adapters are wired together.

The flywheel service drives the Arena Learning loop — split, battle, judge, select, train,
register and load the checkpoint, evaluate, rate, promote, repeat — by asking the other services
for work on the bus and recording their answers. Runs live in JetStream KV and resume after a
restart.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from arena.flywheel.v1 import flywheel_service_pb2, flywheel_service_pb2_grpc
from arena.inference.v1 import events_pb2 as inference_events
from arena.judge.v1 import events_pb2 as judge_events
from arena.rating.v1 import events_pb2 as rating_events
from arena.selection.v1 import events_pb2 as selection_events
from arena.training.v1 import events_pb2 as training_events
from arena_core.bus.topology import ConsumerSpec, domain_streams, ensure_key_value
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_flywheel.clients import InferenceClient, SelectionClient, TrainingClient
from arena_flywheel.controller import Controller
from arena_flywheel.event_handlers import AnswerRecorder, PoolWatcher
from arena_flywheel.grpc_api import FlywheelServicer
from arena_flywheel.reporting import Reports
from arena_flywheel.settings import FlywheelSettings
from arena_flywheel.steps import StepRunner
from arena_flywheel.store import RunStore, WorkResults

SERVICE_DESCRIPTOR = flywheel_service_pb2.DESCRIPTOR.services_by_name["FlywheelService"]


def wiring(settings: FlywheelSettings) -> Wiring:
    policy = settings.consumer
    options = settings.flywheel

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        runs = RunStore(await ensure_key_value(bus.js, options.runs_bucket, settings.nats))
        results = WorkResults(
            await ensure_key_value(bus.js, options.results_bucket, settings.nats),
            options.results_poll_seconds,
        )
        inference = InferenceClient(options.inference_target)
        selection = SelectionClient(options.selection_target)
        training = TrainingClient(options.training_target)
        for client in (inference, selection, training):
            stack.push_async_callback(client.close)
        steps = StepRunner(options, bus.publisher, results, selection, training, inference)
        reports = Reports(options.reports_dir)
        controller = Controller(runs, steps, bus.publisher, training, options, reports.refresh)
        stack.push_async_callback(controller.close)
        recorder = AnswerRecorder(results)

        async def drive_runs() -> None:
            # Once the topology exists: pick up the runs a previous process was driving. A
            # background job that returns stops the service, so this one then stays.
            await controller.resume_all()
            await asyncio.Event().wait()

        return ServiceParts(
            grpc_services=[
                grpc_service(
                    FlywheelServicer(controller, reports),
                    flywheel_service_pb2_grpc.add_FlywheelServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[
                *domain_streams("flywheel"),
                *(
                    stream
                    for domain in ("inference", "judge", "rating", "selection", "training")
                    for stream in domain_streams(domain)
                ),
            ],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-generations",
                        [
                            inference_events.GenerationCompleted,
                            inference_events.GenerationFailed,
                            inference_events.GenerationBatchCompleted,
                        ],
                        policy,
                    ),
                    {
                        inference_events.GenerationBatchCompleted: recorder.by_cause,
                        inference_events.GenerationCompleted: recorder.ignore,
                        inference_events.GenerationFailed: recorder.ignore,
                    },
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-judgments",
                        [
                            judge_events.JudgmentCompleted,
                            judge_events.JudgmentFailed,
                            judge_events.JudgmentBatchCompleted,
                        ],
                        policy,
                    ),
                    {
                        judge_events.JudgmentBatchCompleted: recorder.by_cause,
                        judge_events.JudgmentCompleted: recorder.ignore,
                        judge_events.JudgmentFailed: recorder.ignore,
                    },
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-ratings",
                        [rating_events.RatingsPublished, rating_events.RatingsFailed],
                        policy,
                    ),
                    {
                        rating_events.RatingsPublished: recorder.by_cause,
                        rating_events.RatingsFailed: recorder.by_cause,
                    },
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-selection",
                        [
                            selection_events.SelectionJobFinished,
                            selection_events.DatasetPublished,
                        ],
                        policy,
                    ),
                    {
                        selection_events.SelectionJobFinished: recorder.selection_job,
                        selection_events.DatasetPublished: PoolWatcher(
                            controller.pool_data_published
                        ),
                    },
                ),
                Subscription(
                    ConsumerSpec.on(
                        "flywheel-training",
                        [
                            training_events.TrainingRunFinished,
                            training_events.CheckpointRegistered,
                        ],
                        policy,
                    ),
                    {
                        training_events.TrainingRunFinished: recorder.training_run,
                        training_events.CheckpointRegistered: recorder.ignore,
                    },
                ),
            ],
            background=[drive_runs],
        )

    return wire
