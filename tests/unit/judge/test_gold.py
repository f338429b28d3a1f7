"""Agreement with gold labels, from the verdicts recorded on LLMBar and PandaLM."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_judge.domain.gold import load_llmbar, load_pandalm
from arena_judge.domain.quality import cohen_kappa
from tests.unit.judge.datasets import LLMBAR, PANDALM


def _percent(text: str) -> float:
    return float(re.search(r"([\d.]+)%", text).group(1))  # type: ignore[union-attr]


def test_llmbar_natural_gpt4_vanilla_gives_the_published_figures() -> None:
    natural = load_llmbar(LLMBAR / "Natural")
    agreement = natural.agreement("GPT-4/Vanilla")
    assert agreement.n == 100
    assert agreement.accuracy == pytest.approx(0.955)
    assert agreement.positional_agreement == pytest.approx(0.950)
    assert agreement.accuracy_without_ties == pytest.approx(0.955)  # no ties in LLMBar
    assert agreement.orders == 2


def test_every_recorded_llmbar_evaluator_matches_its_own_statistics() -> None:
    """Average accuracy and positional agreement as LLMBar's statistics.json states them."""
    gold = load_llmbar(LLMBAR)
    assert len(gold.items) == 419
    checked = 0
    for result in sorted(LLMBAR.rglob("evaluators/*/*/statistics.json")):
        stats = json.loads(result.read_text())
        set_dir = result.parents[3]
        judge = f"{result.parent.parent.name}/{result.parent.name}"
        subset = load_llmbar(set_dir)
        if judge not in subset.recorded or "equal" not in stats:
            continue
        agreement = subset.agreement(judge)
        assert round(100 * agreement.accuracy, 1) == pytest.approx(
            _percent(stats["correct_average"]), abs=0.051
        ), (set_dir.name, judge)
        assert round(100 * agreement.positional_agreement, 1) == pytest.approx(  # type: ignore[operator]
            _percent(stats["equal"]), abs=0.051
        ), (set_dir.name, judge)
        checked += 1
    assert checked == 4  # the evaluators whose result.json ships with the data


def test_pandalm_recorded_verdicts() -> None:
    gold = load_pandalm(PANDALM)
    assert len(gold.items) == 999  # every item has a majority among its three annotators
    assert sorted(gold.recorded) == ["gpt-3.5-turbo", "pandalm-7b"]
    gpt = gold.agreement("gpt-3.5-turbo")
    assert gpt.unparsed == 25  # GPT-3.5 answered "garbage" 25 times
    assert round(gpt.accuracy, 4) == 0.6977
    assert round(gpt.accuracy_without_ties, 4) == 0.8151  # type: ignore[arg-type]
    assert round(gpt.cohen_kappa, 4) == 0.4929  # type: ignore[arg-type]
    assert gpt.positional_agreement is None  # one order only
    panda = gold.agreement("pandalm-7b")
    assert round(panda.accuracy, 4) == 0.6677
    assert round(panda.cohen_kappa, 4) == 0.4354  # type: ignore[arg-type]


def test_kappa_matches_scikit_learn() -> None:
    first = ["a", "b", "tie", "a", "a", "b", "b", "tie", "a"]
    second = ["a", "b", "a", "a", "b", "b", "tie", "tie", "a"]
    assert cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None


def test_unknown_judges_and_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=re.escape("recorded: gpt-3.5-turbo, pandalm-7b")):
        load_pandalm(PANDALM).agreement("gpt-5")
    (tmp_path / "testset-v1.json").write_text(json.dumps([{"annotator1": 7}]))
    with pytest.raises(InvalidArgumentError, match=r"testset-v1.json\[0\]: annotator1..3"):
        load_pandalm(tmp_path)
    with pytest.raises(InvalidArgumentError, match=re.escape("no LLMBar dataset.json")):
        load_llmbar(tmp_path)
