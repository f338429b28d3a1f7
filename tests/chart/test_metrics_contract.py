"""Dashboards and alerts use only metrics the services export: the names declared in
deploy/metrics-contract.yaml, and for the shared families what a live /metrics really serves."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.conftest import Render
from tests.chart.support import CHART, SERVICES, of_kind

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
EXPORTERS = {"shared", *SERVICES, "prometheus"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL words that look like metric names but are not.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def grafana_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query of a dashboard."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        # label_values(metric{...}, label): the metric is its first argument.
        match = re.match(r"\s*label_values\(\s*(.+),\s*\w+\s*\)\s*$", query)
        yield f"variable ${variable['name']}", match.group(1) if match else query


def contract_metrics(contract: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        metric["name"]: {**metric, "exporter": exporter}
        for exporter, metrics in contract["exporters"].items()
        for metric in metrics
    }


def unknown_metrics(names: set[str], declared: dict[str, dict[str, Any]]) -> set[str]:
    def known(name: str) -> bool:
        if name in declared:
            return True
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and declared.get(base, {}).get("type") == "histogram":
                return True
        return False

    return {name for name in names if not known(name)}


def test_promql_metric_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(arena_x_seconds_bucket{model=~"a|b", '
        'job="up"}[$__rate_interval]))) / on (pod) group_left (gpu) arena_y_total offset 5m '
        "and time() - arena_z > 3600 unless absent(up)"
    )
    assert promql_metrics(expr) == {"arena_x_seconds_bucket", "arena_y_total", "arena_z", "up"}


def test_contract_is_well_formed(contract: dict[str, Any]) -> None:
    assert set(contract["exporters"]) == EXPORTERS
    names = [metric["name"] for metrics in contract["exporters"].values() for metric in metrics]
    assert len(names) == len(set(names)), "a metric is declared twice"
    for exporter, metrics in contract["exporters"].items():
        for metric in metrics:
            assert set(metric) == {"name", "type", "labels"}, metric
            assert metric["type"] in ("counter", "gauge", "histogram", "info"), metric
            assert ":" not in metric["name"]
            if exporter in SERVICES:
                assert metric["name"].startswith(f"arena_{exporter}_"), metric["name"]
            if metric["type"] == "counter":
                assert metric["name"].endswith("_total"), metric["name"]
            else:
                assert not metric["name"].endswith("_total"), metric["name"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.stem for path in DASHBOARDS])
def test_dashboard_is_valid_grafana_json(path: Path, check_chart: ModuleType) -> None:
    dashboard = json.loads(path.read_text())
    assert check_chart.dashboard_problems(path.name, dashboard) == []
    assert dashboard["uid"] == f"arena-flywheel-{path.stem}"


def test_dashboards_have_distinct_uids() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids))
    assert {path.stem for path in DASHBOARDS} >= {"overview", "inference", "judge", "training"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=[path.stem for path in DASHBOARDS])
def test_dashboard_uses_only_contract_metrics(path: Path, contract: dict[str, Any]) -> None:
    declared = contract_metrics(contract)
    problems = {}
    for where, expr in grafana_queries(json.loads(path.read_text())):
        names = promql_metrics(expr)
        assert names, f"{where}: no metric in {expr!r}"
        if unknown := unknown_metrics(names, declared):
            problems[where] = sorted(unknown)
    assert problems == {}, "not in deploy/metrics-contract.yaml"


def test_alerts_use_only_contract_metrics(render: Render, contract: dict[str, Any]) -> None:
    [rule] = of_kind(render("monitoring"), "PrometheusRule")
    declared = contract_metrics(contract)
    alerts = [item for group in rule["spec"]["groups"] for item in group["rules"]]
    assert {alert["alert"] for alert in alerts} >= {
        "ArenaServiceDown",
        "ArenaConsumerLagGrowing",
        "ArenaJudgeParseFailureRateHigh",
        "ArenaTrainingRunFailed",
        "ArenaFlywheelStalled",
        "ArenaGpuMemoryNearFull",
    }
    for alert in alerts:
        names = promql_metrics(alert["expr"])
        assert names, alert["alert"]
        assert unknown_metrics(names, declared) == set(), alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]


# The shared families, scraped from a real arena_core MetricsServer in a child process (so this
# test adds no series to the registry of the test process).
_PROBE = """
import sys
from prometheus_client.metrics import MetricWrapperBase
import arena_core.metrics as shared

for family in vars(shared).values():
    if isinstance(family, MetricWrapperBase):
        child = family.labels(*["probe"] * len(family._labelnames))
        kind = family._type
        if kind == "info":
            child.info({"version": "probe"})
        elif kind == "counter":
            child.inc()
        elif kind == "gauge":
            child.set(1)
        else:
            child.observe(0.1)
server = shared.MetricsServer("127.0.0.1", int(sys.argv[1]))
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_metrics() -> Iterator[str]:
    port = _free_port()
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert probe.stdout is not None
        assert probe.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                    yield reply.read().decode()
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        probe.communicate(timeout=10)


def exposed(text: str) -> dict[str, tuple[str, set[str]]]:
    """PromQL name -> (type, label names) of every arena_ family on a /metrics page."""
    found = {}
    for family in text_string_to_metric_families(text):
        # prometheus_client's creation timestamps of counters and histograms are not families.
        if not family.name.startswith("arena_") or family.name.endswith("_created"):
            continue
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        found[name] = (family.type, labels)
    return found


def test_shared_metrics_match_a_live_metrics_endpoint(
    live_metrics: str, contract: dict[str, Any]
) -> None:
    served = exposed(live_metrics)
    declared = {metric["name"]: metric for metric in contract["exporters"]["shared"]}
    assert set(served) == set(declared), (
        "deploy/metrics-contract.yaml `shared` vs arena_core.metrics"
    )
    for name, metric in declared.items():
        kind, labels = served[name]
        # The text format shows an info metric as a gauge with its keys as labels.
        assert kind == ("gauge" if metric["type"] == "info" else metric["type"]), name
        assert labels == set(metric["labels"]), name
