"""Near-duplicate detection with MinHash-LSH, vectorised with numpy.

Each text becomes a set of word shingles (``shingle_size`` consecutive normalised words), hashed
to 32-bit values. ``num_perm`` hash functions from the multiply-add-shift family
``h(x) = (a·x + b) >> 32`` over 64-bit ``a, b`` (2-universal for 32-bit ``x``) give the signature
as the column-wise minimum over the shingles — computed for all documents at once with
``np.minimum.reduceat``. LSH splits the signature into ``bands`` × ``rows`` (chosen like
datasketch, minimising the weighted false-positive and false-negative areas around the
threshold); documents that agree on every row of some band are candidates, and a candidate pair
is a duplicate when its estimated Jaccard similarity (share of equal signature positions) reaches
the threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from arena_core.errors import InvalidArgumentError

_MASK32 = np.uint64(0xFFFFFFFF)
# The words word_hashes() finds, as a regex over case-folded text.
_WORD = re.compile("[0-9a-z\u0080-\U0010ffff]+")
_SHIFT32 = np.uint64(32)
# Pairs within a bucket larger than this are linked to the bucket's first member only, so a
# text repeated thousands of times costs linear, not quadratic, work.
MAX_BUCKET_PAIRS = 64
# Elements of the (shingles × permutations) block computed at once: bounded memory.
_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class MinHashConfig:
    threshold: float = 0.7
    num_perm: int = 128
    shingle_size: int = 3
    seed: int = 1
    # Explicit banding; None means the datasketch-style optimum for threshold and num_perm.
    bands: int | None = None
    rows: int | None = None

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidArgumentError(
                f"must be in (0, 1], got {self.threshold}", where="minhash.threshold"
            )
        if not 2 <= self.num_perm <= 4096:
            raise InvalidArgumentError(
                f"must be in [2, 4096], got {self.num_perm}", where="minhash.num_permutations"
            )
        if not 1 <= self.shingle_size <= 32:
            raise InvalidArgumentError(
                f"must be in [1, 32], got {self.shingle_size}", where="minhash.shingle_size"
            )
        if (self.bands is None) != (self.rows is None):
            raise InvalidArgumentError("set both bands and rows, or neither", where="minhash")
        if (
            self.bands is not None
            and self.rows is not None
            and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm)
        ):
            raise InvalidArgumentError(
                f"bands × rows must be in [1, num_perm={self.num_perm}]", where="minhash"
            )

    def banding(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_banding(self.threshold, self.num_perm)


@lru_cache(maxsize=64)
def optimal_banding(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising 0.5·P(false positive) + 0.5·P(false negative), as datasketch."""
    best = (1, num_perm)
    best_error = float("inf")
    low = np.linspace(0.0, threshold, 1001)
    high = np.linspace(threshold, 1.0, 1001)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = np.trapezoid(1 - (1 - low**rows) ** bands, low)
            false_negative = np.trapezoid((1 - high**rows) ** bands, high)
            error = 0.5 * false_positive + 0.5 * false_negative
            if error < best_error:
                best_error, best = float(error), (bands, rows)
    return best


def _mix64(values: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser: spreads every input bit over the whole word."""
    z = values.copy()
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def tokenize(text: str) -> list[str]:
    """The words MinHash shingles: runs of ASCII letters and digits or non-ASCII characters,
    after case folding. :func:`word_hashes` finds exactly these, vectorised."""
    return _WORD.findall(text.casefold())


def word_hash(word: str) -> int:
    """The hash :func:`word_hashes` gives one word (pure Python, for tests and references)."""
    value = 0
    for position, byte in enumerate(word.encode()):
        value = (value + byte * pow(_POLY, position, 1 << 64)) % (1 << 64)
    return int(_mix64(np.array([value], dtype=np.uint64))[0])


def word_hashes(texts: Sequence[str]) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
    """64-bit hashes of every word of every text, in order, and the number of words per text.

    One pass over the UTF-8 bytes of all texts: word characters are ASCII letters and digits and
    every byte of a multi-byte character; a word's hash is the polynomial
    ``sum(byte_i * P^i) mod 2^64`` read off prefix sums (P is odd, so P^-start exists mod 2^64).
    """
    encoded = [text.casefold().encode() for text in texts]
    text_lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    raw = np.frombuffer(b"\0".join(encoded), dtype=np.uint8)
    if not len(raw):
        return np.empty(0, dtype=np.uint64), np.zeros(len(texts), dtype=np.int64)
    is_word = _WORD_BYTES[raw]
    edges = np.diff(np.concatenate([[False], is_word, [False]]).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    size = len(raw)
    powers = _powers(_POLY, size)
    prefix = np.zeros(size + 1, dtype=np.uint64)
    np.cumsum(raw.astype(np.uint64) * powers, out=prefix[1:])
    hashes = _mix64((prefix[ends] - prefix[starts]) * _powers(_POLY_INVERSE, size)[starts])
    # Which text each word belongs to: texts are laid out back to back, one separator apart.
    text_starts = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        np.cumsum(text_lengths[:-1] + 1, out=text_starts[1:])
    owner = np.searchsorted(text_starts, starts, side="right") - 1
    return hashes, np.bincount(owner, minlength=len(texts)).astype(np.int64)


def _powers(base: int, count: int) -> NDArray[np.uint64]:
    cached = _POWER_CACHE.get(base)
    if cached is None or len(cached) < count:
        size = max(count, 1 << 16, 0 if cached is None else 2 * len(cached))
        steps = np.full(size, base, dtype=np.uint64)
        steps[0] = 1
        cached = np.cumprod(steps, dtype=np.uint64)
        _POWER_CACHE[base] = cached
    return cached[:count]


_POLY = 0x100000001B3  # FNV's 64-bit prime: odd, so invertible modulo 2^64
_POLY_INVERSE = pow(_POLY, -1, 1 << 64)
_POWER_CACHE: dict[int, NDArray[np.uint64]] = {}
_WORD_BYTES = np.zeros(256, dtype=bool)
_WORD_BYTES[[*range(48, 58), *range(97, 123), *range(128, 256)]] = True


class MinHasher:
    """Signatures and duplicate pairs for one configuration."""

    def __init__(self, config: MinHashConfig = MinHashConfig()) -> None:
        config.validate()
        self.config = config
        self.bands, self.rows = config.banding()
        rng = np.random.Generator(np.random.PCG64(config.seed))
        # Odd multipliers keep the map x -> a·x a bijection modulo 2^64.
        self._a = rng.integers(1, 2**63, size=config.num_perm, dtype=np.uint64) * np.uint64(
            2
        ) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=config.num_perm, dtype=np.uint64)
        self._shingle_weights = rng.integers(
            1, 2**63, size=config.shingle_size, dtype=np.uint64
        ) * np.uint64(2) + np.uint64(1)
        self._band_weights = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * np.uint64(
            2
        ) + np.uint64(1)

    # --- shingles ----------------------------------------------------------------------------

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
        """All shingle hashes (32-bit values in uint64) and each text's start offset."""
        words_array, lengths = word_hashes(texts)
        k = self.config.shingle_size
        padded = np.concatenate([words_array, np.zeros(k, dtype=np.uint64)])
        combined = np.zeros(len(words_array), dtype=np.uint64)
        for offset in range(k):
            combined += padded[offset : offset + len(words_array)] * self._shingle_weights[offset]
        starts = np.zeros(len(texts), dtype=np.int64)
        if len(texts) > 1:
            np.cumsum(lengths[:-1], out=starts[1:])
        # Shingle p of a text is valid while p + k fits inside the text.
        counts = np.maximum(lengths - k + 1, 0)
        owner = np.repeat(np.arange(len(texts)), lengths)
        position = np.arange(len(words_array)) - starts[owner]
        valid = position < counts[owner]
        shingles = combined[valid]
        shingle_owner = owner[valid]
        # A text shorter than one shingle is a single shingle of all its words; an empty text is
        # the shingle of nothing, so two empty texts are duplicates of each other.
        short = np.flatnonzero(counts == 0)
        if len(short):
            extra = np.empty(len(short), dtype=np.uint64)
            for slot, index in enumerate(short):
                start, length = starts[index], lengths[index]
                extra[slot] = np.sum(
                    words_array[start : start + length] * self._shingle_weights[:length],
                    dtype=np.uint64,
                )
            shingles = np.concatenate([shingles, extra])
            shingle_owner = np.concatenate([shingle_owner, short])
            order = np.argsort(shingle_owner, kind="stable")
            shingles, shingle_owner = shingles[order], shingle_owner[order]
        hashed = _mix64(shingles) & _MASK32
        per_text = np.bincount(shingle_owner, minlength=len(texts)).astype(np.int64)
        offsets = np.zeros(len(texts), dtype=np.int64)
        if len(texts) > 1:
            np.cumsum(per_text[:-1], out=offsets[1:])
        return hashed, offsets

    # --- signatures --------------------------------------------------------------------------

    def signatures(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> NDArray[np.uint32]:
        """One row of ``num_perm`` minima per text."""
        count = len(texts)
        signatures = np.empty((count, self.config.num_perm), dtype=np.uint32)
        if count == 0:
            return signatures
        hashes, offsets = self.shingle_hashes(texts)
        ends = np.append(offsets[1:], len(hashes))
        # Blocks of whole texts, each with at most about _BLOCK_ELEMENTS hash evaluations.
        per_block = max(1, _BLOCK_ELEMENTS // self.config.num_perm)
        first = 0
        while first < count:
            last = int(np.searchsorted(ends, offsets[first] + per_block, side="right"))
            last = min(max(last, first + 1), count)
            low, high = offsets[first], ends[last - 1]
            block = hashes[low:high]
            # Permutations along rows, shingles along columns: reduceat then runs over
            # contiguous memory.
            values = np.multiply(self._a[:, None], block[None, :])
            values += self._b[:, None]
            values >>= _SHIFT32
            minima = np.minimum.reduceat(values, offsets[first:last] - low, axis=1)
            signatures[first:last] = minima.T
            first = last
            if progress:
                progress(first, count)
        return signatures

    # --- LSH ---------------------------------------------------------------------------------

    def candidate_pairs(self, signatures: NDArray[np.uint32]) -> NDArray[np.int64]:
        """Pairs (i < j) that share every row of at least one band, sorted and unique."""
        count = len(signatures)
        found: list[NDArray[np.int64]] = []
        for band in range(self.bands):
            rows = signatures[:, band * self.rows : (band + 1) * self.rows].astype(np.uint64)
            keys = _mix64((rows * self._band_weights[None, :]).sum(axis=1, dtype=np.uint64))
            found.append(_bucket_pairs(keys))
        if not found or count < 2:
            return np.empty((0, 2), dtype=np.int64)
        pairs = np.concatenate(found)
        if not len(pairs):
            return pairs
        codes = np.unique(pairs[:, 0] * count + pairs[:, 1])
        return np.stack([codes // count, codes % count], axis=1)

    def estimated_similarity(
        self, signatures: NDArray[np.uint32], pairs: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        similarity = np.empty(len(pairs), dtype=np.float64)
        step = max(1, _BLOCK_ELEMENTS // self.config.num_perm)
        for start in range(0, len(pairs), step):
            chunk = pairs[start : start + step]
            equal = signatures[chunk[:, 0]] == signatures[chunk[:, 1]]
            similarity[start : start + step] = equal.mean(axis=1)
        return similarity

    def duplicate_pairs(
        self, signatures: NDArray[np.uint32]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Candidate pairs whose estimated Jaccard similarity reaches the threshold."""
        pairs = self.candidate_pairs(signatures)
        similarity = self.estimated_similarity(signatures, pairs)
        keep = similarity >= self.config.threshold
        return pairs[keep], similarity[keep]


def _bucket_pairs(keys: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Index pairs (i < j) with equal keys; large buckets contribute star edges only."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.append(starts, len(keys)))
    multi = sizes >= 2
    starts, sizes = starts[multi], sizes[multi]
    if not len(starts):
        return np.empty((0, 2), dtype=np.int64)
    small = sizes <= MAX_BUCKET_PAIRS
    parts = []
    if small.any():
        group_start = np.repeat(starts[small], sizes[small])
        group_size = np.repeat(sizes[small], sizes[small])
        member = np.concatenate([np.arange(size) for size in sizes[small]])
        position = group_start + member
        later = group_size - member - 1  # members after this one in its bucket
        left = np.repeat(position, later)
        first_right = np.cumsum(later) - later
        offsets = np.arange(len(left)) - np.repeat(first_right, later) + 1
        right = left + offsets
        parts.append(np.stack([order[left], order[right]], axis=1))
    for start, size in zip(starts[~small], sizes[~small], strict=True):
        members = order[start : start + size]
        parts.append(np.stack([np.full(size - 1, members[0]), members[1:]], axis=1))
    pairs = np.concatenate(parts).astype(np.int64)
    return np.sort(pairs, axis=1)


def near_duplicates(
    texts: Sequence[str],
    config: MinHashConfig = MinHashConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, tuple[int, float]]:
    """Index of each text to drop -> (index of the earlier kept text it duplicates, similarity).

    Greedy in order, as an insert-then-query LSH would do: a text is dropped when it duplicates a
    text that was kept before it, so the first of every group survives.
    """
    hasher = MinHasher(config)
    signatures = hasher.signatures(texts, progress)
    pairs, similarity = hasher.duplicate_pairs(signatures)
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    removed: dict[int, tuple[int, float]] = {}
    for slot in order:
        earlier, later = int(pairs[slot, 0]), int(pairs[slot, 1])
        if later in removed or earlier in removed:
            continue
        removed[later] = (earlier, float(similarity[slot]))
    return removed
