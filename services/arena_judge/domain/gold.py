"""Human-labelled gold sets and the judges' verdicts recorded on them.

- PandaLM `testset-v1.json`: 999 pairs, three annotators each (0 tie, 1, 2); the gold label is
  their majority. Recorded verdicts: `<judge>-testset-v1.json` next to it (`gpt_result` "1", "2",
  "Tie" or junk; `pandalm_result` 0, 1, 2), one position order.
- LLMBar `<set>/dataset.json` (`label` 1 or 2) with `<set>/evaluators/<model>/<method>/result.json`
  holding both orders (`swap = False` / `swap = True`, winners already mapped back to outputs).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_judge.domain.quality import GoldAgreement, gold_agreement
from arena_judge.domain.verdicts import Side

GOLD_SETS = ("pandalm", "llmbar")


@dataclass(frozen=True)
class GoldItem:
    item_id: str
    instruction: str
    output_1: str
    output_2: str
    label: Side


@dataclass(frozen=True)
class GoldSet:
    name: str
    items: tuple[GoldItem, ...]
    # Recorded verdicts per judge: item id -> one verdict per position order.
    recorded: Mapping[str, Mapping[str, Sequence[Side | None]]]

    @property
    def labels(self) -> dict[str, Side]:
        return {item.item_id: item.label for item in self.items}

    def agreement(self, judge: str) -> GoldAgreement:
        if judge not in self.recorded:
            known = ", ".join(sorted(self.recorded)) or "none"
            raise NotFoundError(
                f"no recorded verdicts of judge {judge!r} in the {self.name} set "
                f"(recorded: {known})"
            )
        return gold_agreement(self.name, judge, self.labels, self.recorded[judge])


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except OSError as error:
        raise InvalidArgumentError(f"cannot read ({error.strerror})", where=str(path)) from None
    except json.JSONDecodeError as error:
        raise InvalidArgumentError(f"invalid JSON ({error})", where=str(path)) from None


_PANDALM_SIDE: dict[Any, Side] = {0: "tie", 1: "a", 2: "b", "0": "tie", "1": "a", "2": "b"}
_PANDALM_SIDE.update({"Tie": "tie", "tie": "tie"})


def load_pandalm(path: Path) -> GoldSet:
    """`path` is PandaLM's data folder or its `testset-v1.json`."""
    testset = path / "testset-v1.json" if path.is_dir() else path
    records = _load_json(testset)
    if not isinstance(records, list):
        raise InvalidArgumentError("the PandaLM test set must be a JSON array", where=str(testset))
    items = []
    for index, record in enumerate(records):
        where = f"{testset}[{index}]"
        votes = [record.get(f"annotator{k}") for k in (1, 2, 3)] if isinstance(record, dict) else []
        if not votes or any(v not in (0, 1, 2) for v in votes):
            raise InvalidArgumentError("annotator1..3 must each be 0, 1 or 2", where=where)
        label, count = Counter(votes).most_common(1)[0]
        if count < 2:
            continue  # three different labels: no majority, no gold
        instruction = str(record.get("instruction", ""))
        if record.get("input"):
            instruction += "\n\n" + str(record["input"])
        items.append(
            GoldItem(
                item_id=str(record.get("idx", index)),
                instruction=instruction,
                output_1=str(record.get("response1", "")),
                output_2=str(record.get("response2", "")),
                label=_PANDALM_SIDE[label],
            )
        )
    recorded: dict[str, dict[str, list[Side | None]]] = {}
    for verdicts in sorted(testset.parent.glob(f"*-{testset.name}")):
        judge = verdicts.name[: -len(testset.name) - 1]
        rows = _load_json(verdicts)
        if not isinstance(rows, list):
            raise InvalidArgumentError(
                "recorded verdicts must be a JSON array", where=str(verdicts)
            )
        by_item: dict[str, list[Side | None]] = {}
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidArgumentError(
                    "a verdict must be an object", where=f"{verdicts}[{index}]"
                )
            result = next((v for k, v in row.items() if k.endswith("_result")), None)
            by_item[str(row.get("idx", index))] = [_PANDALM_SIDE.get(result)]
        recorded[judge] = by_item
    return GoldSet("pandalm", tuple(items), recorded)


_LLMBAR_SIDE: dict[Any, Side] = {"1": "a", "2": "b", 1: "a", 2: "b"}


def load_llmbar(path: Path) -> GoldSet:
    """`path` is one LLMBar set (a folder with `dataset.json`) or a folder above several; item ids
    are `<set>/<index>` with the set's path relative to `path`."""
    datasets = [path / "dataset.json"] if (path / "dataset.json").is_file() else []
    if not datasets:
        datasets = sorted(path.rglob("dataset.json"))
    if not datasets:
        raise InvalidArgumentError("no LLMBar dataset.json here or below", where=str(path))
    items: list[GoldItem] = []
    recorded: dict[str, dict[str, list[Side | None]]] = {}
    for dataset in datasets:
        set_name = str(dataset.parent.relative_to(path)) if dataset.parent != path else path.name
        records = _load_json(dataset)
        if not isinstance(records, list):
            raise InvalidArgumentError("an LLMBar dataset must be a JSON array", where=str(dataset))
        for index, record in enumerate(records):
            label = record.get("label") if isinstance(record, dict) else None
            if label not in (1, 2):
                raise InvalidArgumentError(
                    f"field 'label' must be 1 or 2, got {label!r}", where=f"{dataset}[{index}]"
                )
            items.append(
                GoldItem(
                    item_id=f"{set_name}/{index}",
                    instruction=str(record.get("input", "")),
                    output_1=str(record.get("output_1", "")),
                    output_2=str(record.get("output_2", "")),
                    label=_LLMBAR_SIDE[label],
                )
            )
        for result in sorted(dataset.parent.glob("evaluators/*/*/result.json")):
            judge = f"{result.parent.parent.name}/{result.parent.name}"
            by_item = recorded.setdefault(judge, {})
            rows = _load_json(result)
            if not isinstance(rows, list) or len(rows) != len(records):
                raise InvalidArgumentError(
                    f"expected {len(records)} results, one per dataset item", where=str(result)
                )
            for index, row in enumerate(rows):
                by_item[f"{set_name}/{index}"] = _llmbar_orders(row)
    return GoldSet("llmbar", tuple(items), recorded)


def _llmbar_orders(row: Any) -> list[Side | None]:
    # Strategies that re-ask (Swap) record every run; the last one is the evaluator's answer.
    runs = row.get("results") if isinstance(row, dict) else None
    if not isinstance(runs, list) or not runs or not isinstance(runs[-1], dict):
        return [None]
    orders = []
    for key in ("swap = False", "swap = True"):
        if key in runs[-1]:
            outcome = runs[-1][key]
            winner = outcome.get("winner") if isinstance(outcome, dict) else None
            orders.append(_LLMBAR_SIDE.get(winner))
    return orders or [None]


def load_gold(name: str, path: Path) -> GoldSet:
    if name == "pandalm":
        return load_pandalm(path)
    if name == "llmbar":
        return load_llmbar(path)
    raise InvalidArgumentError(f"unknown gold set {name!r} (one of {', '.join(GOLD_SETS)})")
