"""Training datasets in the selection service's published format, with a learnable signal.

Each dataset is written as JSON Lines and Parquet copies of the same records (plus lineage
columns the trainers must ignore), with a `DatasetRef` naming both files, their SHA-256 and the
kind — what the selection service publishes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from arena.common.v1 import common_pb2

KINDS = {
    "sft": common_pb2.DATASET_KIND_SFT,
    "preference": common_pb2.DATASET_KIND_PREFERENCE,
    "prompts": common_pb2.DATASET_KIND_PROMPTS,
    "pool": common_pb2.DATASET_KIND_POOL,
}

TOPICS = ["the sea", "music", "numbers", "the sky", "cats", "bread", "rivers", "trains"]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_records(indices: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ],
            "id": f"sft-{i}",
            "battle_id": f"battle-{i}",
        }
        for i in indices
    ]


def chosen_text(i: int) -> str:
    return f"Sure! Here is a clear answer about {TOPICS[i % len(TOPICS)]}, number {i}."


def rejected_text(i: int) -> str:
    return "no " * (3 + i % 3)


def preference_records(indices: Sequence[int]) -> list[dict[str, Any]]:
    """Chosen answers are polite and on topic, rejected ones repeat 'no': easy to rank."""
    return [
        {
            "prompt": user(f"Tell me about {TOPICS[i % len(TOPICS)]}, please ({i})."),
            "chosen": assistant(chosen_text(i)),
            "rejected": assistant(rejected_text(i)),
            "id": f"pair-{i}",
            "judgment_id": f"judgment-{i}",
        }
        for i in indices
    ]


def prompt_records(indices: Sequence[int]) -> list[dict[str, Any]]:
    return [
        {"prompt": user(f"Tell me about {TOPICS[i % len(TOPICS)]} ({i})."), "id": f"p-{i}"}
        for i in indices
    ]


def _artifact(path: Path, media_type: str) -> common_pb2.ArtifactRef:
    data = path.read_bytes()
    return common_pb2.ArtifactRef(
        uri=path.resolve().as_uri(),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        media_type=media_type,
    )


def write_dataset(
    folder: Path, name: str, kind: str, records: Sequence[dict[str, Any]], *, parquet: bool = True
) -> common_pb2.DatasetRef:
    """Writes a dataset as the selection service publishes one — `<name>/data.jsonl`,
    `data.parquet` and `lineage.jsonl` (records stripped of their lineage ids) — and returns its
    reference listing every file."""
    directory = folder / name
    directory.mkdir(parents=True, exist_ok=True)
    lineage_keys = ("id", "battle_id", "judgment_id")
    rows = [{k: v for k, v in r.items() if k not in lineage_keys} for r in records]
    lineage = [{k: v for k, v in r.items() if k in lineage_keys} for r in records]
    jsonl = directory / "data.jsonl"
    jsonl.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    files = [_artifact(jsonl, "application/x-ndjson")]
    if parquet:
        parquet_path = directory / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), parquet_path)
        files.append(_artifact(parquet_path, "application/vnd.apache.parquet"))
    lineage_path = directory / "lineage.jsonl"
    lineage_path.write_bytes(b"".join(orjson.dumps(entry) + b"\n" for entry in lineage))
    files.append(_artifact(lineage_path, "application/x-ndjson"))
    digest = hashlib.sha256(b"".join(f.sha256.encode() for f in files)).hexdigest()
    return common_pb2.DatasetRef(
        dataset_id=f"ds-{digest[:16]}",
        name=name,
        version=1,
        kind=KINDS[kind],
        record_count=len(records),
        files=files,
    )
