from __future__ import annotations

import pytest
from pydantic import SecretStr

from arena_core.errors import ConfigurationError
from arena_core.settings import ServiceSettings, env_var_name, load_settings


def test_reads_nested_groups_from_arena_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_NATS__URL", "nats://nats-0:4222,nats://nats-1:4222")
    monkeypatch.setenv("ARENA_GRPC__PORT", "6000")
    monkeypatch.setenv("ARENA_NATS__PASSWORD", "s3cr3t-from-a-Secret")

    settings = load_settings(ServiceSettings)

    assert settings.nats.servers == ["nats://nats-0:4222", "nats://nats-1:4222"]
    assert settings.grpc.port == 6000
    assert isinstance(settings.nats.password, SecretStr)
    assert "s3cr3t" not in repr(settings)


def test_bad_value_is_rejected_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_GRPC__PORT", "70000")

    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings)

    assert "ARENA_GRPC__PORT" in str(raised.value)
    assert "70000" in str(raised.value)


def test_malformed_nats_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_NATS__URL", "http://nats:4222")

    with pytest.raises(ConfigurationError, match=r"ARENA_NATS__URL: .*not a NATS URL"):
        load_settings(ServiceSettings)


@pytest.mark.parametrize("placeholder", ["changeme", "<your-token>", "${NATS_TOKEN}", "  "])
def test_placeholder_secret_fails_fast_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, placeholder: str
) -> None:
    monkeypatch.setenv("ARENA_NATS__TOKEN", placeholder)

    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings)

    message = str(raised.value)
    assert "ARENA_NATS__TOKEN" in message
    assert "got" not in message  # the value of a secret is never printed


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_GRPC__PORT", "0")
    monkeypatch.setenv("ARENA_LOG__LEVEL", "chatty")

    with pytest.raises(ConfigurationError) as raised:
        load_settings(ServiceSettings)

    assert "ARENA_GRPC__PORT" in str(raised.value)
    assert "ARENA_LOG__LEVEL" in str(raised.value)


def test_env_var_name_skips_list_indices() -> None:
    assert env_var_name(("nats", "tls", "ca_file")) == "ARENA_NATS__TLS__CA_FILE"
    assert env_var_name(("judge", 0, "model")) == "ARENA_JUDGE__MODEL"
