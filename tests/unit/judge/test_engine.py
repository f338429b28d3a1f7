"""The judging engine with a scripted judge model: retries, mirroring, reference and ensembles."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from arena_core.errors import InvalidArgumentError
from arena_judge.domain.aggregation import combine_orders, majority
from arena_judge.domain.engine import Completion, JudgeDefinition, JudgeEngine, PairInput
from arena_judge.domain.reference import final_number, reference_score
from arena_judge.domain.templates import TemplateCatalog
from arena_judge.domain.verdicts import (
    EnsembleAggregation,
    Message,
    Order,
    Outcome,
    ParseStatus,
    PositionAggregation,
    Protocol,
    ReferenceMatch,
    Verdict,
)


class ScriptedModel:
    """Answers each call with the next scripted text; records what it was asked."""

    def __init__(self, *outputs: str) -> None:
        self.outputs = list(outputs)
        self.calls: list[tuple[str, int, list[Message]]] = []

    async def complete(
        self, judge: JudgeDefinition, messages: Sequence[Message], attempt: int
    ) -> Completion:
        self.calls.append((judge.name, attempt, list(messages)))
        return Completion(self.outputs.pop(0), prompt_tokens=100, completion_tokens=10)


PAIR = PairInput((Message("user", "What is 6 x 7?"),), "It is 42.", "It is 41.")
PAPER = JudgeDefinition("paper", "1", Protocol.PAIRWISE_SCORE, model="judge-llm")


def engine(model: ScriptedModel) -> JudgeEngine:
    return JudgeEngine(TemplateCatalog(), model)


async def test_unparsable_output_is_resampled_then_parsed() -> None:
    model = ScriptedModel("gibberish", "Both fine.\nScores: [[A=8, B=3]]")
    outcome = await engine(model).judge(PAPER, PAIR, Order.AB)
    assert outcome.parse_status is ParseStatus.OK
    assert (outcome.verdict, outcome.score_a, outcome.score_b) == (Verdict.A_BETTER, 8, 3)
    assert outcome.attempts == 2
    assert [attempt for _, attempt, _ in model.calls] == [0, 1]
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (200, 20)
    assert outcome.explanation == "Both fine."


async def test_still_unparsable_after_the_retry_budget_is_a_recorded_failure() -> None:
    model = ScriptedModel("junk 1", "junk 2", "junk 3", "never asked")
    outcome = await engine(model).judge(PAPER, PAIR, Order.AB)
    assert outcome.parse_status is ParseStatus.FAILED
    assert outcome.verdict is Verdict.NONE
    assert outcome.attempts == 3  # the first sample and max_parse_retries=2 more
    assert outcome.raw_output == "junk 3"
    assert len(model.calls) == 3


async def test_second_order_shows_b_first_and_mirrors_the_verdict() -> None:
    model = ScriptedModel("Scores: [[A=9, B=2]]")
    outcome = await engine(model).judge(PAPER, PAIR, Order.BA)
    user = model.calls[0][2][-1].content
    assert user.index("It is 41.") < user.index("It is 42.")  # B was shown first
    # The first-shown answer (B) scored 9: oriented back, B wins.
    assert (outcome.verdict, outcome.score_a, outcome.score_b) == (Verdict.B_BETTER, 2, 9)


async def test_arena_hard_protocol_uses_a_loaded_templates_regex() -> None:
    model = ScriptedModel("My own answer... verdict [[B>>A]]")
    judge = JudgeDefinition("ah", "1", Protocol.ARENA_HARD, model="m")
    outcome = await engine(model).judge(judge, PAIR, Order.BA)
    assert outcome.verdict is Verdict.A_MUCH_BETTER


async def test_single_grade_and_difficulty_ignore_order() -> None:
    model = ScriptedModel("Good. [[7]]", "Hard-ish: [[6]]")
    grade = JudgeDefinition("g", "1", Protocol.MT_BENCH_SINGLE, model="m")
    single = PairInput(PAIR.dialogue, "It is 42.")
    graded = await engine(model).judge(grade, single, Order.BA)
    assert (graded.score_a, graded.score_b, graded.verdict) == (7, None, Verdict.NONE)
    difficulty = JudgeDefinition("d", "1", Protocol.DIFFICULTY, model="m")
    rated = await engine(model).judge(difficulty, single, Order.AB)
    assert rated.score_a == 6
    assert "It is 42." not in model.calls[1][2][-1].content  # the instruction alone


@pytest.mark.parametrize(
    ("match", "answer", "reference", "score"),
    [
        (ReferenceMatch.NUMERIC, "6 x 7 = 42, so the answer is 42.", "42", 10),
        (ReferenceMatch.NUMERIC, "The total is $1,234.50", "1234.5", 10),
        (ReferenceMatch.NUMERIC, "so \\boxed{3/4} in the end (about 0.75)", "0.75", 10),
        (ReferenceMatch.NUMERIC, "It is 41.", "42", 1),
        (ReferenceMatch.NUMERIC, "no idea", "42", 1),
        (ReferenceMatch.NORMALIZED, "The answer is: PARIS!", "paris", 10),
        (ReferenceMatch.NORMALIZED, "Lyon", "Paris", 1),
        (ReferenceMatch.EXACT, " Paris\n", "Paris", 10),
        (ReferenceMatch.EXACT, "paris", "Paris", 1),
    ],
)
def test_reference_matching(match: ReferenceMatch, answer: str, reference: str, score: int) -> None:
    assert reference_score(answer, reference, match).score == score


def test_numeric_tolerance() -> None:
    assert reference_score("3.1416", "3.14159", ReferenceMatch.NUMERIC, 0.001).matched
    assert not reference_score("3.15", "3.14159", ReferenceMatch.NUMERIC, 0.001).matched
    assert final_number("#### 18") == 18


async def test_reference_judge_needs_no_model_and_scores_a_verifiable_task() -> None:
    model = ScriptedModel()
    judge = JudgeDefinition("ref", "1", Protocol.REFERENCE, reference_match=ReferenceMatch.NUMERIC)
    pair = PairInput(PAIR.dialogue, "It is 42.", "It is 41.", reference="42")
    for order in Order:
        outcome = await engine(model).judge(judge, pair, order)
        assert (outcome.score_a, outcome.score_b, outcome.verdict) == (10, 1, Verdict.A_BETTER)
    assert model.calls == []


async def test_ensemble_majority_and_mean_name_their_members() -> None:
    members = tuple(
        JudgeDefinition(f"m{i}", "1", Protocol.PAIRWISE_SCORE, model="m") for i in range(3)
    )
    majority_judge = JudgeDefinition(
        "ens", "1", Protocol.ENSEMBLE, members=members, ensemble=EnsembleAggregation.MAJORITY
    )
    model = ScriptedModel("Scores: [[A=8, B=2]]", "Scores: [[A=6, B=5]]", "Scores: [[A=1, B=9]]")
    outcome = await engine(model).judge(majority_judge, PAIR, Order.AB)
    assert outcome.verdict is Verdict.A_BETTER
    assert len(outcome.members) == 3
    assert outcome.score_a == pytest.approx(5)
    assert outcome.score_b == pytest.approx(16 / 3)

    mean_judge = JudgeDefinition(
        "ens", "2", Protocol.ENSEMBLE, members=members, ensemble=EnsembleAggregation.MEAN_SCORE
    )
    model = ScriptedModel("Scores: [[A=8, B=2]]", "Scores: [[A=6, B=5]]", "Scores: [[A=1, B=9]]")
    outcome = await engine(model).judge(mean_judge, PAIR, Order.AB)
    assert outcome.verdict is Verdict.B_BETTER  # mean 5 vs 5.33


async def test_ensemble_members_that_fail_abstain() -> None:
    members = (
        JudgeDefinition("a", "1", Protocol.PAIRWISE_SCORE, model="m", max_parse_retries=0),
        JudgeDefinition("b", "1", Protocol.REFERENCE, reference_match=ReferenceMatch.NUMERIC),
    )
    judge = JudgeDefinition("ens", "1", Protocol.ENSEMBLE, members=members)
    pair = PairInput(PAIR.dialogue, "It is 41.", "It is 42.", reference="42")
    outcome = await engine(ScriptedModel("junk")).judge(judge, pair, Order.AB)
    assert outcome.parse_status is ParseStatus.OK
    assert outcome.verdict is Verdict.B_BETTER
    assert [m.parse_status for m in outcome.members] == [ParseStatus.FAILED, ParseStatus.OK]


def test_invalid_judges_are_refused_with_the_field_named() -> None:
    catalog_engine = engine(ScriptedModel())
    with pytest.raises(InvalidArgumentError, match=re.escape("judge.version")):
        JudgeDefinition("x", "", Protocol.ARENA_HARD, model="m").validate()
    with pytest.raises(InvalidArgumentError, match=re.escape("judge.model.name")):
        JudgeDefinition("x", "1", Protocol.ARENA_HARD).validate()
    with pytest.raises(InvalidArgumentError, match=re.escape("judge.max_parse_retries")):
        JudgeDefinition("x", "1", Protocol.ARENA_HARD, model="m", max_parse_retries=99).validate()
    with pytest.raises(InvalidArgumentError, match=re.escape("judge.members")):
        JudgeDefinition("x", "1", Protocol.ENSEMBLE).validate()
    with pytest.raises(InvalidArgumentError, match=re.escape("item.b")):
        catalog_engine.check(PAPER, PairInput(PAIR.dialogue, "only one"))
    with pytest.raises(InvalidArgumentError, match=re.escape("item.reference_answer")):
        catalog_engine.check(JudgeDefinition("r", "1", Protocol.REFERENCE), PAIR)


def _outcome(verdict: Verdict, a: float | None = None, b: float | None = None) -> Outcome:
    status = ParseStatus.FAILED if verdict is Verdict.NONE else ParseStatus.OK
    return Outcome(verdict, a, b, "", "", status, 1)


def test_position_aggregations() -> None:
    agree = {Order.AB: _outcome(Verdict.A_BETTER, 8, 5), Order.BA: _outcome(Verdict.A_BETTER, 7, 6)}
    split = {Order.AB: _outcome(Verdict.A_BETTER, 8, 5), Order.BA: _outcome(Verdict.B_BETTER, 4, 9)}
    separate = combine_orders(agree, PositionAggregation.SEPARATE_BATTLES)
    assert separate.verdict is Verdict.NONE
    assert separate.position_consistent is True
    assert separate.mean_score_a == 7.5
    assert separate.mean_score_b == 5.5
    mean = combine_orders(split, PositionAggregation.MEAN_SCORE)
    assert (mean.verdict, mean.mean_score_a, mean.mean_score_b) == (Verdict.B_BETTER, 6, 7)
    assert mean.position_consistent is False
    assert combine_orders(split, PositionAggregation.BOTH_AGREE).verdict is Verdict.TIE
    assert combine_orders(agree, PositionAggregation.BOTH_AGREE).verdict is Verdict.A_BETTER
    strengths = {Order.AB: _outcome(Verdict.A_MUCH_BETTER), Order.BA: _outcome(Verdict.A_BETTER)}
    assert combine_orders(strengths, PositionAggregation.MEAN_SCORE).verdict is Verdict.A_BETTER
    failed = {Order.AB: _outcome(Verdict.A_BETTER, 8, 5), Order.BA: _outcome(Verdict.NONE)}
    partial = combine_orders(failed, PositionAggregation.MEAN_SCORE)
    assert partial.verdict is Verdict.NONE
    assert partial.position_consistent is None


def test_majority_vote() -> None:
    assert majority([Verdict.A_MUCH_BETTER, Verdict.A_MUCH_BETTER, Verdict.B_BETTER]) is (
        Verdict.A_MUCH_BETTER
    )
    assert majority([Verdict.A_BETTER, Verdict.B_BETTER]) is Verdict.TIE
    assert majority([]) is Verdict.NONE
