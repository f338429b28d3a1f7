"""Kubernetes: each attempt is a Job (one node), an Indexed Job with a headless Service (several
nodes), or a Kubeflow TrainJob / PyTorchJob when the cluster serves that resource and the chart
enabled it. Watches status, streams logs, cancels and cleans up through `KubeApi` only.

Jobs outlive the service: after a restart `attach` finds a running job by its deterministic name
and the supervisor follows it again. Logs are read from pod 0 (node rank 0), which prints the
worker's progress markers; `StreamRunLogs` without follow reads every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from arena_core.errors import AlreadyExistsError
from arena_training.domain.job import JOB_ENV
from arena_training.domain.launch import launch_command
from arena_training.k8s import manifests
from arena_training.k8s.api import KubeApi
from arena_training.k8s.manifests import (
    ANNOTATION_RUN_ID,
    COMPLETION_INDEX,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_RUN,
    PYTORCHJOB,
    TRAINJOB,
    SecretRef,
    TrainingPod,
    job_name,
    label_value,
)
from arena_training.runners.base import (
    JobHandle,
    JobPhase,
    JobStatus,
    LaunchRequest,
    LogLine,
)
from arena_training.settings import KubernetesOptions

log = logging.getLogger(__name__)

_CUSTOM = {"trainjob": TRAINJOB, "pytorchjob": PYTORCHJOB}
# Waiting reasons that never clear by themselves.
_STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}


class KubernetesRunner:
    kind = "kubernetes"
    detach_on_shutdown = True

    def __init__(
        self,
        api: KubeApi,
        options: KubernetesOptions,
        work_dir: Path,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._api = api
        self._options = options
        self._work_dir = work_dir
        self._sleep = sleep
        self._backends: dict[str, bool] = {}

    # --- building ----------------------------------------------------------------------------

    async def backend(self) -> str:
        """job, trainjob or pytorchjob: what the settings ask for and the cluster serves."""
        chosen = self._options.backend
        if chosen != "auto":
            return chosen
        if not self._options.kubeflow:
            return "job"
        for name in ("trainjob", "pytorchjob"):
            if name not in self._backends:
                group, version, plural, _ = _CUSTOM[name]
                self._backends[name] = await asyncio.to_thread(
                    self._api.has_resource, group, version, plural
                )
            if self._backends[name]:
                return name
        return "job"

    def training_pod(self, request: LaunchRequest, backend: str) -> TrainingPod:
        options = self._options
        placement = request.placement
        name = job_name(request.run_id, request.attempt)
        command = launch_command(
            "torchrun",
            python="python",
            processes_per_node=placement.processes_per_node,
            job_file=None,
            num_nodes=placement.num_nodes,
            # Indexed Jobs get PET_* from the manifest; Kubeflow's operators set them.
            rendezvous_from_env=placement.num_nodes > 1 or backend != "job",
        )
        env = {
            **options.env,
            JOB_ENV: request.job.to_json(),
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "XDG_CACHE_HOME": "/tmp/.cache",
            "ARENA_TRAINING_RUN_ID": request.run_id,
        }
        if options.checkpoint_claim:
            env.setdefault("HF_HOME", f"{options.checkpoint_dir}/.cache/huggingface")
        labels = {
            **options.pod_labels,
            LABEL_RUN: label_value(request.run_id),
            LABEL_ATTEMPT: str(request.attempt),
        }
        return TrainingPod(
            name=name,
            namespace=options.namespace,
            image=placement.image or options.image,
            command=command,
            env=env,
            secret_env={
                key: SecretRef(ref.secret, ref.key) for key, ref in options.secret_env.items()
            },
            env_from_secrets=tuple(options.env_from_secrets),
            num_nodes=placement.num_nodes,
            gpus_per_node=placement.gpus_per_node,
            gpu_resource=options.gpu_resource,
            cpu=placement.cpu,
            memory=placement.memory,
            node_selector=dict(placement.node_selector),
            tolerations=tuple(placement.tolerations),
            shm_size=options.shm_size,
            checkpoint_claim=options.checkpoint_claim,
            checkpoint_dir=options.checkpoint_dir,
            service_account=options.service_account,
            priority_class_name=placement.priority_class_name,
            image_pull_policy=options.image_pull_policy,
            image_pull_secrets=tuple(options.image_pull_secrets),
            labels=labels,
            annotations={ANNOTATION_RUN_ID: request.run_id},
            run_as_user=options.run_as_user,
            fs_group=options.fs_group,
            ttl_seconds_after_finished=options.ttl_seconds_after_finished,
            active_deadline_seconds=options.active_deadline_seconds,
            master_port=options.master_port,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, request: LaunchRequest) -> JobHandle:
        backend = await self.backend()
        pod = self.training_pod(request, backend)
        try:
            if backend == "job":
                if pod.num_nodes > 1:
                    job, service = manifests.multi_node_job(pod)
                    with contextlib.suppress(AlreadyExistsError):
                        await asyncio.to_thread(self._api.create_service, service)
                else:
                    job = manifests.single_node_job(pod)
                await asyncio.to_thread(self._api.create_job, job)
            else:
                group, version, plural, _ = _CUSTOM[backend]
                body = (
                    manifests.train_job(pod, self._options.training_runtime)
                    if backend == "trainjob"
                    else manifests.pytorch_job(pod)
                )
                await asyncio.to_thread(self._api.create_custom, group, version, plural, body)
        except AlreadyExistsError:
            # Created before a crash cut the previous call short: the same attempt, adopt it.
            log.info("training job already exists; adopting it", extra={"job": pod.name})
        log.info(
            "created training job",
            extra={"run_id": request.run_id, "job": pod.name, "backend": backend},
        )
        return JobHandle(
            self.kind, request.run_id, request.attempt, pod.name, backend, pod.num_nodes
        )

    async def attach(self, run_id: str, attempt: int, name: str) -> JobHandle | None:
        for backend in ("job", "trainjob", "pytorchjob"):
            if backend != "job" and not self._options.kubeflow:
                break
            handle = JobHandle(self.kind, run_id, attempt, name, backend)
            status = await self.status(handle)
            if status.phase is not JobPhase.GONE:
                nodes = await self._node_count(handle)
                return JobHandle(self.kind, run_id, attempt, name, backend, nodes)
        return None

    async def _node_count(self, handle: JobHandle) -> int:
        if handle.kind == "job":
            job = await asyncio.to_thread(self._api.read_job, handle.name)
            if job is not None and job.spec is not None and job.spec.completions:
                return int(job.spec.completions)
        return 1

    async def status(self, handle: JobHandle) -> JobStatus:
        if handle.kind in _CUSTOM:
            return await self._custom_status(handle)
        job = await asyncio.to_thread(self._api.read_job, handle.name)
        if job is None:
            return JobStatus(JobPhase.GONE, reason="NotFound", message="the Job no longer exists")
        job_conditions = (job.status.conditions if job.status else None) or []
        conditions = {c.type: c for c in job_conditions if c.status == "True"}
        pods = await asyncio.to_thread(self._api.list_pods, f"{LABEL_JOB}={handle.name}")
        exit_code, pod_reason, pod_message = _pod_diagnosis(pods)
        if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
            return JobStatus(JobPhase.SUCCEEDED, exit_code=exit_code or 0)
        if "Failed" in conditions or "FailureTarget" in conditions:
            condition = conditions.get("Failed") or conditions["FailureTarget"]
            return JobStatus(
                JobPhase.FAILED,
                exit_code=exit_code,
                reason=pod_reason or condition.reason or "Failed",
                message=pod_message or condition.message or "",
            )
        if pod_reason in _STUCK:
            return JobStatus(JobPhase.FAILED, reason=pod_reason, message=pod_message)
        active = job.status.active if job.status else 0
        if any(p.status is not None and p.status.phase == "Running" for p in pods):
            return JobStatus(JobPhase.RUNNING)
        return JobStatus(
            JobPhase.RUNNING if active and not pod_reason else JobPhase.PENDING,
            reason=pod_reason,
            message=pod_message,
        )

    async def _custom_status(self, handle: JobHandle) -> JobStatus:
        group, version, plural, kind = _CUSTOM[handle.kind]
        found = await asyncio.to_thread(self._api.read_custom, group, version, plural, handle.name)
        if found is None:
            return JobStatus(JobPhase.GONE, reason="NotFound", message=f"the {kind} is gone")
        conditions = {
            c.get("type"): c
            for c in (found.get("status") or {}).get("conditions") or []
            if c.get("status") == "True"
        }
        pods = await asyncio.to_thread(self._api.list_pods, f"{LABEL_JOB}={handle.name}")
        exit_code, pod_reason, pod_message = _pod_diagnosis(pods)
        for success in ("Succeeded", "Complete"):
            if success in conditions:
                return JobStatus(JobPhase.SUCCEEDED, exit_code=exit_code or 0)
        if "Failed" in conditions:
            condition = conditions["Failed"]
            return JobStatus(
                JobPhase.FAILED,
                exit_code=exit_code,
                reason=pod_reason or str(condition.get("reason") or "Failed"),
                message=pod_message or str(condition.get("message") or ""),
            )
        if pod_reason in _STUCK:
            return JobStatus(JobPhase.FAILED, reason=pod_reason, message=pod_message)
        if "Running" in conditions or any(
            p.status is not None and p.status.phase == "Running" for p in pods
        ):
            return JobStatus(JobPhase.RUNNING)
        return JobStatus(JobPhase.PENDING, reason=pod_reason, message=pod_message)

    async def wait(self, handle: JobHandle) -> JobStatus:
        while True:
            status = await self.status(handle)
            if status.finished:
                return status
            await self._sleep(self._options.poll_seconds)

    async def logs(
        self, handle: JobHandle, *, follow: bool, tail_lines: int | None = None
    ) -> AsyncIterator[LogLine]:
        if not handle.name:  # an earlier attempt: its name follows from the run id
            handle = replace(handle, name=job_name(handle.run_id, handle.attempt))
        pods = await self._pods_when_started(handle, wait=follow)
        if not pods:
            return
        if follow:
            pods = pods[:1]  # rank 0 prints the markers; following every node would interleave
        for rank, pod_name in pods:
            async for line in self._pod_lines(handle, pod_name, rank, follow, tail_lines):
                yield line

    async def _pods_when_started(self, handle: JobHandle, *, wait: bool) -> list[tuple[int, str]]:
        """(node rank, pod name) of the job's pods once they run (or ended), rank 0 first."""
        while True:
            pods = await asyncio.to_thread(self._api.list_pods, f"{LABEL_JOB}={handle.name}")
            started = [
                (_rank(pod), str(pod.metadata.name))
                for pod in pods
                if pod.metadata is not None
                and pod.status is not None
                and pod.status.phase in ("Running", "Succeeded", "Failed")
            ]
            if started or not wait:
                return sorted(started)
            if (await self.status(handle)).finished:
                return []
            await self._sleep(self._options.poll_seconds)

    async def _pod_lines(
        self, handle: JobHandle, pod: str, rank: int, follow: bool, tail_lines: int | None
    ) -> AsyncIterator[LogLine]:
        container = {"trainjob": "node", "pytorchjob": "pytorch"}.get(handle.kind, "trainer")
        last_seen: str | None = None
        since: int | None = None
        while True:
            lines = _in_thread(
                functools.partial(
                    self._api.pod_log_lines,
                    pod,
                    container=container,
                    follow=follow,
                    tail_lines=tail_lines,
                    since_seconds=since,
                )
            )
            async for raw in lines:
                stamp, _, text = raw.partition(" ")
                if last_seen is not None and stamp <= last_seen:
                    continue  # already sent before the stream was reopened
                last_seen = stamp
                yield LogLine(text=text, node_rank=rank, time=_parse_time(stamp))
            if not follow or (await self.status(handle)).finished:
                return
            # The API server closes long streams; reopen from a little before the last line.
            since, tail_lines = 60, None
            await self._sleep(1.0)

    async def cancel(self, handle: JobHandle) -> None:
        if handle.kind in _CUSTOM:
            group, version, plural, _ = _CUSTOM[handle.kind]
            await asyncio.to_thread(self._api.delete_custom, group, version, plural, handle.name)
        else:
            await asyncio.to_thread(self._api.delete_job, handle.name)
        if handle.kind == "job" and handle.num_nodes > 1:
            await asyncio.to_thread(self._api.delete_service, handle.name)

    async def cleanup(self, handle: JobHandle) -> None:
        """The headless Service goes at once; a finished Job stays for its TTL (for its logs),
        one that never finishes by itself (pods stuck pulling an image) is deleted."""
        if handle.kind == "job" and handle.num_nodes > 1:
            await asyncio.to_thread(self._api.delete_service, handle.name)
        if not await self._ended_by_itself(handle):
            await self.cancel(handle)

    async def _ended_by_itself(self, handle: JobHandle) -> bool:
        if handle.kind in _CUSTOM:
            group, version, plural, _ = _CUSTOM[handle.kind]
            found = await asyncio.to_thread(
                self._api.read_custom, group, version, plural, handle.name
            )
            if found is None:
                return True
            conditions = (found.get("status") or {}).get("conditions") or []
            return any(
                c.get("status") == "True" and c.get("type") in ("Succeeded", "Complete", "Failed")
                for c in conditions
            )
        job = await asyncio.to_thread(self._api.read_job, handle.name)
        if job is None:
            return True
        conditions = (job.status.conditions if job.status else None) or []
        return any(
            c.status == "True" and c.type in ("Complete", "Failed", "SuccessCriteriaMet")
            for c in conditions
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._api.close)


def _rank(pod: client.V1Pod) -> int:
    metadata = pod.metadata
    values = {**(metadata.labels or {}), **(metadata.annotations or {})} if metadata else {}
    for key in (COMPLETION_INDEX, "training.kubeflow.org/replica-index"):
        if str(values.get(key, "")).isdigit():
            index = int(values[key])
            if values.get("training.kubeflow.org/replica-type", "master").lower() == "worker":
                index += 1  # PyTorchJob workers come after the master
            return index
    return 0


def _pod_diagnosis(pods: list[client.V1Pod]) -> tuple[int | None, str, str]:
    """(exit code of rank 0, reason, message) from the pods: OOM kills, image pulls, scheduling."""
    exit_code: int | None = None
    for pod in sorted(pods, key=_rank):
        status = pod.status
        if status is None:
            continue
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return None, condition.reason or "Unschedulable", condition.message or ""
        for container_status in status.container_statuses or []:
            state = container_status.state
            if state is None:
                continue
            if state.terminated is not None:
                terminated = state.terminated
                if exit_code is None:
                    exit_code = terminated.exit_code
                if terminated.reason == "OOMKilled":
                    return (
                        terminated.exit_code,
                        "OOM",
                        f"container of pod {pod.metadata.name if pod.metadata else '?'} was "
                        "OOM-killed (raise the memory limit or lower the batch size)",
                    )
            if state.waiting is not None and state.waiting.reason in _STUCK:
                return None, state.waiting.reason, state.waiting.message or ""
    return exit_code, "", ""


def _parse_time(stamp: str) -> datetime | None:
    try:
        # RFC 3339 with nanoseconds: keep microseconds for datetime.
        head, _, fraction = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(fraction + '000000')[:6]}+00:00")
    except ValueError:
        return None


async def _in_thread(factory: Callable[[], Iterator[str]]) -> AsyncIterator[str]:
    """Runs a blocking line iterator in a thread, yielding its lines here."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def produce() -> None:
        try:
            for line in factory():
                if stop.is_set():
                    return
                put(("line", line))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(("error", error))
        else:
            put(("end", None))

    thread = threading.Thread(target=produce, name="k8s-log-stream", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "line":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
