"""Battles as columnar numpy arrays, and their compression into distinct cells.

A battle line is ``{"model_a", "model_b", "winner", "weight"?, "category"?, "conv_metadata"?}``
with ``winner`` one of ``model_a``, ``model_b``, ``tie``, ``tie (bothbad)``. ``conv_metadata`` is
Chatbot Arena's per-battle style record, read only for style control.

Models are numbered in sorted name order and cells are sorted, so the same multiset of battles
gives the same arrays (and the same seeded bootstrap) whatever order the lines came in.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from .errors import RatingInputError

try:  # msgspec decodes a million typed lines several times faster than orjson builds dicts.
    import msgspec

    _HAVE_MSGSPEC = True
except ImportError:  # pragma: no cover - exercised only where msgspec is missing
    _HAVE_MSGSPEC = False

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Outcome(IntEnum):
    """The judge's verdict, from model_a's side."""

    A_WINS = 0
    B_WINS = 1
    TIE = 2
    TIE_BOTHBAD = 3


WINNERS: Mapping[str, Outcome] = {
    "model_a": Outcome.A_WINS,
    "model_b": Outcome.B_WINS,
    "tie": Outcome.TIE,
    "tie (bothbad)": Outcome.TIE_BOTHBAD,
}
# Score of model_a per outcome code: a tie of either kind is half a win for each side.
SCORE_OF_A: FloatArray = np.array([1.0, 0.0, 0.5, 0.5])

# Chatbot Arena's conv_metadata elements, in the order style control uses them.
STYLE_FEATURES = ("tokens", "headers", "lists", "bold")
_STYLE_KEYS = (
    ("sum_assistant_a_tokens", "header_count_a", "list_count_a", "bold_count_a"),
    ("sum_assistant_b_tokens", "header_count_b", "list_count_b", "bold_count_b"),
)


@dataclass(frozen=True, eq=False)
class Battles:
    """One row per battle; ``style`` is (n, 8): a's then b's tokens, headers, lists, bold."""

    models: tuple[str, ...]
    model_a: IntArray
    model_b: IntArray
    outcome: IntArray
    weight: FloatArray
    category: IntArray
    categories: tuple[str, ...]
    style: FloatArray | None = None

    def __len__(self) -> int:
        return int(self.model_a.shape[0])

    @property
    def score_a(self) -> FloatArray:
        """Score of model_a in each battle (1, 0 or 1/2)."""
        return SCORE_OF_A[self.outcome]

    def battle_counts(self) -> IntArray:
        """Number of battles (rows, not weights) each model took part in."""
        m = len(self.models)
        return np.bincount(self.model_a, minlength=m) + np.bincount(self.model_b, minlength=m)

    def select(self, mask: npt.NDArray[np.bool_]) -> Battles:
        """The battles where ``mask`` holds; models left without battles are dropped."""
        used = np.zeros(len(self.models), dtype=bool)
        used[self.model_a[mask]] = True
        used[self.model_b[mask]] = True
        remap = np.cumsum(used) - 1
        return Battles(
            models=tuple(name for name, keep in zip(self.models, used, strict=True) if keep),
            model_a=remap[self.model_a[mask]],
            model_b=remap[self.model_b[mask]],
            outcome=self.outcome[mask],
            weight=self.weight[mask],
            category=self.category[mask],
            categories=self.categories,
            style=None if self.style is None else self.style[mask],
        )

    def in_category(self, name: str) -> Battles:
        """The battles labelled ``name``; an unknown category is an error, not an empty board."""
        if name not in self.categories:
            known = ", ".join(self.categories) or "none"
            raise RatingInputError(f"unknown category {name!r} (known: {known})")
        return self.select(self.category == self.categories.index(name))


@dataclass(frozen=True, eq=False)
class BattleCells:
    """Distinct (pair, outcome, weight) cells with their battle counts.

    ``i < j`` always; ``score`` is i's score (1, 0, 1/2). Resampling battles with replacement is
    one multinomial draw over these cells, which is what makes the bootstrap cheap.
    """

    n_models: int
    i: IntArray
    j: IntArray
    score: FloatArray
    weight: FloatArray
    count: IntArray
    row_cell: IntArray  # cell of each battle, for resampling rows when that is cheaper

    @property
    def n_battles(self) -> int:
        return int(self.count.sum())

    def pair_totals(self, count: IntArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Dense (m, m) matrices: S[i, j] = weighted score of i against j, N = weighted games."""
        counts = self.count if count is None else count
        m = self.n_models
        pair = self.i * m + self.j
        games = _float_bincount(pair, counts * self.weight, m * m).reshape(m, m)
        wins = _float_bincount(pair, counts * self.weight * self.score, m * m).reshape(m, m)
        total = games + games.T
        score = wins + (games - wins).T
        return score, total


def cells_from_battles(battles: Battles) -> BattleCells:
    """Group battles into distinct cells; a weighted battle stays one cell member, not w rows."""
    m = len(battles.models)
    a, b = battles.model_a, battles.model_b
    swap = a > b
    i = np.where(swap, b, a)
    j = np.where(swap, a, b)
    # Score code of i: 0 loss, 1 tie, 2 win.
    code_a = np.array([2, 0, 1, 1])[battles.outcome]
    code = np.where(swap, 2 - code_a, code_a)
    weights, weight_code = np.unique(battles.weight, return_inverse=True)
    key = ((i * m + j) * 3 + code) * len(weights) + weight_code.reshape(-1)
    keys, row_cell, count = _unique_keys(key, m * m * 3 * len(weights))
    cell_weight = weights[keys % len(weights)]
    rest = keys // len(weights)
    pair = rest // 3
    return BattleCells(
        n_models=m,
        i=pair // m,
        j=pair % m,
        score=(rest % 3) / 2.0,
        weight=cell_weight.astype(np.float64),
        count=count.astype(np.int64),
        row_cell=row_cell.astype(np.int64),
    )


def _float_bincount(index: IntArray, weights: FloatArray, length: int) -> FloatArray:
    """np.bincount with weights, typed as the float array it returns."""
    return np.asarray(np.bincount(index, weights, length), dtype=np.float64)


def _unique_keys(key: IntArray, key_range: int) -> tuple[IntArray, IntArray, IntArray]:
    """Sorted distinct keys, each row's position among them, and their counts."""
    if key_range <= max(4 * key.shape[0], 1 << 20):
        # Counting beats sorting when the key space is small (it is m * m * 3 * weights).
        counts = np.bincount(key, minlength=key_range)
        keys = np.flatnonzero(counts)
        position = np.cumsum(counts > 0) - 1
        return keys, position[key], counts[keys]
    keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    return keys, inverse.reshape(-1), counts


# --- reading -------------------------------------------------------------------------------

_CHUNK_BYTES = 8 << 20  # about 80k battle lines


def load_battles(path: str | Path) -> Battles:
    """Read a JSONL battles file; errors name ``file:line``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RatingInputError(f"cannot read battles: {exc.strerror}", source=str(path)) from exc
    return parse_battles_jsonl(data, source=str(path))


def parse_battles_jsonl(data: bytes, *, source: str = "<battles>") -> Battles:
    """Parse JSONL battles (blank lines allowed) into columnar arrays."""
    if not _HAVE_MSGSPEC:
        return battles_from_records(_records_by_line(data, source), source=source)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a million short-lived objects would trigger many useless collections
    try:
        return _FastReader(data, source).read()
    finally:
        if gc_was_enabled:
            gc.enable()


class _FastReader:
    """Decodes typed lines chunk by chunk, model names as a Literal of the names seen so far.

    A Literal field makes msgspec hand back one shared string per model instead of allocating
    two million, which is most of the cost. A chunk holding an unseen model (or a bad line) is
    decoded again with plain strings, and the Literal grows.
    """

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.source = source
        self.index: dict[str, int] = {}
        self.typed: Any = None
        self.has_weight = b'"weight"' in data
        self.has_category = b'"category"' in data
        self.has_style = b'"conv_metadata"' in data

    def read(self) -> Battles:
        parts = [self._columns(chunk) for chunk in self._chunks()]
        a, b, outcome, weight = (np.concatenate([p[k] for p in parts]) for k in range(4))
        cats = [c for p in parts for c in p[4]] if self.has_category else None
        styles = [st for p in parts for st in p[5]] if self.has_style else None
        bad = (a == b) | ~np.isfinite(weight) | (weight <= 0)
        if bad.any():
            _raise_first_bad_line(self.data, self.source)
        return _finish(self.index, a, b, outcome, weight, cats, styles)

    def _chunks(self) -> Iterator[memoryview]:
        view = memoryview(self.data)
        begin = 0
        while begin < len(self.data):
            cut = self.data.find(b"\n", begin + _CHUNK_BYTES)
            end = len(self.data) if cut < 0 else cut + 1
            yield view[begin:end]
            begin = end

    def _decode(self, chunk: memoryview) -> Sequence[Any]:
        if self.typed is not None:
            try:
                typed: list[Any] = self.typed.decode_lines(chunk)
                return typed
            except msgspec.ValidationError:
                pass  # an unseen model name, or a bad line that the plain decoder will report
        try:
            lines: list[Any] = _DECODER.decode_lines(chunk)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            _raise_first_bad_line(self.data, self.source)
            raise RatingInputError(str(exc), source=self.source) from exc
        names = set(map(attrgetter("model_a"), lines))
        names.update(map(attrgetter("model_b"), lines))
        unseen = sorted(names.difference(self.index))
        if unseen:
            for name in unseen:
                self.index[name] = len(self.index)
            self.typed = _typed_decoder(tuple(self.index))
        return lines

    def _columns(self, chunk: memoryview) -> tuple[Any, ...]:
        lines = self._decode(chunk)
        n = len(lines)
        code = self.index.__getitem__
        a = np.fromiter(map(code, map(attrgetter("model_a"), lines)), np.int64, n)
        b = np.fromiter(map(code, map(attrgetter("model_b"), lines)), np.int64, n)
        winner = map(_WINNER_CODE.__getitem__, map(attrgetter("winner"), lines))
        outcome = np.fromiter(winner, np.int64, n)
        if self.has_weight:
            weight = np.fromiter(map(attrgetter("weight"), lines), np.float64, n)
        else:
            weight = np.ones(n)
        cats = list(map(attrgetter("category"), lines)) if self.has_category else []
        styles = [self._style(x.conv_metadata) for x in lines] if self.has_style else []
        return a, b, outcome, weight, cats, styles

    def _style(self, meta: Any) -> tuple[float, ...] | None:
        if meta is None:
            return None
        try:
            return _style_row(meta, RatingInputError)
        except RatingInputError:
            _raise_first_bad_line(self.data, self.source)
            raise


_WINNER_CODE = {name: int(code) for name, code in WINNERS.items()}
_WinnerName = Literal["model_a", "model_b", "tie", "tie (bothbad)"]

if _HAVE_MSGSPEC:

    class _BattleLine(msgspec.Struct, gc=False):
        model_a: str
        model_b: str
        winner: _WinnerName
        weight: float = 1.0
        category: str | None = None
        conv_metadata: dict[str, Any] | None = None

    _DECODER: Any = msgspec.json.Decoder(_BattleLine)


def _typed_decoder(names: tuple[str, ...]) -> Any:
    name_type: Any = Literal[names]
    struct = msgspec.defstruct(
        "_TypedBattleLine",
        [
            ("model_a", name_type),
            ("model_b", name_type),
            ("winner", _WinnerName),
            ("weight", float, 1.0),
            ("category", str | None, None),
            ("conv_metadata", dict[str, Any] | None, None),
        ],
        gc=False,
    )
    return msgspec.json.Decoder(struct)


def battles_from_records(
    records: Iterable[Mapping[str, Any] | tuple[int, Mapping[str, Any]]],
    *,
    source: str = "<battles>",
) -> Battles:
    """Build battles from dicts (e.g. decoded events); items may be ``(line, record)`` pairs."""
    names_a: list[str] = []
    names_b: list[str] = []
    outcomes: list[int] = []
    weights: list[float] = []
    cats: list[str | None] = []
    styles: list[tuple[float, ...] | None] = []
    for position, item in enumerate(records, start=1):
        line, record = item if isinstance(item, tuple) else (position, item)
        a, b, outcome, weight, category, style = _validate_record(record, source, line)
        names_a.append(a)
        names_b.append(b)
        outcomes.append(outcome)
        weights.append(weight)
        cats.append(category)
        styles.append(style)
    return _assemble(names_a, names_b, outcomes, weights, cats, styles)


def _records_by_line(data: bytes, source: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    # Split on "\n" only: JSON text may hold U+2028, which str.splitlines would cut.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RatingInputError(f"invalid JSON ({exc})", source=source, line=number) from exc
        if not isinstance(record, dict):
            raise RatingInputError("a battle must be a JSON object", source=source, line=number)
        yield number, record


def _validate_record(
    record: Mapping[str, Any], source: str, line: int
) -> tuple[str, str, int, float, str | None, tuple[float, ...] | None]:
    def fail(message: str) -> RatingInputError:
        return RatingInputError(message, source=source, line=line)

    names = []
    for field in ("model_a", "model_b"):
        value = record.get(field)
        if not isinstance(value, str) or not value:
            raise fail(f"field {field!r} must be a non-empty string, got {value!r}")
        names.append(value)
    if names[0] == names[1]:
        raise fail(f"model_a and model_b are the same model {names[0]!r}")
    winner = record.get("winner")
    if not isinstance(winner, str) or winner not in WINNERS:
        allowed = ", ".join(repr(w) for w in WINNERS)
        raise fail(f"field 'winner' must be one of {allowed}, got {winner!r}")
    weight = record.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise fail(f"field 'weight' must be a number, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise fail(f"field 'weight' must be a positive finite number, got {weight!r}")
    category = record.get("category")
    if category is not None and not isinstance(category, str):
        raise fail(f"field 'category' must be a string, got {category!r}")
    meta = record.get("conv_metadata")
    style = None if meta is None else _style_row(meta, fail)
    return names[0], names[1], int(WINNERS[winner]), float(weight), category, style


def _style_row(meta: Any, fail: Any) -> tuple[float, ...]:
    if not isinstance(meta, dict):
        raise fail("field 'conv_metadata' must be an object")
    row: list[float] = []
    for keys in _STYLE_KEYS:
        for key in keys:
            value = meta.get(key)
            # Counts come either flat or split by kind (h1..h6, ordered/unordered, **/__).
            parts: list[Any] = list(value.values()) if isinstance(value, dict) else [value]
            counts = [float(v) for v in parts if _is_count(v)]
            if not parts or len(counts) != len(parts):
                raise fail(f"conv_metadata.{key} must be a non-negative count, got {value!r}")
            row.append(sum(counts))
    return tuple(row)


def _is_count(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _raise_first_bad_line(data: bytes, source: str) -> None:
    for number, record in _records_by_line(data, source):
        _validate_record(record, source, number)


class _Index(dict[str, int]):
    def __missing__(self, key: str) -> int:
        value = self[key] = len(self)
        return value


def _assemble(
    names_a: list[str],
    names_b: list[str],
    outcomes: list[int],
    weights: list[float],
    cats: list[str | None],
    styles: list[tuple[float, ...] | None],
) -> Battles:
    index = _Index()
    n = len(names_a)
    a = np.fromiter(map(index.__getitem__, names_a), np.int64, n)
    b = np.fromiter(map(index.__getitem__, names_b), np.int64, n)
    return _finish(
        index,
        a,
        b,
        np.asarray(outcomes, dtype=np.int64).reshape(n),
        np.asarray(weights, dtype=np.float64).reshape(n),
        cats,
        styles if any(s is not None for s in styles) else None,
    )


def _finish(
    index: Mapping[str, int],
    a: IntArray,
    b: IntArray,
    outcome: IntArray,
    weight: FloatArray,
    cats: Sequence[str | None] | None,
    styles: Sequence[tuple[float, ...] | None] | None,
) -> Battles:
    # Renumber models in sorted order so results never depend on line order.
    names = sorted(index)
    order = np.empty(len(names), dtype=np.int64)
    order[[index[name] for name in names]] = np.arange(len(names))
    n = a.shape[0]
    if cats is None or all(c is None for c in cats):
        categories: tuple[str, ...] = ()
        category = np.full(n, -1, dtype=np.int64)
    else:
        categories = tuple(sorted({c for c in cats if c is not None}))
        lookup = {c: k for k, c in enumerate(categories)}
        category = np.fromiter((-1 if c is None else lookup[c] for c in cats), np.int64, n)
    style = None
    if styles is not None:
        style = np.full((n, 8), np.nan)
        for row, values in enumerate(styles):
            if values is not None:
                style[row] = values
    return Battles(
        models=tuple(names),
        model_a=order[a],
        model_b=order[b],
        outcome=outcome,
        weight=weight,
        category=category,
        categories=categories,
        style=style,
    )
