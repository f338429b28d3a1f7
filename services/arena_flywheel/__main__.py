"""``python -m arena_flywheel``: run the flywheel service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_flywheel.app import wiring
from arena_flywheel.settings import FlywheelSettings


def main() -> None:
    run_service("flywheel", FlywheelSettings, wiring)


if __name__ == "__main__":
    main()
