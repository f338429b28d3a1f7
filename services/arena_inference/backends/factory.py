"""Creates the backend a model spec asks for, and resolves API-key secrets by name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from arena_core.errors import ConfigurationError
from arena_inference.backends.openai_backend import OpenAIBackend
from arena_inference.backends.replay_backend import ReplayBackend
from arena_inference.backends.transformers_backend import TransformersBackend
from arena_inference.backends.vllm_backend import VllmBackend
from arena_inference.domain.backend import BackendFactory, ModelBackend
from arena_inference.domain.types import BackendKind, ModelSpec
from arena_inference.settings import InferenceOptions


class SecretResolver:
    """Finds a secret by name: in settings (``ARENA_INFERENCE__SECRETS__<NAME>``), then as a file
    ``<secrets_dir>/<name>`` (a mounted Kubernetes Secret). The value is never logged."""

    def __init__(self, inline: Mapping[str, SecretStr], directory: Path | None = None) -> None:
        # Environment variable names arrive upper- or lower-case; match either.
        self._inline = {name.lower(): value for name, value in inline.items()}
        self._directory = directory

    def resolve(self, name: str) -> str:
        value = self._inline.get(name.lower())
        if value is not None:
            return value.get_secret_value()
        if self._directory is not None and re.fullmatch(r"[\w.-]+", name):
            path = self._directory / name
            if path.is_file():
                return path.read_text(encoding="utf-8").strip()
        hint = f" or mount it as {self._directory / name}" if self._directory else ""
        raise ConfigurationError(
            f"secret {name!r} is not set: set ARENA_INFERENCE__SECRETS__{_env_key(name)}{hint}"
        )


def _env_key(name: str) -> str:
    return re.sub(r"\W", "_", name).upper()


def backend_factory(options: InferenceOptions, secrets: SecretResolver) -> BackendFactory:
    def create(spec: ModelSpec) -> ModelBackend:
        if spec.backend == BackendKind.TRANSFORMERS:
            return TransformersBackend(
                spec,
                max_batch_size=options.max_batch_size,
                batch_window_seconds=options.batch_window_ms / 1000,
                batch_max_wait_seconds=options.batch_max_wait_ms / 1000,
                device=options.device,
                worker=options.transformers_worker,
            )
        if spec.backend == BackendKind.VLLM:
            return VllmBackend(spec, gpu_memory_utilization=options.vllm_gpu_memory_utilization)
        if spec.backend == BackendKind.OPENAI:
            api_key = secrets.resolve(spec.api_key_secret) if spec.api_key_secret else None
            return OpenAIBackend(spec, api_key=api_key)
        if spec.backend == BackendKind.REPLAY:
            return ReplayBackend(spec)
        raise ConfigurationError(f"model {spec.name!r}: unknown backend {spec.backend!r}")

    return create


def secret_resolver(options: InferenceOptions) -> SecretResolver:
    return SecretResolver(options.secrets, options.secrets_dir)
