"""deploy/examples/flywheel-gpu.yaml is a valid spec, and the mistakes an operator makes when
editing it are rejected before anything runs, with the field named, by `parse_spec` and by
`arena flywheel validate` / `start` (exit code 2, the file named). No service is needed: an
invalid spec never reaches one."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from arena_cli import flywheel_commands
from arena_cli.nats_server import free_port
from arena_flywheel.domain.spec import SpecError, parse_spec
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "examples" / "flywheel-gpu.yaml"


def example() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return raw


def test_the_gpu_example_is_valid_and_means_what_its_comments_say() -> None:
    spec = parse_spec(EXAMPLE.read_text(), str(EXAMPLE))
    assert spec.models[spec.target.model].backend == "vllm"
    backends = {name: spec.models[name].backend for name in spec.opponents}
    assert sorted(backends.values()) == ["openai", "vllm", "vllm"]
    hosted = next(name for name, backend in backends.items() if backend == "openai")
    assert spec.models[hosted].api_key_secret  # the key comes from a Secret, by name
    assert spec.judge.protocol == "paper"
    assert spec.judge.model is not None
    judge = spec.models[spec.judge.model]
    assert judge.backend == "vllm"
    assert judge.path is not None
    assert "70B" in judge.path
    # The paper's plan and thresholds: D1/D2/D3, D4/D5/D6, D7/D8/D9; K = 3 then 1 for SFT, 2 DPO.
    assert spec.iterations == 3
    assert spec.stages == ["sft", "dpo", "rl"]
    assert spec.pool.slices == 10
    assert [[spec.slice_for(i, stage) for stage in spec.stages] for i in (1, 2, 3)] == [
        [1, 2, 3],
        [4, 5, 6],
        [7, 8, 9],
    ]
    assert [spec.threshold(i, "sft") for i in (1, 2, 3)] == [3.0, 1.0, 1.0]
    assert spec.threshold(1, "dpo") == 2.0
    assert spec.evaluation.anchor is not None
    assert spec.evaluation.anchor.rating == 1100
    assert spec.evaluation.anchor.model in spec.evaluation.references
    # Every model name works as a Kubernetes DNS label (the chart names servers after models).
    for name in spec.models:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name), name


def _unknown_opponent(raw: dict[str, Any]) -> None:
    raw["opponents"][1] = "qwen2-72b-instruct"


def _overlapping_slices(raw: dict[str, Any]) -> None:
    raw["plan"][2]["dpo"] = 2  # iteration 1's DPO slice


def _k_out_of_range(raw: dict[str, Any]) -> None:
    raw["thresholds"]["sft"] = 12.0


def _judge_without_model(raw: dict[str, Any]) -> None:
    del raw["judge"]["model"]


def _judge_model_undeclared(raw: dict[str, Any]) -> None:
    raw["judge"]["model"] = "llama-3-70b"


BROKEN: list[tuple[Callable[[dict[str, Any]], None], str, str]] = [
    (_unknown_opponent, "opponents[1]", "unknown model 'qwen2-72b-instruct'"),
    (_overlapping_slices, "plan.2.dpo", "slice D2 is already used by iteration 1 dpo"),
    (_k_out_of_range, "thresholds.sft", "less than or equal to 9"),
    (_judge_without_model, "judge", "the paper judge needs `model`"),
    (_judge_model_undeclared, "judge.model", "unknown model 'llama-3-70b'"),
]


@pytest.mark.parametrize(("breakage", "field", "message"), BROKEN)
def test_broken_variants_are_rejected_naming_the_field(
    breakage: Callable[[dict[str, Any]], None], field: str, message: str, tmp_path: Path
) -> None:
    raw = copy.deepcopy(example())
    breakage(raw)
    text = yaml.safe_dump(raw, sort_keys=False)
    with pytest.raises(SpecError) as raised:
        parse_spec(text, "flywheel-gpu.yaml")
    problems = {violation.field: violation.message for violation in raised.value.violations}
    assert field in problems, problems
    assert message in problems[field]

    path = tmp_path / "flywheel-gpu.yaml"
    path.write_text(text)
    group = click.Group()
    flywheel_commands.register(group)
    checked = CliRunner().invoke(group, ["flywheel", "validate", str(path)])
    assert checked.exit_code == 2
    assert str(path) in checked.stderr
    assert f"{field}: " in checked.stderr
    # `start` refuses it the same way, before dialling anything (no service listens there).
    address = f"127.0.0.1:{free_port()}"
    started = CliRunner().invoke(
        group, ["flywheel", "start", str(path), "--detach", "--target", address]
    )
    assert started.exit_code == 2
    assert message in started.stderr
    assert "cannot reach" not in started.stderr


def test_validate_accepts_the_example() -> None:
    group = click.Group()
    flywheel_commands.register(group)
    result = CliRunner().invoke(group, ["flywheel", "validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid: wizardlm-beta-7b" in result.stdout
