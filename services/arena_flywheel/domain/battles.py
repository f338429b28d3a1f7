"""Who battles whom, under which ids: the pairing rules of Arena Learning as pure functions.

Training rounds pit the target against every opponent; evaluation rounds on the test set pit the
candidate against opponents and references, and in iteration 0 every pair among all of them, so
the leaderboard is connected from the start. Every pair is judged in both orders; both games share
one battle id, which the rating service counts once per (arena, battle, game).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TypeVar

from arena_flywheel.domain.plan import Position

T = TypeVar("T")


@dataclass(frozen=True)
class Pairing:
    model_a: str
    model_b: str


def training_pairs(target: str, opponents: Sequence[str]) -> list[Pairing]:
    """The target (always as model A) against each opponent."""
    return [Pairing(target, opponent) for opponent in opponents]


def evaluation_pairs(
    candidate: str, field: Sequence[str], everyone_plays_everyone: bool
) -> list[Pairing]:
    """The candidate against the field; with `everyone_plays_everyone`, all pairs of them."""
    models = _unique([candidate, *field])
    if everyone_plays_everyone:
        return [Pairing(a, b) for a, b in combinations(models, 2)]
    return [Pairing(candidate, other) for other in models if other != candidate]


def battle_id(run_id: str, position: Position, prompt_id: str, pairing: Pairing) -> str:
    """Stable across restarts and the same for both orders of one pair on one prompt."""
    text = "\0".join((run_id, position.key(), prompt_id, pairing.model_a, pairing.model_b))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def work_id(run_id: str, position: Position, part: str = "") -> str:
    """An id for work the controller asks of another service (a job, a training run, an event).

    Lowercase letters, digits and dashes only, so it is a valid Kubernetes name, NATS message id
    and KV key wherever the receiving service uses it.
    """
    stage = position.stage or "all"
    step = position.step.value.replace("_", "-")
    suffix = f"-{part}" if part else ""
    return f"fw-{run_id}-{position.iteration}-{stage}-{step}{suffix}"


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unique(models: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for model in models:
        seen.setdefault(model, None)
    return list(seen)
