"""`arena data ...`: instruction pools, WizardArena test sets and training data, offline.

Every command runs the selection domain in this process (no services needed) with progress bars
on stderr, writes its outputs atomically, and reports bad input as one clear line naming the
file:line, option or field — with nothing written.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from arena_core.errors import ArenaError, InvalidArgumentError
from arena_selection.domain import artifacts, ingest, training
from arena_selection.domain.artifacts import DatasetKind
from arena_selection.domain.cleaning import CleaningConfig, LengthUnit, clean_pool
from arena_selection.domain.decontamination import (
    DecontaminationConfig,
    DecontaminationMode,
    EvalSet,
)
from arena_selection.domain.embeddings import DEFAULT_MODEL, embedder_for
from arena_selection.domain.minhash import MinHashConfig
from arena_selection.domain.records import Record
from arena_selection.domain.splits import split_pool
from arena_selection.domain.testset import TestSetConfig, build_test_set

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(function: F) -> F:
    """Domain errors become one `Error: <where>: <what>` line and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ArenaError as error:
            raise click.ClickException(str(error)) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int | None], None]]:
    """A callback `(step, done, total)` drawing one bar per step."""
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("ARENA_PROGRESS") != "1",
    ) as progress:

        def update(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        yield update


def _embedding_options(function: F) -> F:
    function = click.option(
        "--max-seq-length",
        type=click.IntRange(8, 8192),
        default=None,
        help="Tokens of each text the embedding model reads (default: the model's).",
    )(function)
    return click.option(
        "--embedding-model",
        default=DEFAULT_MODEL,
        show_default=True,
        help="sentence-transformers model: a name, a local folder, or hash-bow (lexical, fast).",
    )(function)


@click.group("data")
def data() -> None:
    """Instruction pools, WizardArena test sets and training data (no services needed)."""


def register(cli: click.Group) -> None:
    cli.add_command(data)


# --- ingest ----------------------------------------------------------------------------------


@data.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="POOL.jsonl")
@click.option(
    "--format",
    "format_",
    default="auto",
    show_default=True,
    help=f"Input format for every file: {ingest.FORMAT_NAMES}.",
)
@click.option("--source-name", default="", help="Label for `source` (default: from the file).")
@click.option("--category", default="", help="Category for records that carry none.")
@_friendly
def ingest_command(
    files: tuple[Path, ...], out: Path, format_: str, source_name: str, category: str
) -> None:
    """Read instruction files (JSONL, JSON, Parquet, datasets folders) into one canonical pool."""
    source_format = ingest.parse_format(format_)
    sources = [ingest.IngestSource(path, source_format, source_name, category) for path in files]
    with _progress() as progress:
        result = ingest.ingest(sources, lambda done, total: progress("ingest", done, total))
    dataset = artifacts.records_dataset(
        out.stem,
        DatasetKind.POOL,
        result.records,
        params={
            "sources": [
                vars(summary) | {"format": summary.format.value} for summary in result.sources
            ]
        },
        stats={"duplicates_dropped": result.duplicates},
    )
    _write_pool(out, dataset)
    table = Table(title=f"{out} ({len(result.records)} records)")
    for column in ("file", "format", "source", "records"):
        table.add_column(column)
    for summary in result.sources:
        table.add_row(summary.path, summary.format.value, summary.source, str(summary.records))
    console.print(table)
    if result.duplicates:
        console.print(f"{result.duplicates} identical conversations kept once")


def _write_pool(out: Path, dataset: artifacts.RenderedDataset) -> None:
    artifacts.atomic_write(out, dataset.files[artifacts.DATA_JSONL])
    artifacts.atomic_write(
        out.with_name(out.name + ".manifest.json"),
        json.dumps(dataset.manifest, indent=2, ensure_ascii=False).encode(),
    )


# --- clean -----------------------------------------------------------------------------------


@data.command("clean")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="CLEAN.jsonl")
@click.option("--report", required=True, type=click.Path(path_type=Path), help="REPORT.json")
@click.option(
    "--decontaminate",
    "eval_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Evaluation set to protect (any input format); repeat for each.",
)
@click.option(
    "--minhash-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.7,
    show_default=True,
)
@click.option("--num-perm", type=click.IntRange(2, 4096), default=128, show_default=True)
@click.option("--shingle-size", type=click.IntRange(1, 32), default=3, show_default=True)
@click.option("--no-minhash", is_flag=True, help="Skip near-duplicate removal.")
@click.option(
    "--top-k",
    type=click.IntRange(1, 1000),
    default=None,
    help="The paper's rule: drop the K nearest pool neighbours of every eval prompt.",
)
@click.option(
    "--similarity-threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Cosine similarity marking a copy (default: calibrated for the model).",
)
@click.option(
    "--ngram-size",
    type=click.IntRange(0, 64),
    default=13,
    show_default=True,
    help="Shared word n-gram marking a copy; 0 disables.",
)
@click.option("--min-length", type=click.IntRange(0), default=3, show_default=True)
@click.option("--prefix-length", type=click.IntRange(0), default=10, show_default=True)
@click.option(
    "--length-unit",
    type=click.Choice([unit.value for unit in LengthUnit]),
    default="words",
    show_default=True,
)
@click.option("--keep-non-english", is_flag=True, help="Skip the English-only filter.")
@_embedding_options
@_friendly
def clean_command(
    pool: Path,
    out: Path,
    report: Path,
    eval_files: tuple[Path, ...],
    minhash_threshold: float,
    num_perm: int,
    shingle_size: int,
    no_minhash: bool,
    top_k: int | None,
    similarity_threshold: float | None,
    ngram_size: int,
    min_length: int,
    prefix_length: int,
    length_unit: str,
    keep_non_english: bool,
    embedding_model: str,
    max_seq_length: int | None,
) -> None:
    """Filter, deduplicate and decontaminate a pool; the report lists removals per reason."""
    records = artifacts.load_records(pool)
    eval_sets = [_eval_set(path) for path in eval_files]
    config = CleaningConfig(
        min_instruction_length=min_length,
        length_unit=LengthUnit(length_unit),
        english_only=not keep_non_english,
        prefix_dedup_length=prefix_length,
        minhash=None if no_minhash else MinHashConfig(minhash_threshold, num_perm, shingle_size),
        decontamination=DecontaminationConfig(
            mode=DecontaminationMode.TOP_K if top_k else DecontaminationMode.THRESHOLD,
            top_k=top_k or 5,
            similarity_threshold=similarity_threshold,
            ngram_size=ngram_size or None,
            embedding_model=embedding_model,
        ),
    )
    embedder = embedder_for(embedding_model, max_seq_length=max_seq_length) if eval_sets else None
    with _progress() as progress:
        kept, clean_report = clean_pool(
            records, config, eval_sets=eval_sets, embedder=embedder, progress=progress
        )
    dataset = artifacts.records_dataset(
        out.stem,
        DatasetKind.POOL,
        kept,
        parents=[_dataset_id(pool)],
        params=clean_report.config,
        stats={"removed": clean_report.removed_by_reason(), "input": len(records)},
    )
    _write_pool(out, dataset)
    artifacts.atomic_write(report, json.dumps(clean_report.to_dict(), indent=2).encode())
    table = Table(title=f"{pool} -> {out}: {len(records)} in, {len(kept)} kept")
    for column in ("step", "removed"):
        table.add_column(column)
    for reason, count in clean_report.removed_by_reason().items():
        table.add_row(reason, str(count))
    console.print(table)


def _eval_set(path: Path) -> EvalSet:
    records, _ = ingest.read_source(ingest.IngestSource(path))
    if not records:
        raise InvalidArgumentError("the evaluation set is empty", where=str(path))
    return EvalSet(ingest.source_name(ingest.IngestSource(path)), records)


def _dataset_id(path: Path) -> str:
    try:
        return str(artifacts.read_manifest(path).get("dataset_id", str(path)))
    except InvalidArgumentError:
        return str(path)


# --- split -----------------------------------------------------------------------------------


@data.command("split")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--slices", "num_slices", type=int, required=True, help="N equal slices D1..DN.")
@click.option("--initial-size", type=int, default=None, help="Size of a separate D0.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out-dir", required=True, type=click.Path(path_type=Path))
@_friendly
def split_command(
    pool: Path, num_slices: int, initial_size: int | None, seed: int, out_dir: Path
) -> None:
    """Split a pool into seeded slices D0..DN, each a dataset folder with its manifest."""
    records = artifacts.load_records(pool)
    slices = split_pool(records, num_slices, seed=seed, initial_slice_size=initial_size)
    parent = _dataset_id(pool)
    summary = []
    for part in slices:
        dataset = artifacts.records_dataset(
            part.name,
            DatasetKind.SPLIT,
            part.records,
            parents=[parent],
            params={
                "seed": seed,
                "num_slices": num_slices,
                "initial_slice_size": initial_size,
                "slice_index": part.index,
            },
        )
        artifacts.write_files(out_dir / part.name, dataset)
        summary.append(
            {"slice": part.name, "records": len(part.records), "dataset_id": dataset.dataset_id}
        )
    artifacts.atomic_write(out_dir / "splits.json", json.dumps(summary, indent=2).encode())
    table = Table(title=f"{pool}: {len(records)} records, seed {seed}")
    for column in ("slice", "records", "dataset id"):
        table.add_column(column)
    for row in summary:
        table.add_row(str(row["slice"]), str(row["records"]), str(row["dataset_id"])[:16])
    console.print(table)


# --- testset ---------------------------------------------------------------------------------


@data.command("testset")
@click.argument("pool", type=click.Path(path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(path_type=Path))
@click.option("--clusters", type=int, default=500, show_default=True)
@click.option("--diverse-per-cluster", type=int, default=2, show_default=True)
@click.option(
    "--hard-candidates",
    type=int,
    default=20,
    show_default=True,
    help="Candidates per cluster rated for difficulty.",
)
@click.option("--hard-size", type=int, default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--difficulty-scores",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL of {id, difficulty} ratings (0-10) for the candidates.",
)
@click.option(
    "--judge",
    "judge_target",
    default=None,
    help="Judge service HOST:PORT to rate difficulty with its Grade RPC.",
)
@click.option("--judge-name", default="difficulty", show_default=True)
@click.option("--judge-model", default="", help="Model the difficulty judge runs.")
@_embedding_options
@_friendly
def testset_command(
    pool: Path,
    out_dir: Path,
    clusters: int,
    diverse_per_cluster: int,
    hard_candidates: int,
    hard_size: int,
    seed: int,
    difficulty_scores: Path | None,
    judge_target: str | None,
    judge_name: str,
    judge_model: str,
    embedding_model: str,
    max_seq_length: int | None,
) -> None:
    """Build the WizardArena Diverse, Hard and Mix sets from a pool."""
    records = artifacts.load_records(pool)
    rater = None
    if difficulty_scores is not None:
        rater = _scores_rater(difficulty_scores)
    elif judge_target:
        rater = _judge_rater(judge_target, judge_name, judge_model)
    config = TestSetConfig(clusters, diverse_per_cluster, hard_candidates, hard_size, seed)
    embedder = embedder_for(embedding_model, max_seq_length=max_seq_length)
    with _progress() as progress:
        result = build_test_set(records, embedder, config, rater, progress)
    parent = _dataset_id(pool)
    for variant, subset in (
        ("diverse", result.diverse),
        ("hard", result.hard),
        ("mix", result.mix),
    ):
        dataset = artifacts.records_dataset(
            variant,
            DatasetKind.TEST_SET,
            subset,
            parents=[parent],
            params={
                "variant": variant,
                **{k: v for k, v in result.report.items() if k != "difficulty"},
            },
        )
        artifacts.write_files(out_dir / variant, dataset)
    artifacts.atomic_write(out_dir / "report.json", json.dumps(result.report, indent=2).encode())
    console.print(
        f"diverse {len(result.diverse)}, hard {len(result.hard)}, mix {len(result.mix)} "
        f"from {len(records)} records in {clusters} clusters -> {out_dir}"
    )


def _scores_rater(path: Path) -> Callable[[Sequence[Record]], list[float]]:
    scores: dict[str, float] = {}
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            scores[str(entry["id"])] = float(entry["difficulty"])
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidArgumentError(
                f"expected {{id, difficulty}}: {error}", where=f"{path}:{number}"
            ) from None

    def rate(records: Sequence[Record]) -> list[float]:
        missing = [record.id for record in records if record.id not in scores]
        if missing:
            raise InvalidArgumentError(
                f"no difficulty for {len(missing)} candidates, e.g. {missing[0]}", where=str(path)
            )
        return [scores[record.id] for record in records]

    return rate


def _judge_rater(
    target: str, judge_name: str, judge_model: str
) -> Callable[[Sequence[Record]], list[float]]:
    import grpc

    from arena.common.v1 import common_pb2
    from arena.judge.v1 import judge_service_pb2, judge_service_pb2_grpc

    spec = common_pb2.JudgeSpec(
        name=judge_name,
        version="1",
        protocol=common_pb2.JUDGE_PROTOCOL_DIFFICULTY,
        model=common_pb2.ModelRef(name=judge_model),
    )

    def rate(records: Sequence[Record]) -> list[float]:
        scores = []
        with grpc.insecure_channel(target) as channel:
            stub = judge_service_pb2_grpc.JudgeServiceStub(channel)
            for record in records:
                item = judge_service_pb2.JudgeItem(
                    prompt_id=record.id, category=record.category or ""
                )
                for message in record.prompt_messages:
                    item.prompt.add(role=_ROLE[message.role], content=message.content)
                try:
                    response = stub.Grade(judge_service_pb2.GradeRequest(judge=spec, item=item))
                except grpc.RpcError as error:
                    raise InvalidArgumentError(
                        f"difficulty judge at {target} failed: {error.details()}", where="--judge"
                    ) from None
                scores.append(response.judgment.score_a)
        return scores

    return rate


_ROLE = {"system": 1, "user": 2, "assistant": 3, "tool": 4}


# --- select ----------------------------------------------------------------------------------


@data.command("select")
@click.argument("round_file", type=click.Path(path_type=Path))
@click.option(
    "--stage", type=click.Choice([stage.value for stage in training.Stage]), required=True
)
@click.option("--threshold", "-k", type=float, required=True, help="Score gap K (0-9).")
@click.option("--target", required=True, help="Model label of the target.")
@click.option(
    "--pairing",
    type=click.Choice([p.value for p in training.Pairing]),
    default="best_worst",
    show_default=True,
)
@click.option(
    "--comparison",
    type=click.Choice([c.value for c in training.Comparison]),
    default="at_least",
    show_default=True,
)
@click.option(
    "--accumulate",
    "earlier",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Earlier selection folders of the same stage to union with.",
)
@click.option("--out-dir", required=True, type=click.Path(path_type=Path))
@_friendly
def select_command(
    round_file: Path,
    stage: str,
    threshold: float,
    target: str,
    pairing: str,
    comparison: str,
    earlier: tuple[Path, ...],
    out_dir: Path,
) -> None:
    """Turn a judged battle round into TRL SFT or preference data with a manifest."""
    if not round_file.exists():
        raise InvalidArgumentError("no such file", where=str(round_file))
    prompts = training.read_judged_round(round_file.read_bytes(), str(round_file))
    config = training.SelectionConfig(
        training.Stage(stage),
        threshold,
        target,
        training.Comparison(comparison),
        training.Pairing(pairing),
    )
    selection = training.select_training_data(prompts, config)
    previous = [_load_selection(path, selection.stage) for path in earlier]
    if previous:
        selection = training.accumulate(
            [(rows, lineage) for rows, lineage, _ in previous], selection
        )
    dataset = training.render_selection(
        out_dir.name,
        selection,
        config,
        parents=[dataset_id for *_, dataset_id in previous],
        source=str(round_file),
    )
    artifacts.write_files(out_dir, dataset)
    table = Table(title=f"{stage} data, K={threshold}: {dataset.record_count} examples")
    for column in ("model", "chosen", "rejected"):
        table.add_column(column)
    for model, share in selection.model_shares().items():
        table.add_row(model, str(share["chosen"]), str(share["rejected"]))
    console.print(table)


def _load_selection(
    path: Path, stage: training.Stage
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    manifest = artifacts.read_manifest(path)
    if manifest.get("params", {}).get("stage") != stage.value:
        raise InvalidArgumentError(
            f"holds {manifest.get('params', {}).get('stage')!r} data, not {stage.value!r}",
            where=str(path),
        )
    rows = [
        json.loads(line) for line in (path / artifacts.DATA_JSONL).read_text().split("\n") if line
    ]
    lineage = [
        json.loads(line) for line in (path / artifacts.LINEAGE).read_text().split("\n") if line
    ]
    return rows, lineage, str(manifest["dataset_id"])


# --- describe --------------------------------------------------------------------------------


@data.command("describe")
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--service", default=None, help="Selection service HOST:PORT to ask instead.")
@click.option("--dataset-id", default=None, help="Dataset id to describe (with --service).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@_friendly
def describe_command(
    target: Path | None, service: str | None, dataset_id: str | None, as_json: bool
) -> None:
    """Show a dataset's manifest: kind, counts, files, parents and statistics."""
    if service:
        manifest = _remote_manifest(service, dataset_id or (str(target) if target else ""))
    elif target is not None:
        if not target.exists():
            raise InvalidArgumentError("no such file or folder", where=str(target))
        manifest = artifacts.read_manifest(target)
    else:
        raise click.UsageError("give a dataset folder or file, or --service with --dataset-id")
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    table = Table(title=f"{manifest.get('name')} ({manifest.get('kind')})", show_header=False)
    for key in ("dataset_id", "record_count", "content_hash", "parents"):
        table.add_row(key, str(manifest.get(key)))
    for file in manifest.get("files", []):
        table.add_row(
            f"file {file['name']}", f"{file['size_bytes']} bytes sha256 {file['sha256'][:16]}"
        )
    for key, value in (manifest.get("stats") or {}).items():
        table.add_row(f"stats.{key}", json.dumps(value)[:200])
    Console().print(table)


def _remote_manifest(service: str, dataset_id: str) -> dict[str, Any]:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from arena.selection.v1 import selection_service_pb2, selection_service_pb2_grpc

    if not dataset_id:
        raise InvalidArgumentError("give the dataset id", where="--dataset-id")
    with grpc.insecure_channel(service) as channel:
        stub = selection_service_pb2_grpc.SelectionServiceStub(channel)
        try:
            response = stub.GetDataset(
                selection_service_pb2.GetDatasetRequest(dataset_id=dataset_id), timeout=30
            )
        except grpc.RpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None
    return MessageToDict(response.dataset)
