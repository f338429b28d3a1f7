"""The thin Kubernetes adapter, driven through the real `kubernetes` client down to its HTTP
requests (a fake connection pool answers): URLs, verbs, bodies, error mapping, log streaming —
and every request it makes is allowed by the RBAC rules the chart grants."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import urllib3
from kubernetes import client

from arena_core.errors import AlreadyExistsError, FailedPreconditionError, UnavailableError
from arena_training.k8s import manifests
from arena_training.k8s.api import KubeApi
from arena_training.k8s.manifests import KUBEFLOW_RBAC_RULES, RBAC_RULES, TRAINJOB, to_dict
from arena_training.runners.kubernetes import KubernetesRunner
from arena_training.settings import KubernetesOptions

from .kube_fakes import launch_request

HOST = "https://k8s.example:6443"


@dataclass
class Sent:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakePool:
    """Stands in for urllib3's pool manager: records requests, answers from `routes`."""

    routes: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        parsed = urlparse(url)
        body = kwargs.get("body")
        self.sent.append(
            Sent(method, parsed.path, parse_qs(parsed.query), json.loads(body) if body else None)
        )
        routes = {(m, path.rstrip("/")): answer for (m, path), answer in self.routes.items()}
        status, payload = routes.get((method, parsed.path.rstrip("/")), (200, None))
        if payload is None and method == "POST" and body:
            payload = json.loads(body)  # the API server echoes what it created
        data = payload if isinstance(payload, bytes) else json.dumps(payload or {}).encode()
        return urllib3.HTTPResponse(
            body=io.BytesIO(data),
            status=status,
            reason={
                200: "OK",
                201: "Created",
                403: "Forbidden",
                404: "Not Found",
                409: "Conflict",
                500: "Internal Server Error",
            }.get(status, "?"),
            headers={"Content-Type": "application/json"},
            preload_content=False,
        )


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def api(pool: FakePool) -> KubeApi:
    configuration = client.Configuration(host=HOST)
    api_client = client.ApiClient(configuration)
    api_client.rest_client.pool_manager = pool  # type: ignore[assignment]
    return KubeApi(api_client, "training")


def test_create_job_posts_the_manifest_to_the_namespace(
    api: KubeApi, pool: FakePool, tmp_path: Path
) -> None:
    runner = KubernetesRunner(api, KubernetesOptions(namespace="training", image="img"), tmp_path)
    pod = runner.training_pod(launch_request(tmp_path), "job")
    job = manifests.single_node_job(pod)
    api.create_job(job)
    request = pool.sent[-1]
    assert (request.method, request.path) == ("POST", "/apis/batch/v1/namespaces/training/jobs")
    assert request.body == to_dict(job)


def test_reads_deletes_and_lists(api: KubeApi, pool: FakePool) -> None:
    jobs = "/apis/batch/v1/namespaces/training/jobs"
    pool.routes[("GET", f"{jobs}/gone")] = (404, {"reason": "NotFound"})
    pool.routes[("GET", f"{jobs}/there")] = (
        200,
        {"metadata": {"name": "there"}, "status": {"active": 1}},
    )
    pool.routes[("DELETE", f"{jobs}/gone")] = (404, {})
    pool.routes[("GET", "/api/v1/namespaces/training/pods")] = (
        200,
        {"items": [{"metadata": {"name": "p0"}, "status": {"phase": "Running"}}]},
    )

    assert api.read_job("gone") is None
    found = api.read_job("there")
    assert found is not None
    assert found.status.active == 1
    api.delete_job("there")
    api.delete_job("gone")  # already deleted: no error
    pods = api.list_pods("arena-flywheel.io/job=there")
    assert [p.metadata.name for p in pods] == ["p0"]

    delete = next(s for s in pool.sent if s.method == "DELETE")
    assert delete.path == f"{jobs}/there"
    propagation = (delete.body or {}).get("propagationPolicy") or delete.query.get(
        "propagationPolicy", [None]
    )[0]
    assert propagation == "Background"
    listing = pool.sent[-1]
    assert listing.query["labelSelector"] == ["arena-flywheel.io/job=there"]


def test_api_errors_become_domain_errors(api: KubeApi, pool: FakePool) -> None:
    jobs = "/apis/batch/v1/namespaces/training/jobs"
    job = client.V1Job(metadata=client.V1ObjectMeta(name="j"))
    pool.routes[("POST", jobs)] = (409, {"reason": "AlreadyExists"})
    with pytest.raises(AlreadyExistsError):
        api.create_job(job)
    pool.routes[("POST", jobs)] = (403, {"reason": "Forbidden"})
    with pytest.raises(FailedPreconditionError, match="RBAC 'create' on 'batch/jobs'"):
        api.create_job(job)
    pool.routes[("POST", jobs)] = (500, {})
    with pytest.raises(UnavailableError):
        api.create_job(job)


def test_pod_logs_stream_line_by_line_with_timestamps(api: KubeApi, pool: FakePool) -> None:
    log = (
        b"2026-01-01T00:00:00.000000001Z first line\n"
        b'2026-01-01T00:00:01.5Z @@arena {"kind":"progress","step":1}\n'
        b"2026-01-01T00:00:02Z last line without newline"
    )
    pool.routes[("GET", "/api/v1/namespaces/training/pods/p0/log")] = (200, log)
    lines = list(api.pod_log_lines("p0", container="trainer", follow=True, tail_lines=10))
    assert lines == [
        "2026-01-01T00:00:00.000000001Z first line",
        '2026-01-01T00:00:01.5Z @@arena {"kind":"progress","step":1}',
        "2026-01-01T00:00:02Z last line without newline",
    ]
    query = pool.sent[-1].query
    assert query["container"] == ["trainer"]
    assert query["follow"] == ["true"]
    assert query["timestamps"] == ["true"]
    assert query["tailLines"] == ["10"]


def test_kubeflow_is_found_through_discovery(api: KubeApi, pool: FakePool) -> None:
    group, version, plural, _ = TRAINJOB
    pool.routes[("GET", "/apis/")] = (
        200,
        {
            "kind": "APIGroupList",
            "groups": [
                {
                    "name": group,
                    "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
                    "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
                }
            ],
        },
    )
    pool.routes[("GET", f"/apis/{group}/{version}/")] = (
        200,
        {
            "kind": "APIResourceList",
            "groupVersion": f"{group}/{version}",
            "resources": [
                {
                    "name": plural,
                    "namespaced": True,
                    "kind": "TrainJob",
                    "singularName": "",
                    "verbs": ["create"],
                }
            ],
        },
    )
    assert api.has_resource(group, version, plural)
    assert not api.has_resource("kubeflow.org", "v1", "pytorchjobs")
    api.create_custom(group, version, plural, {"metadata": {"name": "t"}, "spec": {}})
    assert pool.sent[-1].path == f"/apis/{group}/{version}/namespaces/training/{plural}"


def _permission(sent: Sent) -> tuple[str, str, str] | None:
    """(API group, resource, RBAC verb) a request needs; None for discovery (no RBAC)."""
    parts = sent.path.strip("/").split("/")
    if "namespaces" not in parts:
        return None
    group = "" if parts[0] == "api" else parts[1]
    after = parts[parts.index("namespaces") + 2 :]
    resource = after[0] + ("/" + after[2] if len(after) > 2 else "")
    named = len(after) > 1
    verb = {
        "POST": "create",
        "DELETE": "delete",
        "GET": "get" if named else ("watch" if "watch" in sent.query else "list"),
    }[sent.method]
    return group, resource, verb


def test_every_request_is_allowed_by_the_documented_rbac(
    api: KubeApi, pool: FakePool, tmp_path: Path
) -> None:
    """Drive every adapter call; each request's permission must be in RBAC_RULES."""
    runner = KubernetesRunner(api, KubernetesOptions(namespace="training", image="img"), tmp_path)
    pod = runner.training_pod(launch_request(tmp_path, num_nodes=2), "job")
    job, service = manifests.multi_node_job(pod)
    pool.routes[("GET", "/api/v1/namespaces/training/pods/p/log")] = (200, b"")
    pool.routes[("GET", "/api/v1/namespaces/training/pods")] = (200, {"items": []})
    api.create_service(service)
    api.create_job(job)
    api.read_job(pod.name)
    api.list_pods("a=b")
    list(api.pod_log_lines("p", container="trainer", follow=False))
    api.delete_job(pod.name)
    api.delete_service(pod.name)
    group, version, plural, _ = TRAINJOB
    api.create_custom(group, version, plural, {"metadata": {"name": "t"}})
    api.read_custom(group, version, plural, "t")
    api.delete_custom(group, version, plural, "t")

    allowed = {
        (group, resource, verb)
        for rule in RBAC_RULES + KUBEFLOW_RBAC_RULES
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }
    needed = {p for p in map(_permission, pool.sent) if p is not None}
    assert needed <= allowed, needed - allowed
    assert len(needed) >= 8
