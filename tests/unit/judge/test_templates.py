"""Templates are data: FastChat JSONL and Arena-Hard YAML files, plus the project's own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from arena_core.errors import InvalidArgumentError, NotFoundError
from arena_judge.domain.templates import (
    TemplateCatalog,
    TemplateFormat,
    builtin_templates,
    load_arena_hard_yaml,
    load_fastchat_jsonl,
    render,
)
from arena_judge.domain.verdicts import Message, Protocol
from tests.unit.judge.datasets import ARENA_HARD_CONFIGS, FASTCHAT_PROMPTS

QUESTION = (Message("user", "What is 6 x 7?"),)
TWO_TURNS = (
    Message("user", "Name a prime."),
    Message("assistant", "7"),
    Message("user", "And one above 10?"),
)


def _leftover_placeholders(text: str) -> list[str]:
    return re.findall(r"\{[a-zA-Z_0-9]+\}", text)


def test_fastchat_prompts_load_with_their_protocols() -> None:
    templates = {t.template_id: t for t in load_fastchat_jsonl(FASTCHAT_PROMPTS)}
    assert len(templates) == 8
    assert templates["pair-v2"].protocol is Protocol.MT_BENCH_PAIRWISE
    assert templates["single-v1"].protocol is Protocol.MT_BENCH_SINGLE
    assert templates["pair-math-v1"].needs_reference
    assert not templates["pair-v2"].needs_reference
    assert templates["pair-v2-multi-turn"].multi_turn
    assert all(t.format is TemplateFormat.FASTCHAT_JSONL for t in templates.values())


@pytest.mark.parametrize("name", ["pair-v2", "pair-math-v1", "single-v1", "single-math-v1"])
def test_fastchat_single_turn_templates_render_every_placeholder(name: str) -> None:
    template = {t.template_id: t for t in load_fastchat_jsonl(FASTCHAT_PROMPTS)}[name]
    messages = render(template, QUESTION, "42", "41", reference="42")
    user = messages[-1].content
    assert "What is 6 x 7?" in user
    assert "42" in user
    assert not _leftover_placeholders(user)
    assert messages[0].role == "system"


def test_fastchat_multi_turn_template_uses_the_history() -> None:
    template = {t.template_id: t for t in load_fastchat_jsonl(FASTCHAT_PROMPTS)}[
        "pair-math-v1-multi-turn"
    ]
    user = render(template, TWO_TURNS, "11", "12", reference='["2", "11"]')[-1].content
    assert "### User:\nName a prime." in user
    assert "### Assistant A:\n7" in user
    assert "### Assistant B:\n7" in user
    assert "### Assistant A:\n11" in user
    assert "### Assistant B:\n12" in user
    assert "### Reference answer:\n2" in user
    assert not _leftover_placeholders(user)


@pytest.mark.parametrize(
    "path", ["_history/2971e34/config/judge_config.yaml", "config/arena-hard-v0.1.yaml"]
)
def test_arena_hard_configs_load_with_their_verdict_regex(path: str) -> None:
    template = load_arena_hard_yaml(ARENA_HARD_CONFIGS / path)
    assert template.protocol is Protocol.ARENA_HARD
    assert template.verdict_patterns[0] == r"\[\[([AB<>=]+)\]\]"
    assert template.template_id == "arena-hard-v0.1"
    user = render(template, QUESTION, "first answer", "second answer")[-1].content
    assert user.index("first answer") < user.index("second answer")
    assert "<|User Prompt|>\nWhat is 6 x 7?" in user
    assert not _leftover_placeholders(user)


def test_catalog_loads_folders_and_keeps_the_builtins(tmp_path: Path) -> None:
    (tmp_path / "judge_prompts.jsonl").write_bytes(FASTCHAT_PROMPTS.read_bytes())
    (tmp_path / "arena.yaml").write_bytes(
        (ARENA_HARD_CONFIGS / "config/arena-hard-v0.1.yaml").read_bytes()
    )
    catalog = TemplateCatalog.from_paths([tmp_path])
    ids = {t.template_id for t in catalog.all()}
    assert {"pair-v2", "arena-hard-v0.1", "arena-pairwise-v1", "difficulty-v1"} <= ids
    assert catalog.resolve("", Protocol.PAIRWISE_SCORE).template_id == "arena-pairwise-v1"
    assert catalog.resolve("", Protocol.MT_BENCH_SINGLE, True).template_id == "single-grade-ref-v1"
    assert [t.template_id for t in catalog.all(Protocol.ARENA_HARD)] == [
        "arena-five-level-v1",
        "arena-hard-v0.1",
    ]
    with pytest.raises(NotFoundError, match=re.escape("'nope' is not loaded")):
        catalog.resolve("nope", Protocol.ARENA_HARD)
    with pytest.raises(
        InvalidArgumentError, match=re.escape("is for MT_BENCH_PAIRWISE, not ARENA_HARD")
    ):
        catalog.resolve("pair-v2", Protocol.ARENA_HARD)


def test_builtin_paper_prompt_shows_history_instruction_and_both_answers() -> None:
    template = TemplateCatalog().resolve("", Protocol.PAIRWISE_SCORE)
    user = render(template, TWO_TURNS, "13", "17")[-1].content
    assert "### Earlier turns\n### User:\nName a prime." in user
    assert "### Latest user message\nAnd one above 10?" in user
    assert "### Reply A\n13" in user
    assert "### Reply B\n17" in user
    for factor in ("coherence", "factual accuracy", "conversation so far", "overall quality"):
        assert factor in user
    assert "Scores: [[A=" in user


def test_builtin_prompts_are_the_projects_own_text() -> None:
    public = [
        json.loads(line)["system_prompt"] for line in FASTCHAT_PROMPTS.read_text().splitlines()
    ]
    for template in builtin_templates():
        for text in public:
            assert text[:60] not in template.system_prompt + template.prompt_template


def test_bad_template_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text(json.dumps({"name": "x", "type": "triple", "prompt_template": "{question}"}))
    with pytest.raises(InvalidArgumentError, match=rf"{bad}:1: field 'type' must be one of"):
        load_fastchat_jsonl(bad)
    yaml_file = tmp_path / "judge.yaml"
    yaml_file.write_text("prompt_template: '{QUESTION}'\nregex_patterns: ['[AB]']\n")
    with pytest.raises(InvalidArgumentError, match=re.escape("needs one capture group")):
        load_arena_hard_yaml(yaml_file)
    with pytest.raises(InvalidArgumentError, match=re.escape("no such template file")):
        TemplateCatalog.from_paths([tmp_path / "missing.jsonl"])


def test_rendering_refuses_what_cannot_work() -> None:
    catalog = TemplateCatalog()
    with pytest.raises(InvalidArgumentError, match=re.escape("item.reference_answer: template")):
        render(catalog.resolve("single-grade-ref-v1", Protocol.MT_BENCH_SINGLE), QUESTION, "42")
    with pytest.raises(
        InvalidArgumentError, match=re.escape("item.prompt: the prompt has no user message")
    ):
        render(catalog.resolve("", Protocol.ARENA_HARD), (), "a", "b")
