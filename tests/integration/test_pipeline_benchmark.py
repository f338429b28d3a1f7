"""The pipeline benchmark's own code on a tiny size: the whole stack as processes, both paths.

Not a timing test: it checks that every battle is judged once in each order and every game is
rated once, so the figure `make bench` prints is for work that was really done.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _load_benchmark() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "pipeline.py"
    spec = importlib.util.spec_from_file_location("pipeline_benchmark", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


pipeline = _load_benchmark()


async def test_every_battle_is_judged_once_and_every_game_rated_once(tmp_path: Path) -> None:
    runs = await pipeline.measure(
        tmp_path, battles=30, per_message=6, chunk=8, window=2, battle_window=3
    )

    assert [run.path for run in runs] == ["batched", "per-message"]
    for run, tag, count in zip(runs, ("b", "m"), (30, 6), strict=True):
        expected = {(f"{tag}-{i}", order) for i in range(count) for order in pipeline.ORDERS}
        assert set(run.judged) == expected
        assert set(run.judged.values()) == {1}
        assert run.leaderboard.battle_count == 2 * count
        assert run.leaderboard.query.arena.startswith(f"bench-{run.path}-")
        assert {entry.model for entry in run.leaderboard.entries} <= set(pipeline.MODELS)
        assert run.seconds >= run.judged_seconds > 0
        assert set(run.cpu) == {"inference", "judge", "rating", "nats-server", "driver"}
        assert all(seconds > 0 for seconds in run.cpu.values())
        assert pipeline.as_dict(run)["battles"] == count


def test_a_miscounted_run_is_refused() -> None:
    battles = pipeline.make_battles("x", 2)
    run = pipeline.Run("batched", 2)
    run.judged.update((b.battle_id, order) for b in battles for order in pipeline.ORDERS)
    run.judged[(battles[0].battle_id, pipeline.ORDERS[0])] += 1  # judged twice
    with pytest.raises(AssertionError, match="judged twice"):
        pipeline.check(run, battles)
