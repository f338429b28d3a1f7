"""`arena rate`, `arena consistency` and `arena score`: the rating math from the shell.

The same domain functions the rating service runs; no service is needed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from arena_rating.domain import (
    DEFAULT_BOOTSTRAP_ROUNDS,
    Leaderboard,
    RatingInputError,
    compare_leaderboards,
    load_alpaca_annotations,
    load_battles,
    load_glm_weights,
    load_mt_bench_judgments,
    rate_battles,
    score_alpaca_eval,
    score_mt_bench,
    scored_models_from_json,
)

PLOT_SUFFIXES = (".png", ".svg")
_PROGRESS_FROM_ROUNDS = 200  # below this a bootstrap finishes before a bar is worth drawing

err_console = Console(stderr=True)

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Bad input is the user's to fix: print it as a click error, not a traceback."""
    try:
        yield
    except RatingInputError as exc:
        raise click.ClickException(str(exc)) from exc


def _parse_anchors(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, float]:
    anchors = {}
    for value in values:
        model, sep, rating = value.rpartition("=")
        try:
            number = float(rating)
        except ValueError:
            number = math.nan
        if not sep or not model or not math.isfinite(number):
            raise click.BadParameter(f"expected MODEL=RATING, got {value!r}")
        anchors[model] = number
    return anchors


def _check_plot(_ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() not in PLOT_SUFFIXES:
        raise click.BadParameter(f"the plot must be a .png or .svg file, got {value.name!r}")
    return value


@click.command("rate")
@click.argument("battles_path", metavar="BATTLES.jsonl", type=_existing_file)
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    metavar="MODEL=RATING",
    callback=_parse_anchors,
    help="Hold a model at a rating (repeatable). Default: ratings centred on a mean of 1000.",
)
@click.option("--baseline", metavar="MODEL", help="Report each model's win rate against MODEL.")
@click.option(
    "--bootstrap",
    "rounds",
    type=click.IntRange(min=0),
    default=DEFAULT_BOOTSTRAP_ROUNDS,
    show_default=True,
    help="Bootstrap rounds for the 95% CI; 0 reports the MLE without a CI.",
)
@click.option("--seed", type=int, default=None, help="Seed for a reproducible bootstrap.")
@click.option("--category", help="Rate only the battles of this category.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_check_plot,
    help="Also draw the leaderboard with its CI whiskers to FILE.png or FILE.svg.",
)
@click.option(
    "--ci",
    type=click.Choice(["bootstrap", "analytic"]),
    default="bootstrap",
    show_default=True,
    help="analytic: a sandwich-variance CI instead of the bootstrap, for quick refreshes.",
)
@click.option("--style-control", is_flag=True, help="Control for length and markdown style.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def rate(
    battles_path: Path,
    anchors: dict[str, float],
    baseline: str | None,
    rounds: int,
    seed: int | None,
    category: str | None,
    fmt: str,
    plot: Path | None,
    ci: str,
    style_control: bool,
    workers: int,
) -> None:
    """Bradley–Terry Elo leaderboard of the battles in BATTLES.jsonl."""
    with _domain_errors():
        battles = load_battles(battles_path)
        with _bootstrap_progress(rounds if ci == "bootstrap" else 0) as advance:
            board = rate_battles(
                battles,
                anchors=anchors,
                baseline=baseline,
                bootstrap_rounds=rounds,
                seed=seed,
                ci="analytic" if ci == "analytic" else "bootstrap",
                style_control=style_control,
                category=category,
                workers=workers,
                progress=advance,
            )
    _warn_nonfinite(board)
    if fmt == "json":
        click.echo(_dumps(board.to_dict()))
    elif fmt == "csv":
        click.echo(leaderboard_csv(board), nl=False)
    else:
        Console().print(leaderboard_table(board))
    if plot is not None:
        plot_leaderboard(board, plot)
        err_console.print(f"plot written to {plot}")


@click.command("consistency")
@click.argument("benchmark", metavar="A.json", type=_existing_file)
@click.argument("reference", metavar="B.json", type=_existing_file)
def consistency(benchmark: Path, reference: Path) -> None:
    """How well leaderboard A agrees with reference leaderboard B (Arena-Hard's metrics)."""
    with _domain_errors():
        a = scored_models_from_json(_load_json(benchmark), source=str(benchmark))
        b = scored_models_from_json(_load_json(reference), source=str(reference))
        result = compare_leaderboards(a, b)
    click.echo(_dumps(result.to_dict()))


@click.group("score")
def score() -> None:
    """Scores of the reference benchmarks (MT-Bench, AlpacaEval)."""


@score.command("mt-bench")
@click.argument("judgments", metavar="JUDGMENTS.jsonl", type=_existing_file)
@click.option("--bootstrap", "rounds", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def score_mt_bench_command(judgments: Path, rounds: int, seed: int) -> None:
    """MT-Bench scores from FastChat single-grade judgments (-1 grades dropped)."""
    with _domain_errors():
        scores = score_mt_bench(
            load_mt_bench_judgments(judgments), bootstrap_rounds=rounds, seed=seed
        )
    rows = [
        {"model": s.model, "score": s.score, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}
        for s in scores
    ]
    click.echo(_dumps({"models": rows}))


@score.command("alpaca-eval")
@click.argument(
    "annotations", metavar="ANNOTATIONS.json...", nargs=-1, required=True, type=_existing_file
)
@click.option(
    "--length-controlled",
    is_flag=True,
    help="Add the length-controlled win rate (needs at least two models' annotations).",
)
@click.option(
    "--glm-weights",
    type=_existing_file,
    help="AlpacaEval's published GLM weights CSV; listed models keep their coefficients.",
)
def score_alpaca_eval_command(
    annotations: tuple[Path, ...], length_controlled: bool, glm_weights: Path | None
) -> None:
    """AlpacaEval win rates (percent) of each generator_2 against its baseline."""
    with _domain_errors():
        sets = load_alpaca_annotations(annotations)
        weights = load_glm_weights(glm_weights) if glm_weights is not None else None
        scores = score_alpaca_eval(sets, length_controlled=length_controlled, weights=weights)
    rows = []
    for s in scores:
        row: dict[str, Any] = {
            "model": s.model,
            "win_rate": s.win_rate,
            "standard_error": s.standard_error,
            "n": s.n,
        }
        if length_controlled:
            row["length_controlled_win_rate"] = s.length_controlled_win_rate
        rows.append(row)
    click.echo(_dumps({"models": rows}))


def register(cli: click.Group) -> None:
    """Add the rating commands to the `arena` group (merging into an existing `score`)."""
    cli.add_command(rate)
    cli.add_command(consistency)
    existing = cli.commands.get("score")
    if isinstance(existing, click.Group) and existing is not score:
        for name, command in score.commands.items():
            existing.add_command(command, name)
    else:
        cli.add_command(score)


# --- presentation -------------------------------------------------------------------------


def leaderboard_table(board: Leaderboard) -> Table:
    """The leaderboard as a rich table, CIs as +up/-down like Chatbot Arena."""
    title = "Leaderboard" + (f" - {board.category}" if board.category else "")
    caption = _caption(board)
    table = Table(title=title, caption=caption)
    table.add_column("Rank", justify="right")
    table.add_column("Model")
    table.add_column("Rating", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("MLE", justify="right")
    table.add_column("Battles", justify="right")
    if board.baseline is not None:
        table.add_column(f"Win rate vs {board.baseline}", justify="right")
    for row in board.models:
        ci = "-"
        if row.ci_low is not None and row.ci_high is not None:
            ci = f"+{row.ci_high - row.rating:.1f}/-{row.rating - row.ci_low:.1f}"
        cells = [
            str(row.rank),
            row.model,
            f"{row.rating:.1f}",
            ci,
            f"{row.mle:.1f}",
            str(row.battles),
        ]
        if board.baseline is not None:
            cells.append(_win_rate_cell(row.win_rate, row.win_rate_ci_low, row.win_rate_ci_high))
        table.add_row(*cells)
    return table


def leaderboard_csv(board: Leaderboard) -> str:
    """model,rating,mle,ci_low,ci_high,rank,battles[,win_rate]."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    rows = board.to_dict()["models"]
    header = ["model", "rating", "mle", "ci_low", "ci_high", "rank", "battles"]
    if board.baseline is not None:
        header.append("win_rate")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row[key] is None else row[key] for key in header])
    return out.getvalue()


def plot_leaderboard(board: Leaderboard, path: Path) -> None:
    """Ratings with 95% CI whiskers, best first, saved as PNG or SVG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    rows = board.models
    x = list(range(len(rows)))
    ratings = [r.rating for r in rows]
    below = [0.0 if r.ci_low is None else r.rating - r.ci_low for r in rows]
    above = [0.0 if r.ci_high is None else r.ci_high - r.rating for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2.0), 5.0))
    ax.errorbar(x, ratings, yerr=[below, above], fmt="o", capsize=3, color="tab:blue")
    ax.set_xticks(x, [r.model for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("Elo rating")
    label = "95% CI (bootstrap)" if board.ci_method == "bootstrap" else "95% CI"
    ax.set_title(f"Bradley–Terry ratings with {label}" if board.ci_method else "MLE ratings")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _caption(board: Leaderboard) -> str:
    parts = []
    if board.ci_method == "bootstrap":
        parts.append(f"{board.bootstrap_rounds} bootstrap rounds, median rating")
    elif board.ci_method == "analytic":
        parts.append("analytic (sandwich) CI")
    else:
        parts.append("MLE, no CI")
    if board.anchors:
        parts.append("anchor " + ", ".join(f"{m}={r:g}" for m, r in board.anchors))
    if board.style_coefficients is not None:
        parts.append("style controlled")
    return "; ".join(parts)


def _win_rate_cell(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.1f}%"
    return f"{value:.1f}% (-{value - low:.1f}/+{high - value:.1f})"


def _warn_nonfinite(board: Leaderboard) -> None:
    if not board.finite:
        err_console.print(
            "[yellow]warning:[/yellow] these battles have no finite MLE (a model wins or loses "
            "all its battles, or groups never meet); a ridge penalty bounded the ratings"
        )
    if board.nonfinite_rounds:
        err_console.print(
            f"[yellow]warning:[/yellow] {board.nonfinite_rounds} of {board.bootstrap_rounds} "
            "bootstrap rounds had no finite MLE or missed a model; the ridge policy applied"
        )


@contextmanager
def _bootstrap_progress(rounds: int) -> Iterator[Callable[[int], None] | None]:
    """A transient progress bar on a terminal for long bootstraps; nothing otherwise."""
    if rounds < _PROGRESS_FROM_ROUNDS or not sys.stderr.isatty():
        yield None
        return
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("bootstrap", total=rounds)
        yield lambda done: progress.advance(task, done)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not readable JSON ({exc})") from exc


def _dumps(document: Any) -> str:
    return json.dumps(_finite(document), indent=2)


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
