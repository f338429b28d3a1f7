"""WizardArena test-set construction (paper §6.1).

All user turns of a conversation are embedded together (multi-turn conversations stay whole),
K-Means groups the pool into ``num_clusters`` clusters, and then:

- Offline-Diverse: ``diverse_per_cluster`` random conversations per cluster;
- Offline-Hard: ``hard_candidates_per_cluster`` random candidates per cluster (by default not
  already in Diverse, so Mix has no repeats; the paper does not say), each rated 0–10 for
  difficulty by a judge model, and the ``hard_size`` most difficult kept (ties broken by a
  seeded hash, not by input order);
- Offline-Mix: Diverse followed by Hard.

Every choice flows from one seed. Category labels and the source are carried through, and each
selected record gets ``meta.wizardarena = {subset, cluster, difficulty?}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_selection.domain.embeddings import Embedder
from arena_selection.domain.records import Record

# Rates conversations for difficulty, 0 (trivial) to 10 (hardest), one score per record.
DifficultyRater = Callable[[Sequence[Record]], Sequence[float]]
TestSetProgress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class TestSetConfig:
    __test__ = False  # not a pytest test class, despite the name
    num_clusters: int = 500
    diverse_per_cluster: int = 2
    hard_candidates_per_cluster: int = 20
    hard_size: int = 1000
    seed: int = 0
    hard_excludes_diverse: bool = True
    kmeans_iterations: int = 50

    def validate(self, pool_size: int) -> None:
        if pool_size == 0:
            raise InvalidArgumentError("the pool is empty: nothing to build a test set from")
        if not 1 <= self.num_clusters <= pool_size:
            raise InvalidArgumentError(
                f"must be in [1, pool size {pool_size}], got {self.num_clusters}",
                where="num_clusters",
            )
        for name in ("diverse_per_cluster", "hard_candidates_per_cluster", "hard_size"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(f"must be >= 0, got {getattr(self, name)}", where=name)


@dataclass
class TestSet:
    __test__ = False
    diverse: list[Record]
    hard: list[Record]
    labels: NDArray[np.int64]
    difficulty: dict[str, float]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def mix(self) -> list[Record]:
        return self.diverse + self.hard


def kmeans(
    points: NDArray[np.float32], k: int, *, seed: int, iterations: int = 50
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Lloyd's algorithm with k-means++ seeding; deterministic for a seed."""
    rng = np.random.Generator(np.random.PCG64(seed))
    count = len(points)
    squared = np.einsum("ij,ij->i", points, points)
    centers = np.empty((k, points.shape[1]), dtype=np.float32)
    centers[0] = points[rng.integers(count)]
    closest = _squared_distance(points, squared, centers[:1]).min(axis=1)
    for index in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than clusters: any point will do
            choice = int(rng.integers(count))
        else:
            choice = int(np.searchsorted(np.cumsum(closest), rng.random() * total))
            choice = min(choice, count - 1)
        centers[index] = points[choice]
        closest = np.minimum(
            closest, _squared_distance(points, squared, centers[index : index + 1])[:, 0]
        )
    labels = np.full(count, -1, dtype=np.int64)
    for _ in range(iterations):
        distances = _squared_distance(points, squared, centers)
        new_labels = distances.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sizes = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points)
        for cluster in np.flatnonzero(sizes == 0):
            # An empty cluster takes the point farthest from its center.
            far = int(distances[np.arange(count), labels].argmax())
            sums[cluster], sizes[cluster] = points[far], 1
            labels[far] = cluster
        centers = (sums / sizes[:, None]).astype(np.float32)
    return labels, centers


def _squared_distance(
    points: NDArray[np.float32], squared: NDArray[np.float32], centers: NDArray[np.float32]
) -> NDArray[np.float32]:
    center_squared = np.einsum("ij,ij->i", centers, centers)
    distances: NDArray[np.float32] = np.maximum(
        squared[:, None] - 2 * points @ centers.T + center_squared[None, :], 0
    )
    return distances


def build_test_set(
    records: Sequence[Record],
    embedder: Embedder,
    config: TestSetConfig,
    rate_difficulty: DifficultyRater | None,
    progress: TestSetProgress | None = None,
) -> TestSet:
    config.validate(len(records))

    def report(step: str) -> Callable[[int, int], None]:
        def forward(done: int, total: int) -> None:
            if progress:
                progress(step, done, total)

        return forward

    vectors = embedder.encode([record.instruction for record in records], report("embed"))
    labels, _ = kmeans(
        vectors, config.num_clusters, seed=config.seed, iterations=config.kmeans_iterations
    )
    report("kmeans")(1, 1)
    rng = np.random.Generator(np.random.PCG64(config.seed + 1))
    members = [np.flatnonzero(labels == cluster) for cluster in range(config.num_clusters)]

    diverse_indices: list[int] = []
    candidates: list[int] = []
    for cluster_members in members:
        picks = _sample(rng, cluster_members, config.diverse_per_cluster)
        diverse_indices.extend(picks)
        remaining = (
            np.setdiff1d(cluster_members, picks)
            if config.hard_excludes_diverse
            else cluster_members
        )
        candidates.extend(_sample(rng, remaining, config.hard_candidates_per_cluster))

    difficulty: dict[str, float] = {}
    hard_indices: list[int] = []
    if config.hard_size and candidates:
        if rate_difficulty is None:
            raise InvalidArgumentError(
                "Offline-Hard needs difficulty ratings: configure a difficulty judge",
                where="difficulty_judge",
            )
        scores = list(rate_difficulty([records[index] for index in candidates]))
        if len(scores) != len(candidates):
            raise InvalidArgumentError(
                f"the rater returned {len(scores)} scores for {len(candidates)} candidates",
                where="difficulty rating",
            )
        for index, score in zip(candidates, scores, strict=True):
            if not 0.0 <= float(score) <= 10.0:
                raise InvalidArgumentError(
                    f"difficulty {score} of {records[index].id} is outside [0, 10]",
                    where="difficulty rating",
                )
            difficulty[records[index].id] = float(score)
        report("rate")(len(candidates), len(candidates))
        ranked = sorted(
            candidates,
            key=lambda index: (
                -difficulty[records[index].id],
                content_hash("hard-tie", config.seed, records[index].id),
            ),
        )
        hard_indices = ranked[: config.hard_size]

    def tagged(index: int, subset: str) -> Record:
        tag: dict[str, Any] = {"subset": subset, "cluster": int(labels[index])}
        if records[index].id in difficulty:
            tag["difficulty"] = difficulty[records[index].id]
        return records[index].with_meta(wizardarena=tag)

    sizes = np.bincount(labels, minlength=config.num_clusters)
    test_set = TestSet(
        diverse=[tagged(index, "diverse") for index in diverse_indices],
        hard=[tagged(index, "hard") for index in hard_indices],
        labels=labels,
        difficulty=difficulty,
    )
    test_set.report = {
        "pool": len(records),
        "embedding_model": embedder.name,
        "num_clusters": config.num_clusters,
        "cluster_sizes": {"min": int(sizes.min()), "max": int(sizes.max())},
        "diverse": len(test_set.diverse),
        "hard_candidates": len(candidates),
        "hard": len(test_set.hard),
        "mix": len(test_set.mix),
        "seed": config.seed,
        "hard_excludes_diverse": config.hard_excludes_diverse,
        "difficulty": {record_id: score for record_id, score in sorted(difficulty.items())},
    }
    return test_set


def _sample(rng: np.random.Generator, members: NDArray[np.int64], count: int) -> list[int]:
    if count <= 0 or not len(members):
        return []
    if len(members) <= count:
        return [int(index) for index in members]
    return sorted(int(index) for index in rng.choice(members, size=count, replace=False))
