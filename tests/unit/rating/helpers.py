"""Synthetic battles drawn from a known Bradley–Terry model, and their file form."""

from __future__ import annotations

import numpy as np

from arena_rating.domain import Battles

WINNER_NAMES = np.array(["model_a", "model_b", "tie", "tie (bothbad)"])


def synthetic_battles(
    n_models: int,
    n_battles: int,
    *,
    seed: int = 0,
    spread: float = 150.0,
    tie_share: float = 0.1,
    weights: tuple[float, ...] | None = None,
    ratings_seed: int | None = None,
) -> tuple[Battles, np.ndarray]:
    """Battles drawn from a known Bradley–Terry model; returns them and the true ratings.

    Ties happen at ``tie_share`` whatever the ratings (as in real arenas), which compresses
    fitted gaps a little; pass ``tie_share=0`` to recover the true ratings exactly.
    """
    rng = np.random.default_rng(seed)
    true = rng.normal(1000.0, spread, n_models)
    if ratings_seed is not None:  # same models, independent battles
        true = np.random.default_rng(ratings_seed).normal(1000.0, spread, n_models)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p_a = 1.0 / (1.0 + 10.0 ** ((true[b] - true[a]) / 400.0))
    u = rng.random(n_battles)
    decisive = 1.0 - tie_share
    outcome = np.where(
        u < p_a * decisive,
        0,
        np.where(u < decisive, 1, np.where(u < decisive + tie_share / 2, 2, 3)),
    )
    weight = np.ones(n_battles) if weights is None else rng.choice(weights, n_battles)
    battles = Battles(
        models=tuple(f"model-{k:03d}" for k in range(n_models)),
        model_a=a.astype(np.int64),
        model_b=b.astype(np.int64),
        outcome=outcome.astype(np.int64),
        weight=weight.astype(np.float64),
        category=np.full(n_battles, -1, dtype=np.int64),
        categories=(),
    )
    return battles, true


def winner_names(battles: Battles) -> np.ndarray:
    """The ``winner`` strings of each battle."""
    return WINNER_NAMES[battles.outcome]


def battle_records(battles: Battles) -> list[dict[str, object]]:
    """Battles as the JSON objects of a battles file."""
    names = battles.models
    out: list[dict[str, object]] = []
    for a, b, w, weight in zip(
        battles.model_a.tolist(),
        battles.model_b.tolist(),
        winner_names(battles).tolist(),
        battles.weight.tolist(),
        strict=True,
    ):
        record: dict[str, object] = {"model_a": names[a], "model_b": names[b], "winner": w}
        if weight != 1.0:
            record["weight"] = weight
        out.append(record)
    return out
