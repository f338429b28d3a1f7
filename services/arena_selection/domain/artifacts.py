"""Datasets as files: JSONL and Parquet copies of the same rows, and a manifest.

The manifest holds the kind, counts, each file's SHA-256, parents, parameters and statistics;
its content hash is the dataset id (``dataset_id``), so a dataset is immutable: different
content is a different id, and publishing the same content again yields the same id. Version
and creation time are assigned by the store and kept out of the hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from arena_core.errors import InvalidArgumentError
from arena_core.hashing import content_hash
from arena_selection.domain.records import Record, read_jsonl

MANIFEST = "manifest.json"
DATA_JSONL = "data.jsonl"
DATA_PARQUET = "data.parquet"
LINEAGE = "lineage.jsonl"
PROMPTS_JSONL = "prompts.jsonl"
REPORT = "report.json"
MEDIA_TYPES = {
    ".jsonl": "application/x-ndjson",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
}
SCHEMA = "arena.selection.dataset.v1"


class DatasetKind(StrEnum):
    POOL = "pool"
    SPLIT = "split"
    TEST_SET = "test_set"
    SFT = "sft"
    PREFERENCE = "preference"
    PROMPTS = "prompts"


@dataclass
class RenderedDataset:
    """What a store persists: named files (bytes) and the manifest that describes them."""

    name: str
    kind: DatasetKind
    files: dict[str, bytes]
    manifest: dict[str, Any]
    record_count: int

    @property
    def dataset_id(self) -> str:
        return str(self.manifest["dataset_id"])


def _message_type() -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _schema(kind: DatasetKind) -> Any:
    import pyarrow as pa

    messages = _message_type()
    if kind == DatasetKind.SFT:
        return pa.schema([("messages", messages)])
    if kind == DatasetKind.PREFERENCE:
        return pa.schema([("prompt", messages), ("chosen", messages), ("rejected", messages)])
    if kind == DatasetKind.PROMPTS:
        return pa.schema([("prompt", messages)])
    return pa.schema(
        [
            ("id", pa.string()),
            ("messages", messages),
            ("source", pa.string()),
            ("category", pa.string()),
            ("meta", pa.string()),  # JSON text: its keys differ from record to record
        ]
    )


def parquet_bytes(rows: Sequence[dict[str, Any]], kind: DatasetKind) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = _schema(kind)
    if kind in (DatasetKind.POOL, DatasetKind.SPLIT, DatasetKind.TEST_SET):
        rows = [
            {
                "id": row["id"],
                "messages": row["messages"],
                "source": row["source"],
                "category": row.get("category"),
                "meta": json.dumps(row.get("meta") or {}, sort_keys=True, ensure_ascii=False),
            }
            for row in rows
        ]
    table = pa.Table.from_pylist(list(rows), schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def jsonl_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def render_dataset(
    name: str,
    kind: DatasetKind,
    rows: Sequence[dict[str, Any]],
    *,
    parents: Sequence[str] = (),
    params: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    labels: dict[str, Any] | None = None,
) -> RenderedDataset:
    if not name.strip():
        raise InvalidArgumentError("a dataset needs a name", where="output_name")
    files = {DATA_JSONL: jsonl_bytes(rows), DATA_PARQUET: parquet_bytes(rows, kind)}
    files.update(extra_files or {})
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": name,
        "kind": kind.value,
        "record_count": len(rows),
        # Hash of the rows themselves: equal content, equal hash, whatever the file encoding.
        "content_hash": content_hash("rows", list(rows)),
        "files": [
            {
                "name": file_name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
                "media_type": MEDIA_TYPES.get(Path(file_name).suffix, "application/octet-stream"),
            }
            for file_name, data in sorted(files.items())
        ],
        "parents": list(parents),
        "params": params or {},
        "stats": stats or {},
        "labels": labels or {},
    }
    manifest["dataset_id"] = content_hash(SCHEMA, {k: v for k, v in manifest.items()})
    return RenderedDataset(name, kind, files, manifest, len(rows))


def records_dataset(
    name: str,
    kind: DatasetKind,
    records: Sequence[Record],
    **options: Any,
) -> RenderedDataset:
    return render_dataset(name, kind, [record.to_dict() for record in records], **options)


def write_files(directory: Path, dataset: RenderedDataset, manifest_name: str = MANIFEST) -> None:
    """Writes every file, each through a temporary file and a rename: no half-written dataset."""
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, data in [
        *dataset.files.items(),
        (manifest_name, json.dumps(dataset.manifest, indent=2, ensure_ascii=False).encode()),
    ]:
        atomic_write(directory / file_name, data)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_records(path: Path) -> list[Record]:
    """Canonical records from a pool JSONL file, or a dataset folder's data.jsonl."""
    if path.is_dir():
        path = path / DATA_JSONL
    if not path.exists():
        raise InvalidArgumentError("no such file", where=str(path))
    records = read_jsonl(path.read_bytes(), str(path))
    if not records:
        raise InvalidArgumentError("the pool is empty", where=str(path))
    return records


@dataclass
class DatasetOnDisk:
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a dataset folder, or of a file written with a `<file>.manifest.json`."""
    candidates = (
        [path / MANIFEST] if path.is_dir() else [path.with_name(path.name + ".manifest.json")]
    )
    for candidate in candidates:
        if candidate.exists():
            loaded: dict[str, Any] = json.loads(candidate.read_text())
            return loaded
    raise InvalidArgumentError("has no manifest (not written by `arena data`?)", where=str(path))
