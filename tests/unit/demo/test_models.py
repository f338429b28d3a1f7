"""The demo's tiny chat models: character tokens, ChatML, and a saved model that generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from arena_cli.demo.models import CHAT_TEMPLATE, ModelSize, build_chat_model, build_tokenizer
from arena_cli.demo.tasks import generate_tasks
from arena_training.domain.chat_templates import marked_template

TINY = ModelSize(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)


def _corpus() -> list[str]:
    return [task.instruction + "\n" + task.answer for task in generate_tasks(0, 40)]


def test_digits_and_letters_are_single_tokens_and_text_round_trips() -> None:
    tokenizer = build_tokenizer(_corpus())
    text = "Sort: 9 0 7\nReverse qwerty"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) < 128


def test_chat_template_is_chatml_with_one_token_roles() -> None:
    tokenizer = build_tokenizer(_corpus())
    messages = [{"role": "user", "content": "Sort 3 1"}, {"role": "assistant", "content": "1 3"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nSort 3 1<|im_end|>\n<|im_start|>assistant\n1 3<|im_end|>\n"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens[:3] == ["<|im_start|>", "user", "\n"]
    # The training service marks this template for assistant-only loss.
    assert marked_template(CHAT_TEMPLATE) is not None


@pytest.mark.timeout(120)
def test_saved_model_loads_and_generates(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_chat_model(tmp_path / "model", _corpus(), TINY, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == 32
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Reverse abc"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 8
    assert isinstance(tokenizer.decode(new, skip_special_tokens=True), str)
    # Same seed, same weights.
    again = build_chat_model(tmp_path / "again", _corpus(), TINY, seed=3)
    other = AutoModelForCausalLM.from_pretrained(again)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
