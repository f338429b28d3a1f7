"""A flywheel run's report as plain data: leaderboards per iteration, the target's Elo over the
iterations, the training data each stage selected, promotion decisions and judge statistics.

Pure Python: the controller (or the CLI) converts the contract's `RunReport` into these classes
(`arena_flywheel.report_files`), and this module turns them into the `report.json` document and
the self-contained `report.html` page. The Elo plot is drawn by the adapter and handed in as SVG
text, so this module needs neither matplotlib nor the generated protobuf code.

>>> row = LeaderboardRow("target", 1000.0, ci_low=990.0, ci_high=1010.0, battles=40, rank=1)
>>> report = RunReport("run-1", (IterationResult(0, row, (row,)),))
>>> report_json(report)["iterations"][0]["target"]
{'model': 'target', 'rating': 1000.0, 'ci_low': 990.0, 'ci_high': 1010.0}
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from arena_flywheel.domain.promotion import Decision, Standing

ReportStage = Literal["sft", "dpo", "reward_model", "rl"]
STAGE_ORDER: tuple[ReportStage, ...] = ("sft", "dpo", "reward_model", "rl")


@dataclass(frozen=True)
class LeaderboardRow:
    """One model's row on an iteration's leaderboard (the contract's `LeaderboardEntry`)."""

    model: str
    rating: float
    ci_low: float | None = None
    ci_high: float | None = None
    battles: int = 0
    rank: int = 0
    # Maximum-likelihood rating; `rating` is the bootstrap median when a bootstrap ran.
    mle: float | None = None
    win_rate: float | None = None
    wins: float = 0.0
    losses: float = 0.0
    ties: float = 0.0

    @classmethod
    def from_standing(cls, standing: Standing) -> LeaderboardRow:
        return cls(
            standing.model,
            standing.rating,
            ci_low=standing.ci_low,
            ci_high=standing.ci_high,
            battles=standing.battles,
        )


@dataclass(frozen=True)
class ModelShare:
    """How many selected responses came from one model (the paper's per-model share table)."""

    model: str
    # Used as an SFT target or as the chosen side of a pair.
    chosen: int = 0
    # Used as the rejected side of a pair.
    rejected: int = 0


@dataclass(frozen=True)
class StageSelection:
    """The training data one stage of an iteration selected from its battles."""

    stage: ReportStage
    threshold: float
    records: int
    dataset_id: str = ""
    dataset_name: str = ""
    model_shares: tuple[ModelShare, ...] = ()


@dataclass(frozen=True)
class PromotionRecord:
    """Whether a candidate replaced the incumbent, with the rows and the reason behind it."""

    iteration: int
    stage: ReportStage | None
    candidate_model: str
    incumbent_model: str
    promoted: bool
    rule: str
    reason: str
    candidate: LeaderboardRow | None = None
    incumbent: LeaderboardRow | None = None
    snapshot_id: str = ""


def promotion_record(
    iteration: int,
    decision: Decision,
    candidate: Standing,
    incumbent: Standing,
    *,
    stage: ReportStage | None = None,
    snapshot_id: str = "",
) -> PromotionRecord:
    """The record of a `promotion.decide` outcome, with the two rows it compared."""
    return PromotionRecord(
        iteration=iteration,
        stage=stage,
        candidate_model=candidate.model,
        incumbent_model=incumbent.model,
        promoted=decision.promoted,
        rule=decision.rule,
        reason=decision.reason,
        candidate=LeaderboardRow.from_standing(candidate),
        incumbent=LeaderboardRow.from_standing(incumbent),
        snapshot_id=snapshot_id,
    )


@dataclass(frozen=True)
class IterationResult:
    """One iteration: 0 is the target before the loop, each later one after its training."""

    iteration: int
    # The row of the model holding the target's place after this iteration.
    target: LeaderboardRow
    leaderboard: tuple[LeaderboardRow, ...]
    snapshot_id: str = ""
    data: tuple[StageSelection, ...] = ()
    promotions: tuple[PromotionRecord, ...] = ()


@dataclass(frozen=True)
class JudgeStats:
    """A judge's statistics over the run."""

    name: str
    version: str
    judgments: int
    # Share of pairs whose verdict flips when the answers swap places.
    position_inconsistency_rate: float
    parse_failure_rate: float


@dataclass(frozen=True)
class RunReport:
    run_id: str
    iterations: tuple[IterationResult, ...]
    judges: tuple[JudgeStats, ...] = ()
    generated_at: datetime | None = None

    def ordered(self) -> tuple[IterationResult, ...]:
        return tuple(sorted(self.iterations, key=lambda result: result.iteration))


# --- the report.json document ---------------------------------------------------------------


def report_json(report: RunReport) -> dict[str, Any]:
    """The `arena flywheel report --format json` document (also written as report.json).

    `{"run", "generated_at", "iterations": [{"iteration", "target": {"model", "rating",
    "ci_low", "ci_high"}, "leaderboard": [row, ...]}], "data": [...], "judges": [...],
    "promotions": [...]}`, iterations in order, iteration 0 being the target before the loop.
    Undefined numbers (NaN, infinities) become null, since JSON has none.
    """
    iterations = report.ordered()
    document = {
        "run": report.run_id,
        "generated_at": report.generated_at.isoformat() if report.generated_at else None,
        "iterations": [
            {
                "iteration": result.iteration,
                "target": {
                    "model": result.target.model,
                    "rating": result.target.rating,
                    "ci_low": result.target.ci_low,
                    "ci_high": result.target.ci_high,
                },
                "leaderboard": [_row_json(row) for row in result.leaderboard],
            }
            for result in iterations
        ],
        "data": [
            {
                "iteration": result.iteration,
                "stage": selection.stage,
                "threshold": selection.threshold,
                "records": selection.records,
                "dataset_id": selection.dataset_id,
                "models": [
                    {"model": share.model, "chosen": share.chosen, "rejected": share.rejected}
                    for share in selection.model_shares
                ],
            }
            for result in iterations
            for selection in _stages_in_order(result.data)
        ],
        "judges": [
            {
                "judge": judge.name,
                "version": judge.version,
                "judgments": judge.judgments,
                "position_inconsistency_rate": judge.position_inconsistency_rate,
                "parse_failure_rate": judge.parse_failure_rate,
            }
            for judge in report.judges
        ],
        "promotions": [
            {
                "iteration": record.iteration,
                "stage": record.stage,
                "candidate_model": record.candidate_model,
                "incumbent_model": record.incumbent_model,
                "promoted": record.promoted,
                "rule": record.rule,
                "reason": record.reason,
                "candidate": _row_json(record.candidate) if record.candidate else None,
                "incumbent": _row_json(record.incumbent) if record.incumbent else None,
                "snapshot_id": record.snapshot_id,
            }
            for result in iterations
            for record in result.promotions
        ],
    }
    finite: dict[str, Any] = _finite(document)
    return finite


def _row_json(row: LeaderboardRow) -> dict[str, Any]:
    return {
        "rank": row.rank,
        "model": row.model,
        "rating": row.rating,
        "mle": row.mle,
        "ci_low": row.ci_low,
        "ci_high": row.ci_high,
        "battles": row.battles,
        "win_rate": row.win_rate,
        "wins": row.wins,
        "losses": row.losses,
        "ties": row.ties,
    }


def _stages_in_order(data: Iterable[StageSelection]) -> list[StageSelection]:
    return sorted(data, key=lambda selection: STAGE_ORDER.index(selection.stage))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# --- the Elo-over-iterations series the plot draws ------------------------------------------


@dataclass(frozen=True)
class EloSeries:
    """What the Elo plot draws: the target with its CI per iteration, and every other model's
    rating per iteration (None where it was not rated)."""

    iterations: tuple[int, ...]
    target_models: tuple[str, ...]
    target_ratings: tuple[float, ...]
    target_ci_low: tuple[float | None, ...]
    target_ci_high: tuple[float | None, ...]
    others: dict[str, tuple[float | None, ...]] = field(default_factory=dict)


def elo_series(report: RunReport) -> EloSeries:
    """The target's row over the iterations, and the other models' ratings as lines.

    Models that ever held the target's place or were promotion candidates belong to the target's
    line, so they are left out of the others (a rejected candidate is one point, not a line).
    """
    iterations = report.ordered()
    own = {result.target.model for result in iterations}
    own |= {record.candidate_model for result in iterations for record in result.promotions}
    others: dict[str, list[float | None]] = {}
    for index, result in enumerate(iterations):
        for row in result.leaderboard:
            if row.model in own:
                continue
            others.setdefault(row.model, [None] * len(iterations))[index] = row.rating
    return EloSeries(
        iterations=tuple(result.iteration for result in iterations),
        target_models=tuple(result.target.model for result in iterations),
        target_ratings=tuple(result.target.rating for result in iterations),
        target_ci_low=tuple(result.target.ci_low for result in iterations),
        target_ci_high=tuple(result.target.ci_high for result in iterations),
        others={model: tuple(values) for model, values in sorted(others.items())},
    )


# --- the report.html page --------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 72rem; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: 0.8rem 0 1.4rem; }
th, td { padding: 0.3rem 0.7rem; border-bottom: 1px solid #d0d7de; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.target td { font-weight: 600; background: #fff8c5; }
.promoted { color: #1a7f37; font-weight: 600; } .rejected { color: #cf222e; font-weight: 600; }
.plot svg { max-width: 100%; height: auto; } .muted { color: #656d76; }
"""


def render_html(report: RunReport, plot_svg: str) -> str:
    """A self-contained page: the target's Elo (table and inline SVG plot), each iteration's
    leaderboard with its 95% CIs, the data selected per stage and opponent, judge statistics and
    promotion decisions. Every piece of text from the report is escaped; `plot_svg` is markup
    drawn by the adapter and is inlined as given (an XML prolog before `<svg` is dropped)."""
    iterations = report.ordered()
    title = f"Flywheel run {report.run_id}"
    generated = (
        f"generated {report.generated_at.isoformat(timespec='seconds')}"
        if report.generated_at
        else ""
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">{_e(generated)}</p>' if generated else "",
        _target_section(iterations, plot_svg),
        _leaderboards_section(iterations),
        _data_section(iterations),
        _judges_section(report.judges),
        _promotions_section(iterations),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _target_section(iterations: Sequence[IterationResult], plot_svg: str) -> str:
    rows = [
        [
            _cell(str(result.iteration), num=True),
            _cell(result.target.model),
            _cell(_number(result.target.rating), num=True),
            _cell(_interval(result.target), num=True),
            _cell(_change(result.target.rating, iterations[0].target.rating), num=True),
        ]
        for result in iterations
    ]
    table = _table(["Iteration", "Model", "Elo", "95% CI", "Change"], rows, numeric={0, 2, 3, 4})
    start = plot_svg.find("<svg")
    plot = f'<div class="plot">{plot_svg[start:]}</div>' if start >= 0 else ""
    intro = '<p class="muted">Iteration 0 is the target before the loop.</p>'
    return f"<h2>Target Elo over iterations</h2>{intro}{table}{plot}"


def _leaderboards_section(iterations: Sequence[IterationResult]) -> str:
    parts = ["<h2>Leaderboards</h2>"]
    for result in iterations:
        snapshot = f" (snapshot {_e(result.snapshot_id)})" if result.snapshot_id else ""
        parts.append(f"<h3>Iteration {result.iteration}{snapshot}</h3>")
        rows = []
        for row in result.leaderboard:
            cells = [
                _cell(str(row.rank), num=True),
                _cell(row.model),
                _cell(_number(row.rating), num=True),
                _cell(_interval(row), num=True),
                _cell(_plus_minus(row), num=True),
                _cell(str(row.battles), num=True),
            ]
            rows.append((cells, row.model == result.target.model))
        parts.append(
            _table(
                ["Rank", "Model", "Elo", "95% CI", "+/-", "Battles"],
                [cells for cells, _ in rows],
                numeric={0, 2, 3, 4, 5},
                highlighted={index for index, (_, mark) in enumerate(rows) if mark},
            )
        )
    return "".join(parts)


def _data_section(iterations: Sequence[IterationResult]) -> str:
    rows = []
    for result in iterations:
        for selection in _stages_in_order(result.data):
            shares = ", ".join(
                f"{share.model}: {share.chosen} chosen / {share.rejected} rejected"
                for share in selection.model_shares
            )
            rows.append(
                [
                    _cell(str(result.iteration), num=True),
                    _cell(selection.stage),
                    _cell(_number(selection.threshold, 2), num=True),
                    _cell(str(selection.records), num=True),
                    _cell(shares or "-"),
                    _cell(selection.dataset_id or "-"),
                ]
            )
    if not rows:
        return '<h2>Selected training data</h2><p class="muted">No data selected yet.</p>'
    headers = ["Iteration", "Stage", "K", "Records", "Per model", "Dataset"]
    return "<h2>Selected training data</h2>" + _table(headers, rows, numeric={0, 2, 3})


def _judges_section(judges: Sequence[JudgeStats]) -> str:
    if not judges:
        return '<h2>Judges</h2><p class="muted">No judgments yet.</p>'
    rows = [
        [
            _cell(judge.name),
            _cell(judge.version),
            _cell(str(judge.judgments), num=True),
            _cell(_percent(judge.position_inconsistency_rate), num=True),
            _cell(_percent(judge.parse_failure_rate), num=True),
        ]
        for judge in judges
    ]
    headers = ["Judge", "Version", "Judgments", "Position inconsistency", "Parse failures"]
    return "<h2>Judges</h2>" + _table(headers, rows, numeric={2, 3, 4})


def _promotions_section(iterations: Sequence[IterationResult]) -> str:
    rows = []
    for result in iterations:
        for record in result.promotions:
            verdict = "promoted" if record.promoted else "rejected"
            rows.append(
                [
                    _cell(str(record.iteration), num=True),
                    _cell(record.stage or "-"),
                    _cell(record.candidate_model),
                    _cell(_row_summary(record.candidate)),
                    _cell(record.incumbent_model),
                    _cell(_row_summary(record.incumbent)),
                    f'<td class="{verdict}">{verdict}</td>',
                    _cell(record.rule),
                    _cell(record.reason),
                ]
            )
    if not rows:
        return '<h2>Promotions</h2><p class="muted">No promotion decisions yet.</p>'
    headers = [
        "Iteration",
        "Stage",
        "Candidate",
        "Candidate Elo",
        "Incumbent",
        "Incumbent Elo",
        "Decision",
        "Rule",
        "Reason",
    ]
    return "<h2>Promotions</h2>" + _table(headers, rows, numeric={0})


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Collection[int] = (),
    highlighted: Collection[int] = (),
) -> str:
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        f'<tr class="target">{"".join(cells)}</tr>'
        if index in highlighted
        else f"<tr>{''.join(cells)}</tr>"
        for index, cells in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(text: str, num: bool = False) -> str:
    return f'<td class="num">{_e(text)}</td>' if num else f"<td>{_e(text)}</td>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _interval(row: LeaderboardRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return "-"
    return f"{_number(row.ci_low)} to {_number(row.ci_high)}"


def _plus_minus(row: LeaderboardRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return "-"
    return f"+{_number(row.ci_high - row.rating)}/-{_number(row.rating - row.ci_low)}"


def _change(rating: float, initial: float) -> str:
    delta = rating - initial
    return "-" if not math.isfinite(delta) else f"{delta:+.1f}"


def _percent(rate: float) -> str:
    return "-" if not math.isfinite(rate) else f"{100 * rate:.1f}%"


def _row_summary(row: LeaderboardRow | None) -> str:
    if row is None:
        return "-"
    interval = _interval(row)
    ci = f" ({interval})" if interval != "-" else ""
    return f"{_number(row.rating)}{ci}, {row.battles} battles"
