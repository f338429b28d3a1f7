"""The demo's verifiable tasks: seeded, correct, in the selection service's canonical format."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from arena_cli.demo.tasks import (
    DIFFICULTIES,
    FAMILIES,
    REFERENCE_KEY,
    Task,
    generate_task,
    generate_tasks,
    write_pool,
)
from arena_judge.domain.reference import reference_score
from arena_judge.domain.verdicts import ReferenceMatch
from arena_selection.domain.ingest import IngestSource, ingest
from arena_selection.domain.records import Message, record_id


def _solve(task: Task) -> str:
    """The answer worked out again from the instruction text alone."""
    text = task.instruction
    if task.family == "arithmetic":
        a, op, b = re.search(r"(\d+) ([+-]) (\d+)", text).groups()  # type: ignore[union-attr]
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if task.family == "reverse":
        return text.split()[-1][::-1]
    if task.family == "sort":
        digits = text.split(":", 1)[-1].removeprefix("Sort").split()
        return " ".join(sorted(digits, key=int))
    word = re.search(r"([a-z]+)\??$", text).group(1)  # type: ignore[union-attr]
    return str(len(word))


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    assert generate_tasks(7, 60) == generate_tasks(7, 60)
    assert generate_tasks(7, 60) != generate_tasks(8, 60)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_reference_answers_are_correct(family: str, difficulty: int) -> None:
    rng = random.Random(difficulty)
    for _ in range(50):
        task = generate_task(rng, family, difficulty)
        assert (task.family, task.difficulty) == (family, difficulty)
        assert task.answer == _solve(task), task


def _operands(task: Task) -> tuple[int, str, int]:
    a, op, b = re.search(r"(\d+) ([+-]) (\d+)", task.instruction).groups()  # type: ignore[union-attr]
    return int(a), op, int(b)


def test_difficulty_makes_strings_and_lists_longer() -> None:
    def size(task: Task) -> int:
        return int(task.answer) if task.family == "count" else len(task.answer)

    for family in ("reverse", "sort", "count"):
        lengths = {
            level: [size(generate_task(random.Random(i), family, level)) for i in range(100)]
            for level in DIFFICULTIES
        }
        assert max(lengths[1]) <= min(lengths[3]), family
        assert sum(lengths[1]) < sum(lengths[2]) < sum(lengths[3]), family


def test_arithmetic_levels_add_carries_then_a_second_two_digit_operand() -> None:
    rng = random.Random(0)
    for _ in range(200):
        a, op, b = _operands(generate_task(rng, "arithmetic", 1))
        assert (op, b < 10, a % 10 + b < 10) == ("+", True, True)
        a, op, b = _operands(generate_task(rng, "arithmetic", 2))
        assert b < 10
        assert a % 10 + b >= 10 if op == "+" else a % 10 < b
        a, op, b = _operands(generate_task(rng, "arithmetic", 3))
        assert (op, a >= 10, b >= 10, a % 10 + b % 10 < 10) == ("+", True, True, True)


def test_every_family_and_level_is_present_and_instructions_are_distinct() -> None:
    tasks = generate_tasks(0, 400)
    assert Counter(task.family for task in tasks) == {family: 100 for family in FAMILIES}
    assert {task.difficulty for task in tasks} == set(DIFFICULTIES)
    assert len({task.instruction for task in tasks}) == len(tasks)


def test_excluded_instructions_never_come_back() -> None:
    held_out = generate_tasks(1, 200)
    banned = {task.instruction for task in held_out}
    assert not banned & {task.instruction for task in generate_tasks(2, 2000, exclude=banned)}
    repeated = generate_tasks(3, 2000, exclude=banned, distinct=False)
    assert not banned & {task.instruction for task in repeated}


def test_unknown_family_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task family"):
        generate_task(random.Random(0), "poetry", 1)
    with pytest.raises(ValueError, match="difficulty"):
        generate_task(random.Random(0), "sort", 4)


def test_pool_file_ingests_with_the_reference_answer_in_meta(tmp_path: Path) -> None:
    tasks = generate_tasks(0, 40)
    path = write_pool(tmp_path / "pool.jsonl", tasks, source="demo-pool")
    records = ingest([IngestSource(path)]).records
    assert len(records) == len(tasks)
    for record, task in zip(records, tasks, strict=True):
        assert record.id == record_id([Message("user", task.instruction)])
        assert record.category == task.family
        assert record.source == "demo-pool"
        assert record.meta[REFERENCE_KEY] == task.answer
        assert record.prompt_messages == [Message("user", task.instruction)]


def test_the_reference_judge_scores_the_answer_ten_and_a_wrong_one_one() -> None:
    for task in generate_tasks(5, 80):
        right = reference_score(task.answer, task.answer, ReferenceMatch.NORMALIZED)
        wrong = reference_score(task.answer + "1", task.answer, ReferenceMatch.NORMALIZED)
        assert (right.score, wrong.score) == (10.0, 1.0), task
