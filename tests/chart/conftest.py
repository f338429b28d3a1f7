"""Fixtures for the chart tests: helm (fetched into the venv when missing), cached rendering,
the metrics contract, and tools/check_chart.py loaded as a module."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.chart.support import CHART, CONTRACT, REPO_ROOT, VALUES_DIR, Manifest

Render = Callable[..., list[Manifest]]


@pytest.fixture(scope="session")
def check_chart() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_chart", REPO_ROOT / "tools" / "check_chart.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_chart"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm from $HELM, else the venv's, fetched there by tools/fetch_helm.py when missing."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    venv_bin = Path(sys.executable).parent
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "fetch_helm.py"), "--dest", str(venv_bin)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv_bin / "helm"


@pytest.fixture(scope="session")
def render(helm: Path, check_chart: ModuleType) -> Render:
    """Renders the chart, cached: render("gpu-cluster", "monitoring", set_values=[...])."""
    cache: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Manifest]] = {}

    def _render(*profiles: str, set_values: Sequence[str] = ()) -> list[Manifest]:
        key = (profiles, tuple(set_values))
        if key not in cache:
            files = [VALUES_DIR / f"{name}.yaml" for name in profiles if name != "defaults"]
            cache[key] = check_chart.render(helm, CHART, files, set_values)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def contract() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CONTRACT.read_text())
    return loaded
