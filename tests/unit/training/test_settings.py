"""The training service reads the variables the Helm chart sets (`arena.derivedSettings`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena_core.errors import ConfigurationError
from arena_core.settings import load_settings
from arena_training.settings import TrainingSettings

CHART_ENV = {
    "ARENA_TRAINING__RUNNER": "kubernetes",
    "ARENA_TRAINING__KUBERNETES__NAMESPACE": "arena",
    "ARENA_TRAINING__KUBERNETES__IMAGE": "ghcr.io/arena-flywheel/arena-training-gpu:0.1.0",
    "ARENA_TRAINING__KUBERNETES__SERVICE_ACCOUNT": "arena-training-job",
    "ARENA_TRAINING__KUBERNETES__GPUS_PER_NODE": "8",
    "ARENA_TRAINING__KUBERNETES__NODE_SELECTOR": '{"nvidia.com/gpu.present":"true"}',
    "ARENA_TRAINING__KUBERNETES__TOLERATIONS": (
        '[{"effect":"NoSchedule","key":"nvidia.com/gpu","operator":"Exists"},'
        '{"effect":"NoExecute","key":"spot","operator":"Equal","value":"1","tolerationSeconds":60}]'
    ),
    "ARENA_TRAINING__KUBERNETES__POD_LABELS": (
        '{"app.kubernetes.io/component":"training-job","app.kubernetes.io/instance":"arena"}'
    ),
    "ARENA_TRAINING__KUBERNETES__KUBEFLOW": "false",
    "ARENA_TRAINING__KUBERNETES__CHECKPOINT_CLAIM": "arena-checkpoints",
    "ARENA_TRAINING__KUBERNETES__CHECKPOINT_DIR": "/checkpoints",
}


def test_the_charts_variables_configure_the_kubernetes_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CHART_ENV.items():
        monkeypatch.setenv(name, value)
    options = load_settings(TrainingSettings).training
    kube = options.kubernetes
    assert options.runner == "kubernetes"
    assert (kube.namespace, kube.gpus_per_node, kube.checkpoint_claim) == (
        "arena",
        8,
        "arena-checkpoints",
    )
    assert kube.tolerations[1].toleration_seconds == 60
    assert kube.node_selector == {"nvidia.com/gpu.present": "true"}
    assert kube.pod_labels["app.kubernetes.io/instance"] == "arena"
    # The shared volume is the work directory: the service and its jobs see the same paths.
    assert options.resolved_work_dir() == Path("/checkpoints")
    assert options.resolved_checkpoint_store() == Path("/checkpoints/checkpoints")


def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_TRAINING__MAX_CONCURRENT_RUNS", "0")
    monkeypatch.setenv("ARENA_TRAINING__KUBERNETES__NAMESPACE", "Not_A_Namespace")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(TrainingSettings)
    message = str(caught.value)
    assert "ARENA_TRAINING__MAX_CONCURRENT_RUNS" in message
    assert "ARENA_TRAINING__KUBERNETES__NAMESPACE" in message


def test_local_runs_live_under_arena_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARENA_HOME", str(tmp_path))
    options = load_settings(TrainingSettings).training
    assert options.resolved_work_dir() == tmp_path / "training"
