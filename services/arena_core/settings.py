"""Typed settings shared by every service, read from `ARENA_*` environment variables.

One namespace for the whole system: nested groups use `__` (``ARENA_NATS__URL``,
``ARENA_GRPC__PORT``), and each service adds its own group named after itself
(``ARENA_JUDGE__MAX_CONCURRENCY``). The Helm chart and the local stack set the same variables, so
the settings classes are the single source of the configuration contract.

Build settings once, in a service's ``__main__``, with :func:`load_settings`; never at import time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from arena_core.errors import ConfigurationError

ENV_PREFIX = "ARENA_"
ENV_NESTED_DELIMITER = "__"

_PLACEHOLDER_SECRETS = re.compile(
    r"^(changeme|change-me|changethis|change_this|placeholder|secret|password|todo|xxx+|"
    r"<.*>|\$\{.*\}|\{\{.*\}\})$",
    re.IGNORECASE,
)


def _reject_placeholder(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value().strip()
    if not raw:
        raise ValueError("is empty; unset the variable instead of leaving it blank")
    if _PLACEHOLDER_SECRETS.match(raw):
        raise ValueError("is a placeholder value; set the real secret or reference a Secret")
    return value


Secret = Annotated[SecretStr, AfterValidator(_reject_placeholder)]
"""A secret that is never printed and never a template placeholder such as ``changeme``."""

Port = Annotated[int, Field(ge=1, le=65535)]


class NatsTlsSettings(BaseModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))


class NatsSettings(BaseModel):
    """How to reach NATS JetStream; every authentication method the server offers."""

    url: str = "nats://127.0.0.1:4222"
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls: NatsTlsSettings = NatsTlsSettings()
    connect_timeout_seconds: float = Field(5.0, gt=0)
    stream_replicas: int = Field(1, ge=1, le=5)
    # Window in which JetStream drops a re-published event with the same Nats-Msg-Id.
    duplicate_window_seconds: float = Field(600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        for server in value.split(","):
            if not re.match(r"^(nats|tls|ws|wss)://[^\s/:]+(:\d{1,5})?/?$", server.strip()):
                raise ValueError(
                    f"{server.strip()!r} is not a NATS URL (expected nats://host:port, "
                    "comma-separated for a cluster)"
                )
        return value

    @property
    def servers(self) -> list[str]:
        return [server.strip() for server in self.url.split(",")]


class GrpcSettings(BaseModel):
    host: str = "0.0.0.0"
    port: Port = 50051
    # Time in-flight RPCs get to finish after SIGTERM before the server cancels them.
    grace_seconds: float = Field(10.0, ge=0)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)


class MetricsSettings(BaseModel):
    host: str = "0.0.0.0"
    port: Port = 9100


class LogSettings(BaseModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ConsumerSettings(BaseModel):
    """Delivery policy for a service's durable JetStream consumers."""

    # Deliveries before a message is dead-lettered instead of retried.
    max_deliveries: int = Field(5, ge=1, le=100)
    ack_wait_seconds: float = Field(30.0, gt=0)
    # Back-pressure: a replica holds at most this many unacknowledged messages.
    max_ack_pending: int = Field(64, ge=1)
    fetch_batch: int = Field(16, ge=1)
    retry_backoff_seconds: float = Field(1.0, ge=0)


class ServiceSettings(BaseSettings):
    """What every service process needs; a service subclasses it and adds its own group."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="ignore",
        validate_default=True,
    )

    nats: NatsSettings = NatsSettings()
    grpc: GrpcSettings = GrpcSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    consumer: ConsumerSettings = ConsumerSettings()


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def env_var_name(location: tuple[int | str, ...]) -> str:
    """The environment variable behind a validation error location, e.g. ARENA_NATS__URL."""
    parts = [str(part).upper() for part in location if not isinstance(part, int)]
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts)


def load_settings(settings_class: type[SettingsT], **overrides: Any) -> SettingsT:
    """Build settings from the environment, or raise ConfigurationError naming each bad variable."""
    try:
        return settings_class(**overrides)
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            variable = env_var_name(tuple(detail["loc"]))
            message = detail["msg"].removeprefix("Value error, ")
            shown = "" if _is_secret(variable) else f" (got {detail.get('input')!r})"
            problems.append(f"{variable}: {message}{shown}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _is_secret(variable: str) -> bool:
    return any(word in variable for word in ("PASSWORD", "TOKEN", "SECRET", "KEY", "CREDS"))
