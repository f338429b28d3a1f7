"""The run report: the report.json shape, the HTML page, the proto conversion and the files."""

from __future__ import annotations

import json
import math
import stat
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from arena_flywheel import report_files
from arena_flywheel.domain.promotion import Standing, decide
from arena_flywheel.domain.report import (
    IterationResult,
    JudgeStats,
    LeaderboardRow,
    ModelShare,
    PromotionRecord,
    RunReport,
    StageSelection,
    elo_series,
    promotion_record,
    render_html,
    report_json,
)
from arena_flywheel.domain.spec import PromotionDecl
from arena_flywheel.report_files import (
    report_from_proto,
    report_to_proto,
    write_report_files,
)

HOSTILE = "<script>alert('x')</script>"


def _row(model: str, rating: float, rank: int = 1, battles: int = 400) -> LeaderboardRow:
    return LeaderboardRow(
        model,
        rating,
        ci_low=rating - 12.5,
        ci_high=rating + 11.0,
        battles=battles,
        rank=rank,
        mle=rating + 0.5,
        wins=battles / 2,
        losses=battles / 2,
    )


def sample_report() -> RunReport:
    """Three iterations (given out of order), a rejected and a promoted candidate, a hostile
    opponent name and a judge."""
    ratings = {0: 940.0, 1: 1010.0, 2: 1085.0}
    iterations = []
    for iteration in (2, 0, 1):
        target = "target" if iteration == 0 else f"target-i{iteration}"
        board = sorted(
            [
                _row(target, ratings[iteration]),
                _row("llama-2-70b-chat", 1100.0),
                _row(HOSTILE, 1150.0 + iteration),
                _row("openchat-7b", 1040.0),
            ],
            key=lambda row: -row.rating,
        )
        board = [replace(row, rank=rank) for rank, row in enumerate(board, start=1)]
        data: tuple[StageSelection, ...] = ()
        promotions: tuple[PromotionRecord, ...] = ()
        if iteration:
            data = (
                StageSelection(
                    "dpo",
                    2.0,
                    1810,
                    f"ds-dpo-{iteration}",
                    model_shares=(
                        ModelShare(HOSTILE, 1200, 100),
                        ModelShare(target, 110, 900),
                    ),
                ),
                StageSelection(
                    "sft",
                    3.0 if iteration == 1 else 1.0,
                    1460 - 300 * iteration,
                    f"ds-sft-{iteration}",
                    model_shares=(ModelShare(HOSTILE, 900), ModelShare("openchat-7b", 260)),
                ),
            )
            promotions = (
                PromotionRecord(
                    iteration=iteration,
                    stage=None,
                    candidate_model=target,
                    incumbent_model="target" if iteration == 1 else "target-i1",
                    promoted=iteration == 2,
                    rule="ci_lower_above_incumbent",
                    reason=f"{target}: lower bound <b>{ratings[iteration] - 12.5:.1f}</b>",
                    candidate=_row(target, ratings[iteration]),
                    incumbent=_row("target", ratings[iteration - 1]),
                    snapshot_id=f"snap-{iteration}",
                ),
            )
        iterations.append(
            IterationResult(
                iteration,
                _row(target, ratings[iteration]),
                tuple(board),
                snapshot_id=f"snap-{iteration}",
                data=data,
                promotions=promotions,
            )
        )
    return RunReport(
        "run-7",
        tuple(iterations),
        judges=(JudgeStats("llama3-70b-pair", "1", 24_000, 0.125, 0.004),),
        generated_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
    )


def test_report_json_has_the_issue_shape_with_iteration_zero_first() -> None:
    document = report_json(sample_report())
    assert set(document) == {"run", "generated_at", "iterations", "data", "judges", "promotions"}
    assert document["run"] == "run-7"
    assert [item["iteration"] for item in document["iterations"]] == [0, 1, 2]
    first = document["iterations"][0]
    assert set(first) == {"iteration", "target", "leaderboard"}
    assert first["target"] == {
        "model": "target",
        "rating": 940.0,
        "ci_low": 927.5,
        "ci_high": 951.0,
    }
    assert [row["model"] for row in first["leaderboard"]][:2] == [HOSTILE, "llama-2-70b-chat"]
    row = first["leaderboard"][0]
    assert set(row) >= {"rank", "model", "rating", "ci_low", "ci_high", "battles"}
    assert row["rank"] == 1
    assert row["battles"] == 400
    # Data in iteration order, stages in training order, with per-model shares.
    assert [(d["iteration"], d["stage"]) for d in document["data"]] == [
        (1, "sft"),
        (1, "dpo"),
        (2, "sft"),
        (2, "dpo"),
    ]
    assert document["data"][0]["records"] == 1160
    assert document["data"][1]["models"] == [
        {"model": HOSTILE, "chosen": 1200, "rejected": 100},
        {"model": "target-i1", "chosen": 110, "rejected": 900},
    ]
    assert document["judges"] == [
        {
            "judge": "llama3-70b-pair",
            "version": "1",
            "judgments": 24_000,
            "position_inconsistency_rate": 0.125,
            "parse_failure_rate": 0.004,
        }
    ]
    assert [(p["iteration"], p["promoted"]) for p in document["promotions"]] == [
        (1, False),
        (2, True),
    ]
    assert document["promotions"][1]["candidate"]["rating"] == 1085.0
    json.dumps(document, allow_nan=False)  # strict JSON


def test_report_json_turns_undefined_numbers_into_null() -> None:
    row = LeaderboardRow("target", math.nan, ci_low=None, ci_high=math.inf)
    document = report_json(RunReport("r", (IterationResult(0, row, (row,)),)))
    assert document["iterations"][0]["target"] == {
        "model": "target",
        "rating": None,
        "ci_low": None,
        "ci_high": None,
    }
    json.dumps(document, allow_nan=False)


def test_html_escapes_every_text_and_shows_each_section() -> None:
    report = sample_report()
    page = render_html(report, '<?xml version="1.0"?>\n<svg id="plot"><g/></svg>')
    assert "<script>" not in page
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "lower bound &lt;b&gt;997.5&lt;/b&gt;" in page
    assert '<svg id="plot"><g/></svg>' in page
    assert "<?xml" not in page
    for iteration in (0, 1, 2):
        assert f"<h3>Iteration {iteration} (snapshot snap-{iteration})</h3>" in page
    assert page.index("<h3>Iteration 0") < page.index("<h3>Iteration 1")
    assert "927.5 to 951.0" in page  # the target's CI at iteration 0
    assert "+145.0" in page  # its Elo change by iteration 2
    assert "1810" in page
    assert "260 chosen / 0 rejected" in page
    assert "24000" in page
    assert "12.5%" in page
    assert "0.4%" in page
    assert 'class="promoted">promoted' in page
    assert 'class="rejected">rejected' in page
    assert page.startswith("<!DOCTYPE html>")


def test_html_of_an_empty_report_says_so() -> None:
    page = render_html(RunReport("fresh", ()), "")
    assert "No data selected yet" in page
    assert "No judgments yet" in page


def test_proto_round_trip_keeps_everything() -> None:
    report = sample_report()
    message = report_to_proto(report)
    assert message.iterations[0].target.HasField("ci_low")
    back = report_from_proto(message)
    assert back == report
    bare = LeaderboardRow("m", 1000.0, mle=999.0)
    again = report_from_proto(report_to_proto(RunReport("r", (IterationResult(0, bare, ()),))))
    assert again.iterations[0].target == bare  # unset CIs stay unset, not 0.0


def test_elo_series_keeps_the_target_line_apart_from_the_others() -> None:
    series = elo_series(sample_report())
    assert series.iterations == (0, 1, 2)
    assert series.target_models == ("target", "target-i1", "target-i2")
    assert series.target_ratings == (940.0, 1010.0, 1085.0)
    assert set(series.others) == {HOSTILE, "llama-2-70b-chat", "openchat-7b"}
    assert series.others[HOSTILE] == (1150.0, 1151.0, 1152.0)


def test_promotion_record_carries_the_decisions_numbers() -> None:
    candidate = Standing("target-i1", 1010.0, 998.0, 1021.0, battles=500)
    incumbent = Standing("target", 940.0, 928.0, 951.0, battles=500)
    decision = decide(PromotionDecl(), candidate, incumbent)
    record = promotion_record(1, decision, candidate, incumbent, snapshot_id="s1")
    assert record.promoted
    assert record.reason == decision.reason
    assert "998.0" in record.reason
    assert record.candidate is not None
    assert record.candidate.ci_low == 998.0


def test_files_are_written_complete_and_readable(tmp_path: Path) -> None:
    report = sample_report()
    files = write_report_files(report, tmp_path / "runs" / "run-7")
    assert json.loads(files.json.read_text()) == report_json(report)
    svg = files.svg.read_text()
    root = ET.fromstring(svg.encode())
    assert root.tag.endswith("svg")
    assert "target-i2" in svg
    assert "llama-2-70b-chat" in svg
    assert "&lt;script&gt;" in svg  # matplotlib escapes text too
    assert files.png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = files.html.read_text()
    assert "<svg" in page
    assert "Target Elo over iterations" in page
    for path in (files.json, files.html, files.svg, files.png):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in files.json.parent.iterdir()) == [
        "elo.png",
        "elo.svg",
        "report.html",
        "report.json",
    ]
    # The proto form gives the same files, and the artifacts point at them.
    again = write_report_files(report_to_proto(report), tmp_path / "proto")
    assert again.json.read_text() == files.json.read_text()
    message = report_to_proto(report, files)
    assert message.json.uri == files.json.resolve().as_uri()
    assert message.elo_plot.media_type == "image/png"
    assert message.html.size_bytes == files.html.stat().st_size


def test_a_crash_while_rendering_leaves_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sample_report()
    files = write_report_files(first, tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def broken(_report: RunReport) -> bytes:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_files, "plot_png", broken)
    later = RunReport("run-7", first.iterations[:1])
    with pytest.raises(RuntimeError):
        write_report_files(later, tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert json.loads(files.json.read_text())["run"] == "run-7"


def test_a_crash_while_renaming_leaves_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real_replace = os.replace
    calls: list[str] = []

    def failing_replace(source: str | Path, target: str | Path) -> None:
        calls.append(str(target))
        if len(calls) == 2:
            raise OSError("no space left")
        real_replace(source, target)

    monkeypatch.setattr(report_files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="no space"):
        write_report_files(sample_report(), tmp_path)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]
