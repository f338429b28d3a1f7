"""A run's report, assembled from its record: leaderboards and the target's row per iteration,
the data each stage selected, promotion decisions and the judge's statistics."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from arena.common.v1 import common_pb2
from arena.flywheel.v1 import flywheel_service_pb2 as pb
from arena_flywheel.domain.plan import Position, Step, planned_iterations
from arena_flywheel.domain.spec import parse_spec
from arena_flywheel.report_files import write_report_files
from arena_flywheel.steps import STAGE_TO_PROTO, number

log = logging.getLogger(__name__)


class Reports:
    """Writes a run's report files under `<folder>/<run id>/` and says where they are."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def write(self, record: pb.RunRecord) -> pb.RunReport:
        report = build_report(record)
        files = await asyncio.to_thread(
            write_report_files, report, self._folder / record.run.run_id
        )
        files.attach(report)
        return report

    async def refresh(self, record: pb.RunRecord) -> None:
        """After an iteration: best effort, a report that cannot be written never stops a run."""
        try:
            report = await self.write(record)
        except OSError as error:
            log.warning("report of run %s not written: %s", record.run.run_id, error)
            return
        log.info("report of run %s: %s", record.run.run_id, report.html.uri)


def build_report(record: pb.RunRecord) -> pb.RunReport:
    spec = parse_spec(record.run.spec_yaml)
    report = pb.RunReport(run_id=record.run.run_id)
    report.generated_at.GetCurrentTime()
    last = record.run.iterations_completed if spec.continuous else planned_iterations(spec)
    for iteration in range(last + 1):
        rated = record.results.get(Position(iteration, None, Step.RATE).key())
        if rated is None:
            break
        entry = report.iterations.add(iteration=iteration, snapshot_id=rated.snapshot_id)
        entry.leaderboard.extend(rated.leaderboard)
        target = next((row for row in rated.leaderboard if row.model == rated.model), None)
        entry.target.CopyFrom(target or common_pb2.LeaderboardEntry(model=rated.model))
        for stage in spec.stages if iteration else []:
            selected = record.results.get(Position(iteration, stage, Step.SELECT).key())
            if selected is None or not selected.datasets:
                continue
            entry.data.add(
                stage=STAGE_TO_PROTO[stage],
                dataset=selected.datasets[0],
                threshold=spec.threshold(iteration, stage),
                model_shares=selected.model_shares,
            )
        promoted = record.results.get(Position(iteration, None, Step.PROMOTE).key())
        if promoted is not None:
            entry.promotions.append(promoted.decision)
    report.judges.append(_judge_summary(record, spec.judge.name, spec.judge.version))
    return report


def _judge_summary(record: pb.RunRecord, name: str, version: str) -> pb.JudgeSummary:
    judgments = failures = inconsistent = pairs = 0
    for key, result in record.results.items():
        if not key.endswith((f".{Step.JUDGE.value}", f".{Step.EVALUATE.value}")):
            continue
        summary = result.summary
        judgments += int(number(summary, "judgments"))
        failures += int(number(summary, "parse_failures"))
        inconsistent += int(number(summary, "inconsistent_pairs"))
        pairs += int(number(summary, "valid_pairs"))
    return pb.JudgeSummary(
        judge_name=name,
        judge_version=version,
        judgments=judgments,
        position_inconsistency_rate=inconsistent / pairs if pairs else 0.0,
        parse_failure_rate=failures / judgments if judgments else 0.0,
    )
