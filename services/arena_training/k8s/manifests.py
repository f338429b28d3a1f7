"""Kubernetes objects for training jobs, built as `kubernetes.client` models (and plain dicts for
the Kubeflow custom resources), never as YAML text.

- One node: a `batch/v1` Job, one pod, ``torchrun --standalone`` over the node's GPUs.
- Several nodes: an Indexed Job (one pod per node) and a headless Service; pod 0 is the torchrun
  rendezvous (``<job>-0.<service>``), each pod's rank is its completion index. ``PET_*``
  variables carry the rendezvous so every pod runs the same command.
- Kubeflow, when installed: a TrainJob (``trainer.kubeflow.org/v1alpha1``, a ClusterTrainingRuntime
  such as ``torch-distributed``) or a PyTorchJob (``kubeflow.org/v1``); their operators set the
  ``PET_*`` variables.

Every pod: GPU requests and limits, node selector and tolerations, ``/dev/shm`` as a memory
volume (NCCL and data loaders need more than the default 64 MiB), the checkpoint volume (a PVC
shared with the service) or, without one, an ``emptyDir``, secrets only by reference, a non-root
read-only root filesystem with ``/tmp`` writable, and the job document in an environment
variable (no ConfigMap, so no ConfigMap permissions).

RBAC the training service needs, in its namespace only (`RBAC_RULES`, plus `KUBEFLOW_RBAC_RULES`
when Kubeflow jobs are enabled); the chart's ``role.yaml`` grants exactly these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from arena_core.hashing import content_hash

CONTAINER = "trainer"
MANAGED_BY = "arena-training"
LABEL_RUN = "arena-flywheel.io/run"
LABEL_ATTEMPT = "arena-flywheel.io/attempt"
LABEL_JOB = "arena-flywheel.io/job"
ANNOTATION_RUN_ID = "arena-flywheel.io/run-id"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
SHM_VOLUME = "dshm"
TMP_VOLUME = "tmp"
CHECKPOINT_VOLUME = "checkpoints"

TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
TRAINJOB_MANAGER = "arena-flywheel.io/training"


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def to_policy_rule(self) -> client.V1PolicyRule:
        return client.V1PolicyRule(
            api_groups=list(self.api_groups), resources=list(self.resources), verbs=list(self.verbs)
        )


RBAC_RULES = (
    Rule(("batch",), ("jobs",), ("create", "get", "list", "watch", "delete")),
    Rule(("",), ("services",), ("create", "get", "list", "delete")),
    Rule(("",), ("pods",), ("get", "list", "watch")),
    Rule(("",), ("pods/log",), ("get",)),
)
KUBEFLOW_RBAC_RULES = (
    Rule(("trainer.kubeflow.org",), ("trainjobs",), ("create", "get", "list", "watch", "delete")),
    Rule(("kubeflow.org",), ("pytorchjobs",), ("create", "get", "list", "watch", "delete")),
)


def rbac_role(name: str, namespace: str, *, kubeflow: bool = False) -> client.V1Role:
    """The Role the training service's service account needs (documentation and tests)."""
    rules = RBAC_RULES + (KUBEFLOW_RBAC_RULES if kubeflow else ())
    return client.V1Role(
        api_version="rbac.authorization.k8s.io/v1",
        kind="Role",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        rules=[rule.to_policy_rule() for rule in rules],
    )


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str


@dataclass(frozen=True)
class TrainingPod:
    """Everything that shapes a training job's pods, from settings and the run's placement."""

    name: str
    namespace: str
    image: str
    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, SecretRef] = field(default_factory=dict)
    env_from_secrets: Sequence[str] = ()
    num_nodes: int = 1
    gpus_per_node: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = ""
    memory: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    shm_size: str = "16Gi"
    checkpoint_claim: str = ""
    checkpoint_dir: str = "/checkpoints"
    service_account: str = ""
    priority_class_name: str = ""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: Sequence[str] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    run_as_user: int | None = None
    fs_group: int | None = None
    ttl_seconds_after_finished: int = 86400
    active_deadline_seconds: int | None = None
    master_port: int = 29500

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    @property
    def service_name(self) -> str:
        return self.name  # the headless Service of a multi-node job shares the Job's name


def job_name(run_id: str, attempt: int) -> str:
    """A DNS-1123 label from (run id, attempt), unique by a hash of the full run id.

    At most 47 characters, so an indexed pod's hostname ``<job>-<index>`` stays within 63.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:24].strip("-") or "run"
    return f"train-{slug}-{content_hash('k8s-job', run_id)[:6]}-a{attempt}"


def label_value(value: str) -> str:
    """A valid label value (63 characters, alphanumeric ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63]
    return cleaned.strip("-_.") or "x"


def _resources(pod: TrainingPod) -> client.V1ResourceRequirements:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if pod.gpus_per_node:
        # Extended resources must be requested and limited equally.
        requests[pod.gpu_resource] = limits[pod.gpu_resource] = str(pod.gpus_per_node)
    if pod.cpu:
        requests["cpu"] = pod.cpu
    if pod.memory:
        requests["memory"] = limits["memory"] = pod.memory
    return client.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def _env(pod: TrainingPod, extra: Sequence[client.V1EnvVar] = ()) -> list[client.V1EnvVar]:
    env = [client.V1EnvVar(name=name, value=value) for name, value in sorted(pod.env.items())]
    env += [
        client.V1EnvVar(
            name=name,
            value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name=ref.secret, key=ref.key)
            ),
        )
        for name, ref in sorted(pod.secret_env.items())
    ]
    return env + list(extra)


def _volumes(pod: TrainingPod) -> list[client.V1Volume]:
    volumes = [
        client.V1Volume(
            name=SHM_VOLUME,
            empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=pod.shm_size),
        ),
        client.V1Volume(name=TMP_VOLUME, empty_dir=client.V1EmptyDirVolumeSource()),
    ]
    if pod.checkpoint_claim:
        volumes.append(
            client.V1Volume(
                name=CHECKPOINT_VOLUME,
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=pod.checkpoint_claim
                ),
            )
        )
    else:
        # No shared volume: the job writes to pod storage (a checkpoint URI must then be
        # reachable some other way; the service warns about this configuration).
        volumes.append(
            client.V1Volume(name=CHECKPOINT_VOLUME, empty_dir=client.V1EmptyDirVolumeSource())
        )
    return volumes


def _volume_mounts() -> list[client.V1VolumeMount]:
    return [
        client.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm"),
        client.V1VolumeMount(name=TMP_VOLUME, mount_path="/tmp"),
    ]


def _checkpoint_mount(pod: TrainingPod) -> client.V1VolumeMount:
    return client.V1VolumeMount(name=CHECKPOINT_VOLUME, mount_path=pod.checkpoint_dir)


def _tolerations(pod: TrainingPod) -> list[client.V1Toleration] | None:
    if not pod.tolerations:
        return None
    return [
        client.V1Toleration(
            key=t.get("key") or None,
            operator=t.get("operator") or None,
            value=t.get("value") or None,
            effect=t.get("effect") or None,
            toleration_seconds=t.get("tolerationSeconds", t.get("toleration_seconds")),
        )
        for t in pod.tolerations
    ]


def container(
    pod: TrainingPod, *, name: str = CONTAINER, extra_env: Sequence[client.V1EnvVar] = ()
) -> client.V1Container:
    return client.V1Container(
        name=name,
        image=pod.image,
        image_pull_policy=pod.image_pull_policy,
        command=list(pod.command),
        env=_env(pod, extra_env),
        env_from=[
            client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=secret))
            for secret in pod.env_from_secrets
        ]
        or None,
        resources=_resources(pod),
        volume_mounts=[*_volume_mounts(), _checkpoint_mount(pod)],
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )


def _metadata_labels(pod: TrainingPod) -> dict[str, str]:
    return {
        **pod.labels,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/component": "training-job",
        LABEL_JOB: pod.name,
    }


def pod_template(
    pod: TrainingPod,
    *,
    container_name: str = CONTAINER,
    extra_env: Sequence[client.V1EnvVar] = (),
    subdomain: str | None = None,
) -> client.V1PodTemplateSpec:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(
            labels=_metadata_labels(pod), annotations=dict(pod.annotations) or None
        ),
        spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[container(pod, name=container_name, extra_env=extra_env)],
            volumes=_volumes(pod),
            node_selector=dict(pod.node_selector) or None,
            tolerations=_tolerations(pod),
            service_account_name=pod.service_account or None,
            automount_service_account_token=False,  # the job never calls the Kubernetes API
            priority_class_name=pod.priority_class_name or None,
            image_pull_secrets=[
                client.V1LocalObjectReference(name=secret) for secret in pod.image_pull_secrets
            ]
            or None,
            subdomain=subdomain,
            hostname=None,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=pod.run_as_user,
                fs_group=pod.fs_group,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            enable_service_links=False,
        ),
    )


def _job_metadata(pod: TrainingPod) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(
        name=pod.name,
        namespace=pod.namespace,
        labels=_metadata_labels(pod),
        annotations=dict(pod.annotations) or None,
    )


def single_node_job(pod: TrainingPod) -> client.V1Job:
    """One pod; the service retries and resumes itself, so Kubernetes never restarts it."""
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_job_metadata(pod),
        spec=client.V1JobSpec(
            backoff_limit=0,
            ttl_seconds_after_finished=pod.ttl_seconds_after_finished,
            active_deadline_seconds=pod.active_deadline_seconds,
            template=pod_template(pod),
        ),
    )


def rendezvous_env(pod: TrainingPod) -> list[client.V1EnvVar]:
    """torchrun's settings for an indexed multi-node job (torchrun reads ``PET_<FLAG>``)."""
    return [
        client.V1EnvVar(name="PET_NNODES", value=str(pod.num_nodes)),
        client.V1EnvVar(name="PET_NPROC_PER_NODE", value=str(pod.processes_per_node)),
        client.V1EnvVar(
            name="PET_NODE_RANK",
            value_from=client.V1EnvVarSource(
                field_ref=client.V1ObjectFieldSelector(
                    field_path=f"metadata.annotations['{COMPLETION_INDEX}']"
                )
            ),
        ),
        client.V1EnvVar(name="PET_MASTER_ADDR", value=f"{pod.name}-0.{pod.service_name}"),
        client.V1EnvVar(name="PET_MASTER_PORT", value=str(pod.master_port)),
    ]


def multi_node_job(pod: TrainingPod) -> tuple[client.V1Job, client.V1Service]:
    """An Indexed Job with one pod per node, and the headless Service that names pod 0."""
    template = pod_template(pod, extra_env=rendezvous_env(pod), subdomain=pod.service_name)
    job = client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_job_metadata(pod),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=pod.num_nodes,
            parallelism=pod.num_nodes,
            # One lost node stops the whole job: torchrun cannot continue without it.
            backoff_limit=0,
            ttl_seconds_after_finished=pod.ttl_seconds_after_finished,
            active_deadline_seconds=pod.active_deadline_seconds,
            template=template,
        ),
    )
    service = client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=client.V1ObjectMeta(
            name=pod.service_name, namespace=pod.namespace, labels=_metadata_labels(pod)
        ),
        spec=client.V1ServiceSpec(
            cluster_ip="None",
            # Pods must resolve before they are ready: rendezvous happens before readiness.
            publish_not_ready_addresses=True,
            selector={LABEL_JOB: pod.name},
            ports=[
                client.V1ServicePort(
                    name="rendezvous", port=pod.master_port, target_port=pod.master_port
                )
            ],
        ),
    )
    return job, service


def to_dict(obj: Any) -> dict[str, Any]:
    """A model as the JSON the API server receives (camelCase, no nulls)."""
    value = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    assert isinstance(value, dict)
    return value


def pytorch_job(pod: TrainingPod) -> dict[str, Any]:
    """A Kubeflow PyTorchJob: one Master and `num_nodes - 1` Workers (container `pytorch`)."""

    def replica(replicas: int) -> dict[str, Any]:
        return {
            "replicas": replicas,
            "restartPolicy": "Never",
            "template": to_dict(pod_template(pod, container_name="pytorch")),
        }

    specs = {"Master": replica(1)}
    if pod.num_nodes > 1:
        specs["Worker"] = replica(pod.num_nodes - 1)
    run_policy: dict[str, Any] = {
        "cleanPodPolicy": "None",
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": pod.ttl_seconds_after_finished,
    }
    if pod.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = pod.active_deadline_seconds
    group, version, _, kind = PYTORCHJOB
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": to_dict(_job_metadata(pod)),
        "spec": {
            "nprocPerNode": str(pod.processes_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": specs,
        },
    }


def train_job(pod: TrainingPod, runtime: str) -> dict[str, Any]:
    """A Kubeflow TrainJob on a ClusterTrainingRuntime (the runtime's container is `node`)."""
    template = pod_template(pod, container_name="node")
    pod_spec = template.spec
    assert pod_spec is not None
    main = pod_spec.containers[0]
    group, version, _, kind = TRAINJOB
    spec_patch: dict[str, Any] = {
        "volumes": [to_dict(volume) for volume in pod_spec.volumes or []],
        "containers": [
            {
                "name": "node",
                "volumeMounts": [to_dict(mount) for mount in main.volume_mounts or []],
                "securityContext": to_dict(main.security_context),
            }
        ],
        "securityContext": to_dict(pod_spec.security_context),
    }
    if pod.service_account:
        spec_patch["serviceAccountName"] = pod.service_account
    if pod.node_selector:
        spec_patch["nodeSelector"] = dict(pod.node_selector)
    if pod_spec.tolerations:
        spec_patch["tolerations"] = [to_dict(t) for t in pod_spec.tolerations]
    if pod.image_pull_secrets:
        spec_patch["imagePullSecrets"] = [{"name": secret} for secret in pod.image_pull_secrets]
    trainer: dict[str, Any] = {
        "image": pod.image,
        "command": list(pod.command),
        "env": [to_dict(env) for env in main.env or []],
        "numNodes": pod.num_nodes,
        "numProcPerNode": pod.processes_per_node,
        "resourcesPerNode": to_dict(main.resources),
    }
    spec: dict[str, Any] = {
        "runtimeRef": {
            "name": runtime,
            "apiGroup": group,
            "kind": "ClusterTrainingRuntime",
        },
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": TRAINJOB_MANAGER,
                "trainingRuntimeSpec": {
                    "template": {
                        "spec": {
                            "replicatedJobs": [
                                {
                                    "name": "node",
                                    "template": {
                                        "spec": {
                                            "template": {
                                                "metadata": {"labels": _metadata_labels(pod)},
                                                "spec": spec_patch,
                                            }
                                        }
                                    },
                                }
                            ]
                        }
                    }
                },
            }
        ],
    }
    if pod.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = pod.active_deadline_seconds
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": to_dict(_job_metadata(pod)),
        "spec": spec,
    }
