"""Training data from judged rounds: the SFT and preference rules, for several K, exactly; TRL
conversational files that load in `datasets` and pass TRL's data utilities."""

from __future__ import annotations

import json
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from arena_cli.selection_commands import data
from arena_core.errors import InvalidArgumentError
from arena_selection.domain import training
from arena_selection.domain.training import (
    Comparison,
    Pairing,
    SelectionConfig,
    Stage,
    accumulate,
    judged_prompt_from_dict,
    read_judged_round,
    render_selection,
    select_training_data,
)
from tests.unit.selection.support import (
    OPPONENTS,
    TARGET,
    synthetic_round,
    vicuna_round,
    write_jsonl,
)

ROUND = synthetic_round()
PROMPTS = [judged_prompt_from_dict(line, f"round:{i}") for i, line in enumerate(ROUND)]


def _means(line: dict[str, Any]) -> dict[str, Fraction]:
    """Exact means (fractions), so the expected selection has no rounding of its own."""
    scores: dict[str, list[int]] = defaultdict(list)
    for judgment in line["judgments"]:
        scores[judgment["model_a"]].append(judgment["score_a"])
        scores[judgment["model_b"]].append(judgment["score_b"])
    return {model: Fraction(sum(values), len(values)) for model, values in scores.items()}


def _ranked(means: dict[str, Fraction], models: Any) -> list[str]:
    return sorted(models, key=lambda model: (-means[model], model))


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0, 3.0, 4.5])
def test_sft_keeps_losses_by_at_least_k_with_the_best_opponents_answer(k: float) -> None:
    selection = select_training_data(PROMPTS, SelectionConfig(Stage.SFT, k, TARGET))
    expected = []
    for line in ROUND:
        means = _means(line)
        best = _ranked(means, OPPONENTS)[0]
        if means[best] - means[TARGET] >= Fraction(k):
            expected.append((line["prompt_id"], line["responses"][best]["text"], best))
    assert [
        (e["prompt_id"], r["messages"][-1]["content"], e["chosen_model"])
        for r, e in zip(selection.rows, selection.lineage, strict=True)
    ] == expected
    for row in selection.rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert sum(share["chosen"] for share in selection.model_shares().values()) == len(expected)
    assert TARGET not in {e["chosen_model"] for e in selection.lineage}


def test_k_zero_keeps_every_scored_instruction_and_greater_than_is_strict() -> None:
    assert len(
        select_training_data(
            PROMPTS, SelectionConfig(Stage.SFT, 0, TARGET, Comparison.AT_LEAST)
        ).rows
    ) == len(
        [line for line in ROUND if max(_means(line)[o] for o in OPPONENTS) >= _means(line)[TARGET]]
    )
    strict = select_training_data(
        PROMPTS, SelectionConfig(Stage.SFT, 2, TARGET, Comparison.GREATER_THAN)
    )
    assert all(entry["gap"] > 2 for entry in strict.lineage)
    at_least = select_training_data(PROMPTS, SelectionConfig(Stage.SFT, 2, TARGET))
    assert len(at_least.rows) >= len(strict.rows)


@pytest.mark.parametrize("k", [0.0, 2.0, 5.0])
def test_dpo_best_worst_pairs(k: float) -> None:
    selection = select_training_data(PROMPTS, SelectionConfig(Stage.DPO, k, TARGET))
    expected = []
    for line in ROUND:
        means = _means(line)
        ranked = _ranked(means, means)
        chosen = ranked[0]
        rejected = sorted((m for m in means if m != chosen), key=lambda m: (means[m], m))[0]
        if means[chosen] - means[rejected] >= Fraction(k):
            expected.append((line["prompt_id"], chosen, rejected))
    assert [
        (e["prompt_id"], e["chosen_model"], e["rejected_model"]) for e in selection.lineage
    ] == expected
    # The target's own answer may be the chosen one.
    if k == 0.0:
        assert any(entry["chosen_model"] == TARGET for entry in selection.lineage)
    for row, entry in zip(selection.rows, selection.lineage, strict=True):
        line = next(line for line in ROUND if line["prompt_id"] == entry["prompt_id"])
        assert row["prompt"] == line["messages"]
        assert row["chosen"] == [
            {"role": "assistant", "content": line["responses"][entry["chosen_model"]]["text"]}
        ]
        assert row["rejected"][0]["content"] == line["responses"][entry["rejected_model"]]["text"]
        assert len(entry["judgment_ids"]) == 12
        assert entry["judges"] == ["arena-pairwise@1"]


def test_alternative_pairings() -> None:
    versus_target = select_training_data(
        PROMPTS, SelectionConfig(Stage.DPO, 1, TARGET, pairing=Pairing.BEST_VS_TARGET)
    )
    assert {entry["rejected_model"] for entry in versus_target.lineage} == {TARGET}
    battles = select_training_data(
        PROMPTS, SelectionConfig(Stage.REWARD_MODEL, 3, TARGET, pairing=Pairing.WINNER_LOSER)
    )
    expected = 0
    for line in ROUND:
        by_battle: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for j in line["judgments"]:
            by_battle[j["battle_id"]][j["model_a"]].append(j["score_a"])
            by_battle[j["battle_id"]][j["model_b"]].append(j["score_b"])
        for sides in by_battle.values():
            a, b = (Fraction(sum(v), len(v)) for v in sides.values())
            expected += abs(a - b) >= 3 and a != b
    assert len(battles.rows) == expected
    assert all(len(entry["judgment_ids"]) == 2 for entry in battles.lineage)


def test_rl_adds_the_prompts() -> None:
    selection = select_training_data(PROMPTS, SelectionConfig(Stage.RL, 2, TARGET))
    assert len(selection.prompts) == len(PROMPTS)
    assert selection.prompts[0] == {"prompt": ROUND[0]["messages"]}


def test_accumulation_unions_iterations_once_each() -> None:
    first = select_training_data(PROMPTS[:20], SelectionConfig(Stage.SFT, 1, TARGET))
    second = select_training_data(PROMPTS[15:], SelectionConfig(Stage.SFT, 1, TARGET))
    merged = accumulate([(first.rows, first.lineage)], second)
    ids = [entry["example_id"] for entry in merged.lineage]
    assert len(ids) == len(set(ids))
    assert set(ids) == {e["example_id"] for e in first.lineage} | {
        e["example_id"] for e in second.lineage
    }
    assert merged.lineage[: len(first.lineage)] == first.lineage


@pytest.mark.parametrize("k", [-0.5, 9.5, float("nan")])
def test_k_out_of_range(k: float) -> None:
    with pytest.raises(InvalidArgumentError, match="out of range") as error:
        select_training_data(PROMPTS, SelectionConfig(Stage.SFT, k, TARGET))
    assert error.value.where == "threshold"


def test_bad_rounds() -> None:
    with pytest.raises(InvalidArgumentError, match="no scored response"):
        select_training_data(PROMPTS, SelectionConfig(Stage.SFT, 1, "no-such-model"))
    with pytest.raises(InvalidArgumentError, match="holds no prompts"):
        select_training_data([], SelectionConfig(Stage.SFT, 1, TARGET))
    bad = json.dumps(ROUND[0] | {"judgments": [ROUND[0]["judgments"][0] | {"score_a": 11}]})
    with pytest.raises(InvalidArgumentError, match=r"r.jsonl:2: judgments\[0\].score_a: 11"):
        read_judged_round(b"\n" + bad.encode(), "r.jsonl")


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="[UNK]"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return tokenizer


@pytest.mark.parametrize(("stage", "k"), [("sft", 3.0), ("dpo", 2.0), ("reward_model", 1.0)])
def test_files_load_in_datasets_and_trl(tmp_path: Path, stage: str, k: float) -> None:
    import datasets
    from trl.data_utils import (
        is_conversational,
        maybe_apply_chat_template,
        unpair_preference_dataset,
    )

    round_file = write_jsonl(tmp_path / "round.jsonl", vicuna_round())
    out = tmp_path / stage
    result = CliRunner().invoke(
        data,
        [
            "select",
            str(round_file),
            "--stage",
            stage,
            "-k",
            str(k),
            "--target",
            "vicuna-7b",
            "--out-dir",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    count = manifest["record_count"]
    assert count > 0
    cache = str(tmp_path / "hf-cache")
    from_json = datasets.load_dataset(
        "json", data_files=str(out / "data.jsonl"), split="train", cache_dir=cache
    )
    from_parquet = datasets.load_dataset(
        "parquet", data_files=str(out / "data.parquet"), split="train", cache_dir=cache
    )
    assert len(from_json) == len(from_parquet) == count
    assert from_json[0] == from_parquet[0]
    tokenizer = _tiny_tokenizer()
    example = from_parquet[0]
    assert is_conversational(example)
    rendered = maybe_apply_chat_template(example, tokenizer)
    lineage = [json.loads(line) for line in (out / "lineage.jsonl").read_text().split("\n") if line]
    assert len(lineage) == count
    if stage == "sft":
        assert "<|assistant|>" in rendered["text"]
        assert lineage[0]["rejected_model"] == "vicuna-7b"
        assert all(entry["gap"] >= k for entry in lineage)
    else:
        assert set(rendered) == {"prompt", "chosen", "rejected"}
        assert rendered["prompt"].endswith("<|assistant|>")
        unpaired = unpair_preference_dataset(from_parquet)
        assert len(unpaired) == 2 * count
        assert set(unpaired.column_names) >= {"prompt", "completion", "label"}
    shares = manifest["stats"]["model_shares"]
    assert sum(share["chosen"] for share in shares.values()) == count
    assert all(entry["round_id"] == "vicuna-blog" and entry["judgment_ids"] for entry in lineage)


def test_cli_select_accumulates_and_rejects_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    first = write_jsonl(tmp_path / "r1.jsonl", ROUND[:20])
    second = write_jsonl(tmp_path / "r2.jsonl", ROUND[20:])
    common = ["--stage", "sft", "-k", "1", "--target", TARGET]
    assert (
        runner.invoke(
            data, ["select", str(first), *common, "--out-dir", str(tmp_path / "i1")]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        data,
        [
            "select",
            str(second),
            *common,
            "--accumulate",
            str(tmp_path / "i1"),
            "--out-dir",
            str(tmp_path / "i2"),
        ],
    )
    assert result.exit_code == 0, result.output
    i1 = json.loads((tmp_path / "i1/manifest.json").read_text())
    i2 = json.loads((tmp_path / "i2/manifest.json").read_text())
    assert i2["parents"] == [i1["dataset_id"]]
    assert (
        i2["record_count"]
        == i1["record_count"]
        + select_training_data(PROMPTS[20:], SelectionConfig(Stage.SFT, 1, TARGET)).stats[
            "selected"
        ]
    )
    out_of_range = runner.invoke(
        data,
        [
            "select",
            str(first),
            "--stage",
            "sft",
            "-k",
            "12",
            "--target",
            TARGET,
            "--out-dir",
            str(tmp_path / "x"),
        ],
    )
    assert out_of_range.exit_code == 1
    assert "threshold: K=12.0 is out of range" in out_of_range.output
    assert not (tmp_path / "x").exists()
    wrong_stage = runner.invoke(
        data,
        [
            "select",
            str(second),
            "--stage",
            "dpo",
            "-k",
            "1",
            "--target",
            TARGET,
            "--accumulate",
            str(tmp_path / "i1"),
            "--out-dir",
            str(tmp_path / "y"),
        ],
    )
    assert wrong_stage.exit_code == 1
    assert "holds 'sft' data, not 'dpo'" in wrong_stage.output


def test_manifest_hash_is_the_dataset_id_and_stable() -> None:
    config = SelectionConfig(Stage.SFT, 2, TARGET)
    selection = select_training_data(PROMPTS, config)
    one = render_selection("sft-i1", selection, config, parents=[], source="round")
    two = render_selection(
        "sft-i1", select_training_data(PROMPTS, config), config, parents=[], source="round"
    )
    assert one.dataset_id == two.dataset_id
    assert len(one.dataset_id) == 64
    assert training.MAX_THRESHOLD == 9.0
