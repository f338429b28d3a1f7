"""Scores of the reference benchmarks: MT-Bench single grades and AlpacaEval win rates.

MT-Bench (FastChat ``llm_judge`` single-grade files): the mean of a model's valid 1-10 grades
over both turns, -1 (an unparsable judgment) dropped; the CI resamples questions, keeping the
two turns of a question together because they share a conversation.

AlpacaEval: ``preference`` is continuous in [1, 2] (2.0) or 0/1/2 with 0 a draw (1.0); the win
rate is mean(preference - 1) * 100 with draws as 1.5, and its standard error is the sample
standard error of the same values. The length-controlled win rate follows AlpacaEval's GLM
``logit = length * tanh(delta_len / sd) + difficulty_coef * difficulty[instruction] + bias``
and predicts with the length term at zero. AlpacaEval fits the per-instruction difficulty over
all its leaderboard models and does not ship it, so we fit it the same way over the models
given (a joint GLM with a per-instruction term), then each model's GLM on it. With published
weights, those models keep their published coefficients, and the fitted difficulty is put on
the published scale by the affine map that best explains their preferences.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from scipy.special import expit

from .errors import RatingInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MT_BENCH_INVALID = -1.0
_NEWTON_TOL = 1e-10


# --- MT-Bench ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MTBenchJudgments:
    """Single-grade judgments, one row per (model, question, turn); ``score`` keeps the -1s."""

    models: tuple[str, ...]
    model: IntArray
    question: IntArray
    turn: IntArray
    score: FloatArray


@dataclass(frozen=True)
class MTBenchScore:
    """A model's MT-Bench score with its bootstrap 95% CI; ``n`` counts valid grades."""

    model: str
    score: float
    ci_low: float | None
    ci_high: float | None
    n: int


def load_mt_bench_judgments(path: str | Path) -> MTBenchJudgments:
    """Read a FastChat single-grade JSONL file (e.g. ``gpt-4_single.jsonl``)."""
    return parse_mt_bench_jsonl(_read(path), source=str(path))


def parse_mt_bench_jsonl(data: bytes, *, source: str = "<judgments>") -> MTBenchJudgments:
    """Parse single-grade judgments; a grade outside 1-10 other than -1 is an error."""
    models: dict[str, int] = {}
    questions: dict[Any, int] = {}
    rows: list[tuple[int, int, int, float]] = []
    for line, record in _jsonl_records(data, source):

        def fail(message: str, line: int = line) -> RatingInputError:
            return RatingInputError(message, source=source, line=line)

        model = record.get("model")
        if not isinstance(model, str) or not model:
            raise fail(f"field 'model' must be a non-empty string, got {model!r}")
        question = record.get("question_id")
        if isinstance(question, bool) or not isinstance(question, int | str):
            raise fail(f"field 'question_id' must be an integer or string, got {question!r}")
        turn = record.get("turn", 1)
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 1:
            raise fail(f"field 'turn' must be a positive integer, got {turn!r}")
        score = record.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise fail(f"field 'score' must be a number, got {score!r}")
        if score != MT_BENCH_INVALID and not 1 <= score <= 10:
            raise fail(f"field 'score' must be 1-10 or -1 (unparsable), got {score!r}")
        rows.append(
            (
                models.setdefault(model, len(models)),
                questions.setdefault(question, len(questions)),
                turn,
                float(score),
            )
        )
    if not rows:
        raise RatingInputError("no judgments", source=source)
    table = np.array(rows, dtype=np.float64)
    return MTBenchJudgments(
        models=tuple(models),
        model=table[:, 0].astype(np.int64),
        question=table[:, 1].astype(np.int64),
        turn=table[:, 2].astype(np.int64),
        score=table[:, 3],
    )


def score_mt_bench(
    judgments: MTBenchJudgments, *, bootstrap_rounds: int = 1000, seed: int | None = 0
) -> tuple[MTBenchScore, ...]:
    """Per-model MT-Bench scores, best first."""
    rng = np.random.default_rng(seed)
    out = []
    for k, name in enumerate(judgments.models):
        valid = (judgments.model == k) & (judgments.score != MT_BENCH_INVALID)
        grades, question = judgments.score[valid], judgments.question[valid]
        if grades.size == 0:
            out.append(MTBenchScore(model=name, score=math.nan, ci_low=None, ci_high=None, n=0))
            continue
        _, cluster = np.unique(question, return_inverse=True)
        sums = np.bincount(cluster, grades)
        counts = np.bincount(cluster).astype(np.float64)
        low = high = None
        if bootstrap_rounds > 0:
            q = sums.shape[0]
            draws = rng.multinomial(q, np.full(q, 1.0 / q), size=bootstrap_rounds)
            means = (draws @ sums) / (draws @ counts)
            low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
        out.append(
            MTBenchScore(
                model=name, score=float(grades.mean()), ci_low=low, ci_high=high, n=grades.size
            )
        )
    return tuple(sorted(out, key=lambda s: (-_nan_low(s.score), s.model)))


# --- AlpacaEval ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AlpacaAnnotations:
    """One model's annotations against one baseline; NaN preference = no usable judgment."""

    model: str
    baseline: str
    instructions: tuple[str, ...]
    preference: FloatArray  # in [1, 2], draws as 1.5
    baseline_length: FloatArray  # characters of output_1 (the baseline's), NaN if absent
    model_length: FloatArray  # characters of output_2


@dataclass(frozen=True)
class AlpacaScore:
    """Win rates in percent against the baseline."""

    model: str
    win_rate: float
    standard_error: float | None
    n: int
    length_controlled_win_rate: float | None = None


@dataclass(frozen=True)
class GLMWeights:
    """One model's AlpacaEval length-controlled GLM coefficients."""

    length: float
    difficulty: float
    bias: float


def load_alpaca_annotations(paths: Iterable[str | Path]) -> tuple[AlpacaAnnotations, ...]:
    """Read AlpacaEval ``annotations.json`` files, grouped by ``generator_2``."""
    return parse_alpaca_annotations((str(path), _read(path)) for path in paths)


def parse_alpaca_annotations(
    documents: Iterable[tuple[str, bytes]],
) -> tuple[AlpacaAnnotations, ...]:
    """AlpacaEval annotations from ``(source name, JSON bytes)`` pairs, grouped by generator_2."""
    grouped: dict[str, list[tuple[str, dict[str, Any], int]]] = {}
    for source, data in documents:
        records = orjson_loads(data, source)
        if not isinstance(records, list):
            raise RatingInputError("annotations must be a JSON array", source=source)
        for position, record in enumerate(records):
            if not isinstance(record, dict):
                raise RatingInputError(f"record {position}: not an object", source=source)
            model = record.get("generator_2")
            if not isinstance(model, str) or not model:
                raise RatingInputError(
                    f"record {position}: field 'generator_2' must be a string", source=source
                )
            grouped.setdefault(model, []).append((source, record, position))
    return tuple(_annotation_set(model, rows) for model, rows in sorted(grouped.items()))


def alpaca_win_rate(annotations: AlpacaAnnotations) -> tuple[float, float | None, int]:
    """(win rate %, standard error %, n) over the usable preferences."""
    values = annotations.preference[~np.isnan(annotations.preference)] - 1.0
    n = int(values.size)
    if n == 0:
        return math.nan, None, 0
    se = float(values.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else None
    return float(values.mean() * 100), se, n


def load_glm_weights(path: str | Path) -> dict[str, GLMWeights]:
    """AlpacaEval's ``length_controlled_v1/baseline_*.csv``: model -> coefficients."""
    text = _read(path).decode("utf-8")
    rows = list(csv.reader(text.splitlines()))
    if not rows or len(rows[0]) < 4:
        raise RatingInputError("expected a header with the three GLM terms", source=str(path))
    header = [h.strip() for h in rows[0][1:]]
    try:
        columns = [
            next(k for k, h in enumerate(header) if key in h)
            for key in ("std_delta_len", "instruction_difficulty", "not_gamed_baseline")
        ]
    except StopIteration:
        raise RatingInputError(
            f"unexpected GLM weight columns {header}", source=str(path)
        ) from None
    out = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not row[0]:
            continue
        try:
            values = [float(row[1 + c]) for c in columns]
        except (ValueError, IndexError):
            raise RatingInputError("bad GLM weight row", source=str(path), line=number) from None
        out[row[0]] = GLMWeights(length=values[0], difficulty=values[1], bias=values[2])
    return out


def score_alpaca_eval(
    annotation_sets: Sequence[AlpacaAnnotations],
    *,
    length_controlled: bool = False,
    weights: Mapping[str, GLMWeights] | None = None,
) -> tuple[AlpacaScore, ...]:
    """Win rates (and optionally length-controlled ones), best first."""
    lc = length_controlled_win_rates(annotation_sets, weights=weights) if length_controlled else {}
    out = []
    for item in annotation_sets:
        rate, se, n = alpaca_win_rate(item)
        out.append(
            AlpacaScore(
                model=item.model,
                win_rate=rate,
                standard_error=se,
                n=n,
                length_controlled_win_rate=lc.get(item.model),
            )
        )
    return tuple(sorted(out, key=lambda s: (-_nan_low(s.win_rate), s.model)))


def length_controlled_win_rates(
    annotation_sets: Sequence[AlpacaAnnotations],
    *,
    weights: Mapping[str, GLMWeights] | None = None,
) -> dict[str, float]:
    """Length-controlled win rate (%) per model; the baseline itself gets 50 by construction."""
    baselines = {a.baseline for a in annotation_sets}
    if len(baselines) > 1:
        raise RatingInputError(f"annotations use several baselines: {sorted(baselines)}")
    out = {a.model: 50.0 for a in annotation_sets if a.model == a.baseline}
    rated = [a for a in annotation_sets if a.model != a.baseline]
    if not rated:
        return out
    if len(rated) < 2:
        raise RatingInputError(
            "the length-controlled win rate needs annotations of at least two models: the "
            "instruction difficulty is fitted across models (pass reference models too)"
        )
    design = _lc_design(rated)
    difficulty = _joint_difficulty(design)
    published = _published_deltas(rated, weights, baselines.pop())
    if published:
        difficulty = _calibrate_difficulty(design, difficulty, published)
    for k, item in enumerate(rated):
        rows = design.rows[k]
        if item.model in published:
            coef = published[item.model]
            slope, bias = coef.difficulty, coef.bias
        else:
            seen = ~np.isnan(design.y[k, rows])
            slope, bias = _fit_model_glm(
                design.y[k, rows][seen], design.t[k, rows][seen], difficulty[rows][seen]
            )
        out[item.model] = float(expit(bias + slope * difficulty[rows]).mean() * 100)
    return out


@dataclass(frozen=True, eq=False)
class _Design:
    names: tuple[str, ...]
    y: FloatArray  # (models, instructions) preference - 1, NaN where absent or unusable
    t: FloatArray  # tanh(std_delta_len)
    rows: list[IntArray]  # instruction columns of each model's annotations (for predictions)


def _lc_design(rated: Sequence[AlpacaAnnotations]) -> _Design:
    index: dict[str, int] = {}
    for item in rated:
        for text in item.instructions:
            index.setdefault(text, len(index))
    y = np.full((len(rated), len(index)), np.nan)
    t = np.zeros((len(rated), len(index)))
    rows = []
    for k, item in enumerate(rated):
        cols = np.array([index[text] for text in item.instructions], dtype=np.int64)
        if len(set(cols.tolist())) != cols.size:
            raise RatingInputError(f"{item.model}: an instruction is annotated twice")
        delta = item.baseline_length - item.model_length
        if np.isnan(delta).any():
            raise RatingInputError(f"{item.model}: output_1/output_2 are needed for lengths")
        sd = delta.std(ddof=1) if delta.size > 1 else 0.0
        t[k, cols] = np.tanh(delta / sd) if sd > 0 else 0.0
        y[k, cols] = item.preference - 1.0
        rows.append(cols)
    return _Design(names=tuple(a.model for a in rated), y=y, t=t, rows=rows)


def _joint_difficulty(design: _Design) -> FloatArray:
    """AlpacaEval's first stage: logit = b_m + l_m * t + d_x over all models, mean(d) = 0.

    Block-coordinate Newton: every d_x is a 1-D problem given (b, l), every (b_m, l_m) a 2-D
    one given d. The objective is concave, so this converges to the joint maximum.
    """
    seen = ~np.isnan(design.y)
    y, t = np.nan_to_num(design.y), design.t
    models, instructions = y.shape
    b, slope, d = np.zeros(models), np.zeros(models), np.zeros(instructions)
    for _ in range(10_000):
        p = expit(b[:, None] + slope[:, None] * t + d[None, :])
        grad_d = np.where(seen, y - p, 0).sum(axis=0)
        info_d = np.where(seen, p * (1 - p), 0).sum(axis=0)
        step_d = np.clip(
            np.divide(grad_d, info_d, out=np.zeros_like(grad_d), where=info_d > 0), -2, 2
        )
        d += step_d
        d -= d.mean()
        p = expit(b[:, None] + slope[:, None] * t + d[None, :])
        resid, info = np.where(seen, y - p, 0), np.where(seen, p * (1 - p), 0)
        grad = np.stack([resid.sum(1), (resid * t).sum(1)], axis=1)
        hess = np.empty((models, 2, 2))
        hess[:, 0, 0] = info.sum(1)
        hess[:, 0, 1] = hess[:, 1, 0] = (info * t).sum(1)
        hess[:, 1, 1] = (info * t * t).sum(1) + 1e-12
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        b += step[:, 0]
        slope += step[:, 1]
        if max(np.abs(step_d).max(), np.abs(step).max()) < _NEWTON_TOL:
            break
    return d


def _fit_model_glm(y: FloatArray, t: FloatArray, difficulty: FloatArray) -> tuple[float, float]:
    """Second stage for one model: (difficulty coefficient, bias) of its soft-label GLM."""
    features = np.stack([t, difficulty, np.ones_like(t)], axis=1)
    coef = np.zeros(3)
    for _ in range(100):
        p = expit(features @ coef)
        grad = features.T @ (y - p)
        hess = (features * (p * (1 - p))[:, None]).T @ features
        step = np.linalg.solve(hess + 1e-12 * np.eye(3), grad)
        step *= min(1.0, 2.0 / max(float(np.abs(step).max()), 1e-300))
        coef += step
        if np.abs(step).max() < _NEWTON_TOL:
            break
    return float(coef[1]), float(coef[2])


def _published_deltas(
    rated: Sequence[AlpacaAnnotations], weights: Mapping[str, GLMWeights] | None, baseline: str
) -> dict[str, GLMWeights]:
    if not weights:
        return {}
    base = weights.get(baseline, GLMWeights(0.0, 0.0, 0.0))
    return {
        a.model: GLMWeights(
            length=weights[a.model].length - base.length,
            difficulty=weights[a.model].difficulty - base.difficulty,
            bias=weights[a.model].bias - base.bias,
        )
        for a in rated
        if a.model in weights
    }


def _calibrate_difficulty(
    design: _Design, difficulty: FloatArray, published: Mapping[str, GLMWeights]
) -> FloatArray:
    """The affine map alpha + beta * d that best explains the published models' preferences."""
    coef = {k: published[name] for k, name in enumerate(design.names) if name in published}
    alpha, beta = 0.0, 1.0
    for _ in range(100):
        grad = np.zeros(2)
        hess = np.zeros((2, 2))
        for k, w in coef.items():
            seen = ~np.isnan(design.y[k])
            y, t, d = design.y[k, seen], design.t[k, seen], difficulty[seen]
            p = expit(w.length * t + w.difficulty * (alpha + beta * d) + w.bias)
            jac = np.stack([np.full_like(d, w.difficulty), w.difficulty * d], axis=1)
            grad += jac.T @ (y - p)
            hess += (jac * (p * (1 - p))[:, None]).T @ jac
        step = np.linalg.solve(hess, grad)
        alpha, beta = alpha + float(step[0]), beta + float(step[1])
        if np.abs(step).max() < _NEWTON_TOL:
            break
    return alpha + beta * difficulty


def _annotation_set(model: str, rows: list[tuple[str, dict[str, Any], int]]) -> AlpacaAnnotations:
    baselines = {r.get("generator_1") for _, r, _ in rows}
    if len(baselines) != 1 or not isinstance(next(iter(baselines)), str):
        raise RatingInputError(f"{model}: annotations must share one string generator_1")
    n = len(rows)
    preference = np.full(n, np.nan)
    base_len = np.full(n, np.nan)
    model_len = np.full(n, np.nan)
    instructions = []
    for k, (source, record, position) in enumerate(rows):
        preference[k] = _preference(record.get("preference"), source, position)
        instruction = record.get("instruction", f"#{position}")
        instructions.append(instruction if isinstance(instruction, str) else str(instruction))
        for target, field in ((base_len, "output_1"), (model_len, "output_2")):
            value = record.get(field)
            if isinstance(value, str):
                target[k] = len(value)
    return AlpacaAnnotations(
        model=model,
        baseline=str(next(iter(baselines))),
        instructions=tuple(instructions),
        preference=preference,
        baseline_length=base_len,
        model_length=model_len,
    )


def _preference(raw: Any, source: str, position: int) -> float:
    if raw is None:
        return math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RatingInputError(f"record {position}: preference must be a number", source=source)
    value = float(raw)
    if math.isnan(value):
        return math.nan
    if value == 0.0:
        return 1.5  # AlpacaEval 1.0 writes a draw as 0
    if not 1.0 <= value <= 2.0:
        raise RatingInputError(
            f"record {position}: preference must be in [1, 2] or 0, got {value}", source=source
        )
    return value


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RatingInputError(f"cannot read: {exc.strerror}", source=str(path)) from exc


def orjson_loads(data: bytes, source: str) -> Any:
    """Parse one JSON document; the error names the file."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RatingInputError(f"invalid JSON ({exc})", source=source) from exc


def _jsonl_records(data: bytes, source: str) -> Iterable[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(data.split(b"\n"), start=1):  # never splitlines: U+2028
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RatingInputError(f"invalid JSON ({exc})", source=source, line=number) from exc
        if not isinstance(record, dict):
            raise RatingInputError("expected a JSON object", source=source, line=number)
        yield number, record
