"""``python -m arena_selection``: run the selection service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_selection.app import wiring
from arena_selection.settings import SelectionSettings


def main() -> None:
    run_service("selection", SelectionSettings, wiring)


if __name__ == "__main__":
    main()
