"""Report adapter: the contract's `RunReport` to and from the domain report, and the files a run
leaves under its folder: report.json, report.html, elo.svg and elo.png.

Each file is written to a temporary name in the same folder and flushed to disk; only when all
four are complete are they renamed over the old ones, report.json last. A crash therefore never
leaves half a file: each one is the previous version or the new one.

The plot is drawn on matplotlib's Agg canvas (no display, no pyplot state), imported on first use
so that converting messages costs nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena_flywheel.domain.report import (
    EloSeries,
    IterationResult,
    JudgeStats,
    LeaderboardRow,
    ModelShare,
    PromotionRecord,
    ReportStage,
    RunReport,
    StageSelection,
    elo_series,
    render_html,
    report_json,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

JSON_FILE = "report.json"
HTML_FILE = "report.html"
SVG_FILE = "elo.svg"
PNG_FILE = "elo.png"

_STAGES: dict[int, ReportStage] = {
    common_pb2.TRAINING_STAGE_SFT: "sft",
    common_pb2.TRAINING_STAGE_DPO: "dpo",
    common_pb2.TRAINING_STAGE_REWARD_MODEL: "reward_model",
    common_pb2.TRAINING_STAGE_RL: "rl",
}
_STAGE_VALUES = {stage: value for value, stage in _STAGES.items()}


# --- proto <-> domain ------------------------------------------------------------------------


def row_from_entry(entry: common_pb2.LeaderboardEntry) -> LeaderboardRow:
    return LeaderboardRow(
        model=entry.model,
        rating=entry.rating,
        ci_low=entry.ci_low if entry.HasField("ci_low") else None,
        ci_high=entry.ci_high if entry.HasField("ci_high") else None,
        battles=entry.battles,
        rank=entry.rank,
        mle=entry.mle,
        win_rate=entry.win_rate if entry.HasField("win_rate") else None,
        wins=entry.wins,
        losses=entry.losses,
        ties=entry.ties,
    )


def entry_from_row(row: LeaderboardRow) -> common_pb2.LeaderboardEntry:
    entry = common_pb2.LeaderboardEntry(
        model=row.model,
        rating=row.rating,
        mle=row.rating if row.mle is None else row.mle,
        rank=row.rank,
        battles=row.battles,
        wins=row.wins,
        losses=row.losses,
        ties=row.ties,
    )
    if row.ci_low is not None:
        entry.ci_low = row.ci_low
    if row.ci_high is not None:
        entry.ci_high = row.ci_high
    if row.win_rate is not None:
        entry.win_rate = row.win_rate
    return entry


def stage_name(value: int) -> ReportStage | None:
    """`TRAINING_STAGE_DPO` -> "dpo"; None for an unspecified stage (a whole-iteration step)."""
    return _STAGES.get(value)


def report_from_proto(message: pb.RunReport) -> RunReport:
    return RunReport(
        run_id=message.run_id,
        iterations=tuple(_iteration_from_proto(item) for item in message.iterations),
        judges=tuple(
            JudgeStats(
                name=judge.judge_name,
                version=judge.judge_version,
                judgments=judge.judgments,
                position_inconsistency_rate=judge.position_inconsistency_rate,
                parse_failure_rate=judge.parse_failure_rate,
            )
            for judge in message.judges
        ),
        generated_at=(
            message.generated_at.ToDatetime(tzinfo=UTC)
            if message.HasField("generated_at")
            else None
        ),
    )


def _iteration_from_proto(item: pb.IterationReport) -> IterationResult:
    data = []
    for stage_data in item.data:
        stage = stage_name(stage_data.stage)
        if stage is None:
            continue  # data always belongs to a stage; an unspecified one is not ours to guess
        data.append(
            StageSelection(
                stage=stage,
                threshold=stage_data.threshold,
                records=stage_data.dataset.record_count,
                dataset_id=stage_data.dataset.dataset_id,
                dataset_name=stage_data.dataset.name,
                model_shares=tuple(
                    ModelShare(share.model, share.chosen, share.rejected)
                    for share in stage_data.model_shares
                ),
            )
        )
    return IterationResult(
        iteration=item.iteration,
        target=row_from_entry(item.target),
        leaderboard=tuple(row_from_entry(entry) for entry in item.leaderboard),
        snapshot_id=item.snapshot_id,
        data=tuple(data),
        promotions=tuple(
            PromotionRecord(
                iteration=decision.iteration,
                stage=stage_name(decision.stage),
                candidate_model=decision.candidate_model,
                incumbent_model=decision.incumbent_model,
                promoted=decision.promoted,
                rule=decision.rule,
                reason=decision.reason,
                candidate=(
                    row_from_entry(decision.candidate) if decision.HasField("candidate") else None
                ),
                incumbent=(
                    row_from_entry(decision.incumbent) if decision.HasField("incumbent") else None
                ),
                snapshot_id=decision.snapshot_id,
            )
            for decision in item.promotions
        ),
    )


def report_to_proto(report: RunReport, files: ReportFiles | None = None) -> pb.RunReport:
    """The contract's message for `GetRunReport`; with `files`, their artifact references."""
    message = pb.RunReport(run_id=report.run_id)
    for result in report.iterations:
        item = message.iterations.add(
            iteration=result.iteration,
            target=entry_from_row(result.target),
            leaderboard=[entry_from_row(row) for row in result.leaderboard],
            snapshot_id=result.snapshot_id,
        )
        for selection in result.data:
            item.data.add(
                stage=_STAGE_VALUES[selection.stage],
                dataset=common_pb2.DatasetRef(
                    dataset_id=selection.dataset_id,
                    name=selection.dataset_name,
                    record_count=selection.records,
                ),
                threshold=selection.threshold,
                model_shares=[
                    common_pb2.ModelShare(model=s.model, chosen=s.chosen, rejected=s.rejected)
                    for s in selection.model_shares
                ],
            )
        for record in result.promotions:
            decision = item.promotions.add(
                iteration=record.iteration,
                stage=_STAGE_VALUES[record.stage] if record.stage else 0,
                candidate_model=record.candidate_model,
                incumbent_model=record.incumbent_model,
                promoted=record.promoted,
                rule=record.rule,
                snapshot_id=record.snapshot_id,
                reason=record.reason,
            )
            if record.candidate is not None:
                decision.candidate.CopyFrom(entry_from_row(record.candidate))
            if record.incumbent is not None:
                decision.incumbent.CopyFrom(entry_from_row(record.incumbent))
    for judge in report.judges:
        message.judges.add(
            judge_name=judge.name,
            judge_version=judge.version,
            judgments=judge.judgments,
            position_inconsistency_rate=judge.position_inconsistency_rate,
            parse_failure_rate=judge.parse_failure_rate,
        )
    if report.generated_at is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(report.generated_at)
        message.generated_at.CopyFrom(stamp)
    if files is not None:
        files.attach(message)
    return message


# --- the files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFiles:
    """Where a report's files were written, with their content hashes and sizes."""

    json: Path
    html: Path
    svg: Path
    png: Path

    def artifact(self, path: Path) -> common_pb2.ArtifactRef:
        data = path.read_bytes()
        return common_pb2.ArtifactRef(
            uri=path.resolve().as_uri(),
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            media_type=_MEDIA_TYPES[path.suffix],
        )

    def attach(self, message: pb.RunReport) -> None:
        """Sets the message's html, json and elo_plot (the PNG, which every viewer shows)."""
        message.html.CopyFrom(self.artifact(self.html))
        message.json.CopyFrom(self.artifact(self.json))
        message.elo_plot.CopyFrom(self.artifact(self.png))


_MEDIA_TYPES = {
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


def write_report_files(report: RunReport | pb.RunReport, run_dir: Path | str) -> ReportFiles:
    """Renders the report into `run_dir` (created if needed) as report.json, report.html (with
    the plot inline), elo.svg and elo.png, replacing any earlier report atomically."""
    domain = report if isinstance(report, RunReport) else report_from_proto(report)
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    svg = plot_svg(domain)
    contents = {  # in renaming order: the JSON document, which tools read, goes last
        SVG_FILE: svg.encode(),
        PNG_FILE: plot_png(domain),
        HTML_FILE: render_html(domain, svg).encode(),
        JSON_FILE: (json.dumps(report_json(domain), indent=2) + "\n").encode(),
    }
    with _staged(folder) as stage:
        for name, data in contents.items():
            stage(name, data)
    return ReportFiles(
        json=folder / JSON_FILE,
        html=folder / HTML_FILE,
        svg=folder / SVG_FILE,
        png=folder / PNG_FILE,
    )


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[Callable[[str, bytes], None]]:
    """Collects complete temporary files and renames them into place only if all were written."""
    staged: list[tuple[str, Path]] = []

    def stage(name: str, data: bytes) -> None:
        handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        staged.append((name, Path(temporary)))
        with os.fdopen(handle, "wb") as output:
            os.fchmod(output.fileno(), 0o644)  # mkstemp makes 0600; a report is for reading
            output.write(data)
            output.flush()
            os.fsync(output.fileno())

    try:
        yield stage
        for name, temporary in staged:
            os.replace(temporary, folder / name)
        _fsync_directory(folder)
    finally:
        for _, temporary in staged:
            temporary.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    """Makes the renames durable; not every platform can open a directory."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# --- the Elo plot ----------------------------------------------------------------------------


def plot_svg(report: RunReport) -> str:
    """The Elo-over-iterations plot as SVG text (reproducible: no date, fixed ids)."""
    buffer = io.BytesIO()
    with _plot_settings():
        _figure(elo_series(report)).savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue().decode()


def plot_png(report: RunReport) -> bytes:
    buffer = io.BytesIO()
    with _plot_settings():
        _figure(elo_series(report)).savefig(
            buffer, format="png", dpi=120, metadata={"Software": None}
        )
    return buffer.getvalue()


@contextlib.contextmanager
def _plot_settings() -> Iterator[None]:
    import matplotlib

    # Text stays text in the SVG (smaller, searchable); a fixed salt gives stable element ids.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "arena-flywheel"}):
        yield


def _figure(series: EloSeries) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 4.8), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot, no global backend: safe inside a service
    axes = figure.add_subplot()
    x = list(series.iterations)
    if not x:
        axes.text(0.5, 0.5, "no iterations yet", ha="center", va="center")
        axes.set_axis_off()
        return figure
    for model, line in series.others.items():
        points = [(i, r) for i, r in zip(x, line, strict=True) if r is not None]
        axes.plot(
            [i for i, _ in points],
            [r for _, r in points],
            marker=".",
            linewidth=1.0,
            alpha=0.75,
            label=model,
        )
    ratings = list(series.target_ratings)
    below = [
        0.0 if low is None else max(0.0, rating - low)
        for rating, low in zip(ratings, series.target_ci_low, strict=True)
    ]
    above = [
        0.0 if high is None else max(0.0, high - rating)
        for rating, high in zip(ratings, series.target_ci_high, strict=True)
    ]
    names = list(dict.fromkeys(series.target_models))
    label = f"target ({names[0]})" if len(names) == 1 else "target"
    axes.errorbar(
        x,
        ratings,
        yerr=[below, above],
        fmt="o-",
        color="black",
        linewidth=2.2,
        capsize=4,
        zorder=3,
        label=f"{label}, 95% CI",
    )
    if len(names) > 1:  # the place changed hands: name the model at each point
        for i, rating, model in zip(x, ratings, series.target_models, strict=True):
            axes.annotate(model, (i, rating), textcoords="offset points", xytext=(6, 6), fontsize=7)
    axes.set_xticks(x)
    axes.set_xlabel("iteration (0 = the target before the loop)")
    axes.set_ylabel("Elo rating")
    axes.set_title("Target Elo over iterations")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure
