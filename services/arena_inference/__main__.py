"""``python -m arena_inference``: run the inference service until SIGTERM."""

from __future__ import annotations

from arena_core.service_host import run_service
from arena_inference.app import wiring
from arena_inference.settings import InferenceSettings


def main() -> None:
    run_service("inference", InferenceSettings, wiring)


if __name__ == "__main__":
    main()
