"""A flywheel run survives SIGKILL of the controller and a worker service mid-iteration.

Two local stacks run the same spec under the same run id: one undisturbed, one whose flywheel
and training processes are killed while the SFT stage trains. The stack's supervisor restarts
them; the controller resumes the run from its KV record and asks again under the same work ids.
Both runs must end with exactly the same datasets, judgments and battle counts, and the training
service must hold each training run once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from google.protobuf import any_pb2

from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena.judge.v1 import events_pb2 as judge_events
from arena.training.v1 import training_service_pb2 as training_pb
from arena.training.v1 import training_service_pb2_grpc as training_grpc
from tests.support.flywheel_assets import build_flywheel_assets
from tests.support.stack import Stack, wait_until

pytestmark = pytest.mark.slow
RUN_ID = "recovery"
TERMINAL = {
    pb.FLYWHEEL_RUN_STATE_SUCCEEDED,
    pb.FLYWHEEL_RUN_STATE_FAILED,
    pb.FLYWHEEL_RUN_STATE_CANCELLED,
}


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    calm, disturbed = Stack(tmp_path / "calm"), Stack(tmp_path / "disturbed")
    yield calm, disturbed
    for stack in (calm, disturbed):
        stack.arena("down")


def _flywheel(stack: Stack) -> pb_grpc.FlywheelServiceStub:
    return pb_grpc.FlywheelServiceStub(grpc.insecure_channel(stack.grpc_address("flywheel")))


def _run(stack: Stack) -> pb.FlywheelRun:
    try:
        return _flywheel(stack).GetRun(pb.GetRunRequest(run_id=RUN_ID), timeout=10).run
    except grpc.RpcError:  # restarting
        return pb.FlywheelRun()


def _finish(stack: Stack, timeout: float) -> pb.FlywheelRun:
    wait_until(lambda: _run(stack).state in TERMINAL, timeout, interval=1.0)
    run = _run(stack)
    assert run.state == pb.FLYWHEEL_RUN_STATE_SUCCEEDED, run.failure
    return run


async def _stored(stack: Stack) -> tuple[pb.RunRecord, set[str]]:
    """The run's KV record and the ids of every judgment the controller collected."""
    client = await nats.connect(stack.state().nats_url)
    try:
        js = client.jetstream()
        entry = await (await js.key_value("flywheel-runs")).get(RUN_ID)
        record = pb.RunRecord.FromString(entry.value or b"")
        results = await js.key_value("flywheel-results")
        judgments: set[str] = set()
        for key in await results.keys():
            answer = any_pb2.Any.FromString((await results.get(key)).value or b"")
            batch = judge_events.JudgmentBatchCompleted()
            if answer.Unpack(batch):
                judgments |= {f"{j.battle_id}/{j.judgment_id}" for j in batch.judgments}
        return record, judgments
    finally:
        await client.close()


def _essence(record: pb.RunRecord) -> dict[str, object]:
    """What must not differ between the runs: datasets, battles and judgments per step."""
    return {
        key: (
            [dataset.dataset_id for dataset in result.datasets],
            result.model,
            result.battle_count,
            {name: result.summary[name] for name in ("judgments", "parse_failures")}
            if "judgments" in result.summary
            else {},
        )
        for key, result in sorted(record.results.items())
    }


def _training_runs(stack: Stack) -> list[str]:
    stub = training_grpc.TrainingServiceStub(grpc.insecure_channel(stack.grpc_address("training")))
    runs = stub.ListRuns(training_pb.ListRunsRequest(), timeout=10).runs
    return sorted(run.run_id for run in runs)


def test_a_run_killed_mid_iteration_finishes_with_the_same_battles_judgments_and_data(
    stacks: tuple[Stack, Stack], tmp_path: Path
) -> None:
    spec_yaml = build_flywheel_assets(tmp_path / "assets")
    calm, disturbed = stacks

    calm.up()
    started = time.monotonic()
    _flywheel(calm).StartRun(pb.StartRunRequest(spec_yaml=spec_yaml, run_id=RUN_ID), timeout=30)
    _finish(calm, 600)
    undisturbed_seconds = time.monotonic() - started
    calm_record, calm_judgments = asyncio.run(_stored(calm))
    calm.arena("down")

    disturbed.up()
    _flywheel(disturbed).StartRun(
        pb.StartRunRequest(spec_yaml=spec_yaml, run_id=RUN_ID), timeout=30
    )

    def training_sft() -> bool:
        position = _run(disturbed).position
        return position.iteration == 1 and position.step == pb.STEP_TRAIN

    wait_until(training_sft, 300, interval=0.2)
    killed = {name: disturbed.service(name).pid for name in ("flywheel", "training")}
    for pid in killed.values():
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    wait_until(
        lambda: all(disturbed.service(name).restarts >= 1 for name in killed), 120, interval=0.5
    )
    run = _finish(disturbed, 600 + undisturbed_seconds)
    record, judgments = asyncio.run(_stored(disturbed))

    assert _essence(record) == _essence(calm_record)
    assert judgments == calm_judgments
    assert run.incumbent_model == calm_record.run.incumbent_model
    assert record.run.budget.battles == calm_record.run.budget.battles
    # Each training run exists once: the restarted controller asked again under the same id.
    assert _training_runs(disturbed) == [f"fw-{RUN_ID}-1-dpo-train", f"fw-{RUN_ID}-1-sft-train"]
