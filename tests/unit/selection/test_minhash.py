"""The vectorised MinHash-LSH: hashing, banding and near-duplicate decisions."""

from __future__ import annotations

import random

import numpy as np
import pytest

from arena_core.errors import InvalidArgumentError
from arena_selection.domain.minhash import (
    MinHashConfig,
    MinHasher,
    near_duplicates,
    optimal_banding,
    tokenize,
    word_hash,
    word_hashes,
)

TEXTS = ["Hello, World! ß — naïve_test 42", "", "ÉCOLE élève  x", "a"]


def test_vectorised_word_hashes_match_the_reference() -> None:
    hashes, counts = word_hashes(TEXTS)
    words = [word for text in TEXTS for word in tokenize(text)]
    assert counts.tolist() == [len(tokenize(text)) for text in TEXTS]
    assert [int(value) for value in hashes] == [word_hash(word) for word in words]


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.7, 128), (0.8, 256), (0.5, 64)])
def test_banding_matches_datasketch(threshold: float, num_perm: int) -> None:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_banding(threshold, num_perm) == (lsh.b, lsh.r)


def _jaccard(a: str, b: str, k: int = 3) -> float:
    def shingles(text: str) -> set[tuple[str, ...]]:
        words = tokenize(text)
        return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}

    left, right = shingles(a), shingles(b)
    return len(left & right) / len(left | right)


def test_signatures_estimate_jaccard() -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(300)]
    base = [" ".join(rng.choice(vocabulary) for _ in range(80)) for _ in range(30)]
    edited = [" ".join(w if rng.random() > 0.1 else "zz" for w in t.split()) for t in base]
    hasher = MinHasher(MinHashConfig(num_perm=256))
    signatures = hasher.signatures(base + edited)
    pairs = np.array([[i, i + 30] for i in range(30)])
    estimates = hasher.estimated_similarity(signatures, pairs)
    truth = np.array([_jaccard(base[i], edited[i]) for i in range(30)])
    assert np.abs(estimates - truth).max() < 0.12


def test_near_duplicates_keep_the_first_and_name_it() -> None:
    rng = random.Random(1)
    vocabulary = [f"word{i}" for i in range(2000)]
    originals = [" ".join(rng.choice(vocabulary) for _ in range(60)) for _ in range(200)]
    copies = []
    for text in originals[:50]:
        words = text.split()
        words[20] = "changed"
        copies.append(" ".join(words).upper())  # case does not count
    removed = near_duplicates(originals + copies, MinHashConfig(threshold=0.7))
    assert set(removed) == set(range(200, 250))
    assert all(kept == index - 200 for index, (kept, _) in removed.items())
    assert all(similarity >= 0.7 for _, similarity in removed.values())


def test_identical_short_and_empty_texts_are_duplicates() -> None:
    removed = near_duplicates(["hi", "Hi!", "", " ", "other text entirely here"])
    assert removed.keys() == {1, 3}


def test_big_buckets_stay_linear() -> None:
    removed = near_duplicates(["the very same instruction text"] * 500)
    assert len(removed) == 499
    assert {kept for kept, _ in removed.values()} == {0}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (MinHashConfig(threshold=0), "minhash.threshold"),
        (MinHashConfig(num_perm=1), "minhash.num_permutations"),
        (MinHashConfig(shingle_size=0), "minhash.shingle_size"),
        (MinHashConfig(bands=40, rows=40), "minhash"),
    ],
)
def test_bad_settings_are_named(config: MinHashConfig, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        MinHasher(config)
    assert error.value.where == field
