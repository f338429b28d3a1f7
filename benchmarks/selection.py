"""MinHash-LSH near-duplicate detection: the selection service's vectorised implementation
against datasketch (MinHash + MinHashLSH) with the same threshold, permutations, shingles and
banding, side by side on 100k instructions.

The instructions are built from the real prompts under ../shared/datasets: most are heavy
rewrites of a prompt (distinct texts), some are light edits or exact copies of an earlier one
(the duplicates). Both sides start from the same raw texts and use the same tokenizer, so each
timing covers shingling, hashing, LSH indexing, candidate search and verification (a pair is a
duplicate when its estimated Jaccard similarity reaches the threshold).

Prints throughput (instructions per second), the speed-up, and agreement on the duplicate pairs:
|ours ∩ datasketch| / |ours ∪ datasketch|, with recall and precision against datasketch.
Run: .venv/bin/python benchmarks/selection.py [--size N] [--threshold T] [--num-perm P]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

from arena_selection.domain.minhash import MinHashConfig, MinHasher, tokenize

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# Light edits go to instructions at least this long; see build_corpus.
MIN_EDITED_WORDS = 25


def _lines(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    # Split on "\n" only: Arena-Hard v2.0 has U+2028 inside its prompts.
    return [json.loads(line) for line in data.decode().split("\n") if line.strip()]


def base_instructions() -> list[str]:
    texts: list[str] = []
    arena_hard = DATASETS / "arena-hard-auto" / "data"
    for version in ("arena-hard-v0.1", "arena-hard-v2.0"):
        texts += [str(row["prompt"]) for row in _lines(arena_hard / version / "question.jsonl")]
    mt_bench = DATASETS / "FastChat/fastchat/llm_judge/data/mt_bench/question.jsonl"
    texts += [str(turn) for row in _lines(mt_bench) for turn in row["turns"]]  # type: ignore[attr-defined]
    vicuna = DATASETS / "vicuna-blog-eval/eval/table/question.jsonl"
    texts += [str(row["text"]) for row in _lines(vicuna)]
    alpaca = json.loads((DATASETS / "alpaca_eval/results/alpaca-7b/model_outputs.json").read_text())
    texts += [row["instruction"] for row in alpaca]
    panda = json.loads((DATASETS / "PandaLM/data/testset-v1.json").read_text())
    texts += [f"{row['instruction']} {row['input']}".strip() for row in panda]
    for row in _lines(DATASETS / "hh-rlhf/harmless-base/test.jsonl.gz"):
        first = str(row["chosen"]).split("\n\nAssistant:")[0].replace("\n\nHuman:", "").strip()
        texts.append(first)
    return list(dict.fromkeys(text for text in texts if text.strip()))


def build_corpus(size: int, seed: int = 7) -> list[str]:
    """Mostly distinct rewrites, plus light edits and exact copies of earlier instructions."""
    rng = random.Random(seed)
    bases = base_instructions()
    vocabulary = sorted({word for text in bases for word in text.split()})
    corpus: list[str] = []
    for _ in range(size):
        roll = rng.random()
        if corpus and roll < 0.10:
            # A re-post: the same words, different case and spacing.
            text = rng.choice(corpus)
            corpus.append(text.upper() if rng.random() < 0.5 else "  ".join(text.split()))
        elif corpus and roll < 0.25:
            words = rng.choice(corpus).split()
            if len(words) < MIN_EDITED_WORDS:
                # One changed word makes a short instruction another instruction ("build a PC"
                # vs "build a car"), not a near-copy; short ones are re-posted verbatim.
                corpus.append(" ".join(words))
                continue
            for _ in range(rng.randint(1, 2)):  # a light edit of a longer instruction
                position = rng.randrange(len(words) + 1)
                operation = rng.random()
                if operation < 0.4 and position < len(words):
                    words[position] = rng.choice(vocabulary)
                elif operation < 0.7 and position < len(words):
                    del words[position]
                else:
                    words.insert(position, rng.choice(vocabulary))
            corpus.append(" ".join(words))
        else:  # a distinct instruction: half its words replaced
            words = rng.choice(bases).split()[:200]
            corpus.append(
                " ".join(rng.choice(vocabulary) if rng.random() < 0.5 else w for w in words)
            )
    return corpus


def ours(texts: list[str], config: MinHashConfig) -> tuple[set[tuple[int, int]], float]:
    started = time.perf_counter()
    hasher = MinHasher(config)
    signatures = hasher.signatures(texts)
    pairs, _ = hasher.duplicate_pairs(signatures)
    elapsed = time.perf_counter() - started
    return {(int(i), int(j)) for i, j in pairs}, elapsed


def datasketch_pairs(
    texts: list[str], config: MinHashConfig, bands: int, rows: int
) -> tuple[set[tuple[int, int]], float]:
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=(bands, rows))
    k = config.shingle_size
    hashes = []
    for index, text in enumerate(texts):
        words = tokenize(text)
        shingles = [" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))]
        minhash = MinHash(num_perm=config.num_perm, seed=config.seed)
        minhash.update_batch([shingle.encode() for shingle in shingles])
        lsh.insert(index, minhash)
        hashes.append(minhash)
    pairs = set()
    for index, minhash in enumerate(hashes):
        for other in lsh.query(minhash):
            if other > index and minhash.jaccard(hashes[other]) >= config.threshold:
                pairs.add((index, other))
    return pairs, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-size", type=int, default=3)
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the datasketch-vs-datasketch (other seed) agreement ceiling",
    )
    args = parser.parse_args()
    config = MinHashConfig(args.threshold, args.num_perm, args.shingle_size)
    bands, rows = config.banding()

    texts = build_corpus(args.size)
    print(
        f"{len(texts)} instructions, threshold {config.threshold}, {config.num_perm} permutations,"
        f" {config.shingle_size}-word shingles, {bands} bands × {rows} rows"
    )
    our_pairs, our_seconds = ours(texts, config)
    their_pairs, their_seconds = datasketch_pairs(texts, config, bands, rows)

    both = len(our_pairs & their_pairs)
    union = len(our_pairs | their_pairs) or 1
    agreement = both / union
    recall = both / (len(their_pairs) or 1)
    precision = both / (len(our_pairs) or 1)
    speedup = their_seconds / our_seconds
    print(f"{'':<12}{'seconds':>10}{'instr/s':>12}{'dup pairs':>12}")
    for name, seconds, pairs in (
        ("arena", our_seconds, our_pairs),
        ("datasketch", their_seconds, their_pairs),
    ):
        print(f"{name:<12}{seconds:>10.2f}{len(texts) / seconds:>12.0f}{len(pairs):>12}")
    print(f"speed-up {speedup:.1f}x (target >= 5x)")
    print(
        f"agreement on duplicate pairs {agreement:.4f} (target >= 0.95); "
        f"recall vs datasketch {recall:.4f}, precision {precision:.4f}"
    )
    if args.reference:
        # Two datasketch runs with different seeds disagree near the threshold too: the ceiling
        # any independent MinHash implementation can reach on this corpus.
        other_pairs, _ = datasketch_pairs(
            texts,
            MinHashConfig(config.threshold, config.num_perm, config.shingle_size, seed=2),
            bands,
            rows,
        )
        reference = len(other_pairs & their_pairs) / (len(other_pairs | their_pairs) or 1)
        print(f"reference: datasketch seed 1 vs seed 2 agreement {reference:.4f}")
    return 0 if speedup >= 5 and agreement >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
