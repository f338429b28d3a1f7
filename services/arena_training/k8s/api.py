"""The one thin adapter over the Kubernetes API: every call the training service makes.

Synchronous (the `kubernetes` client is), namespaced, and translating API errors into domain
errors: 404 → None or `NotFoundError`, 409 → `AlreadyExistsError`, 403 → `FailedPreconditionError`
naming the missing permission, anything else → `UnavailableError`. The runner calls it from
worker threads. Tests drive it against the client's real request path with a fake HTTP pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from arena_core.errors import (
    AlreadyExistsError,
    ConfigurationError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)
from arena_training.settings import KubernetesOptions

log = logging.getLogger(__name__)


class KubeApi:
    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self._client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._apis = client.ApisApi(api_client)

    @classmethod
    def from_environment(cls, options: KubernetesOptions) -> KubeApi:
        """In-cluster credentials (the service account) or, outside a cluster, a kubeconfig."""
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            try:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(options.kubeconfig) if options.kubeconfig else None,
                    client_configuration=configuration,
                )
            except (config.ConfigException, OSError) as error:
                raise ConfigurationError(
                    "ARENA_TRAINING__RUNNER is kubernetes, but there are no in-cluster "
                    f"credentials and no usable kubeconfig "
                    f"(ARENA_TRAINING__KUBERNETES__KUBECONFIG): {error}"
                ) from None
        return cls(client.ApiClient(configuration), options.namespace)

    # --- jobs and services -------------------------------------------------------------------

    def create_job(self, job: client.V1Job) -> None:
        self._call("create", "batch/jobs", self._batch.create_namespaced_job, self.namespace, job)

    def read_job(self, name: str) -> client.V1Job | None:
        job: client.V1Job | None = self._read(
            "batch/jobs", self._batch.read_namespaced_job, name, self.namespace
        )
        return job

    def delete_job(self, name: str) -> None:
        self._delete(
            "batch/jobs",
            self._batch.delete_namespaced_job,
            name,
            self.namespace,
            propagation_policy="Background",  # its pods go too
        )

    def create_service(self, service: client.V1Service) -> None:
        self._call(
            "create", "services", self._core.create_namespaced_service, self.namespace, service
        )

    def delete_service(self, name: str) -> None:
        self._delete("services", self._core.delete_namespaced_service, name, self.namespace)

    def list_pods(self, label_selector: str) -> list[client.V1Pod]:
        pods = self._call(
            "list",
            "pods",
            self._core.list_namespaced_pod,
            self.namespace,
            label_selector=label_selector,
        )
        return list(pods.items or [])

    def pod_log_lines(
        self,
        pod: str,
        *,
        container: str | None,
        follow: bool,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
    ) -> Iterator[str]:
        """A pod's log, line by line, each prefixed with its RFC 3339 timestamp."""
        response = self._call(
            "get",
            "pods/log",
            self._core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=container,
            follow=follow,
            tail_lines=tail_lines,
            since_seconds=since_seconds,
            timestamps=True,
            _preload_content=False,
        )
        pending = b""
        try:
            for chunk in response.stream(64 * 1024):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")
        except HTTPError as error:
            raise UnavailableError(f"the log stream of pod {pod} broke: {error}") from None
        finally:
            response.release_conn()

    # --- custom resources (Kubeflow) ---------------------------------------------------------

    def has_resource(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves `plural` in `group/version` (discovery, no RBAC)."""
        try:
            groups = self._apis.get_api_versions()
        except ApiException as error:
            raise UnavailableError(f"Kubernetes API discovery failed: {error.reason}") from None
        versions = {
            v.version for g in groups.groups or [] if g.name == group for v in g.versions or []
        }
        if version not in versions:
            return False
        try:
            resources = self._custom.get_api_resources(group, version)
        except ApiException as error:
            if error.status == 404:
                return False
            raise UnavailableError(f"Kubernetes API discovery failed: {error.reason}") from None
        return any(resource.name == plural for resource in resources.resources or [])

    def create_custom(self, group: str, version: str, plural: str, body: dict[str, Any]) -> None:
        self._call(
            "create",
            f"{group}/{plural}",
            self._custom.create_namespaced_custom_object,
            group,
            version,
            self.namespace,
            plural,
            body,
        )

    def read_custom(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        found = self._read(
            f"{group}/{plural}",
            self._custom.get_namespaced_custom_object,
            group,
            version,
            self.namespace,
            plural,
            name,
        )
        return dict(found) if found is not None else None

    def delete_custom(self, group: str, version: str, plural: str, name: str) -> None:
        self._delete(
            f"{group}/{plural}",
            self._custom.delete_namespaced_custom_object,
            group,
            version,
            self.namespace,
            plural,
            name,
            propagation_policy="Background",
        )

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    # --- error translation -------------------------------------------------------------------

    def _call(self, verb: str, resource: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except ApiException as error:
            raise _translate(error, verb, resource, self.namespace) from None
        except HTTPError as error:
            raise UnavailableError(f"the Kubernetes API is unreachable: {error}") from None

    def _read(self, resource: str, method: Any, *args: Any) -> Any:
        try:
            return self._call("get", resource, method, *args)
        except NotFoundError:
            return None

    def _delete(self, resource: str, method: Any, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(NotFoundError):  # already gone: deleting is idempotent
            self._call("delete", resource, method, *args, **kwargs)


def _translate(error: ApiException, verb: str, resource: str, namespace: str) -> Exception:
    detail = f"{verb} {resource} in namespace {namespace}: {error.status} {error.reason}"
    if error.status == 404:
        return NotFoundError(detail)
    if error.status == 409:
        return AlreadyExistsError(detail)
    if error.status in (401, 403):
        return FailedPreconditionError(
            f"{detail}; the training service account needs RBAC '{verb}' on '{resource}' "
            "(see the chart's training Role)"
        )
    if error.status == 422 or error.status == 400:
        return FailedPreconditionError(f"{detail}: {error.body}")
    return UnavailableError(detail)
