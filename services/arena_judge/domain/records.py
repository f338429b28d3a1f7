"""Recorded judgments in the public formats, read into games and battles.

- Arena-Hard `model_judgment/<judge>/<model>.jsonl`: `games[0]` shows the baseline as A and the
  model as B, `games[1]` swaps them; `score` is `A>>B` .. `B>>A` or null (the judge's output had
  no verdict). Battles put the baseline in `model_a`, so game 2's verdict is mirrored.
- FastChat MT-Bench pairwise (`*_pair.jsonl`): `g1_winner`/`g2_winner` are already in model terms
  (`model_1`, `model_2`, `tie`, `error`); FastChat mirrored game 2 itself.
- AB/BA round-robins (mt_bench_repro): `winner_ab`/`winner_ba` in presentation terms (A, B, tie,
  error); in the BA game A is `model_b`, so it is mirrored.
- FastChat MT-Bench single (`*_single.jsonl`): `score` 1-10, -1 when unparsable.
- AlpacaEval `annotations.json`: `preference` in [1, 2] (1 = `generator_1` wins; continuous for
  weighted annotators) or 0 for a draw (AlpacaEval 1.0).

A battle line is what `arena rate` reads: `model_a`, `model_b`, `winner` (`model_a`, `model_b`,
`tie`), `weight` (3 for a strong verdict), `question_id` and `game` (1, or 2 for the swapped
order). A game without a verdict is a failure: counted, never a battle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from arena_core.errors import InvalidArgumentError
from arena_judge.domain.parsing import arena_hard_verdict, parse_mt_bench_pair
from arena_judge.domain.verdicts import Side, Verdict

STRONG_WEIGHT = 3
ARENA_HARD_BASELINE = "gpt-4-0314"

Winner = Literal["model_a", "model_b", "tie"]
_WINNER_OF_SIDE: dict[Side, Winner] = {"a": "model_a", "b": "model_b", "tie": "tie"}


@dataclass(frozen=True)
class Game:
    """One judged order of one pair, its verdict oriented to model_a / model_b."""

    # Identifies the pair both orders belong to (the record holding them, in recorded files).
    pair_key: str
    question_id: str | int
    model_a: str
    model_b: str
    game: int
    verdict: Verdict
    category: str | None = None
    source: str = ""
    turn: int = 1
    # Answer lengths in characters (A/B orientation), when the record shows the answers.
    length_a: int | None = None
    length_b: int | None = None


@dataclass(frozen=True)
class Battle:
    model_a: str
    model_b: str
    winner: Winner
    weight: float
    question_id: str | int
    game: int
    category: str | None = None

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "winner": self.winner,
            "weight": self.weight,
            "question_id": self.question_id,
            "game": self.game,
        }
        if self.category is not None:
            line["category"] = self.category
        return line


@dataclass
class Imported:
    """What a file set held: its games, the battles they make, and how many had no verdict."""

    records: int = 0
    games: list[Game] = field(default_factory=list)
    battles: list[Battle] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return sum(1 for game in self.games if game.verdict is Verdict.NONE)

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "games": len(self.games),
            "failures": self.failures,
            "battles": len(self.battles),
            "battle_weight": sum(b.weight for b in self.battles),
        }


def battle_of(game: Game, strong_weight: int = STRONG_WEIGHT) -> Battle | None:
    side = game.verdict.side
    if side is None:
        return None
    return Battle(
        model_a=game.model_a,
        model_b=game.model_b,
        winner=_WINNER_OF_SIDE[side],
        weight=float(strong_weight if game.verdict.strong else 1),
        question_id=game.question_id,
        game=game.game,
        category=game.category,
    )


def battles_of(games: Iterable[Game]) -> list[Battle]:
    return [battle for game in games if (battle := battle_of(game)) is not None]


# --- Reading ------------------------------------------------------------------------------------


def jsonl_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`file:line`, record) per non-empty line; split on `\\n` only (records may hold U+2028)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidArgumentError(f"cannot read ({error.strerror})", where=str(path)) from None
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InvalidArgumentError(f"invalid JSON ({error})", where=where) from None
        if not isinstance(record, dict):
            raise InvalidArgumentError("a record must be a JSON object", where=where)
        yield where, record


def _field(record: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidArgumentError(f"field {key!r} must be {expected}, got {value!r}", where=where)
    return value


def _answers_in_prompt(prompt: Any) -> tuple[int | None, int | None]:
    """Answer lengths from a judge prompt that quotes both answers between the usual markers."""
    if not isinstance(prompt, str):
        return None, None
    lengths: list[int | None] = []
    for side in ("A", "B"):
        start = None
        for opening in (
            f"<|The Start of Assistant {side}'s Answer|>\n",
            f"[The Start of Assistant {side}'s Answer]\n",
        ):
            if opening in prompt:
                start = prompt.index(opening) + len(opening)
                closing = opening.replace("Start", "End").strip("\n")
                end = prompt.find(closing, start)
                lengths.append(len(prompt[start:end].rstrip("\n")) if end >= 0 else None)
                break
        if start is None:
            lengths.append(None)
    return lengths[0], lengths[1]


def read_arena_hard(paths: Iterable[Path], baseline: str = ARENA_HARD_BASELINE) -> Imported:
    result = Imported()
    for path in paths:
        for where, record in jsonl_records(path):
            result.records += 1
            question = _field(record, "question_id", where, (str, int))
            model = _field(record, "model", where, str)
            games = _field(record, "games", where, list)
            if not 1 <= len(games) <= 2:
                raise InvalidArgumentError(
                    f"field 'games' must hold 1 or 2 games, got {len(games)}", where=where
                )
            for index, game in enumerate(games):
                if not isinstance(game, dict) or "score" not in game:
                    raise InvalidArgumentError(
                        f"games[{index}] must be an object with a 'score'", where=where
                    )
                score = game["score"]
                if score is not None and not isinstance(score, str):
                    raise InvalidArgumentError(
                        f"games[{index}].score must be a verdict string or null, got {score!r}",
                        where=where,
                    )
                verdict = arena_hard_verdict(score)
                first, second = _answers_in_prompt(game.get("user_prompt"))
                if index == 1:
                    # Game 2 showed the model first: mirror back to (baseline, model).
                    verdict = verdict.mirrored()
                    first, second = second, first
                result.games.append(
                    Game(
                        pair_key=where,
                        question_id=question,
                        model_a=baseline,
                        model_b=model,
                        game=index + 1,
                        verdict=verdict,
                        source=where,
                        length_a=first,
                        length_b=second,
                    )
                )
    result.battles = battles_of(result.games)
    return result


_FASTCHAT_WINNER = {
    "model_1": Verdict.A_BETTER,
    "model_2": Verdict.B_BETTER,
    "tie": Verdict.TIE,
    "error": Verdict.NONE,
}


def read_fastchat_pair(paths: Iterable[Path], *, from_text: bool = False) -> Imported:
    """FastChat pairwise judgments; `from_text` re-reads each verdict from the judge's own text
    (`g1_judgment`, `g2_judgment`) instead of trusting the recorded winners."""
    result = Imported()
    for path in paths:
        for where, record in jsonl_records(path):
            result.records += 1
            question = _field(record, "question_id", where, (str, int))
            model_1 = _field(record, "model_1", where, str)
            model_2 = _field(record, "model_2", where, str)
            turn = record.get("turn", 1)
            for game in (1, 2):
                if from_text:
                    parsed = parse_mt_bench_pair(_field(record, f"g{game}_judgment", where, str))
                    verdict = parsed.verdict if parsed else Verdict.NONE
                    if game == 2:
                        verdict = verdict.mirrored()  # game 2 showed model_2 first
                else:
                    winner = _field(record, f"g{game}_winner", where, str)
                    if winner not in _FASTCHAT_WINNER:
                        raise InvalidArgumentError(
                            f"field 'g{game}_winner' must be one of {sorted(_FASTCHAT_WINNER)}, "
                            f"got {winner!r}",
                            where=where,
                        )
                    verdict = _FASTCHAT_WINNER[winner]
                first, second = _answers_in_prompt(record.get(f"g{game}_user_prompt"))
                if game == 2:
                    first, second = second, first
                result.games.append(
                    Game(
                        pair_key=where,
                        question_id=question,
                        model_a=model_1,
                        model_b=model_2,
                        game=game,
                        verdict=verdict,
                        category=record.get("category"),
                        source=where,
                        turn=int(turn),
                        length_a=first,
                        length_b=second,
                    )
                )
    result.battles = battles_of(result.games)
    return result


_PRESENTED = {
    "A": Verdict.A_BETTER,
    "B": Verdict.B_BETTER,
    "tie": Verdict.TIE,
    "error": Verdict.NONE,
}


def read_ab_ba(paths: Iterable[Path]) -> Imported:
    """Round-robin records with `winner_ab` / `winner_ba` in presentation terms."""
    result = Imported()
    for path in paths:
        for where, record in jsonl_records(path):
            result.records += 1
            question = _field(record, "question_id", where, (str, int))
            model_a = _field(record, "model_a", where, str)
            model_b = _field(record, "model_b", where, str)
            turn = record.get("turn", 1)
            for game, key in ((1, "winner_ab"), (2, "winner_ba")):
                label = _field(record, key, where, str)
                if label not in _PRESENTED:
                    raise InvalidArgumentError(
                        f"field {key!r} must be one of {sorted(_PRESENTED)}, got {label!r}",
                        where=where,
                    )
                verdict = _PRESENTED[label]
                result.games.append(
                    Game(
                        pair_key=where,
                        question_id=question,
                        model_a=model_a,
                        model_b=model_b,
                        game=game,
                        verdict=verdict if game == 1 else verdict.mirrored(),
                        category=record.get("category"),
                        source=where,
                        turn=int(turn),
                    )
                )
    result.battles = battles_of(result.games)
    return result


def read_alpaca_eval(paths: Iterable[Path]) -> Imported:
    """AlpacaEval annotations. A continuous preference p splits into two weighted battles, a win
    for generator_2 with weight p-1 and one for generator_1 with weight 2-p, so the weighted win
    rate equals AlpacaEval's mean(p - 1)."""
    result = Imported()
    for path in paths:
        try:
            records = json.loads(path.read_bytes())
        except OSError as error:
            raise InvalidArgumentError(f"cannot read ({error.strerror})", where=str(path)) from None
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"invalid JSON ({error})", where=str(path)) from None
        if not isinstance(records, list):
            raise InvalidArgumentError("annotations must be a JSON array", where=str(path))
        for index, record in enumerate(records):
            where = f"{path}[{index}]"
            if not isinstance(record, dict):
                raise InvalidArgumentError("an annotation must be a JSON object", where=where)
            result.records += 1
            model_a = _field(record, "generator_1", where, str)
            model_b = _field(record, "generator_2", where, str)
            question = record.get("instruction", index)
            question_id = index if not isinstance(question, str | int) else question
            preference = record.get("preference")
            battles = _alpaca_battles(preference, where)
            verdict = Verdict.NONE
            if battles:
                weight_b = sum(w for side, w in battles if side == "b")
                weight_a = sum(w for side, w in battles if side == "a")
                verdict = Verdict.from_scores(weight_a, weight_b)
            result.games.append(
                Game(
                    pair_key=where,
                    question_id=question_id,
                    model_a=model_a,
                    model_b=model_b,
                    game=1,
                    verdict=verdict,
                    category=record.get("dataset"),
                    source=where,
                )
            )
            for side, weight in battles:
                result.battles.append(
                    Battle(
                        model_a,
                        model_b,
                        _WINNER_OF_SIDE[side],
                        weight,
                        question_id,
                        1,
                        record.get("dataset"),
                    )
                )
    return result


def _alpaca_battles(preference: Any, where: str) -> list[tuple[Side, float]]:
    if preference is None:
        return []
    if isinstance(preference, str):
        try:
            preference = float(preference)
        except ValueError:
            raise InvalidArgumentError(
                f"field 'preference' must be a number, got {preference!r}", where=where
            ) from None
    if isinstance(preference, bool) or not isinstance(preference, int | float):
        raise InvalidArgumentError(
            f"field 'preference' must be a number, got {preference!r}", where=where
        )
    if math.isnan(preference):
        return []
    if preference == 0 or preference == 1.5:
        return [("tie", 1.0)]
    if not 1 <= preference <= 2:
        raise InvalidArgumentError(
            f"field 'preference' must be 0 or within [1, 2], got {preference!r}", where=where
        )
    battles: list[tuple[Side, float]] = []
    if preference > 1:
        battles.append(("b", float(preference) - 1))
    if preference < 2:
        battles.append(("a", 2 - float(preference)))
    return battles


@dataclass(frozen=True)
class Grade:
    question_id: str | int
    model: str
    turn: int
    score: float | None  # None: the judge's output was unparsable (-1 in the file)
    source: str


def read_fastchat_single(paths: Iterable[Path]) -> list[Grade]:
    grades = []
    for path in paths:
        for where, record in jsonl_records(path):
            score = _field(record, "score", where, (int, float))
            grades.append(
                Grade(
                    question_id=_field(record, "question_id", where, (str, int)),
                    model=_field(record, "model", where, str),
                    turn=int(record.get("turn", 1)),
                    score=None if score == -1 else float(score),
                    source=where,
                )
            )
    return grades


def mean_grades(grades: Iterable[Grade]) -> dict[str, float]:
    """MT-Bench's score per model: the mean of valid per-turn grades (-1 dropped)."""
    by_model: dict[str, list[float]] = {}
    for grade in grades:
        if grade.score is not None:
            by_model.setdefault(grade.model, []).append(grade.score)
    return {model: sum(s) / len(s) for model, s in sorted(by_model.items())}


def read_answer_lengths(paths: Iterable[Path]) -> dict[tuple[str, str, int], int]:
    """Answer lengths (characters) by (model, question id, turn) from FastChat `model_answer`
    files (`question_id`, `model_id`, `choices[0].turns`)."""
    lengths: dict[tuple[str, str, int], int] = {}
    for path in paths:
        for where, record in jsonl_records(path):
            model = str(record.get("model_id") or path.stem)
            choices = _field(record, "choices", where, list)
            turns = choices[0].get("turns") if choices and isinstance(choices[0], dict) else None
            if not isinstance(turns, list):
                raise InvalidArgumentError("choices[0].turns must be a list", where=where)
            for turn, text in enumerate(turns, start=1):
                lengths[(model, str(record.get("question_id")), turn)] = len(str(text))
    return lengths


def with_lengths(games: Iterable[Game], lengths: Mapping[tuple[str, str, int], int]) -> list[Game]:
    """The games with answer lengths filled in where the answers are known."""
    return [
        replace(
            game,
            length_a=lengths.get((game.model_a, str(game.question_id), game.turn), game.length_a),
            length_b=lengths.get((game.model_b, str(game.question_id), game.turn), game.length_b),
        )
        for game in games
    ]


FORMATS = ("arena-hard", "mt-bench-pair", "ab-ba", "alpaca-eval")


def read_recorded(format_name: str, paths: Iterable[Path], **options: Any) -> Imported:
    readers: dict[str, Callable[..., Imported]] = {
        "arena-hard": read_arena_hard,
        "mt-bench-pair": read_fastchat_pair,
        "ab-ba": read_ab_ba,
        "alpaca-eval": read_alpaca_eval,
    }
    reader = readers.get(format_name)
    if reader is None:
        raise InvalidArgumentError(
            f"unknown format {format_name!r} (one of {', '.join(FORMATS)})", where="--format"
        )
    result: Imported = reader(list(paths), **options)
    return result
