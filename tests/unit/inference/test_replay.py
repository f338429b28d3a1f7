"""Replay: published answer files (Arena-Hard, FastChat, AlpacaEval) matched to prompts."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from arena_cli import inference_commands
from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_inference.domain.replay import ReplayIndex
from arena_inference.domain.types import ChatMessage, ReplayFormat, Role
from tests.conftest import SHARED_DATASETS

ARENA_HARD = SHARED_DATASETS / "arena-hard-auto" / "data" / "arena-hard-v0.1"
MT_BENCH = SHARED_DATASETS / "FastChat" / "fastchat" / "llm_judge" / "data" / "mt_bench"
ALPACA = SHARED_DATASETS / "alpaca_eval" / "results" / "alpaca-7b" / "model_outputs.json"


def user(*turns: str) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(Role.USER, turn) for turn in turns)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_every_arena_hard_question_has_its_recorded_answer() -> None:
    index = ReplayIndex.load([str(ARENA_HARD / "model_answer" / "gpt-4-0314.jsonl")])
    questions = read_jsonl(ARENA_HARD / "question.jsonl")
    answers = {row["uid"]: row for row in read_jsonl(ARENA_HARD / "model_answer/gpt-4-0314.jsonl")}

    assert len(questions) == 500
    for question in questions:
        recorded = index.answer(user(str(question["prompt"])))
        expected = answers[question["uid"]]["messages"][1]["content"]["answer"]  # type: ignore[index]
        assert recorded.text == expected
        assert recorded.question_id == question["uid"]


def test_fastchat_answers_are_matched_through_the_question_file_turn_by_turn() -> None:
    index = ReplayIndex.load(
        [str(MT_BENCH / "reference_answer" / "gpt-4.jsonl"), str(MT_BENCH / "question.jsonl")],
        ReplayFormat.FASTCHAT,
    )
    question = read_jsonl(MT_BENCH / "question.jsonl")
    by_id = {row["question_id"]: row for row in question}
    answer = read_jsonl(MT_BENCH / "reference_answer" / "gpt-4.jsonl")[0]
    turns = by_id[answer["question_id"]]["turns"]
    recorded = answer["choices"][0]["turns"]  # type: ignore[index]

    assert index.answer(user(turns[0])).text == recorded[0]  # type: ignore[index]
    second = (
        ChatMessage(Role.USER, turns[0]),  # type: ignore[index]
        ChatMessage(Role.ASSISTANT, "whatever the model said first"),
        ChatMessage(Role.USER, turns[1]),  # type: ignore[index]
    )
    assert index.answer(second).text == recorded[1]  # type: ignore[index]


def test_alpaca_eval_outputs_match_by_instruction_with_whitespace_folded() -> None:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))
    index = ReplayIndex.load([str(ALPACA)], ReplayFormat.ALPACA_EVAL, model="alpaca-7b")

    instruction = "  " + rows[3]["instruction"].replace(" ", "  ") + "\n"
    assert index.answer(user(instruction)).text == rows[3]["output"]
    assert len(index) == len(rows)


def test_an_unknown_prompt_is_not_found_and_says_which() -> None:
    index = ReplayIndex.load([str(ALPACA)])

    with pytest.raises(NotFoundError, match=r"no recorded answer.*'What is 2\+2\?'"):
        index.answer(user("What is 2+2?"), "alpaca")


def test_a_malformed_line_is_reported_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{not json\n', encoding="utf-8")

    with pytest.raises(InvalidArgumentError) as caught:
        ReplayIndex.load([str(path)])

    assert caught.value.where == f"{path}:2"


def test_answers_without_their_question_file_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(
        json.dumps({"question_id": 7, "model_id": "m", "choices": [{"turns": ["x"]}]}) + "\n",
        encoding="utf-8",
    )

    with pytest.raises(InvalidArgumentError, match="add the question file"):
        ReplayIndex.load([str(path)])


def test_a_pinned_format_rejects_other_records(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n", encoding="utf-8")

    with pytest.raises(InvalidArgumentError, match="not part of the fastchat format"):
        ReplayIndex.load([str(path)], ReplayFormat.FASTCHAT)


def test_missing_files_and_remote_uris_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="not a readable file"):
        ReplayIndex.load([str(tmp_path / "absent.jsonl")])
    with pytest.raises(InvalidArgumentError, match="only local files"):
        ReplayIndex.load(["s3://bucket/answers.jsonl"])


def test_lines_are_split_on_newline_only(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    record = {"instruction": "sep\u2028arated", "output": "line\u2028separator"}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")

    assert ReplayIndex.load([str(path)]).answer(user("sep\u2028arated")).text == (
        "line\u2028separator"
    )


def test_the_cli_checks_replay_files(tmp_path: Path) -> None:
    cli = click.Group()
    inference_commands.register(cli)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n", encoding="utf-8")

    good = CliRunner().invoke(
        cli, ["inference", "replay", str(ARENA_HARD / "model_answer" / "gpt-4-0613.jsonl")]
    )
    bad = CliRunner().invoke(cli, ["inference", "replay", str(broken)])

    assert good.exit_code == 0
    assert "500 recorded conversations" in good.output
    assert bad.exit_code == 1
    assert f"{broken}:1: not valid JSON" in bad.output
