"""Recorded answers (FastChat, Arena-Hard, AlpacaEval files) indexed by the prompts they answer,
so a leaderboard can be rebuilt from published answers without running a model.

Formats, detected per record (or pinned with `ReplayFormat`):

- Arena-Hard (current): ``{"uid", "model", "messages": [{"role": "user", "content": ...},
  {"role": "assistant", "content": {"answer": ...}}, ...]}`` — prompts are in the record.
- FastChat / Arena-Hard (older): ``{"question_id", "model_id", "choices": [{"turns": [...]}]}``;
  the prompts come from a question file listed alongside (``{"question_id", "turns": [...]}`` or
  Arena-Hard's ``{"uid", "prompt"}``).
- AlpacaEval: a JSON list of ``{"instruction", "output", "generator"}``.

A conversation matches a recorded answer when its user turns equal the recorded user turns (up to
whitespace); the answer to its k-th user turn is the recorded k-th assistant turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_inference.domain.types import ChatMessage, ReplayFormat, Role

Key = tuple[str, ...]


@dataclass(frozen=True)
class RecordedAnswer:
    text: str
    question_id: str
    source: str  # file:line


@dataclass(frozen=True)
class _Record:
    kind: str  # "conversation", "answer", "question", "alpaca"
    where: str
    data: dict[str, Any]


def normalize(text: str) -> str:
    return " ".join(text.split())


def key_of(user_turns: Iterable[str]) -> Key:
    return tuple(normalize(turn) for turn in user_turns)


class ReplayIndex:
    def __init__(self) -> None:
        self._answers: dict[Key, RecordedAnswer] = {}
        self.conversations = 0

    def __len__(self) -> int:
        return self.conversations

    def add(
        self, user_turns: Sequence[str], answers: Sequence[str], question_id: str, where: str
    ) -> None:
        if len(answers) < 1:
            return
        self.conversations += 1
        for turn in range(min(len(user_turns), len(answers))):
            key = key_of(user_turns[: turn + 1])
            # The first recording of a prompt wins, so reloading the same files changes nothing.
            self._answers.setdefault(key, RecordedAnswer(answers[turn], question_id, where))

    def answer(self, messages: Sequence[ChatMessage], model: str = "") -> RecordedAnswer:
        turns = [message.content for message in messages if message.role == Role.USER]
        if not turns:
            raise InvalidArgumentError(
                "a replayed conversation needs at least one user message", where="input.messages"
            )
        found = self._answers.get(key_of(turns))
        if found is None:
            first = normalize(turns[0])
            shown = first[:80] + ("..." if len(first) > 80 else "")
            raise NotFoundError(
                f"replay model {model!r} has no recorded answer for this conversation "
                f"({len(turns)} user turn(s), first begins {shown!r})"
            )
        return found

    @classmethod
    def load(
        cls,
        uris: Sequence[str],
        replay_format: ReplayFormat = ReplayFormat.AUTO,
        model: str = "",
    ) -> ReplayIndex:
        """Reads every file; `model` keeps only records of that model when files hold several."""
        records: list[_Record] = []
        for uri in uris:
            records.extend(_read(_local_path(uri), replay_format))
        questions: dict[str, tuple[list[str], str]] = {}
        for record in records:
            if record.kind == "question":
                question_id, turns = _question(record)
                questions[question_id] = (turns, record.where)
        index = cls()
        missing: list[str] = []
        for record in records:
            if record.kind == "question" or not _of_model(record, model):
                continue
            if record.kind == "conversation":
                user_turns, answers = _conversation(record)
                index.add(user_turns, answers, str(record.data.get("uid", "")), record.where)
            elif record.kind == "alpaca":
                index.add(
                    [_text(record, "instruction")], [_text(record, "output")], "", record.where
                )
            else:
                question_id = str(record.data["question_id"])
                if question_id not in questions:
                    missing.append(f"{question_id} ({record.where})")
                    continue
                index.add(
                    questions[question_id][0], _choice_turns(record), question_id, record.where
                )
        if missing:
            raise InvalidArgumentError(
                f"{len(missing)} recorded answers name questions found in no question file "
                f"(first: {', '.join(missing[:3])}); add the question file to replay_uris",
                where="spec.replay_uris",
            )
        if not index.conversations:
            raise InvalidArgumentError(
                "no recorded answers found"
                + (f" for model {model!r}" if model else "")
                + f" in {', '.join(uris)}",
                where="spec.replay_uris",
            )
        return index


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else uri)
        if not path.is_file():
            raise InvalidArgumentError(f"{path} is not a readable file", where="spec.replay_uris")
        return path
    raise InvalidArgumentError(
        f"{uri}: only local files (path or file://) can be replayed", where="spec.replay_uris"
    )


def _read(path: Path, replay_format: ReplayFormat) -> Iterator[_Record]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"not valid JSON: {error}", where=str(path)) from None
        for number, row in enumerate(rows, start=1):
            yield _classify(row, f"{path}[{number - 1}]", replay_format)
        return
    # Split on "\n" only: published answers contain U+2028, which str.splitlines() splits on.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"not valid JSON: {error.msg}", where=where) from None
        yield _classify(row, where, replay_format)


_KINDS_BY_FORMAT = {
    ReplayFormat.AUTO: {"conversation", "answer", "question", "alpaca"},
    ReplayFormat.ARENA_HARD: {"conversation", "answer", "question"},
    ReplayFormat.FASTCHAT: {"answer", "question"},
    ReplayFormat.ALPACA_EVAL: {"alpaca"},
}


def _classify(row: Any, where: str, replay_format: ReplayFormat) -> _Record:
    if not isinstance(row, dict):
        raise InvalidArgumentError("a record must be a JSON object", where=where)
    if isinstance(row.get("messages"), list):
        kind = "conversation"
    elif isinstance(row.get("choices"), list) and "question_id" in row:
        kind = "answer"
    elif "instruction" in row and "output" in row:
        kind = "alpaca"
    elif ("question_id" in row and isinstance(row.get("turns"), list)) or (
        "uid" in row and isinstance(row.get("prompt"), str)
    ):
        kind = "question"
    else:
        raise InvalidArgumentError(
            f"unrecognised record with fields {sorted(row)[:8]}; expected an Arena-Hard, "
            "FastChat or AlpacaEval answer, or a question",
            where=where,
        )
    if kind not in _KINDS_BY_FORMAT[replay_format]:
        raise InvalidArgumentError(
            f"a {kind} record is not part of the {replay_format.value} format", where=where
        )
    return _Record(kind, where, row)


def _of_model(record: _Record, model: str) -> bool:
    if not model:
        return True
    names = {record.data.get(field) for field in ("model", "model_id", "generator")}
    return model in names


def _text(record: _Record, field: str) -> str:
    value = record.data.get(field)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{field} must be a string", where=record.where)
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("answer"), str):
        return str(value["answer"])  # Arena-Hard keeps {"answer": ..., "reasoning": ...}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise InvalidArgumentError("message content must be text or {'answer': text}", where=where)


def _conversation(record: _Record) -> tuple[list[str], list[str]]:
    user_turns: list[str] = []
    answers: list[str] = []
    for number, message in enumerate(record.data["messages"]):
        where = f"{record.where} messages[{number}]"
        if not isinstance(message, dict):
            raise InvalidArgumentError("a message must be an object", where=where)
        role = message.get("role")
        if role == "user":
            user_turns.append(_content(message.get("content"), where))
        elif role == "assistant":
            answers.append(_content(message.get("content"), where))
    return user_turns, answers


def _choice_turns(record: _Record) -> list[str]:
    choices = record.data["choices"]
    if (
        not choices
        or not isinstance(choices[0], dict)
        or not isinstance(choices[0].get("turns"), list)
    ):
        raise InvalidArgumentError("choices[0].turns must be a list", where=record.where)
    return [_content(turn, record.where) for turn in choices[0]["turns"]]


def _question(record: _Record) -> tuple[str, list[str]]:
    data = record.data
    if "prompt" in data and "uid" in data and "turns" not in data:
        return str(data["uid"]), [str(data["prompt"])]
    turns = [_content(turn, record.where) for turn in data["turns"]]
    return str(data.get("question_id", data.get("uid"))), turns
