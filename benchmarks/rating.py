"""Rating speed and agreement, side by side with the Chatbot Arena method.

For each grid point, battles are drawn from a known Bradley–Terry model and written as JSONL.
Ours: read the file, fit, bootstrap (multinomial over distinct cells, both cores).
Reference: Chatbot Arena's ``compute_mle_elo`` — per-battle rows duplicated so that a tie is
half a win, scikit-learn LogisticRegression without intercept, a bootstrap that resamples rows
and refits; its per-round time is measured on a few rounds and extrapolated.

    python benchmarks/rating.py            # 20/100/200 models x 10k/100k/1M battles
    python benchmarks/rating.py --quick    # a small grid, for CI
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

try:
    from arena_rating.domain import load_battles, rate_battles
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))
    from arena_rating.domain import load_battles, rate_battles

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
FULL_GRID = ((20, 100, 200), (10_000, 100_000, 1_000_000))
QUICK_GRID = ((20, 100), (10_000, 100_000))


@dataclass(frozen=True)
class Row:
    """One grid point's measurements (seconds, Elo)."""

    models: int
    battles: int
    load_s: float
    rate_s: float
    reference_fit_s: float
    reference_round_s: float
    rounds: int
    max_diff_elo: float

    @property
    def ours_s(self) -> float:
        return self.load_s + self.rate_s

    @property
    def reference_s(self) -> float:
        return self.reference_fit_s + self.rounds * self.reference_round_s

    @property
    def ratio(self) -> float:
        return self.reference_s / self.ours_s


def draw_battles(
    n_models: int, n_battles: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(model_a, model_b, outcome) from a Bradley–Terry model with 10% ties."""
    rng = np.random.default_rng(seed)
    true = rng.normal(1000.0, 150.0, n_models)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p_a = 1.0 / (1.0 + 10.0 ** ((true[b] - true[a]) / 400.0))
    u = rng.random(n_battles)
    outcome = np.where(u < 0.9 * p_a, 0, np.where(u < 0.9, 1, np.where(u < 0.95, 2, 3)))
    return a, b, outcome


def model_names(n_models: int) -> list[str]:
    return [f"model-{k:03d}-chat-v{k % 7}" for k in range(n_models)]


def write_jsonl(
    path: Path,
    names: Sequence[str],
    a: npt.NDArray[np.int64],
    b: npt.NDArray[np.int64],
    outcome: npt.NDArray[np.int64],
) -> None:
    """Write battles as JSONL quickly: one template line per distinct (a, b, outcome)."""
    m = len(names)
    keys, inverse = np.unique((a * m + b) * 4 + outcome, return_inverse=True)
    templates = np.empty(keys.size, dtype=object)
    for k, key in enumerate(keys.tolist()):
        pair, result = divmod(key, 4)
        ia, ib = divmod(pair, m)
        templates[k] = (
            f'{{"model_a": "{names[ia]}", "model_b": "{names[ib]}", '
            f'"winner": "{WINNERS[result]}"}}\n'
        ).encode()
    path.write_bytes(b"".join(templates[inverse.reshape(-1)].tolist()))


def reference_elo(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], outcome: npt.NDArray[np.int64], m: int
) -> npt.NDArray[np.float64]:
    """Chatbot Arena's compute_mle_elo: duplicated rows, LogisticRegression, 400 * coef + 1000."""
    from sklearn.linear_model import LogisticRegression

    a2, b2, w2 = np.concatenate([a, a]), np.concatenate([b, b]), np.concatenate([outcome, outcome])
    n = a2.shape[0]
    x = np.zeros((n, m))
    x[np.arange(n), a2] = math.log(10.0)
    x[np.arange(n), b2] = -math.log(10.0)
    y = np.zeros(n)
    y[w2 == 0] = 1.0
    tie = (w2 == 2) | (w2 == 3)
    tie[n // 2 :] = False
    y[tie] = 1.0
    # C=inf is penalty=None; max_iter raised so that the reference converges at 200 models.
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)
    lr.fit(x, y)
    return np.asarray(400.0 * lr.coef_[0] + 1000.0, dtype=np.float64)


def measure(
    n_models: int, n_battles: int, *, rounds: int, reference_rounds: int, workers: int, seed: int
) -> Row:
    names = model_names(n_models)
    a, b, outcome = draw_battles(n_models, n_battles, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "battles.jsonl"
        write_jsonl(path, names, a, b, outcome)
        start = time.perf_counter()
        battles = load_battles(path)
        loaded = time.perf_counter()
        board = rate_battles(battles, bootstrap_rounds=rounds, seed=seed, workers=workers)
        done = time.perf_counter()
    ours = np.array([board.model(name).mle for name in names])

    start_ref = time.perf_counter()
    reference = reference_elo(a, b, outcome, n_models)
    fitted_ref = time.perf_counter()
    rng = np.random.default_rng(seed)
    for _ in range(reference_rounds):
        rows = rng.integers(0, n_battles, n_battles)
        reference_elo(a[rows], b[rows], outcome[rows], n_models)
    rounds_done = time.perf_counter()
    return Row(
        models=n_models,
        battles=n_battles,
        load_s=loaded - start,
        rate_s=done - loaded,
        reference_fit_s=fitted_ref - start_ref,
        reference_round_s=(rounds_done - fitted_ref) / max(reference_rounds, 1),
        rounds=rounds,
        max_diff_elo=float(np.abs(ours - reference).max()),
    )


def print_header(rounds: int, workers: int) -> None:
    print(
        f"rating benchmark: {rounds} bootstrap rounds, {workers} workers, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(
        f"{'models':>6} {'battles':>9} | {'load s':>7} {'fit+boot s':>10} {'ours s':>7} | "
        f"{'ref fit s':>9} {'ref/round s':>11} {'ref total s':>11} | {'ratio':>9} | "
        f"{'max |diff| Elo':>14}"
    )


def print_row(row: Row) -> None:
    print(
        f"{row.models:>6} {row.battles:>9} | {row.load_s:>7.3f} {row.rate_s:>10.3f} "
        f"{row.ours_s:>7.3f} | {row.reference_fit_s:>9.3f} {row.reference_round_s:>11.3f} "
        f"{row.reference_s:>11.0f} | {row.ratio:>8.0f}x | {row.max_diff_elo:>14.2e}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid and 100 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="bootstrap rounds (1000)")
    parser.add_argument(
        "--reference-rounds", type=int, default=2, help="reference rounds measured per point"
    )
    parser.add_argument("--models", type=int, nargs="+", help="override the grid's model counts")
    parser.add_argument("--battles", type=int, nargs="+", help="override the grid's battle counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    models, sizes = QUICK_GRID if args.quick else FULL_GRID
    models, sizes = tuple(args.models or models), tuple(args.battles or sizes)
    rounds = args.rounds if args.rounds is not None else (100 if args.quick else 1000)
    print_header(rounds, args.workers)
    worst = 0.0
    for n_battles in sizes:
        for n_models in models:
            row = measure(
                n_models,
                n_battles,
                rounds=rounds,
                reference_rounds=args.reference_rounds,
                workers=args.workers,
                seed=args.seed,
            )
            print_row(row)
            worst = max(worst, row.max_diff_elo)
    print(f"max rating difference over the grid: {worst:.2e} Elo (target < 0.01)")
    return 0 if worst < 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
