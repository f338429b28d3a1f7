"""The dataset shapes each recipe reads, and the checks that reject a wrong one before a run.

The selection service publishes training data in TRL's formats, as JSON Lines and Parquet copies
of the same records (extra columns such as lineage ids are ignored):

- ``sft`` (SFT): ``{"messages": [{"role", "content"}, ...]}`` with an assistant turn, or
  ``{"prompt": ..., "completion": ...}``;
- ``preference`` (DPO, reward model, RL): ``{"prompt": [...], "chosen": [...], "rejected": [...]}``;
- ``prompts`` (RL): ``{"prompt": [{"role": "user", "content": ...}]}`` or a plain string.

Prompts and answers are conversational (lists of role/content messages) or plain strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from arena_core.errors import InvalidArgumentError

from .recipes import Stage


class DatasetKind(StrEnum):
    UNSPECIFIED = "unspecified"
    POOL = "pool"
    SPLIT = "split"
    TEST_SET = "test_set"
    SFT = "sft"
    PREFERENCE = "preference"
    PROMPTS = "prompts"


class FileFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"


ACCEPTED_KINDS: dict[Stage, tuple[DatasetKind, ...]] = {
    Stage.SFT: (DatasetKind.SFT,),
    Stage.DPO: (DatasetKind.PREFERENCE,),
    Stage.REWARD_MODEL: (DatasetKind.PREFERENCE,),
    # RL rolls out on prompts; preference pairs give their prompts.
    Stage.RL: (DatasetKind.PROMPTS, DatasetKind.PREFERENCE),
}

_SHAPES = {
    DatasetKind.SFT: "`messages` with an assistant turn (or `prompt` + `completion`)",
    DatasetKind.PREFERENCE: "`prompt`, `chosen` and `rejected`",
    DatasetKind.PROMPTS: "`prompt`",
}

_ROLES = frozenset({"system", "user", "assistant", "tool"})

# Records read from the head of each file to check its shape before a run starts.
HEAD_RECORDS = 64


def file_format(path_or_name: str, media_type: str = "") -> FileFormat | None:
    """The format of a data file from its media type or its extension; None if unreadable."""
    media = media_type.lower()
    name = path_or_name.lower()
    if "parquet" in media or name.endswith(".parquet"):
        return FileFormat.PARQUET
    if "ndjson" in media or "jsonl" in media or name.endswith((".jsonl", ".ndjson")):
        return FileFormat.JSONL
    if name.endswith(".json") or media == "application/json":
        return FileFormat.JSONL
    return None


def check_kind(stage: Stage, kind: DatasetKind, *, where: str, name: str = "") -> None:
    """A declared dataset kind must be one the stage trains on."""
    if kind is DatasetKind.UNSPECIFIED:
        return  # decided from the records below
    accepted = ACCEPTED_KINDS[stage]
    if kind not in accepted:
        wanted = " or ".join(f"a {k.value} dataset ({_SHAPES[k]})" for k in accepted)
        label = f"dataset {name!r}" if name else "the dataset"
        raise InvalidArgumentError(
            f"{label} is a {kind.value} dataset, but a {stage.value} run needs {wanted}",
            where=where,
        )


def record_kind(record: Mapping[str, Any]) -> DatasetKind:
    """What a record looks like: SFT, preference, prompts, or a canonical pool conversation."""
    if "chosen" in record and "rejected" in record:
        return DatasetKind.PREFERENCE
    if "messages" in record and "id" in record and "source" in record:
        return DatasetKind.POOL  # arena.common.v1.Conversation, not training data
    if "messages" in record or ("prompt" in record and "completion" in record):
        return DatasetKind.SFT
    if "prompt" in record:
        return DatasetKind.PROMPTS
    return DatasetKind.UNSPECIFIED


def check_records(
    stage: Stage, records: Sequence[Mapping[str, Any]], *, where: str, name: str = ""
) -> None:
    """Every record has the shape `stage` needs; the first one that does not is named."""
    label = f"dataset {name!r}" if name else "the dataset"
    if not records:
        raise InvalidArgumentError(f"{label} has no records", where=where)
    accepted = ACCEPTED_KINDS[stage]
    for index, record in enumerate(records):
        at = f"{where} record {index}"
        if not isinstance(record, Mapping):
            raise InvalidArgumentError(f"{label}: a record is not a JSON object", where=at)
        kind = record_kind(record)
        if kind not in accepted:
            wanted = " or ".join(_SHAPES[k] for k in accepted)
            found = sorted(record)[:8]
            raise InvalidArgumentError(
                f"{label} is in the wrong format for a {stage.value} run: records need "
                f"{wanted}; found keys {found}",
                where=at,
            )
        problem = _record_problem(kind, record)
        if problem:
            raise InvalidArgumentError(f"{label}: {problem}", where=at)


def _record_problem(kind: DatasetKind, record: Mapping[str, Any]) -> str | None:
    if kind is DatasetKind.SFT:
        if "messages" in record:
            problem = _messages_problem(record["messages"], "messages")
            if problem:
                return problem
            if not any(m.get("role") == "assistant" for m in record["messages"]):
                return "`messages` has no assistant turn to learn from"
            return None
        return _text_or_messages_problem(record["prompt"], "prompt") or _text_or_messages_problem(
            record["completion"], "completion"
        )
    if kind is DatasetKind.PREFERENCE:
        for key in ("chosen", "rejected"):
            problem = _text_or_messages_problem(record[key], key)
            if problem:
                return problem
        if "prompt" in record:
            return _text_or_messages_problem(record["prompt"], "prompt")
        return None
    if kind is DatasetKind.PROMPTS:
        return _text_or_messages_problem(record["prompt"], "prompt")
    return None


def _text_or_messages_problem(value: Any, key: str) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else f"`{key}` is empty"
    return _messages_problem(value, key)


def _messages_problem(value: Any, key: str) -> str | None:
    if not isinstance(value, list) or not value:
        return f"`{key}` must be a non-empty list of messages or a string"
    for index, message in enumerate(value):
        if not isinstance(message, Mapping):
            return f"`{key}[{index}]` is not a message object"
        if message.get("role") not in _ROLES:
            return f"`{key}[{index}].role` must be one of {sorted(_ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"`{key}[{index}].content` must be a string"
    return None


def read_head(path: Path, fmt: FileFormat, limit: int = HEAD_RECORDS) -> list[dict[str, Any]]:
    """The first `limit` records of a JSONL or Parquet file."""
    if fmt is FileFormat.PARQUET:
        return _parquet_head(path, limit)
    return list(_jsonl_head(path, limit))


def _jsonl_head(path: Path, limit: int) -> Iterator[dict[str, Any]]:
    count = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if count >= limit:
                return
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise InvalidArgumentError(
                    f"not valid JSON: {error}", where=f"{path}:{number}"
                ) from None
            if not isinstance(record, dict):
                raise InvalidArgumentError(
                    "a record is not a JSON object", where=f"{path}:{number}"
                )
            count += 1
            yield record


def _parquet_head(path: Path, limit: int) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for non-Parquet
        raise InvalidArgumentError(
            f"not a readable Parquet file: {error}", where=str(path)
        ) from None
    rows: list[dict[str, Any]] = []
    for batch in parquet.iter_batches(batch_size=limit):
        rows.extend(batch.to_pylist())
        if len(rows) >= limit:
            break
    return rows[:limit]


def prompts_of(records: Iterable[Mapping[str, Any]]) -> Iterator[Any]:
    """The prompt of each record, for RL rollouts over preference or prompt datasets."""
    for record in records:
        if "prompt" in record:
            yield record["prompt"]
