"""``python -m arena_rating``: run the rating service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_rating.app import wiring
from arena_rating.settings import RatingSettings


def main() -> None:
    run_service("rating", RatingSettings, wiring)


if __name__ == "__main__":
    main()
