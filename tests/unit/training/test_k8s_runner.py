"""The Kubernetes runner's logic against a scripted API: what it creates for one and several
nodes and for Kubeflow, how it reads job and pod status, follows logs, cancels and cleans up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from arena_training.domain.outcome import AttemptEnd, decide
from arena_training.k8s.manifests import PYTORCHJOB, TRAINJOB, job_name
from arena_training.runners.base import JobPhase
from arena_training.runners.kubernetes import KubernetesRunner
from arena_training.settings import KubernetesOptions

from .kube_fakes import FakeKubeApi, launch_request


def runner_for(api: FakeKubeApi, tmp_path: Path, **options: Any) -> KubernetesRunner:
    async def no_wait(seconds: float) -> None:
        return None

    settings = KubernetesOptions(namespace="training", image="img", **options)
    return KubernetesRunner(api, settings, tmp_path, sleep=no_wait)  # type: ignore[arg-type]


def created(api: FakeKubeApi) -> list[str]:
    return [name for name, _ in api.calls if name.startswith("create")]


async def test_one_node_is_one_job_and_its_status_follows_the_pods(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path))
    assert created(api) == ["create_job"]
    assert handle.name == job_name("flywheel-r1-i2-sft", 1)
    assert (handle.kind, handle.num_nodes) == ("job", 1)

    assert (await runner.status(handle)).phase is JobPhase.PENDING
    api.add_pod(handle.name, "p0", phase="Pending", unschedulable="0/4 nodes have 8 free GPUs")
    status = await runner.status(handle)
    assert (status.phase, status.reason) == (JobPhase.PENDING, "Unschedulable")
    assert "free GPUs" in status.message
    api.pods[handle.name] = []
    api.add_pod(handle.name, "p0", phase="Running")
    assert (await runner.status(handle)).phase is JobPhase.RUNNING
    api.pods[handle.name] = []
    api.add_pod(handle.name, "p0", phase="Succeeded", terminated=(0, "Completed"))
    api.set_job_condition(handle.name, "Complete")
    status = await runner.status(handle)
    assert (status.phase, status.exit_code) == (JobPhase.SUCCEEDED, 0)


async def test_an_oom_killed_pod_fails_the_run_without_a_retry(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path))
    api.add_pod(handle.name, "p0", phase="Failed", terminated=(137, "OOMKilled"))
    api.set_job_condition(handle.name, "Failed", reason="BackoffLimitExceeded")
    status = await runner.wait(handle)
    assert (status.phase, status.reason, status.exit_code) == (JobPhase.FAILED, "OOM", 137)
    decision = decide(
        AttemptEnd(exit_code=status.exit_code, runner_reason=status.reason),
        attempt=1,
        max_attempts=3,
    )
    assert (decision.action, decision.reason) == ("fail", "OOM")


async def test_an_image_that_cannot_be_pulled_fails_instead_of_waiting_forever(
    tmp_path: Path,
) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path))
    api.add_pod(handle.name, "p0", phase="Pending", waiting="ImagePullBackOff")
    status = await runner.status(handle)
    assert (status.phase, status.reason) == (JobPhase.FAILED, "ImagePullBackOff")
    decision = decide(
        AttemptEnd(runner_reason=status.reason, runner_message=status.message),
        attempt=1,
        max_attempts=3,
    )
    assert (decision.action, decision.reason) == ("fail", "IMAGE_PULL_FAILED")
    await runner.cleanup(handle)
    assert handle.name not in api.jobs  # it would never end by itself


async def test_several_nodes_get_an_indexed_job_and_a_headless_service(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path, num_nodes=4))
    assert created(api) == ["create_service", "create_job"]
    job = api.jobs[handle.name]
    assert job.spec.completion_mode == "Indexed"
    assert handle.num_nodes == 4
    api.set_job_condition(handle.name, "Complete")
    await runner.cleanup(handle)
    assert handle.name not in api.services
    assert handle.name in api.jobs  # kept until its TTL, for its logs


async def test_cancel_deletes_the_job_and_its_service(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path, num_nodes=2))
    await runner.cancel(handle)
    assert not api.jobs
    assert not api.services
    assert (await runner.status(handle)).phase is JobPhase.GONE


async def test_starting_an_attempt_again_adopts_the_existing_job(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    first = await runner.start(launch_request(tmp_path))
    again = await runner.start(launch_request(tmp_path))
    assert first == again
    assert len(api.jobs) == 1


async def test_attach_finds_a_job_that_outlived_a_restart(tmp_path: Path) -> None:
    api = FakeKubeApi()
    handle = await runner_for(api, tmp_path).start(launch_request(tmp_path, num_nodes=2))
    restarted = runner_for(api, tmp_path)
    attached = await restarted.attach(handle.run_id, handle.attempt, handle.name)
    assert attached == handle
    assert await restarted.attach(handle.run_id, 2, job_name(handle.run_id, 2)) is None


@pytest.mark.parametrize(
    ("served", "kubeflow", "expected"),
    [
        ({TRAINJOB[:3], PYTORCHJOB[:3]}, True, "trainjob"),
        ({PYTORCHJOB[:3]}, True, "pytorchjob"),
        (set(), True, "job"),
        ({TRAINJOB[:3]}, False, "job"),
    ],
)
async def test_kubeflow_jobs_when_enabled_and_served(
    tmp_path: Path, served: set[tuple[str, str, str]], kubeflow: bool, expected: str
) -> None:
    api = FakeKubeApi(served=served)
    runner = runner_for(api, tmp_path, kubeflow=kubeflow)
    handle = await runner.start(launch_request(tmp_path, num_nodes=2))
    assert handle.kind == expected
    if expected == "job":
        assert handle.name in api.jobs
        return
    body = api.customs[handle.name]
    assert body["kind"] == {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob"}[expected]
    assert (await runner.status(handle)).phase is JobPhase.PENDING
    body["status"] = {"conditions": [{"type": "Running", "status": "True"}]}
    assert (await runner.status(handle)).phase is JobPhase.RUNNING
    done = "Complete" if expected == "trainjob" else "Succeeded"
    body["status"] = {"conditions": [{"type": done, "status": "True"}]}
    assert (await runner.status(handle)).phase is JobPhase.SUCCEEDED
    await runner.cancel(handle)
    assert handle.name not in api.customs


async def test_logs_follow_rank_zero_and_read_every_node_otherwise(tmp_path: Path) -> None:
    api = FakeKubeApi()
    runner = runner_for(api, tmp_path)
    handle = await runner.start(launch_request(tmp_path, num_nodes=2))
    api.add_pod(handle.name, "p1", index=1)
    api.add_pod(handle.name, "p0", index=0)
    api.logs["p0"] = [
        "2026-01-01T00:00:00.123456789Z rank zero",
        '2026-01-01T00:00:01Z @@arena {"kind":"progress","step":1}',
    ]
    api.logs["p1"] = ["2026-01-01T00:00:00Z rank one"]
    api.set_job_condition(handle.name, "Complete")

    followed = [line async for line in runner.logs(handle, follow=True)]
    assert [(line.node_rank, line.text) for line in followed] == [
        (0, "rank zero"),
        (0, '@@arena {"kind":"progress","step":1}'),
    ]
    assert followed[0].time is not None
    assert followed[0].time.microsecond == 123456

    everything = [line async for line in runner.logs(handle, follow=False)]
    assert [line.node_rank for line in everything] == [0, 0, 1]


async def test_following_a_pending_job_waits_for_its_pod(tmp_path: Path) -> None:
    api = FakeKubeApi()
    handle_box: dict[str, Any] = {}
    sleeps = 0

    async def scripted_sleep(seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps == 2:  # the pod starts while the runner waits
            api.add_pod(handle_box["name"], "p0")
            api.logs["p0"] = ["2026-01-01T00:00:00Z hello"]
            api.set_job_condition(handle_box["name"], "Complete")

    runner = KubernetesRunner(
        api,  # type: ignore[arg-type]
        KubernetesOptions(namespace="training", image="img"),
        tmp_path,
        sleep=scripted_sleep,
    )
    handle = await runner.start(launch_request(tmp_path))
    handle_box["name"] = handle.name
    lines = [line.text async for line in runner.logs(handle, follow=True)]
    assert lines == ["hello"]
    assert sleeps >= 2
