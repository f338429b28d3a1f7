"""Settings of the inference service: the shared groups plus ``ARENA_INFERENCE__*``.

Models are declared in ``ARENA_INFERENCE__MODELS`` (a JSON list) and/or in a YAML or JSON file
named by ``ARENA_INFERENCE__MODELS_FILE`` (a ConfigMap in Kubernetes); each entry is a
:class:`ModelDeclaration`. More can be registered at run time over gRPC.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from arena_core.errors import ConfigurationError
from arena_core.settings import Secret, ServiceSettings

BackendName = Literal["vllm", "openai", "transformers", "replay"]
ReplayFormatName = Literal["auto", "fastchat", "arena_hard", "alpaca_eval"]


class SamplingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, gt=0)
    seed: int | None = None
    stop: list[str] = []
    n: int | None = Field(None, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = Field(None, gt=0)


class AdapterDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    uri: str
    revision: str = ""


class ModelDeclaration(BaseModel):
    """One model as declared in settings; the fields of the ModelSpec contract."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: BackendName
    uri: str = ""
    revision: str = ""
    default_sampling: SamplingDefaults = SamplingDefaults()
    endpoint: str = ""
    # Name of the secret with the API key (see InferenceOptions.secrets); never the key itself.
    api_key_secret: str = ""
    tensor_parallel_size: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    dtype: str = ""
    adapters: list[AdapterDeclaration] = []
    replay_uris: list[str] = []
    replay_format: ReplayFormatName = "auto"
    backend_options: dict[str, Any] = {}
    labels: dict[str, str] = {}


class InferenceOptions(BaseModel):
    """Options only the inference service reads."""

    models: list[ModelDeclaration] = []
    models_file: Path | None = None
    # Load declared models at start-up (otherwise on first use).
    load_on_start: bool = True
    # Name of this replica in ModelInfo and Model* events.
    instance: str = Field(default_factory=socket.gethostname)
    # max_tokens when neither the request nor the model's defaults set it.
    default_max_tokens: int = Field(512, ge=1)
    # Dynamic batching of the transformers backend: a batch goes when full, after a quiet gap of
    # batch_window_ms, or batch_max_wait_ms after its first request.
    max_batch_size: int = Field(16, ge=1)
    batch_window_ms: float = Field(5.0, ge=0)
    batch_max_wait_ms: float = Field(50.0, ge=0)
    device: str = "cpu"
    # Where the transformers backend decodes: a worker process per model (the default: its loop
    # never waits for the GIL behind the event loop) or a thread of the service.
    transformers_worker: Literal["process", "thread"] = "process"
    # Default for vLLM engines; a model's backend_options may override it.
    vllm_gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # The OpenAI-compatible HTTP endpoint (/v1/chat/completions, /v1/models); port 0 turns it off.
    http_host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=0, le=65535)
    # When set, HTTP callers must send it as a bearer token.
    http_api_key: Secret | None = None
    # Work-queue handlers running at once per replica (they share the backends' batches); more
    # than max_batch_size keeps the next batch queued while one decodes.
    queue_concurrency: int = Field(32, ge=1, le=1024)
    # JetStream KV buckets: the answer cache and the runtime model registrations.
    cache_bucket: str = "inference-generations"
    registry_bucket: str = "inference-models"
    # Secrets by name, e.g. ARENA_INFERENCE__SECRETS__OPENAI_API_KEY; or files in secrets_dir.
    secrets: dict[str, Secret] = {}
    secrets_dir: Path | None = Path("/var/run/secrets/arena")
    # Seconds between GPU memory samples (when a GPU is visible).
    gpu_metrics_interval_seconds: float = Field(15.0, gt=0)

    @field_validator("models", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @field_validator("cache_bucket", "registry_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not value or not all(char.isalnum() or char in "-_" for char in value):
            raise ValueError(f"{value!r} is not a valid KV bucket name (letters, digits, - and _)")
        return value

    def declarations(self) -> list[ModelDeclaration]:
        """Models from the setting and the models file; a name may appear only once."""
        declared = list(self.models)
        if self.models_file is not None:
            declared += load_models_file(self.models_file)
        seen: set[str] = set()
        for declaration in declared:
            if declaration.name in seen:
                raise ConfigurationError(
                    f"ARENA_INFERENCE__MODELS: model {declaration.name!r} is declared twice"
                )
            seen.add(declaration.name)
        return declared


def load_models_file(path: Path) -> list[ModelDeclaration]:
    """A YAML or JSON list of model declarations (or ``{"models": [...]}``)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigurationError(
            f"ARENA_INFERENCE__MODELS_FILE: cannot read {path}: {error}"
        ) from None
    if isinstance(data, dict):
        data = data.get("models", [])
    if not isinstance(data, list):
        raise ConfigurationError(f"ARENA_INFERENCE__MODELS_FILE: {path} must hold a list of models")
    models = []
    for index, item in enumerate(data):
        try:
            models.append(ModelDeclaration.model_validate(item))
        except ValueError as error:
            raise ConfigurationError(
                f"ARENA_INFERENCE__MODELS_FILE: {path} entry {index}: {error}"
            ) from None
    return models


class InferenceSettings(ServiceSettings):
    inference: InferenceOptions = InferenceOptions()
