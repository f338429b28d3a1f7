"""Training data from a judged battle round (paper §5).

A round: on every instruction the target and its opponents answered, and every pair was judged
in both position orders with a 1–10 score for each side. Each response's score is its mean over
all the judgments it appears in (both orders, every opponent) — the paper leaves open how the two
games combine; the mean is what its score-gap thresholds suggest. Judgments whose output could not
be parsed (no score) are left out of the means.

- SFT: keep an instruction when the best opponent's mean beats the target's by the threshold K;
  the example's answer is that opponent's response (one per instruction). Ties for best are
  broken by model name, so the choice never depends on input order.
- DPO / reward model (``best_worst``, the default): chosen = the best-scored response, rejected =
  the worst, kept when the gap reaches K; the chosen one may be the target's own answer (the
  paper's WizardLM-β column). The alternatives the paper leaves open are options:
  ``winner_loser`` (one pair per judged battle whose winner beats the loser by K) and
  ``best_vs_target`` (the best opponent's response over the target's, gap ≥ K).
- RL: the same pairs (for the reward model) plus the round's prompts.
- ``comparison`` chooses gap ≥ K (default) or gap > K; K lies in [0, 9] on a 1–10 scale.

Outputs are TRL's conversational formats: ``{"messages"}`` for SFT, ``{"prompt", "chosen",
"rejected"}`` for preferences, ``{"prompt"}`` for prompts. Every example keeps its lineage:
round, prompt, battles, judgments, judge specs, models and scores.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_selection.domain.artifacts import (
    LINEAGE,
    PROMPTS_JSONL,
    DatasetKind,
    RenderedDataset,
    jsonl_bytes,
    render_dataset,
)
from arena_selection.domain.records import Message, parse_messages

SCORE_MIN, SCORE_MAX = 1.0, 10.0
MAX_THRESHOLD = SCORE_MAX - SCORE_MIN


class Stage(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    REWARD_MODEL = "reward_model"
    RL = "rl"


class Pairing(StrEnum):
    BEST_WORST = "best_worst"
    WINNER_LOSER = "winner_loser"
    BEST_VS_TARGET = "best_vs_target"


class Comparison(StrEnum):
    AT_LEAST = "at_least"
    GREATER_THAN = "greater_than"

    def passes(self, gap: float, threshold: float) -> bool:
        # Scores are means of small integers; compare with a tolerance so 3.0 - 1e-15 >= 3.
        if self == Comparison.AT_LEAST:
            return gap >= threshold - 1e-9
        return gap > threshold + 1e-9


@dataclass(frozen=True)
class Response:
    model: str
    text: str
    generation_id: str = ""


@dataclass(frozen=True)
class JudgmentRecord:
    judgment_id: str
    battle_id: str
    model_a: str
    model_b: str
    score_a: float | None
    score_b: float | None
    order: str = "AB"
    judge: str = ""


@dataclass(frozen=True)
class JudgedPrompt:
    prompt_id: str
    messages: tuple[Message, ...]
    responses: dict[str, Response]
    judgments: tuple[JudgmentRecord, ...]
    category: str | None = None
    round_id: str = ""
    # The known answer of a verifiable prompt; RL prompts carry it to a reference-judge reward.
    reference_answer: str | None = None

    def mean_scores(self) -> dict[str, float]:
        totals: dict[str, list[float]] = defaultdict(list)
        for judgment in self.judgments:
            if judgment.score_a is not None:
                totals[judgment.model_a].append(judgment.score_a)
            if judgment.score_b is not None:
                totals[judgment.model_b].append(judgment.score_b)
        return {
            model: sum(values) / len(values)
            for model, values in totals.items()
            if values and model in self.responses
        }


@dataclass(frozen=True)
class SelectionConfig:
    stage: Stage
    threshold: float
    target_model: str
    comparison: Comparison = Comparison.AT_LEAST
    pairing: Pairing = Pairing.BEST_WORST

    def validate(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidArgumentError("must be a number", where="threshold")
        if math.isnan(self.threshold) or not 0 <= self.threshold <= MAX_THRESHOLD:
            raise InvalidArgumentError(
                f"K={self.threshold} is out of range: a score gap on the judge's "
                f"{SCORE_MIN:g}–{SCORE_MAX:g} scale lies in [0, {MAX_THRESHOLD:g}]",
                where="threshold",
            )
        if not self.target_model.strip():
            raise InvalidArgumentError("name the target model", where="target_model")


@dataclass
class Selection:
    """Selected examples (TRL rows), their lineage (same order) and the statistics."""

    stage: Stage
    rows: list[dict[str, Any]]
    lineage: list[dict[str, Any]]
    prompts: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def model_shares(self) -> dict[str, dict[str, int]]:
        chosen: Counter[str] = Counter()
        rejected: Counter[str] = Counter()
        for entry in self.lineage:
            chosen[entry["chosen_model"]] += 1
            if entry.get("rejected_model"):
                rejected[entry["rejected_model"]] += 1
        return {
            model: {"chosen": chosen[model], "rejected": rejected[model]}
            for model in sorted(set(chosen) | set(rejected))
        }


def _rl_prompt(prompt: JudgedPrompt) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": [message.to_dict() for message in prompt.messages]}
    if prompt.reference_answer is not None:
        row["reference_answer"] = prompt.reference_answer
    return row


def select_training_data(prompts: Sequence[JudgedPrompt], config: SelectionConfig) -> Selection:
    config.validate()
    if not prompts:
        raise InvalidArgumentError("the judged round holds no prompts", where="judgments")
    rows: list[dict[str, Any]] = []
    lineage: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    seen_target = False
    for prompt in prompts:
        scores = prompt.mean_scores()
        seen_target = seen_target or config.target_model in scores
        if config.stage == Stage.SFT:
            example = _sft(prompt, scores, config)
        elif config.pairing == Pairing.WINNER_LOSER:
            example = None
            for pair in _winner_loser(prompt, config):
                rows.append(pair[0])
                lineage.append(pair[1])
        else:
            example = _preference(prompt, scores, config)
        if isinstance(example, str):
            skipped[example] += 1
        elif example is not None:
            rows.append(example[0])
            lineage.append(example[1])
    if not seen_target:  # most likely a misspelt name: selecting without it would mislead
        raise InvalidArgumentError(
            f"target model {config.target_model!r} has no scored response in the round",
            where="target_model",
        )
    selection = Selection(config.stage, rows, lineage)
    if config.stage == Stage.RL:
        selection.prompts = [_rl_prompt(prompt) for prompt in prompts]
    selection.stats = {
        "prompts": len(prompts),
        "selected": len(rows),
        "skipped": dict(sorted(skipped.items())),
        "threshold": config.threshold,
        "comparison": config.comparison.value,
        "pairing": config.pairing.value if config.stage != Stage.SFT else None,
        "target_model": config.target_model,
    }
    return selection


def _best(scores: dict[str, float], models: Iterable[str]) -> str:
    return min(models, key=lambda model: (-scores[model], model))


def _worst(scores: dict[str, float], models: Iterable[str]) -> str:
    return min(models, key=lambda model: (scores[model], model))


def _prompt_messages(prompt: JudgedPrompt) -> list[dict[str, str]]:
    return [message.to_dict() for message in prompt.messages]


def _answer(response: Response) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": response.text}]


def _lineage(
    prompt: JudgedPrompt,
    scores: dict[str, float],
    chosen: str,
    rejected: str | None,
    gap: float,
    judgments: Sequence[JudgmentRecord] | None = None,
) -> dict[str, Any]:
    used = judgments if judgments is not None else prompt.judgments
    entry: dict[str, Any] = {
        "round_id": prompt.round_id,
        "prompt_id": prompt.prompt_id,
        "category": prompt.category,
        "chosen_model": chosen,
        "chosen_generation_id": prompt.responses[chosen].generation_id,
        "rejected_model": rejected,
        "rejected_generation_id": prompt.responses[rejected].generation_id if rejected else None,
        "scores": {model: round(value, 6) for model, value in sorted(scores.items())},
        "gap": round(gap, 6),
        "battle_ids": sorted({judgment.battle_id for judgment in used}),
        "judgment_ids": sorted(judgment.judgment_id for judgment in used),
        "judges": sorted({judgment.judge for judgment in used if judgment.judge}),
    }
    entry["example_id"] = content_hash(
        "arena.selection.example.v1",
        entry["prompt_id"],
        chosen,
        rejected or "",
        prompt.responses[chosen].text,
        prompt.responses[rejected].text if rejected else "",
    )
    return entry


def _sft(
    prompt: JudgedPrompt, scores: dict[str, float], config: SelectionConfig
) -> tuple[dict[str, Any], dict[str, Any]] | str | None:
    target = config.target_model
    if target not in scores:
        return "target_not_scored"
    opponents = [model for model in scores if model != target]
    if not opponents:
        return "no_scored_opponent"
    best = _best(scores, opponents)
    gap = scores[best] - scores[target]
    if not config.comparison.passes(gap, config.threshold):
        return None
    row = {"messages": _prompt_messages(prompt) + _answer(prompt.responses[best])}
    return row, _lineage(prompt, scores, best, target, gap)


def _preference(
    prompt: JudgedPrompt, scores: dict[str, float], config: SelectionConfig
) -> tuple[dict[str, Any], dict[str, Any]] | str | None:
    if len(scores) < 2:
        return "fewer_than_two_scored_responses"
    if config.pairing == Pairing.BEST_VS_TARGET:
        if config.target_model not in scores:
            return "target_not_scored"
        chosen = _best(scores, [model for model in scores if model != config.target_model])
        rejected = config.target_model
    else:
        chosen = _best(scores, scores)
        rejected = _worst(scores, [model for model in scores if model != chosen])
    gap = scores[chosen] - scores[rejected]
    if not config.comparison.passes(gap, config.threshold):
        return None
    row = {
        "prompt": _prompt_messages(prompt),
        "chosen": _answer(prompt.responses[chosen]),
        "rejected": _answer(prompt.responses[rejected]),
    }
    return row, _lineage(prompt, scores, chosen, rejected, gap)


def _winner_loser(
    prompt: JudgedPrompt, config: SelectionConfig
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    battles: dict[str, list[JudgmentRecord]] = defaultdict(list)
    for judgment in prompt.judgments:
        battles[judgment.battle_id or judgment.judgment_id].append(judgment)
    pairs = []
    for battle_id in sorted(battles):
        judgments = battles[battle_id]
        sides: dict[str, list[float]] = defaultdict(list)
        for judgment in judgments:
            if judgment.score_a is not None:
                sides[judgment.model_a].append(judgment.score_a)
            if judgment.score_b is not None:
                sides[judgment.model_b].append(judgment.score_b)
        means = {m: sum(v) / len(v) for m, v in sides.items() if v and m in prompt.responses}
        if len(means) != 2:
            continue
        winner, loser = sorted(means, key=lambda model: (-means[model], model))
        gap = means[winner] - means[loser]
        if gap <= 0 or not config.comparison.passes(gap, config.threshold):
            continue
        row = {
            "prompt": _prompt_messages(prompt),
            "chosen": _answer(prompt.responses[winner]),
            "rejected": _answer(prompt.responses[loser]),
        }
        pairs.append((row, _lineage(prompt, means, winner, loser, gap, judgments)))
    return pairs


def accumulate(
    earlier: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]]]], new: Selection
) -> Selection:
    """Earlier selections of the same stage followed by the new one (D1 ∪ D4 ∪ D7 ...); an
    example present twice (same prompt and responses) is kept once."""
    rows: list[dict[str, Any]] = []
    lineage: list[dict[str, Any]] = []
    seen: set[str] = set()
    for earlier_rows, earlier_lineage in [*earlier, (new.rows, new.lineage)]:
        if len(earlier_rows) != len(earlier_lineage):
            raise InvalidArgumentError(
                "an accumulated dataset's rows and lineage differ in length",
                where="accumulate_dataset_ids",
            )
        for row, entry in zip(earlier_rows, earlier_lineage, strict=True):
            if entry["example_id"] in seen:
                continue
            seen.add(entry["example_id"])
            rows.append(row)
            lineage.append(entry)
    merged = Selection(new.stage, rows, lineage, new.prompts, dict(new.stats))
    merged.stats["accumulated_from"] = len(earlier)
    merged.stats["selected_total"] = len(rows)
    return merged


# --- the judged-round file -----------------------------------------------------------------


def read_judged_round(data: bytes, name: str) -> list[JudgedPrompt]:
    """One JSON object per line and instruction:
    ``{"prompt_id", "messages", "category"?, "round_id"?, "responses": {model: {"text",
    "generation_id"?}}, "judgments": [{"judgment_id", "battle_id", "model_a", "model_b",
    "score_a", "score_b", "order": "AB"|"BA", "judge": {"name", "version"}}]}``."""
    prompts = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InvalidArgumentError(f"malformed JSON line: {error}", where=where) from None
        prompts.append(judged_prompt_from_dict(entry, where))
    return prompts


def judged_prompt_from_dict(entry: Any, where: str) -> JudgedPrompt:
    if not isinstance(entry, dict):
        raise InvalidArgumentError("expected a JSON object", where=where)
    prompt_id = entry.get("prompt_id")
    if not isinstance(prompt_id, str) or not prompt_id:
        raise InvalidArgumentError("`prompt_id` must be a non-empty string", where=where)
    messages = parse_messages(entry.get("messages"), where=f"{where}: messages")
    raw_responses = entry.get("responses")
    if isinstance(raw_responses, list):
        raw_responses = {
            item.get("model"): item for item in raw_responses if isinstance(item, dict)
        }
    if not isinstance(raw_responses, dict) or not raw_responses:
        raise InvalidArgumentError("`responses` must map model -> {text}", where=where)
    responses = {}
    for model, value in raw_responses.items():
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(model, str) or not isinstance(text, str):
            raise InvalidArgumentError(f"response of {model!r} has no text", where=where)
        generation = value.get("generation_id", "") if isinstance(value, dict) else ""
        responses[model] = Response(model, text, str(generation or ""))
    judgments = []
    for index, item in enumerate(entry.get("judgments") or []):
        at = f"{where}: judgments[{index}]"
        if not isinstance(item, dict):
            raise InvalidArgumentError("expected an object", where=at)
        model_a, model_b = item.get("model_a"), item.get("model_b")
        for model in (model_a, model_b):
            if model not in responses:
                raise InvalidArgumentError(f"model {model!r} has no response", where=at)
        judge = item.get("judge") or {}
        judge_label = (
            f"{judge.get('name', '')}@{judge.get('version', '')}"
            if isinstance(judge, dict)
            else str(judge)
        )
        judgments.append(
            JudgmentRecord(
                judgment_id=str(item.get("judgment_id") or content_hash(where, index)),
                battle_id=str(item.get("battle_id") or ""),
                model_a=str(model_a),
                model_b=str(model_b),
                score_a=_score(item.get("score_a"), f"{at}.score_a"),
                score_b=_score(item.get("score_b"), f"{at}.score_b"),
                order=str(item.get("order") or "AB"),
                judge=judge_label,
            )
        )
    if not judgments:
        raise InvalidArgumentError("holds no judgments", where=where)
    category = entry.get("category")
    return JudgedPrompt(
        prompt_id,
        tuple(messages),
        responses,
        tuple(judgments),
        category if isinstance(category, str) else None,
        str(entry.get("round_id") or ""),
    )


def _score(value: Any, where: str) -> float | None:
    if value is None:
        return None  # unparsable judge output: left out of the means
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidArgumentError(f"must be a number or null, got {value!r}", where=where)
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise InvalidArgumentError(
            f"{value} is outside the judge's {SCORE_MIN:g}–{SCORE_MAX:g} scale", where=where
        )
    return float(value)


def render_selection(
    name: str,
    selection: Selection,
    config: SelectionConfig,
    *,
    parents: Sequence[str],
    source: str,
) -> RenderedDataset:
    """The dataset files of a selection: TRL rows (JSONL + Parquet), lineage, RL prompts."""
    kind = DatasetKind.SFT if selection.stage == Stage.SFT else DatasetKind.PREFERENCE
    extra = {LINEAGE: jsonl_bytes(selection.lineage)}
    if selection.prompts:
        extra[PROMPTS_JSONL] = jsonl_bytes(selection.prompts)
    return render_dataset(
        name,
        kind,
        selection.rows,
        parents=parents,
        params={
            "stage": config.stage.value,
            "threshold": config.threshold,
            "comparison": config.comparison.value,
            "pairing": config.pairing.value,
            "target_model": config.target_model,
            "judged_round": source,
        },
        stats={**selection.stats, "model_shares": selection.model_shares()},
        extra_files=extra,
    )
