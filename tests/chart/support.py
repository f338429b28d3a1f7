"""Paths and small helpers for reading rendered manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "arena-flywheel"
VALUES_DIR = REPO_ROOT / "deploy" / "values"
CONTRACT = REPO_ROOT / "deploy" / "metrics-contract.yaml"
SERVICES = ("inference", "judge", "rating", "selection", "training", "flywheel")
# Every profile `make chart` renders: the chart defaults and each values file.
PROFILES = ("defaults", *sorted(path.stem for path in VALUES_DIR.glob("*.yaml")))

Manifest = dict[str, Any]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def pod_specs(manifests: list[Manifest]) -> list[tuple[str, Manifest]]:
    """(name, pod spec) of every workload and pod the chart renders."""
    specs = []
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            specs.append((name, manifest["spec"]["template"]["spec"]))
        elif manifest["kind"] == "Pod":
            specs.append((f"Pod/{manifest['metadata']['name']}", manifest["spec"]))
    return specs


def component_of(manifest: Manifest) -> str:
    return str(manifest["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in container.get("env", [])}
