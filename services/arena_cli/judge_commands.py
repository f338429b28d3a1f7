"""`arena judge battles|consistency|gold|quality`: recorded judgments in the public formats.

Offline tools over files; nothing here needs a running service or a model, except `gold
--service`, which has a running judge service judge the gold pairs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import click
import grpc
import yaml
from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2 as pb
from arena.judge.v1 import judge_service_pb2_grpc as pb_grpc
from arena_core.errors import ArenaError
from arena_core.rpc.client import service_channel
from arena_judge.domain.gold import GOLD_SETS, GoldSet, load_gold
from arena_judge.domain.quality import (
    GoldAgreement,
    QualityReport,
    gold_agreement,
    position_consistency,
    quality_report,
)
from arena_judge.domain.records import (
    FORMATS,
    Imported,
    read_answer_lengths,
    read_recorded,
    with_lengths,
)
from arena_judge.domain.verdicts import Side

_PAIR_FORMATS = ("arena-hard", "mt-bench-pair", "ab-ba")


def register(cli: click.Group) -> None:
    cli.add_command(judge)


@click.group()
def judge() -> None:
    """Recorded judgments: battles for `arena rate`, position consistency, gold agreement and
    judge quality reports."""


def _fail(error: ArenaError) -> click.ClickException:
    return click.ClickException(str(error))


def _read(format_name: str, files: Sequence[Path], baseline: str | None = None) -> Imported:
    options = {"baseline": baseline} if format_name == "arena-hard" and baseline else {}
    try:
        return read_recorded(format_name, files, **options)
    except ArenaError as error:
        raise _fail(error) from None


def _print_json(value: Any, out: TextIO | None = None) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False), file=out)


_FILES = click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)


@judge.command()
@click.option(
    "--format", "format_name", type=click.Choice(FORMATS), required=True, help="Input format."
)
@click.option(
    "--baseline",
    default="gpt-4-0314",
    show_default=True,
    help="Arena-Hard: the baseline model every game compares against (written as model_a).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Battles JSONL file; standard output when omitted.",
)
@_FILES
def battles(format_name: str, baseline: str, output: Path | None, files: tuple[Path, ...]) -> None:
    """Turn recorded judgments into battles JSONL for `arena rate`.

    One line per game with a verdict: model_a, model_b, winner (model_a, model_b or tie), weight
    (3 for a strong Arena-Hard verdict), question_id and game (2 = positions swapped, verdict
    mirrored). Games without a verdict are counted as failures on standard error.
    """
    imported = _read(format_name, files, baseline)
    lines = "".join(json.dumps(b.to_json(), ensure_ascii=False) + "\n" for b in imported.battles)
    if output is None:
        sys.stdout.write(lines)
    else:
        output.write_text(lines)
    click.echo(json.dumps(imported.summary()), err=True)


@judge.command()
@click.option(
    "--format",
    "format_name",
    type=click.Choice(_PAIR_FORMATS),
    required=True,
    help="mt-bench-pair (FastChat g1/g2 winners), ab-ba (winner_ab/winner_ba) or arena-hard.",
)
@_FILES
def consistency(format_name: str, files: tuple[Path, ...]) -> None:
    """Position consistency of recorded two-order judgments, as JSON.

    valid: pairs with a verdict in both orders; inconsistent: of those, pairs whose orders named
    different winners; rate = inconsistent / valid.
    """
    stats = position_consistency(_read(format_name, files).games)
    _print_json(
        {
            "valid": stats.valid,
            "inconsistent": stats.inconsistent,
            "rate": stats.rate,
            "first_position_preference": stats.first_position_preference,
            "second_position_preference": stats.second_position_preference,
            "incomplete": stats.incomplete,
        }
    )


def _load_gold(name: str, path: Path) -> GoldSet:
    try:
        return load_gold(name, path)
    except ArenaError as error:
        raise _fail(error) from None


def _recorded_agreements(gold_set: GoldSet, judges: Sequence[str]) -> list[GoldAgreement]:
    try:
        return [gold_set.agreement(name) for name in (judges or sorted(gold_set.recorded))]
    except ArenaError as error:
        raise _fail(error) from None


@judge.command()
@click.option("--gold", "gold_name", type=click.Choice(GOLD_SETS), required=True)
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--judge",
    "judges",
    multiple=True,
    help="Recorded judge: PandaLM gpt-3.5-turbo / pandalm-7b, LLMBar <model>/<method> such as "
    "GPT-4/Vanilla. Repeatable; every recorded judge when omitted. With --service, a JSON file "
    "holding the JudgeSpec to run.",
)
@click.option(
    "--service",
    help="host:port of a judge service: judge the gold pairs there (both orders) instead of "
    "reading recorded verdicts.",
)
@click.option("--limit", type=int, help="With --service: judge only the first N gold items.")
def gold(
    gold_name: str, path: Path, judges: tuple[str, ...], service: str | None, limit: int | None
) -> None:
    """Agreement with human / gold labels: accuracy with and without ties, Cohen's kappa and
    positional agreement, one JSON object per judge."""
    gold_set = _load_gold(gold_name, path)
    if service is None:
        agreements = _recorded_agreements(gold_set, judges)
    else:
        if len(judges) != 1:
            raise click.UsageError("--service needs exactly one --judge: a JudgeSpec JSON file")
        spec = _load_spec(Path(judges[0]))
        label, predictions = asyncio.run(_judge_remotely(service, spec, gold_set, limit))
        agreements = [gold_agreement(gold_set.name, label, gold_set.labels, predictions)]
    _print_json([agreement.__dict__ for agreement in agreements])


def _load_spec(spec_file: Path) -> common_pb2.JudgeSpec:
    """A JudgeSpec from a JSON or YAML file in the contract's JSON mapping."""
    try:
        return json_format.ParseDict(yaml.safe_load(spec_file.read_text()), common_pb2.JudgeSpec())
    except (OSError, yaml.YAMLError, json_format.ParseError) as error:
        raise click.ClickException(f"{spec_file}: not a JudgeSpec ({error})") from None


async def _judge_remotely(
    target: str, spec: common_pb2.JudgeSpec, gold_set: GoldSet, limit: int | None
) -> tuple[str, dict[str, list[Side | None]]]:
    """Has a judge service judge the gold pairs in both orders (cached there, so a re-run of
    the same judge costs nothing) and returns each item's verdict per order."""
    request = pb.JudgeBatchRequest(judge=spec)
    for item in gold_set.items[:limit]:
        request.items.add(
            battle_id=f"gold/{item.item_id}",
            prompt_id=item.item_id,
            prompt=[common_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=item.instruction)],
            a=pb.Candidate(model="output_1", text=item.output_1),
            b=pb.Candidate(model="output_2", text=item.output_2),
        )
    async with service_channel(target) as channel:
        try:
            response = await pb_grpc.JudgeServiceStub(channel).JudgeBatch(request)
        except grpc.aio.AioRpcError as error:
            raise click.ClickException(
                f"judge service {target}: {error.code().name}: {error.details()}"
            ) from None
    sides: dict[int, Side] = {
        pb.VERDICT_A_MUCH_BETTER: "a",
        pb.VERDICT_A_BETTER: "a",
        pb.VERDICT_TIE: "tie",
        pb.VERDICT_B_BETTER: "b",
        pb.VERDICT_B_MUCH_BETTER: "b",
    }
    predictions: dict[str, list[Side | None]] = {}
    for result in response.results:
        by_order = {j.order: sides.get(j.verdict) for j in result.judgments}
        predictions[request.items[result.index].prompt_id] = [
            by_order.get(pb.JUDGE_ORDER_AB),
            by_order.get(pb.JUDGE_ORDER_BA),
        ]
    return f"{spec.name}@{spec.version}", predictions


@judge.command()
@click.option(
    "--format", "format_name", type=click.Choice(_PAIR_FORMATS), required=True, help="Input format."
)
@click.option("--judge", "judge_label", default="", help="Name of the judge in the report.")
@click.option(
    "--answers",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of FastChat model_answer files, for answer lengths the records do not quote.",
)
@click.option(
    "--gold",
    "golds",
    type=(click.Choice(GOLD_SETS), click.Path(exists=True, path_type=Path)),
    multiple=True,
    help="A gold set and its path (repeatable); agreement of --gold-judge's recorded verdicts.",
)
@click.option("--gold-judge", "gold_judges", multiple=True, help="Recorded judge on the gold sets.")
@click.option(
    "--output-format", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@_FILES
def quality(
    format_name: str,
    judge_label: str,
    answers: Path | None,
    golds: tuple[tuple[str, Path], ...],
    gold_judges: tuple[str, ...],
    output_format: str,
    files: tuple[Path, ...],
) -> None:
    """Judge quality report: position bias, length bias, parse failures, gold agreement."""
    games = _read(format_name, files).games
    if answers is not None:
        try:
            games = with_lengths(games, read_answer_lengths(sorted(answers.glob("*.jsonl"))))
        except ArenaError as error:
            raise _fail(error) from None
    agreements: list[GoldAgreement] = []
    for name, path in golds:
        agreements += _recorded_agreements(_load_gold(name, path), gold_judges)
    report = quality_report(judge_label or format_name, games, agreements)
    if output_format == "json":
        _print_json(report.to_json())
    else:
        Console().print(quality_table(report))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def quality_table(report: QualityReport) -> Table:
    table = Table(title=f"judge quality: {report.judge}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("over", justify="right")
    position, length, parse = report.position, report.length, report.parse
    table.add_row("position inconsistency", _pct(position.rate), f"{position.valid} pairs")
    table.add_row(
        "  first shown won both",
        _pct(position.first_position_preference),
        f"{position.inconsistent} inconsistent",
    )
    table.add_row(
        "  second shown won both",
        _pct(position.second_position_preference),
        f"{position.inconsistent} inconsistent",
    )
    table.add_row(
        "longer answer wins", _pct(length.longer_wins_rate), f"{length.decisive} decisive"
    )
    table.add_row("parse failures", _pct(parse.failure_rate), f"{parse.total} judgments")
    for agreement in report.gold:
        name = f"{agreement.gold_set} / {agreement.judge}"
        table.add_row(f"{name}: accuracy", _pct(agreement.accuracy), f"{agreement.n} items")
        table.add_row("  without ties", _pct(agreement.accuracy_without_ties), "")
        kappa = "-" if agreement.cohen_kappa is None else f"{agreement.cohen_kappa:.3f}"
        table.add_row("  Cohen's kappa", kappa, "")
        table.add_row("  positional agreement", _pct(agreement.positional_agreement), "")
    return table
