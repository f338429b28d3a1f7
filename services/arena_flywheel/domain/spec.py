"""`FlywheelSpec`: the declarative description of a flywheel run, validated before anything runs.

A spec names the target and its opponents (models the inference service serves), the judge, the
instruction pool and how it is sliced, the stages of an iteration with their score-gap thresholds
K, the evaluation set and anchor, the promotion rule, how many iterations (or `continuous`) and the
budgets. Every problem is reported at once, each with the dotted path of its field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from arena_core.errors import InvalidArgumentError

Stage = Literal["sft", "dpo", "rl"]
JudgeProtocol = Literal["paper", "arena-hard", "mt-bench-pair", "reference"]
Backend = Literal["transformers", "vllm", "openai", "replay"]

# Judges score 1-10, so a score gap is at most 9.
MAX_SCORE_GAP = 9.0
ScoreGap = Annotated[float, Field(ge=0.0, le=MAX_SCORE_GAP)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelDecl(_Strict):
    """A model the inference service serves under this name."""

    backend: Backend
    path: str | None = None
    uri: str | None = None
    revision: str | None = None
    api_key_secret: str | None = Field(
        None, description="Name of the Secret (key `api-key`) for an OpenAI-compatible endpoint."
    )

    @model_validator(mode="after")
    def _has_location(self) -> ModelDecl:
        if self.backend in ("transformers", "vllm", "replay") and not self.path:
            raise ValueError(f"a {self.backend} model needs `path`")
        if self.backend == "openai" and not self.uri:
            raise ValueError("an openai model needs `uri` (the endpoint's base URL)")
        return self


class Target(_Strict):
    model: str = Field(description="Name under which the target is served.")
    base: str = Field(description="Checkpoint the first training stage starts from.")


class Sampling(_Strict):
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, gt=0)
    seed: int | None = 0


class JudgeDecl(_Strict):
    name: str
    version: str = "1"
    protocol: JudgeProtocol = "paper"
    model: str | None = Field(None, description="Judge model; not used by the reference judge.")
    template: str | None = Field(None, description="Prompt template file or id.")
    sampling: Sampling = Sampling()

    @model_validator(mode="after")
    def _llm_judge_has_model(self) -> JudgeDecl:
        if self.protocol != "reference" and not self.model:
            raise ValueError(f"the {self.protocol} judge needs `model`")
        return self


class PoolDecl(_Strict):
    dataset: str = Field(description="Pool dataset id or file.")
    slices: int = Field(ge=2, description="Number of slices D0..D(slices-1).")
    seed: int = 0


class Thresholds(_Strict):
    """Score gap K per stage; `per_iteration` overrides it for single iterations."""

    sft: ScoreGap = 1.0
    dpo: ScoreGap = 1.0
    rl: ScoreGap = 1.0
    per_iteration: dict[int, dict[Stage, ScoreGap]] = {}


class Anchor(_Strict):
    model: str
    rating: float = 1000.0


class EvaluationDecl(_Strict):
    test_set: str = Field(
        description="Evaluation set: a dataset id, a file, or `build` to build WizardArena Mix."
    )
    source: str | None = Field(
        None,
        description="Held-out dataset id or file to build WizardArena Mix from (`build`).",
    )
    difficulty_judge: str | None = Field(
        None, description="Model that rates difficulty for the Hard half of a built test set."
    )
    references: list[str] = []
    anchor: Anchor | None = None
    bootstrap_rounds: int = Field(1000, ge=0, le=100_000)


class PromotionDecl(_Strict):
    rule: Literal["ci_lower_above_incumbent", "rating_above_incumbent"] = "ci_lower_above_incumbent"
    min_battles: int = Field(100, ge=1)


class StageTraining(_Strict):
    """Overrides of the training service's recipe per stage, in its `Recipe` JSON form minus the
    stage itself, e.g. `{"hyperparameters": {"learning_rate": 1e-5}, "dpo": {"beta": 0.3}}`."""

    sft: dict[str, Any] = {}
    dpo: dict[str, Any] = {}
    rl: dict[str, Any] = {}
    # Where training runs: "local" (a process beside the training service) or "kubernetes".
    runner: Literal["local", "kubernetes"] = "local"
    gpus_per_node: int = Field(0, ge=0, le=64)
    num_nodes: int = Field(1, ge=1, le=256)


class Budgets(_Strict):
    battles: int | None = Field(None, gt=0)
    judge_tokens: int | None = Field(None, gt=0)
    gpu_hours: float | None = Field(None, gt=0)


class FlywheelSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    models: dict[str, ModelDecl]
    target: Target
    opponents: list[str] = Field(min_length=1)
    judge: JudgeDecl
    generation: Sampling = Field(
        Sampling(), description="Sampling of every model's answers in battles and evaluations."
    )
    pool: PoolDecl
    stages: list[Stage] = Field(["sft", "dpo", "rl"], min_length=1)
    thresholds: Thresholds = Thresholds()
    plan: dict[int, dict[Stage, int]] | None = Field(
        None, description="Explicit slice per (iteration, stage); default: consecutive slices."
    )
    evaluation: EvaluationDecl
    promotion: PromotionDecl = PromotionDecl()
    iterations: int | Literal["continuous"] = Field(1)
    training: StageTraining = StageTraining()
    budgets: Budgets = Budgets()

    @model_validator(mode="after")
    def _consistent(self) -> FlywheelSpec:
        problems = list(_cross_field_problems(self))
        if problems:
            # One line per problem, each "field: message"; parse_spec splits them back apart.
            raise ValueError("\n".join(f"{where}: {message}" for where, message in problems))
        return self

    @property
    def continuous(self) -> bool:
        return self.iterations == "continuous"

    def threshold(self, iteration: int, stage: Stage) -> float:
        override = self.thresholds.per_iteration.get(iteration, {})
        default: float = getattr(self.thresholds, stage)
        return override.get(stage, default)

    def slice_for(self, iteration: int, stage: Stage) -> int:
        """The pool slice a stage of an iteration battles on (D0 is the target's initial data)."""
        if self.plan is not None:
            return self.plan[iteration][stage]
        return 1 + (iteration - 1) * len(self.stages) + self.stages.index(stage)


def _cross_field_problems(spec: FlywheelSpec) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    declared = set(spec.models)

    def known(where: str, model: str) -> None:
        if model not in declared:
            problems.append((where, f"unknown model {model!r}; declare it under `models`"))

    known("target.model", spec.target.model)
    for index, opponent in enumerate(spec.opponents):
        known(f"opponents[{index}]", opponent)
        if opponent == spec.target.model:
            problems.append((f"opponents[{index}]", "the target cannot be its own opponent"))
    if spec.judge.model is not None:
        known("judge.model", spec.judge.model)
    if spec.evaluation.difficulty_judge is not None:
        known("evaluation.difficulty_judge", spec.evaluation.difficulty_judge)
    if spec.evaluation.test_set == "build" and not spec.evaluation.source:
        problems.append(("evaluation.source", "`test_set: build` needs a held-out `source`"))
    if isinstance(spec.iterations, int) and spec.iterations < 1:
        problems.append(("iterations", "must be at least 1, or `continuous`"))
    for index, reference in enumerate(spec.evaluation.references):
        known(f"evaluation.references[{index}]", reference)
    if spec.evaluation.anchor is not None:
        known("evaluation.anchor.model", spec.evaluation.anchor.model)
    if len(set(spec.stages)) != len(spec.stages):
        problems.append(("stages", "each stage may appear once per iteration"))
    for iteration in spec.thresholds.per_iteration:
        if iteration < 1:
            problems.append((f"thresholds.per_iteration.{iteration}", "iterations count from 1"))
    problems += _slice_problems(spec)
    return problems


def _slice_problems(spec: FlywheelSpec) -> list[tuple[str, str]]:
    if spec.continuous:
        return []  # slices arrive with the data; each new batch is split when it comes
    iterations = int(spec.iterations)
    if spec.plan is None:
        needed = 1 + iterations * len(spec.stages)
        if spec.pool.slices < needed:
            return [
                (
                    "pool.slices",
                    f"{iterations} iteration(s) of {len(spec.stages)} stage(s) need "
                    f"D0..D{needed - 1} ({needed} slices, D0 for the target's initial data), "
                    f"got {spec.pool.slices}",
                )
            ]
        return []
    problems: list[tuple[str, str]] = []
    used: dict[int, str] = {}
    for iteration in range(1, iterations + 1):
        for stage in spec.stages:
            where = f"plan.{iteration}.{stage}"
            chosen = spec.plan.get(iteration, {}).get(stage)
            if chosen is None:
                problems.append((where, "missing: every stage of every iteration needs a slice"))
            elif not 1 <= chosen < spec.pool.slices:
                problems.append(
                    (where, f"D{chosen} is outside D1..D{spec.pool.slices - 1} (D0 is reserved)")
                )
            elif chosen in used:
                problems.append(
                    (
                        where,
                        f"slice D{chosen} is already used by {used[chosen]}; "
                        "slices must not overlap",
                    )
                )
            else:
                used[chosen] = f"iteration {iteration} {stage}"
    return problems


@dataclass(frozen=True)
class SpecViolation:
    field: str
    message: str


class SpecError(InvalidArgumentError):
    """The spec is invalid; `violations` lists every problem with its field."""

    def __init__(self, source: str, violations: list[SpecViolation]) -> None:
        self.violations = violations
        lines = "\n  ".join(f"{violation.field}: {violation.message}" for violation in violations)
        super().__init__(f"invalid flywheel spec:\n  {lines}", where=source)


def parse_spec(text: str, source: str = "spec") -> FlywheelSpec:
    """Parses YAML (or JSON) text into a validated spec, or raises SpecError naming each field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        raise SpecError(source, [SpecViolation(where, f"not valid YAML: {error}")]) from None
    if not isinstance(raw, dict):
        raise SpecError(source, [SpecViolation("(root)", "expected a mapping of spec fields")])
    try:
        return FlywheelSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(source, _violations(error)) from None


def _violations(error: ValidationError) -> list[SpecViolation]:
    found: list[SpecViolation] = []
    for detail in error.errors():
        location = _dotted(detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["type"] == "value_error" and ": " in message and location in ("", "(root)"):
            # Cross-field problems carry their own field paths.
            for part in message.split("\n"):
                field, _, text = part.partition(": ")
                found.append(SpecViolation(field, text))
            continue
        found.append(SpecViolation(location or "(root)", message))
    return found


def _dotted(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path
