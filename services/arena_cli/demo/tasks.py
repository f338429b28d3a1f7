"""Verifiable instruction tasks for the demo flywheel: every instruction has one known answer.

Four families, each at difficulty 1 to 3: ``arithmetic`` (two-digit sums without a carry, then
with a carry or borrow, then two two-digit operands), ``reverse`` (3-5 letters backwards),
``sort`` (3-5 digits in ascending order) and ``count`` (the letters in a 2-11 letter string).
Instructions are short (a tiny model reads them character by character) and every level holds
hundreds of distinct instructions, so a pool of thousands never repeats one. The same seed always
gives the same tasks.

A task becomes a pool record in the selection service's canonical format
(``{"id", "messages", "source", "category", "meta"}``): the category is the family, and
``meta.reference_answer`` carries the known answer, which the flywheel hands to the reference
judge as ``JudgeItem.reference_answer``. The canonical format is the one ingestion keeps ``meta``
whole in, so the id is the selection service's content hash of the messages.

>>> task = generate_task(random.Random(0), "reverse", 1)
>>> task.answer == task.instruction.rsplit(" ", 1)[1][::-1]
True
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from arena_cli.demo.models import ROLE_WORDS
from arena_core.hashing import content_hash

FAMILIES = ("arithmetic", "reverse", "sort", "count")
DIFFICULTIES = (1, 2, 3)
# Share of each difficulty in the demo's data: mostly learnable, some hard for the weak models.
DEMO_DIFFICULTY_WEIGHTS: Mapping[int, float] = {1: 0.3, 2: 0.5, 3: 0.2}

REFERENCE_KEY = "reference_answer"
# The selection service's record-id namespace (arena_selection.domain.records): a pool record's
# id must be the content hash of its messages under it, or ingestion rejects the record.
_CONVERSATION_ID_NAMESPACE = "arena.selection.conversation.v1"

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Task:
    family: str
    difficulty: int
    instruction: str
    answer: str

    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.instruction}]

    def sft_example(self) -> dict[str, Any]:
        """TRL's conversational SFT row: the instruction and its correct answer."""
        return {
            "messages": [*self.prompt_messages(), {"role": "assistant", "content": self.answer}]
        }

    def pool_record(self, source: str) -> dict[str, Any]:
        """The canonical selection record; the answer rides in ``meta.reference_answer``."""
        messages = self.prompt_messages()
        return {
            "id": conversation_id(messages),
            "messages": messages,
            "source": source,
            "category": self.family,
            "meta": {REFERENCE_KEY: self.answer, "difficulty": self.difficulty},
        }


def conversation_id(messages: Sequence[Mapping[str, str]]) -> str:
    """The selection service's id of a conversation (a hash of roles and contents only)."""
    return content_hash(
        _CONVERSATION_ID_NAMESPACE, [[message["role"], message["content"]] for message in messages]
    )


# --- families ------------------------------------------------------------------------------


def _arithmetic(rng: random.Random, difficulty: int) -> tuple[str, str]:
    # 1: two digits and one without a carry (42 + 5); 2: with a carry or borrow (47 + 8, 43 - 7);
    # 3: two digits and two without a carry (23 + 45). Every level holds hundreds of instructions.
    tens, units = rng.randint(1, 8), rng.randint(0, 9)
    if difficulty == 1:
        b = rng.randint(0, 9 - units)
        a, op = 10 * tens + units, "+"
    elif difficulty == 2 and rng.random() < 0.5:
        units = rng.randint(1, 9)
        b = rng.randint(10 - units, 9)
        a, op = 10 * tens + units, "+"
    elif difficulty == 2:
        units = rng.randint(0, 8)
        a, b, op = 10 * tens + units, rng.randint(units + 1, 9), "-"
    else:
        b = 10 * rng.randint(1, 9 - tens) + rng.randint(0, 9 - units)
        a, op = 10 * tens + units, "+"
    template = rng.choice(("What is {a} {op} {b}?", "{a} {op} {b} = ?"))
    return template.format(a=a, op=op, b=b), str(a + b if op == "+" else a - b)


def _reverse(rng: random.Random, difficulty: int) -> tuple[str, str]:
    text = _letters(rng, difficulty + 2)
    template = rng.choice(("Reverse {s}", "Reverse: {s}"))
    return template.format(s=text), text[::-1]


def _sort(rng: random.Random, difficulty: int) -> tuple[str, str]:
    values = [rng.randint(0, 9) for _ in range(difficulty + 2)]
    template = rng.choice(("Sort {v}", "Sort: {v}"))
    return template.format(v=" ".join(map(str, values))), " ".join(map(str, sorted(values)))


def _count(rng: random.Random, difficulty: int) -> tuple[str, str]:
    text = _letters(rng, rng.randint(3 * difficulty - 1, 3 * difficulty + 2))
    template = rng.choice(("How many letters in {s}?", "Count the letters: {s}"))
    return template.format(s=text), str(len(text))


def _letters(rng: random.Random, length: int) -> str:
    while True:
        text = "".join(rng.choice(_LETTERS) for _ in range(length))
        # The tokenizer spells the chat roles as single tokens; a payload never contains them.
        if not any(word in text for word in ROLE_WORDS):
            return text


_GENERATORS = {
    "arithmetic": _arithmetic,
    "reverse": _reverse,
    "sort": _sort,
    "count": _count,
}


def generate_task(rng: random.Random, family: str, difficulty: int) -> Task:
    if family not in _GENERATORS:
        raise ValueError(f"unknown task family {family!r}; expected one of {', '.join(FAMILIES)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty}")
    instruction, answer = _GENERATORS[family](rng, difficulty)
    return Task(family, difficulty, instruction, answer)


def generate_tasks(
    seed: int,
    count: int,
    *,
    families: Sequence[str] = FAMILIES,
    difficulty_weights: Mapping[int, float] = DEMO_DIFFICULTY_WEIGHTS,
    exclude: Iterable[str] = (),
    distinct: bool = True,
    family_weights: Mapping[str, float] | None = None,
) -> list[Task]:
    """`count` tasks, none with one of `exclude`'s instructions and (with `distinct`) no
    instruction twice; deterministic for a seed. Families take turns, or are drawn by
    `family_weights` when given."""
    if count < 0:
        raise ValueError("count must be >= 0")
    rng = random.Random(seed)
    levels = sorted(difficulty_weights)
    weights = [difficulty_weights[level] for level in levels]
    banned = set(exclude)
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct tasks from these families and levels")
        if family_weights is None:
            family = families[len(tasks) % len(families)]
        else:
            family = rng.choices(families, [family_weights.get(f, 0.0) for f in families])[0]
        task = generate_task(rng, family, rng.choices(levels, weights)[0])
        if task.instruction in banned:
            continue
        if distinct:
            banned.add(task.instruction)
        tasks.append(task)
    return tasks


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def write_pool(path: Path, tasks: Iterable[Task], source: str) -> Path:
    """Canonical pool records, one JSON object per line, for the selection service to ingest."""
    return write_jsonl(path, (task.pool_record(source) for task in tasks))


def write_sft(path: Path, tasks: Iterable[Task]) -> Path:
    """TRL conversational SFT rows (``{"messages"}``) for the training service."""
    return write_jsonl(path, (task.sft_example() for task in tasks))
