"""`arena training`: offline commands, and how `start` turns options into a run spec."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from arena_cli import training_commands
from arena_training.domain.deepspeed import deepspeed_config_problems


def cli() -> click.Group:
    group = click.Group()
    training_commands.register(group)
    return group


def test_defaults_show_the_papers_values() -> None:
    result = CliRunner().invoke(cli(), ["training", "defaults", "--stage", "dpo"])
    assert result.exit_code == 0, result.output
    dpo = json.loads(result.output)["dpo"]
    assert dpo["dpo"]["beta"] == 0.3
    assert dpo["hyperparameters"]["learning_rate"] == 5e-7
    assert dpo["hyperparameters"]["num_epochs"] == 2.0


def test_deepspeed_config_prints_a_valid_config() -> None:
    result = CliRunner().invoke(
        cli(), ["training", "deepspeed-config", "--zero", "3", "--offload-parameters"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert deepspeed_config_problems(config) == []
    bad = CliRunner().invoke(cli(), ["training", "deepspeed-config", "--offload-parameters"])
    assert bad.exit_code != 0
    assert "--offload-parameters needs --zero 3" in bad.output


def test_set_options_become_nested_recipe_fields() -> None:
    tree = training_commands._settings(
        ["hyperparameters.learning_rate=1e-6", "dpo.beta=0.1", "sft.packing=true"]
    )
    assert tree == {
        "hyperparameters": {"learning_rate": 1e-6},
        "dpo": {"beta": 0.1},
        "sft": {"packing": True},
    }


def test_start_needs_exactly_one_base() -> None:
    result = CliRunner().invoke(
        cli(), ["training", "start", "--recipe", "sft", "--dataset", "ds-1"]
    )
    assert result.exit_code != 0
    assert "exactly one of --base and --base-checkpoint" in result.output


def test_the_gpu_check_model_has_about_a_billion_parameters() -> None:
    import torch
    from transformers import LlamaForCausalLM

    from arena_training.gpu_check import main, model_config

    with torch.device("meta"):
        model = LlamaForCausalLM(model_config())
    parameters = sum(p.numel() for p in model.parameters())
    assert 0.9e9 < parameters < 1.3e9
    if not torch.cuda.is_available():
        assert main([]) == 1  # says why instead of failing somewhere inside
