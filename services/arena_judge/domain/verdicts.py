"""Verdicts, position orders and the plain types every judge protocol shares.

The enum values equal the contract's (``arena.judge.v1.Verdict`` and friends), so the adapters
convert with ``int()`` and nothing here imports generated code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

Side = Literal["a", "b", "tie"]


class Verdict(IntEnum):
    """Outcome of one comparison, oriented to the item's A and B."""

    NONE = 0
    A_MUCH_BETTER = 1
    A_BETTER = 2
    TIE = 3
    B_BETTER = 4
    B_MUCH_BETTER = 5

    def mirrored(self) -> Verdict:
        """The same verdict seen with A and B swapped (game 2 of a position swap)."""
        return _MIRROR[self]

    @property
    def side(self) -> Side | None:
        """Which answer won; None when there is no verdict."""
        return _SIDE[self]

    @property
    def strong(self) -> bool:
        """`A>>B` or `B>>A`: Arena-Hard counts these as three battles."""
        return self in (Verdict.A_MUCH_BETTER, Verdict.B_MUCH_BETTER)

    @property
    def label(self) -> str:
        """Arena-Hard notation (`A>>B` .. `B>>A`), empty for no verdict."""
        return _LABEL[self]

    @classmethod
    def from_side(cls, side: Side | None, strong: bool = False) -> Verdict:
        if side == "a":
            return cls.A_MUCH_BETTER if strong else cls.A_BETTER
        if side == "b":
            return cls.B_MUCH_BETTER if strong else cls.B_BETTER
        if side == "tie":
            return cls.TIE
        return cls.NONE

    @classmethod
    def from_scores(cls, score_a: float, score_b: float) -> Verdict:
        """The paper's rule: the higher score wins, equal scores tie."""
        if score_a > score_b:
            return cls.A_BETTER
        if score_b > score_a:
            return cls.B_BETTER
        return cls.TIE


_MIRROR = {
    Verdict.NONE: Verdict.NONE,
    Verdict.A_MUCH_BETTER: Verdict.B_MUCH_BETTER,
    Verdict.A_BETTER: Verdict.B_BETTER,
    Verdict.TIE: Verdict.TIE,
    Verdict.B_BETTER: Verdict.A_BETTER,
    Verdict.B_MUCH_BETTER: Verdict.A_MUCH_BETTER,
}
_SIDE: dict[Verdict, Side | None] = {
    Verdict.NONE: None,
    Verdict.A_MUCH_BETTER: "a",
    Verdict.A_BETTER: "a",
    Verdict.TIE: "tie",
    Verdict.B_BETTER: "b",
    Verdict.B_MUCH_BETTER: "b",
}
_LABEL = {
    Verdict.NONE: "",
    Verdict.A_MUCH_BETTER: "A>>B",
    Verdict.A_BETTER: "A>B",
    Verdict.TIE: "A=B",
    Verdict.B_BETTER: "B>A",
    Verdict.B_MUCH_BETTER: "B>>A",
}


class Order(IntEnum):
    """Which answer the judge saw first."""

    AB = 1  # game 1
    BA = 2  # game 2: verdicts are mirrored back to A/B

    @property
    def game(self) -> int:
        return int(self)


class ParseStatus(IntEnum):
    OK = 1
    # Still unparsable after every retry; the raw output is kept, no verdict is given.
    FAILED = 2


class Protocol(IntEnum):
    """How a judge reads its inputs and what it returns (values of `JudgeProtocol`)."""

    PAIRWISE_SCORE = 1
    ARENA_HARD = 2
    MT_BENCH_SINGLE = 3
    MT_BENCH_PAIRWISE = 4
    REFERENCE = 5
    DIFFICULTY = 6
    ENSEMBLE = 7

    @property
    def pairwise(self) -> bool:
        return self in (
            Protocol.PAIRWISE_SCORE,
            Protocol.ARENA_HARD,
            Protocol.MT_BENCH_PAIRWISE,
        )

    @property
    def uses_model(self) -> bool:
        return self not in (Protocol.REFERENCE, Protocol.ENSEMBLE)


class ReferenceMatch(IntEnum):
    EXACT = 1
    NORMALIZED = 2
    NUMERIC = 3


class EnsembleAggregation(IntEnum):
    MAJORITY = 1
    MEAN_SCORE = 2


class PositionAggregation(IntEnum):
    SEPARATE_BATTLES = 1
    MEAN_SCORE = 2
    BOTH_AGREE = 3


@dataclass(frozen=True)
class Message:
    """One chat turn; role is ``system``, ``user``, ``assistant`` or ``tool``."""

    role: str
    content: str


@dataclass(frozen=True)
class Parsed:
    """What a parser understood, in presentation order (first shown = A)."""

    verdict: Verdict = Verdict.NONE
    score_a: float | None = None
    score_b: float | None = None
    explanation: str = ""

    def oriented(self, order: Order) -> Parsed:
        """Back to the item's A/B orientation: game 2 is mirrored and its scores swapped."""
        if order is Order.AB:
            return self
        return Parsed(self.verdict.mirrored(), self.score_b, self.score_a, self.explanation)


@dataclass(frozen=True)
class Outcome:
    """One judgment, oriented to the item's A and B."""

    verdict: Verdict
    score_a: float | None
    score_b: float | None
    explanation: str
    raw_output: str
    parse_status: ParseStatus
    attempts: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    members: tuple[Outcome, ...] = ()

    @property
    def parsed(self) -> bool:
        return self.parse_status is ParseStatus.OK
