"""Deterministic, seeded splits of a cleaned pool into slices D0..DN.

The order is a seeded content hash of each record id, not a shuffle of the input order: the
same pool and seed give the same slices whatever order the records arrive in, and a record's
slice never depends on which other records are present except through the slice boundaries.
D0 (optional) takes the first ``initial_slice_size`` records; D1..DN share the rest equally
(sizes differ by at most one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_selection.domain.records import Record


@dataclass(frozen=True)
class Slice:
    index: int
    records: list[Record]

    @property
    def name(self) -> str:
        return f"D{self.index}"


def split_pool(
    records: Sequence[Record],
    num_slices: int,
    *,
    seed: int = 0,
    initial_slice_size: int | None = None,
) -> list[Slice]:
    if not records:
        raise InvalidArgumentError("the pool is empty: nothing to split", where="pool")
    if not 1 <= num_slices <= 10_000:
        raise InvalidArgumentError(f"must be in [1, 10000], got {num_slices}", where="num_slices")
    initial = initial_slice_size or 0
    if initial < 0 or initial >= len(records):
        raise InvalidArgumentError(
            f"must be in [0, {len(records) - 1}] for a pool of {len(records)}, got {initial}",
            where="initial_slice_size",
        )
    if len(records) - initial < num_slices:
        raise InvalidArgumentError(
            f"{len(records) - initial} records cannot fill {num_slices} slices",
            where="num_slices",
        )
    ordered = sorted(records, key=lambda record: content_hash("split", seed, record.id))
    slices = []
    if initial_slice_size:
        slices.append(Slice(0, ordered[:initial]))
    rest = ordered[initial:]
    base, extra = divmod(len(rest), num_slices)
    start = 0
    for number in range(1, num_slices + 1):
        size = base + (1 if number <= extra else 0)
        slices.append(Slice(number, rest[start : start + size]))
        start += size
    return slices


def stage_slices(iteration: int, stages: int = 3) -> list[int]:
    """The paper's slice assignment: iteration i uses D(3i-2) for SFT, D(3i-1) for DPO and D(3i)
    for PPO (D1, D2, D3 in I1; D4, D5, D6 in I2 ...)."""
    if iteration < 1:
        raise InvalidArgumentError(f"iterations start at 1, got {iteration}", where="iteration")
    return [stages * (iteration - 1) + offset for offset in range(1, stages + 1)]
