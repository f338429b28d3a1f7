"""Worker entry point: read the job, train, and turn any failure into an error marker."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from arena_training.domain.job import JOB_ENV, TrainingJob
from arena_training.domain.progress import Failed, Marker, encode

log = logging.getLogger("arena_training.worker")


class WorkerError(Exception):
    """A failure with a stable reason code, e.g. a dataset or chat template the job cannot use."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class Reporter:
    """Prints marker lines; progress and results from the main process only."""

    def __init__(self, rank: int | None = None) -> None:
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def emit(self, marker: Marker, *, every_rank: bool = False) -> None:
        if self.is_main or every_rank:
            print(encode(marker), flush=True)


def load_job(argv: list[str]) -> TrainingJob:
    if argv:
        return TrainingJob.from_json(Path(argv[0]).read_text())
    text = os.environ.get(JOB_ENV)
    if not text:
        raise WorkerError("BAD_JOB", f"no job file given and ${JOB_ENV} is not set")
    return TrainingJob.from_json(text)


def failure_of(error: BaseException) -> Failed:
    """A stable reason for what went wrong; the message is what an operator needs to act."""
    if isinstance(error, WorkerError):
        return Failed(reason=error.reason, message=str(error), retryable=error.retryable)
    name = type(error).__name__
    message = f"{name}: {error}"
    if name == "OutOfMemoryError" or "out of memory" in str(error).lower():
        return Failed(reason="OOM", message=message)
    if isinstance(error, FileNotFoundError):
        return Failed(reason="NOT_FOUND", message=message)
    if isinstance(error, OSError) and "does not appear to have" in str(error):
        return Failed(reason="MODEL_NOT_FOUND", message=message)
    if isinstance(error, ValueError | TypeError):
        return Failed(reason="INVALID_CONFIG", message=message)
    return Failed(reason="TRAINING_ERROR", message=message)


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reporter = Reporter()
    try:
        job = load_job(argv)
        from arena_training.worker.train import run_job

        run_job(job, reporter)
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        traceback.print_exc()
        failure = failure_of(error)
        reporter.emit(
            Failed(
                reason=failure.reason,
                message=failure.message[:2000],
                retryable=failure.retryable,
                details={"rank": str(reporter.rank), "type": type(error).__name__},
            ),
            every_rank=True,
        )
        return 1
    return 0
