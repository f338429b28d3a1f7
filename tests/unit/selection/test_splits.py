"""Seeded, order-independent splits into D0..DN with manifests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_core.errors import InvalidArgumentError
from arena_selection.domain.records import Message, make_record
from arena_selection.domain.splits import split_pool, stage_slices

POOL = [make_record([Message("user", f"instruction {i}")], "test") for i in range(103)]


def test_slices_are_disjoint_complete_and_balanced() -> None:
    slices = split_pool(POOL, 9, seed=7, initial_slice_size=13)
    assert [s.name for s in slices] == [f"D{i}" for i in range(10)]
    assert len(slices[0].records) == 13
    assert sorted(len(s.records) for s in slices[1:]) == [10] * 9
    ids = [r.id for s in slices for r in s.records]
    assert len(ids) == len(set(ids)) == 103


def test_same_seed_same_slices_whatever_the_input_order() -> None:
    shuffled = POOL[:]
    random.Random(1).shuffle(shuffled)
    first = [[r.id for r in s.records] for s in split_pool(POOL, 3, seed=5)]
    second = [[r.id for r in s.records] for s in split_pool(shuffled, 3, seed=5)]
    other = [[r.id for r in s.records] for s in split_pool(POOL, 3, seed=6)]
    assert first == second != other


def test_paper_slice_assignment() -> None:
    assert stage_slices(1) == [1, 2, 3]
    assert stage_slices(3) == [7, 8, 9]


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"num_slices": 0}, "num_slices"),
        ({"num_slices": 200}, "num_slices"),
        ({"num_slices": 2, "initial_slice_size": 103}, "initial_slice_size"),
    ],
)
def test_bad_splits(kwargs: dict[str, int], where: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        split_pool(POOL, **kwargs)
    assert error.value.where == where
    with pytest.raises(InvalidArgumentError, match="pool is empty"):
        split_pool([], 3)


def test_cli_split(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in POOL))
    result = CliRunner().invoke(
        data,
        [
            "split",
            str(pool),
            "--slices",
            "3",
            "--initial-size",
            "10",
            "--seed",
            "1",
            "--out-dir",
            str(tmp_path / "splits"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "splits/splits.json").read_text())
    assert [row["records"] for row in summary] == [10, 31, 31, 31]
    manifest = json.loads((tmp_path / "splits/D2/manifest.json").read_text())
    assert manifest["kind"] == "split"
    assert manifest["params"]["slice_index"] == 2
    assert manifest["dataset_id"] == summary[2]["dataset_id"]
