"""``python -m arena_judge``: run the judge service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_judge.app import wiring
from arena_judge.settings import JudgeSettings


def main() -> None:
    run_service("judge", JudgeSettings, wiring)


if __name__ == "__main__":
    main()
