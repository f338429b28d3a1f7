"""Pool ingestion: JSONL, JSON, Parquet and Hugging Face `datasets` folders in the common
instruction formats, turned into canonical records.

Every problem names its place (``file:line`` for JSONL, ``file:item N`` for a JSON array,
``file:row N`` for Parquet and datasets folders). Ingestion is all or nothing: every source is
parsed before anything is returned, so a bad line anywhere leaves no partial pool behind.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from arena_core.errors import InvalidArgumentError
from arena_selection.domain.records import (
    Message,
    Record,
    make_record,
    parse_messages,
    record_from_dict,
)


class SourceFormat(StrEnum):
    AUTO = "auto"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"
    MESSAGES = "messages"
    FASTCHAT_QUESTIONS = "fastchat_questions"
    ARENA_HARD_QUESTIONS = "arena_hard_questions"
    ALPACA_EVAL = "alpaca_eval"
    CANONICAL = "canonical"


FORMAT_NAMES = ", ".join(format_.value for format_ in SourceFormat)


@dataclass(frozen=True)
class IngestSource:
    path: Path
    format: SourceFormat = SourceFormat.AUTO
    # Recorded as each record's `source`; defaults to a name derived from the path.
    source_name: str = ""
    # Given to records that carry no category of their own.
    default_category: str = ""


@dataclass(frozen=True)
class SourceSummary:
    path: str
    format: SourceFormat
    source: str
    records: int


@dataclass(frozen=True)
class IngestResult:
    records: list[Record]
    sources: list[SourceSummary]
    # Records dropped because an identical conversation (same id) was already ingested.
    duplicates: int


Progress = Callable[[int, int | None], None]

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
}


def parse_format(name: str) -> SourceFormat:
    try:
        return SourceFormat(name.strip().lower().replace("-", "_"))
    except ValueError:
        raise InvalidArgumentError(
            f"unknown format {name!r}; expected one of {FORMAT_NAMES}", where="format"
        ) from None


def ingest(sources: Sequence[IngestSource], progress: Progress | None = None) -> IngestResult:
    """Parses every source into canonical records, de-duplicated by id, in source order."""
    if not sources:
        raise InvalidArgumentError("no input files given", where="sources")
    records: list[Record] = []
    summaries = []
    seen: set[str] = set()
    duplicates = 0
    for index, source in enumerate(sources):
        parsed, format_ = read_source(source)
        if not parsed:
            raise InvalidArgumentError("holds no records", where=str(source.path))
        for record in parsed:
            if record.id in seen:
                duplicates += 1
                continue
            seen.add(record.id)
            records.append(record)
        summaries.append(SourceSummary(str(source.path), format_, source_name(source), len(parsed)))
        if progress:
            progress(index + 1, len(sources))
    return IngestResult(records, summaries, duplicates)


def read_source(source: IngestSource) -> tuple[list[Record], SourceFormat]:
    path = source.path
    if not path.exists():
        raise InvalidArgumentError("no such file or folder", where=str(path))
    items = list(_items(path))
    if not items:
        return [], source.format
    format_ = source.format
    if format_ == SourceFormat.AUTO:
        where, first = items[0]
        format_ = detect_format(first, where)
    parse = _PARSERS[format_]
    name = source_name(source)
    records = []
    for where, item in items:
        if not isinstance(item, dict):
            raise InvalidArgumentError("expected a JSON object", where=where)
        records.append(parse(item, where, name, source.default_category or None))
    return records, format_


def detect_format(item: Any, where: str) -> SourceFormat:
    """The format of a file, from the keys of its first record."""
    keys = set(item) if isinstance(item, dict) else set()
    if {"id", "messages", "source"} <= keys:
        return SourceFormat.CANONICAL
    if "conversations" in keys:
        return SourceFormat.SHAREGPT
    if "messages" in keys or "conversation" in keys:
        return SourceFormat.MESSAGES
    if "turns" in keys and "question_id" in keys and "uid" not in keys:
        # Arena-Hard's first release used FastChat's layout but always carried a cluster.
        return (
            SourceFormat.ARENA_HARD_QUESTIONS
            if "cluster" in keys
            else (SourceFormat.FASTCHAT_QUESTIONS)
        )
    if "question_id" in keys and "text" in keys:
        return SourceFormat.FASTCHAT_QUESTIONS
    if "prompt" in keys and ("uid" in keys or "question_id" in keys):
        return SourceFormat.ARENA_HARD_QUESTIONS
    if "instruction" in keys and "generator" in keys:
        return SourceFormat.ALPACA_EVAL
    if "instruction" in keys:
        return SourceFormat.ALPACA
    raise InvalidArgumentError(
        f"unknown format (keys: {', '.join(sorted(keys)) or 'none'}); expected one of "
        f"{FORMAT_NAMES}, or pass the format explicitly",
        where=where,
    )


# --- files ---------------------------------------------------------------------------------


def _items(path: Path) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        yield from _dataset_folder_items(path)
        return
    name = path.name.lower()
    if name.endswith(".parquet"):
        yield from _parquet_items(path)
        return
    data = path.read_bytes()
    if name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except OSError as error:
            raise InvalidArgumentError(f"not gzip data: {error}", where=str(path)) from None
    if name.endswith((".json", ".json.gz")) and data.lstrip()[:1] in (b"[", b"{"):
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            document = None  # perhaps JSONL under a .json name; read it as lines below
        if isinstance(document, list):
            for index, item in enumerate(document):
                yield f"{path}:item {index}", item
            return
        if isinstance(document, dict):
            yield f"{path}:item 0", document
            return
    yield from _jsonl_items(path, data)


def _jsonl_items(path: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    # Split on b"\n" only: U+2028/U+2029 inside strings are not line ends (Arena-Hard v2.0).
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise InvalidArgumentError(f"malformed JSON line: {error}", where=where) from None


def _parquet_items(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        raise InvalidArgumentError(f"unreadable Parquet file: {error}", where=str(path)) from None
    for index, row in enumerate(table.to_pylist()):
        yield f"{path}:row {index}", _decode_json_columns(row)


def _dataset_folder_items(path: Path) -> Iterator[tuple[str, Any]]:
    """A folder written by `datasets.save_to_disk` (one dataset or a DatasetDict), or a folder of
    Parquet / JSONL files."""
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as error:  # noqa: BLE001 - datasets raises many types for a damaged folder
            raise InvalidArgumentError(
                f"unreadable datasets folder: {error}", where=str(path)
            ) from None
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
        for split, dataset in splits:
            label = f"{path}[{split}]" if split else str(path)
            for index, row in enumerate(dataset):
                yield f"{label}:row {index}", _decode_json_columns(dict(row))
        return
    files = sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and file.name.lower().endswith((".parquet", ".jsonl", ".json"))
    )
    if not files:
        raise InvalidArgumentError(
            "folder holds no datasets save (state.json) and no .parquet/.jsonl/.json files",
            where=str(path),
        )
    for file in files:
        yield from _items(file)


def _decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    # Our own Parquet copies store `meta` as JSON text (its keys differ from row to row).
    if isinstance(row.get("meta"), str):
        with contextlib.suppress(ValueError):
            row["meta"] = json.loads(row["meta"])
    return row


def source_name(source: IngestSource) -> str:
    """The `source` label: given, or from the file name (its folder for generic names)."""
    if source.source_name:
        return source.source_name
    path = source.path
    stem = path.name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        stem = stem.removesuffix(suffix)
    # `question.jsonl` says little; its folder (e.g. arena-hard-v0.1, mt_bench) says more.
    if stem in {"question", "questions", "model_outputs", "data", "train", "test"}:
        return path.parent.name or stem
    return stem


# --- formats -------------------------------------------------------------------------------


def _text(item: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidArgumentError(f"`{key}` must be a non-empty string", where=where)
    return value


# The known answer of a verifiable instruction, kept in any format so a reference judge can score
# answers against it.
REFERENCE_KEY = "reference_answer"


def _meta(item: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {key: item[key] for key in (*keys, REFERENCE_KEY) if item.get(key) not in (None, "")}


def _category(item: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _parse_sharegpt(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise InvalidArgumentError("`conversations` must be a non-empty list", where=where)
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidArgumentError(f"conversations[{index}] is not an object", where=where)
        speaker = str(turn.get("from", turn.get("role", ""))).lower()
        role = _SHAREGPT_ROLES.get(speaker)
        if role is None:
            raise InvalidArgumentError(
                f"conversations[{index}] has unknown speaker {speaker!r}", where=where
            )
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise InvalidArgumentError(f"conversations[{index}] has no text `value`", where=where)
        messages.append(Message(role, value))
    if not any(message.role == "user" for message in messages):
        raise InvalidArgumentError("conversation has no human turn", where=where)
    return make_record(
        messages, source, _category(item, "category") or default, _meta(item, ["id", "model"])
    )


def _parse_alpaca(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    instruction = _text(item, "instruction", where)
    extra = _text(item, "input", where, required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = [Message("user", prompt)]
    output = item.get("output")
    if isinstance(output, str) and output.strip():
        messages.append(Message("assistant", output))
    return make_record(messages, source, _category(item, "category") or default, _meta(item, []))


def _parse_messages(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    value = item.get("messages", item.get("conversation"))
    messages = parse_messages(value, where=f"{where}: messages")
    meta = _meta(item, ["id", "conversation_id", "model", "language"])
    return make_record(messages, source, _category(item, "category") or default, meta)


def _parse_fastchat(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    turns = item.get("turns")
    if turns is None and "text" in item:  # the Vicuna / FastChat v0 layout: one `text` turn
        turns = [_text(item, "text", where)]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise InvalidArgumentError("`turns` must be a non-empty list of strings", where=where)
    # Later turns depend on the answer to earlier ones, so the questions stay user turns in order
    # and the conversation is kept whole.
    messages = [Message("user", turn) for turn in turns]
    return make_record(
        messages, source, _category(item, "category") or default, _meta(item, ["question_id"])
    )


def _parse_arena_hard(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    if "prompt" in item:
        turns = [_text(item, "prompt", where)]
    else:  # v0.1's first layout: turns = [{"content": ...}]
        raw = item.get("turns")
        if not isinstance(raw, list) or not raw:
            raise InvalidArgumentError("needs `prompt` or a non-empty `turns`", where=where)
        turns = []
        for index, turn in enumerate(raw):
            content = turn.get("content") if isinstance(turn, dict) else turn
            if not isinstance(content, str):
                raise InvalidArgumentError(f"turns[{index}] has no `content`", where=where)
            turns.append(content)
    # v0.1 puts the benchmark name in `category` and the topic in `cluster`; v2.0 the topic in
    # `subcategory`.
    category = _category(item, "subcategory", "cluster") or default
    meta = _meta(item, ["uid", "question_id", "category", "cluster", "subcategory"])
    return make_record([Message("user", turn) for turn in turns], source, category, meta)


def _parse_alpaca_eval(
    item: dict[str, Any], where: str, source: str, default: str | None
) -> Record:
    instruction = _text(item, "instruction", where)
    messages = [Message("user", instruction)]
    output = item.get("output")
    if isinstance(output, str) and output.strip():
        messages.append(Message("assistant", output))
    meta = _meta(item, ["generator", "dataset"])
    return make_record(messages, source, _category(item, "category") or default, meta)


def _parse_canonical(item: dict[str, Any], where: str, source: str, default: str | None) -> Record:
    record = record_from_dict(item, where)
    if record.category is None and default:
        return Record(record.id, record.messages, record.source, default, record.meta)
    return record


_PARSERS: dict[SourceFormat, Callable[[dict[str, Any], str, str, str | None], Record]] = {
    SourceFormat.SHAREGPT: _parse_sharegpt,
    SourceFormat.ALPACA: _parse_alpaca,
    SourceFormat.MESSAGES: _parse_messages,
    SourceFormat.FASTCHAT_QUESTIONS: _parse_fastchat,
    SourceFormat.ARENA_HARD_QUESTIONS: _parse_arena_hard,
    SourceFormat.ALPACA_EVAL: _parse_alpaca_eval,
    SourceFormat.CANONICAL: _parse_canonical,
}
