"""Judge settings: every option from ARENA_JUDGE__*, bad template files stop the start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena_core.errors import ConfigurationError
from arena_core.settings import load_settings
from arena_judge.app import wiring
from arena_judge.settings import JudgeSettings
from tests.unit.judge.datasets import FASTCHAT_PROMPTS


def test_options_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_JUDGE__INFERENCE_TARGET", "inference:50051")
    monkeypatch.setenv("ARENA_JUDGE__TEMPLATE_PATHS", f"{FASTCHAT_PROMPTS}, /etc/judges")
    monkeypatch.setenv("ARENA_JUDGE__MAX_CONCURRENCY", "128")
    settings = load_settings(JudgeSettings)
    assert settings.judge.inference_target == "inference:50051"
    assert settings.judge.template_files == [FASTCHAT_PROMPTS, Path("/etc/judges")]
    assert settings.judge.max_concurrency == 128


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARENA_JUDGE__DEFAULT_MAX_PARSE_RETRIES", "99")
    with pytest.raises(ConfigurationError, match="ARENA_JUDGE__DEFAULT_MAX_PARSE_RETRIES"):
        load_settings(JudgeSettings)


def test_a_missing_template_file_stops_the_service(tmp_path: Path) -> None:
    settings = JudgeSettings(judge={"template_paths": str(tmp_path / "missing.jsonl")})
    with pytest.raises(ConfigurationError, match=r"ARENA_JUDGE__TEMPLATE_PATHS: .*missing\.jsonl"):
        wiring(settings)
