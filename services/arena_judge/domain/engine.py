"""Judging one item in one position order: prompt, model call, parse, bounded re-sampling.

The model sits behind `CompletionPort`, so this module knows nothing about gRPC or batching. An
unparsable output is re-sampled up to the judge's `max_parse_retries` and then recorded as a
failed judgment with its raw text; only a failing port (inference unreachable) raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from arena_core.errors import InvalidArgumentError
from arena_judge.domain.aggregation import combine_ensemble
from arena_judge.domain.parsing import (
    parse_arena_hard,
    parse_mt_bench_pair,
    parse_pair_scores,
    parse_single_score,
)
from arena_judge.domain.reference import reference_score
from arena_judge.domain.templates import Template, TemplateCatalog, render
from arena_judge.domain.verdicts import (
    EnsembleAggregation,
    Message,
    Order,
    Outcome,
    Parsed,
    ParseStatus,
    Protocol,
    ReferenceMatch,
    Verdict,
)

MAX_PARSE_RETRIES_LIMIT = 10


@dataclass(frozen=True)
class JudgeDefinition:
    """A versioned judge, as the domain sees it.

    `handle` is opaque here: whatever the model port needs to call the judge model (the service
    keeps the contract's JudgeSpec in it). It takes no part in equality.
    """

    name: str
    version: str
    protocol: Protocol
    template_id: str = ""
    model: str = ""
    max_parse_retries: int = 2
    reference_match: ReferenceMatch = ReferenceMatch.NORMALIZED
    numeric_tolerance: float | None = None
    members: tuple[JudgeDefinition, ...] = ()
    ensemble: EnsembleAggregation = EnsembleAggregation.MAJORITY
    handle: Any = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def pairwise(self) -> bool:
        if self.protocol is Protocol.ENSEMBLE:
            return all(member.pairwise for member in self.members)
        if self.protocol is Protocol.REFERENCE:
            return True  # scores both answers when there are two
        return self.protocol.pairwise

    def validate(self, where: str = "judge") -> None:
        """Raises InvalidArgumentError naming the first bad field."""
        if not self.name:
            raise InvalidArgumentError("a judge needs a name", where=f"{where}.name")
        if not self.version:
            raise InvalidArgumentError(
                f"judge {self.name!r} needs a version, bumped whenever it changes meaning",
                where=f"{where}.version",
            )
        if not 0 <= self.max_parse_retries <= MAX_PARSE_RETRIES_LIMIT:
            raise InvalidArgumentError(
                f"must be between 0 and {MAX_PARSE_RETRIES_LIMIT}, got {self.max_parse_retries}",
                where=f"{where}.max_parse_retries",
            )
        if self.protocol.uses_model and not self.model:
            raise InvalidArgumentError(
                f"judge {self.label} ({self.protocol.name}) needs a model",
                where=f"{where}.model.name",
            )
        if self.numeric_tolerance is not None and self.numeric_tolerance < 0:
            raise InvalidArgumentError("must not be negative", where=f"{where}.numeric_tolerance")
        if self.protocol is Protocol.ENSEMBLE:
            if not self.members:
                raise InvalidArgumentError(
                    "an ensemble needs at least one member", where=f"{where}.members"
                )
            # A reference member fits either kind: it scores one answer or two.
            kinds = {m.pairwise for m in self.members if m.protocol is not Protocol.REFERENCE}
            if len(kinds) > 1:
                raise InvalidArgumentError(
                    "ensemble members must all be pairwise or all single-answer judges",
                    where=f"{where}.members",
                )
            for index, member in enumerate(self.members):
                member.validate(f"{where}.members[{index}]")


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CompletionPort(TypingProtocol):
    """Calls a judge model once. `attempt` is 0 for the first sample, then 1, 2, ... for
    re-samples, so the port can ask for a different sample each time."""

    async def complete(
        self, judge: JudgeDefinition, messages: Sequence[Message], attempt: int
    ) -> Completion: ...


@dataclass(frozen=True)
class PairInput:
    """The dialogue (ending with the instruction), the answers and an optional known answer."""

    dialogue: tuple[Message, ...]
    answer_a: str
    answer_b: str | None = None
    reference: str | None = None


Parser = Callable[[str], Parsed | None]


def parser_for(template: Template) -> Parser:
    low, high = template.score_range
    protocol = template.protocol
    if protocol is Protocol.ARENA_HARD:
        patterns = template.verdict_patterns
        return lambda text: parse_arena_hard(text, patterns) if patterns else parse_arena_hard(text)
    if protocol is Protocol.MT_BENCH_PAIRWISE:
        return parse_mt_bench_pair
    if protocol is Protocol.PAIRWISE_SCORE:
        return lambda text: parse_pair_scores(text, low, high)
    return lambda text: parse_single_score(text, low, high)


class JudgeEngine:
    def __init__(self, templates: TemplateCatalog, port: CompletionPort) -> None:
        self._templates = templates
        self._port = port

    @property
    def templates(self) -> TemplateCatalog:
        return self._templates

    def check(self, judge: JudgeDefinition, item: PairInput) -> None:
        """Fails fast on what can never succeed: bad spec, unknown template, missing fields."""
        judge.validate()
        self._check(judge, item, "judge")

    def _check(self, judge: JudgeDefinition, item: PairInput, where: str) -> None:
        if judge.protocol is Protocol.ENSEMBLE:
            for index, member in enumerate(judge.members):
                self._check(member, item, f"{where}.members[{index}]")
            return
        if judge.protocol.pairwise and item.answer_b is None:
            raise InvalidArgumentError(
                f"{judge.protocol.name} compares two answers; item.b is missing", where="item.b"
            )
        if judge.protocol is Protocol.REFERENCE:
            if item.reference is None:
                raise InvalidArgumentError(
                    "a reference judge needs the known answer", where="item.reference_answer"
                )
            return
        template = self._templates.resolve(
            judge.template_id, judge.protocol, item.reference is not None
        )
        first = None if judge.protocol is Protocol.DIFFICULTY else item.answer_a
        render(template, item.dialogue, first, item.answer_b, item.reference)

    async def judge(self, judge: JudgeDefinition, item: PairInput, order: Order) -> Outcome:
        if judge.protocol is Protocol.ENSEMBLE:
            members = await asyncio.gather(*(self.judge(m, item, order) for m in judge.members))
            return combine_ensemble(judge.ensemble, members, pairwise=judge.pairwise)
        if judge.protocol is Protocol.REFERENCE:
            return self._reference(judge, item)
        return await self._model_judgment(judge, item, order)

    def _reference(self, judge: JudgeDefinition, item: PairInput) -> Outcome:
        if item.reference is None:
            raise InvalidArgumentError(
                "a reference judge needs the known answer", where="item.reference_answer"
            )
        first = reference_score(
            item.answer_a, item.reference, judge.reference_match, judge.numeric_tolerance
        )
        if item.answer_b is None:
            return Outcome(
                Verdict.NONE, first.score, None, f"A: {first.explanation}", "", ParseStatus.OK, 0
            )
        second = reference_score(
            item.answer_b, item.reference, judge.reference_match, judge.numeric_tolerance
        )
        return Outcome(
            verdict=Verdict.from_scores(first.score, second.score),
            score_a=first.score,
            score_b=second.score,
            explanation=f"A: {first.explanation}; B: {second.explanation}",
            raw_output="",
            parse_status=ParseStatus.OK,
            attempts=0,
        )

    async def _model_judgment(
        self, judge: JudgeDefinition, item: PairInput, order: Order
    ) -> Outcome:
        template = self._templates.resolve(
            judge.template_id, judge.protocol, item.reference is not None
        )
        pairwise = judge.protocol.pairwise
        first: str | None
        second: str | None
        if pairwise:
            if item.answer_b is None:
                raise InvalidArgumentError(
                    f"{judge.protocol.name} compares two answers; item.b is missing",
                    where="item.b",
                )
            first, second = (
                (item.answer_a, item.answer_b)
                if order is Order.AB
                else (item.answer_b, item.answer_a)
            )
        else:
            first = None if judge.protocol is Protocol.DIFFICULTY else item.answer_a
            second = None
        messages = render(template, item.dialogue, first, second, item.reference)
        parse = parser_for(template)
        prompt_tokens = completion_tokens = 0
        text = ""
        attempts = 0
        for attempt in range(judge.max_parse_retries + 1):
            completion = await self._port.complete(judge, messages, attempt)
            attempts += 1
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.completion_tokens
            text = completion.text
            parsed = parse(text)
            if parsed is None:
                continue
            if pairwise:
                parsed = parsed.oriented(order)
            return Outcome(
                verdict=parsed.verdict,
                score_a=parsed.score_a,
                score_b=parsed.score_b,
                explanation=parsed.explanation,
                raw_output=text,
                parse_status=ParseStatus.OK,
                attempts=attempts,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
        return Outcome(
            verdict=Verdict.NONE,
            score_a=None,
            score_b=None,
            explanation="",
            raw_output=text,
            parse_status=ParseStatus.FAILED,
            attempts=attempts,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
