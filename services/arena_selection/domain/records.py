"""The canonical instruction record every pool, split and test set is made of.

``{"id", "messages": [{"role", "content"}, ...], "source", "category"?, "meta"?}`` — the id is a
stable content hash of the messages alone, so the same conversation always has the same id
whatever file, format or source it came from (``source``, ``category`` and ``meta`` are labels).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash

ROLES = ("system", "user", "assistant", "tool")
# Versioned so a change in what the id covers can never collide with old ids.
_ID_NAMESPACE = "arena.selection.conversation.v1"


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Record:
    """One conversation; the last user turn is the instruction models answer."""

    id: str
    messages: tuple[Message, ...]
    source: str
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def user_turns(self) -> list[str]:
        return [message.content for message in self.messages if message.role == "user"]

    @property
    def instruction(self) -> str:
        """All user turns of the conversation, in order: what length, dedup and decontamination
        rules look at (a multi-turn conversation is judged as a whole)."""
        return "\n".join(self.user_turns)

    @property
    def prompt_messages(self) -> list[Message]:
        """The dialogue up to and including the last user turn: what models answer in a battle."""
        last_user = max(
            (index for index, message in enumerate(self.messages) if message.role == "user"),
            default=-1,
        )
        return list(self.messages[: last_user + 1])

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "messages": [message.to_dict() for message in self.messages],
            "source": self.source,
        }
        if self.category is not None:
            entry["category"] = self.category
        if self.meta:
            entry["meta"] = self.meta
        return entry

    def with_meta(self, **extra: Any) -> Record:
        return Record(self.id, self.messages, self.source, self.category, {**self.meta, **extra})


def record_id(messages: Sequence[Message]) -> str:
    return content_hash(_ID_NAMESPACE, [[message.role, message.content] for message in messages])


def make_record(
    messages: Sequence[Message],
    source: str,
    category: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Record:
    return Record(record_id(messages), tuple(messages), source, category or None, dict(meta or {}))


def record_from_dict(entry: Any, where: str) -> Record:
    """A canonical record as written by :func:`Record.to_dict`; the id is checked, not trusted."""
    if not isinstance(entry, dict):
        raise InvalidArgumentError("expected a JSON object", where=where)
    messages = parse_messages(entry.get("messages"), where=f"{where}: messages")
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise InvalidArgumentError("`source` must be a non-empty string", where=where)
    category = entry.get("category")
    if category is not None and not isinstance(category, str):
        raise InvalidArgumentError("`category` must be a string", where=where)
    meta = entry.get("meta") or {}
    if not isinstance(meta, dict):
        raise InvalidArgumentError("`meta` must be an object", where=where)
    record = make_record(messages, source, category, meta)
    if "id" in entry and entry["id"] != record.id:
        raise InvalidArgumentError(
            f"id {entry['id']!r} is not the content hash of the messages ({record.id})",
            where=where,
        )
    return record


def parse_messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise InvalidArgumentError("must be a non-empty list of {role, content}", where=where)
    messages = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidArgumentError(f"item {index} is not an object", where=where)
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(
                f"item {index} has role {role!r}; expected one of {', '.join(ROLES)}", where=where
            )
        if not isinstance(content, str):
            raise InvalidArgumentError(f"item {index} has no string `content`", where=where)
        messages.append(Message(role, content))
    if not any(message.role == "user" for message in messages):
        raise InvalidArgumentError("has no user turn", where=where)
    return messages


def dumps_record(record: Record) -> bytes:
    return orjson.dumps(record.to_dict())


def write_jsonl(records: Iterable[Record]) -> bytes:
    return b"".join(dumps_record(record) + b"\n" for record in records)


def read_jsonl(data: bytes, name: str) -> list[Record]:
    """Canonical records from JSONL bytes; split on b"\\n" only (U+2028 may sit inside text)."""
    records = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InvalidArgumentError(f"invalid JSON: {error}", where=f"{name}:{number}") from None
        records.append(record_from_dict(entry, f"{name}:{number}"))
    return records


def normalize_text(text: str) -> str:
    """Case, width, punctuation and whitespace folded: what 'the same instruction' means."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = [char if char.isalnum() else " " for char in folded]
    return " ".join("".join(kept).split())
