#!/usr/bin/env python3
"""Lint the chart, render it for every values profile and validate everything it renders.

For the chart defaults and each ``<values-dir>/*.yaml``:

1. ``helm lint --strict`` (which also checks the values against values.schema.json);
2. ``helm template`` (the templates do not branch on the cluster's version, so one render serves
   every version checked);
3. every object against the strict Kubernetes JSON schemas that kubernetes-validate ships, for each
   supported Kubernetes version; custom resources (ServiceMonitor, PrometheusRule, ScaledObject)
   against the schemas under ``deploy/schemas/``, strictly too; a kind with no schema is an error;
4. every Grafana dashboard in a ConfigMap against ``deploy/schemas/grafana-dashboard.schema.json``.

    python tools/check_chart.py --helm .venv/bin/helm --chart charts/arena-flywheel \
        --values-dir deploy/values

The functions are also what tests/chart/ uses to render and validate.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils as kubernetes_validate
import yaml
from referencing import Registry, Resource

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "deploy" / "schemas"
DASHBOARD_SCHEMA = SCHEMA_DIR / "grafana-dashboard.schema.json"
# The Kubernetes versions the chart supports and is checked against (kubernetes-validate ships
# schemas for 1.33 to 1.37; Chart.yaml says >=1.30 for what the templates use).
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0", "1.37.0")
RELEASE = "arena"
NAMESPACE = "arena"

Manifest = dict[str, Any]


class CheckError(Exception):
    """A check failed; the message says which profile, object and field."""


def run_helm(helm: Path | str, *args: str) -> str:
    result = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        # lint reports on stdout and sums up on stderr; template fails on stderr alone.
        output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
        raise CheckError(f"helm {' '.join(args)}\n{output}")
    return result.stdout


def lint(helm: Path | str, chart: Path, values: Sequence[Path] = ()) -> str:
    args = ["lint", "--strict", str(chart)]
    for path in values:
        args += ["--values", str(path)]
    return run_helm(helm, *args)


def render(
    helm: Path | str,
    chart: Path,
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str = KUBERNETES_VERSIONS[0],
    show_tests: bool = True,
) -> list[Manifest]:
    """`helm template` parsed into objects (helm test hooks included)."""
    args = [
        "template",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version,
    ]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    if not show_tests:
        args.append("--skip-tests")
    return [doc for doc in yaml.safe_load_all(run_helm(helm, *args)) if doc]


def describe(manifest: Manifest) -> str:
    return f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"


# Kubernetes built-in kinds: kubernetes-validate's strict schemas, loaded once per version.


@functools.cache
def _definitions(schema_dir: str, version: str) -> Resource[Any]:
    contents = kubernetes_validate.schema_contents(f"{schema_dir}/_definitions.json", version)
    return Resource.from_contents(contents)


@functools.cache
def _kubernetes_validator(version: str, api_version: str, kind: str) -> jsonschema.Validator | None:
    """The validator kubernetes-validate --strict would use, or None for a kind it lacks."""
    # The same file naming as kubernetes-validate: rbac.authorization.k8s.io/v1 -> rbac-v1.
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = kubernetes_validate.schema_contents(
            f"{schema_dir}/{kind.lower()}-{api}.json", version
        )
    except FileNotFoundError:
        return None
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = _definitions(schema_dir, version) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


# Custom resources: the schemas the project ships, made strict like kubernetes-validate's.


def _strict(node: Any) -> Any:
    """Objects that list their properties accept no others (as `kubernetes-validate --strict`)."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@functools.cache
def _custom_resource_validator(api_version: str, kind: str) -> jsonschema.Validator | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMA_DIR / f"{group}_{version}_{kind.lower()}.json"
    if not path.is_file():
        return None
    schema = _strict(json.loads(path.read_text()))
    return jsonschema.Draft202012Validator(schema)


def custom_resource_schemas() -> list[str]:
    return sorted(path.name for path in SCHEMA_DIR.glob("*_*_*.json"))


def _errors(validator: jsonschema.Validator, manifest: Manifest) -> Iterator[str]:
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path) or "(root)"
        yield f"{where}: {error.message[:300]}"


def validate_manifest(
    manifest: Manifest, versions: Iterable[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Every problem with one rendered object, each naming the object, version and field."""
    api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
    custom = _custom_resource_validator(api_version, kind)
    if custom is not None:
        return [f"{describe(manifest)}: {problem}" for problem in _errors(custom, manifest)]
    problems = []
    for version in versions:
        validator = _kubernetes_validator(version, api_version, kind)
        if validator is None:
            problems.append(
                f"{describe(manifest)}: no schema for {api_version} {kind} in Kubernetes "
                f"{version} nor under {SCHEMA_DIR.relative_to(REPO_ROOT)}"
            )
            continue
        problems += [
            f"{describe(manifest)} (Kubernetes {version}): {problem}"
            for problem in _errors(validator, manifest)
        ]
    return problems


# Grafana dashboards shipped in ConfigMaps.


@functools.cache
def _dashboard_validator() -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(json.loads(DASHBOARD_SCHEMA.read_text()))


def dashboards(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """The dashboards in the rendered ConfigMaps, parsed: {"<configmap>/<file>": dashboard}."""
    found = {}
    for manifest in manifests:
        labels = manifest.get("metadata", {}).get("labels", {})
        if (
            manifest.get("kind") != "ConfigMap"
            or labels.get("app.kubernetes.io/component") != "dashboards"
        ):
            continue
        for key, text in manifest.get("data", {}).items():
            found[f"{manifest['metadata']['name']}/{key}"] = json.loads(text)
    return found


def dashboard_problems(name: str, dashboard: Any) -> list[str]:
    problems = [f"{name}: {problem}" for problem in _errors(_dashboard_validator(), dashboard)]
    if problems:
        return problems
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        title = panel["title"]
        if panel["id"] in ids:
            problems.append(f"{name}: panel id {panel['id']} is used twice")
        ids.add(panel["id"])
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{name}: panel {title!r} is wider than the 24-column grid")
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                if (x, y) in cells:
                    problems.append(f"{name}: panels {cells[(x, y)]!r} and {title!r} overlap")
                    break
                cells[(x, y)] = title
        uid = panel.get("datasource", {}).get("uid", "")
        if uid.startswith("$") and uid.strip("${}") not in variables:
            problems.append(f"{name}: panel {title!r} uses the undefined variable {uid}")
    return sorted(set(problems))


# The whole check.


@dataclass
class ProfileReport:
    name: str
    objects: int = 0
    custom_resources: int = 0
    dashboards: int = 0
    problems: list[str] = field(default_factory=list)


def check_profile(
    helm: Path | str, chart: Path, values: Sequence[Path], name: str, versions: Sequence[str]
) -> ProfileReport:
    report = ProfileReport(name)
    try:
        lint(helm, chart, values)
        manifests = render(helm, chart, values, kube_version=versions[0])
    except CheckError as error:
        report.problems.append(str(error))
        return report
    report.objects = len(manifests)
    for manifest in manifests:
        if _custom_resource_validator(manifest.get("apiVersion", ""), manifest.get("kind", "")):
            report.custom_resources += 1
        report.problems += validate_manifest(manifest, versions)
    for dashboard_name, dashboard in dashboards(manifests).items():
        report.dashboards += 1
        report.problems += dashboard_problems(dashboard_name, dashboard)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--helm", required=True, help="the helm binary")
    parser.add_argument("--chart", type=Path, required=True)
    parser.add_argument("--values-dir", type=Path, required=True)
    parser.add_argument(
        "--kube-version",
        action="append",
        dest="versions",
        help="Kubernetes version to validate against (repeatable; default: "
        f"{', '.join(KUBERNETES_VERSIONS)})",
    )
    args = parser.parse_args(argv)
    versions = args.versions or list(KUBERNETES_VERSIONS)

    profiles: list[tuple[str, list[Path]]] = [("chart defaults", [])]
    profiles += [(path.name, [path]) for path in sorted(args.values_dir.glob("*.yaml"))]
    if len(profiles) == 1:
        print(f"no values files under {args.values_dir}", file=sys.stderr)
        return 1

    shown = ", ".join(version.rsplit(".", 1)[0] for version in versions)
    print(
        f"Kubernetes {shown} (kubernetes-validate --strict schemas); custom resources: "
        f"{', '.join(custom_resource_schemas())}"
    )
    failed = 0
    for name, values in profiles:
        report = check_profile(args.helm, args.chart, values, name, versions)
        if report.problems:
            failed += 1
            print(f"FAIL {name}")
            for problem in report.problems:
                print(f"     {problem}")
        else:
            print(
                f"ok   {name:<20} lint --strict; {report.objects} objects valid "
                f"({report.custom_resources} custom resources, {report.dashboards} dashboards)"
            )
    print(f"{len(profiles) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
