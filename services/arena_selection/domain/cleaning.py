"""Pool cleaning in the paper's order, each step reporting what it removed and why.

1. ``min_length`` — instructions shorter than the minimum (characters, words or tokens);
2. ``prefix_dup`` — exact duplicates of the first N units of the normalised instruction;
3. ``near_dup`` — MinHash-LSH near-duplicates of an earlier record;
4. ``contamination`` — overlap with an evaluation set (see `decontamination`);
5. ``language`` — non-English instructions.

(The paper's first step, removing toxic conversations, names no classifier and is not done.)
The unit of the paper's "length 10" and "prefix 10" is not stated; here both rules share one
unit, words by default, with a minimum of 3 words (10 words would drop a third of AlpacaEval's
real questions such as "How do I build a PC?") and a prefix of 10 words.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from arena_core.errors import InvalidArgumentError
from arena_selection.domain.decontamination import (
    DecontaminationConfig,
    EvalSet,
    find_contamination,
)
from arena_selection.domain.embeddings import Embedder
from arena_selection.domain.language import LanguageFilter
from arena_selection.domain.minhash import MinHashConfig, near_duplicates
from arena_selection.domain.records import Record, normalize_text

_TOKEN = re.compile(r"\w+|[^\w\s]")


class LengthUnit(StrEnum):
    CHARACTERS = "characters"
    WORDS = "words"
    # Words and punctuation marks, a tokenizer-free stand-in for model tokens.
    TOKENS = "tokens"


def measure(text: str, unit: LengthUnit) -> int:
    if unit == LengthUnit.CHARACTERS:
        return len(text.strip())
    if unit == LengthUnit.WORDS:
        return len(text.split())
    return len(_TOKEN.findall(text))


def prefix(text: str, length: int, unit: LengthUnit) -> str:
    normalized = normalize_text(text)
    if unit == LengthUnit.CHARACTERS:
        return normalized[:length]
    if unit == LengthUnit.WORDS:
        return " ".join(normalized.split()[:length])
    return " ".join(_TOKEN.findall(normalized)[:length])


@dataclass(frozen=True)
class CleaningConfig:
    min_instruction_length: int = 3
    length_unit: LengthUnit = LengthUnit.WORDS
    english_only: bool = True
    # 0 disables prefix dedup.
    prefix_dedup_length: int = 10
    # None disables near-dup removal.
    minhash: MinHashConfig | None = field(default_factory=MinHashConfig)
    # None (or no evaluation sets) disables decontamination.
    decontamination: DecontaminationConfig | None = field(default_factory=DecontaminationConfig)

    def validate(self) -> None:
        if not 0 <= self.min_instruction_length <= 100_000:
            raise InvalidArgumentError(
                f"must be in [0, 100000], got {self.min_instruction_length}",
                where="min_instruction_length",
            )
        if not 0 <= self.prefix_dedup_length <= 100_000:
            raise InvalidArgumentError(
                f"must be in [0, 100000], got {self.prefix_dedup_length}",
                where="prefix_dedup_length",
            )
        if self.minhash is not None:
            self.minhash.validate()
        if self.decontamination is not None:
            self.decontamination.validate()

    def describe(self) -> dict[str, Any]:
        return {
            "min_instruction_length": self.min_instruction_length,
            "length_unit": self.length_unit.value,
            "english_only": self.english_only,
            "prefix_dedup_length": self.prefix_dedup_length,
            "minhash": None
            if self.minhash is None
            else {
                "threshold": self.minhash.threshold,
                "num_perm": self.minhash.num_perm,
                "shingle_size": self.minhash.shingle_size,
                "bands_rows": list(self.minhash.banding()),
            },
            "decontamination": None
            if self.decontamination is None
            else {
                "mode": self.decontamination.mode.value,
                "top_k": self.decontamination.top_k,
                "similarity_threshold": self.decontamination.similarity_threshold,
                "ngram_size": self.decontamination.ngram_size,
                "embedding_model": self.decontamination.embedding_model,
            },
        }


@dataclass(frozen=True)
class Removal:
    id: str
    detail: dict[str, Any]


@dataclass
class StepReport:
    reason: str
    input: int
    removed: list[Removal]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "input": self.input,
            "removed_count": len(self.removed),
            "kept": self.input - len(self.removed),
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
            "removed": [{"id": removal.id, **removal.detail} for removal in self.removed],
        }


@dataclass
class CleanReport:
    input_count: int
    output_count: int
    steps: list[StepReport]
    config: dict[str, Any]
    eval_sets: dict[str, int]

    def removed_by_reason(self) -> dict[str, int]:
        return {step.reason: len(step.removed) for step in self.steps}

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input_count,
            "output": self.output_count,
            "removed": self.removed_by_reason(),
            "eval_sets": self.eval_sets,
            "config": self.config,
            "steps": [step.to_dict() for step in self.steps],
        }


# step name, records done, total (None while unknown)
CleanProgress = Callable[[str, int, int | None], None]


def clean_pool(
    records: Sequence[Record],
    config: CleaningConfig,
    *,
    eval_sets: Sequence[EvalSet] = (),
    embedder: Embedder | None = None,
    language_filter: LanguageFilter | None = None,
    progress: CleanProgress | None = None,
) -> tuple[list[Record], CleanReport]:
    config.validate()
    if not records:
        raise InvalidArgumentError("the pool is empty: nothing to clean", where="pool")

    def report(step: str) -> Callable[[int, int], None]:
        def forward(done: int, total: int) -> None:
            if progress:
                progress(step, done, total)

        return forward

    steps: list[StepReport] = []
    current = list(records)

    def apply(
        reason: str, removed: dict[int, dict[str, Any]], started: float, **settings: Any
    ) -> None:
        nonlocal current
        steps.append(
            StepReport(
                reason,
                len(current),
                [Removal(current[index].id, removed[index]) for index in sorted(removed)],
                time.perf_counter() - started,
                settings,
            )
        )
        current = [record for index, record in enumerate(current) if index not in removed]

    # 1. minimum instruction length
    started = time.perf_counter()
    unit = config.length_unit
    short = {
        index: {"length": length, "unit": unit.value}
        for index, record in enumerate(current)
        if (length := measure(record.instruction, unit)) < config.min_instruction_length
    }
    apply("min_length", short, started, minimum=config.min_instruction_length, unit=unit.value)
    report("min_length")(len(records), len(records))

    # 2. exact dedup on a normalised prefix
    if config.prefix_dedup_length > 0:
        started = time.perf_counter()
        first_seen: dict[str, str] = {}
        duplicates: dict[int, dict[str, Any]] = {}
        for index, record in enumerate(current):
            key = prefix(record.instruction, config.prefix_dedup_length, unit)
            if key in first_seen:
                duplicates[index] = {"duplicate_of": first_seen[key]}
            else:
                first_seen[key] = record.id
        apply("prefix_dup", duplicates, started, length=config.prefix_dedup_length)
        report("prefix_dup")(len(current), len(current))

    # 3. MinHash-LSH near duplicates
    if config.minhash is not None:
        started = time.perf_counter()
        found = near_duplicates(
            [record.instruction for record in current], config.minhash, report("near_dup")
        )
        near = {
            index: {"duplicate_of": current[kept].id, "similarity": round(similarity, 4)}
            for index, (kept, similarity) in found.items()
        }
        apply("near_dup", near, started, threshold=config.minhash.threshold)

    # 4. decontamination against every evaluation set
    if config.decontamination is not None and eval_sets:
        if embedder is None:
            raise InvalidArgumentError("decontamination needs an embedding model", where="embedder")
        started = time.perf_counter()
        contamination = find_contamination(
            current, eval_sets, config.decontamination, embedder, report("contamination")
        )
        contaminated = {
            index: {
                "eval_set": hit.eval_set,
                "eval_id": hit.eval_id,
                "rule": hit.rule,
                "similarity": round(hit.similarity, 4),
                **hit.detail,
            }
            for index, hit in contamination.items()
        }
        decontamination = config.decontamination
        apply(
            "contamination",
            contaminated,
            started,
            mode=decontamination.mode.value,
            top_k=decontamination.top_k,
            similarity_threshold=decontamination.threshold_for(embedder.name),
            ngram_size=decontamination.ngram_size,
            embedding_model=embedder.name,
            eval_sets={eval_set.name: len(eval_set.records) for eval_set in eval_sets},
        )

    # 5. English only
    if config.english_only:
        started = time.perf_counter()
        language = language_filter or LanguageFilter()
        foreign: dict[int, dict[str, Any]] = {}
        step = report("language")
        for index, record in enumerate(current):
            verdict = language.verdict(record.instruction)
            if not verdict.english:
                foreign[index] = {
                    "language": verdict.language,
                    "confidence": round(verdict.confidence, 3),
                    "why": verdict.reason,
                }
            if index % 1000 == 999:
                step(index + 1, len(current))
        apply("language", foreign, started)
        step(len(current), len(current))

    clean_report = CleanReport(
        input_count=len(records),
        output_count=len(current),
        steps=steps,
        config=config.describe(),
        eval_sets={eval_set.name: len(eval_set.records) for eval_set in eval_sets},
    )
    return current, clean_report
