"""The settings classes are the configuration contract: every setting a service cannot start
without has an env entry (a value or a Secret reference) in its rendered Deployment."""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from arena_core.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, ServiceSettings, load_settings
from tests.chart.conftest import Render
from tests.chart.support import PROFILES, SERVICES, component_of, env_of, of_kind


def settings_class(service: str) -> type[BaseModel]:
    """arena_<service>.settings.<Service>Settings; skips while the service has not written it."""
    module_name = f"arena_{service}.settings"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name not in (module_name, f"arena_{service}"):
            raise
        pytest.skip(f"{module_name} does not exist yet")
    class_name = f"{service.capitalize()}Settings"
    found = getattr(module, class_name, None)
    if found is None:
        pytest.skip(f"{module_name} has no {class_name} yet")
    assert issubclass(found, ServiceSettings), f"{class_name} must extend ServiceSettings"
    return found  # type: ignore[no-any-return]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (X, X | None, Annotated[X, ...])."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def required_variables(model: type[BaseModel], prefix: str = ENV_PREFIX.rstrip("_")) -> list[str]:
    """ARENA_* names of the fields without a default, walking nested groups.

    A required group whose own fields all have defaults still needs one of its variables: it is
    reported as ``ARENA_GROUP__*``.
    """
    found = []
    for name, field in model.model_fields.items():
        separator = "_" if prefix == ENV_PREFIX.rstrip("_") else ENV_NESTED_DELIMITER
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        variable = (alias or f"{prefix}{separator}{name}").upper()
        if not field.is_required():
            continue
        nested = _models_in(field.annotation)
        if nested:
            inner = required_variables(nested[0], variable)
            found += inner or [f"{variable}{ENV_NESTED_DELIMITER}*"]
        else:
            found.append(variable)
    return found


def present(required: str, env: dict[str, Any]) -> bool:
    if required.endswith("*"):
        return any(name.startswith(required[:-1]) for name in env)
    entry = env.get(required)
    return entry is not None and ("value" in entry or "valueFrom" in entry)


def test_the_walk_finds_nested_required_fields() -> None:
    class Model(BaseModel):
        path: str
        uri: str = "x"

    class Group(BaseModel):
        size: int = 1

    class Settings(ServiceSettings):
        model: Model
        optional_model: Model | None = None
        group: Group
        api_key: str

    assert required_variables(Settings) == [
        "ARENA_MODEL__PATH",
        "ARENA_GROUP__*",
        "ARENA_API_KEY",
    ]
    assert required_variables(ServiceSettings) == []


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("service", SERVICES)
def test_required_settings_have_env_entries(render: Render, profile: str, service: str) -> None:
    required = required_variables(settings_class(service))
    deployments = [
        manifest
        for manifest in of_kind(render(profile), "Deployment")
        if component_of(manifest) == service
    ]
    assert deployments, f"{profile}: no Deployment for {service}"
    for manifest in deployments:
        env = env_of(manifest["spec"]["template"]["spec"]["containers"][0])
        missing = [variable for variable in required if not present(variable, env)]
        assert not missing, (
            f"{profile}: {manifest['metadata']['name']} lacks {missing}; set them under "
            f"components.{service}.settings (or .secrets) in charts/arena-flywheel/values.yaml"
        )


@pytest.mark.parametrize("profile", PROFILES)
def test_every_deployment_sets_the_base_settings(render: Render, profile: str) -> None:
    """The base class needs nothing, but the chart must always say where NATS is."""
    for manifest in of_kind(render(profile), "Deployment"):
        env = env_of(manifest["spec"]["template"]["spec"]["containers"][0])
        for variable in ["ARENA_NATS__URL", *required_variables(ServiceSettings)]:
            assert present(variable, env), (
                f"{profile}: {manifest['metadata']['name']} lacks {variable}"
            )


@pytest.mark.parametrize("profile", PROFILES)
def test_rendered_settings_load(
    render: Render, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the chart renders passes each settings class's own validation (secrets stubbed)."""
    for manifest in of_kind(render(profile), "Deployment"):
        service = component_of(manifest)
        module = importlib.import_module(f"arena_{service}.settings") if _exists(service) else None
        cls = getattr(module, f"{service.capitalize()}Settings", ServiceSettings)
        for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(name)
        for name, entry in env_of(manifest["spec"]["template"]["spec"]["containers"][0]).items():
            if name.startswith(ENV_PREFIX):
                monkeypatch.setenv(name, entry.get("value", "a-secret-read-from-kubernetes"))
        settings = load_settings(cls)
        assert (settings.grpc.port, settings.metrics.port) == (50051, 9100)
        assert settings.nats.url.startswith(("nats://", "tls://"))


def _exists(service: str) -> bool:
    return importlib.util.find_spec(f"arena_{service}.settings") is not None
