"""Fixtures for the rating tests: the shared public datasets and synthetic battles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.datasets import SHARED_DATASETS

DATASETS = SHARED_DATASETS


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared public datasets (../shared/datasets from the repository root)."""
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS.resolve()}")
    return DATASETS
