"""Reading battles: the fast JSONL path, the record path, validation, cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from arena_rating.domain import (
    RatingInputError,
    battles_from_records,
    cells_from_battles,
    load_battles,
    parse_battles_jsonl,
)
from arena_rating.domain import battles as battles_module

from .helpers import battle_records, synthetic_battles


def _jsonl(records: Sequence[Mapping[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records) + b"\n"


def _same(a: object, b: object) -> None:
    for field in ("models", "categories"):
        assert getattr(a, field) == getattr(b, field)
    for field in ("model_a", "model_b", "outcome", "weight", "category"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_fast_reader_and_record_path_agree() -> None:
    battles, _ = synthetic_battles(7, 500, weights=(1.0, 3.0))
    records = battle_records(battles)
    for k, record in enumerate(records):
        record["question_id"] = k  # ignored extra fields
        if k % 3 == 0:
            record["category"] = "coding" if k % 2 else "math"
    fast = parse_battles_jsonl(_jsonl(records))
    slow = battles_from_records(records)
    _same(fast, slow)
    assert fast.categories == ("coding", "math")
    assert fast.models == tuple(sorted(battles.models))


def test_unseen_models_in_later_chunks_are_picked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(battles_module, "_CHUNK_BYTES", 200)  # many chunks, names appear late
    records = [{"model_a": f"m{k}", "model_b": f"m{k + 1}", "winner": "model_a"} for k in range(40)]
    fast = parse_battles_jsonl(_jsonl(records))
    _same(fast, battles_from_records(records))
    assert len(fast.models) == 41


def test_result_does_not_depend_on_line_order() -> None:
    battles, _ = synthetic_battles(5, 300, seed=3)
    records = battle_records(battles)
    shuffled = [records[k] for k in np.random.default_rng(0).permutation(len(records))]
    a = cells_from_battles(parse_battles_jsonl(_jsonl(records)))
    b = cells_from_battles(parse_battles_jsonl(_jsonl(shuffled)))
    for field in ("i", "j", "score", "weight", "count"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_blank_lines_crlf_and_u2028_are_fine() -> None:
    data = (
        b'{"model_a": "x\xe2\x80\xa8y", "model_b": "z", "winner": "tie"}\r\n'
        b"\n   \n"
        b'{"model_a": "z", "model_b": "x\xe2\x80\xa8y", "winner": "tie (bothbad)"}\n'
    )
    battles = parse_battles_jsonl(data)
    assert battles.models == ("x\u2028y", "z")
    assert battles.outcome.tolist() == [2, 3]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"model_a": "a", "model_b": "b", "winner": "draw"}', "field 'winner' must be one of"),
        (b'{"model_a": "a", "winner": "tie"}', "field 'model_b' must be a non-empty string"),
        (b'{"model_a": "a", "model_b": "a", "winner": "tie"}', "are the same model"),
        (b'{"model_a": "a", "model_b": "b", "winner": "tie", "weight": 0}', "positive finite"),
        (b'{"model_a": "a", "model_b": "b", "winner": "tie", "weight": "3"}', "must be a number"),
        (b'{"model_a": "a", "model_b": "b", "winner": "tie", "category": 4}', "'category'"),
        (b'{"model_a": "a", "model_b": "b", "winner": ', "invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, line: bytes, message: str) -> None:
    good = b'{"model_a": "a", "model_b": "b", "winner": "model_a"}\n'
    path = tmp_path / "battles.jsonl"
    path.write_bytes(good + b"\n" + good + line + b"\n" + good)
    with pytest.raises(RatingInputError, match=message) as info:
        load_battles(path)
    assert str(info.value).startswith(f"{path}:4: ")


def test_errors_without_msgspec_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(battles_module, "_HAVE_MSGSPEC", False)
    data = b'{"model_a": "a", "model_b": "b", "winner": "model_a"}\n{"model_a": "a"}\n'
    with pytest.raises(RatingInputError, match=r"^f.jsonl:2: field 'model_b'"):
        parse_battles_jsonl(data, source="f.jsonl")
    ok = parse_battles_jsonl(data.split(b"\n")[0], source="f.jsonl")
    assert ok.models == ("a", "b")


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(RatingInputError, match="cannot read battles"):
        load_battles(tmp_path / "nope.jsonl")


def test_cells_count_every_battle_once_and_keep_weights_whole() -> None:
    battles, _ = synthetic_battles(6, 2000, seed=1, weights=(1.0, 3.0))
    cells = cells_from_battles(battles)
    assert cells.n_battles == len(battles)
    assert (cells.i < cells.j).all()
    assert set(cells.weight.tolist()) == {1.0, 3.0}
    # Each battle's cell reproduces its pair, weight and score.
    c = cells.row_cell
    lo = np.minimum(battles.model_a, battles.model_b)
    np.testing.assert_array_equal(cells.i[c], lo)
    np.testing.assert_array_equal(cells.weight[c], battles.weight)
    score_lo = np.where(battles.model_a == lo, battles.score_a, 1 - battles.score_a)
    np.testing.assert_array_equal(cells.score[c], score_lo)


def test_pair_totals_count_ties_as_half() -> None:
    records: list[dict[str, Any]] = [
        {"model_a": "a", "model_b": "b", "winner": "model_a"},
        {"model_a": "b", "model_b": "a", "winner": "tie"},
        {"model_a": "b", "model_b": "a", "winner": "tie (bothbad)", "weight": 3},
    ]
    score, total = cells_from_battles(battles_from_records(records)).pair_totals()
    np.testing.assert_allclose(score, [[0, 1 + 0.5 + 1.5], [0.5 + 1.5, 0]])
    np.testing.assert_allclose(total, [[0, 5], [5, 0]])


def test_select_category_drops_unused_models() -> None:
    records = [
        {"model_a": "a", "model_b": "b", "winner": "model_a", "category": "math"},
        {"model_a": "b", "model_b": "c", "winner": "model_b", "category": "code"},
    ]
    battles = battles_from_records(records)
    math_only = battles.in_category("math")
    assert math_only.models == ("a", "b")
    assert len(math_only) == 1
    with pytest.raises(RatingInputError, match="unknown category 'poetry'"):
        battles.in_category("poetry")


def test_conv_metadata_is_read_flat_or_by_kind() -> None:
    meta: dict[str, Any] = {
        "sum_assistant_a_tokens": 100,
        "header_count_a": {"h1": 1, "h2": 2},
        "list_count_a": {"ordered": 3, "unordered": 0},
        "bold_count_a": {"**": 1, "__": 1},
        "sum_assistant_b_tokens": 50,
        "header_count_b": 0,
        "list_count_b": 1,
        "bold_count_b": 0,
    }
    line: dict[str, Any] = {"model_a": "a", "model_b": "b", "winner": "tie", "conv_metadata": meta}
    fast = parse_battles_jsonl(_jsonl([line]))
    assert fast.style is not None
    assert fast.style.tolist() == [[100, 3, 3, 2, 50, 0, 1, 0]]
    bad = dict(line, conv_metadata=dict(meta, bold_count_b=-1))
    with pytest.raises(RatingInputError, match=r":2: conv_metadata.bold_count_b"):
        parse_battles_jsonl(_jsonl([line, bad]), source="s.jsonl")
