"""Where the shared public datasets are: one answer for every test.

`ARENA_SHARED_DATASETS` if set; else `../shared/datasets` beside the checkout (the workplace
layout); else this workplace's fixed copy, for a clone made somewhere else (as CI may do).
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (
    _REPO_ROOT.parent / "shared" / "datasets",
    Path("/work/shared/datasets"),
)


def shared_datasets() -> Path:
    if configured := os.environ.get("ARENA_SHARED_DATASETS"):
        return Path(configured)
    for candidate in _CANDIDATES:
        if candidate.is_dir():
            return candidate
    return _CANDIDATES[0]


SHARED_DATASETS = shared_datasets()
