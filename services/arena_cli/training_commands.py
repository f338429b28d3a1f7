"""`arena training ...`: recipes and DeepSpeed configs offline; runs on a training service.

`defaults` and `deepspeed-config` print what the training domain would use (no service needed);
`start`, `runs`, `get`, `watch`, `logs`, `cancel` and `checkpoints` talk to a running training
service over gRPC (the local stack's by default).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml
from google.protobuf import json_format
from grpc import aio
from rich.console import Console
from rich.table import Table

from arena.common.v1 import common_pb2
from arena.training.v1 import training_service_pb2 as pb
from arena.training.v1 import training_service_pb2_grpc as pb_grpc
from arena_cli.stack import StackPorts
from arena_core.errors import ArenaError
from arena_core.rpc.client import service_channel
from arena_training.domain.deepspeed import zero_config
from arena_training.domain.recipes import Stage, build_recipe

console = Console()
T = TypeVar("T")

_STAGES = [stage.value for stage in Stage]
_STATES = {
    name.removeprefix("TRAINING_RUN_STATE_").lower(): value
    for name, value in pb.TrainingRunState.items()
}


def register(cli: click.Group) -> None:
    cli.add_command(training)


@click.group()
def training() -> None:
    """Post-training runs: SFT, DPO, reward model and RL (RLOO/GRPO) with TRL."""


def _service_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--service",
        default=lambda: f"127.0.0.1:{StackPorts().grpc('training')}",
        show_default="the local stack's training service",
        help="host:port of the training service.",
    )(function)


def _call(service: str, body: Callable[[pb_grpc.TrainingServiceAsyncStub], Awaitable[T]]) -> T:
    async def run() -> T:
        async with service_channel(service) as channel:
            try:
                return await body(pb_grpc.TrainingServiceStub(channel))
            except aio.AioRpcError as error:
                raise click.ClickException(
                    f"training service {service}: {error.code().name}: {error.details()}"
                ) from None

    return asyncio.run(run())


def _print_message(message: Any) -> None:
    click.echo(json.dumps(json_format.MessageToDict(message), indent=2))


def _friendly(function: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except ArenaError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


@training.command()
@click.option("--stage", type=click.Choice(_STAGES), help="Only this stage.")
def defaults(stage: str | None) -> None:
    """The paper's hyperparameters and options per stage, as a run uses them when unset."""
    stages = [Stage(stage)] if stage else list(Stage)
    recipes = {s.value: build_recipe(s).model_dump(mode="json", exclude_none=True) for s in stages}
    click.echo(json.dumps(recipes, indent=2))


@training.command("deepspeed-config")
@click.option("--zero", "stage", type=click.Choice(["2", "3"]), default="2", show_default=True)
@click.option("--offload-optimizer", is_flag=True, help="Optimizer state in CPU memory.")
@click.option("--offload-parameters", is_flag=True, help="Parameters in CPU memory (ZeRO-3).")
@_friendly
def deepspeed_config(stage: str, offload_optimizer: bool, offload_parameters: bool) -> None:
    """The DeepSpeed config a run with this ZeRO stage gets (numbers left to the Trainer)."""
    if offload_parameters and stage != "3":
        raise click.UsageError("--offload-parameters needs --zero 3")
    config = zero_config(
        int(stage), offload_optimizer=offload_optimizer, offload_parameters=offload_parameters
    )
    click.echo(json.dumps(config, indent=2))


def _settings(values: Sequence[str]) -> dict[str, Any]:
    """`a.b=1` pairs as a nested dict, values read as numbers, booleans or strings."""
    tree: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--set")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _scalar(raw)
    return tree


def _scalar(raw: str) -> Any:
    """JSON first (so `1e-6` is a number), then YAML (`true`, bare words)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return yaml.safe_load(raw)


def _dataset(value: str) -> common_pb2.DatasetRef:
    """A local JSONL/Parquet file is sent with its path; anything else is a dataset id."""
    path = Path(value)
    if path.is_file():
        media = "application/vnd.apache.parquet" if path.suffix == ".parquet" else ""
        return common_pb2.DatasetRef(
            name=path.stem,
            files=[common_pb2.ArtifactRef(uri=path.resolve().as_uri(), media_type=media)],
        )
    return common_pb2.DatasetRef(dataset_id=value)


@training.command()
@click.option("--recipe", "stage", type=click.Choice(_STAGES), required=True)
@click.option("--base", help="Base model: a local folder, file:// URI or hub id.")
@click.option("--base-checkpoint", help="Base model: a registered checkpoint id.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    required=True,
    help="A JSONL/Parquet file or a dataset id from the catalog. Repeatable.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    help="Recipe field, e.g. hyperparameters.learning_rate=1e-6 or dpo.beta=0.1. Repeatable.",
)
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (defaults: r 16, alpha 32).")
@click.option("--zero", type=click.Choice(["2", "3"]), help="DeepSpeed ZeRO stage.")
@click.option("--reward-checkpoint", help="RL: the reward model's checkpoint id.")
@click.option("--name", default="", help="Model name the checkpoint is registered under.")
@click.option("--run-id", default="", help="Idempotency key; a known id returns that run.")
@click.option("--validate-only", is_flag=True, help="Check everything, start nothing.")
@_service_option
def start(
    stage: str,
    base: str | None,
    base_checkpoint: str | None,
    datasets: tuple[str, ...],
    settings: tuple[str, ...],
    lora: bool,
    zero: str | None,
    reward_checkpoint: str | None,
    name: str,
    run_id: str,
    validate_only: bool,
    service: str,
) -> None:
    """Starts a training run and prints it."""
    if bool(base) == bool(base_checkpoint):
        raise click.UsageError("give exactly one of --base and --base-checkpoint")
    recipe_dict = _settings(settings)
    recipe_dict.setdefault(stage, {})
    if lora:
        recipe_dict.setdefault("lora", {})
    if zero:
        recipe_dict.setdefault("deepspeed", {})["zero_stage"] = f"ZERO_STAGE_{zero}"
    if reward_checkpoint:
        recipe_dict.setdefault("rl", {})["reward_model"] = {"checkpoint_id": reward_checkpoint}
    try:
        recipe = json_format.ParseDict(recipe_dict, pb.Recipe())
    except json_format.ParseError as error:
        raise click.BadParameter(str(error), param_hint="--set") from None
    spec = pb.TrainingRunSpec(recipe=recipe, output_model_name=name)
    if base:
        spec.base.uri = base
    else:
        spec.base.checkpoint_id = base_checkpoint or ""
    spec.datasets.extend(_dataset(value) for value in datasets)
    request = pb.StartRunRequest(spec=spec, run_id=run_id, validate_only=validate_only)
    response = _call(service, lambda stub: stub.StartRun(request))
    _print_message(response.run)


@training.command()
@click.option("--state", type=click.Choice(sorted(_STATES)), help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_service_option
def runs(state: str | None, limit: int, service: str) -> None:
    """Lists runs, newest first."""
    request = pb.ListRunsRequest()
    if state:
        request.state = _STATES[state]
    request.page.page_size = limit
    response = _call(service, lambda stub: stub.ListRuns(request))
    table = Table("run", "stage", "state", "step", "loss", "attempt", "checkpoint")
    for run in response.runs:
        progress = run.progress
        table.add_row(
            run.run_id,
            common_pb2.TrainingStage.Name(run.stage).removeprefix("TRAINING_STAGE_").lower(),
            pb.TrainingRunState.Name(run.state).removeprefix("TRAINING_RUN_STATE_").lower(),
            f"{progress.progress.done}/{progress.progress.total or '?'}",
            f"{progress.loss:.4f}" if progress.HasField("loss") else "",
            str(run.attempt),
            run.checkpoint_id,
        )
    console.print(table)


@training.command()
@click.argument("run_id")
@_service_option
def get(run_id: str, service: str) -> None:
    """Prints one run."""
    response = _call(service, lambda stub: stub.GetRun(pb.GetRunRequest(run_id=run_id)))
    _print_message(response.run)


@training.command()
@click.argument("run_id")
@_service_option
def watch(run_id: str, service: str) -> None:
    """Prints a run's state changes and progress until it ends."""

    async def body(stub: pb_grpc.TrainingServiceAsyncStub) -> None:
        async for event in stub.StreamRunEvents(pb.StreamRunEventsRequest(run_id=run_id)):
            if event.WhichOneof("event") == "run":
                state = pb.TrainingRunState.Name(event.run.state).removeprefix(
                    "TRAINING_RUN_STATE_"
                )
                failure = event.run.failure
                reason = f" {failure.reason}: {failure.message}" if failure.reason else ""
                click.echo(f"{state} attempt={event.run.attempt}{reason}")
            else:
                p = event.progress
                loss = f" loss={p.loss:.4f}" if p.HasField("loss") else ""
                rate = (
                    f" tokens/s={p.tokens_per_second:.0f}"
                    if p.HasField("tokens_per_second")
                    else ""
                )
                eta = f" eta={p.progress.eta.seconds}s" if p.progress.HasField("eta") else ""
                click.echo(f"step {p.progress.done}/{p.progress.total}{loss}{rate}{eta}")

    _call(service, body)


@training.command()
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=click.IntRange(0), help="Start with only the last N lines.")
@_service_option
def logs(run_id: str, follow: bool, tail: int | None, service: str) -> None:
    """Prints a run's log."""
    request = pb.StreamRunLogsRequest(run_id=run_id, follow=follow)
    if tail is not None:
        request.tail_lines = tail

    async def body(stub: pb_grpc.TrainingServiceAsyncStub) -> None:
        async for chunk in stub.StreamRunLogs(request):
            for line in chunk.lines:
                click.echo(line.text)

    _call(service, body)


@training.command()
@click.argument("run_id")
@_service_option
def cancel(run_id: str, service: str) -> None:
    """Stops a run and removes its processes or Kubernetes objects."""
    response = _call(service, lambda stub: stub.CancelRun(pb.CancelRunRequest(run_id=run_id)))
    click.echo(pb.TrainingRunState.Name(response.run.state).removeprefix("TRAINING_RUN_STATE_"))


@training.command()
@click.option("--model", default="", help="Only checkpoints registered under this name.")
@_service_option
def checkpoints(model: str, service: str) -> None:
    """Lists registered checkpoints, newest first."""
    request = pb.ListCheckpointsRequest(model_name=model)
    response = _call(service, lambda stub: stub.ListCheckpoints(request))
    table = Table("checkpoint", "model", "stage", "format", "step", "uri")
    for checkpoint in response.checkpoints:
        table.add_row(
            checkpoint.checkpoint_id,
            checkpoint.model_name,
            common_pb2.TrainingStage.Name(checkpoint.stage).removeprefix("TRAINING_STAGE_").lower(),
            pb.CheckpointFormat.Name(checkpoint.format).removeprefix("CHECKPOINT_FORMAT_").lower(),
            str(checkpoint.step),
            checkpoint.artifact.uri,
        )
    console.print(table)
