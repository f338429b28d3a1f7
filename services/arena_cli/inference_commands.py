"""`arena inference models|generate|replay`: talk to a running inference service, or check
recorded-answer files offline.

The target defaults to the inference service of the local stack (``arena up``), else
127.0.0.1:50051; ``--target host:port`` picks another.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from grpc import aio

from arena.common.v1 import common_pb2
from arena.inference.v1 import inference_service_pb2 as pb
from arena.inference.v1 import inference_service_pb2_grpc as pb_grpc
from arena_cli.stack import StackState, arena_home
from arena_core.errors import ArenaError
from arena_core.rpc.client import service_channel
from arena_inference.domain.replay import ReplayIndex
from arena_inference.domain.types import ReplayFormat

_STATES = {
    value: name.removeprefix("MODEL_STATE_").lower() for name, value in pb.ModelState.items()
}
_BACKENDS = {value: name.removeprefix("BACKEND_").lower() for name, value in pb.Backend.items()}


def register(cli: click.Group) -> None:
    cli.add_command(inference)


def default_target() -> str:
    state = StackState.read(arena_home())
    if state is not None:
        for entry in state.services:
            if entry.service == "inference":
                return entry.grpc
    return "127.0.0.1:50051"


_TARGET = click.option(
    "--target", default=None, help="inference service host:port (default: the local stack)"
)


@click.group()
def inference() -> None:
    """The inference service: registered models, one-off generations, replay files."""


async def _call(target: str, method: str, request: object) -> object:
    async with service_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            return await getattr(stub, method)(request, timeout=600)
        except aio.AioRpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None


@inference.command()
@_TARGET
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def models(target: str | None, as_json: bool) -> None:
    """List the registered models and their state."""
    response = asyncio.run(_call(target or default_target(), "ListModels", pb.ListModelsRequest()))
    assert isinstance(response, pb.ListModelsResponse)
    rows: list[dict[str, Any]] = [
        {
            "name": info.spec.name,
            "backend": _BACKENDS.get(info.spec.backend, "?"),
            "state": _STATES.get(info.state, "?"),
            "revision": info.spec.revision,
            "context": info.context_length if info.HasField("context_length") else None,
            "adapters": list(info.loaded_adapters),
        }
        for info in response.models
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(
            f"{row['name']:32} {row['backend']:18} {row['state']:10} {row['revision'] or '-':14}"
            f" ctx={row['context'] or '?'} adapters={','.join(row['adapters']) or '-'}"
        )


@inference.command()
@_TARGET
@click.argument("model")
@click.argument("prompt")
@click.option("--system", default=None, help="a system message first")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--adapter", default="", help="a LoRA adapter attached to the model")
@click.option("--stream", is_flag=True, help="print text as it is produced")
def generate(
    target: str | None,
    model: str,
    prompt: str,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    adapter: str,
    stream: bool,
) -> None:
    """Ask MODEL to answer PROMPT once."""
    messages = []
    if system:
        messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=system))
    messages.append(common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt))
    sampling = common_pb2.SamplingParams()
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if temperature is not None:
        sampling.temperature = temperature
    if seed is not None:
        sampling.seed = seed
    request_input = pb.GenerationInput(
        model=common_pb2.ModelRef(name=model, adapter=adapter),
        messages=messages,
        sampling=sampling,
    )
    address = target or default_target()
    if not stream:
        response = asyncio.run(_call(address, "Generate", pb.GenerateRequest(input=request_input)))
        assert isinstance(response, pb.GenerateResponse)
        _show(response.generation, with_text=True)
        return
    asyncio.run(_stream(address, request_input))


async def _stream(target: str, request_input: pb.GenerationInput) -> None:
    async with service_channel(target) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        try:
            async for item in stub.GenerateStream(pb.GenerateStreamRequest(input=request_input)):
                if item.WhichOneof("event") == "delta":
                    click.echo(item.delta.text, nl=False)
                else:
                    click.echo()
                    _show(item.generation, with_text=False)
        except aio.AioRpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None


def _show(generation: pb.Generation, with_text: bool) -> None:
    if with_text:
        for choice in generation.choices:
            click.echo(choice.text)
    usage = generation.usage
    click.echo(
        f"-- {generation.model.name}@{generation.model.revision} "
        f"{usage.prompt_tokens}+{usage.completion_tokens} tokens, "
        f"{generation.latency.ToNanoseconds() / 1e9:.2f}s"
        f"{', cached' if generation.cached else ''}, id {generation.generation_id[:16]}",
        err=True,
    )


@inference.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--format",
    "replay_format",
    type=click.Choice([fmt.value for fmt in ReplayFormat]),
    default=ReplayFormat.AUTO.value,
)
@click.option("--model", default="", help="keep only this model's records")
def replay(files: tuple[Path, ...], replay_format: str, model: str) -> None:
    """Check recorded-answer FILES (answers plus any question files) as a replay model would
    load them, and count the conversations they answer."""
    try:
        index = ReplayIndex.load([str(path) for path in files], ReplayFormat(replay_format), model)
    except ArenaError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{len(index)} recorded conversations")
