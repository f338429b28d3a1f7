"""Training-job manifests validate against the Kubernetes schemas of every supported version
(the chart's kubeVersion is >= 1.30), and carry GPUs, placement, volumes, secrets by reference
and the torchrun rendezvous."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from packaging.version import Version

from arena_training.domain.job import JOB_ENV, TrainingJob
from arena_training.k8s import manifests
from arena_training.k8s.manifests import (
    KUBEFLOW_RBAC_RULES,
    RBAC_RULES,
    TrainingPod,
    job_name,
    rbac_role,
    to_dict,
)
from arena_training.runners.kubernetes import KubernetesRunner
from arena_training.settings import KubernetesOptions, SecretKeyOption, TolerationOption

from .kube_fakes import FakeKubeApi, launch_request

REPO = Path(__file__).resolve().parents[3]
SUPPORTED = [
    version
    for version in kubernetes_validate.utils.all_versions()
    if Version(version) >= Version("1.30")
]

OPTIONS = KubernetesOptions(
    namespace="training",
    image="ghcr.io/arena-flywheel/arena-training-gpu:1.0",
    service_account="arena-training-job",
    checkpoint_claim="arena-checkpoints",
    checkpoint_dir="/checkpoints",
    node_selector={"cloud.example.com/pool": "gpu"},
    tolerations=[TolerationOption(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    pod_labels={"app.kubernetes.io/instance": "arena", "app.kubernetes.io/name": "arena-flywheel"},
    secret_env={"HF_TOKEN": SecretKeyOption(secret="hf", key="token")},
    env_from_secrets=["wandb"],
    image_pull_secrets=["registry"],
    fs_group=1000,
    active_deadline_seconds=7 * 86400,
)


def pod_for(tmp_path: Path, backend: str = "job", **request: Any) -> TrainingPod:
    runner = KubernetesRunner(FakeKubeApi(), OPTIONS, tmp_path)  # type: ignore[arg-type]
    return runner.training_pod(launch_request(tmp_path, **request), backend)


def validate_everywhere(manifest: dict[str, Any]) -> None:
    assert SUPPORTED, "kubernetes-validate ships no schema for a supported version"
    for version in SUPPORTED:
        kubernetes_validate.validate(manifest, version, strict=True)


def as_pod(template: dict[str, Any], name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": template["spec"]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_single_node_job_validates_and_carries_the_placement(tmp_path: Path) -> None:
    pod = pod_for(tmp_path)
    job = to_dict(manifests.single_node_job(pod))
    validate_everywhere(job)

    assert job["metadata"]["namespace"] == "training"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # the service resumes; Kubernetes must not restart
    assert spec["ttlSecondsAfterFinished"] == OPTIONS.ttl_seconds_after_finished
    assert spec["activeDeadlineSeconds"] == 7 * 86400
    pod_spec = spec["template"]["spec"]
    container = pod_spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert container["resources"]["requests"]["cpu"] == "32"
    assert container["resources"]["limits"]["memory"] == "512Gi"
    assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {
        "key": "spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    } in pod_spec["tolerations"]
    assert pod_spec["priorityClassName"] == "training"
    assert pod_spec["serviceAccountName"] == "arena-training-job"
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["restartPolicy"] == "Never"
    assert pod_spec["imagePullSecrets"] == [{"name": "registry"}]
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "arena-checkpoints"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "tmp": "/tmp", "checkpoints": "/checkpoints"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["fsGroup"] == 1000

    env = env_of(container)
    # Secrets only by reference: the manifest names them, never holds their values.
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "wandb"}}]
    job_doc = TrainingJob.from_json(env[JOB_ENV])
    assert job_doc.run_id == "flywheel-r1-i2-sft"
    assert job_doc.recipe.deepspeed.zero_stage == 3
    assert container["command"][:4] == [
        "python",
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=8",
    ]
    assert "--standalone" in container["command"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels["arena-flywheel.io/job"] == job["metadata"]["name"]
    assert labels["app.kubernetes.io/instance"] == "arena"  # the chart's selector labels


def test_multi_node_job_is_indexed_with_a_headless_service_for_rendezvous(tmp_path: Path) -> None:
    pod = pod_for(tmp_path, num_nodes=4)
    job_model, service_model = manifests.multi_node_job(pod)
    job, service = to_dict(job_model), to_dict(service_model)
    validate_everywhere(job)
    validate_everywhere(service)

    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    template = spec["template"]
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    env = env_of(template["spec"]["containers"][0])
    assert env["PET_NNODES"] == "4"
    assert env["PET_NPROC_PER_NODE"] == "8"
    assert env["PET_MASTER_ADDR"] == f"{pod.name}-0.{pod.service_name}"
    assert env["PET_NODE_RANK"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    command = template["spec"]["containers"][0]["command"]
    assert "--standalone" not in command  # the rendezvous comes from PET_*
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"arena-flywheel.io/job": pod.name}
    assert service["spec"]["ports"][0]["port"] == 29500
    # Pod hostnames are <job>-<index>: within the 63-character DNS label limit.
    assert len(f"{pod.name}-1023") <= 63


def test_pytorchjob_has_a_master_and_workers_with_valid_pod_templates(tmp_path: Path) -> None:
    pod = pod_for(tmp_path, backend="pytorchjob", num_nodes=3)
    body = manifests.pytorch_job(pod)
    assert body["apiVersion"] == "kubeflow.org/v1"
    assert body["kind"] == "PyTorchJob"
    replicas = body["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] == 2
    assert body["spec"]["nprocPerNode"] == "8"
    assert body["spec"]["runPolicy"]["backoffLimit"] == 0
    for replica in replicas.values():
        assert replica["template"]["spec"]["containers"][0]["name"] == "pytorch"
        validate_everywhere(as_pod(replica["template"]))
    json.dumps(body)


def test_trainjob_targets_the_runtime_and_patches_its_node_pods(tmp_path: Path) -> None:
    pod = pod_for(tmp_path, backend="trainjob", num_nodes=2)
    body = manifests.train_job(pod, "torch-distributed")
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    spec = body["spec"]
    assert spec["runtimeRef"]["name"] == "torch-distributed"
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 2
    assert trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", body["metadata"]["name"])
    patch = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    node = patch["replicatedJobs"][0]
    assert node["name"] == "node"
    pod_patch = node["template"]["spec"]["template"]["spec"]
    # The patched pod, filled with the trainer's container, is a valid Kubernetes pod.
    full = {
        "spec": {
            **{k: v for k, v in pod_patch.items() if k != "containers"},
            "restartPolicy": "Never",
            "containers": [
                {
                    **pod_patch["containers"][0],
                    "image": trainer["image"],
                    "command": trainer["command"],
                    "env": trainer["env"],
                    "resources": trainer["resourcesPerNode"],
                }
            ],
        }
    }
    validate_everywhere(as_pod(full))
    json.dumps(body)


def test_job_names_are_dns_labels_unique_per_run_and_attempt() -> None:
    names = {
        job_name(run_id, attempt)
        for run_id in ("A_very/Long run id with spaces and CAPS " * 3, "run-1", "RUN_1")
        for attempt in (1, 2)
    }
    assert len(names) == 6
    for name in names:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        assert len(name) <= 47


def test_rbac_role_validates_and_the_chart_grants_it() -> None:
    validate_everywhere(to_dict(rbac_role("arena-training", "training", kubeflow=True)))
    role_yaml = (REPO / "charts" / "arena-flywheel" / "templates" / "role.yaml").read_text()
    granted = re.findall(
        r"apiGroups: \[(.*?)\]\s*\n\s*resources: \[(.*?)\]\s*\n\s*verbs: \[(.*?)\]", role_yaml
    )
    grants = {
        (group.strip().strip('"'), resource.strip().strip('"')): {
            verb.strip().strip('"') for verb in verbs.split(",")
        }
        for groups, resources, verbs in granted
        for group in groups.split(",")
        for resource in resources.split(",")
    }
    for rule in RBAC_RULES + KUBEFLOW_RBAC_RULES:
        for group in rule.api_groups:
            for resource in rule.resources:
                assert set(rule.verbs) <= grants.get((group, resource), set()), (group, resource)


@pytest.mark.parametrize("gpus", [0, 1])
def test_cpu_only_and_single_gpu_jobs_validate(tmp_path: Path, gpus: int) -> None:
    pod = pod_for(tmp_path, gpus=gpus)
    job = to_dict(manifests.single_node_job(pod))
    validate_everywhere(job)
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    assert ("nvidia.com/gpu" in limits) == (gpus > 0)
