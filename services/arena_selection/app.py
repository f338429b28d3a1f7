"""Composition root of the selection service: the one place its adapters are wired together.

The selection service curates instruction pools, splits them, builds the WizardArena test sets
and turns judged battle rounds into training data. Datasets go to the JetStream object store (or
a folder), jobs and the catalog to JetStream KV; judged rounds arrive as JudgmentCompleted.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from arena.judge.v1 import events_pb2 as judge_events
from arena.selection.v1 import events_pb2, selection_service_pb2, selection_service_pb2_grpc
from arena_core.bus.state import ProtoStore
from arena_core.bus.topology import ConsumerSpec, domain_streams, ensure_key_value, stream_for
from arena_core.rpc.server import grpc_service
from arena_core.service_host import Bus, ServiceParts, Subscription, Wiring
from arena_selection.clients import InferenceClient, JudgeClient
from arena_selection.event_handlers import RoundJudgmentCollector, SelectionJobHandler
from arena_selection.grpc_api import SelectionServicer
from arena_selection.jobs import JobManager
from arena_selection.settings import SelectionSettings
from arena_selection.store import JOBS_BUCKET, ROUNDS_BUCKET, open_store
from arena_selection.work import SelectionWork

SERVICE_DESCRIPTOR = selection_service_pb2.DESCRIPTOR.services_by_name["SelectionService"]


def wiring(settings: SelectionSettings) -> Wiring:
    policy = settings.consumer
    options = settings.selection

    async def wire(bus: Bus, stack: AsyncExitStack) -> ServiceParts:
        store = await open_store(bus.js, options.store_uri, settings.nats)
        jobs_kv = await ensure_key_value(bus.js, JOBS_BUCKET, settings.nats)
        rounds = await ensure_key_value(bus.js, ROUNDS_BUCKET, settings.nats)
        judge = JudgeClient(options.judge_target, options.difficulty_concurrency)
        inference = InferenceClient(options.inference_target)
        stack.push_async_callback(judge.close)
        stack.push_async_callback(inference.close)
        work = SelectionWork(store, rounds, options, judge, inference)
        jobs = JobManager(
            ProtoStore(jobs_kv, selection_service_pb2.SelectionJob),
            bus.publisher,
            work.validate,
            work.execute,
            max_concurrent=options.max_concurrent_jobs,
            progress_interval=options.progress_interval_seconds,
        )
        stack.push_async_callback(jobs.close)
        servicer = SelectionServicer(jobs, store)
        collector = RoundJudgmentCollector(rounds)
        return ServiceParts(
            grpc_services=[
                grpc_service(
                    servicer,
                    selection_service_pb2_grpc.add_SelectionServiceServicer_to_server,
                    SERVICE_DESCRIPTOR,
                )
            ],
            streams=[*domain_streams("selection"), stream_for("events", "judge")],
            subscriptions=[
                Subscription(
                    ConsumerSpec.on("selection-jobs", [events_pb2.SelectionJobRequested], policy),
                    {events_pb2.SelectionJobRequested: SelectionJobHandler(jobs)},
                ),
                Subscription(
                    ConsumerSpec.on(
                        "selection-round-judgments",
                        [judge_events.JudgmentCompleted, judge_events.JudgmentBatchCompleted],
                        policy,
                    ),
                    {
                        judge_events.JudgmentCompleted: collector,
                        judge_events.JudgmentBatchCompleted: collector.on_batch,
                    },
                ),
            ],
        )

    return wire
