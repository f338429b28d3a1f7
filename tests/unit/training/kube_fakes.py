"""A scripted stand-in for `KubeApi`: records every call and answers from in-memory objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from arena_core.errors import AlreadyExistsError
from arena_training.domain.job import DataFiles, ModelLocation, TrainingJob
from arena_training.domain.recipes import Stage, build_recipe
from arena_training.k8s.manifests import LABEL_JOB
from arena_training.runners.base import LaunchRequest, Placement


@dataclass
class FakeKubeApi:
    namespace: str = "training"
    calls: list[tuple[str, Any]] = field(default_factory=list)
    jobs: dict[str, client.V1Job] = field(default_factory=dict)
    services: dict[str, client.V1Service] = field(default_factory=dict)
    customs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, list[client.V1Pod]] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)
    served: set[tuple[str, str, str]] = field(default_factory=set)

    def create_job(self, job: client.V1Job) -> None:
        self.calls.append(("create_job", job))
        if job.metadata.name in self.jobs:
            raise AlreadyExistsError(job.metadata.name)
        self.jobs[job.metadata.name] = job

    def read_job(self, name: str) -> client.V1Job | None:
        self.calls.append(("read_job", name))
        return self.jobs.get(name)

    def delete_job(self, name: str) -> None:
        self.calls.append(("delete_job", name))
        self.jobs.pop(name, None)
        self.pods.pop(name, None)

    def create_service(self, service: client.V1Service) -> None:
        self.calls.append(("create_service", service))
        self.services[service.metadata.name] = service

    def delete_service(self, name: str) -> None:
        self.calls.append(("delete_service", name))
        self.services.pop(name, None)

    def list_pods(self, label_selector: str) -> list[client.V1Pod]:
        self.calls.append(("list_pods", label_selector))
        key, _, value = label_selector.partition("=")
        assert key == LABEL_JOB
        return list(self.pods.get(value, []))

    def pod_log_lines(
        self,
        pod: str,
        *,
        container: str | None,
        follow: bool,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
    ) -> Iterator[str]:
        self.calls.append(("pod_log_lines", (pod, container, follow, tail_lines, since_seconds)))
        lines = self.logs.get(pod, [])
        yield from lines[-tail_lines:] if tail_lines else lines

    def has_resource(self, group: str, version: str, plural: str) -> bool:
        self.calls.append(("has_resource", (group, version, plural)))
        return (group, version, plural) in self.served

    def create_custom(self, group: str, version: str, plural: str, body: dict[str, Any]) -> None:
        self.calls.append(("create_custom", (group, version, plural, body)))
        self.customs[body["metadata"]["name"]] = body

    def read_custom(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        self.calls.append(("read_custom", (group, version, plural, name)))
        return self.customs.get(name)

    def delete_custom(self, group: str, version: str, plural: str, name: str) -> None:
        self.calls.append(("delete_custom", (group, version, plural, name)))
        self.customs.pop(name, None)

    def close(self) -> None:
        self.calls.append(("close", None))

    # --- scripting -----------------------------------------------------------------------

    def set_job_condition(self, name: str, condition: str, reason: str = "") -> None:
        job = self.jobs[name]
        job.status = client.V1JobStatus(
            conditions=[client.V1JobCondition(type=condition, status="True", reason=reason)]
        )

    def add_pod(
        self,
        job: str,
        name: str,
        *,
        phase: str = "Running",
        index: int = 0,
        terminated: tuple[int, str] | None = None,
        waiting: str | None = None,
        unschedulable: str | None = None,
    ) -> None:
        state = client.V1ContainerState()
        if terminated is not None:
            state.terminated = client.V1ContainerStateTerminated(
                exit_code=terminated[0], reason=terminated[1]
            )
        if waiting is not None:
            state.waiting = client.V1ContainerStateWaiting(reason=waiting, message=waiting)
        conditions = None
        if unschedulable is not None:
            conditions = [
                client.V1PodCondition(
                    type="PodScheduled",
                    status="False",
                    reason="Unschedulable",
                    message=unschedulable,
                )
            ]
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name,
                labels={LABEL_JOB: job, "batch.kubernetes.io/job-completion-index": str(index)},
            ),
            status=client.V1PodStatus(
                phase=phase,
                conditions=conditions,
                container_statuses=[
                    client.V1ContainerStatus(
                        name="trainer",
                        image="img",
                        image_id="",
                        ready=phase == "Running",
                        restart_count=0,
                        state=state,
                    )
                ],
            ),
        )
        self.pods.setdefault(job, []).append(pod)


def launch_request(
    tmp_path: Path,
    *,
    run_id: str = "flywheel-r1-i2-sft",
    attempt: int = 1,
    num_nodes: int = 1,
    gpus: int = 8,
) -> LaunchRequest:
    job = TrainingJob(
        run_id=run_id,
        attempt=attempt,
        recipe=build_recipe(Stage.SFT, deepspeed={"zero_stage": 3}),
        base=ModelLocation(path="/checkpoints/models/base"),
        datasets=(DataFiles(dataset_id="ds1", format="jsonl", files=("/checkpoints/d/1.jsonl",)),),
        output_dir=f"/checkpoints/runs/{run_id}/output",
        final_dir=f"/checkpoints/checkpoints/target/ckpt-{run_id}",
        checkpoint_id=f"ckpt-{run_id}",
        model_name="target",
        world_size=num_nodes * max(gpus, 1),
    )
    return LaunchRequest(
        run_id=run_id,
        attempt=attempt,
        job=job,
        run_dir=tmp_path / run_id,
        placement=Placement(
            runner="kubernetes",
            num_nodes=num_nodes,
            gpus_per_node=gpus,
            cpu="32",
            memory="512Gi",
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=(
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {
                    "key": "spot",
                    "operator": "Equal",
                    "value": "true",
                    "tolerationSeconds": 300,
                    "effect": "NoExecute",
                },
            ),
            image="ghcr.io/arena-flywheel/arena-training-gpu:1.0",
            priority_class_name="training",
        ),
    )
