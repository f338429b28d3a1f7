"""The `arena` command line."""

from __future__ import annotations

import click

from arena_cli import (
    demo_command,
    flywheel_commands,
    inference_commands,
    judge_commands,
    rating_commands,
    selection_commands,
    stack_commands,
    training_commands,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="arena-flywheel")
def cli() -> None:
    """Arena Flywheel: simulated chatbot-arena battles, Elo leaderboards and a post-training
    data flywheel."""


stack_commands.register(cli)
selection_commands.register(cli)
rating_commands.register(cli)
inference_commands.register(cli)
judge_commands.register(cli)
training_commands.register(cli)
flywheel_commands.register(cli)
demo_command.register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
