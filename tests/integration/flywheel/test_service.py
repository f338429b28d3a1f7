"""FlywheelService over a real gRPC channel and a real nats-server: specs are checked before
anything runs, and runs are started, found, paused, resumed, cancelled and watched."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena.flywheel.v1 import flywheel_service_pb2_grpc as pb_grpc
from arena_cli.nats_server import free_port
from arena_core.settings import ConsumerSettings, GrpcSettings, MetricsSettings, NatsSettings
from arena_flywheel.app import wiring
from arena_flywheel.settings import FlywheelOptions, FlywheelSettings
from tests.support.hosts import hosted_service

SPEC = """
name: service-test
models:
  target: {backend: transformers, path: /models/target}
  strong: {backend: replay, path: /answers/strong.json}
target: {model: target, base: /models/target}
opponents: [strong]
judge: {name: reference, protocol: reference}
pool: {dataset: /data/pool.jsonl, slices: 4}
evaluation: {test_set: /data/test.jsonl}
"""


@pytest.fixture
async def flywheel(nats_url: str, tmp_path: Path) -> AsyncIterator[pb_grpc.FlywheelServiceStub]:
    suffix = uuid.uuid4().hex[:8]
    # Nothing else runs: the first step waits on services that are not there, so a started
    # run stays RUNNING for as long as the test needs.
    unreachable = f"127.0.0.1:{free_port()}"
    settings = FlywheelSettings(
        nats=NatsSettings(url=nats_url),
        grpc=GrpcSettings(host="127.0.0.1", port=free_port(), grace_seconds=1),
        metrics=MetricsSettings(host="127.0.0.1", port=free_port()),
        consumer=ConsumerSettings(max_deliveries=4, retry_backoff_seconds=0.1, ack_wait_seconds=5),
        flywheel=FlywheelOptions(
            inference_target=unreachable,
            selection_target=unreachable,
            training_target=unreachable,
            runs_bucket=f"flywheel-runs-{suffix}",
            results_bucket=f"flywheel-results-{suffix}",
            retry_seconds=0.2,
            reports_dir=tmp_path / "reports",
        ),
    )
    async with hosted_service("flywheel", settings, wiring) as (_, channel):
        yield pb_grpc.FlywheelServiceStub(channel)


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("opponents: [strong]", "opponents: [strong, ghost]"), "opponents[1]"),
        (("slices: 4", "slices: 2"), "pool.slices"),
        (
            (
                "judge: {name: reference, protocol: reference}",
                "judge: {name: gpt, protocol: paper}",
            ),
            "judge",
        ),
        (("name: service-test", "name: service-test\nthresholds: {dpo: 12}"), "thresholds.dpo"),
        (
            (
                "name: service-test",
                "name: service-test\ntraining: {sft: {hyperparameters: {lr: 1}}}",
            ),
            "training.sft",
        ),
    ],
)
async def test_an_invalid_spec_is_rejected_naming_the_field_and_nothing_is_stored(
    flywheel: pb_grpc.FlywheelServiceStub, change: tuple[str, str], field: str
) -> None:
    spec = SPEC.replace(*change)
    code, details = await _code(flywheel.StartRun(pb.StartRunRequest(spec_yaml=spec)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details

    verdict = await flywheel.ValidateSpec(pb.ValidateSpecRequest(spec_yaml=spec))
    assert not verdict.valid
    assert any(violation.field.startswith(field) for violation in verdict.violations)
    assert not (await flywheel.ListRuns(pb.ListRunsRequest())).runs


async def test_overlapping_plan_slices_are_rejected(flywheel: pb_grpc.FlywheelServiceStub) -> None:
    spec = SPEC.replace("slices: 4", "slices: 8") + "iterations: 2\nstages: [sft]\n"
    spec += "plan: {1: {sft: 3}, 2: {sft: 3}}\n"
    verdict = await flywheel.ValidateSpec(pb.ValidateSpecRequest(spec_yaml=spec))
    assert [violation.field for violation in verdict.violations] == ["plan.2.sft"]
    assert "already used" in verdict.violations[0].message


async def test_a_valid_spec_is_normalized(flywheel: pb_grpc.FlywheelServiceStub) -> None:
    verdict = await flywheel.ValidateSpec(pb.ValidateSpecRequest(spec_yaml=SPEC))
    assert verdict.valid
    assert len(verdict.spec_sha256) == 64
    assert verdict.normalized_spec["stages"] == ["sft", "dpo", "rl"]


async def test_a_run_is_started_once_paused_resumed_cancelled_and_watched(
    flywheel: pb_grpc.FlywheelServiceStub,
) -> None:
    run = (await flywheel.StartRun(pb.StartRunRequest(spec_yaml=SPEC, run_id="r1"))).run
    assert run.state == pb.FLYWHEEL_RUN_STATE_RUNNING
    assert run.iterations_planned == 1
    assert run.incumbent_model == "target"
    again = (await flywheel.StartRun(pb.StartRunRequest(spec_yaml=SPEC, run_id="r1"))).run
    assert again.created_at == run.created_at  # the same request: the same run
    code, details = await _code(
        flywheel.StartRun(pb.StartRunRequest(spec_yaml=SPEC + "\n# edited\n", run_id="r1"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "another spec" in details

    latest = (await flywheel.GetRun(pb.GetRunRequest(run_id="latest"))).run
    assert latest.run_id == "r1"
    assert [step.position.step for step in latest.steps][:2] == [
        pb.STEP_SPLIT,
        pb.STEP_BUILD_TEST_SET,
    ]

    updates = flywheel.StreamRunProgress(pb.StreamRunProgressRequest(run_id="r1"))
    first = await updates.read()
    assert first.run.state == pb.FLYWHEEL_RUN_STATE_RUNNING

    paused = (await flywheel.PauseRun(pb.PauseRunRequest(run_id="r1", reason="maintenance"))).run
    assert paused.state == pb.FLYWHEEL_RUN_STATE_PAUSED
    assert paused.pause_reason == "maintenance"
    code, _ = await _code(flywheel.PauseRun(pb.PauseRunRequest(run_id="r1")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    resumed = (await flywheel.ResumeRun(pb.ResumeRunRequest(run_id="r1"))).run
    assert resumed.state == pb.FLYWHEEL_RUN_STATE_RUNNING

    cancelled = (await flywheel.CancelRun(pb.CancelRunRequest(run_id="r1", reason="done"))).run
    assert cancelled.state == pb.FLYWHEEL_RUN_STATE_CANCELLED
    assert cancelled.failure.message == "done"
    states = []
    while True:
        update = await asyncio.wait_for(updates.read(), 10)
        if update is grpc.aio.EOF:
            break
        if update.HasField("run"):
            states.append(update.run.state)
    assert states[-1] == pb.FLYWHEEL_RUN_STATE_CANCELLED
    assert pb.FLYWHEEL_RUN_STATE_PAUSED in states

    code, _ = await _code(flywheel.ResumeRun(pb.ResumeRunRequest(run_id="r1")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    runs = (await flywheel.ListRuns(pb.ListRunsRequest(state=pb.FLYWHEEL_RUN_STATE_CANCELLED))).runs
    assert [listed.run_id for listed in runs] == ["r1"]


async def test_unknown_runs_and_bad_arguments_get_clear_codes(
    flywheel: pb_grpc.FlywheelServiceStub,
) -> None:
    code, details = await _code(flywheel.GetRun(pb.GetRunRequest(run_id="nope")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "nope" in details
    code, _ = await _code(flywheel.GetRun(pb.GetRunRequest(run_id="latest")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = await _code(
        flywheel.StartRun(pb.StartRunRequest(spec_yaml=SPEC, run_id="Not Valid"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_id" in details
    code, details = await _code(flywheel.StartRun(pb.StartRunRequest(spec_yaml="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec_yaml" in details
    code, _ = await _code(
        flywheel.ListRuns(pb.ListRunsRequest(page=common_pb2.PageRequest(page_token="x")))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
