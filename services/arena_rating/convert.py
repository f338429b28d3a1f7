"""Contract <-> domain: judgments into battles, battle validation, queries and leaderboards.

Battle keys follow protos/README.md: a battle counts once per ``(arena, battle_id, game)``,
falling back to the judgment id when the battle id is empty; a battle with neither is never
deduplicated (the caller supplies a fresh key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.message import Message

from arena.common.v1 import common_pb2
from arena.judge.v1 import judge_service_pb2 as judge_pb
from arena.rating.v1 import rating_service_pb2 as pb
from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_rating.domain import (
    WINNERS,
    Battles,
    Leaderboard,
    Outcome,
    outcome_totals,
)

# Winner in the contract <-> the domain's outcome code (and the battles-file winner name).
OUTCOME_OF_WINNER: Mapping[int, Outcome] = {
    pb.WINNER_MODEL_A: Outcome.A_WINS,
    pb.WINNER_MODEL_B: Outcome.B_WINS,
    pb.WINNER_TIE: Outcome.TIE,
    pb.WINNER_TIE_BOTH_BAD: Outcome.TIE_BOTHBAD,
}
WINNER_NAME: Mapping[Outcome, str] = {outcome: name for name, outcome in WINNERS.items()}

_VERDICT_WINNER: Mapping[int, tuple[int, bool]] = {
    judge_pb.VERDICT_A_MUCH_BETTER: (pb.WINNER_MODEL_A, True),
    judge_pb.VERDICT_A_BETTER: (pb.WINNER_MODEL_A, False),
    judge_pb.VERDICT_TIE: (pb.WINNER_TIE, False),
    judge_pb.VERDICT_B_BETTER: (pb.WINNER_MODEL_B, False),
    judge_pb.VERDICT_B_MUCH_BETTER: (pb.WINNER_MODEL_B, True),
}

ARENA_KEY_PREFIX = "b"


def arena_token(arena: str) -> str:
    """An arena name as one KV key token (names may hold characters keys do not allow)."""
    return content_hash("arena.rating.arena/v1", arena)[:32]


def battle_key(battle: pb.Battle, fallback: str) -> str:
    """The KV key that makes a battle count once: ``b.<arena>.<hash of its identity>``."""
    if battle.battle_id:
        identity = content_hash("battle", battle.arena, battle.battle_id, battle.game)
    elif battle.judgment_id:
        identity = content_hash("judgment", battle.arena, battle.judgment_id, battle.game)
    else:
        identity = content_hash("anonymous", battle.arena, fallback)
    return f"{ARENA_KEY_PREFIX}.{arena_token(battle.arena)}.{identity}"


def battle_of_judgment(
    judgment: judge_pb.Judgment, strong_weight: float
) -> tuple[pb.Battle | None, str]:
    """The battle a judgment makes, or None and the reason it makes none.

    No arena means the judgment is not rated; no verdict (a parse failure) is never a battle;
    single-answer protocols have no model_b.
    """
    if not judgment.arena:
        return None, "no_arena"
    if judgment.parse_status == judge_pb.PARSE_STATUS_FAILED or not judgment.verdict:
        return None, "no_verdict"
    if not judgment.model_a or not judgment.model_b:
        return None, "single_answer"
    if judgment.model_a == judgment.model_b:
        return None, "same_model"
    winner, strong = _VERDICT_WINNER[judgment.verdict]
    battle = pb.Battle(
        battle_id=judgment.battle_id,
        arena=judgment.arena,
        model_a=judgment.model_a,
        model_b=judgment.model_b,
        winner=winner,  # type: ignore[arg-type]
        category=judgment.category,
        question_id=judgment.prompt_id,
        game=int(judgment.order),
        judgment_id=judgment.judgment_id,
    )
    if strong and strong_weight != 1.0:
        battle.weight = strong_weight
    if judgment.HasField("style_a"):
        battle.style_a.CopyFrom(judgment.style_a)
    if judgment.HasField("style_b"):
        battle.style_b.CopyFrom(judgment.style_b)
    if judgment.HasField("judged_at"):
        battle.occurred_at.CopyFrom(judgment.judged_at)
    return battle, ""


def validate_battle(battle: pb.Battle, where: str) -> None:
    """Raise InvalidArgumentError naming ``where.<field>`` for a battle that cannot be rated."""
    if not battle.arena:
        raise InvalidArgumentError("is required", where=f"{where}.arena")
    for name in ("model_a", "model_b"):
        if not getattr(battle, name):
            raise InvalidArgumentError("is required", where=f"{where}.{name}")
    if battle.model_a == battle.model_b:
        raise InvalidArgumentError(
            f"model_a and model_b are the same model {battle.model_a!r}", where=where
        )
    if battle.winner not in OUTCOME_OF_WINNER:
        raise InvalidArgumentError(
            "must be WINNER_MODEL_A, WINNER_MODEL_B, WINNER_TIE or WINNER_TIE_BOTH_BAD",
            where=f"{where}.winner",
        )
    if battle.HasField("weight") and not (math.isfinite(battle.weight) and battle.weight > 0):
        raise InvalidArgumentError(
            f"must be a positive finite number, got {battle.weight!r}", where=f"{where}.weight"
        )
    if battle.game not in (0, 1, 2):
        raise InvalidArgumentError(
            f"must be 0 (unknown), 1 or 2, got {battle.game}", where=f"{where}.game"
        )


def battle_weight(battle: pb.Battle) -> float:
    return battle.weight if battle.HasField("weight") else 1.0


def battle_record(battle: pb.Battle) -> dict[str, Any]:
    """The battles-file shape of a stored battle (style as Chatbot Arena's conv_metadata)."""
    record: dict[str, Any] = {
        "model_a": battle.model_a,
        "model_b": battle.model_b,
        "winner": WINNER_NAME[OUTCOME_OF_WINNER[battle.winner]],
        "weight": battle_weight(battle),
    }
    if battle.category:
        record["category"] = battle.category
    if battle.HasField("style_a") and battle.HasField("style_b"):
        record["conv_metadata"] = {
            **_style(battle.style_a, "a"),
            **_style(battle.style_b, "b"),
        }
    return record


def _style(features: common_pb2.StyleFeatures, side: str) -> dict[str, int]:
    return {
        f"sum_assistant_{side}_tokens": features.tokens,
        f"header_count_{side}": features.header_count,
        f"list_count_{side}": features.list_count,
        f"bold_count_{side}": features.bold_count,
    }


# --- queries ------------------------------------------------------------------------------

Method = Literal["bradley_terry", "online_elo"]
Ci = Literal["bootstrap", "analytic", "none"]


@dataclass(frozen=True)
class ResolvedQuery:
    """A LeaderboardQuery with the service's defaults filled in and every field checked."""

    arena: str
    category: str | None
    anchors: tuple[tuple[str, float], ...]
    baseline: str | None
    method: Method
    ci: Ci
    rounds: int
    seed: int | None
    k_factor: float
    style_control: bool
    models: tuple[str, ...] = field(default=())

    @property
    def is_main(self) -> bool:
        """The arena's headline leaderboard: every battle, every model, plain Bradley-Terry."""
        return (
            self.category is None
            and not self.models
            and not self.style_control
            and self.method == "bradley_terry"
        )

    @property
    def fit_label(self) -> str:
        if self.method == "online_elo":
            return "online_elo"
        if self.style_control:
            return "style_control"
        if self.ci == "bootstrap" and self.rounds:
            return "bootstrap"
        return "analytic" if self.ci == "analytic" else "mle"

    def to_proto(self) -> pb.LeaderboardQuery:
        """The query as answered, defaults included, so a snapshot says how it was made."""
        query = pb.LeaderboardQuery(
            arena=self.arena,
            category=self.category or "",
            baseline=self.baseline or "",
            method=(
                pb.RATING_METHOD_ONLINE_ELO
                if self.method == "online_elo"
                else pb.RATING_METHOD_BRADLEY_TERRY
            ),
            ci_method=_CI_TO_PROTO[self.ci],
            style_control=self.style_control,
            models=list(self.models),
        )
        for model, rating in self.anchors:
            query.anchors.add(model=model, rating=rating)
        if self.method == "bradley_terry" and self.ci == "bootstrap":
            query.bootstrap_rounds = self.rounds
            if self.seed is not None:
                query.seed = self.seed
        if self.method == "online_elo":
            query.k_factor = self.k_factor
        return query

    def cache_key(self) -> bytes:
        return self.to_proto().SerializeToString(deterministic=True)


_CI_TO_PROTO = {
    "bootstrap": pb.CI_METHOD_BOOTSTRAP,
    "analytic": pb.CI_METHOD_ANALYTIC,
    "none": pb.CI_METHOD_NONE,
}


def resolve_query(
    query: pb.LeaderboardQuery,
    *,
    default_rounds: int,
    max_rounds: int,
    default_seed: int | None,
    default_k: float,
    where: str = "query",
) -> ResolvedQuery:
    """Check a query field by field (errors name ``query.<field>``) and fill in the defaults."""
    if not query.arena:
        raise InvalidArgumentError("is required", where=f"{where}.arena")
    anchors: dict[str, float] = {}
    for index, anchor in enumerate(query.anchors):
        here = f"{where}.anchors[{index}]"
        if not anchor.model:
            raise InvalidArgumentError("is required", where=f"{here}.model")
        if not math.isfinite(anchor.rating):
            raise InvalidArgumentError(
                f"must be finite, got {anchor.rating!r}", where=f"{here}.rating"
            )
        if anchor.model in anchors:
            raise InvalidArgumentError(f"model {anchor.model!r} is anchored twice", where=here)
        anchors[anchor.model] = anchor.rating
    models: list[str] = []
    for index, model in enumerate(query.models):
        if not model:
            raise InvalidArgumentError("must not be empty", where=f"{where}.models[{index}]")
        if model not in models:
            models.append(model)
    if query.method not in (
        pb.RATING_METHOD_UNSPECIFIED,
        pb.RATING_METHOD_BRADLEY_TERRY,
        pb.RATING_METHOD_ONLINE_ELO,
    ):
        raise InvalidArgumentError(f"unknown method {query.method}", where=f"{where}.method")
    method: Method = (
        "online_elo" if query.method == pb.RATING_METHOD_ONLINE_ELO else "bradley_terry"
    )
    ci = _resolve_ci(query, method, where)
    rounds = default_rounds
    if query.HasField("bootstrap_rounds"):
        rounds = query.bootstrap_rounds
        if not 0 <= rounds <= max_rounds:
            raise InvalidArgumentError(
                f"must be in [0, {max_rounds}], got {rounds}", where=f"{where}.bootstrap_rounds"
            )
    k_factor = default_k
    if query.HasField("k_factor"):
        k_factor = query.k_factor
        if not (math.isfinite(k_factor) and k_factor > 0):
            raise InvalidArgumentError(
                f"must be a positive number, got {k_factor!r}", where=f"{where}.k_factor"
            )
        if method != "online_elo":
            raise InvalidArgumentError(
                "applies only to RATING_METHOD_ONLINE_ELO", where=f"{where}.k_factor"
            )
    if method == "online_elo":
        if query.style_control:
            raise InvalidArgumentError(
                "online Elo has no style control", where=f"{where}.style_control"
            )
        if anchors:
            raise InvalidArgumentError(
                "online Elo starts every model at 1000 and takes no anchors",
                where=f"{where}.anchors",
            )
    if query.style_control and ci == "analytic":
        raise InvalidArgumentError(
            "the analytic CI is not available with style control", where=f"{where}.ci_method"
        )
    return ResolvedQuery(
        arena=query.arena,
        category=query.category or None,
        anchors=tuple(anchors.items()),
        baseline=query.baseline or None,
        method=method,
        ci=ci,
        rounds=rounds if ci == "bootstrap" else 0,
        seed=query.seed if query.HasField("seed") else default_seed,
        k_factor=k_factor,
        style_control=query.style_control,
        models=tuple(models),
    )


def _resolve_ci(query: pb.LeaderboardQuery, method: Method, where: str) -> Ci:
    ci_method = query.ci_method
    if method == "online_elo":
        if ci_method not in (pb.CI_METHOD_UNSPECIFIED, pb.CI_METHOD_NONE):
            raise InvalidArgumentError(
                "online Elo gives point ratings only; use CI_METHOD_NONE or leave it unset",
                where=f"{where}.ci_method",
            )
        return "none"
    if ci_method in (pb.CI_METHOD_UNSPECIFIED, pb.CI_METHOD_BOOTSTRAP):
        return "bootstrap"
    if ci_method == pb.CI_METHOD_ANALYTIC:
        return "analytic"
    if ci_method == pb.CI_METHOD_NONE:
        return "none"
    raise InvalidArgumentError(f"unknown CI method {ci_method}", where=f"{where}.ci_method")


# --- leaderboards -------------------------------------------------------------------------


def leaderboard_proto(board: Leaderboard, battles: Battles, query: ResolvedQuery) -> pb.Leaderboard:
    """A fitted leaderboard as the contract's message (entries best first)."""
    index = {name: k for k, name in enumerate(battles.models)}
    wins, losses, ties = outcome_totals(battles)
    out = pb.Leaderboard(
        query=query.to_proto(),
        battle_count=len(battles),
        bootstrap_rounds=board.bootstrap_rounds,
        degenerate_rounds=board.nonfinite_rounds,
    )
    for row in board.models:
        k = index[row.model]
        entry = out.entries.add(
            model=row.model,
            rating=row.rating,
            mle=row.mle,
            rank=row.rank,
            battles=row.battles,
            wins=float(wins[k]),
            losses=float(losses[k]),
            ties=float(ties[k]),
        )
        if row.ci_low is not None:
            entry.ci_low = row.ci_low
        if row.ci_high is not None:
            entry.ci_high = row.ci_high
        if row.win_rate is not None:
            entry.win_rate = row.win_rate
    if board.style_coefficients is not None:
        out.style_coefficients.update(dict(board.style_coefficients))
    return out


def copy_of(message: Message) -> Any:
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def check_battles(battles: Sequence[pb.Battle], where: str = "battles") -> None:
    for index, battle in enumerate(battles):
        validate_battle(battle, f"{where}[{index}]")
