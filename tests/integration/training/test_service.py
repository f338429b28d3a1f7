"""The training service end to end: a real nats-server, real gRPC, the work queue, and real
worker processes training a tiny random model with TRL on the CPU.

- Each recipe (SFT, DPO, reward model, RL) trains through the service from datasets in the
  selection service's published format (one resolved through the dataset catalog by id), its
  checkpoint is registered with lineage before the run finishes, and the inference service's
  transformers backend loads it.
- Bad requests are rejected before any job starts, over gRPC and over the work queue.
- A worker killed mid-run resumes from its last checkpoint, and a restarted service loses
  nothing: the run continues from its state in JetStream KV.
"""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from arena.common.v1 import common_pb2
from arena.selection.v1 import selection_service_pb2, selection_service_pb2_grpc
from arena.training.v1 import events_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena_cli.nats_server import free_port
from arena_training.settings import LocalRunnerOptions
from tests.integration.training.harness import (
    RunningService,
    publish_request,
    settings_for,
    training_events,
    training_service,
    wait_for_run,
)
from tests.integration.training.specs import run_spec
from tests.support.tiny_models import tiny_chat_model
from tests.unit.training.data import (
    preference_records,
    prompt_records,
    sft_records,
    write_dataset,
)

pytestmark = pytest.mark.slow

SUCCEEDED = pb.TRAINING_RUN_STATE_SUCCEEDED


class Catalog(selection_service_pb2_grpc.SelectionServiceServicer):
    """The selection service's dataset catalog, as far as training uses it."""

    def __init__(self, *refs: common_pb2.DatasetRef) -> None:
        self.refs = {ref.dataset_id: ref for ref in refs}

    async def GetDataset(self, request: Any, context: Any) -> Any:
        ref = self.refs.get(request.dataset_id)
        if ref is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no dataset {request.dataset_id}")
        response = selection_service_pb2.GetDatasetResponse()
        response.dataset.ref.CopyFrom(ref)
        response.dataset.stage = common_pb2.TRAINING_STAGE_DPO
        return response


async def start_catalog(*refs: common_pb2.DatasetRef) -> tuple[aio.Server, str]:
    server = aio.server()
    selection_service_pb2_grpc.add_SelectionServiceServicer_to_server(Catalog(*refs), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def watch_until_done(service: RunningService, run_id: str) -> list[Any]:
    """Every StreamRunEvents message of a run, until the stream ends at its terminal state."""
    seen = []
    async for event in service.stub.StreamRunEvents(pb.StreamRunEventsRequest(run_id=run_id)):
        seen.append(event)
    return seen


async def logs(service: RunningService, run_id: str, **request: Any) -> list[str]:
    lines = []
    async for chunk in service.stub.StreamRunLogs(
        pb.StreamRunLogsRequest(run_id=run_id, **request)
    ):
        lines.extend(line.text for line in chunk.lines)
    return lines


async def checkpoint_of(service: RunningService, run: pb.TrainingRun) -> pb.Checkpoint:
    response = await service.stub.GetCheckpoint(
        pb.GetCheckpointRequest(checkpoint_id=run.checkpoint_id)
    )
    return response.checkpoint


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def local_path(uri: str) -> str:
    return uri.removeprefix("file://")


async def assert_inference_loads(checkpoint: pb.Checkpoint) -> None:
    """The inference service's transformers backend loads the checkpoint (or base + adapter)."""
    from arena_inference.backends.transformers_backend import TransformersBackend
    from arena_inference.domain.types import AdapterSpec, BackendKind, ModelSpec

    path = local_path(checkpoint.artifact.uri)
    if checkpoint.format == pb.CHECKPOINT_FORMAT_ADAPTER:
        backend = TransformersBackend(
            ModelSpec(name="base", backend=BackendKind.TRANSFORMERS, uri=str(tiny_chat_model()))
        )
        await backend.load()
        await backend.load_adapter(AdapterSpec(name=checkpoint.model_name, uri=path))
        assert checkpoint.model_name in backend.loaded_adapters
    else:
        backend = TransformersBackend(
            ModelSpec(name=checkpoint.model_name, backend=BackendKind.TRANSFORMERS, uri=path)
        )
        await backend.load()
    await backend.unload()


async def test_each_recipe_trains_end_to_end_through_the_service(
    nats_url: str, tmp_path: Path
) -> None:
    model = tiny_chat_model()
    data = tmp_path / "published"
    sft = write_dataset(data, "sft-i1", "sft", sft_records(range(24)))
    pairs = write_dataset(data, "dpo-i1", "preference", preference_records(range(24)))
    prompts = write_dataset(data, "rl-i1", "prompts", prompt_records(range(16)))
    catalog, catalog_address = await start_catalog(pairs)
    settings = settings_for(
        nats_url, tmp_path / "work", max_concurrent_runs=2, selection_target=catalog_address
    )
    try:
        async with training_service(settings) as service:
            base = pb.ModelSource(uri=str(model))
            # SFT over the work queue, the reward model over gRPC; both at once.
            sft_request = await publish_request(
                service.js,
                "i1-sft",
                run_spec("sft", base=base, datasets=[sft], name="target-i1-sft", lora=True),
                flywheel_run="flywheel-1",
                iteration=1,
            )
            started = await service.stub.StartRun(
                pb.StartRunRequest(
                    run_id="i1-rm",
                    spec=run_spec("reward_model", base=base, datasets=[pairs], name="rm-i1"),
                )
            )
            assert started.run.state == pb.TRAINING_RUN_STATE_PENDING
            rm_events = await watch_until_done(service, "i1-rm")
            sft_run = await wait_for_run(service.stub, "i1-sft")
            rm_run = rm_events[-1].run
            assert (sft_run.state, rm_run.state) == (SUCCEEDED, SUCCEEDED), (sft_run, rm_run)
            assert any(e.WhichOneof("event") == "progress" for e in rm_events)

            # DPO on the SFT adapter, its data named only by id (resolved by the catalog);
            # RL on the same base with the trained reward model as its reward.
            sft_checkpoint = await checkpoint_of(service, sft_run)
            rm_checkpoint = await checkpoint_of(service, rm_run)
            dpo_spec = run_spec(
                "dpo",
                base=pb.ModelSource(checkpoint_id=sft_checkpoint.checkpoint_id),
                datasets=[common_pb2.DatasetRef(dataset_id=pairs.dataset_id)],
                name="target-i1-dpo",
                max_steps=4,
            )
            await service.stub.StartRun(pb.StartRunRequest(run_id="i1-dpo", spec=dpo_spec))
            rl_spec = run_spec(
                "rl",
                base=pb.ModelSource(uri=str(model)),
                datasets=[prompts],
                name="target-i1-rl",
                reward_checkpoint=rm_checkpoint.checkpoint_id,
                max_steps=2,
                learning_rate=1e-3,
            )
            await publish_request(
                service.js, "i1-rl", rl_spec, flywheel_run="flywheel-1", iteration=1
            )
            dpo_run = await wait_for_run(service.stub, "i1-dpo")
            rl_run = await wait_for_run(service.stub, "i1-rl")
            assert (dpo_run.state, rl_run.state) == (SUCCEEDED, SUCCEEDED), (dpo_run, rl_run)

            runs = {"sft": sft_run, "reward_model": rm_run, "dpo": dpo_run, "rl": rl_run}
            checkpoints = {name: await checkpoint_of(service, run) for name, run in runs.items()}

            # Lineage: recipe, datasets and base of every checkpoint.
            assert checkpoints["sft"].format == pb.CHECKPOINT_FORMAT_ADAPTER
            assert checkpoints["sft"].recipe.HasField("lora")
            assert checkpoints["sft"].datasets[0].dataset_id == sft.dataset_id
            assert checkpoints["sft"].base.uri == str(model)
            assert checkpoints["dpo"].base.checkpoint_id == sft_checkpoint.checkpoint_id
            assert checkpoints["dpo"].datasets[0].files[0].uri == pairs.files[0].uri
            assert checkpoints["dpo"].recipe.dpo.beta == pytest.approx(0.3)
            assert checkpoints["reward_model"].stage == common_pb2.TRAINING_STAGE_REWARD_MODEL
            assert checkpoints["rl"].recipe.rl.reward_model.checkpoint_id == (
                rm_checkpoint.checkpoint_id
            )
            assert checkpoints["dpo"].final_metrics["rewards/accuracies"] >= 0.5
            listed = await service.stub.ListCheckpoints(
                pb.ListCheckpointsRequest(model_name="target-i1-dpo")
            )
            assert [c.checkpoint_id for c in listed.checkpoints] == [dpo_run.checkpoint_id]

            # Events: started, progress, the checkpoint, then the end; requests' ids carried.
            for name, run in runs.items():
                kinds = [type(e).__name__ for e in await training_events(service.js, run.run_id)]
                assert kinds[0] == "TrainingRunStarted", name
                assert "TrainingProgressReported" in kinds, name
                assert kinds[-2:] == ["CheckpointRegistered", "TrainingRunFinished"], name
            sft_events = await training_events(service.js, "i1-sft")
            assert {e.metadata.causation_id for e in sft_events} == {sft_request.metadata.event_id}
            assert all(e.context.iteration == 1 for e in sft_events)

            # Logs and metrics.
            tail = await logs(service, "i1-sft", tail_lines=20)
            assert any('"kind":"result"' in line for line in tail)
            metrics = await asyncio.to_thread(scrape, settings.metrics.port)
            for line in (
                'arena_training_loss{recipe="dpo",run="i1-dpo"}',
                'arena_training_runs_total{recipe="sft",status="succeeded"}',
                'arena_training_runs_total{recipe="rl",status="succeeded"}',
            ):
                assert line in metrics, line
            assert "arena_training_tokens_per_second" in metrics
            assert "arena_training_eta_seconds" in metrics

            # Each checkpoint loads where it will be served.
            for name in ("sft", "dpo", "rl"):
                await assert_inference_loads(checkpoints[name])
            import transformers

            scorer = transformers.AutoModelForSequenceClassification.from_pretrained(
                local_path(checkpoints["reward_model"].artifact.uri)
            )
            assert scorer.config.num_labels == 1
    finally:
        await catalog.stop(None)


async def test_bad_requests_are_rejected_before_any_job_starts(
    nats_url: str, tmp_path: Path
) -> None:
    model = tiny_chat_model()
    sft = write_dataset(tmp_path / "data", "sft", "sft", sft_records(range(8)))
    pairs = write_dataset(tmp_path / "data", "pairs", "preference", preference_records(range(8)))
    base = pb.ModelSource(uri=str(model))
    out_of_range = run_spec("dpo", base=base, datasets=[pairs])
    out_of_range.recipe.dpo.beta = 0
    cases = [
        (
            run_spec("sft", base=base, datasets=[common_pb2.DatasetRef(dataset_id="ds-missing")]),
            grpc.StatusCode.NOT_FOUND,
            "spec.datasets[0]: unknown dataset 'ds-missing'",
        ),
        (
            out_of_range,
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.recipe.dpo.beta: must be in (0, 100]",
        ),
        (
            run_spec("sft", base=pb.ModelSource(uri="/models/missing"), datasets=[sft]),
            grpc.StatusCode.NOT_FOUND,
            "spec.base.uri: base model '/models/missing' is missing",
        ),
        (
            run_spec("dpo", base=base, datasets=[sft]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is a sft dataset, but a dpo run needs a preference dataset",
        ),
    ]
    settings = settings_for(nats_url, tmp_path / "work")
    async with training_service(settings) as service:
        for index, (spec, code, message) in enumerate(cases):
            with pytest.raises(aio.AioRpcError) as caught:
                await service.stub.StartRun(pb.StartRunRequest(run_id=f"bad-{index}", spec=spec))
            assert caught.value.code() == code
            assert message in (caught.value.details() or "")
        listed = await service.stub.ListRuns(pb.ListRunsRequest())
        assert not [r for r in listed.runs if r.run_id.startswith("bad-")]
        assert not (service.work_dir / "runs").exists() or not any(
            (service.work_dir / "runs").iterdir()
        )

        # Over the work queue the requester hears back: REJECTED, with the reason.
        request = await publish_request(service.js, "bad-queued", cases[1][0])
        run = await wait_for_run(service.stub, "bad-queued")
        assert run.state == pb.TRAINING_RUN_STATE_REJECTED
        assert run.failure.reason == "INVALID_ARGUMENT"
        assert "spec.recipe.dpo.beta" in run.failure.message
        finished_events = await training_events(service.js, "bad-queued")
        assert [type(e) for e in finished_events] == [events_pb2.TrainingRunFinished]
        assert finished_events[0].metadata.causation_id == request.metadata.event_id


async def _progress_at_least(service: RunningService, run_id: str, attempt: int, step: int) -> int:
    run = await wait_for_run(
        service.stub,
        run_id,
        lambda r: r.attempt == attempt and r.progress.progress.done >= step,
        timeout=120,
    )
    return int(run.job_name)


async def test_a_killed_run_resumes_and_a_restart_loses_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    sft = write_dataset(tmp_path / "data", "sft", "sft", sft_records(range(24)))
    spec = run_spec(
        "sft",
        base=pb.ModelSource(uri=str(tiny_chat_model())),
        datasets=[sft],
        max_steps=16,
        save_steps=2,
    )
    # Slow steps down so the test can interrupt the run in the middle.
    slow = LocalRunnerOptions(env={"ARENA_TRAINING_STEP_DELAY_SECONDS": "0.5"})
    work = tmp_path / "work"
    async with training_service(settings_for(nats_url, work, local=slow)) as service:
        await service.stub.StartRun(pb.StartRunRequest(run_id="resumable", spec=spec))
        pid = await _progress_at_least(service, "resumable", attempt=1, step=3)
        os.killpg(pid, signal.SIGKILL)  # the worker dies without a word
        await _progress_at_least(service, "resumable", attempt=2, step=5)
    # The service stopped mid-run (its local worker stopped with it); a new one takes over.
    async with training_service(settings_for(nats_url, work, local=slow)) as service:
        run = await wait_for_run(service.stub, "resumable", timeout=180)
        assert run.state == SUCCEEDED, run
        assert run.attempt == 3
        assert run.progress.progress.done == 16
        events = await training_events(service.js, "resumable")
        starts = [e for e in events if isinstance(e, events_pb2.TrainingRunStarted)]
        assert [s.attempt for s in starts] == [1, 2, 3]
        assert not starts[0].HasField("resumed_from_step")
        assert 2 <= starts[1].resumed_from_step < starts[2].resumed_from_step
        assert sum(isinstance(e, events_pb2.CheckpointRegistered) for e in events) == 1
        attempt_logs = await logs(service, "resumable")
        assert sum('"kind":"started"' in line for line in attempt_logs) == 3


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib in the metrics scrape must not go through a proxy configured for the registries.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
