"""Online Elo with a K-factor: a cheap, order-dependent live view (not the leaderboard).

Chatbot Arena's ``compute_online_elo``: each battle moves both ratings by
K * weight * (score - expected). Unlike the Bradley–Terry fit it depends on battle order.
"""

from __future__ import annotations

from collections.abc import Mapping

from .battles import SCORE_OF_A, WINNERS, Battles
from .bradley_terry import ELO_BASE, ELO_SCALE, INITIAL_RATING
from .errors import RatingInputError

DEFAULT_K = 4.0


class OnlineElo:
    """Mutable live ratings; feed battles in the order they happened."""

    def __init__(self, k: float = DEFAULT_K, initial: float = INITIAL_RATING) -> None:
        if k <= 0:
            raise RatingInputError(f"K-factor must be positive, got {k}")
        self.k = k
        self.initial = initial
        self._ratings: dict[str, float] = {}

    def update(self, model_a: str, model_b: str, winner: str, weight: float = 1.0) -> None:
        """Apply one battle; ``winner`` is model_a, model_b, tie or tie (bothbad)."""
        if winner not in WINNERS:
            raise RatingInputError(f"unknown winner {winner!r}")
        self._apply(model_a, model_b, float(SCORE_OF_A[WINNERS[winner]]), weight)

    def ratings(self) -> Mapping[str, float]:
        """A snapshot of the current ratings."""
        return dict(self._ratings)

    def _apply(self, model_a: str, model_b: str, score_a: float, weight: float) -> None:
        ra = self._ratings.get(model_a, self.initial)
        rb = self._ratings.get(model_b, self.initial)
        expected_a = 1.0 / (1.0 + ELO_BASE ** ((rb - ra) / ELO_SCALE))
        delta = self.k * weight * (score_a - expected_a)
        self._ratings[model_a] = ra + delta
        self._ratings[model_b] = rb - delta


def online_elo(
    battles: Battles, *, k: float = DEFAULT_K, initial: float = INITIAL_RATING
) -> dict[str, float]:
    """Online Elo over battles in their stored order."""
    elo = OnlineElo(k=k, initial=initial)
    names = battles.models
    scores = battles.score_a.tolist()
    rows = zip(
        battles.model_a.tolist(),
        battles.model_b.tolist(),
        scores,
        battles.weight.tolist(),
        strict=True,
    )
    for a, b, score, weight in rows:
        elo._apply(names[a], names[b], score, weight)
    return dict(elo.ratings())
