"""``python -m arena_training``: run the training service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_training.app import wiring
from arena_training.settings import TrainingSettings


def main() -> None:
    run_service("training", TrainingSettings, wiring)


if __name__ == "__main__":
    main()
